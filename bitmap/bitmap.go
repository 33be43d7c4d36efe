// Package bitmap is the dirty bitmap data structure of qbmond: one bit per
// granule of a block node's byte range, with the semantics QEMU 7.2 gives its
// dirty bitmaps, so that what a client sees (count, sha256, dirty extents over
// NBD) is the same as with qemu-storage-daemon.
//
// A Bitmap is addressed in bytes. Granule k covers the bytes [k*g, (k+1)*g)
// of the node, g being the granularity; the last granule may reach past the
// node's size and is still one whole granule (QEMU counts it whole).
//
// Layout: the bits live in 64-bit words, bit k of word w being granule
// 64*w+k, which is also the order of QEMU's little-endian words and of QBM
// bitmap files. Above them sit summary levels (bit w of level n+1 is set when
// word w of level n is non-zero) so that searching a sparse 1 TiB bitmap at
// 4 KiB granularity skips empty stretches 4096 or 262144 granules at a time.
//
// Concurrency: every method is safe for concurrent use. Set and Merge only
// ever add bits, with atomic word operations under a shared lock, so writers
// on many goroutines do not serialise against each other or against readers
// (Get, Count, the searches, SHA256, MarshalBits, Copy). Operations that
// remove bits or change the shape (Reset, Clear, Resize) take the lock
// exclusively. A reader running concurrently with a Set may or may not see
// that Set's bits; it sees every bit of every Set that returned before it
// started.
package bitmap

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
)

const (
	// MinGranularity and MaxGranularity bound the granularity of a bitmap
	// (QEMU: at least 512, and a uint32 in QMP, so 2 GiB at most).
	MinGranularity = 512
	MaxGranularity = 1 << 31

	// maxBits is QEMU's limit on the number of granules (2^41).
	maxBits = 1 << 41

	// topWords is the largest level that is scanned linearly; levels are
	// stacked until one has at most this many words.
	topWords = 64

	// nShards is the number of shared-lock shards (see shard).
	nShards = 16
)

// ErrGranularity is returned for a granularity that is not a power of two of
// at least 512 bytes; its text is QEMU's.
var ErrGranularity = errors.New("Granularity must be power of 2 and at least 512") //nolint:staticcheck // QEMU's message

// ErrGranularityRange is returned for a power-of-two granularity above 2 GiB;
// QEMU's QMP rejects it already as not being a uint32.
var ErrGranularityRange = errors.New("Parameter 'granularity' expects uint32_t") //nolint:staticcheck // QEMU's message

// lastID numbers bitmaps so that Merge can take two locks in a fixed order.
var lastID atomic.Uint64

// Bitmap is a dirty bitmap over the bytes [0, Size()) of a node. The zero
// value is not usable; create one with New or UnmarshalBits.
type Bitmap struct {
	id    uint64
	shift uint // log2 of the granularity

	// shards hold the lock, split so that writers on different cores do
	// not bounce one reader count between them: Set, Merge and readers
	// take one shard's lock shared; Reset, Clear and Resize take every
	// shard's lock exclusively, in order. The guarded fields follow.
	shards [nShards]shard
	size   int64
	nbits  uint64
	levels [][]atomic.Uint64 // levels[0]: the bits; levels[n+1]: summary of levels[n]
}

// shard is one part of a Bitmap's lock, with a part of its count of set
// bits (the count is the sum over shards), padded to its own cache lines.
type shard struct {
	mu    sync.RWMutex
	count atomic.Int64
	_     [128 - 32]byte
}

// rlock takes the shared lock of the shard picked by hint and returns it.
func (b *Bitmap) rlock(hint uint64) *shard {
	s := &b.shards[hint%nShards]
	s.mu.RLock()
	return s
}

// lock takes the lock exclusively.
func (b *Bitmap) lock() {
	for i := range b.shards {
		b.shards[i].mu.Lock()
	}
}

func (b *Bitmap) unlock() {
	for i := len(b.shards) - 1; i >= 0; i-- {
		b.shards[i].mu.Unlock()
	}
}

// dirtyGranules is the number of set bits.
func (b *Bitmap) dirtyGranules() int64 {
	var n int64
	for i := range b.shards {
		n += b.shards[i].count.Load()
	}
	return n
}

