package qcow2

// Metadata overlap checks (QEMU's overlap-check option): before the driver
// writes guest data or metadata into the image file, it makes sure the
// target does not hold metadata it would destroy. Corrupt tables (an L1
// entry pointing at the refcount table, refcounts that call the L1 table
// free, ...) would otherwise make the driver write guest data over its own
// structures. A hit is fatal corruption: the request fails with EIO, the
// image gets the corrupt bit, BLOCK_IMAGE_CORRUPTED goes out and the node
// stops serving requests (QEMU's qcow2_pre_write_overlap_check).
//
// The structures checked and the modes follow QEMU 7.2: "constant" checks
// what lies at fixed places (header, active L1 table, refcount table,
// snapshot table, bitmap directory), "cached" adds the active L2 tables,
// the refcount blocks and the snapshots' L1 tables (all known in memory),
// "all" also the snapshots' L2 tables. Images with internal snapshots are
// read-only here, so the snapshot structures never need a check; their
// flags are accepted and kept. The bitmap directory is checked. The L2 table and refcount
// block offsets are held sorted in memory, so that a check costs two
// binary searches whatever the image's size.

import (
	"context"
	"fmt"
	"slices"
	"sort"

	"github.com/qbmond/qbmond/blockdev"
)

// olMask is a set of metadata structures (QEMU's QCow2MetadataOverlap).
type olMask uint16

const (
	olMainHeader olMask = 1 << iota
	olActiveL1
	olActiveL2
	olRefcountTable
	olRefcountBlock
	olSnapshotTable
	olInactiveL1
	olInactiveL2
	olBitmapDirectory
	olCount = iota

	olConstant = olMainHeader | olActiveL1 | olRefcountTable | olSnapshotTable | olBitmapDirectory
	olCached   = olConstant | olActiveL2 | olRefcountBlock | olInactiveL1
	olAll      = olCached | olInactiveL2
)

// olNames are the structures' names in messages, by bit.
var olNames = [olCount]string{
	"qcow2_header", "active L1 table", "active L2 table", "refcount table",
	"refcount block", "snapshot table", "inactive L1 table",
	"inactive L2 table", "bitmap directory",
}

// olFlags are the members of Qcow2OverlapCheckFlags that switch one
// structure, by bit.
var olFlags = [olCount]string{
	"main-header", "active-l1", "active-l2", "refcount-table",
	"refcount-block", "snapshot-table", "inactive-l1", "inactive-l2",
	"bitmap-directory",
}

// olModes are Qcow2OverlapCheckMode's values.
var olModes = map[string]olMask{"none": 0, "constant": olConstant, "cached": olCached, "all": olAll}

// parseOverlapCheck reads the overlap-check option: a mode, or flags
// with a template mode (default "cached", as QEMU) that single
// structures' booleans override.
func parseOverlapCheck(o blockdev.Options) (olMask, error) {
	mode := "cached"
	var flags blockdev.Options
	switch v := o["overlap-check"].(type) {
	case nil:
	case string:
		mode = v
	default:
		var err error
		if flags, err = o.Object("overlap-check"); err != nil {
			return 0, err
		}
		if t, ok, err := flags.String("template"); err != nil {
			return 0, err
		} else if ok {
			mode = t
		}
	}
	m, ok := olModes[mode]
	if !ok {
		return 0, fmt.Errorf("Unsupported value '%s' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all", mode)
	}
	for i, name := range olFlags {
		on, err := flags.Bool(name, m&(1<<i) != 0)
		if err != nil {
			return 0, err
		}
		if on {
			m |= 1 << i
		} else {
			m &^= 1 << i
		}
	}
	return m, nil
}

// sortedOffs is a sorted multiset of table offsets in the image file.
type sortedOffs []int64

func (s *sortedOffs) add(off int64) {
	i, _ := slices.BinarySearch(*s, off)
	*s = slices.Insert(*s, i, off)
}

func (s *sortedOffs) remove(off int64) {
	if i, ok := slices.BinarySearch(*s, off); ok {
		*s = slices.Delete(*s, i, i+1)
	}
}

// hits tells whether a table of size bytes at one of the offsets
// overlaps [start, end).
func (s sortedOffs) hits(start, end, size int64) bool {
	i := sort.Search(len(s), func(i int) bool { return s[i]+size > start })
	return i < len(s) && s[i] < end
}

// track follows the change of a table entry pointing at one of the
// offsets from old to e, mask picking the offset out of an entry (0: none).
func (s *sortedOffs) track(old, e, mask uint64) {
	if old&mask == e&mask {
		return
	}
	if o := int64(old & mask); o != 0 {
		s.remove(o)
	}
	if n := int64(e & mask); n != 0 {
		s.add(n)
	}
}

