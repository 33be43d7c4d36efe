package qcow2

import (
	"testing"

	"github.com/qbmond/qbmond/blockdev"
)

// fakeLayout is a driver's metadata for the overlap checks alone: l2s
// L2 tables and rbs refcount blocks spread over the image file.
func fakeLayout(l2s, rbs int) *Driver {
	d := &Driver{h: &header{l1Off: 3 << 16, refTableOff: 1 << 16, refTableCluster: 1}, cs: 1 << 16, olCheck: olCached}
	d.l1 = make([]uint64, l2s)
	for i := range d.l1 {
		d.l1[i] = uint64(100+2*i)<<16 | flagCopied
	}
	d.rt = make([]uint64, 8192)
	for i := range rbs {
		d.rt[i] = uint64(101+2*i) << 16
	}
	d.olRebuild()
	return d
}

// The checks find each structure, in QEMU's order, and nothing between.
func TestOverlaps(t *testing.T) {
	d := fakeLayout(4, 4)
	cases := []struct {
		off, size int64
		want      olMask
	}{
		{0, 512, olMainHeader},
		{65535, 2, olMainHeader},
		{1 << 16, 1, olRefcountTable},
		{3<<16 + 4000, 8, olActiveL1},
		{2 << 16, 4096, 0}, // the refcount block here is not in the table
		{100 << 16, 4096, olActiveL2},
		{106<<16 + 65535, 1, olActiveL2},
		{101 << 16, 4096, olRefcountBlock},
		{99 << 16, 3 << 16, olActiveL2}, // L2 before refcount block
		{108 << 16, 1 << 20, 0},
		{4 << 16, 0, 0},
	}
	for _, c := range cases {
		if got := d.overlaps(0, c.off, c.size); got != c.want {
			t.Errorf("overlaps(%#x, %#x) = %v, want %v", c.off, c.size, got, c.want)
		}
	}
	if got := d.overlaps(olActiveL2, 100<<16, 4096); got != 0 {
		t.Errorf("ignored L2 reported: %v", got)
	}
	d.olTrackL1(d.l1[0], 0)
	d.l1[0] = 0
	if got := d.overlaps(0, 100<<16, 4096); got != 0 {
		t.Errorf("dropped L2 table still reported: %v", got)
	}
	d.olCheck = olConstant
	if got := d.overlaps(0, 101<<16, 4096); got != 0 {
		t.Errorf("refcount block reported in constant mode: %v", got)
	}
}

// The cost of one check of a 4 KiB write, in "cached" mode, with 16384
// L2 tables (a 8 TiB disk fully mapped) and 8192 refcount blocks.
func BenchmarkOverlapCheck(b *testing.B) {
	d := fakeLayout(16384, 8192)
	off := int64(1<<20) << 16 // past all metadata: the whole check runs
	for b.Loop() {
		if d.overlaps(0, off, 4096) != 0 {
			b.Fatal("hit")
		}
	}
}

// overlap-check as QMP (JSON) and the command line (keyval strings)
// give it.
func TestParseOverlapCheck(t *testing.T) {
	cases := []struct {
		v    any
		want olMask
	}{
		{nil, olCached},
		{"none", 0},
		{"constant", olConstant},
		{"all", olAll},
		{map[string]any{}, olCached},
		{map[string]any{"template": "none", "refcount-block": true}, olRefcountBlock},
		{map[string]any{"template": "none", "refcount-block": "on"}, olRefcountBlock},
		{map[string]any{"main-header": "off"}, olCached &^ olMainHeader},
		{map[string]any{"template": "constant", "inactive-l2": true}, olConstant | olInactiveL2},
	}
	for _, c := range cases {
		o := blockdev.Options{}
		if c.v != nil {
			o["overlap-check"] = c.v
		}
		got, err := parseOverlapCheck(o)
		if err != nil || got != c.want {
			t.Errorf("%v: %#x, %v; want %#x", c.v, got, err, c.want)
		}
	}
}
