package bitmap

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

// model is the obvious bitmap: one bool per granule. Every operation of
// Bitmap is checked against it.
type model struct {
	size int64
	g    int64
	bits []bool
}

func newModel(size, g int64) *model {
	return &model{size: size, g: g, bits: make([]bool, (size+g-1)/g)}
}

func (m *model) set(off, n int64) {
	end := min(off+n, m.size)
	off = max(off, 0)
	for i := range m.bits {
		lo, hi := int64(i)*m.g, int64(i+1)*m.g
		if off < end && off < hi && end > lo {
			m.bits[i] = true
		}
	}
}

func (m *model) reset(off, n int64) {
	for i := range m.bits {
		lo, hi := int64(i)*m.g, int64(i+1)*m.g
		if lo >= off && (hi <= off+n || off+n >= m.size) {
			m.bits[i] = false
		}
	}
}

func (m *model) resize(size int64) {
	nb := make([]bool, (size+m.g-1)/m.g)
	copy(nb, m.bits)
	m.size, m.bits = size, nb
}

func (m *model) count() int64 {
	var n int64
	for _, b := range m.bits {
		if b {
			n += m.g
		}
	}
	return n
}

func (m *model) bytes() []byte {
	out := make([]byte, (len(m.bits)+7)/8)
	for i, b := range m.bits {
		if b {
			out[i/8] |= 1 << (i % 8)
		}
	}
	return out
}

func (m *model) sha256() string {
	words := max((len(m.bits)+63)/64, 1)
	buf := make([]byte, words*8)
	copy(buf, m.bytes())
	sum := sha256.Sum256(buf)
	return hex.EncodeToString(sum[:])
}

// next returns the first offset in [off, off+limit) whose granule has the
// value want, or -1.
func (m *model) next(off, limit int64, want bool) int64 {
	end := m.size
	if limit >= 0 && off+limit < end {
		end = off + limit
	}
	for p := off; p < end; p = (p/m.g + 1) * m.g {
		if m.bits[p/m.g] == want {
			return p
		}
	}
	return -1
}

func check(t *testing.T, b *Bitmap, m *model, what string) {
	t.Helper()
	if b.Size() != m.size {
		t.Fatalf("%s: size %d, want %d", what, b.Size(), m.size)
	}
	if got, want := b.Count(), m.count(); got != want {
		t.Fatalf("%s: count %d, want %d", what, got, want)
	}
	if got, want := b.MarshalBits(), m.bytes(); !bytes.Equal(got, want) {
		t.Fatalf("%s: bits\n%x\nwant\n%x", what, got, want)
	}
	if got, want := b.SHA256(), m.sha256(); got != want {
		t.Fatalf("%s: sha256 %s, want %s", what, got, want)
	}
}

func TestNewErrors(t *testing.T) {
	for _, g := range []uint64{0, 1, 256, 511, 513, 3000, 65537} {
		if _, err := New(1<<20, g); !errors.Is(err, ErrGranularity) {
			t.Errorf("New(1M, %d): %v, want %v", g, err, ErrGranularity)
		}
	}
	if err := ErrGranularity.Error(); err != "Granularity must be power of 2 and at least 512" {
		t.Errorf("message %q", err)
	}
	if _, err := New(1<<20, 1<<32); !errors.Is(err, ErrGranularityRange) {
		t.Errorf("New(1M, 4G): %v", err)
	}
	if _, err := New(-1, 512); err == nil {
		t.Error("New(-1, 512) succeeded")
	}
	for _, g := range []uint64{512, 4096, 1 << 31} {
		b, err := New(1<<40, g)
		if err != nil {
			t.Fatalf("New(1T, %d): %v", g, err)
		}
		if b.Granularity() != g || b.Size() != 1<<40 || b.Count() != 0 {
			t.Errorf("New(1T, %d): granularity %d size %d count %d", g, b.Granularity(), b.Size(), b.Count())
		}
	}
}

// TestDefaultGranularity pins QEMU's rule, as QSD 7.2 shows it: null-co,
// raw and file nodes get 64 KiB; qcow2 nodes with 512 B, 8 KiB, 32 KiB and
// 2 MiB clusters get 4 KiB, 8 KiB, 32 KiB and 64 KiB.
func TestDefaultGranularity(t *testing.T) {
	for cluster, want := range map[int64]uint64{
		0: 65536, -1: 65536, 512: 4096, 4096: 4096, 8192: 8192, 32768: 32768,
		65536: 65536, 2 << 20: 65536,
	} {
		if got := DefaultGranularity(cluster); got != want {
			t.Errorf("DefaultGranularity(%d) = %d, want %d", cluster, got, want)
		}
	}
}

