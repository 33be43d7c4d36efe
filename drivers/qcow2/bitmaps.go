package qcow2

// Persistent dirty bitmaps kept in the image (the bitmaps extension; the
// codec is bitmapdir.go). As in QEMU 7.2:
//   - open loads every bitmap of the directory as a node bitmap: "auto"
//     records, the others are disabled, one found "in use" is
//     inconsistent (its bits were not saved);
//   - a writable image gets every bitmap marked "in use" on disk before
//     anything else is written, so that a crash leaves them inconsistent,
//     never silently stale;
//   - close, reopen read-only and inactivation store the persistent
//     bitmaps (not every flush), clearing "in use".
//
// Every directory change writes a new directory into new clusters, makes
// it durable, then points the header at it (one sector) and only then
// frees the old directory and tables: a crash leaves the old directory or
// the new one, both consistent with what they claim.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/qbmond/qbmond/bitmap"
	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qapi"
)

// bitmapState is the driver's view of the bitmaps in the image.
type bitmapState struct {
	// dir is the directory on disk (d.h.bitmaps says where).
	dir  []bitmapEntry
	node *blockdev.Node
}

// readBitmapDir reads and checks the bitmap directory the header points
// at. Caller holds d.mu or is opening.
func (d *Driver) readBitmapDir(ctx context.Context) error {
	e := d.h.bitmaps
	if e == nil {
		d.bm.dir = nil
		return nil
	}
	if e.dirSize == 0 {
		return errors.New("Requested bitmap directory size is zero")
	}
	buf := make([]byte, e.dirSize)
	if err := d.readAt(ctx, int64(e.dirOff), buf); err != nil {
		return fmt.Errorf("Failed to read bitmap directory: %s", blockdev.Strerror(err))
	}
	list, err := parseBitmapDir(buf, e.nb, d.cs, d.h.size)
	if err != nil {
		return err
	}
	d.bm.dir = list
	return nil
}

// readBitmapTable reads a bitmap's table and checks its entries.
func (d *Driver) readBitmapTable(ctx context.Context, e *bitmapEntry) ([]uint64, error) {
	buf := make([]byte, int64(e.tableSize)*8)
	if err := d.readAt(ctx, int64(e.tableOff), buf); err != nil {
		return nil, err
	}
	t := make([]uint64, e.tableSize)
	for i := range t {
		t[i] = binary.BigEndian.Uint64(buf[8*i:])
		if !checkTableEntry(t[i], d.cs) {
			return nil, syscall.EINVAL
		}
	}
	return t, nil
}

// readBitmapBits reads the bits of a bitmap not in use.
func (d *Driver) readBitmapBits(ctx context.Context, e *bitmapEntry, size int64) (*bitmap.Bitmap, error) {
	t, err := d.readBitmapTable(ctx, e)
	if err != nil {
		return nil, fmt.Errorf("Could not read bitmap_table table from image for bitmap '%s': %s", e.name, blockdev.Strerror(err))
	}
	if n := bitmapTableSize(uint64(size), e.granBits, d.cs); n != uint64(e.tableSize) || n > maxBitmapTableSize {
		return nil, fmt.Errorf("Could not read bitmap '%s' from image: Invalid argument", e.name)
	}
	// The clusters are read straight into the bitmap's bits.
	return bitmap.Fill(size, e.granularity(), func(data []byte) error {
		for i, v := range t {
			lo := int64(i) * d.cs
			if lo >= int64(len(data)) {
				break
			}
			part := data[lo:min(lo+d.cs, int64(len(data)))]
			switch off := int64(v & bteOffsetMask); {
			case off != 0:
				if err := d.readAt(ctx, off, part); err != nil {
					return fmt.Errorf("Could not read bitmap '%s' from image: %s", e.name, blockdev.Strerror(err))
				}
			case v&bteAllOnes != 0:
				for j := range part {
					part[j] = 0xff
				}
			}
		}
		return nil
	})
}

