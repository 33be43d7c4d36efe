package drivertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
)

// The I/O checks: requests through the root user, reads compared with the
// model.

var ctx = context.Background()

func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*7+i/251)
	}
	return p
}

// want is what [off, off+n) must read as.
func (e *env) want(off, n int64) []byte {
	if e.model == nil {
		return make([]byte, n)
	}
	return slices.Clone(e.model[off : off+n])
}

// write writes p at off and records it in the model.
func (e *env) write(t *testing.T, off int64, p []byte, flags blockdev.ReqFlags) {
	t.Helper()
	if err := e.Child.Write(ctx, off, p, flags); err != nil {
		t.Fatalf("write %d+%d: %v", off, len(p), err)
	}
	if e.model != nil {
		copy(e.model[off:], p)
	}
}

// zero write-zeroes [off, off+n) and records it in the model.
func (e *env) zero(t *testing.T, off, n int64, flags blockdev.ReqFlags) {
	t.Helper()
	if err := e.Child.WriteZeroes(ctx, off, n, flags); err != nil {
		t.Fatalf("write-zeroes %d+%d (flags %#x): %v", off, n, flags, err)
	}
	if e.model != nil {
		clear(e.model[off : off+n])
	}
}

// discard discards [off, off+n): afterwards each of its bytes reads as it
// did or as zero (a discard may deallocate whole blocks or do nothing),
// and the model takes what it reads as.
func (e *env) discard(t *testing.T, off, n int64) {
	t.Helper()
	err := e.Child.Discard(ctx, off, n)
	if a := e.DiscardAlign; err != nil && a > 0 && (off%a != 0 || n%a != 0) && errors.Is(err, syscall.EINVAL) {
		e.verify(t, off, n, fmt.Sprintf("a refused misaligned discard %d+%d", off, n))
		return
	}
	if err != nil {
		t.Fatalf("discard %d+%d: %v", off, n, err)
	}
	got := e.read(t, off, n)
	old := e.want(off, n)
	for i := range got {
		if got[i] != old[i] && got[i] != 0 {
			t.Fatalf("after discard %d+%d byte %d is %#x: neither what it was (%#x) nor zero", off, n, off+int64(i), got[i], old[i])
		}
	}
	if e.model != nil {
		copy(e.model[off:], got)
	}
}

// read reads [off, off+n) into a buffer prefilled with garbage, so that a
// driver that leaves the buffer alone is caught.
func (e *env) read(t *testing.T, off, n int64) []byte {
	t.Helper()
	buf := bytes.Repeat([]byte{0x5a}, int(n))
	if err := e.Child.Read(ctx, off, buf); err != nil {
		t.Fatalf("read %d+%d: %v", off, n, err)
	}
	return buf
}

// verify reads [off, off+n) (clipped to the node) and compares it with the
// model.
func (e *env) verify(t *testing.T, off, n int64, after string) {
	t.Helper()
	off = max(off, 0)
	n = min(n, e.Child.Length()-off)
	if n <= 0 {
		return
	}
	got, want := e.read(t, off, n), e.want(off, n)
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("after %s: byte %d reads %#x, want %#x (range %d+%d)", after, off+int64(i), got[i], want[i], off, n)
	}
}