// olTrackL1 follows the change of an L1 entry from old to e.
func (d *Driver) olTrackL1(old, e uint64) { d.olL2.track(old, e, offsetMask) }

// olTrackRT follows the change of a refcount table entry from old to e.
func (d *Driver) olTrackRT(old, e uint64) { d.olRB.track(old, e, refTableMask) }

// olRebuild recomputes the offsets of the L2 tables and refcount blocks
// from the L1 and refcount tables held in memory.
func (d *Driver) olRebuild() {
	d.olL2 = d.olL2[:0]
	for _, e := range d.l1 {
		if o := int64(e & offsetMask); o != 0 {
			d.olL2 = append(d.olL2, o)
		}
	}
	slices.Sort(d.olL2)
	d.olRB = d.olRB[:0]
	for _, e := range d.rt {
		if o := int64(e & refTableMask); o != 0 {
			d.olRB = append(d.olRB, o)
		}
	}
	slices.Sort(d.olRB)
}

// overlaps returns the first structure checked (and not ignored) that
// [off, off+size) overlaps, 0 for none; in QEMU's order.
func (d *Driver) overlaps(ign olMask, off, size int64) olMask {
	chk := d.olCheck &^ ign
	if size <= 0 || chk == 0 {
		return 0
	}
	if chk&olMainHeader != 0 && off < d.cs {
		return olMainHeader
	}
	// The rest is compared by whole clusters.
	start := off &^ (d.cs - 1)
	end := (off + size + d.cs - 1) &^ (d.cs - 1)
	in := func(o, n int64) bool { return n > 0 && o < end && start < o+n }
	if chk&olActiveL1 != 0 && in(int64(d.h.l1Off), int64(len(d.l1))*8) {
		return olActiveL1
	}
	if chk&olRefcountTable != 0 && in(int64(d.h.refTableOff), int64(len(d.rt))*8) {
		return olRefcountTable
	}
	if chk&olActiveL2 != 0 && d.olL2.hits(start, end, d.cs) {
		return olActiveL2
	}
	if chk&olRefcountBlock != 0 && d.olRB.hits(start, end, d.cs) {
		return olRefcountBlock
	}
	if b := d.h.bitmaps; chk&olBitmapDirectory != 0 && b != nil && in(int64(b.dirOff), int64(b.dirSize)) {
		return olBitmapDirectory
	}
	return 0
}

// preWrite refuses a write of size bytes at off into the image file that
// would overlap metadata other than ign: fatal corruption.
func (d *Driver) preWrite(ctx context.Context, ign olMask, off, size int64) error {
	hit := d.overlaps(ign, off, size)
	if hit == 0 {
		return nil
	}
	name := ""
	for i := range olCount {
		if hit == 1<<i {
			name = olNames[i]
		}
	}
	return d.corruption(ctx, fmt.Sprintf("Preventing invalid write on metadata (overlaps with %s)", name), off, size)
}

// olAllocKind says what clusters being allocated are for, so that
// allocClusters checks their first write before it counts them, as QEMU
// checks guest data before the refcounts it changed in its cache reach
// the image file (a corrupt node never writes them back). A new L2
// table's refcount is written first (QEMU flushes it before the table),
// so only its place at offset 0 is refused here.
type olAllocKind uint8

const (
	olForNone olAllocKind = iota // the caller checks its writes itself
	olForData                    // guest data at rel, size bytes
	olForL2                      // a new L2 table (checked at offset 0 only)
	olForL1                      // a new L1 table of size bytes
)

type olAlloc struct {
	kind      olAllocKind
	rel, size int64
}

// allocFor declares the purpose of the next allocClusters call.
func (d *Driver) allocFor(kind olAllocKind, rel, size int64) {
	d.olNext = olAlloc{kind, rel, size}
}

// allocCheck checks the first write into clusters allocClusters found
// free at off, for the purpose declared before (d.mu held exclusively).
func (d *Driver) allocCheck(ctx context.Context, a olAlloc, off int64) error {
	switch a.kind {
	case olForData:
		return d.preWrite(ctx, 0, off+a.rel, a.size)
	case olForL2:
		if off == 0 {
			return d.corruption(ctx, "Preventing invalid allocation of L2 table at offset 0", -1, -1)
		}
	case olForL1:
		return d.preWrite(ctx, 0, off, a.size)
	}
	return nil
}

// Ejected tells the block layer that the node stopped serving after
// fatal corruption (blockdev.Ejecter).
func (d *Driver) Ejected() bool { return d.failed.Load() }

var _ blockdev.Ejecter = (*Driver)(nil)
