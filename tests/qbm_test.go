package tests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// qbmCreate runs blockdev-create for a qbm descriptor at dir/disk.qbm.
func qbmCreate(t *testing.T, c *client, dir string, opts map[string]any) string {
	t.Helper()
	desc := filepath.Join(dir, "disk.qbm")
	if err := os.WriteFile(desc, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	o := map[string]any{"driver": "qbm", "file": map[string]any{"driver": "file", "filename": desc}}
	for k, v := range opts {
		o[k] = v
	}
	if e := runCreate(t, c, "create", o); e != "" {
		t.Fatalf("blockdev-create qbm: %s", e)
	}
	return desc
}

// qbmExport opens the qbm node n0 (discard=unmap) and exports it.
func qbmExport(t *testing.T, c *client, dir, desc string, extra map[string]any) string {
	t.Helper()
	o := map[string]any{"driver": "qbm", "node-name": "n0", "discard": "unmap",
		"file": map[string]any{"driver": "file", "filename": desc}}
	for k, v := range extra {
		o[k] = v
	}
	c.ok("blockdev-add", o)
	sock := filepath.Join(dir, "nbd.sock")
	c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	c.ok("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "n0", "writable": true})
	return "nbd+unix:///n0?socket=" + sock
}

// A qbm node with an allocation bitmap over a qcow2 backing file reads
// exactly like a qcow2 overlay qemu-img made over the same base, after
// the same qemu-io workload.
func TestQbmOverlayLikeQcow2(t *testing.T) {
	dir := shortTempDir(t)
	sh(t, dir, `
qemu-img create -q -f qcow2 base.qcow2 4M
qemu-io -f qcow2 -c 'write -P 0x5a 0 4M' -c 'write -z 1M 64k' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ref.qcow2 4M
`)
	d := startDaemon(t, kindQbmond, dir)
	c := d.connect()
	desc := qbmCreate(t, c, dir, map[string]any{"size": 4 << 20, "backing-file": "base.qcow2",
		"backing-fmt": "qcow2", "granularity": 65536})
	uri := qbmExport(t, c, dir, desc, nil)
	work := []string{
		"write -P 0xab 0 64k",
		"write -P 0xcd 100001 3333",
		"write -P 0x11 1m 100k",
		"write -z 2m 4k",
		"write -P 0x22 3m 512",
		"write -z 3m 4k",
		"write -P 0x33 4194303 1",
		"flush",
	}
	qemuIO(t, uri, work)
	args := []string{"-f", "qcow2"}
	for _, w := range work {
		args = append(args, "-c", w)
	}
	run(t, "qemu-io", append(args, filepath.Join(dir, "ref.qcow2"))...)
	identical(t, uri, filepath.Join(dir, "ref.qcow2"), "-f", "raw", "-F", "qcow2")

	// The allocation shows through NBD block status too: only what was
	// written is allocated in the qbm layer.
	info := c.ok("query-named-block-nodes", map[string]any{"flat": true}).([]any)
	found := false
	for _, n := range info {
		m := n.(map[string]any)
		if m["node-name"] == "n0" {
			found = true
			if m["file"] != desc || m["backing_file"] != filepath.Join(dir, "base.qcow2") {
				t.Errorf("n0: file %v backing_file %v", m["file"], m["backing_file"])
			}
		}
	}
	if !found {
		t.Fatal("n0 not in query-named-block-nodes")
	}
	d.stop()
	// After a clean stop the files are what QBM.md describes.
	var top map[string]map[string]any
	b, _ := os.ReadFile(desc)
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatalf("descriptor: %v\n%s", err, b)
	}
	if s := string(b); !strings.Contains(s, `"disk-allocation.bitmap"`) || !strings.Contains(s, `"disk-data.img"`) ||
		!strings.Contains(s, `"sha256"`) || !strings.Contains(s, `"qbmond 0.1.0"`) {
		t.Fatalf("descriptor after stop:\n%s", s)
	}
}

// qbmBitmapRun creates a qbm image, adds persistent bitmaps (or plain
// ones on a raw node for QSD) and runs bitmapWorkload through NBD.
func qbmBitmapRun(t *testing.T, k kind, dir string, sync string) (*daemon, *client, string) {
	t.Helper()
	d := startDaemon(t, k, dir)
	c := d.connect()
	size := 4<<20 + 1536
	var uri string
	if k == kindQSD {
		sparseImage(t, dir, int64(size))
		_, c2, u := exportNodeOn(t, d, c, dir, map[string]any{"driver": "raw", "discard": "unmap",
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "disk.img")}})
		c, uri = c2, u
	} else {
		desc := qbmCreate(t, c, dir, map[string]any{"size": size})
		uri = qbmExport(t, c, dir, desc, map[string]any{"bitmap-sync": sync})
	}
	for name, g := range map[string]int{"g4k": 4096, "g64k": 65536} {
		c.ok("block-dirty-bitmap-add", map[string]any{"node": "n0", "name": name, "granularity": g,
			"persistent": k == kindQbmond})
	}
	qemuIO(t, uri, bitmapWorkload)
	return d, c, uri
}

