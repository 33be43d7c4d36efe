package tests

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// qcow2Layout is where a fresh qemu-img image keeps its tables.
type qcow2Layout struct {
	rt, rb, l1, l2 int64 // refcount table, first refcount block, L1 table, first L2 table
}

func readU64(t *testing.T, img string, off int64) uint64 {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	return binary.BigEndian.Uint64(b[:])
}

func writeAt(t *testing.T, img string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func writeU64(t *testing.T, img string, off int64, v uint64) {
	t.Helper()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	writeAt(t, img, off, b[:])
}

func layoutOf(t *testing.T, img string) qcow2Layout {
	t.Helper()
	const mask = 0x00fffffffffffe00
	var l qcow2Layout
	l.rt = int64(readU64(t, img, 48))
	l.l1 = int64(readU64(t, img, 40))
	l.rb = int64(readU64(t, img, l.rt) & mask)
	l.l2 = int64(readU64(t, img, l.l1) & mask)
	return l
}

// zeroRefcount clears the 16-bit refcount of the host cluster at off
// (64 KiB clusters, first refcount block).
func zeroRefcount(t *testing.T, img string, l qcow2Layout, off int64) {
	writeAt(t, img, l.rb+2*(off>>16), []byte{0, 0})
}

const copiedFlag = uint64(1) << 63

// overlapCase is a corrupt image and the writes made to it.
type overlapCase struct {
	name string
	size string // virtual size (default 64M)
	edit func(t *testing.T, img string, l qcow2Layout)
	opts map[string]any // more node options
	// reopen, when set, are options the node is reopened with first.
	reopen map[string]any
	at     string // guest offset of the write
	// noCheck: QEMU frees and discards the cluster of a failed L2
	// allocation (here the L1 or refcount table itself), which qbmond
	// does not copy; the image files then differ and only the
	// requests, events and queries are compared.
	noCheck bool
}

var overlapCases = []overlapCase{
	// The case: guest data over the refcount table (at 0 the
	// "L2 entry" is the reftable's first one, a cluster without the
	// COPIED flag, which is copied; at 320k an empty one).
	{name: "l1-at-reftable", edit: func(t *testing.T, img string, l qcow2Layout) { writeU64(t, img, l.l1, uint64(l.rt)|copiedFlag) }, at: "0"},
	{name: "l1-at-reftable-320k", edit: func(t *testing.T, img string, l qcow2Layout) { writeU64(t, img, l.l1, uint64(l.rt)|copiedFlag) }, at: "320k"},
	{name: "l2-at-l1", edit: func(t *testing.T, img string, l qcow2Layout) { writeU64(t, img, l.l2, uint64(l.l1)|copiedFlag) }, at: "0"},
	{name: "l2-at-l2", edit: func(t *testing.T, img string, l qcow2Layout) { writeU64(t, img, l.l2, uint64(l.l2)|copiedFlag) }, at: "0"},
	{name: "l2-at-refblock", edit: func(t *testing.T, img string, l qcow2Layout) { writeU64(t, img, l.l2, uint64(l.rb)|copiedFlag) }, at: "0"},
	{name: "l2-at-reftable", edit: func(t *testing.T, img string, l qcow2Layout) { writeU64(t, img, l.l2, uint64(l.rt)|copiedFlag) }, at: "0"},
	// Refcounts that call metadata free: new data lands on it.
	{name: "header-free", edit: func(t *testing.T, img string, l qcow2Layout) { zeroRefcount(t, img, l, 0) }, at: "1M"},
	{name: "l1-free", edit: func(t *testing.T, img string, l qcow2Layout) { zeroRefcount(t, img, l, l.l1) }, at: "1M"},
	{name: "refblock-at-l2", edit: func(t *testing.T, img string, l qcow2Layout) { writeU64(t, img, l.rt, uint64(l.l2)) }, at: "1M"},
	// ... or a new L2 table does.
	{name: "l2-alloc-header", size: "1G", edit: func(t *testing.T, img string, l qcow2Layout) { zeroRefcount(t, img, l, 0) }, at: "600M"},
	{name: "l2-alloc-l1", size: "1G", edit: func(t *testing.T, img string, l qcow2Layout) { zeroRefcount(t, img, l, l.l1) }, at: "600M", noCheck: true},
	{name: "l2-alloc-refblock-write", size: "1G", edit: func(t *testing.T, img string, l qcow2Layout) { writeU64(t, img, l.rt, uint64(l.l2)) }, at: "600M", noCheck: true},
	// Not corrupt, but the same rule's other side: a cluster or an L2
	// table without the COPIED flag is copied on write even with
	// refcount 1, as QEMU does (and the old table freed at once).
	{name: "no-copied-flag", edit: func(t *testing.T, img string, l qcow2Layout) {
		writeU64(t, img, l.l2, readU64(t, img, l.l2)&^copiedFlag)
	}, at: "0"},
	{name: "l1-no-copied-flag", edit: func(t *testing.T, img string, l qcow2Layout) {
		writeU64(t, img, l.l1, readU64(t, img, l.l1)&^copiedFlag)
	}, at: "1M"},
	// The modes and flags: refcount blocks are checked from "cached" on.
	{name: "mode-constant", edit: func(t *testing.T, img string, l qcow2Layout) { writeU64(t, img, l.l2, uint64(l.rb)|copiedFlag) }, at: "0",
		opts: map[string]any{"overlap-check": "constant"}},
	{name: "mode-none", edit: func(t *testing.T, img string, l qcow2Layout) { writeU64(t, img, l.l2, uint64(l.l1)|copiedFlag) }, at: "0",
		opts: map[string]any{"overlap-check": "none"}},
	{name: "flags-refblock", edit: func(t *testing.T, img string, l qcow2Layout) { writeU64(t, img, l.l2, uint64(l.rb)|copiedFlag) }, at: "0",
		opts: map[string]any{"overlap-check": map[string]any{"template": "none", "refcount-block": true}}},
	{name: "flags-no-l1", edit: func(t *testing.T, img string, l qcow2Layout) { writeU64(t, img, l.l2, uint64(l.l1)|copiedFlag) }, at: "0",
		opts: map[string]any{"overlap-check": map[string]any{"active-l1": false}}},
	{name: "reopen-none", edit: func(t *testing.T, img string, l qcow2Layout) { writeU64(t, img, l.l2, uint64(l.rt)|copiedFlag) }, at: "0",
		reopen: map[string]any{"overlap-check": "none"}},
	{name: "reopen-all", edit: func(t *testing.T, img string, l qcow2Layout) { writeU64(t, img, l.l2, uint64(l.rt)|copiedFlag) }, at: "0",
		opts: map[string]any{"overlap-check": "none"}, reopen: map[string]any{"overlap-check": "all"}},
}

// runOverlapCase runs one case on a daemon of kind k and describes what
// a client and qemu-img see: the writes' and a read's results, the
// BLOCK_IMAGE_CORRUPTED events, query-named-block-nodes, and afterwards
// the image's corrupt bit and qemu-img check.
func runOverlapCase(t *testing.T, k kind, tc overlapCase) string {
	dir := shortTempDir(t)
	size := tc.size
	if size == "" {
		size = "64M"
	}
	sh(t, dir, "qemu-img create -q -f qcow2 t.qcow2 "+size+
		" && qemu-io -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -P 0x22 32M 64k' t.qcow2 >/dev/null")
	img := filepath.Join(dir, "t.qcow2")
	tc.edit(t, img, layoutOf(t, img))

	node := qcow2Node(img)
	for k, v := range tc.opts {
		node[k] = v
	}
	d, c, uri := exportNode(t, k, dir, node, true, false)
	var out []string
	if tc.reopen != nil {
		ro := qcow2Node(img)
		ro["node-name"] = "n0"
		for k, v := range tc.reopen {
			ro[k] = v
		}
		c.ok("blockdev-reopen", map[string]any{"options": []any{ro}})
	}
	io := func(cmd string) string {
		o, _ := exec.Command(requireTool(t, "qemu-io"), "-f", "raw", "-c", cmd, uri).CombinedOutput()
		first, _, _ := strings.Cut(strings.TrimSpace(string(o)), "\n")
		out = append(out, cmd+": "+first)
		return first
	}
	failed := strings.Contains(io("write -P 0xaa "+tc.at+" 4k"), "failed")
	io("write -P 0xbb " + tc.at + " 4k")
	io("read 0 4k")
	if failed {
		// The node has no driver any more: every request but flush
		// fails, a discard too although the node ignores discards.
		io("discard 0 64k")
		io("write -z 0 64k")
		io("flush")
		o, _ := exec.Command(requireTool(t, "qemu-img"), "map", "--output=json", "--image-opts",
			"driver=nbd,export=n0,server.type=unix,server.path="+filepath.Join(dir, "nbd.sock")).CombinedOutput()
		out = append(out, "map: "+strings.TrimSpace(string(o)))
	}
	c.ok("query-version", nil) // every event is in before its reply
	for _, ev := range c.events {
		if ev["event"] == "BLOCK_IMAGE_CORRUPTED" {
			b, _ := json.Marshal(ev["data"])
			out = append(out, "event: "+string(b))
		}
	}
	r := c.cmd("query-named-block-nodes", nil)
	if e, ok := r["error"].(map[string]any); ok {
		out = append(out, fmt.Sprintf("query-named-block-nodes: %v: %v", e["class"], e["desc"]))
	} else {
		for _, n := range r["return"].([]any) {
			n := n.(map[string]any)
			if n["node-name"] == "n0" {
				img := n["image"].(map[string]any)
				spec := img["format-specific"].(map[string]any)["data"].(map[string]any)
				out = append(out, fmt.Sprintf("query-named-block-nodes: corrupt=%v", spec["corrupt"]))
			}
		}
	}
	c.ok("block-export-del", map[string]any{"id": "e0"})
	d.stop()
	out = append(out, fmt.Sprintf("incompatible features: %#x", readU64(t, img, 72)))
	if !tc.noCheck {
		o, err := exec.Command(requireTool(t, "qemu-img"), "check", img).CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		out = append(out, fmt.Sprintf("qemu-img check: exit %d\n%s", code, o))
		// Where the data went (QEMU's allocation order).
		m, _ := exec.Command(requireTool(t, "qemu-img"), "map", "--output=json", "-U", img).CombinedOutput()
		out = append(out, "qemu-img map:\n"+string(m))
	}
	return strings.Join(out, "\n")
}

// Writes that would overwrite qcow2 metadata of a corrupt image are
// refused as QSD refuses them (QEMU's overlap checks, in each mode), the
// image is marked corrupt with the same BLOCK_IMAGE_CORRUPTED event, the
// node is unusable afterwards as QSD's is, and the image file is left as
// QSD leaves it.
func TestQcow2OverlapChecksLikeQSD(t *testing.T) {
	for _, tc := range overlapCases {
		t.Run(tc.name, func(t *testing.T) {
			q := runOverlapCase(t, kindQSD, tc)
			o := runOverlapCase(t, kindQbmond, tc)
			sameText(t, "outcome", o, q)
		})
	}
}