func TestEmptySHA256(t *testing.T) {
	const eightZeros = "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"
	for _, size := range []int64{0, 1, 1 << 20, 64 * 65536} {
		b, _ := New(size, 65536)
		if got := b.SHA256(); got != eightZeros {
			t.Errorf("size %d: %s", size, got)
		}
	}
	b, _ := New(64*65536+1, 65536) // 65 granules: two words
	sum := sha256.Sum256(make([]byte, 16))
	if got := b.SHA256(); got != hex.EncodeToString(sum[:]) {
		t.Errorf("65 granules: %s", got)
	}
}

func TestSetCountLastGranule(t *testing.T) {
	// QSD: 1 MiB+512 B node, 64 KiB granularity, "write 1048576 512"
	// gives count 65536 and this sha256.
	b, _ := New(1<<20+512, 65536)
	b.Set(1<<20, 512)
	if b.Count() != 65536 {
		t.Errorf("count %d", b.Count())
	}
	if got := b.SHA256(); got != "41b8f24b79ae38bb5f3af44cf187d022c20517a6f576791e466d536517b68fb9" {
		t.Errorf("sha256 %s", got)
	}
	b.Set(1<<20-1, 2) // "write 1048575 2": granules 15 and 16
	if b.Count() != 2*65536 {
		t.Errorf("count %d", b.Count())
	}
	if got := b.SHA256(); got != "cf3fe9a3ee9a673db8db87fa20711cca637137bd492fd2062554ac8a6aca52bb" {
		t.Errorf("sha256 %s", got)
	}
	// Outside the bitmap nothing happens.
	b.Set(2<<20, 100)
	b.Set(-100, 50)
	b.Set(0, 0)
	if b.Count() != 2*65536 || b.Get(0) || !b.Get(1<<20+511) || b.Get(1<<20+512) || b.Get(-1) {
		t.Errorf("bits changed by out-of-range Sets: count %d", b.Count())
	}
}

func TestReset(t *testing.T) {
	const g = 4096
	b, _ := New(10*g+100, g) // 11 granules, the last one partial
	m := newModel(10*g+100, g)
	full := func() { b.Set(0, b.Size()); m.set(0, m.size) }
	for _, r := range [][2]int64{
		{0, g},                // aligned
		{g + 1, 2 * g},        // covers only granule 2 wholly
		{3 * g, g - 1},        // covers nothing wholly
		{5 * g, 5*g + 100},    // reaches the end: clears the partial last granule
		{9*g + 1, 100 * g},    // past the end, start unaligned: clears granule 10 only
		{-g, 2 * g},           // starts before 0
		{10 * g, 100},         // exactly the tail
		{0, 1 << 62},          // everything
		{11 * g, g},           // nothing
		{10*g + 100, 1 << 62}, // nothing: starts at the end
	} {
		full()
		b.Reset(r[0], r[1])
		m.reset(r[0], r[1])
		check(t, b, m, "reset")
	}
}

// TestRandom runs random operations on Bitmap and the model side by side.
func TestRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct {
		size int64
		g    uint64
	}{
		{0, 512}, {1000, 512}, {64 * 512, 512}, {1<<20 + 512, 512}, {1<<20 + 512, 65536},
		{300 * 4096, 4096}, {5<<20 + 7, 4096}, {1 << 30, 1 << 20},
	} {
		b, err := New(c.size, c.g)
		if err != nil {
			t.Fatal(err)
		}
		m := newModel(c.size, int64(c.g))
		rangeOf := func() (int64, int64) {
			if m.size == 0 {
				return 0, rng.Int64N(1000)
			}
			off := rng.Int64N(m.size+int64(c.g)) - int64(c.g)/2
			if rng.IntN(2) == 0 {
				off = off / int64(c.g) * int64(c.g)
			}
			return off, rng.Int64N(max(m.size/4, 1))
		}
		for i := range 400 {
			op := rng.IntN(20)
			switch {
			case op < 10:
				off, n := rangeOf()
				b.Set(off, n)
				m.set(off, n)
			case op < 15:
				off, n := rangeOf()
				b.Reset(off, n)
				m.reset(off, n)
			case op == 15 && i%40 == 0:
				b.Clear()
				m.bits = make([]bool, len(m.bits))
			case op == 16:
				size := max(m.size+rng.Int64N(3*int64(c.g)+1)-int64(c.g), 0)
				b.Resize(size)
				m.resize(size)
			case op == 17:
				u, err := UnmarshalBits(m.size, c.g, append(b.MarshalBits(), 0xff, 0xff))
				if err != nil {
					t.Fatal(err)
				}
				if !bitsEqual(u, b) {
					t.Fatal("UnmarshalBits(MarshalBits()) differs")
				}
				b = u
			case op == 18:
				b = b.Copy()
			}
			check(t, b, m, fmt.Sprintf("size %d gran %d step %d op %d", c.size, c.g, i, op))
			for range 5 {
				off, n := rangeOf()
				if rng.IntN(4) == 0 {
					n = -1
				}
				if got, want := b.NextDirty(off, n), m.next(max(off, 0), n, true); got != want {
					t.Fatalf("NextDirty(%d, %d) = %d, want %d", off, n, got, want)
				}
				if got, want := b.NextClean(off, n), m.next(max(off, 0), n, false); got != want {
					t.Fatalf("NextClean(%d, %d) = %d, want %d", off, n, got, want)
				}
				off = max(off, 0)
				if got := b.Get(off); off < m.size && got != m.bits[off/int64(c.g)] {
					t.Fatalf("Get(%d) = %v", off, got)
				}
				s, l, ok := b.NextDirtyArea(off, n)
				ws := m.next(off, n, true)
				if ok != (ws >= 0) || (ok && s != ws) {
					t.Fatalf("NextDirtyArea(%d, %d) = %d, %d, %v; want start %d", off, n, s, l, ok, ws)
				}
				if ok {
					end := m.size
					if n >= 0 {
						end = min(end, off+n)
					}
					we := m.next(ws, end-ws, false)
					if we < 0 {
						we = end
					}
					if l != we-ws {
						t.Fatalf("NextDirtyArea(%d, %d) length %d, want %d", off, n, l, we-ws)
					}
				}
			}
		}
	}
}