// loadBitmaps makes every bitmap of the directory a node bitmap, all or
// none.
func (d *Driver) loadBitmaps(ctx context.Context, oc *blockdev.OpenContext) error {
	d.bm.node = oc.Node()
	if len(d.bm.dir) == 0 {
		return nil
	}
	size := int64(d.h.size)
	type loaded struct {
		e    *bitmapEntry
		bits *bitmap.Bitmap
	}
	var all []loaded
	seen := map[string]bool{}
	for i := range d.bm.dir {
		e := &d.bm.dir[i]
		if seen[e.name] {
			return fmt.Errorf("Bitmap already exists: %s", e.name)
		}
		seen[e.name] = true
		var bits *bitmap.Bitmap
		var err error
		if e.flags&bmeInUse != 0 {
			// Its table need not cover the disk (QEMU does not check):
			// refuse what no image could have stored rather than run
			// out of memory.
			if (uint64(size)>>e.granBits)/8 > maxBitmapPhysSize {
				return fmt.Errorf("Bitmap '%s' doesn't satisfy the constraints", e.name)
			}
			bits, err = bitmap.New(size, e.granularity())
		} else {
			bits, err = d.readBitmapBits(ctx, e, size)
		}
		if err != nil {
			return err
		}
		all = append(all, loaded{e, bits})
	}
	for _, l := range all {
		oc.LoadDirtyBitmap(l.e.name, l.bits, l.e.flags&bmeAuto != 0, l.e.flags&bmeInUse != 0)
	}
	return nil
}

// markBitmapsInUse sets "in use" on every bitmap of the directory before
// the image is first written. Caller holds d.mu (or is opening).
func (d *Driver) markBitmapsInUse(ctx context.Context) error {
	changed := false
	list := append([]bitmapEntry(nil), d.bm.dir...)
	for i := range list {
		if list[i].flags&bmeInUse == 0 {
			list[i].flags |= bmeInUse
			changed = true
		}
	}
	if !changed {
		return nil
	}
	if err := d.writeBitmapDir(ctx, list); err != nil {
		return fmt.Errorf("Can't update bitmap directory: %s", blockdev.Strerror(err))
	}
	return nil
}

// writeBitmapDir replaces the directory on disk with list (none when
// empty): the new one in new clusters, durable, then the header, then the
// old directory's clusters are freed.
func (d *Driver) writeBitmapDir(ctx context.Context, list []bitmapEntry) error {
	old := d.h.bitmaps
	oldAuto := d.h.autoclear
	var ext *bitmapExt
	if len(list) > 0 {
		if len(list) > maxBitmaps {
			return syscall.EINVAL
		}
		dir := encodeBitmapDir(list)
		if len(dir) > maxBitmapDirSize {
			return syscall.EINVAL
		}
		n := (int64(len(dir)) + d.cs - 1) / d.cs
		off, err := d.allocClusters(ctx, n)
		if err != nil {
			return err
		}
		fail := func(err error) error {
			d.freeClusters(ctx, off/d.cs, n, d.passOther)
			return err
		}
		if err := d.preWrite(ctx, 0, off, int64(len(dir))); err != nil {
			return fail(err)
		}
		if err := d.file.Write(ctx, off, dir, 0); err != nil {
			return fail(err)
		}
		if err := d.syncMeta(ctx); err != nil {
			return fail(err)
		}
		if err := d.file.Flush(ctx); err != nil {
			return fail(err)
		}
		ext = &bitmapExt{nb: uint32(len(list)), dirSize: uint64(len(dir)), dirOff: uint64(off)}
		d.h.autoclear |= autoclearBitmaps
	} else {
		d.h.autoclear &^= autoclearBitmaps
	}
	d.h.bitmaps = ext
	if err := d.writeHeader(ctx); err != nil {
		d.h.bitmaps, d.h.autoclear = old, oldAuto
		if ext != nil {
			d.freeClusters(ctx, int64(ext.dirOff)/d.cs, (int64(ext.dirSize)+d.cs-1)/d.cs, d.passOther)
		}
		return err
	}
	d.bm.dir = list
	if old != nil {
		d.freeClusters(ctx, int64(old.dirOff)/d.cs, (int64(old.dirSize)+d.cs-1)/d.cs, d.passOther)
	}
	return nil
}

