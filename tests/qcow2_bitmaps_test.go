package tests

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Persistent dirty bitmaps inside qcow2 images (the bitmaps extension),
// against qemu-storage-daemon: bitmaps qemu-img and qemu-io made load
// with QSD's flags, counts and sha256; while the image is open writable
// they are "in use" on disk; closing the node stores them (a bitmap added
// with persistent: true too, one removed is gone), qemu-img check stays
// clean, and the stored image loads in QSD as in qbmond. A daemon killed
// while the image is open leaves its bitmaps in use: inconsistent at the
// next open.

// qcow2BitmapImage builds dir/src.qcow2 (1 GiB) with bitmaps b0 (64 KiB,
// recording), b1 (512 bytes, recording, a table of several clusters),
// b2 (disabled, empty) and b3 (disabled, with bits).
func qcow2BitmapImage(t *testing.T, dir string) string {
	t.Helper()
	img := filepath.Join(dir, "src.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "1G")
	run(t, "qemu-img", "bitmap", "--add", img, "b0")
	run(t, "qemu-img", "bitmap", "--add", "-g", "512", img, "b1")
	run(t, "qemu-img", "bitmap", "--add", img, "b3")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write 0 1M", "-c", "write 300M 64k", "-c", "write -P 1 700M 3M", "-c", "write 1000M 512", img)
	run(t, "qemu-img", "bitmap", "--disable", img, "b3")
	run(t, "qemu-img", "bitmap", "--add", "--disable", img, "b2")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write 5M 4k", img)
	return img
}

// qcow2Bitmaps renders the node's named bitmaps as query-named-block-nodes
// shows them, each with its sha256 unless it is inconsistent.
func qcow2Bitmaps(t *testing.T, c *client, node string) string {
	t.Helper()
	var b strings.Builder
	for _, n := range c.ok("query-named-block-nodes", map[string]any{"flat": true}).([]any) {
		m := n.(map[string]any)
		if m["node-name"] != node {
			continue
		}
		// The image's own list (ImageInfoSpecificQCow2's bitmaps).
		img, _ := m["image"].(map[string]any)
		spec, _ := img["format-specific"].(map[string]any)
		data, _ := spec["data"].(map[string]any)
		js, _ := json.Marshal(data["bitmaps"])
		fmt.Fprintf(&b, "image bitmaps: %s\n", js)
		bms, _ := m["dirty-bitmaps"].([]any)
		for _, bm := range bms {
			bi := bm.(map[string]any)
			var keys []string
			for k := range bi {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(&b, "%s=%v ", k, bi[k])
			}
			if bi["inconsistent"] != true {
				r := c.ok("x-debug-block-dirty-bitmap-sha256", map[string]any{"node": node, "name": bi["name"]}).(map[string]any)
				fmt.Fprintf(&b, "sha256=%v", r["sha256"])
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// imageBitmaps is what qemu-img info lists of the image's bitmaps.
func imageBitmaps(t *testing.T, img string) string {
	t.Helper()
	var info struct {
		FormatSpecific struct {
			Data struct {
				Bitmaps []any `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "info", "-U", "--output=json", img)), &info); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(info.FormatSpecific.Data.Bitmaps)
	return string(b)
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// qcow2BitmapFlow runs the scenario on a copy of src in a daemon of kind
// k and returns its transcript and the image it leaves.
func qcow2BitmapFlow(t *testing.T, k kind, src string) (string, string) {
	dir := shortTempDir(t)
	img := filepath.Join(dir, "img.qcow2")
	copyFile(t, src, img)
	var tr strings.Builder
	d, c, uri := exportNode(t, k, dir, qcow2Node(img), true, false)
	fmt.Fprintf(&tr, "loaded:\n%s", qcow2Bitmaps(t, c, "n0"))
	fmt.Fprintf(&tr, "on disk while open: %s\n", imageBitmaps(t, img))
	qemuIO(t, uri, []string{"write -P 7 64k 64k", "write -P 8 500M 1M", "write -z 700M 4k", "discard 900M 64k"})
	fmt.Fprintf(&tr, "after writes:\n%s", qcow2Bitmaps(t, c, "n0"))
	for _, a := range []map[string]any{
		{"node": "n0", "name": "p0", "persistent": true, "granularity": 4096},
		{"node": "n0", "name": "p1", "persistent": true, "disabled": true},
	} {
		c.ok("block-dirty-bitmap-add", a)
	}
	_, desc := c.fail("block-dirty-bitmap-add", map[string]any{"node": "n0", "name": "b0", "persistent": true})
	fmt.Fprintf(&tr, "add existing: %s\n", desc)
	qemuIO(t, uri, []string{"write -P 9 600M 8k"})
	c.ok("block-dirty-bitmap-remove", map[string]any{"node": "n0", "name": "b2"})
	fmt.Fprintf(&tr, "on disk after remove: %s\n", imageBitmaps(t, img))
	c.ok("block-dirty-bitmap-clear", map[string]any{"node": "n0", "name": "b3"})
	fmt.Fprintf(&tr, "before close:\n%s", qcow2Bitmaps(t, c, "n0"))
	c.ok("block-export-del", map[string]any{"id": "e0", "mode": "hard"})
	waitExportGone(t, c)
	c.ok("blockdev-del", map[string]any{"node-name": "n0"})
	fmt.Fprintf(&tr, "on disk after close: %s\n", imageBitmaps(t, img))
	checkClean(t, img, false)
	o := qcow2Node(img)
	o["node-name"] = "n1"
	o["read-only"] = true
	c.ok("blockdev-add", o)
	fmt.Fprintf(&tr, "reloaded read-only:\n%s", qcow2Bitmaps(t, c, "n1"))
	c.ok("blockdev-del", map[string]any{"node-name": "n1"})
	d.stop()
	return tr.String(), img
}

// waitExportGone waits until the hard-deleted export has released the node.
func waitExportGone(t *testing.T, c *client) {
	t.Helper()
	for range 200 {
		if l, _ := c.ok("query-block-exports", nil).([]any); len(l) == 0 {
			return
		}
	}
	t.Fatal("export e0 still listed")
}

func TestQcow2PersistentBitmapsAgainstQSD(t *testing.T) {
	src := qcow2BitmapImage(t, shortTempDir(t))
	want, _ := qcow2BitmapFlow(t, kindQSD, src)
	got, img := qcow2BitmapFlow(t, kindQbmond, src)
	if got != want {
		t.Fatalf("qbmond:\n%s\nQSD:\n%s", got, want)
	}
	// The image qbmond stored loads in QSD as it loads in qbmond.
	for _, k := range []kind{kindQbmond, kindQSD} {
		d := startDaemon(t, k, "")
		c := d.connect()
		o := qcow2Node(img)
		o["node-name"] = "n1"
		o["read-only"] = true
		c.ok("blockdev-add", o)
		s := qcow2Bitmaps(t, c, "n1")
		if k == kindQbmond {
			want = s
		} else if s != want {
			t.Fatalf("qbmond's image in QSD:\n%s\nin qbmond:\n%s", s, want)
		}
		d.stop()
	}
}

// A daemon killed with the image open leaves its bitmaps in use: the
// next open finds them inconsistent, and only removing them works.
func TestQcow2PersistentBitmapsAfterCrash(t *testing.T) {
	src := qcow2BitmapImage(t, shortTempDir(t))
	diffDaemons(t, func(k kind, dir string) string {
		img := filepath.Join(dir, "img.qcow2")
		copyFile(t, src, img)
		d, _, uri := exportNode(t, k, dir, qcow2Node(img), true, false)
		qemuIO(t, uri, []string{"write -P 7 64k 64k"})
		d.kill()
		var tr strings.Builder
		fmt.Fprintf(&tr, "on disk after crash: %s\n", imageBitmaps(t, img))
		d = startDaemon(t, k, dir)
		c := d.connect()
		o := qcow2Node(img)
		o["node-name"] = "n0"
		c.ok("blockdev-add", o)
		fmt.Fprintf(&tr, "reloaded:\n%s", qcow2Bitmaps(t, c, "n0"))
		_, desc := c.fail("block-dirty-bitmap-clear", map[string]any{"node": "n0", "name": "b0"})
		fmt.Fprintf(&tr, "clear: %s\n", desc)
		c.ok("block-dirty-bitmap-remove", map[string]any{"node": "n0", "name": "b0"})
		c.ok("blockdev-del", map[string]any{"node-name": "n0"})
		fmt.Fprintf(&tr, "on disk after close: %s\n", imageBitmaps(t, img))
		checkClean(t, img, false)
		d.stop()
		return tr.String()
	})
}

// reply renders a command's outcome: "ok" or the error's description.
func reply(c *client, name string, args any) string {
	r := c.cmd(name, args)
	if e, ok := r["error"].(map[string]any); ok {
		return fmt.Sprint(e["desc"])
	}
	return "ok"
}

// blockdev-reopen read-only stores the bitmaps (in use no more) and keeps
// them; back to read-write they are in use again before the next write
// (QEMU marks them at the reopen) and the node's close stores them.
func TestQcow2PersistentBitmapsReopen(t *testing.T) {
	src := qcow2BitmapImage(t, shortTempDir(t))
	diffDaemons(t, func(k kind, dir string) string {
		img := filepath.Join(dir, "img.qcow2")
		copyFile(t, src, img)
		d := startDaemon(t, k, dir)
		c := d.connect()
		var tr strings.Builder
		c.ok("blockdev-add", map[string]any{"driver": "file", "node-name": "f0", "filename": img})
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "n0", "file": "f0"})
		c.ok("block-dirty-bitmap-add", map[string]any{"node": "n0", "name": "p0", "persistent": true})
		c.ok("block-dirty-bitmap-clear", map[string]any{"node": "n0", "name": "b0"})
		ro := map[string]any{"driver": "qcow2", "node-name": "n0", "file": "f0", "read-only": true}
		c.ok("blockdev-reopen", map[string]any{"options": []any{ro}})
		fmt.Fprintf(&tr, "on disk read-only: %s\n", imageBitmaps(t, img))
		fmt.Fprintf(&tr, "read-only:\n%s", qcow2Bitmaps(t, c, "n0"))
		fmt.Fprintf(&tr, "clear read-only: %s\n", reply(c, "block-dirty-bitmap-clear", map[string]any{"node": "n0", "name": "b1"}))
		fmt.Fprintf(&tr, "remove read-only: %s\n", reply(c, "block-dirty-bitmap-remove", map[string]any{"node": "n0", "name": "b1"}))
		fmt.Fprintf(&tr, "add persistent read-only: %s\n", reply(c, "block-dirty-bitmap-add", map[string]any{"node": "n0", "name": "p1", "persistent": true}))
		ro["read-only"] = false
		c.ok("blockdev-reopen", map[string]any{"options": []any{ro}})
		c.ok("block-dirty-bitmap-clear", map[string]any{"node": "n0", "name": "b1"})
		c.ok("block-dirty-bitmap-remove", map[string]any{"node": "n0", "name": "b3"})
		c.ok("block-dirty-bitmap-add", map[string]any{"node": "n0", "name": "p2", "persistent": true, "disabled": true})
		fmt.Fprintf(&tr, "read-write again:\n%s", qcow2Bitmaps(t, c, "n0"))
		c.ok("blockdev-del", map[string]any{"node-name": "n0"})
		c.ok("blockdev-del", map[string]any{"node-name": "f0"})
		fmt.Fprintf(&tr, "on disk after close: %s\n", imageBitmaps(t, img))
		checkClean(t, img, false)
		d.stop()
		return tr.String()
	})
}

// QEMU's refusals of block-dirty-bitmap-add persistent on qcow2 nodes,
// and its errors for malformed bitmap directories at open.
func TestQcow2PersistentBitmapErrors(t *testing.T) {
	ref := shortTempDir(t)
	v2 := filepath.Join(ref, "v2.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "64M")
	big := filepath.Join(ref, "big.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", big, "4T")
	src := qcow2BitmapImage(t, ref)
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	// The bitmaps extension and the directory's first entry.
	var extAt int
	for i := 104; i+8 < 65536; i += 8 {
		if binary.BigEndian.Uint32(raw[i:]) == 0x23852875 {
			extAt = i + 8
			break
		}
	}
	if extAt == 0 {
		t.Fatal("no bitmaps extension")
	}
	dirAt := int(binary.BigEndian.Uint64(raw[extAt+16:]))
	broken := map[string]func(b []byte){
		"nb0":        func(b []byte) { binary.BigEndian.PutUint32(b[extAt:], 0) },
		"nb5":        func(b []byte) { binary.BigEndian.PutUint32(b[extAt:], 5) },
		"nb3":        func(b []byte) { binary.BigEndian.PutUint32(b[extAt:], 3) },
		"reserved":   func(b []byte) { binary.BigEndian.PutUint32(b[extAt+4:], 1) },
		"diroff":     func(b []byte) { binary.BigEndian.PutUint64(b[extAt+16:], uint64(dirAt+8)) },
		"flags":      func(b []byte) { b[dirAt+15] |= 4 },
		"type":       func(b []byte) { b[dirAt+16] = 2 },
		"extra":      func(b []byte) { binary.BigEndian.PutUint32(b[dirAt+20:], 8) },
		"table":      func(b []byte) { binary.BigEndian.PutUint64(b[dirAt:], 0) },
		"tableentry": nil, // set below: a reserved bit in b0's table
		"dup":        func(b []byte) { copy(b[dirAt+24:dirAt+26], "b1") },
	}
	t0 := int(binary.BigEndian.Uint64(raw[dirAt:]))
	broken["tableentry"] = func(b []byte) { b[t0+7] |= 2 }
	names := []string{"nb0", "nb5", "nb3", "reserved", "diroff", "flags", "type", "extra", "table", "tableentry", "dup"}
	diffDaemons(t, func(k kind, dir string) string {
		d := startDaemon(t, k, dir)
		c := d.connect()
		var tr strings.Builder
		add := func(node, img string, ro bool, extra map[string]any) {
			o := qcow2Node(img)
			o["node-name"] = node
			o["read-only"] = ro
			c.ok("blockdev-add", o)
			a := map[string]any{"node": node, "name": "p", "persistent": true}
			for k, v := range extra {
				a[k] = v
			}
			fmt.Fprintf(&tr, "%s: %s\n", node, reply(c, "block-dirty-bitmap-add", a))
		}
		for _, f := range []string{v2, big} {
			copyFile(t, f, filepath.Join(dir, filepath.Base(f)))
		}
		add("v2", filepath.Join(dir, "v2.qcow2"), false, nil)
		add("big", filepath.Join(dir, "big.qcow2"), false, map[string]any{"granularity": 512})
		copyFile(t, big, filepath.Join(dir, "bigro.qcow2"))
		add("bigro", filepath.Join(dir, "bigro.qcow2"), true, nil)
		for _, n := range names {
			b := append([]byte(nil), raw...)
			broken[n](b)
			img := filepath.Join(dir, n+".qcow2")
			if err := os.WriteFile(img, b, 0o644); err != nil {
				t.Fatal(err)
			}
			o := qcow2Node(img)
			o["node-name"] = n
			o["read-only"] = true
			fmt.Fprintf(&tr, "open %s: %s\n", n, reply(c, "blockdev-add", o))
		}
		d.stop()
		return tr.String()
	})
}

// Bitmap table entries with the all-ones flag (QEMU never writes them,
// the spec allows them) load as QSD loads them. One difference is left
// out: when the disk's last granule ends inside a 64-bit word, QEMU sets
// the bits past the end in that word too (same count, another sha256);
// qbmond's bitmaps have no bits past the end.
func TestQcow2BitmapAllOnesEntries(t *testing.T) {
	ref := shortTempDir(t)
	img := filepath.Join(ref, "ones.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", img, "4M")
	run(t, "qemu-img", "bitmap", "--add", "-g", "512", img, "b0")
	run(t, "qemu-img", "bitmap", "--add", "-g", "4096", img, "b1")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write 0 64k", "-c", "write 3900000 1000", img)
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	ext := 0
	for i := 104; i+8 < 512; i += 8 {
		if binary.BigEndian.Uint32(raw[i:]) == 0x23852875 {
			ext = i + 8
		}
	}
	if ext == 0 {
		t.Fatal("no bitmaps extension")
	}
	dir := int(binary.BigEndian.Uint64(raw[ext+16:]))
	for e := dir; e < dir+int(binary.BigEndian.Uint64(raw[ext+8:])); {
		tab, n := int(binary.BigEndian.Uint64(raw[e:])), int(binary.BigEndian.Uint32(raw[e+8:]))
		// Every other entry all ones, the last one included.
		for i := n - 1; i >= 0; i -= 2 {
			binary.BigEndian.PutUint64(raw[tab+8*i:], 1)
		}
		e += (24 + int(binary.BigEndian.Uint16(raw[e+18:])) + 7) &^ 7
	}
	if err := os.WriteFile(img, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	var res []string
	for _, k := range []kind{kindQSD, kindQbmond} {
		d := startDaemon(t, k, "")
		c := d.connect()
		o := qcow2Node(img)
		o["node-name"] = "n0"
		o["read-only"] = true
		c.ok("blockdev-add", o)
		res = append(res, qcow2Bitmaps(t, c, "n0"))
		d.stop()
	}
	if res[0] != res[1] {
		t.Fatalf("qbmond:\n%s\nQSD:\n%s", res[1], res[0])
	}
}

// A daemon that exits with the node open stores its bitmaps.
func TestQcow2PersistentBitmapsAtExit(t *testing.T) {
	src := qcow2BitmapImage(t, shortTempDir(t))
	diffDaemons(t, func(k kind, dir string) string {
		img := filepath.Join(dir, "img.qcow2")
		copyFile(t, src, img)
		d := startDaemon(t, k, dir)
		c := d.connect()
		o := qcow2Node(img)
		o["node-name"] = "n0"
		c.ok("blockdev-add", o)
		c.ok("block-dirty-bitmap-add", map[string]any{"node": "n0", "name": "p0", "persistent": true, "granularity": 1 << 20})
		c.ok("block-dirty-bitmap-merge", map[string]any{"node": "n0", "target": "p0", "bitmaps": []any{"b3", "b1"}})
		c.ok("block-dirty-bitmap-disable", map[string]any{"node": "n0", "name": "b0"})
		var tr strings.Builder
		fmt.Fprintf(&tr, "open:\n%s", qcow2Bitmaps(t, c, "n0"))
		d.stop()
		fmt.Fprintf(&tr, "on disk after exit: %s\n", imageBitmaps(t, img))
		checkClean(t, img, false)
		d = startDaemon(t, k, dir)
		c = d.connect()
		o["read-only"] = true
		c.ok("blockdev-add", o)
		fmt.Fprintf(&tr, "reloaded:\n%s", qcow2Bitmaps(t, c, "n0"))
		d.stop()
		return tr.String()
	})
}

// The libvirt checkpoint and push-mode backup flow on a qcow2 disk, in
// QSD and qbmond: a full backup with checkpoint c1 (persistent), a daemon
// restart, an incremental backup since c1 through a temporary bitmap with
// checkpoint c2 created in the same transaction (c1 disabled), deletion of
// c2 (merged back into c1, re-enabled), and an incremental backup since
// c1 again. Each backup reads as the guest's disk at its checkpoint, and
// the bitmaps match QSD's at every step.
func TestQcow2CheckpointFlow(t *testing.T) {
	diffDaemons(t, func(k kind, dir string) string {
		sh(t, dir, `qemu-img create -q -f qcow2 src.qcow2 8M
qemu-io -f qcow2 -c 'write -P 0x11 0 3M' -c 'write -P 0x12 5M 1M' src.qcow2 >/dev/null
qemu-img create -q -f qcow2 full.qcow2 8M
qemu-img create -q -f qcow2 -b full.qcow2 -F qcow2 inc1.qcow2
qemu-img create -q -f qcow2 -b full.qcow2 -F qcow2 inc2.qcow2`)
		var tr strings.Builder
		d := startDaemon(t, k, dir)
		c := d.connect()
		addQcow2(t, c, dir, "src", "src.qcow2")
		uri := startNBD(t, c, dir, "src")
		backup := func(target, img, bitmap string, actions ...any) string {
			t.Helper()
			ref := pointInTime(t, uri, dir, target+".raw")
			addQcow2(t, c, dir, target, img)
			job := map[string]any{"job-id": target, "device": "src", "target": target, "sync": "full"}
			if bitmap != "" {
				job["sync"], job["bitmap"] = "incremental", bitmap
			}
			actions = append(actions, map[string]any{"type": "blockdev-backup", "data": job})
			c.ok("transaction", map[string]any{"actions": actions})
			c.waitJob(target, "null")
			c.ok("blockdev-del", map[string]any{"node-name": target})
			return ref
		}
		act := func(typ string, data map[string]any) any {
			data["node"] = "src"
			return map[string]any{"type": typ, "data": data}
		}
		ref0 := backup("tfull", "full.qcow2", "", act("block-dirty-bitmap-add", map[string]any{"name": "c1", "persistent": true}))
		sameAs(t, ref0, filepath.Join(dir, "full.qcow2"))
		qemuIO(t, uri, []string{"write -P 0x21 64k 64k", "write -z 5M 4k"})
		fmt.Fprintf(&tr, "before restart:\n%s", qcow2Bitmaps(t, c, "src"))
		d.stop()
		fmt.Fprintf(&tr, "on disk: %s\n", imageBitmaps(t, filepath.Join(dir, "src.qcow2")))

		d = startDaemon(t, k, dir)
		c = d.connect()
		addQcow2(t, c, dir, "src", "src.qcow2")
		uri = startNBD(t, c, dir, "src")
		qemuIO(t, uri, []string{"write -P 0x22 7M 128k"})
		ref1 := backup("tinc1", "inc1.qcow2", "tmp",
			act("block-dirty-bitmap-add", map[string]any{"name": "tmp", "disabled": true}),
			act("block-dirty-bitmap-merge", map[string]any{"target": "tmp", "bitmaps": []any{"c1"}}),
			act("block-dirty-bitmap-disable", map[string]any{"name": "c1"}),
			act("block-dirty-bitmap-add", map[string]any{"name": "c2", "persistent": true}))
		sameAs(t, ref1, filepath.Join(dir, "inc1.qcow2"))
		c.ok("block-dirty-bitmap-remove", map[string]any{"node": "src", "name": "tmp"})
		qemuIO(t, uri, []string{"write -P 0x23 2M 8k"})
		fmt.Fprintf(&tr, "after backup 1:\n%s", qcow2Bitmaps(t, c, "src"))
		c.ok("transaction", map[string]any{"actions": []any{
			act("block-dirty-bitmap-enable", map[string]any{"name": "c1"}),
			act("block-dirty-bitmap-merge", map[string]any{"target": "c1", "bitmaps": []any{"c2"}}),
			act("block-dirty-bitmap-remove", map[string]any{"name": "c2"}),
		}})
		qemuIO(t, uri, []string{"write -P 0x24 6M 4k"})
		fmt.Fprintf(&tr, "after deleting c2:\n%s", qcow2Bitmaps(t, c, "src"))
		ref2 := backup("tinc2", "inc2.qcow2", "tmp",
			act("block-dirty-bitmap-add", map[string]any{"name": "tmp", "disabled": true}),
			act("block-dirty-bitmap-merge", map[string]any{"target": "tmp", "bitmaps": []any{"c1"}}))
		sameAs(t, ref2, filepath.Join(dir, "inc2.qcow2"))
		c.ok("block-dirty-bitmap-remove", map[string]any{"node": "src", "name": "tmp"})
		d.stop()
		src := filepath.Join(dir, "src.qcow2")
		fmt.Fprintf(&tr, "on disk at the end: %s\n", imageBitmaps(t, src))
		checkClean(t, src, false)
		return tr.String()
	})
}

// Persistent bitmaps of a qcow2 chain through blockdev-snapshot, an
// active block-commit and block-stream, as QSD keeps them: the bitmaps
// stay on their nodes, record what reaches them, and each image stores
// its own at close.
func TestQcow2PersistentBitmapsChain(t *testing.T) {
	diffDaemons(t, func(k kind, dir string) string {
		sh(t, dir, `qemu-img create -q -f qcow2 base.qcow2 8M
qemu-img bitmap --add base.qcow2 c1
qemu-io -f qcow2 -c 'write -P 0x11 0 1M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2
qemu-img create -q -f qcow2 -b ov.qcow2 -F qcow2 ov2.qcow2`)
		var tr strings.Builder
		d := startDaemon(t, k, dir)
		c := d.connect()
		addQcow2(t, c, dir, "base", "base.qcow2")
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "ov", "backing": nil,
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "ov.qcow2")}})
		c.ok("blockdev-snapshot", map[string]any{"node": "base", "overlay": "ov"})
		c.ok("block-dirty-bitmap-add", map[string]any{"node": "ov", "name": "c2", "persistent": true})
		uri := startNBD(t, c, dir, "ov")
		qemuIO(t, uri, []string{"write -P 0x22 2M 64k", "write -P 0x23 5M 4k"})
		state := func(what string) {
			fmt.Fprintf(&tr, "%s:\nbase: %sov: %s", what, qcow2Bitmaps(t, c, "base"), qcow2Bitmaps(t, c, "ov"))
		}
		state("after snapshot")
		c.ok("block-export-del", map[string]any{"id": "e0"})
		waitExportGone(t, c)
		c.ok("block-commit", map[string]any{"job-id": "cm", "device": "ov"})
		c.waitJob("cm", "ready")
		c.ok("job-complete", map[string]any{"id": "cm"})
		c.waitJob("cm", "null")
		fmt.Fprintf(&tr, "after commit: base: %s", qcow2Bitmaps(t, c, "base"))
		c.ok("blockdev-del", map[string]any{"node-name": "ov"})
		fmt.Fprintf(&tr, "ov on disk: %s\n", imageBitmaps(t, filepath.Join(dir, "ov.qcow2")))
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "ov2", "backing": nil,
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "ov2.qcow2")}})
		c.ok("blockdev-snapshot", map[string]any{"node": "base", "overlay": "ov2"})
		c.ok("block-dirty-bitmap-add", map[string]any{"node": "ov2", "name": "c3", "persistent": true})
		c.ok("block-stream", map[string]any{"job-id": "st", "device": "ov2"})
		c.waitJob("st", "null")
		fmt.Fprintf(&tr, "after stream: ov2: %s", qcow2Bitmaps(t, c, "ov2"))
		d.stop()
		for _, img := range []string{"base", "ov", "ov2"} {
			p := filepath.Join(dir, img+".qcow2")
			fmt.Fprintf(&tr, "%s on disk: %s\n", img, imageBitmaps(t, p))
			checkClean(t, p, false)
		}
		return tr.String()
	})
}

// A libvirt pull-mode backup from a qcow2 disk whose checkpoint bitmap
// was stored in the image: a temporary bitmap merged from the checkpoint
// in the same transaction as the fleecing job (sync=none into an
// overlay), the overlay exported with the temporary bitmap; nbdinfo
// --map of qemu:dirty-bitmap and the fleecing export's content are
// QSD's, and the export reads the disk as it was at the checkpoint.
func TestQcow2PullBackupFromStoredCheckpoint(t *testing.T) {
	diffDaemons(t, func(k kind, dir string) string {
		sh(t, dir, `qemu-img create -q -f qcow2 src.qcow2 8M
qemu-img bitmap --add src.qcow2 c1
qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x12 3M 100k' -c 'write -z 6M 64k' src.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b src.qcow2 -F qcow2 fleece.qcow2`)
		var tr strings.Builder
		d := startDaemon(t, k, dir)
		c := d.connect()
		addQcow2(t, c, dir, "src", "src.qcow2")
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "fl", "backing": "src",
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "fleece.qcow2")}})
		uri := startNBD(t, c, dir, "src")
		ref := pointInTime(t, uri, dir, "ref.raw")
		c.ok("transaction", map[string]any{"actions": []any{
			map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": "src", "name": "tmp", "disabled": true}},
			map[string]any{"type": "block-dirty-bitmap-merge", "data": map[string]any{"node": "src", "target": "tmp", "bitmaps": []any{"c1"}}},
			map[string]any{"type": "blockdev-backup", "data": map[string]any{"job-id": "fleece", "device": "src", "target": "fl", "sync": "none"}},
		}})
		c.ok("block-export-add", map[string]any{"type": "nbd", "id": "e1", "node-name": "fl", "name": "fleece",
			"bitmaps": []any{map[string]any{"node": "src", "name": "tmp"}}})
		fleece := "nbd+unix:///fleece?socket=" + filepath.Join(dir, "nbd.sock")
		qemuIO(t, uri, []string{"write -P 0x21 0 64k", "write -P 0x22 5M 1M"})
		tr.WriteString(run(t, "nbdinfo", "--map=qemu:dirty-bitmap:tmp", fleece))
		identical(t, ref, fleece, "-f", "raw", "-F", "raw")
		c.ok("block-export-del", map[string]any{"id": "e1"})
		c.waitEvent(func(ev map[string]any) bool { return ev["event"] == "BLOCK_EXPORT_DELETED" })
		c.ok("block-job-cancel", map[string]any{"device": "fleece"})
		c.waitJob("fleece", "null")
		c.ok("block-dirty-bitmap-remove", map[string]any{"node": "src", "name": "tmp"})
		fmt.Fprintf(&tr, "after:\n%s", qcow2Bitmaps(t, c, "src"))
		d.stop()
		fmt.Fprintf(&tr, "on disk: %s\n", imageBitmaps(t, filepath.Join(dir, "src.qcow2")))
		return tr.String()
	})
}

// BenchmarkQcow2BitmapsOpenStoreClose opens a 1 TiB qcow2 image with four
// persistent 64 KiB bitmaps (16 Mibit each: all dirty, half dirty, a few
// bits, one bit) read-write, which marks them in use, and closes it, which
// stores them, in QSD and in qbmond: go test -run NONE -bench
// Qcow2BitmapsOpenStoreClose ./tests/
func BenchmarkQcow2BitmapsOpenStoreClose(b *testing.B) {
	dir := shortTempDir(b)
	img := filepath.Join(dir, "big.qcow2")
	// qemu-io discards at most 2 GiB a request.
	discards := func(from, n int) []string {
		args := []string{"qemu-io", "-f", "qcow2"}
		for g := from; g < from+n; g++ {
			args = append(args, "-c", fmt.Sprintf("discard %dG 1G", g))
		}
		return append(args, img)
	}
	for _, cmd := range [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", img, "1T"},
		{"qemu-img", "bitmap", "--add", img, "dense"},
		discards(0, 1024),
		{"qemu-img", "bitmap", "--add", img, "sparse"},
		{"qemu-io", "-f", "qcow2", "-c", "write 0 64k", "-c", "write 100G 1M", "-c", "write 900G 64k", img},
		{"qemu-img", "bitmap", "--add", img, "half"},
		discards(256, 512),
		{"qemu-img", "bitmap", "--add", img, "one"},
		{"qemu-io", "-f", "qcow2", "-c", "write 5G 512", img},
	} {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%v: %v\n%s", cmd, err, out)
		}
	}
	for _, k := range []kind{kindQSD, kindQbmond} {
		b.Run(string(k), func(b *testing.B) {
			d := startDaemon(b, k, dir)
			c := d.connect()
			o := qcow2Node(img)
			o["node-name"] = "n0"
			b.ResetTimer()
			for range b.N {
				c.ok("blockdev-add", o)
				c.ok("blockdev-del", map[string]any{"node-name": "n0"})
			}
			b.StopTimer()
			d.stop()
		})
	}
}
