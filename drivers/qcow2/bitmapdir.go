package qcow2

// The bitmaps extension of qcow2 v3 (docs/interop/qcow2.txt, "Bitmaps
// extension", "Bitmap directory", "Bitmap table"): a header extension
// points at a directory of persistent dirty bitmaps; each directory entry
// points at a bitmap table whose entries point at the clusters holding the
// bits. This file is the codec and its checks, with QEMU 7.2's limits and
// error messages; bitmaps.go is what the driver does with them.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

const (
	extBitmaps = 0x23852875

	// autoclearBitmaps is autoclear bit 0: the bitmaps extension is
	// consistent with the image. A program that does not know it clears
	// it when it writes, and the extension is then ignored.
	autoclearBitmaps = 1 << 0

	bitmapExtLen = 24

	// QEMU's limits.
	maxBitmaps          = 65535
	maxBitmapDirSize    = 1024 * maxBitmaps
	maxBitmapTableSize  = 0x8000000  // entries
	maxBitmapPhysSize   = 0x20000000 // bytes of bits
	minBitmapGranBits   = 9
	maxBitmapGranBits   = 31
	maxBitmapNameSize   = 1023
	bitmapDirEntryFixed = 24

	// Directory entry flags.
	bmeInUse    = 1 << 0
	bmeAuto     = 1 << 1
	bmeReserved = 0xfffffffc

	bitmapTypeDirty = 1

	// Bitmap table entries.
	bteReserved   = 0xff000000000001fe
	bteOffsetMask = 0x00fffffffffffe00
	bteAllOnes    = 1 << 0
)

// bitmapExt is the bitmaps header extension.
type bitmapExt struct {
	nb      uint32
	dirSize uint64
	dirOff  uint64
}

// parseBitmapExt decodes and checks the extension's data (its length
// checked by the caller) for an image of cluster size cs.
func parseBitmapExt(data []byte, cs int64) (bitmapExt, error) {
	be := binary.BigEndian
	e := bitmapExt{nb: be.Uint32(data[0:]), dirSize: be.Uint64(data[8:]), dirOff: be.Uint64(data[16:])}
	switch {
	case be.Uint32(data[4:]) != 0:
		return e, errors.New("bitmaps_ext: Reserved field is not zero")
	case e.nb > maxBitmaps:
		return e, fmt.Errorf("bitmaps_ext: Image has %d bitmaps, exceeding the QEMU supported maximum of %d", e.nb, maxBitmaps)
	case e.nb == 0:
		return e, errors.New("found bitmaps extension with zero bitmaps")
	case e.dirOff&uint64(cs-1) != 0:
		return e, errors.New("bitmaps_ext: invalid bitmap directory offset")
	case e.dirSize > maxBitmapDirSize:
		return e, fmt.Errorf("bitmaps_ext: bitmap directory size (%d) exceeds the maximum supported size (%d)", e.dirSize, maxBitmapDirSize)
	}
	return e, nil
}

// encode returns the extension's data.
func (e bitmapExt) encode() []byte {
	b := make([]byte, bitmapExtLen)
	binary.BigEndian.PutUint32(b[0:], e.nb)
	binary.BigEndian.PutUint64(b[8:], e.dirSize)
	binary.BigEndian.PutUint64(b[16:], e.dirOff)
	return b
}

// bitmapEntry is one bitmap directory entry (extra data is refused, so
// there is none to keep).
type bitmapEntry struct {
	tableOff  uint64
	tableSize uint32 // entries
	flags     uint32
	granBits  uint8
	name      string
}

func (e *bitmapEntry) granularity() uint64 { return 1 << e.granBits }

// dirEntrySize is the size of an entry with a name of n bytes, padded to
// 8 bytes.
func dirEntrySize(n int) int { return (bitmapDirEntryFixed + n + 7) &^ 7 }

// cName cuts a name at its first NUL byte, as QEMU copies and prints it.
func cName(b []byte) string {
	s := string(b)
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	return s
}

