package qcow2_test

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkWriteBitmaps is guest write throughput on a qcow2 node with
// four recording persistent bitmaps (64 KiB, 64 KiB, 4 KiB and 512-byte
// granularity, loaded from the image) against none: writes that allocate
// a cluster and rewrites of allocated ones, 4 KiB and 64 KiB. The issue's
// target is a cost under 5%. Compare with
//
//	go test -run NONE -bench WriteBitmaps -count 6 ./drivers/qcow2/
func BenchmarkWriteBitmaps(b *testing.B) {
	for _, size := range []int{4096, 65536} {
		for _, alloc := range []bool{true, false} {
			for _, nb := range []int{0, 4} {
				what := "rewrite"
				if alloc {
					what = "alloc"
				}
				b.Run(fmt.Sprintf("%s/%dk/bitmaps=%d", what, size>>10, nb), func(b *testing.B) {
					img := qemuImgCreate(b, b.TempDir(), "b.qcow2", "64G")
					for i, g := range []string{"65536", "65536", "4096", "512"}[:nb] {
						run(b, "qemu-img", "bitmap", "--add", "-g", g, img, fmt.Sprintf("b%d", i))
					}
					h := open(b, img, false)
					if got := len(h.n.DirtyBitmaps()); got != nb {
						b.Fatalf("%d bitmaps loaded, want %d", got, nb)
					}
					ctx := context.Background()
					buf := pattern(size, 1)
					const span = 1 << 10 // clusters written, then rewritten
					if !alloc {
						for i := range int64(span) {
							if err := h.c.Write(ctx, i<<16, buf, 0); err != nil {
								b.Fatal(err)
							}
						}
					}
					b.SetBytes(int64(size))
					b.ResetTimer()
					for i := range int64(b.N) {
						c := i
						if !alloc {
							c = i % span
						}
						if err := h.c.Write(ctx, c<<16, buf, 0); err != nil {
							b.Fatal(err)
						}
					}
					b.StopTimer()
					h.close(b)
				})
			}
		}
	}
}
