package tests

import (
	"encoding/json"
	"fmt"
	"os"
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
	var res []string
	for _, k := range []kind{kindQSD, kindQbmond} {
		dir := shortTempDir(t)
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
		res = append(res, tr.String())
	}
	if res[0] != res[1] {
		t.Fatalf("qbmond:\n%s\nQSD:\n%s", res[1], res[0])
	}
}