// checkEntry applies QEMU's constraints on a directory entry of an image
// with cluster size cs and virtual size diskLen.
func (e *bitmapEntry) check(typ uint8, cs int64, diskLen uint64) bool {
	if e.tableSize == 0 || e.tableOff == 0 || e.tableOff&uint64(cs-1) != 0 ||
		e.tableSize > maxBitmapTableSize || e.granBits > maxBitmapGranBits ||
		e.granBits < minBitmapGranBits || e.flags&bmeReserved != 0 ||
		len(e.name) > maxBitmapNameSize || typ != bitmapTypeDirty {
		return false
	}
	phys := uint64(e.tableSize) * uint64(cs)
	if phys > maxBitmapPhysSize {
		return false
	}
	// A bitmap that is not in use must have a table covering the disk.
	return e.flags&bmeInUse != 0 || diskLen <= (phys*8)<<e.granBits
}

// parseBitmapDir decodes and checks a bitmap directory of nb entries, as
// QEMU does when it loads one.
func parseBitmapDir(dir []byte, nb uint32, cs int64, diskLen uint64) ([]bitmapEntry, error) {
	if len(dir) == 0 {
		return nil, errors.New("Requested bitmap directory size is zero")
	}
	if len(dir) > maxBitmapDirSize {
		return nil, errors.New("Requested bitmap directory size is too big")
	}
	broken := errors.New("Broken bitmap directory")
	be := binary.BigEndian
	var list []bitmapEntry
	off := 0
	for off < len(dir) {
		if off+bitmapDirEntryFixed > len(dir) {
			return nil, broken
		}
		if uint32(len(list)) >= nb {
			return nil, errors.New("More bitmaps found than specified in header extension")
		}
		h := dir[off:]
		nameSize := int(be.Uint16(h[18:]))
		extra := be.Uint32(h[20:])
		size := uint64(bitmapDirEntryFixed) + uint64(nameSize) + uint64(extra)
		size = (size + 7) &^ 7
		if uint64(off)+size > uint64(len(dir)) {
			return nil, broken
		}
		if extra != 0 {
			return nil, errors.New("Bitmap extra data is not supported")
		}
		rawName := h[bitmapDirEntryFixed : bitmapDirEntryFixed+nameSize]
		e := bitmapEntry{
			tableOff:  be.Uint64(h[0:]),
			tableSize: be.Uint32(h[8:]),
			flags:     be.Uint32(h[12:]),
			granBits:  h[17],
			name:      string(rawName),
		}
		if !e.check(h[16], cs, diskLen) {
			return nil, fmt.Errorf("Bitmap '%s' doesn't satisfy the constraints", cName(rawName))
		}
		e.name = cName(rawName)
		list = append(list, e)
		off += int(size)
	}
	if uint32(len(list)) != nb {
		return nil, errors.New("Less bitmaps found than specified in header extension")
	}
	return list, nil
}

// encodeBitmapDir serialises a directory.
func encodeBitmapDir(list []bitmapEntry) []byte {
	n := 0
	for i := range list {
		n += dirEntrySize(len(list[i].name))
	}
	dir := make([]byte, n)
	be := binary.BigEndian
	off := 0
	for i := range list {
		e := &list[i]
		be.PutUint64(dir[off:], e.tableOff)
		be.PutUint32(dir[off+8:], e.tableSize)
		be.PutUint32(dir[off+12:], e.flags)
		dir[off+16] = bitmapTypeDirty
		dir[off+17] = e.granBits
		be.PutUint16(dir[off+18:], uint16(len(e.name)))
		copy(dir[off+bitmapDirEntryFixed:], e.name)
		off += dirEntrySize(len(e.name))
	}
	return dir
}

// checkTableEntry applies the spec's rules to a bitmap table entry.
func checkTableEntry(v uint64, cs int64) bool {
	if v&bteReserved != 0 {
		return false
	}
	if off := v & bteOffsetMask; off != 0 {
		return v&bteAllOnes == 0 && off&uint64(cs-1) == 0
	}
	return true
}

// bitmapTableSize is the number of table entries (clusters of bits) a
// bitmap of granularity 1<<granBits over diskLen bytes needs.
func bitmapTableSize(diskLen uint64, granBits uint8, cs int64) uint64 {
	granules := (diskLen + 1<<granBits - 1) >> granBits
	bytes := (granules + 63) / 64 * 8
	return (bytes + uint64(cs) - 1) / uint64(cs)
}
