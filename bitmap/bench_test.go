package bitmap

import (
	"math/rand/v2"
	"strconv"
	"testing"
)

const (
	tib = int64(1) << 40
	kib = int64(1) << 10
)

func mustNew(b *testing.B, size int64, g uint64) *Bitmap {
	b.Helper()
	bm, err := New(size, g)
	if err != nil {
		b.Fatal(err)
	}
	return bm
}

// BenchmarkSet marks random writes of 4 KiB and 64 KiB in a 1 TiB bitmap at
// 64 KiB granularity: "fresh" on a clean bitmap (mostly new bits),
// "redirty" on a full one (the steady state of a busy disk), and
// "parallel" from GOMAXPROCS goroutines.
func BenchmarkSet(b *testing.B) {
	for _, n := range []int64{4 * kib, 64 * kib} {
		b.Run(sizeName(n)+"/fresh", func(b *testing.B) {
			bm := mustNew(b, tib, 65536)
			rng := rand.New(rand.NewPCG(1, 1))
			b.SetBytes(n)
			for b.Loop() {
				bm.Set(rng.Int64N(tib-n)&^511, n)
			}
		})
		b.Run(sizeName(n)+"/redirty", func(b *testing.B) {
			bm := mustNew(b, tib, 65536)
			bm.Set(0, tib)
			rng := rand.New(rand.NewPCG(1, 1))
			b.SetBytes(n)
			for b.Loop() {
				bm.Set(rng.Int64N(tib-n)&^511, n)
			}
		})
		b.Run(sizeName(n)+"/parallel-redirty", func(b *testing.B) {
			bm := mustNew(b, tib, 65536)
			bm.Set(0, tib)
			b.SetBytes(n)
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
				for pb.Next() {
					bm.Set(rng.Int64N(tib-n)&^511, n)
				}
			})
		})
		b.Run(sizeName(n)+"/parallel", func(b *testing.B) {
			bm := mustNew(b, tib, 65536)
			b.SetBytes(n)
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
				for pb.Next() {
					bm.Set(rng.Int64N(tib-n)&^511, n)
				}
			})
		})
	}
}

func sizeName(n int64) string {
	return strconv.FormatInt(n>>10, 10) + "KiB"
}

// half returns a 16 Mibit bitmap (1 TiB at 64 KiB) with about half its bits
// set in random runs.
func half(b *testing.B, seed uint64) *Bitmap {
	bm := mustNew(b, tib, 65536)
	rng := rand.New(rand.NewPCG(seed, 3))
	for range 100000 {
		bm.Set(rng.Int64N(tib), rng.Int64N(20<<20))
	}
	return bm
}

// BenchmarkSHA256 hashes a 16 Mibit bitmap (2 MiB of words).
func BenchmarkSHA256(b *testing.B) {
	bm := half(b, 1)
	b.SetBytes(int64(len(bm.levels[0]) * 8))
	for b.Loop() {
		_ = bm.SHA256()
	}
}

// BenchmarkMerge merges a 16 Mibit bitmap into another: same granularity
// (word OR) and from 64 KiB into 1 MiB granularity (by dirty runs).
func BenchmarkMerge(b *testing.B) {
	src := half(b, 1)
	b.Run("same-granularity", func(b *testing.B) {
		dst := half(b, 2)
		for b.Loop() {
			if err := dst.Merge(src); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("64KiB-into-1MiB", func(b *testing.B) {
		dst := mustNew(b, tib, 1<<20)
		for b.Loop() {
			if err := dst.Merge(src); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkNextDirty walks every dirty area of a sparse 1 TiB bitmap at
// 4 KiB granularity (2^28 bits, 1000 dirty 4 KiB..1 MiB areas), as an
// incremental backup or an NBD block-status sweep does.
func BenchmarkNextDirty(b *testing.B) {
	bm := mustNew(b, tib, 4096)
	rng := rand.New(rand.NewPCG(9, 9))
	for range 1000 {
		bm.Set(rng.Int64N(tib), 4096+rng.Int64N(1<<20))
	}
	b.Run("areas", func(b *testing.B) {
		for b.Loop() {
			for off := int64(0); ; {
				s, l, ok := bm.NextDirtyArea(off, -1)
				if !ok {
					break
				}
				off = s + l
			}
		}
	})
	b.Run("empty-1TiB", func(b *testing.B) {
		empty := mustNew(b, tib, 4096)
		for b.Loop() {
			if empty.NextDirty(0, -1) != -1 {
				b.Fatal("dirty")
			}
		}
	})
}
