// Package dirty holds the dirty bitmaps a node carries, as state: a
// Bitmap is one bitmap's bits, whether writes mark them, how many
// operations use it, the shadow that lets a transaction undo a change
// without losing the writes made meanwhile, and the successor that records
// in its place while a backup has it frozen; a Set is a node's bitmaps,
// newest first, which the write path marks without a lock.
//
// What a bitmap is to the graph — its name, its node, whether the node's
// driver stores it, the checks and errors of the block-dirty-bitmap
// commands, the graph lock its changes need — is blockdev.DirtyBitmap's
// (blockdev/bitmaps.go), which holds a Bitmap; the node holds a Set of
// them and its write entry points mark through it. This package must not
// import blockdev.
package dirty

import (
	"sync"
	"sync/atomic"

	"github.com/qbmond/qbmond/bitmap"
)

// Bitmap is the state of one dirty bitmap.
type Bitmap struct {
	bits      *bitmap.Bitmap
	recording atomic.Bool
	busy      atomic.Int32 // users such as exports and backup jobs
	// shadow, while a transaction may have to undo a change of the bits,
	// records the writes made meanwhile so that the undo keeps them.
	shadow atomic.Pointer[bitmap.Bitmap]
	// successor, while a backup has the bitmap frozen, records the
	// writes in its place (see Freeze).
	successor atomic.Pointer[Bitmap]
}

// New returns the state of a bitmap over bits, recording or not.
func New(bits *bitmap.Bitmap, recording bool) *Bitmap {
	b := &Bitmap{bits: bits}
	b.recording.Store(recording)
	return b
}

// Bits returns the bitmap's bits.
func (b *Bitmap) Bits() *bitmap.Bitmap { return b.bits }

// Recording tells whether writes mark the bitmap (or, while it is frozen,
// its successor), as QEMU reports it.
func (b *Bitmap) Recording() bool {
	if s := b.successor.Load(); s != nil {
		return s.recording.Load()
	}
	return b.recording.Load()
}

// SetRecording has writes mark the bitmap from now on, or not.
func (b *Bitmap) SetRecording(on bool) { b.recording.Store(on) }

// Busy tells whether an operation (an export, a job) uses the bitmap.
func (b *Bitmap) Busy() bool { return b.busy.Load() > 0 }

// Acquire marks the bitmap busy for an operation; Release undoes it.
func (b *Bitmap) Acquire() { b.busy.Add(1) }

// Release ends a use Acquire began.
func (b *Bitmap) Release() { b.busy.Add(-1) }

// StartShadow makes writes also mark a fresh shadow bitmap and returns it;
// own is false when a shadow was already running (and is returned): only
// the one who started it stops it (StopShadow).
func (b *Bitmap) StartShadow() (shadow *bitmap.Bitmap, own bool) {
	if s := b.shadow.Load(); s != nil {
		return s, false
	}
	s, err := bitmap.New(b.bits.Size(), b.bits.Granularity())
	if err != nil {
		panic(err) // same size and granularity as a bitmap that exists
	}
	b.shadow.Store(s)
	return s, true
}

// StopShadow ends the shadow StartShadow began.
func (b *Bitmap) StopShadow() { b.shadow.Store(nil) }

// Merge adds the bits of every source to b. Sizes are the caller's to
// check: a source of another size fails at the first such source, after
// the earlier ones merged.
func (b *Bitmap) Merge(sources ...*Bitmap) error {
	for _, s := range sources {
		if err := b.bits.Merge(s.bits); err != nil {
			return err
		}
	}
	return nil
}

// NewSuccessor returns a bitmap of the same size that records when b does,
// to take over b's recording while a backup has b frozen (QEMU's
// bdrv_dirty_bitmap_create_successor). The caller lists it where writes
// mark it, then calls Freeze.
func (b *Bitmap) NewSuccessor() (*Bitmap, error) {
	bits, err := bitmap.New(b.bits.Size(), b.bits.Granularity())
	if err != nil {
		return nil, err
	}
	return New(bits, b.recording.Load()), nil
}

