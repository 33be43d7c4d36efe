package qbm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/qbmond/qbmond/bitmap"
	"github.com/qbmond/qbmond/blockdev"
)

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// saveDescriptor rewrites the node's descriptor. Caller holds d.mu.
func (d *Driver) saveDescriptor() error {
	if d.descPath == "" {
		return errors.New("Cannot update the QBM descriptor: it has no plain file name")
	}
	if d.realPath == "" {
		return fmt.Errorf("Cannot update the QBM descriptor: %s", d.realErr)
	}
	data, err := d.desc.Marshal()
	if err != nil {
		return err
	}
	return WriteDescriptor(d.realPath, data)
}

// saveAll writes every bitmap as at a clean close: the contents, fsynced,
// then the descriptor with "sha256" set and "in-use" cleared (inconsistent
// bitmaps are left as they are). Caller holds d.mu.
func (d *Driver) saveAll() error {
	var errs []error
	save := func(bf *bmFile) {
		bf.mu.Lock()
		defer bf.mu.Unlock()
		data := bf.bits.MarshalBits()
		if _, err := bf.f.WriteAt(data, 0); err != nil {
			errs = append(errs, fmt.Errorf("Failed to write bitmap file \"%s\": %s", bf.path, blockdev.Strerror(err)))
			return
		}
		bf.needSync.Store(true)
		if err := bf.sync(); err != nil {
			errs = append(errs, err)
			return
		}
		if bf.disk != nil {
			bf.disk = bf.bits.Copy()
		}
		bf.lastCount = bf.bits.Count()
		bf.entry.SHA256 = fileSum(data)
		bf.entry.InUse = false
		if bf.db != nil {
			bf.entry.Enabled = bf.db.Recording()
		}
	}
	for _, bf := range d.dirtyFiles() {
		if bf.inconsistent() {
			continue
		}
		save(bf)
	}
	if d.alloc != nil {
		save(d.alloc)
	}
	if err := d.saveDescriptor(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// stem is the descriptor's file name without directory and extension.
func stem(descPath string) string {
	base := filepath.Base(descPath)
	if i := strings.LastIndexByte(base, '.'); i > 0 {
		base = base[:i]
	}
	return base
}

// sanitize replaces every character outside [A-Za-z0-9._-] by '_'.
func sanitize(name string) string {
	var b strings.Builder
	for _, r := range name {
		if r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// newFile creates STEM-what.ext beside the descriptor (STEM-what-2.ext,
// -3, ... when the name is taken) with the given size, zero-filled and
// fsynced, and returns its name relative to the descriptor's directory.
// Names in taken count as used too.
func newFile(descPath, what, ext string, size int64, taken map[string]bool) (string, error) {
	dir := filepath.Dir(descPath)
	base := stem(descPath) + "-" + what
	for i := 1; ; i++ {
		name := base + ext
		if i > 1 {
			name = base + "-" + strconv.Itoa(i) + ext
		}
		if taken[name] {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("Could not create '%s': %s", filepath.Join(dir, name), blockdev.Strerror(err))
		}
		err = f.Truncate(size)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(filepath.Join(dir, name))
			return "", fmt.Errorf("Could not create '%s': %s", filepath.Join(dir, name), blockdev.Strerror(err))
		}
		return name, nil
	}
}

// usedFiles are the file names the descriptor already uses.
func (desc *Descriptor) usedFiles() map[string]bool {
	m := map[string]bool{desc.Image.File: true}
	for _, b := range desc.Bitmaps {
		m[b.File] = true
	}
	return m
}

// CanStoreBitmap fails when a persistent bitmap called name cannot be
// added: the node is read-only, the descriptor cannot be rewritten or
// already has the name.
func (d *Driver) CanStoreBitmap(name string, granularity uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	why := ""
	switch {
	case d.ro:
		why = "the node is read-only"
	case d.descPath == "":
		why = "the QBM descriptor has no plain file name"
	case d.desc.Bitmap(name) != nil:
		why = "Bitmap with the same name is already stored"
	case granularity < MinGranularity || granularity > MaxGranularity:
		why = "unsupported granularity"
	}
	if why != "" {
		return fmt.Errorf("Can't make bitmap '%s' persistent in '%s': %s", name, d.node.Name(), why)
	}
	return nil
}

// StoreBitmap creates the bitmap file STEM-NAME.bitmap and the
// descriptor's entry for a new persistent bitmap.
func (d *Driver) StoreBitmap(b *blockdev.DirtyBitmap) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	bits := b.Bits()
	g := bits.Granularity()
	size := d.image.Length()
	name, err := newFile(d.descPath, sanitize(b.Name()), ".bitmap", BitmapFileSize(size, g), d.desc.usedFiles())
	if err != nil {
		return err
	}
	path, _ := d.resolve(name)
	cleanup := func(err error) error {
		os.Remove(path)
		return err
	}
	e := &BitmapEntry{Name: b.Name(), File: name, Type: TypeDirty, Granularity: g,
		Enabled: b.Recording(), InUse: d.syncMode == SyncClose}
	f, id, _, err := d.openBitmapFile(e, os.O_RDWR)
	if err != nil {
		return cleanup(err)
	}
	bf := &bmFile{entry: e, path: path, f: f, id: id, bits: bits, db: b, lastCount: bits.Count()}
	if d.syncMode == SyncWrite {
		bf.disk, _ = bitmap.New(bits.Size(), g)
		bf.disk.Merge(bits)
	}
	d.desc.AddBitmap(e)
	if err := d.saveDescriptor(); err != nil {
		d.desc.RemoveBitmap(e.Name)
		f.Close()
		return cleanup(err)
	}
	list := append(append([]*bmFile(nil), d.dirtyFiles()...), bf)
	d.dirty.Store(&list)
	return nil
}

// RemoveBitmap drops the entry from the descriptor, then deletes the file.
func (d *Driver) RemoveBitmap(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	e := d.desc.Bitmap(name)
	if e == nil || e.Type != TypeDirty {
		return fmt.Errorf("No persistent bitmap with name '%s'", name)
	}
	d.desc.RemoveBitmap(name)
	if err := d.saveDescriptor(); err != nil {
		d.desc.AddBitmap(e)
		return err
	}
	var list []*bmFile
	for _, bf := range d.dirtyFiles() {
		if bf.entry == e {
			// Requests in flight may still write to the file: it is
			// unlinked now and closed with the node.
			os.Remove(bf.path)
			d.retired = append(d.retired, bf)
			continue
		}
		list = append(list, bf)
	}
	d.dirty.Store(&list)
	return nil
}

// SetBitmapRecording stores "enabled" for a persistent dirty bitmap
// (block-dirty-bitmap-enable/-disable), so that a bitmap-sync=write node
// reloads it in the right state even after a crash.
func (d *Driver) SetBitmapRecording(name string, on bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	e := d.desc.Bitmap(name)
	if e == nil || e.Type != TypeDirty || e.Enabled == on {
		return nil
	}
	e.Enabled = on
	if err := d.saveDescriptor(); err != nil {
		e.Enabled = !on
		return err
	}
	return nil
}

// SaveBitmap, in bitmap-sync=write mode, writes a dirty bitmap's whole
// file after its bits changed other than by a write (clear, merge, a
// transaction's undo) and fsyncs it, so that the change survives a crash
// as writes do. With bitmap-sync=close the bits are saved at close.
func (d *Driver) SaveBitmap(name string) error {
	if d.syncMode != SyncWrite || d.ro {
		return nil
	}
	for _, bf := range d.dirtyFiles() {
		if bf.db == nil || bf.entry.Name != name || bf.inconsistent() {
			continue
		}
		bf.mu.Lock()
		// The file becomes exactly the bits now; writes from here on
		// add to it under bf.mu as before.
		bf.disk = bf.bits.Copy()
		err := bf.writeAll(bf.disk)
		bf.lastCount = bf.bits.Count()
		bf.mu.Unlock()
		if err != nil {
			return err
		}
		return bf.sync()
	}
	return nil
}
