package qcow2_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
)

// FuzzOpen feeds malformed images (headers, L1/L2 and refcount tables) to
// the driver, read-only and read-write, and drives a few requests: errors
// are fine, panics and hangs are not.
func FuzzOpen(f *testing.F) {
	ctx := context.Background()
	for _, o := range []blockdev.Options{
		{"size": int64(64 << 10), "cluster-size": int64(512)},
		{"size": int64(64 << 10), "cluster-size": int64(512), "version": "v2"},
		{"size": int64(64 << 10), "cluster-size": int64(512), "refcount-bits": int64(4), "lazy-refcounts": true},
		{"size": int64(64 << 10), "cluster-size": int64(1024), "backing-file": "/nonexistent", "backing-fmt": "raw"},
	} {
		img := mustCreate(f, o)
		if o["backing-file"] == nil {
			h := open(f, img, false)
			for i, off := range []int64{0, 5000, 40000} {
				if err := h.c.Write(ctx, off, pattern(3000, byte(i)), 0); err != nil {
					f.Fatal(err)
				}
			}
			h.close(f)
		}
		b, err := os.ReadFile(img)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// An image with persistent bitmaps (the bitmaps extension, directory
	// and tables), one in use.
	bm := qemuImgCreate(f, f.TempDir(), "bm.qcow2", "64k", "-o", "cluster_size=512")
	run(f, "qemu-img", "bitmap", "--add", "-g", "512", bm, "b0")
	run(f, "qemu-img", "bitmap", "--add", bm, "b1")
	qemuIO(f, bm, "write 0 5000", "write 40000 3000")
	run(f, "qemu-img", "bitmap", "--disable", bm, "b1")
	if b, err := os.ReadFile(bm); err != nil {
		f.Fatal(err)
	} else {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "fuzz.qcow2")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, ro := range []bool{true, false} {
			o := qcowOpts(p)
			o["backing"] = nil
			perm := blockdev.PermConsistentRead | blockdev.PermWrite
			if ro {
				o["read-only"] = true
				perm = blockdev.PermConsistentRead
			}
			h, err := openOpts(t, o, perm)
			if err != nil {
				continue
			}
			l := h.n.Length()
			buf := make([]byte, min(l, 256<<10))
			_ = h.c.Read(ctx, 0, buf)
			for off, i := int64(0), 0; off < l && i < 64; i++ {
				st, err := h.c.BlockStatus(ctx, off, l-off)
				if err != nil {
					break
				}
				off += st.Length
			}
			if !ro && l > 0 {
				_ = h.c.Write(ctx, 0, []byte("fuzz"), 0)
				_ = h.c.Write(ctx, l/2, make([]byte, min(l-l/2, 4096)), 0)
				_ = h.c.WriteZeroes(ctx, 0, min(l, 8192), blockdev.ReqMayUnmap)
				_ = h.c.Discard(ctx, 0, min(l, 8192))
			}
			h.close(t)
		}
	})
}
