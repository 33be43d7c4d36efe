package blockdev

import (
	"context"
	"errors"
	"fmt"

	"github.com/qbmond/qbmond/bitmap"
	"github.com/qbmond/qbmond/blockdev/dirty"
)

// DirtyBitmap is a dirty bitmap of a node: while it records, every write,
// write-zeroes and discard that passes the node's entry points marks the
// granules it touches. Its bits and their recording state (recording,
// busy, shadow, successor) are package dirty's; what makes it the node's —
// its name, whether and how the node's driver stores it, the checks and
// errors of the commands, the graph lock its changes need — is here.
type DirtyBitmap struct {
	st         *dirty.Bitmap
	name       string
	node       *Node
	persistent bool
	readOnly   bool // a persistent bitmap of a read-only node
	// inconsistent: loaded from storage that was not closed cleanly; it
	// can only be removed.
	inconsistent bool
}

// newDirtyBitmap is a bitmap of n over bits, recording or not.
func newDirtyBitmap(n *Node, name string, bits *bitmap.Bitmap, recording bool) *DirtyBitmap {
	return &DirtyBitmap{st: dirty.New(bits, recording), name: name, node: n}
}

// Name is the bitmap's name.
func (b *DirtyBitmap) Name() string { return b.name }

// Node is the node the bitmap belongs to.
func (b *DirtyBitmap) Node() *Node { return b.node }

// Bits returns the bitmap's current bits.
func (b *DirtyBitmap) Bits() *bitmap.Bitmap { return b.st.Bits() }

// Recording tells whether writes mark the bitmap (or, while it is frozen,
// its successor), as QEMU reports it.
func (b *DirtyBitmap) Recording() bool { return b.st.Recording() }

// Busy tells whether an operation (an export, a job) uses the bitmap.
func (b *DirtyBitmap) Busy() bool { return b.st.Busy() }

// Persistent tells whether the node's driver stores the bitmap.
func (b *DirtyBitmap) Persistent() bool { return b.persistent }

// Inconsistent tells whether the bitmap was loaded in use (not saved).
func (b *DirtyBitmap) Inconsistent() bool { return b.inconsistent }

// Acquire marks the bitmap busy for an operation; Release undoes it.
func (b *DirtyBitmap) Acquire() { b.st.Acquire() }

// Release ends a use Acquire began.
func (b *DirtyBitmap) Release() { b.st.Release() }

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

// DirtyBitmaps returns the node's bitmaps, newest first.
func (n *Node) DirtyBitmaps() []*DirtyBitmap {
	list := n.bitmaps.Load()
	if len(list) == 0 {
		return nil
	}
	out := make([]*DirtyBitmap, len(list))
	for i, e := range list {
		out[i] = e.H
	}
	return out
}

// DirtyBitmap returns the node's bitmap called name, or nil (anonymous
// bitmaps have no name to find them by).
func (n *Node) DirtyBitmap(name string) *DirtyBitmap {
	if name == "" {
		return nil
	}
	for _, e := range n.bitmaps.Load() {
		if e.H.name == name {
			return e.H
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
	b := newDirtyBitmap(n, "", bits, recording)
	n.insertBitmap(b)
	return func() { _ = n.dropBitmap(b, true) }
}

// markDirty records a modification of [off, off+length) in every
// recording bitmap of the node.
func (n *Node) markDirty(off, length int64) { n.bitmaps.Mark(off, length) }

// resizeBitmaps follows a change of the node's length.
func (n *Node) resizeBitmaps() { n.bitmaps.Resize(n.Length()) }

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
	b := newDirtyBitmap(n, name, bits, !o.Disabled)
	b.persistent = o.Persistent
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
	b := newDirtyBitmap(n, name, bits, recording && !inconsistent)
	b.persistent, b.inconsistent, b.readOnly = true, inconsistent, n.ReadOnly()
	n.insertBitmap(b)
	return b
}

func (n *Node) insertBitmap(b *DirtyBitmap) { n.bitmaps.Insert(b.st, b) }

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
	n.bitmaps.Remove(b.st)
	return nil
}

// Clear resets every bit.
func (b *DirtyBitmap) Clear(_ *Locked) error {
	if err := b.Check(CheckDefault); err != nil {
		return err
	}
	b.st.Bits().Clear()
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
	b.st.SetRecording(on)
	return nil
}

// MergeInto adds the bits of every source to b, all or nothing: every
// source is checked before any bit changes.
func (b *DirtyBitmap) MergeInto(_ *Locked, sources []*DirtyBitmap) error {
	if err := b.Check(CheckDefault); err != nil {
		return err
	}
	dst := b.st.Bits()
	for _, s := range sources {
		if err := s.Check(CheckAllowReadOnly); err != nil {
			return err
		}
		if s.st.Bits().Size() != dst.Size() {
			return fmt.Errorf("Bitmaps are of different sizes (destination size is %d, source size is %d) and can't be merged",
				dst.Size(), s.st.Bits().Size())
		}
	}
	states := make([]*dirty.Bitmap, len(sources))
	for i, s := range sources {
		states[i] = s.st
	}
	if err := b.st.Merge(states...); err != nil {
		return err
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
	s, err := b.st.NewSuccessor()
	if err != nil {
		return err
	}
	// Listed first, so that no write goes unmarked.
	b.node.insertBitmap(&DirtyBitmap{st: s, node: b.node})
	b.st.Freeze(s)
	return nil
}

// Abdicate ends a freeze with the successor taking the bitmap's place: the
// bits become what was written since the freeze (a backup that copied
// everything the bitmap had).
func (b *DirtyBitmap) Abdicate(_ *Locked) {
	s := b.st.Abdicate()
	if s == nil {
		return
	}
	// In QEMU the successor is the bitmap from now on: the name takes
	// the successor's place in the node's list (newest first).
	b.node.bitmaps.Move(b.st, s)
	b.endFreeze(s)
}

// Reclaim ends a freeze keeping everything: the successor's bits are
// merged back (a backup that failed, or did not mean to change the
// bitmap).
func (b *DirtyBitmap) Reclaim(_ *Locked) {
	s := b.st.Reclaim()
	if s == nil {
		return
	}
	b.endFreeze(s)
}

// endFreeze unlists the successor s (anonymous: nothing stores it) and
// lets the bitmap go.
func (b *DirtyBitmap) endFreeze(s *dirty.Bitmap) {
	b.st.Thaw()
	b.node.bitmaps.Remove(s)
	b.Release()
	b.node.g.logSave(b)
}

// MergeBits adds bits (of the bitmap's size, any granularity) to the
// bitmap whatever its state (a backup putting back what it did not copy)
// and has a persistent bitmap saved.
func (b *DirtyBitmap) MergeBits(bits *bitmap.Bitmap) {
	_ = b.st.Bits().Merge(bits)
	b.node.g.logSave(b)
}
