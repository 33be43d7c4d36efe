package qbm

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/qbmond/qbmond/blockdev"
)

// Reopening between read-only and read-write (block jobs make a base or
// an active layer writable for a while, as QEMU's reopen does), and
// between the bitmap-sync modes (blockdev-reopen; left out it goes back
// to close).
//
//   - To read-only: every bitmap is saved in prepare, while its file can
//     still be written, as at a clean close ("sha256" set, "in-use"
//     cleared): a read-only node's bitmaps are all on disk.
//   - To read-write: the bitmap files are opened for writing and the
//     descriptor marks them as being changed ("sha256" dropped, dirty
//     bitmaps "in-use" with bitmap-sync=close), as Open does for a
//     read-write node; the new files take over in commit.
//   - A read-write node from close to write: every dirty bitmap's bits
//     are written to its file and synced, then the descriptor clears
//     "in-use", so that from the commit on each write keeps the files
//     consistent. From write to close: the descriptor marks the dirty
//     bitmaps "in-use" before the node stops writing their bits.
//
// Abort puts the descriptor back the way the node's mode wants it.
// Other options do not change on reopen.

type reopenState struct {
	files map[*bmFile]*os.File // to read-write: the files opened for writing
	saved []entryState         // the entries before prepare changed them
	mode  string               // the new bitmap-sync mode
	wrote bool                 // the descriptor was written: abort writes it back
}

// ReopenOptions: bitmap-sync changes on reopen, and may be left out.
func (d *Driver) ReopenOptions() (changeable, resettable []string) {
	o := []string{"bitmap-sync"}
	return o, o
}

type entryState struct {
	e      *BitmapEntry
	sha256 string
	inUse  bool
}

func (d *Driver) allFiles() []*bmFile {
	files := append([]*bmFile(nil), d.dirtyFiles()...)
	if d.alloc != nil {
		files = append(files, d.alloc)
	}
	return files
}

func (d *Driver) entryStates() []entryState {
	var out []entryState
	for _, bf := range d.allFiles() {
		out = append(out, entryState{bf.entry, bf.entry.SHA256, bf.entry.InUse})
	}
	return out
}

// ReopenPrepare prepares a change of mode (see above).
func (d *Driver) ReopenPrepare(ctx context.Context, rs *blockdev.ReopenState) error {
	mode, err := syncModeOption(rs.Options)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st := &reopenState{saved: d.entryStates(), mode: mode}
	rs.Opaque = st
	switch {
	case rs.ReadOnly && !d.ro:
		if err := d.saveAll(); err != nil {
			restore(st.saved)
			_ = d.saveDescriptor()
			return err
		}
		st.wrote = true
		return nil
	case rs.ReadOnly || !d.ro && mode == d.syncMode:
		return nil
	case !d.ro:
		if err := d.prepareSyncMode(st); err != nil {
			return err
		}
		st.wrote = true
		return nil
	}
	if d.descPath == "" {
		return errors.New("Cannot update the QBM descriptor: it has no plain file name")
	}
	st.files = map[*bmFile]*os.File{}
	closeNew := func() {
		for _, f := range st.files {
			f.Close()
		}
	}
	for _, bf := range d.allFiles() {
		f, id, _, err := d.openBitmapFile(bf.entry, os.O_RDWR)
		if err == nil && id != bf.id {
			// Renamed over since the node opened it: what is there now
			// was never checked against the node's other files.
			f.Close()
			err = fmt.Errorf("Bitmap \"%s\" file was replaced since the node was opened: %s", bf.entry.Name, bf.path)
		}
		if err != nil {
			closeNew()
			return err
		}
		st.files[bf] = f
	}
	for _, bf := range d.allFiles() {
		bf.entry.SHA256 = ""
		if bf.entry.Type == TypeDirty && mode == SyncClose {
			bf.entry.InUse = true
		}
	}
	if err := d.saveDescriptor(); err != nil {
		restore(st.saved)
		closeNew()
		st.files = nil
		return err
	}
	st.wrote = true
	return nil
}

// prepareSyncMode switches a read-write node's descriptor (and, to
// write, its bitmap files) to st.mode. The caller holds d.mu.
func (d *Driver) prepareSyncMode(st *reopenState) error {
	for _, bf := range d.dirtyFiles() {
		if bf.inconsistent() {
			continue
		}
		if st.mode == SyncClose {
			bf.entry.InUse = true
			continue
		}
		bf.mu.Lock()
		err := bf.writeAll(bf.bits)
		if err == nil {
			err = bf.sync()
		}
		bf.mu.Unlock()
		if err != nil {
			restore(st.saved)
			return err
		}
		bf.entry.InUse = false
	}
	if err := d.saveDescriptor(); err != nil {
		restore(st.saved)
		return err
	}
	return nil
}

func restore(saved []entryState) {
	for _, s := range saved {
		s.e.SHA256, s.e.InUse = s.sha256, s.inUse
	}
}

// ReopenCommit switches the node to its new modes.
func (d *Driver) ReopenCommit(rs *blockdev.ReopenState) {
	st, _ := rs.Opaque.(*reopenState)
	if st == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for bf, f := range st.files {
		bf.mu.Lock()
		old := bf.f
		bf.f = f
		bf.mu.Unlock()
		old.Close()
	}
	d.ro = rs.ReadOnly
	if st.mode == d.syncMode {
		return
	}
	d.syncMode = st.mode
	for _, bf := range d.dirtyFiles() {
		bf.mu.Lock()
		if st.mode == SyncWrite {
			// What the file holds: all of the bits, written in prepare
			// or at the last save.
			bf.disk = bf.bits.Copy()
			bf.lastCount = bf.bits.Count()
		} else {
			bf.disk = nil
		}
		bf.mu.Unlock()
	}
}

// ReopenAbort keeps the old mode and writes the descriptor back.
func (d *Driver) ReopenAbort(rs *blockdev.ReopenState) {
	st, _ := rs.Opaque.(*reopenState)
	if st == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, f := range st.files {
		f.Close()
	}
	if !st.wrote {
		return
	}
	restore(st.saved)
	// Should this fail, the next save writes the descriptor again.
	_ = d.saveDescriptor()
}

var _ blockdev.OptionReopener = (*Driver)(nil)
