package blockdev_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
)

// benchRoot opens a testmem node of the given alignment (0: a null-co node) with a root user
// (whose requests are counted) for the I/O path benchmarks.
func benchRoot(b *testing.B, align int64, bitmaps int) *blockdev.Child {
	g := newGraph(b)
	o := blockdev.Options{"driver": "testmem", "node-name": "mem", "size": int64(4 << 20), "align": align}
	if align == 0 { // no alignment, no tracking: null-co
		o = blockdev.Options{"driver": "null-co", "node-name": "mem", "size": int64(4 << 20)}
	}
	if err := add(g, o); err != nil {
		b.Fatal(err)
	}
	lk, unlock := drivertest.Lock(g)
	defer unlock()
	n := lk.Lookup("mem")
	for i := range bitmaps {
		if _, err := n.AddDirtyBitmap(lk, fmt.Sprintf("b%d", i), blockdev.BitmapOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	c, err := lk.AttachRoot(n, "block device 'bench'", rw, blockdev.PermAll)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// The I/O path's cost per request (entry point, admission, tracking,
// accounting, alignment) over an in-memory driver: aligned and unaligned
// (read-modify-write) 4 KiB writes and reads; on null-co, the path with
// no alignment and no tracking, also with four recording dirty bitmaps.
func BenchmarkIOPath(b *testing.B) {
	ctx := context.Background()
	for _, bc := range []struct {
		name    string
		align   int64
		off     int64
		write   bool
		bitmaps int
	}{
		{"NullWrite4k", 0, 4096, true, 0},
		{"NullRead4k", 0, 4096, false, 0},
		{"NullWrite4kBitmaps4", 0, 4096, true, 4},
		{"Read4kAlign512", 512, 4096, false, 0},
		{"Write4kAlign512", 512, 4096, true, 0},
		{"Write4kUnaligned", 512, 4096 + 100, true, 0},
		{"Read4kUnaligned", 512, 4096 + 100, false, 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := benchRoot(b, bc.align, bc.bitmaps)
			p := fill(4096, 7)
			b.ReportAllocs()
			b.SetBytes(int64(len(p)))
			for b.Loop() {
				var err error
				if bc.write {
					err = c.Write(ctx, bc.off, p, 0)
				} else {
					err = c.Read(ctx, bc.off, p)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
