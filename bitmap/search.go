package bitmap

import (
	"math/bits"
	"sync/atomic"
)

// The searches take a start offset and a length in bytes, like QEMU's
// bdrv_dirty_bitmap_next_dirty(bitmap, offset, bytes): they look at
// [off, off+limit), clipped to [0, Size()); a negative limit means "to the
// end"; a negative off counts as 0. An offset inside a granule that matches is returned as it is (not
// rounded down to the granule), as QEMU does.

// NextDirty returns the first byte offset in [off, off+limit) whose granule
// is dirty, or -1 if there is none.
func (b *Bitmap) NextDirty(off, limit int64) int64 {
	defer b.rlock(uint64(max(off, 0)) >> (b.shift + 6)).mu.RUnlock()
	return b.nextDirty(off, limit)
}

// NextClean returns the first byte offset in [off, off+limit) whose granule
// is clean, or -1 if there is none.
func (b *Bitmap) NextClean(off, limit int64) int64 {
	defer b.rlock(uint64(max(off, 0)) >> (b.shift + 6)).mu.RUnlock()
	return b.nextClean(off, limit)
}

// NextDirtyArea returns the first run of dirty bytes in [off, off+limit):
// it starts at the first dirty offset and goes on until the next clean
// granule or the end of the range, whichever comes first. ok is false when
// the range holds nothing dirty. This is what an NBD dirty-bitmap context
// and an incremental backup iterate over.
func (b *Bitmap) NextDirtyArea(off, limit int64) (start, length int64, ok bool) {
	defer b.rlock(uint64(max(off, 0)) >> (b.shift + 6)).mu.RUnlock()
	return b.nextDirtyArea(off, limit)
}

func (b *Bitmap) nextDirtyArea(off, limit int64) (start, length int64, ok bool) {
	off = max(off, 0)
	first, last, in := b.searchRange(off, limit)
	if !in {
		return 0, 0, false
	}
	i, found := b.nextSet(0, first, last)
	if !found {
		return 0, 0, false
	}
	start = max(off, int64(i<<b.shift))
	end := b.size
	if limit >= 0 && limit < end-off {
		end = off + limit
	}
	if j, found := b.nextZero(i, last); found {
		end = min(end, int64(j<<b.shift))
	}
	return start, end - start, true
}

// searchRange is byteRange with a negative limit meaning "to the end".
func (b *Bitmap) searchRange(off, limit int64) (first, last uint64, ok bool) {
	if limit < 0 {
		limit = b.size
	}
	return b.byteRange(off, limit)
}

func (b *Bitmap) nextDirty(off, limit int64) int64 {
	off = max(off, 0)
	first, last, ok := b.searchRange(off, limit)
	if !ok {
		return -1
	}
	i, found := b.nextSet(0, first, last)
	if !found {
		return -1
	}
	return max(off, int64(i<<b.shift))
}

func (b *Bitmap) nextClean(off, limit int64) int64 {
	off = max(off, 0)
	first, last, ok := b.searchRange(off, limit)
	if !ok {
		return -1
	}
	i, found := b.nextZero(first, last)
	if !found {
		return -1
	}
	return max(off, int64(i<<b.shift))
}

// nextSet returns the first set bit in [i, last] of level l, using the
// summary above to skip empty words.
func (b *Bitmap) nextSet(l int, i, last uint64) (uint64, bool) {
	words := b.levels[l]
	for i <= last {
		w := i >> 6
		if x := words[w].Load() & (^uint64(0) << (i & 63)); x != 0 {
			j := w<<6 + uint64(bits.TrailingZeros64(x))
			return j, j <= last
		}
		// Word w has nothing from i on: find the next non-empty word.
		if l+1 == len(b.levels) {
			i = (w + 1) << 6
			continue
		}
		nw, ok := b.nextSet(l+1, w+1, last>>6)
		if !ok {
			return 0, false
		}
		i = nw << 6
	}
	return 0, false
}

// nextZero returns the first clear bit in [i, last] of the bits, skipping
// full words.
func (b *Bitmap) nextZero(i, last uint64) (uint64, bool) {
	words := b.levels[0]
	for i <= last {
		w := i >> 6
		if x := ^words[w].Load() & (^uint64(0) << (i & 63)); x != 0 {
			j := w<<6 + uint64(bits.TrailingZeros64(x))
			return j, j <= last
		}
		i = (w + 1) << 6
	}
	return 0, false
}

// forEachRun calls fn for every run of set bits [first, last] of words,
// which hold nbits bits.
func forEachRun(words []atomic.Uint64, nbits uint64, fn func(first, last uint64)) {
	var (
		inRun bool
		start uint64
	)
	for w := range words {
		x := words[w].Load()
		if (x == 0 && !inRun) || (x == ^uint64(0) && inRun) {
			continue
		}
		base := uint64(w) << 6
		for k := uint64(0); k < 64; {
			if inRun {
				y := ^x & (^uint64(0) << k)
				if y == 0 {
					break
				}
				k = uint64(bits.TrailingZeros64(y))
				fn(start, base+k-1)
				inRun = false
			} else {
				y := x & (^uint64(0) << k)
				if y == 0 {
					break
				}
				k = uint64(bits.TrailingZeros64(y))
				start, inRun = base+k, true
			}
		}
	}
	if inRun {
		fn(start, nbits-1)
	}
}