// Freeze hands b's recording to its successor s (listed already, so no
// write goes unmarked) and makes b busy; Abdicate or Reclaim, then Thaw
// and Release, end the freeze.
func (b *Bitmap) Freeze(s *Bitmap) {
	b.successor.Store(s)
	b.recording.Store(false)
	b.Acquire()
}

// Successor returns the successor of a frozen bitmap, nil otherwise.
func (b *Bitmap) Successor() *Bitmap { return b.successor.Load() }

// Abdicate has the successor's writes take the bitmap's place: the bits
// become what was written since the freeze, and b records as the
// successor did. It returns the successor, nil when b is not frozen.
func (b *Bitmap) Abdicate() *Bitmap {
	s := b.successor.Load()
	if s == nil {
		return nil
	}
	b.bits.Clear()
	// From here writes mark both; the successor's bits, racing writes
	// included, then go into the bitmap.
	b.recording.Store(s.recording.Load())
	_ = b.bits.Merge(s.bits)
	return s
}

// Reclaim merges the successor's writes back into the bitmap, which
// records as the successor did. It returns the successor, nil when b is
// not frozen.
func (b *Bitmap) Reclaim() *Bitmap {
	s := b.successor.Load()
	if s == nil {
		return nil
	}
	b.recording.Store(s.recording.Load())
	_ = b.bits.Merge(s.bits)
	return s
}

// Thaw forgets the successor after Abdicate or Reclaim.
func (b *Bitmap) Thaw() { b.successor.Store(nil) }

// Set is a node's bitmaps, newest first (as QEMU lists them), each with
// its handle H (what the node knows the bitmap by). The list is replaced,
// never changed, so the write path reads it without a lock; changes are
// serialised among themselves.
type Set[H any] struct {
	mu   sync.Mutex
	list atomic.Pointer[[]Entry[H]]
}

// Entry is one bitmap of a Set.
type Entry[H any] struct {
	B *Bitmap
	H H
}

// Load returns the bitmaps, newest first. The slice is not to be changed.
func (s *Set[H]) Load() []Entry[H] {
	if p := s.list.Load(); p != nil {
		return *p
	}
	return nil
}

// Mark records a modification of [off, off+length) in every recording
// bitmap of the set.
func (s *Set[H]) Mark(off, length int64) {
	for _, e := range s.Load() {
		if b := e.B; b.recording.Load() {
			// The bits first, then the shadow: a shadow installed
			// before a transaction copies the bits is always seen.
			b.bits.Set(off, length)
			if sh := b.shadow.Load(); sh != nil {
				sh.Set(off, length)
			}
		}
	}
}

// Resize follows a change of the node's length.
func (s *Set[H]) Resize(size int64) {
	for _, e := range s.Load() {
		e.B.bits.Resize(size)
	}
}

// Insert adds b as the newest bitmap.
func (s *Set[H]) Insert(b *Bitmap, h H) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.Load()
	list := make([]Entry[H], 0, len(old)+1)
	list = append(append(list, Entry[H]{b, h}), old...)
	s.list.Store(&list)
}

// Remove takes b out of the set.
func (s *Set[H]) Remove(b *Bitmap) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.Load()
	list := make([]Entry[H], 0, len(old))
	for _, o := range old {
		if o.B != b {
			list = append(list, o)
		}
	}
	s.list.Store(&list)
}

// Move puts b where at is, taking it from its own place (a bitmap that
// takes over its successor's position); nothing happens when b is not in
// the set.
func (s *Set[H]) Move(b, at *Bitmap) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.Load()
	var moved Entry[H]
	for _, o := range old {
		if o.B == b {
			moved = o
		}
	}
	if moved.B == nil {
		return // not in the set
	}
	list := make([]Entry[H], 0, len(old))
	for _, o := range old {
		switch o.B {
		case b:
		case at:
			list = append(list, moved, o)
		default:
			list = append(list, o)
		}
	}
	s.list.Store(&list)
}
