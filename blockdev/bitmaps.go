package blockdev

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/qbmond/qbmond/bitmap"
)

// DirtyBitmap is a named dirty bitmap of a node: while it records, every
// write, write-zeroes and discard that passes the node's entry points
// marks the granules it touches.
type DirtyBitmap struct {
	name       string
	node       *Node
	bits       *bitmap.Bitmap
	recording  atomic.Bool
	busy       atomic.Int32 // users such as exports and backup jobs
	persistent bool
	readOnly   bool // a persistent bitmap of a read-only node
	// inconsistent: loaded from storage that was not closed cleanly; it
	// can only be removed.
	inconsistent bool
	// shadow, while a transaction may have to undo a change of the bits,
	// records the writes made meanwhile so that the undo keeps them.
	shadow atomic.Pointer[bitmap.Bitmap]
	// successor, while a backup has the bitmap frozen, records the
	// writes in its place (an anonymous bitmap of the node, recording
	// when the bitmap did); see CreateSuccessor.
	successor atomic.Pointer[DirtyBitmap]
}

// startShadow makes writes also mark a fresh shadow bitmap and returns it;
// own is false when a shadow was already running (and is returned).
func (b *DirtyBitmap) startShadow() (shadow *bitmap.Bitmap, own bool) {
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

// Name is the bitmap's name.
func (b *DirtyBitmap) Name() string { return b.name }

// Node is the node the bitmap belongs to.
func (b *DirtyBitmap) Node() *Node { return b.node }

// Bits returns the bitmap's current bits.
func (b *DirtyBitmap) Bits() *bitmap.Bitmap { return b.bits }

// Recording tells whether writes mark the bitmap (or, while it is frozen,
// its successor), as QEMU reports it.
func (b *DirtyBitmap) Recording() bool {
	if s := b.successor.Load(); s != nil {
		return s.recording.Load()
	}
	return b.recording.Load()
}

// Busy tells whether an operation (an export, a job) uses the bitmap.
func (b *DirtyBitmap) Busy() bool { return b.busy.Load() > 0 }

// Persistent tells whether the node's driver stores the bitmap.
func (b *DirtyBitmap) Persistent() bool { return b.persistent }

// Inconsistent tells whether the bitmap was loaded in use (not saved).
func (b *DirtyBitmap) Inconsistent() bool { return b.inconsistent }

// Acquire marks the bitmap busy for an operation; Release undoes it.
func (b *DirtyBitmap) Acquire() { b.busy.Add(1) }

// Release ends a use Acquire began.
func (b *DirtyBitmap) Release() { b.busy.Add(-1) }

// BitmapCheck selects the conditions Check refuses, as QEMU's
// BDRV_BITMAP_* flags do.
type BitmapCheck uint8

const (
	// CheckBusy refuses a bitmap in use by another operation.
	CheckBusy BitmapCheck = 1 << iota
	// CheckReadOnly refuses a read-only bitmap.
	CheckReadOnly
	// CheckInconsistent refuses an inconsistent bitmap.
	CheckInconsistent

	// CheckDefault is for operations that change the bits.
	CheckDefault = CheckBusy | CheckReadOnly | CheckInconsistent
	// CheckAllowReadOnly is for operations that only read the bits or
	// change the recording state.
	CheckAllowReadOnly = CheckBusy | CheckInconsistent
)

// Check returns QEMU's error when the bitmap is in one of the states
// flags select.
func (b *DirtyBitmap) Check(flags BitmapCheck) error {
	switch {
	case flags&CheckBusy != 0 && b.Busy():
		return fmt.Errorf("Bitmap '%s' is currently in use by another operation and cannot be used", b.name)
	case flags&CheckReadOnly != 0 && b.readOnly:
		return fmt.Errorf("Bitmap '%s' is readonly and cannot be modified", b.name)
	case flags&CheckInconsistent != 0 && b.inconsistent:
		return &hintError{
			msg:  fmt.Sprintf("Bitmap '%s' is inconsistent and cannot be used", b.name),
			hint: "Try block-dirty-bitmap-remove to delete this bitmap from disk",
		}
	}
	return nil
}

// hintError is an error with QEMU's extra advice line.
type hintError struct{ msg, hint string }

func (e *hintError) Error() string { return e.msg }
func (e *hintError) Hint() string  { return e.hint }

// bitmapList is a node's bitmaps, newest first (as QEMU lists them). The
// slice is replaced, never changed, so the write path reads it without a
// lock.
type bitmapList struct {
	mu   sync.Mutex // serialises changes
	list atomic.Pointer[[]*DirtyBitmap]
}

func (l *bitmapList) load() []*DirtyBitmap {
	if p := l.list.Load(); p != nil {
		return *p
	}
	return nil
}

// DirtyBitmaps returns the node's bitmaps, newest first.
func (n *Node) DirtyBitmaps() []*DirtyBitmap { return n.bitmaps.load() }

// DirtyBitmap returns the node's bitmap called name, or nil (anonymous
// bitmaps have no name to find them by).
func (n *Node) DirtyBitmap(name string) *DirtyBitmap {
	if name == "" {
		return nil
	}
	for _, b := range n.bitmaps.load() {
		if b.name == name {
			return b
		}
	}
	return nil
}

// AddAnonymousBitmap lists bits among the node's bitmaps without a name,
// as QEMU lists its internal bitmaps (a backup's copy bitmap, a
// copy-before-write filter's): query-named-block-nodes shows them, and
// writes mark them when recording. remove takes them off. Caller holds
// the graph lock (or the node is being opened).
func (n *Node) AddAnonymousBitmap(bits *bitmap.Bitmap, recording bool) (remove func()) {
	b := &DirtyBitmap{node: n, bits: bits}
	b.recording.Store(recording)
	n.insertBitmap(b)
	return func() { _ = n.dropBitmap(b, true) }
}

// markDirty records a modification of [off, off+length) in every
// recording bitmap of the node.
func (n *Node) markDirty(off, length int64) {
	for _, b := range n.bitmaps.load() {
		if b.recording.Load() {
			// The bits first, then the shadow: a shadow installed
			// before a transaction copies the bits is always seen.
			b.bits.Set(off, length)
			if s := b.shadow.Load(); s != nil {
				s.Set(off, length)
			}
		}
	}
}

// resizeBitmaps follows a change of the node's length.
func (n *Node) resizeBitmaps() {
	for _, b := range n.bitmaps.load() {
		b.bits.Resize(n.Length())
	}
}

// BitmapOptions are block-dirty-bitmap-add's options.
type BitmapOptions struct {
	// Granularity in bytes; 0 for QEMU's default (from the cluster size).
	Granularity uint64
	Persistent  bool
	Disabled    bool
}

// maxBitmapName is QEMU's limit on bitmap names, in bytes.
const maxBitmapName = 1023

// AddDirtyBitmap creates a bitmap on the node.
func (n *Node) AddDirtyBitmap(_ *Locked, name string, o BitmapOptions) (*DirtyBitmap, error) {
	if name == "" {
		return nil, errors.New("Bitmap name cannot be empty")
	}
	if len(name) > maxBitmapName {
		return nil, errors.New("Bitmap name is too long")
	}
	g := o.Granularity
	if g == 0 {
		var cluster int64
		if di, err := n.drv.Info(context.Background()); err == nil {
			cluster = di.ClusterSize
		}
		g = bitmap.DefaultGranularity(cluster)
	} else if g < 512 || g&(g-1) != 0 {
		return nil, errors.New("Granularity must be power of 2 and at least 512")
	}
	if n.DirtyBitmap(name) != nil {
		return nil, fmt.Errorf("Bitmap already exists: %s", name)
	}
	var store BitmapStore
	if o.Persistent {
		var ok bool
		if store, ok = n.drv.(BitmapStore); !ok {
			return nil, fmt.Errorf("Can't store persistent bitmaps to %s: Operation not supported", n.name)
		}
		if err := store.CanStoreBitmap(name, g); err != nil {
			return nil, err
		}
	}
	bits, err := bitmap.New(n.Length(), g)
	if err != nil {
		return nil, err
	}
	b := &DirtyBitmap{name: name, node: n, bits: bits, persistent: o.Persistent}
	b.recording.Store(!o.Disabled)
	if store != nil {
		if err := store.StoreBitmap(b); err != nil {
			return nil, err
		}
	}
	n.insertBitmap(b)
	return b, nil
}

// LoadDirtyBitmap adds a bitmap a driver read from its storage when it
// opened (persistent; inconsistent when it was not saved cleanly).
func (oc *OpenContext) LoadDirtyBitmap(name string, bits *bitmap.Bitmap, recording, inconsistent bool) *DirtyBitmap {
	n := oc.node
	b := &DirtyBitmap{name: name, node: n, bits: bits, persistent: true, inconsistent: inconsistent, readOnly: n.ReadOnly()}
	b.recording.Store(recording && !inconsistent)
	n.insertBitmap(b)
	return b
}

func (n *Node) insertBitmap(b *DirtyBitmap) {
	n.bitmaps.mu.Lock()
	defer n.bitmaps.mu.Unlock()
	old := n.bitmaps.load()
	list := make([]*DirtyBitmap, 0, len(old)+1)
	list = append(append(list, b), old...)
	n.bitmaps.list.Store(&list)
}

// RemoveDirtyBitmap deletes a bitmap (and what the driver stored of it).
func (n *Node) RemoveDirtyBitmap(_ *Locked, name string) error {
	b := n.DirtyBitmap(name)
	if b == nil {
		return fmt.Errorf("Dirty bitmap '%s' not found", name)
	}
	if err := b.Check(CheckBusy | CheckReadOnly); err != nil {
		return err
	}
	return n.dropBitmap(b, false)
}

// dropBitmap takes b off the node, first from the driver's storage for a
// persistent bitmap; with force a storage failure does not keep it.
func (n *Node) dropBitmap(b *DirtyBitmap, force bool) error {
	if b.persistent {
		if store, ok := n.drv.(BitmapStore); ok {
			if err := store.RemoveBitmap(b.name); err != nil && !force {
				return err
			}
		}
	}
	n.bitmaps.mu.Lock()
	defer n.bitmaps.mu.Unlock()
	old := n.bitmaps.load()
	list := make([]*DirtyBitmap, 0, len(old))
	for _, o := range old {
		if o != b {
			list = append(list, o)
		}
	}
	n.bitmaps.list.Store(&list)
	return nil
}

// Clear resets every bit.
func (b *DirtyBitmap) Clear(_ *Locked) error {
	if err := b.Check(CheckDefault); err != nil {
		return err
	}
	b.bits.Clear()
	return b.saved()
}

// saved tells the driver of a persistent bitmap that its bits changed.
func (b *DirtyBitmap) saved() error {
	if !b.persistent || b.readOnly {
		return nil
	}
	if s, ok := b.node.drv.(BitmapSaver); ok {
		return s.SaveBitmap(b.name)
	}
	return nil
}

// SetRecording enables or disables the bitmap; a persistent bitmap of a
// writable node has its driver store the new state first.
func (b *DirtyBitmap) SetRecording(on bool) error {
	if err := b.Check(CheckAllowReadOnly); err != nil {
		return err
	}
	if b.persistent && !b.readOnly && b.Recording() != on {
		if r, ok := b.node.drv.(BitmapRecorder); ok {
			if err := r.SetBitmapRecording(b.name, on); err != nil {
				return err
			}
		}
	}
	b.recording.Store(on)
	return nil
}

// MergeInto adds the bits of every source to b, all or nothing: every
// source is checked before any bit changes.
func (b *DirtyBitmap) MergeInto(_ *Locked, sources []*DirtyBitmap) error {
	if err := b.Check(CheckDefault); err != nil {
		return err
	}
	dst := b.bits
	for _, s := range sources {
		if err := s.Check(CheckAllowReadOnly); err != nil {
			return err
		}
		if s.bits.Size() != dst.Size() {
			return fmt.Errorf("Bitmaps are of different sizes (destination size is %d, source size is %d) and can't be merged",
				dst.Size(), s.bits.Size())
		}
	}
	for _, s := range sources {
		if err := dst.Merge(s.bits); err != nil {
			return err
		}
	}
	return b.saved()
}

// CreateSuccessor freezes the bitmap for a backup (QEMU's
// bdrv_dirty_bitmap_create_successor): it stops recording and is busy,
// and an anonymous successor records what it would have. Abdicate or
// Reclaim ends the freeze.
func (b *DirtyBitmap) CreateSuccessor(_ *Locked) error {
	if b.Busy() {
		return errors.New("Cannot create a successor for a bitmap that is in-use by an operation")
	}
	bits, err := bitmap.New(b.bits.Size(), b.bits.Granularity())
	if err != nil {
		return err
	}
	s := &DirtyBitmap{node: b.node, bits: bits}
	s.recording.Store(b.recording.Load())
	b.node.insertBitmap(s)
	b.successor.Store(s)
	b.recording.Store(false)
	b.Acquire()
	return nil
}

// Abdicate ends a freeze with the successor taking the bitmap's place: the
// bits become what was written since the freeze (a backup that copied
// everything the bitmap had).
func (b *DirtyBitmap) Abdicate(_ *Locked) {
	s := b.successor.Load()
	if s == nil {
		return
	}
	b.bits.Clear()
	// From here writes mark both; the successor's bits, racing writes
	// included, then go into the bitmap.
	b.recording.Store(s.recording.Load())
	_ = b.bits.Merge(s.bits)
	// In QEMU the successor is the bitmap from now on: the name takes
	// the successor's place in the node's list (newest first).
	b.node.moveBitmap(b, s)
	b.endFreeze(s)
}

// moveBitmap puts b where at is in the node's list, taking it from its
// own place.
func (n *Node) moveBitmap(b, at *DirtyBitmap) {
	n.bitmaps.mu.Lock()
	defer n.bitmaps.mu.Unlock()
	old := n.bitmaps.load()
	list := make([]*DirtyBitmap, 0, len(old))
	for _, o := range old {
		switch o {
		case b:
		case at:
			list = append(list, b, at)
		default:
			list = append(list, o)
		}
	}
	n.bitmaps.list.Store(&list)
}

// Reclaim ends a freeze keeping everything: the successor's bits are
// merged back (a backup that failed, or did not mean to change the
// bitmap).
func (b *DirtyBitmap) Reclaim(_ *Locked) {
	s := b.successor.Load()
	if s == nil {
		return
	}
	b.recording.Store(s.recording.Load())
	_ = b.bits.Merge(s.bits)
	b.endFreeze(s)
}

func (b *DirtyBitmap) endFreeze(s *DirtyBitmap) {
	b.successor.Store(nil)
	_ = b.node.dropBitmap(s, true)
	b.Release()
	b.node.g.logSave(b)
}

// MergeBits adds bits (of the bitmap's size, any granularity) to the
// bitmap whatever its state (a backup putting back what it did not copy)
// and has a persistent bitmap saved.
func (b *DirtyBitmap) MergeBits(bits *bitmap.Bitmap) {
	_ = b.bits.Merge(bits)
	b.node.g.logSave(b)
}
