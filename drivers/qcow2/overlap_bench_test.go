package qcow2_test

import (
	"context"
	"testing"
)

// Allocating 4 KiB writes (one new 64 KiB cluster each) and rewrites of
// allocated clusters, with each overlap-check mode: the checks must not
// slow the write path noticeably.
func BenchmarkWrite(b *testing.B) {
	for _, mode := range []string{"none", "cached", "all"} {
		for _, alloc := range []bool{true, false} {
			name := mode + "/rewrite"
			if alloc {
				name = mode + "/alloc"
			}
			b.Run(name, func(b *testing.B) {
				img := qemuImgCreate(b, b.TempDir(), "b.qcow2", "64G")
				h := open(b, img, false, "overlap-check", mode)
				ctx := context.Background()
				buf := pattern(4096, 1)
				const span = 1 << 10 // clusters written, then rewritten
				if !alloc {
					for i := range int64(span) {
						if err := h.c.Write(ctx, i<<16, buf, 0); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.SetBytes(4096)
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
