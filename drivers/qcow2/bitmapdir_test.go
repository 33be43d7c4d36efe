package qcow2

import (
	"encoding/binary"
	"reflect"
	"testing"
)

// dirEntry builds one raw directory entry.
func dirEntry(tableOff uint64, tableSize, flags uint32, typ, gb uint8, name string, extra int) []byte {
	b := make([]byte, dirEntrySize(len(name)+extra))
	be := binary.BigEndian
	be.PutUint64(b[0:], tableOff)
	be.PutUint32(b[8:], tableSize)
	be.PutUint32(b[12:], flags)
	b[16], b[17] = typ, gb
	be.PutUint16(b[18:], uint16(len(name)))
	be.PutUint32(b[20:], uint32(extra))
	copy(b[24+extra:], name)
	return b
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// The directory's checks give QEMU's messages; a good directory
// round-trips through the encoder.
func TestParseBitmapDir(t *testing.T) {
	const cs = 65536
	const disk = 1 << 30
	good := dirEntry(3*cs, 1, bmeAuto, 1, 16, "b0", 0)
	inUse := dirEntry(4*cs, 1, bmeInUse, 1, 9, "b1", 0)
	for _, c := range []struct {
		name string
		dir  []byte
		nb   uint32
		want string
	}{
		{"empty", nil, 1, "Requested bitmap directory size is zero"},
		{"short", good[:20], 1, "Broken bitmap directory"},
		{"more", cat(good, inUse), 1, "More bitmaps found than specified in header extension"},
		{"less", good, 2, "Less bitmaps found than specified in header extension"},
		{"name past end", good[:26], 1, "Broken bitmap directory"},
		{"extra data", dirEntry(3*cs, 1, 0, 1, 16, "x", 8), 1, "Bitmap extra data is not supported"},
		{"type", dirEntry(3*cs, 1, 0, 2, 16, "x", 0), 1, "Bitmap 'x' doesn't satisfy the constraints"},
		{"reserved flag", dirEntry(3*cs, 1, 4, 1, 16, "x", 0), 1, "Bitmap 'x' doesn't satisfy the constraints"},
		{"granularity low", dirEntry(3*cs, 1, 0, 1, 8, "x", 0), 1, "Bitmap 'x' doesn't satisfy the constraints"},
		{"granularity high", dirEntry(3*cs, 1, 0, 1, 32, "x", 0), 1, "Bitmap 'x' doesn't satisfy the constraints"},
		{"table unaligned", dirEntry(3*cs+512, 1, 0, 1, 16, "x", 0), 1, "Bitmap 'x' doesn't satisfy the constraints"},
		{"no table", dirEntry(0, 1, 0, 1, 16, "x", 0), 1, "Bitmap 'x' doesn't satisfy the constraints"},
		{"empty table", dirEntry(3*cs, 0, 0, 1, 16, "x", 0), 1, "Bitmap 'x' doesn't satisfy the constraints"},
		{"table too small", dirEntry(3*cs, 1, 0, 1, 9, "x", 0), 1, "Bitmap 'x' doesn't satisfy the constraints"},
		{"table too big", dirEntry(3*cs, maxBitmapTableSize+1, bmeInUse, 1, 16, "x", 0), 1, "Bitmap 'x' doesn't satisfy the constraints"},
		{"name cut at NUL", dirEntry(3*cs, 1, 0, 2, 16, "a\x00b", 0), 1, "Bitmap 'a' doesn't satisfy the constraints"},
		{"trailing bytes", cat(good, make([]byte, 8)), 1, "Broken bitmap directory"},
	} {
		_, err := parseBitmapDir(c.dir, c.nb, cs, disk)
		if err == nil || err.Error() != c.want {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	list, err := parseBitmapDir(cat(good, inUse), 2, cs, disk)
	if err != nil {
		t.Fatal(err)
	}
	want := []bitmapEntry{
		{tableOff: 3 * cs, tableSize: 1, flags: bmeAuto, granBits: 16, name: "b0"},
		{tableOff: 4 * cs, tableSize: 1, flags: bmeInUse, granBits: 9, name: "b1"},
	}
	if !reflect.DeepEqual(list, want) {
		t.Fatalf("parsed %+v, want %+v", list, want)
	}
	if enc := encodeBitmapDir(list); string(enc) != string(cat(good, inUse)) {
		t.Fatalf("encoded %x, want %x", enc, cat(good, inUse))
	}
}

func TestParseBitmapExt(t *testing.T) {
	const cs = 65536
	ext := func(nb, res uint32, size, off uint64) []byte {
		b := bitmapExt{nb, size, off}.encode()
		binary.BigEndian.PutUint32(b[4:], res)
		return b
	}
	for _, c := range []struct {
		data []byte
		want string
	}{
		{ext(1, 1, 32, cs), "bitmaps_ext: Reserved field is not zero"},
		{ext(65536, 0, 32, cs), "bitmaps_ext: Image has 65536 bitmaps, exceeding the QEMU supported maximum of 65535"},
		{ext(0, 0, 32, cs), "found bitmaps extension with zero bitmaps"},
		{ext(1, 0, 32, cs+8), "bitmaps_ext: invalid bitmap directory offset"},
		{ext(1, 0, maxBitmapDirSize+1, cs), "bitmaps_ext: bitmap directory size (67107841) exceeds the maximum supported size (67107840)"},
	} {
		if _, err := parseBitmapExt(c.data, cs); err == nil || err.Error() != c.want {
			t.Errorf("%x: %v, want %q", c.data, err, c.want)
		}
	}
	e, err := parseBitmapExt(ext(3, 0, 96, 5*cs), cs)
	if err != nil || e != (bitmapExt{3, 96, 5 * cs}) {
		t.Fatalf("%+v %v", e, err)
	}
}

func TestBitmapTableEntries(t *testing.T) {
	const cs = 65536
	for v, ok := range map[uint64]bool{
		0: true, bteAllOnes: true, 5 * cs: true,
		5*cs | bteAllOnes: false, 5*cs + 512: false, 2: false, 1 << 56: false,
	} {
		if checkTableEntry(v, cs) != ok {
			t.Errorf("entry %#x: valid %v", v, !ok)
		}
	}
	// 1 GiB at 512 bytes: 2 Mibit = 256 KiB = 4 clusters of 64 KiB.
	if n := bitmapTableSize(1<<30, 9, cs); n != 4 {
		t.Errorf("table size %d", n)
	}
	if n := bitmapTableSize(1<<20+1, 16, cs); n != 1 {
		t.Errorf("table size %d", n)
	}
}

// FuzzBitmapDirectory feeds arbitrary extension and directory bytes to the
// codec: errors are fine, panics are not, and what parses re-encodes into
// a directory that parses to the same entries.
func FuzzBitmapDirectory(f *testing.F) {
	const cs = 65536
	f.Add(bitmapExt{2, 64, cs}.encode(), cat(dirEntry(3*cs, 1, bmeAuto, 1, 16, "b0", 0), dirEntry(4*cs, 4, bmeInUse, 1, 9, "b1", 0)), uint64(1<<30))
	f.Add(bitmapExt{1, 32, 2 * cs}.encode(), dirEntry(3*cs, 1, 0, 1, 20, "a\x00b", 0), uint64(1<<20))
	f.Add(bitmapExt{1, 40, 2 * cs}.encode(), dirEntry(3*cs, 1, 0, 1, 20, "x", 8), uint64(0))
	f.Fuzz(func(t *testing.T, ext, dir []byte, disk uint64) {
		nb := uint32(len(dir)/24 + 1)
		if len(ext) == bitmapExtLen {
			e, err := parseBitmapExt(ext, cs)
			if err != nil {
				return
			}
			if string(e.encode()) != string(ext[:4])+"\x00\x00\x00\x00"+string(ext[8:]) {
				t.Fatalf("extension %x re-encoded as %x", ext, e.encode())
			}
			nb = e.nb
		}
		list, err := parseBitmapDir(dir, nb, cs, disk)
		if err != nil {
			return
		}
		again, err := parseBitmapDir(encodeBitmapDir(list), uint32(len(list)), cs, disk)
		if err != nil || !reflect.DeepEqual(again, list) {
			t.Fatalf("%+v re-parsed as %+v, %v", list, again, err)
		}
	})
}