// verifyAll compares the whole node with the model; of a node larger than
// 8 MiB (null-co's default 1 GiB) only the first 2 MiB and the last 1 MiB,
// where the checks write.
func (e *env) verifyAll(t *testing.T, after string) {
	t.Helper()
	l := e.Child.Length()
	if l <= 8<<20 {
		e.verify(t, 0, l, after)
		return
	}
	e.verify(t, 0, 2<<20, after)
	e.verify(t, l-1<<20, 1<<20, after)
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func checkLength(t *testing.T, e *env) {
	n, c := e.Node, e.Child
	if l := n.Length(); l < 1<<20 || l%512 != 0 {
		t.Fatalf("length %d: want >= 1 MiB and a multiple of 512", l)
	}
	if c.Length() != n.Length() {
		t.Fatalf("child length %d != node length %d", c.Length(), n.Length())
	}
	e.verifyAll(t, "open (a fresh node reads as zeroes)")
}

func checkRoundTrip(t *testing.T, e *env) {
	l := e.Child.Length()
	cases := []struct{ off, n int64 }{
		{0, 512}, {0, 1}, {1, 511}, {511, 2}, {512, 4096}, {4095, 4097},
		{65536 + 7, 100000}, {l - 4096, 4096}, {l - 1, 1}, {l - 513, 513},
	}
	for i, tc := range cases {
		e.write(t, tc.off, pattern(int(tc.n), byte(i+1)), 0)
		e.verify(t, tc.off-4096, tc.n+8192, fmt.Sprintf("write %d+%d", tc.off, tc.n))
	}
	// A FUA write completes like any other.
	e.write(t, 8192, pattern(512, 9), blockdev.ReqFUA)
	e.verify(t, 8192-512, 1536, "FUA write")
	// Neighbours of a small write are untouched.
	e.write(t, 20000, bytes.Repeat([]byte{0xaa}, 1024), 0)
	e.write(t, 20100, []byte{1, 2, 3}, 0)
	e.verify(t, 20000, 1024, "a 3-byte write")
	e.verifyAll(t, "all the writes")
}

// boundaries returns the block sizes whose edges the node cares about:
// sectors, pages, the request alignment, the cluster size and the largest
// transfer, those that leave room for a few blocks in the node.
func boundaries(e *env) []int64 {
	bs := []int64{512, 4096, e.Node.RequestAlignment(), e.Node.MaxTransfer()}
	if di, err := e.Node.Driver().Info(ctx); err == nil {
		bs = append(bs, di.ClusterSize)
	}
	var out []int64
	for _, b := range bs {
		if b > 1 && b*6 <= e.Child.Length() && !slices.Contains(out, b) {
			out = append(out, b)
		}
	}
	slices.Sort(out)
	return out
}

// checkBoundaries writes, zeroes (with and without may-unmap) and
// discards ranges that start, end or cross at each boundary, comparing
// the neighbourhood with the model after each request.
func checkBoundaries(t *testing.T, e *env) {
	for _, b := range boundaries(e) {
		base := 2 * b // away from the start so that ranges can begin before a boundary
		ranges := []struct{ off, n int64 }{
			{base - 1, 2},         // across one boundary, a byte each side
			{base, b},             // exactly one block
			{base + 1, b - 2},     // inside one block
			{base - 3, 2*b + 6},   // two boundaries and a bit
			{base + b/2, b},       // half a block each side of a boundary
			{base - b + 512, 512}, // a sector before a boundary, sector aligned
		}
		for i, r := range ranges {
			what := fmt.Sprintf("block %d, range %d+%d", b, r.off, r.n)
			lo, n := r.off-b, r.n+2*b
			e.write(t, lo, pattern(int(n), byte(3*i+1)), 0)
			e.write(t, r.off, pattern(int(r.n), byte(3*i+2)), 0)
			e.verify(t, lo, n, "write of "+what)
			for _, flags := range []blockdev.ReqFlags{0, blockdev.ReqMayUnmap} {
				e.zero(t, r.off, r.n, flags)
				e.verify(t, lo, n, fmt.Sprintf("write-zeroes (flags %#x) of %s", flags, what))
				e.write(t, r.off, pattern(int(r.n), byte(3*i+3)), 0)
				e.verify(t, lo, n, "rewrite of "+what)
			}
			e.discard(t, r.off, r.n)
			e.verify(t, lo, n, "discard of "+what)
			e.zero(t, lo, n, blockdev.ReqMayUnmap)
			e.write(t, r.off, pattern(int(r.n), byte(3*i+4)), 0)
		}
	}
	e.verifyAll(t, "all the requests")
	e.checkExtents(t)
}

func checkBounds(t *testing.T, e *env) {
	c := e.Child
	l := c.Length()
	buf := make([]byte, 2)
	for _, off := range []int64{l - 1, l, l + 512, -1} {
		if err := c.Read(ctx, off, buf); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("read of 2 bytes at %d (length %d): got %v, want ErrOutOfRange", off, l, err)
		}
		if err := c.Write(ctx, off, buf, 0); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("write of 2 bytes at %d: got %v, want ErrOutOfRange", off, err)
		}
	}
	if err := c.WriteZeroes(ctx, l-512, 1024, 0); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Errorf("write-zeroes past the end: got %v", err)
	}
	if err := c.Discard(ctx, l, 1); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Errorf("discard past the end: got %v", err)
	}
	if _, err := c.BlockStatus(ctx, l-1, 2); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Errorf("block-status past the end: got %v", err)
	}
	if err := c.Read(ctx, l, nil); err != nil {
		t.Errorf("empty read at the end: %v", err)
	}
	e.verifyAll(t, "requests out of range")
}

