package bitmap

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/bits"
)

// SHA256 is the hex SHA-256 that QEMU's x-debug-block-dirty-bitmap-sha256
// returns for the same bits: the hash of the bit words as little-endian
// 64-bit integers, every word including the whole last one (bits past the
// end are zero), and one zero word for a bitmap of no granules. An empty
// bitmap of up to 64 granules hashes to
// af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc,
// the SHA-256 of eight zero bytes.
func (b *Bitmap) SHA256() string {
	defer b.rlock(0).mu.RUnlock()
	h := sha256.New()
	var buf [32 << 10]byte
	words := b.levels[0]
	for len(words) > 0 {
		n := min(len(words), len(buf)/8)
		for i := range n {
			binary.LittleEndian.PutUint64(buf[i*8:], words[i].Load())
		}
		h.Write(buf[:n*8])
		words = words[n:]
	}
	return hex.EncodeToString(h.Sum(nil))
}

// MarshalBits returns the bits in QBM's file layout: bit k (least
// significant first) of byte j is granule 8*j+k; the length is
// ceil(granules/8) bytes.
func (b *Bitmap) MarshalBits() []byte {
	defer b.rlock(0).mu.RUnlock()
	out := make([]byte, (b.nbits+7)/8)
	var w [8]byte
	for i := range b.levels[0] {
		at := i * 8
		if at >= len(out) {
			break
		}
		v := b.levels[0][i].Load()
		switch {
		case v == 0: // out is zeroed already
		case at+8 <= len(out):
			binary.LittleEndian.PutUint64(out[at:], v)
		default:
			binary.LittleEndian.PutUint64(w[:], v)
			copy(out[at:], w[:])
		}
	}
	return out
}

// ShortDataError is returned by UnmarshalBits for data shorter than the
// bitmap needs.
type ShortDataError struct {
	Want, Got int64
}

func (e *ShortDataError) Error() string {
	return fmt.Sprintf("expecting at least %d bytes but got %d bytes", e.Want, e.Got)
}

// UnmarshalBits builds a bitmap of size bytes and the given granularity from
// bits in QBM's file layout (see MarshalBits). data must hold at least
// ceil(ceil(size/granularity)/8) bytes (a *ShortDataError otherwise); bytes
// and bits past the last granule are ignored.
func UnmarshalBits(size int64, granularity uint64, data []byte) (*Bitmap, error) {
	b, err := New(size, granularity)
	if err != nil {
		return nil, err
	}
	need := (b.nbits + 7) / 8
	if uint64(len(data)) < need {
		return nil, &ShortDataError{Want: int64(need), Got: int64(len(data))}
	}
	data = data[:need]
	// Whole words straight from data; a new bitmap is clear, so zero
	// words need no store.
	words := b.levels[0]
	i := 0
	for ; len(data) >= 8; i++ {
		if v := binary.LittleEndian.Uint64(data); v != 0 {
			words[i].Store(v)
		}
		data = data[8:]
	}
	if len(data) > 0 {
		var w [8]byte
		copy(w[:], data)
		words[i].Store(binary.LittleEndian.Uint64(w[:]))
	}
	if tail := b.nbits & 63; tail != 0 {
		last := &b.levels[0][b.nbits>>6]
		last.Store(last.Load() & (1<<tail - 1))
	}
	b.recount()
	b.rebuildSummaries()
	return b, nil
}

// Copy returns an independent bitmap with the same size, granularity and
// bits.
func (b *Bitmap) Copy() *Bitmap {
	defer b.rlock(0).mu.RUnlock()
	c := &Bitmap{id: lastID.Add(1), shift: b.shift, size: b.size, nbits: b.nbits}
	c.levels = allocLevels(b.nbits)
	for l, level := range b.levels {
		for i := range level {
			c.levels[l][i].Store(level[i].Load())
		}
	}
	c.recount()
	return c
}

// Merge sets in b every bit of src (b |= src), as block-dirty-bitmap-merge
// does. Like QEMU 7.2, it needs the two bitmaps to cover the same size but
// not to have the same granularity: with different granularities every
// dirty byte range of src marks the granules of b it touches. The error
// text is QEMU's.
func (b *Bitmap) Merge(src *Bitmap) error {
	if src == b {
		return nil
	}
	// Both locks are shared (merging only adds bits); take them in a fixed
	// order so that two merges in opposite directions cannot deadlock
	// against a waiting Reset.
	first, second := b, src
	if src.id < b.id {
		first, second = src, b
	}
	defer first.rlock(0).mu.RUnlock()
	defer second.rlock(0).mu.RUnlock()
	s := &b.shards[0]

	if b.size != src.size {
		return fmt.Errorf("Bitmaps are of different sizes (destination size is %d, source size is %d) and can't be merged", //nolint:staticcheck // QEMU's message
			b.size, src.size)
	}
	if b.shift == src.shift {
		b.orWords(s, src)
		return nil
	}
	forEachRun(src.levels[0], src.nbits, func(f, l uint64) {
		// Byte range of the run, cut at the size like QEMU's dirty areas.
		off := int64(f << src.shift)
		end := min(int64((l+1)<<src.shift), src.size)
		if first, last, ok := b.byteRange(off, end-off); ok {
			b.setBits(s, first, last)
		}
	})
	return nil
}

// orWords ORs every level of src, which has the same shape, into b. The
// bits go first so that a summary bit never announces an empty word.
func (b *Bitmap) orWords(s *shard, src *Bitmap) {
	var added int64
	for i := range src.levels[0] {
		v := src.levels[0][i].Load()
		if v == 0 || b.levels[0][i].Load()&v == v {
			continue
		}
		old := b.levels[0][i].Or(v)
		added += int64(bits.OnesCount64(v &^ old))
	}
	s.count.Add(added)
	for l := 1; l < len(src.levels); l++ {
		for i := range src.levels[l] {
			if v := src.levels[l][i].Load(); v != 0 {
				b.levels[l][i].Or(v)
			}
		}
	}
}

// Resize changes the number of bytes the bitmap covers, as the node's size
// changes. Granules that remain keep their bits (a granule that was the last,
// partial one keeps its bit when the bitmap grows); bits past the new end are
// dropped; new granules are clean.
func (b *Bitmap) Resize(size int64) {
	b.lock()
	defer b.unlock()
	if size < 0 {
		size = 0
	}
	nbits := granules(size, b.shift)
	old := b.levels[0]
	b.levels = allocLevels(nbits)
	words := b.levels[0]
	for i := range min(len(old), len(words)) {
		words[i].Store(old[i].Load())
	}
	if nbits < b.nbits {
		// Drop the bits past the new end in the last word kept.
		if w := nbits >> 6; w < uint64(len(words)) {
			words[w].Store(words[w].Load() & (1<<(nbits&63) - 1))
		}
	}
	b.size, b.nbits = size, nbits
	b.recount()
	b.rebuildSummaries()
}
