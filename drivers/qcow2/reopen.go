package qcow2

import (
	"context"
	"errors"

	"github.com/qbmond/qbmond/blockdev"
)

// ReopenPrepare checks that the image may change to the requested mode.
// Going read-only it makes the image consistent on disk first (flushed,
// with the dirty bit lazy refcounts set cleared); going read-write it
// refuses what Open would refuse for a writable image.
func (d *Driver) ReopenPrepare(ctx context.Context, rs *blockdev.ReopenState) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if rs.ReadOnly {
		if d.ro {
			return nil
		}
		if err := d.file.Flush(ctx); err != nil {
			return err
		}
		if d.dirtyUs && !d.failed.Load() {
			if err := d.setIncompat(ctx, d.h.incompat&^incDirty); err != nil {
				return err
			}
			d.dirtyUs = false
		}
		return nil
	}
	if d.h.incompat&incCorrupt != 0 || d.failed.Load() {
		return errors.New("qcow2: Image is corrupt; cannot be opened read/write")
	}
	if d.h.nbSnapshots > 0 {
		return errNoSnapshots
	}
	return nil
}

// ReopenCommit switches the mode. Auto-clear features (bitmaps) an image
// opened read-only kept are cleared before its first write.
func (d *Driver) ReopenCommit(rs *blockdev.ReopenState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ro = rs.ReadOnly
	d.autoclearPending.Store(!d.ro && d.h.autoclear != 0)
}

// ReopenAbort leaves the mode as it was.
func (d *Driver) ReopenAbort(rs *blockdev.ReopenState) {}

// clearAutoclear clears the auto-clear features before the first write
// after a reopen read-write, as Open does for an image opened writable.
func (d *Driver) clearAutoclear(ctx context.Context) error {
	if !d.autoclearPending.Load() {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.autoclearPending.Load() {
		return nil
	}
	var b [8]byte
	if err := d.file.Write(ctx, offAutoclear, b[:], 0); err != nil {
		return err
	}
	d.h.autoclear = 0
	d.autoclearPending.Store(false)
	return nil
}

// SetBackingChild follows the graph's changes of the backing link.
func (d *Driver) SetBackingChild(c *blockdev.Child) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.backing = c
}

var (
	_ blockdev.Reopener       = (*Driver)(nil)
	_ blockdev.BackingUpdater = (*Driver)(nil)
)