func bitsEqual(a, b *Bitmap) bool {
	return a.size == b.size && a.shift == b.shift && a.Count() == b.Count() &&
		bytes.Equal(a.MarshalBits(), b.MarshalBits())
}

func TestUnmarshalBits(t *testing.T) {
	_, err := UnmarshalBits(100*4096, 4096, make([]byte, 12))
	var short *ShortDataError
	if !errors.As(err, &short) || short.Want != 13 || short.Got != 12 {
		t.Fatalf("short data: %v", err)
	}
	if err.Error() != "expecting at least 13 bytes but got 12 bytes" {
		t.Errorf("message %q", err)
	}
	if _, err := UnmarshalBits(100, 100, nil); !errors.Is(err, ErrGranularity) {
		t.Errorf("bad granularity: %v", err)
	}
	// Bits past the last granule are ignored: 10 granules, all ones given.
	b, err := UnmarshalBits(10*512, 512, []byte{0xff, 0xff, 0xff})
	if err != nil {
		t.Fatal(err)
	}
	if b.Count() != 10*512 || !bytes.Equal(b.MarshalBits(), []byte{0xff, 0x03}) {
		t.Errorf("count %d bits %x", b.Count(), b.MarshalBits())
	}
	if b.NextClean(0, -1) != -1 || b.NextDirty(9*512, -1) != 9*512 {
		t.Errorf("searches after unmarshal: %d %d", b.NextClean(0, -1), b.NextDirty(9*512, -1))
	}
}

func TestMerge(t *testing.T) {
	const size = 1<<20 + 512
	mk := func(g uint64) *Bitmap { b, _ := New(size, g); return b }
	a, b, c := mk(65536), mk(512), mk(1<<20)
	b.Set(70000, 1000)
	b.Set(1<<20, 512)
	// QSD 7.2 merges b (512 B) into a (64 KiB) and into c (1 MiB): every
	// byte range dirty in b dirties the granules it touches.
	if err := a.Merge(b); err != nil {
		t.Fatal(err)
	}
	if err := c.Merge(b); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct {
		bm    *Bitmap
		count int64
		sha   string
	}{
		{a, 131072, "520923b1bc6591f7c80547804ba79f76617678e0f88c0727051a8ebc1b5813bc"},
		{b, 2048, "9dd5a8c2cdf32deedae6874b21ef39d823199967be602193e0296b3df4923bba"},
		{c, 2097152, "35be322d094f9d154a8aba4733b8497f180353bd7ae7b0a15f90b586b549f28b"},
	} {
		if r.bm.Count() != r.count || r.bm.SHA256() != r.sha {
			t.Errorf("granularity %d: count %d sha256 %s, want %d %s", r.bm.Granularity(), r.bm.Count(), r.bm.SHA256(), r.count, r.sha)
		}
	}
	// A coarse source into a fine target: the source's last granule is cut
	// at the size.
	d := mk(512)
	if err := d.Merge(c); err != nil {
		t.Fatal(err)
	}
	if d.Count() != size {
		t.Errorf("fine from coarse: count %d", d.Count())
	}
	// Same granularity: plain OR, summaries included.
	e := mk(512)
	e.Set(0, 512)
	if err := e.Merge(b); err != nil {
		t.Fatal(err)
	}
	m := newModel(size, 512)
	m.set(0, 512)
	m.set(70000, 1000)
	m.set(1<<20, 512)
	check(t, e, m, "merge")
	if e.NextDirty(512, -1) != 70000-70000%512 || e.NextDirty(72000, -1) != 1<<20 {
		t.Errorf("summaries after merge: %d %d", e.NextDirty(512, -1), e.NextDirty(72000, -1))
	}
	if err := e.Merge(e); err != nil || e.Count() != m.count() {
		t.Errorf("self merge: %v, count %d", err, e.Count())
	}
	f, _ := New(2<<20, 65536)
	err := f.Merge(b)
	if err == nil || err.Error() != "Bitmaps are of different sizes (destination size is 2097152, source size is 1049088) and can't be merged" {
		t.Errorf("size mismatch: %v", err)
	}
}