// New returns an empty bitmap covering size bytes, one bit per granularity
// bytes. The granularity must be a power of two from 512 B to 2 GiB.
func New(size int64, granularity uint64) (*Bitmap, error) {
	if granularity < MinGranularity || granularity&(granularity-1) != 0 {
		return nil, ErrGranularity
	}
	if granularity > MaxGranularity {
		return nil, ErrGranularityRange
	}
	if size < 0 {
		return nil, fmt.Errorf("invalid bitmap size %d", size)
	}
	shift := uint(bits.TrailingZeros64(granularity))
	nbits := granules(size, shift)
	if nbits > maxBits {
		return nil, fmt.Errorf("bitmap of %d granules is too large (at most %d)", nbits, uint64(maxBits))
	}
	b := &Bitmap{id: lastID.Add(1), shift: shift, size: size, nbits: nbits}
	b.levels = allocLevels(nbits)
	return b, nil
}

// DefaultGranularity is the granularity QEMU picks when
// block-dirty-bitmap-add names none: the node's cluster size clamped to
// [4 KiB, 64 KiB], or 64 KiB when the node has no cluster size (0 or
// negative: raw, file, null-co).
func DefaultGranularity(clusterSize int64) uint64 {
	switch {
	case clusterSize <= 0:
		return 64 << 10
	case clusterSize < 4<<10:
		return 4 << 10
	case clusterSize > 64<<10:
		return 64 << 10
	}
	return uint64(clusterSize)
}

// granules is the number of granules covering size bytes.
func granules(size int64, shift uint) uint64 {
	return (uint64(size) + 1<<shift - 1) >> shift
}

// allocLevels allocates the bit words for nbits bits (at least one word, as
// QEMU hashes at least one) and the summary levels above them.
func allocLevels(nbits uint64) [][]atomic.Uint64 {
	n := max((nbits+63)/64, 1)
	levels := [][]atomic.Uint64{make([]atomic.Uint64, n)}
	for n > topWords {
		n = (n + 63) / 64
		levels = append(levels, make([]atomic.Uint64, n))
	}
	return levels
}

// Size is the number of bytes the bitmap covers.
func (b *Bitmap) Size() int64 {
	defer b.rlock(0).mu.RUnlock()
	return b.size
}

// Granularity is the number of bytes one bit stands for.
func (b *Bitmap) Granularity() uint64 { return 1 << b.shift }

// Count is the number of dirty bytes as QEMU reports it in the "count"
// member of a bitmap's query: dirty granules times the granularity. The last
// granule counts whole even when the node ends inside it (QSD reports 65536
// for a dirty last granule of a 1 MiB+512 B node at 64 KiB granularity).
func (b *Bitmap) Count() int64 {
	return b.dirtyGranules() << b.shift
}

// byteRange converts the byte range [off, off+n) into the granules it
// touches, [first, last], clipped to the bitmap; ok is false when nothing of
// it lies inside.
func (b *Bitmap) byteRange(off, n int64) (first, last uint64, ok bool) {
	if n <= 0 || off >= b.size {
		return 0, 0, false
	}
	if off < 0 {
		n += off
		off = 0
		if n <= 0 {
			return 0, 0, false
		}
	}
	end := b.size
	if n < end-off {
		end = off + n
	}
	return uint64(off) >> b.shift, uint64(end-1) >> b.shift, true
}

// Set marks dirty every granule that the byte range [off, off+n) touches.
// The part of the range outside [0, Size()) is ignored.
func (b *Bitmap) Set(off, n int64) {
	// Neighbouring writes pick different shards.
	s := b.rlock(uint64(off) >> (b.shift + 6))
	defer s.mu.RUnlock()
	if first, last, ok := b.byteRange(off, n); ok {
		b.setBits(s, first, last)
	}
}

// setBits sets bits [first, last] and the summary bits above them, counting
// new bits in s. The caller holds s's lock (shared is enough).
func (b *Bitmap) setBits(s *shard, first, last uint64) {
	if added := orRange(b.levels[0], first, last); added != 0 {
		s.count.Add(added)
	}
	for l := 1; l < len(b.levels); l++ {
		first, last = first>>6, last>>6
		orRange(b.levels[l], first, last)
	}
}

