package qbm

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/qbmond/qbmond/blockdev"
)

// Reopening between read-only and read-write (block jobs make a base or
// an active layer writable for a while, as QEMU's reopen does).
//
//   - To read-only: every bitmap is saved in prepare, while its file can
//     still be written, as at a clean close ("sha256" set, "in-use"
//     cleared): a read-only node's bitmaps are all on disk.
//   - To read-write: the bitmap files are opened for writing and the
//     descriptor marks them as being changed ("sha256" dropped, dirty
//     bitmaps "in-use" with bitmap-sync=close), as Open does for a
//     read-write node; the new files take over in commit.
//
// Abort puts the descriptor back the way the node's mode wants it.
// Other options do not change on reopen.

type reopenState struct {
	files map[*bmFile]*os.File // to read-write: the files opened for writing
	saved []entryState         // the entries before prepare changed them
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
	if rs.ReadOnly == d.ro {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st := &reopenState{saved: d.entryStates()}
	if rs.ReadOnly {
		if err := d.saveAll(); err != nil {
			return err
		}
		rs.Opaque = st
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
		f, err := os.OpenFile(bf.path, os.O_RDWR, 0)
		if err != nil {
			closeNew()
			return fmt.Errorf("Could not open '%s': %s", bf.path, blockdev.Strerror(err))
		}
		st.files[bf] = f
	}
	for _, bf := range d.allFiles() {
		bf.entry.SHA256 = ""
		if bf.entry.Type == TypeDirty && d.syncMode == SyncClose {
			bf.entry.InUse = true
		}
	}
	if err := d.saveDescriptor(); err != nil {
		restore(st.saved)
		closeNew()
		return err
	}
	rs.Opaque = st
	return nil
}

func restore(saved []entryState) {
	for _, s := range saved {
		s.e.SHA256, s.e.InUse = s.sha256, s.inUse
	}
}

// ReopenCommit switches the node to its new mode.
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
	restore(st.saved)
	// Should this fail, the next save writes the descriptor again.
	_ = d.saveDescriptor()
}

var _ blockdev.Reopener = (*Driver)(nil)
