package qcow2

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/qbmond/qbmond/blockdev"
)

// reopenOptions are qcow2's options that change on reopen (QEMU's
// qcow2_mutable_opts); all of them may be left out, going back to their
// defaults. pass-discard-snapshot is accepted and checked, and has nothing
// to act on: images with internal snapshots are read-only here.
var reopenOptions = []string{
	"lazy-refcounts", "pass-discard-request", "pass-discard-snapshot",
	"pass-discard-other", "overlap-check", "cache-size", "l2-cache-size",
	"l2-cache-entry-size", "refcount-cache-size", "cache-clean-interval",
}

// ReopenOptions lists the options above.
func (d *Driver) ReopenOptions() (changeable, resettable []string) {
	return reopenOptions, reopenOptions
}

// reopenSettings are the prepared new settings.
type reopenSettings struct {
	lazy, passReq, passOther bool
	l2Tables, refBlocks      int
	olCheck                  olMask
}

// ReopenPrepare checks the new options and that the image may change to
// the requested mode. Going read-only, or turning lazy refcounts off, it
// makes the image consistent on disk first (flushed, with the dirty bit
// lazy refcounts set cleared); going read-write it refuses what Open
// would refuse for a writable image.
func (d *Driver) ReopenPrepare(ctx context.Context, rs *blockdev.ReopenState) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitAllFlights()
	o := rs.Options
	var st reopenSettings
	var err error
	if st.lazy, err = o.Bool("lazy-refcounts", d.h.compat&compatLazyRefcounts != 0); err != nil {
		return err
	}
	if st.lazy && d.h.version < 3 {
		return errors.New("Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level")
	}
	if st.passReq, err = o.Bool("pass-discard-request", true); err != nil {
		return err
	}
	if _, err = o.Bool("pass-discard-snapshot", true); err != nil {
		return err
	}
	if st.passOther, err = o.Bool("pass-discard-other", false); err != nil {
		return err
	}
	if st.l2Tables, st.refBlocks, err = cacheSizes(o, d.cs, d.h.size); err != nil {
		return err
	}
	if st.olCheck, err = parseOverlapCheck(o); err != nil {
		return err
	}
	if rs.ReadOnly && !d.ro {
		// The bitmaps are stored; if the reopen is aborted they are
		// marked in use again before the next write.
		if _, err := d.storeBitmaps(ctx); err != nil {
			return err
		}
	}
	if rs.ReadOnly && !d.ro || !d.ro && d.lazy && !st.lazy {
		if err := d.syncMeta(ctx); err != nil {
			return err
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
	}
	if !rs.ReadOnly && d.ro {
		if d.h.incompat&incCorrupt != 0 || d.failed.Load() {
			return errors.New("qcow2: Image is corrupt; cannot be opened read/write")
		}
		if d.h.nbSnapshots > 0 {
			return errNoSnapshots
		}
	}
	rs.Opaque = st
	return nil
}

// ReopenCommit switches the mode and takes the new settings. Auto-clear
// features (bitmaps) an image opened read-only kept are cleared before
// its first write.
func (d *Driver) ReopenCommit(rs *blockdev.ReopenState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitAllFlights()
	st := rs.Opaque.(reopenSettings)
	d.ro = rs.ReadOnly
	d.autoclearPending.Store(!d.ro && (d.h.autoclear != 0 || len(d.bm.dir) > 0))
	d.lazy, d.passReq, d.passOther = st.lazy, st.passReq, st.passOther
	d.olCheck = st.olCheck
	d.l2c.resize(st.l2Tables)
	d.rbc.resize(st.refBlocks)
}

// ReopenCommitPost marks the bitmaps in use on disk as soon as a reopen
// read-write is done, as QEMU does at the reopen itself (not at the first
// write): from here on their copy in the image is stale. The other
// auto-clear bits are still cleared before the first write. A guest write
// that comes first marks them itself (under d.mu, once).
func (d *Driver) ReopenCommitPost(ctx context.Context, rs *blockdev.ReopenState) error {
	if rs.ReadOnly || !d.autoclearPending.Load() {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ro || !d.autoclearPending.Load() {
		return nil
	}
	if err := d.markBitmapsInUse(ctx); err != nil {
		return fmt.Errorf("Failed to make dirty bitmaps writable: %w", err)
	}
	return nil
}

// ReopenAbort leaves everything as it was (an image made consistent on
// disk stays so; the dirty bit is set again before the next change).
func (d *Driver) ReopenAbort(rs *blockdev.ReopenState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.ro && len(d.bm.dir) > 0 {
		d.autoclearPending.Store(true)
	}
}

// autoclearKept are the auto-clear bits this driver maintains: the
// bitmaps bit, when the image has the extension.
func (d *Driver) autoclearKept() uint64 {
	if d.h.bitmaps != nil {
		return autoclearBitmaps
	}
	return 0
}

// clearAutoclear clears the auto-clear features this driver does not
// maintain and marks the bitmaps in use before the first write after a
// reopen read-write, as Open does for an image opened writable.
func (d *Driver) clearAutoclear(ctx context.Context) error {
	if !d.autoclearPending.Load() {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.autoclearPending.Load() {
		return nil
	}
	if keep := d.autoclearKept(); d.h.autoclear&^keep != 0 {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], d.h.autoclear&keep)
		if err := d.file.Write(ctx, offAutoclear, b[:], 0); err != nil {
			return err
		}
		d.h.autoclear &= keep
	}
	if err := d.markBitmapsInUse(ctx); err != nil {
		return err
	}
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
	_ blockdev.OptionReopener = (*Driver)(nil)
	_ blockdev.ReopenPoster   = (*Driver)(nil)
	_ blockdev.BackingUpdater = (*Driver)(nil)
)