// wordMask is the part of word w that the bit range [first, last] covers.
func wordMask(w, first, last uint64) uint64 {
	mask := ^uint64(0)
	if w == first>>6 {
		mask <<= first & 63
	}
	if w == last>>6 {
		mask &= ^uint64(0) >> (63 - last&63)
	}
	return mask
}

// orRange sets the bits [first, last] of words atomically and returns how
// many were clear before. Words that already hold the bits are only read.
func orRange(words []atomic.Uint64, first, last uint64) int64 {
	var added int
	fw, lw := first>>6, last>>6
	for w := fw; w <= lw; w++ {
		mask := wordMask(w, first, last)
		if words[w].Load()&mask == mask {
			continue
		}
		old := words[w].Or(mask)
		added += bits.OnesCount64(mask &^ old)
	}
	return int64(added)
}

// Reset marks clean the granules that lie wholly inside [off, off+n); a
// range that reaches Size() also covers the last granule, which may extend
// past the end. Partly covered granules stay dirty, so a Reset never loses a
// write it does not cover.
//
// QEMU accepts no other case: hbitmap_reset asserts that the start is
// aligned to the granularity and that the length is too unless the range
// ends exactly at the bitmap's size (a misaligned reset aborts QEMU). On
// every range QEMU accepts, this rule clears the same granules.
func (b *Bitmap) Reset(off, n int64) {
	b.lock()
	defer b.unlock()
	if n <= 0 || off >= b.size {
		return
	}
	if off < 0 {
		n += off
		off = 0
		if n <= 0 {
			return
		}
	}
	g := int64(1) << b.shift
	first := uint64((off + g - 1) >> b.shift)
	var end uint64 // one past the last granule to clear
	if n >= b.size-off {
		end = b.nbits
	} else {
		end = uint64(off+n) >> b.shift
	}
	if first >= end {
		return
	}
	b.clearBits(first, end-1)
}

// clearBits clears bits [first, last] and refreshes the summaries above
// them. The caller holds the lock exclusively.
func (b *Bitmap) clearBits(first, last uint64) {
	words := b.levels[0]
	fw, lw := first>>6, last>>6
	var removed int
	for w := fw; w <= lw; w++ {
		mask := wordMask(w, first, last)
		removed += bits.OnesCount64(words[w].And(^mask) & mask)
	}
	b.shards[0].count.Add(-int64(removed))
	for l := 1; l < len(b.levels); l++ {
		below := b.levels[l-1]
		for w := fw; w <= lw; w++ {
			bit := uint64(1) << (w & 63)
			if below[w].Load() == 0 {
				b.levels[l][w>>6].And(^bit)
			} else {
				b.levels[l][w>>6].Or(bit)
			}
		}
		fw, lw = fw>>6, lw>>6
	}
}

// Clear marks the whole bitmap clean.
func (b *Bitmap) Clear() {
	b.lock()
	defer b.unlock()
	for _, level := range b.levels {
		for i := range level {
			level[i].Store(0)
		}
	}
	for i := range b.shards {
		b.shards[i].count.Store(0)
	}
}

// Get reports whether the granule holding byte off is dirty; bytes outside
// [0, Size()) are clean.
func (b *Bitmap) Get(off int64) bool {
	defer b.rlock(uint64(off) >> (b.shift + 6)).mu.RUnlock()
	if off < 0 || off >= b.size {
		return false
	}
	i := uint64(off) >> b.shift
	return b.levels[0][i>>6].Load()&(1<<(i&63)) != 0
}

// rebuildSummaries recomputes every summary level from the bits below it.
// The caller holds the lock exclusively (or owns b alone).
func (b *Bitmap) rebuildSummaries() {
	for l := 1; l < len(b.levels); l++ {
		below, level := b.levels[l-1], b.levels[l]
		for i := range level {
			var v uint64
			for j := range min(64, len(below)-i*64) {
				if below[i*64+j].Load() != 0 {
					v |= 1 << j
				}
			}
			level[i].Store(v)
		}
	}
}

// recount recomputes the number of set bits. The caller holds the lock
// exclusively (or owns b alone).
func (b *Bitmap) recount() {
	var n int
	for i := range b.levels[0] {
		n += bits.OnesCount64(b.levels[0][i].Load())
	}
	b.shards[0].count.Store(int64(n))
	for i := 1; i < len(b.shards); i++ {
		b.shards[i].count.Store(0)
	}
}
