package tests

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// More persistent qcow2 bitmap flows against qemu-storage-daemon: the
// bitmaps marked in use at a reopen read-write, merges across the nodes
// of a chain, qemu-img bitmap on a closed image, NBD export of a stored
// bitmap.

// diffDaemons runs scenario in QSD then in qbmond, each in a fresh
// directory, and fails unless the transcripts are the same.
func diffDaemons(t *testing.T, scenario func(k kind, dir string) string) {
	t.Helper()
	var res []string
	for _, k := range []kind{kindQSD, kindQbmond} {
		res = append(res, scenario(k, shortTempDir(t)))
	}
	if res[0] != res[1] {
		t.Fatalf("qbmond:\n%s\nQSD:\n%s", res[1], res[0])
	}
	t.Logf("both:\n%s", res[0])
}

// A node opened read-only and reopened read-write has its bitmaps in use
// on disk right after the reopen, before any write or bitmap command (and
// again after a round trip read-only and back); its close stores them.
func TestQcow2BitmapsInUseAtReopenRW(t *testing.T) {
	src := qcow2BitmapImage(t, shortTempDir(t))
	diffDaemons(t, func(k kind, dir string) string {
		img := filepath.Join(dir, "img.qcow2")
		copyFile(t, src, img)
		d := startDaemon(t, k, dir)
		c := d.connect()
		var tr strings.Builder
		c.ok("blockdev-add", map[string]any{"driver": "file", "node-name": "f0", "filename": img})
		opts := map[string]any{"driver": "qcow2", "node-name": "n0", "file": "f0", "read-only": true}
		c.ok("blockdev-add", opts)
		fmt.Fprintf(&tr, "opened read-only: %s\n", imageBitmaps(t, img))
		for i := range 2 {
			opts["read-only"] = false
			c.ok("blockdev-reopen", map[string]any{"options": []any{opts}})
			fmt.Fprintf(&tr, "%d: right after reopen read-write: %s\n", i, imageBitmaps(t, img))
			fmt.Fprintf(&tr, "%d: read-write:\n%s", i, qcow2Bitmaps(t, c, "n0"))
			opts["read-only"] = true
			c.ok("blockdev-reopen", map[string]any{"options": []any{opts}})
			fmt.Fprintf(&tr, "%d: after reopen read-only: %s\n", i, imageBitmaps(t, img))
		}
		// The file node given inline with the format node reopens with it.
		c.ok("blockdev-del", map[string]any{"node-name": "n0"})
		c.ok("blockdev-del", map[string]any{"node-name": "f0"})
		o := qcow2Node(img)
		o["node-name"], o["read-only"] = "n1", true
		c.ok("blockdev-add", o)
		o["read-only"] = false
		c.ok("blockdev-reopen", map[string]any{"options": []any{o}})
		fmt.Fprintf(&tr, "inline file, after reopen read-write: %s\n", imageBitmaps(t, img))
		c.ok("blockdev-del", map[string]any{"node-name": "n1"})
		fmt.Fprintf(&tr, "after close: %s\n", imageBitmaps(t, img))
		checkClean(t, img, false)
		d.stop()
		return tr.String()
	})
}