// bitmapRefs references, through ref, every cluster the bitmaps use
// (directory, tables, bits), for a refcount rebuild. Tables that cannot
// be read or entries that break the rules reference nothing.
func (d *Driver) bitmapRefs(ctx context.Context, ref func(off, size int64) error) error {
	e := d.h.bitmaps
	if e == nil {
		return nil
	}
	if err := ref(int64(e.dirOff), int64(e.dirSize)); err != nil {
		return err
	}
	for i := range d.bm.dir {
		be := &d.bm.dir[i]
		if err := ref(int64(be.tableOff), int64(be.tableSize)*8); err != nil {
			return err
		}
		buf := make([]byte, int64(be.tableSize)*8)
		if err := d.readAt(ctx, int64(be.tableOff), buf); err != nil {
			return err
		}
		for j := range int(be.tableSize) {
			v := binary.BigEndian.Uint64(buf[8*j:])
			if !checkTableEntry(v, d.cs) {
				continue
			}
			if off := int64(v & bteOffsetMask); off != 0 {
				if err := ref(off, d.cs); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// storeBitmaps writes every persistent, consistent node bitmap into the
// image (close, reopen read-only), clearing "in use": bits into new
// clusters (all-zero clusters are not written), new tables, a new
// directory, then the old tables and their clusters are freed. Bitmaps
// loaded inconsistent stay in the directory as they are. Caller holds
// d.mu; the image is writable.
func (d *Driver) storeBitmaps(ctx context.Context) (stored bool, err error) {
	if d.bm.node == nil {
		return false, nil
	}
	// Newest first, as QEMU walks them: bitmaps not yet in the
	// directory are appended in that order.
	var mem []*blockdev.DirtyBitmap
	for _, b := range d.bm.node.DirtyBitmaps() {
		if b.Persistent() && !b.Inconsistent() {
			mem = append(mem, b)
		}
	}
	if len(mem) == 0 {
		return false, nil
	}
	list := append([]bitmapEntry(nil), d.bm.dir...)
	var drop []bitmapEntry
	var fresh [][2]int64 // clusters allocated here: first, count
	undo := func(err error) error {
		for _, r := range fresh {
			d.freeClusters(ctx, r[0], r[1], d.passOther)
		}
		return err
	}
	alloc := func(n int64) (int64, error) {
		off, err := d.allocClusters(ctx, n)
		if err == nil {
			fresh = append(fresh, [2]int64{off / d.cs, n})
		}
		return off, err
	}
	for _, b := range mem {
		name := b.Name()
		g := b.Bits().Granularity()
		if err := d.bitmapConstraints(name, g); err != nil {
			return false, undo(fmt.Errorf("Bitmap '%s' doesn't satisfy the constraints: %w", name, err))
		}
		idx := -1
		for i := range list {
			if list[i].name == name {
				idx = i
				break
			}
		}
		if idx < 0 {
			if len(list) >= maxBitmaps {
				return false, undo(errors.New("Too many persistent bitmaps"))
			}
			list = append(list, bitmapEntry{name: name})
			idx = len(list) - 1
		} else {
			// Every entry of the directory was loaded as the node
			// bitmap of its name (removing one deletes the entry), so
			// this is the same bitmap: its old table goes.
			drop = append(drop, list[idx])
		}
		e := &list[idx]
		e.granBits = uint8(bitsLen(g) - 1)
		e.flags = 0
		if b.Recording() {
			e.flags = bmeAuto
		}
		data := b.Bits().MarshalBits()
		n := bitmapTableSize(uint64(b.Bits().Size()), e.granBits, d.cs)
		table := make([]byte, n*8)
		for i := range int64(n) {
			lo := i * d.cs
			if lo >= int64(len(data)) {
				break
			}
			part := data[lo:min(lo+d.cs, int64(len(data)))]
			if allZero(part) {
				continue
			}
			off, err := alloc(1)
			if err != nil {
				return false, undo(err)
			}
			buf := make([]byte, d.cs)
			copy(buf, part)
			if err := d.preWrite(ctx, 0, off, d.cs); err != nil {
				return false, undo(err)
			}
			if err := d.file.Write(ctx, off, buf, 0); err != nil {
				return false, undo(err)
			}
			binary.BigEndian.PutUint64(table[8*i:], uint64(off))
		}
		tc := (int64(len(table)) + d.cs - 1) / d.cs
		toff, err := alloc(tc)
		if err != nil {
			return false, undo(err)
		}
		if err := d.preWrite(ctx, 0, toff, int64(len(table))); err != nil {
			return false, undo(err)
		}
		if err := d.file.Write(ctx, toff, table, 0); err != nil {
			return false, undo(err)
		}
		e.tableOff, e.tableSize = uint64(toff), uint32(n)
		if !e.check(bitmapTypeDirty, d.cs, uint64(b.Bits().Size())) {
			return false, undo(syscall.EINVAL)
		}
	}
	if err := d.writeBitmapDir(ctx, list); err != nil {
		return false, undo(err)
	}
	for i := range drop {
		d.freeBitmapClusters(ctx, &drop[i])
	}
	return true, nil
}

// freeBitmapClusters frees a bitmap's table and the clusters it points
// at (best effort: the bitmap is no longer referenced).
func (d *Driver) freeBitmapClusters(ctx context.Context, e *bitmapEntry) {
	if t, err := d.readBitmapTable(ctx, e); err == nil {
		for _, v := range t {
			if off := int64(v & bteOffsetMask); off != 0 {
				d.freeClusters(ctx, off/d.cs, 1, true)
			}
		}
	}
	d.freeClusters(ctx, int64(e.tableOff)/d.cs, (int64(e.tableSize)*8+d.cs-1)/d.cs, d.passOther)
}

func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroChunk))
		if !bytes.Equal(b[:n], zeroChunk[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// zeroChunk is what allZero compares with (bytes.Equal is vectorised).
var zeroChunk [16 << 10]byte

func bitsLen(g uint64) int {
	n := 0
	for ; g != 0; g >>= 1 {
		n++
	}
	return n
}

// bitmapConstraints are QEMU's checks of a bitmap to be stored.
func (d *Driver) bitmapConstraints(name string, g uint64) error {
	gb := bitsLen(g) - 1
	switch {
	case gb > maxBitmapGranBits:
		return fmt.Errorf("Granularity exceeds maximum (%d bytes)", uint64(1)<<maxBitmapGranBits)
	case gb < minBitmapGranBits:
		return fmt.Errorf("Granularity is under minimum (%d bytes)", uint64(1)<<minBitmapGranBits)
	}
	granules := (d.h.size + g - 1) / g
	bytes := (granules + 7) / 8
	if bytes > maxBitmapPhysSize || bytes > maxBitmapTableSize*uint64(d.cs) {
		return errors.New("Too much space will be occupied by the bitmap. Use larger granularity")
	}
	if len(name) > maxBitmapNameSize {
		return fmt.Errorf("Name length exceeds maximum (%d characters)", maxBitmapNameSize)
	}
	return nil
}

// CanStoreBitmap applies QEMU's checks for block-dirty-bitmap-add with
// persistent (blockdev.BitmapStore).
func (d *Driver) CanStoreBitmap(name string, granularity uint64) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	err := func() error {
		if d.h.version < 3 {
			return errors.New("Cannot store dirty bitmaps in qcow2 v2 files")
		}
		if err := d.bitmapConstraints(name, granularity); err != nil {
			return err
		}
		if len(d.bm.dir) == 0 {
			return nil
		}
		if len(d.bm.dir) >= maxBitmaps {
			return errors.New("Maximum number of persistent bitmaps is already reached")
		}
		if d.h.bitmaps.dirSize+uint64(dirEntrySize(len(name))) > maxBitmapDirSize {
			return errors.New("Not enough space in the bitmap directory")
		}
		for i := range d.bm.dir {
			if d.bm.dir[i].name == name {
				return errors.New("Bitmap with the same name is already stored")
			}
		}
		return nil
	}()
	if err != nil {
		nodeName := ""
		if d.bm.node != nil {
			nodeName = d.bm.node.Name()
		}
		return fmt.Errorf("Can't make bitmap '%s' persistent in '%s': %w", name, nodeName, err)
	}
	return nil
}

// StoreBitmap: a new persistent bitmap reaches the image when it is
// closed or reopened read-only, as in QEMU.
func (d *Driver) StoreBitmap(b *blockdev.DirtyBitmap) error { return nil }

// RemoveBitmap deletes the bitmap from the image now (a bitmap not yet
// stored has nothing to delete).
func (d *Driver) RemoveBitmap(name string) error {
	ctx := context.Background()
	// After a reopen read-write the bitmaps are marked in use first, as
	// before a write.
	if err := d.clearAutoclear(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitAllFlights()
	idx := -1
	for i := range d.bm.dir {
		if d.bm.dir[i].name == name {
			idx = i
			break
		}
	}
	if idx < 0 {
		return nil
	}
	e := d.bm.dir[idx]
	list := append(append([]bitmapEntry(nil), d.bm.dir[:idx]...), d.bm.dir[idx+1:]...)
	if err := d.writeBitmapDir(ctx, list); err != nil {
		return fmt.Errorf("Failed to update bitmap extension: %s", blockdev.Strerror(err))
	}
	d.freeBitmapClusters(ctx, &e)
	return nil
}

// SaveBitmap is told that a persistent bitmap's bits changed other than
// by a write (clear, merge, a transaction's undo): after a reopen
// read-write, the bitmaps are marked in use now, as before a write, so
// that a crash cannot leave the image's copy looking valid.
func (d *Driver) SaveBitmap(name string) error {
	return d.clearAutoclear(context.Background())
}

var (
	_ blockdev.BitmapStore = (*Driver)(nil)
	_ blockdev.BitmapSaver = (*Driver)(nil)
)

// resizeBitmapsCheck refuses to resize an image whose bitmaps cannot
// follow (inconsistent or in use by an operation), with the bitmap's own
// error, as QEMU does: they are resized in memory and stored at close.
func (d *Driver) resizeBitmapsCheck() error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.bm.node == nil {
		return nil
	}
	for i := range d.bm.dir {
		b := d.bm.node.DirtyBitmap(d.bm.dir[i].name)
		if b == nil {
			return errors.New("Cannot resize qcow2 with persistent bitmaps that were not loaded into memory")
		}
		if err := b.Check(blockdev.CheckDefault); err != nil {
			return err
		}
	}
	return nil
}

// bitmapInfo lists the directory's bitmaps with their flags on disk.
// Caller holds d.mu.
func (d *Driver) bitmapInfo() []qapi.Qcow2BitmapInfo {
	var out []qapi.Qcow2BitmapInfo
	for i := range d.bm.dir {
		e := &d.bm.dir[i]
		flags := []qapi.Qcow2BitmapInfoFlags{}
		if e.flags&bmeInUse != 0 {
			flags = append(flags, qapi.Qcow2BitmapInfoFlagsInUse)
		}
		if e.flags&bmeAuto != 0 {
			flags = append(flags, qapi.Qcow2BitmapInfoFlagsAuto)
		}
		out = append(out, qapi.Qcow2BitmapInfo{Name: e.name, Granularity: uint32(e.granularity()), Flags: flags})
	}
	return out
}