func TestResize(t *testing.T) {
	b, _ := New(1<<20+512, 65536)
	b.Set(1<<20, 1) // the partial last granule
	b.Set(0, 1)
	b.Resize(2 << 20)
	if !b.Get(1<<20+60000) || b.Count() != 2*65536 || b.NextDirty(65536, -1) != 1<<20 {
		t.Errorf("grow: count %d next %d", b.Count(), b.NextDirty(65536, -1))
	}
	b.Set(2<<20-1, 1)
	b.Resize(1 << 20) // drops granules 16 and 31
	if b.Count() != 65536 || b.NextDirty(65536, -1) != -1 || len(b.MarshalBits()) != 2 {
		t.Errorf("shrink: count %d next %d", b.Count(), b.NextDirty(65536, -1))
	}
	b.Resize(4 << 20)
	if b.Count() != 65536 || b.NextDirty(65536, -1) != -1 {
		t.Errorf("grow again: dropped bits came back: count %d", b.Count())
	}
}

// TestLargeSparse checks the summary levels on a 1 TiB bitmap at 4 KiB
// granularity (four levels).
func TestLargeSparse(t *testing.T) {
	b, err := New(1<<40, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.levels) != 4 {
		t.Fatalf("%d levels", len(b.levels))
	}
	offs := []int64{0, 4096*64 - 1, 1 << 30, 1<<39 + 12345, 1<<40 - 1}
	for _, o := range offs {
		b.Set(o, 1)
	}
	var got []int64
	for o := int64(0); ; {
		s, l, ok := b.NextDirtyArea(o, -1)
		if !ok {
			break
		}
		if l > 4096 {
			t.Fatalf("area %d+%d too long", s, l)
		}
		got = append(got, s)
		o = s + l
	}
	want := []int64{0, 4096 * 63, 1 << 30, 1<<39 + 12288, 1<<40 - 4096}
	if len(got) != len(want) {
		t.Fatalf("areas %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("areas %v, want %v", got, want)
		}
	}
	b.Reset(1<<30, 4096)
	if b.NextDirty(4096*64, 1<<39-4096*64) != -1 {
		t.Errorf("summary not cleared: %d", b.NextDirty(4096*64, 1<<39))
	}
	if b.NextClean(0, -1) != 4096 {
		t.Errorf("NextClean %d", b.NextClean(0, -1))
	}
}

// TestConcurrent runs writers and readers at once (meaningful under -race):
// every Set that returned is visible, and the count is exact.
func TestConcurrent(t *testing.T) {
	const g = 4096
	b, _ := New(1<<32, g) // 4 GiB, 1 Mibit: three levels
	other, _ := New(1<<32, 65536)
	var wg sync.WaitGroup
	const writers, perWriter = 8, 1000
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range perWriter {
				gi := int64(rng.IntN(1 << 20))
				b.Set(gi*g+int64(i%g), 1)
				if i%250 == 0 {
					b.Set(0, 1<<20) // overlapping with other writers
					if err := other.Merge(b); err != nil {
						t.Error(err)
					}
					if err := b.Merge(other); err != nil {
						t.Error(err)
					}
				}
				if !b.Get(gi * g) {
					t.Errorf("bit %d not visible after Set", gi)
					return
				}
				if b.NextDirty(gi*g, g) != gi*g {
					t.Errorf("NextDirty misses granule %d", gi)
					return
				}
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for range 10 {
				_ = b.SHA256()
				_ = b.Count()
				_ = b.MarshalBits()
				_, _, _ = b.NextDirtyArea(0, -1)
				_ = b.Copy()
			}
		})
	}
	wg.Wait()
	u, err := UnmarshalBits(b.Size(), g, b.MarshalBits())
	if err != nil {
		t.Fatal(err)
	}
	if u.Count() != b.Count() || u.SHA256() != b.SHA256() {
		t.Errorf("count %d after concurrent writes, recounted %d", b.Count(), u.Count())
	}
	var n int64
	for o := int64(0); ; {
		s, l, ok := b.NextDirtyArea(o, -1)
		if !ok {
			break
		}
		n += l
		o = s + l
	}
	if n != b.Count() {
		t.Errorf("dirty areas cover %d bytes, count %d", n, b.Count())
	}
}