func checkFlush(t *testing.T, e *env) {
	e.write(t, 0, pattern(4096, 3), 0)
	if err := e.Child.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
	// A flush with nothing written since.
	if err := e.Child.Flush(ctx); err != nil {
		t.Fatalf("second flush: %v", err)
	}
	e.write(t, 4096, pattern(512, 4), blockdev.ReqFUA)
	if err := e.Child.Flush(ctx); err != nil {
		t.Fatalf("flush after a FUA write: %v", err)
	}
	e.verify(t, 0, 16384, "flushes")
}

func checkWriteZeroes(flags blockdev.ReqFlags) func(t *testing.T, e *env) {
	return func(t *testing.T, e *env) {
		e.write(t, 0, pattern(256<<10, 5), 0)
		for _, r := range []struct{ off, n int64 }{{4096, 8192}, {65536 + 3, 70000}, {200000, 1}} {
			e.zero(t, r.off, r.n, flags)
			e.verify(t, 0, 256<<10, fmt.Sprintf("write-zeroes %d+%d", r.off, r.n))
		}
	}
}

func checkDiscard(t *testing.T, e *env) {
	e.write(t, 0, pattern(1<<20, 8), 0)
	e.discard(t, 65536, 65536)
	e.discard(t, 3, 5) // misaligned
	e.verify(t, 0, 1<<20, "discards")
}

// checkBlockStatus walks the node's extents after some writes and
// write-zeroes: they cover the node, a range reported as zero reads as
// zeroes, and one holding written data is reported as data, never as
// zero.
func checkBlockStatus(t *testing.T, e *env) {
	if !e.ReadOnly {
		e.write(t, 1<<19, pattern(8192, 1), 0)
		e.write(t, 3<<16, pattern(65536, 2), 0)
		e.zero(t, 3<<16+4096, 8192, 0)
		e.write(t, 1<<18, pattern(1, 3), 0)
	}
	e.checkExtents(t)
}

// checkExtents walks the node's extents and compares them with the model.
func (e *env) checkExtents(t *testing.T) {
	t.Helper()
	l := e.Child.Length()
	for off := int64(0); off < l; {
		st, err := e.Child.BlockStatus(ctx, off, l-off)
		if err != nil {
			t.Fatalf("block-status at %d: %v", off, err)
		}
		if st.Length <= 0 || st.Length > l-off {
			t.Fatalf("block-status at %d: length %d out of (0, %d]", off, st.Length, l-off)
		}
		if st.Flags&blockdev.StatusZero != 0 {
			n := min(st.Length, 4<<20)
			if i := firstDiff(e.want(off, n), make([]byte, n)); i >= 0 {
				t.Fatalf("block-status reports %d+%d as zero, but byte %d was written non-zero", off, st.Length, off+int64(i))
			}
			e.verify(t, off, n, fmt.Sprintf("block-status reporting %d+%d as zero", off, st.Length))
		}
		if e.model != nil && st.Flags&blockdev.StatusData == 0 {
			n := min(st.Length, 4<<20)
			if i := firstDiff(e.want(off, n), make([]byte, n)); i >= 0 {
				t.Fatalf("block-status reports %d+%d without data (flags %#x), but byte %d was written non-zero", off, st.Length, st.Flags, off+int64(i))
			}
		}
		off += st.Length
	}
}

func checkConcurrent(t *testing.T, e *env) {
	c := e.Child
	const workers, rounds, chunk = 8, 20, 4096 + 13
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			base := int64(w) * 64 << 10
			for r := range rounds {
				off := base + int64(r%4)*chunk
				p := pattern(chunk, byte(w*31+r))
				if err := c.Write(ctx, off, p, 0); err != nil {
					errs <- err
					return
				}
				got := make([]byte, chunk)
				if err := c.Read(ctx, off, got); err != nil {
					errs <- err
					return
				}
				if e.Stores && !bytes.Equal(got, p) {
					errs <- fmt.Errorf("worker %d round %d: read back differs", w, r)
					return
				}
				if _, err := c.BlockStatus(ctx, off, chunk); err != nil {
					errs <- err
					return
				}
			}
			if err := c.Flush(ctx); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