// exportNodeOn adds opts as n0 to a running daemon and exports it.
func exportNodeOn(t *testing.T, d *daemon, c *client, dir string, opts map[string]any) (*daemon, *client, string) {
	t.Helper()
	opts["node-name"] = "n0"
	c.ok("blockdev-add", opts)
	sock := filepath.Join(dir, "nbd.sock")
	c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	c.ok("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "n0", "writable": true})
	return d, c, "nbd+unix:///n0?socket=" + sock
}

// reopenQbm starts qbmond again on dir and opens the qbm node n0.
func reopenQbm(t *testing.T, dir string) *client {
	t.Helper()
	d := startDaemon(t, kindQbmond, dir)
	c := d.connect()
	c.ok("blockdev-add", map[string]any{"driver": "qbm", "node-name": "n0",
		"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "disk.qbm")}})
	return c
}

var qbmBitmaps = []string{"g4k", "g64k"}

// Persistent bitmaps survive a clean restart bit for bit, and hold the
// same bits as QSD's (non-persistent) bitmaps after the same workload.
func TestQbmPersistentBitmapsRestart(t *testing.T) {
	qd := shortTempDir(t)
	d, c, _ := qbmBitmapRun(t, kindQSD, qd, "")
	want := bitmapState(t, c, "n0", qbmBitmaps)
	d.stop()

	dir := shortTempDir(t)
	d, c, _ = qbmBitmapRun(t, kindQbmond, dir, "close")
	if got := bitmapState(t, c, "n0", qbmBitmaps); got != want {
		t.Fatalf("qbmond:\n%s\nQSD:\n%s", got, want)
	}
	d.stop()
	c = reopenQbm(t, dir)
	if got := bitmapState(t, c, "n0", qbmBitmaps); got != want {
		t.Fatalf("after restart:\n%s\nbefore:\n%s", got, want)
	}
	if !strings.Contains(want, "count=") || strings.Contains(want, "count=0 ") {
		t.Fatalf("the workload marked nothing:\n%s", want)
	}
}

// After kill -9, bitmap-sync=close bitmaps load inconsistent (only
// removable); bitmap-sync=write bitmaps load consistent with the bits of
// every acknowledged write.
func TestQbmBitmapsAfterKill(t *testing.T) {
	for _, sync := range []string{"close", "write"} {
		t.Run(sync, func(t *testing.T) {
			dir := shortTempDir(t)
			d, c, _ := qbmBitmapRun(t, kindQbmond, dir, sync)
			before := bitmapState(t, c, "n0", qbmBitmaps)
			d.kill()
			c = reopenQbm(t, dir)
			bms := nodeBitmaps(t, c, "n0")
			if len(bms) != 2 {
				t.Fatalf("bitmaps after kill: %v", bms)
			}
			if sync == "write" {
				if got := bitmapState(t, c, "n0", qbmBitmaps); got != before {
					t.Fatalf("after kill:\n%s\nbefore:\n%s", got, before)
				}
				return
			}
			for _, m := range bms {
				if m["inconsistent"] != true || m["persistent"] != true || m["recording"] != false {
					t.Fatalf("bitmap after kill: %v", m)
				}
			}
			_, desc := c.fail("block-dirty-bitmap-enable", map[string]any{"node": "n0", "name": "g4k"})
			if desc != "Bitmap 'g4k' is inconsistent and cannot be used" {
				t.Errorf("enable of an inconsistent bitmap: %s", desc)
			}
			c.ok("block-dirty-bitmap-remove", map[string]any{"node": "n0", "name": "g4k"})
			if _, err := os.Stat(filepath.Join(dir, "disk-g4k.bitmap")); !os.IsNotExist(err) {
				t.Errorf("bitmap file after remove: %v", err)
			}
		})
	}
}

// Malformed descriptors are refused by blockdev-add with QBM.md's errors.
func TestQbmMalformedDescriptors(t *testing.T) {
	dir := shortTempDir(t)
	d := startDaemon(t, kindQbmond, dir)
	c := d.connect()
	os.WriteFile(filepath.Join(dir, "img.raw"), make([]byte, 1<<20), 0o644)
	os.WriteFile(filepath.Join(dir, "short.bitmap"), make([]byte, 1), 0o644)
	cases := []struct{ desc, want string }{
		{`{"QBM": {"image": {"file": "img.raw", "format": "raw"}, "bitmaps": {}}}`,
			`Key "version" not found in QBM descriptor`},
		{`{"QBM": {"version": 1, "bitmaps": {}}}`, `Key "image" not found in QBM descriptor`},
		{`{"QBM": {"version": 1, "image": {"file": "img.raw", "format": "raw"}}}`, `"bitmaps" not found`},
		{`{"QBM": {"version": 1, "image": {"file": "img.raw", "format": "raw"}, "bitmaps": {"b": {"file": "short.bitmap", "type": "dirty", "granularity-bytes": 3000}}}}`,
			`"granularity-bytes" must be a power of two`},
		{`{"QBM": {"version": 1, "image": {"file": "img.raw", "format": "raw"}, "bitmaps": {"b": {"file": "short.bitmap", "type": "dirty", "granularity-bytes": 512}}}}`,
			`Bitmap "b" file too small (expecting at least 256 bytes but got 1 bytes): ` + filepath.Join(dir, "short.bitmap")},
		{`{"QBM": {"version": 1, "image": {"file": "bad.qbm", "format": "raw"}, "bitmaps": {}}}`,
			"QBM descriptor names itself as its image: " + filepath.Join(dir, "bad.qbm")},
	}
	for i, tc := range cases {
		p := filepath.Join(dir, "bad.qbm")
		if err := os.WriteFile(p, []byte(tc.desc), 0o644); err != nil {
			t.Fatal(err)
		}
		_, desc := c.fail("blockdev-add", map[string]any{"driver": "qbm", "node-name": "b" + string(rune('0'+i)),
			"file": map[string]any{"driver": "file", "filename": p}})
		if desc != tc.want {
			t.Errorf("case %d: got %q, want %q", i, desc, tc.want)
		}
	}
}
