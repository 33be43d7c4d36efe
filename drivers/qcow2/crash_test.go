package qcow2_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
)

// Crash consistency. The image file of a qcow2 node is a "crashsim" node:
// an in-memory file that keeps, besides its current bytes, what a host
// crash could leave behind: everything as of the last flush, plus any
// subset of the writes made since (the kernel writes dirty pages back in
// any order). From such a state the image must be consistent — qemu-img
// check finds no corruption, at most leaked clusters — and every guest
// write completed before the last guest flush must read back.

func init() {
	blockdev.RegisterDriver("crashsim", func() blockdev.Driver { return &crashFile{} })
}

var crashFiles sync.Map // id → *crashState

// crashState is one simulated file. It keeps its whole history, so that
// a crash can be simulated afterwards at any point between two of its
// writes, in the middle of a guest request too.
type crashState struct {
	mu   sync.Mutex
	cur  []byte
	hist []crashOp
	// lastFlush[k] is the index of the last flush before hist[k] (-1: none).
	lastFlush []int
	// base is init with hist[:baseN] applied, all of it durable: crashes
	// start from there instead of replaying everything.
	base  []byte
	baseN int
}

// lastFlushBefore returns the index of the last flush before hist[k].
func (s *crashState) lastFlushBefore(k int) int {
	if k == 0 {
		return -1
	}
	if s.hist[k-1].flush {
		return k - 1
	}
	return s.lastFlush[k-1]
}

// settle moves base up to the last flush before hist[k]: no crash before
// hist[k] is asked for afterwards.
func (s *crashState) settle(k int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ; s.baseN <= s.lastFlushBefore(k); s.baseN++ {
		s.base = s.apply(s.base, s.hist[s.baseN])
	}
}

// crashOp is a write (data), a length change (data nil, size) or a flush.
type crashOp struct {
	off   int64
	data  []byte
	size  int64
	flush bool
}

func (s *crashState) apply(b []byte, op crashOp) []byte {
	switch {
	case op.flush:
		return b
	case op.data == nil:
		if op.size <= int64(len(b)) {
			return b[:op.size]
		}
		return append(b, make([]byte, op.size-int64(len(b)))...)
	}
	if end := op.off + int64(len(op.data)); end > int64(len(b)) {
		b = append(b, make([]byte, end-int64(len(b)))...)
	}
	copy(b[op.off:], op.data)
	return b
}

func (s *crashState) do(op crashOp) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur = s.apply(s.cur, op)
	lf := -1
	if k := len(s.hist); k > 0 {
		lf = s.lastFlush[k-1]
		if s.hist[k-1].flush {
			lf = k - 1
		}
	}
	s.hist = append(s.hist, op)
	s.lastFlush = append(s.lastFlush, lf)
}

// now is the length of the history.
func (s *crashState) now() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.hist)
}

// flushesIn returns the indexes of the flushes in hist[from:to].
func (s *crashState) flushesIn(from, to int) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var fs []int
	for i := from; i < to; i++ {
		if s.hist[i].flush {
			fs = append(fs, i)
		}
	}
	return fs
}

// crashAt returns a state the file could have after a crash just before
// hist[k]: everything up to the last flush before it, and each write
// after that flush kept or lost at random, in order (length changes are
// kept: the file system logs them).
func (s *crashState) crashAt(k int, rng *rand.Rand) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.lastFlushBefore(k)
	if f+1 < s.baseN {
		panic("crash asked for before the settled base")
	}
	b := append([]byte(nil), s.base...)
	for i := s.baseN; i < k; i++ {
		if op := s.hist[i]; i <= f || op.data == nil || rng.IntN(2) == 0 {
			b = s.apply(b, op)
		}
	}
	return b
}

type crashFile struct{ s *crashState }

func (f *crashFile) Open(ctx context.Context, oc *blockdev.OpenContext) error {
	id, _, err := oc.Options().String("id")
	if err != nil {
		return err
	}
	s, ok := crashFiles.Load(id)
	if !ok {
		return fmt.Errorf("no crashsim file %q", id)
	}
	f.s = s.(*crashState)
	return nil
}

func (f *crashFile) Close() error { return nil }
func (f *crashFile) Protocol()    {}

func (f *crashFile) Read(ctx context.Context, off int64, p []byte) error {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	clear(p)
	if off < int64(len(f.s.cur)) {
		copy(p, f.s.cur[off:])
	}
	return nil
}

func (f *crashFile) Write(ctx context.Context, off int64, p []byte, flags blockdev.ReqFlags) error {
	f.s.do(crashOp{off: off, data: append([]byte(nil), p...)})
	return nil
}

func (f *crashFile) WriteZeroes(ctx context.Context, off, n int64, flags blockdev.ReqFlags) error {
	f.s.do(crashOp{off: off, data: make([]byte, n)})
	return nil
}

// Discard punches a hole: the range reads as zeroes.
func (f *crashFile) Discard(ctx context.Context, off, n int64) error {
	f.s.mu.Lock()
	end := min(off+n, int64(len(f.s.cur)))
	f.s.mu.Unlock()
	if end > off {
		f.s.do(crashOp{off: off, data: make([]byte, end-off)})
	}
	return nil
}

func (f *crashFile) Flush(ctx context.Context) error {
	f.s.do(crashOp{flush: true})
	return nil
}

func (f *crashFile) Truncate(ctx context.Context, size int64, exact bool) error {
	f.s.do(crashOp{size: size})
	return nil
}

// WriteFromFile takes the bytes from fd, so copy offload (backup, commit)
// runs through the same record.
func (f *crashFile) WriteFromFile(ctx context.Context, off, n int64, fd int, fileOff int64) error {
	p := make([]byte, n)
	if _, err := syscall.Pread(fd, p, fileOff); err != nil {
		return err
	}
	return f.Write(ctx, off, p, 0)
}

func (f *crashFile) BlockStatus(ctx context.Context, off, n int64) (blockdev.BlockStatus, error) {
	return blockdev.BlockStatus{Length: n, Flags: blockdev.StatusData}, nil
}

func (f *crashFile) Length(ctx context.Context) (int64, error) {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	return int64(len(f.s.cur)), nil
}

func (f *crashFile) Info(ctx context.Context) (blockdev.DriverInfo, error) {
	return blockdev.DriverInfo{}, blockdev.ErrNotSupported
}

// checkCrashed runs qemu-img check on a crashed image: corruption fails
// the test, leaks are what a crash may leave.
func checkCrashed(t *testing.T, img, what string) {
	t.Helper()
	cmd := exec.Command(tool(t, "qemu-img"), "check", "-f", "qcow2", "--output=json", img)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var r map[string]any
	if jerr := json.Unmarshal(out, &r); jerr != nil {
		t.Fatalf("%s: qemu-img check: %v\n%s%s", what, err, stderr.String(), out)
	}
	for _, k := range []string{"corruptions", "check-errors"} {
		if v, ok := r[k]; ok && v != float64(0) {
			t.Fatalf("%s: qemu-img check: %s = %v\n%s%s", what, k, v, stderr.String(), out)
		}
	}
	// Exit status 3 means leaks only; anything else is an error.
	if ee, ok := err.(*exec.ExitError); err != nil && (!ok || ee.ExitCode() != 3) {
		t.Fatalf("%s: qemu-img check: %v\n%s%s", what, err, stderr.String(), out)
	}
}

// TestCrashConsistency runs random guest I/O on a qcow2 image with small
// clusters (many L2 tables and refcount blocks, small caches that must
// evict), crashes it at random points, and checks every crashed state.
func TestCrashConsistency(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []string
		seed uint64
	}{
		{"4k clusters", []string{"-o", "cluster_size=4096"}, 1},
		{"4k clusters, 1-bit refcounts", []string{"-o", "cluster_size=4096,refcount_bits=1"}, 2},
		{"4k clusters, 64-bit refcounts", []string{"-o", "cluster_size=4096,refcount_bits=64"}, 5},
		{"64k clusters", nil, 3},
		{"4k clusters, compat 0.10", []string{"-o", "cluster_size=4096,compat=0.10"}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			crashRun(t, tc.opts, tc.seed)
		})
	}
}

func crashRun(t *testing.T, opts []string, seed uint64) {
	const size = 8 << 20
	dir := t.TempDir()
	base := qemuImgCreate(t, dir, "base.qcow2", fmt.Sprint(size), opts...)
	b, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	s := &crashState{cur: append([]byte(nil), b...), base: append([]byte(nil), b...)}
	id := t.Name()
	crashFiles.Store(id, s)
	defer crashFiles.Delete(id)
	h, err := openOpts(t, blockdev.Options{
		"driver": "qcow2", "l2-cache-size": 2 * 4096, "refcount-cache-size": 4 * 4096,
		"file": map[string]any{"driver": "crashsim", "id": id},
	}, drivertest.RootPerm)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 7))
	guest := make([]byte, size)   // what the guest wrote
	flushed := make([]byte, size) // the guest's content at its last flush
	const grain = 512
	since := make([]bool, size/grain) // grains written since the last flush
	mark := func(off, n int64) {
		for g := off / grain; g < (off+n+grain-1)/grain; g++ {
			since[g] = true
		}
	}
	crashes, checked := 0, 0
	for step := range 300 {
		off := rng.Int64N(size/grain) * grain
		n := min(int64(1+rng.IntN(64))*grain*int64(1+rng.IntN(4)), size-off)
		switch r := rng.IntN(20); {
		case r < 12:
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(step*7 + i/grain + 1)
			}
			if err := h.c.Write(ctx, off, p, 0); err != nil {
				t.Fatalf("step %d: write: %v", step, err)
			}
			copy(guest[off:], p)
		case r < 15:
			if err := h.c.WriteZeroes(ctx, off, n, blockdev.ReqFlags(rng.IntN(2))*blockdev.ReqMayUnmap); err != nil {
				t.Fatalf("step %d: write zeroes: %v", step, err)
			}
			clear(guest[off : off+n])
		case r < 17:
			// Discarded data may read either way; drop it from the model
			// by zeroing through write-zeroes afterwards.
			if err := h.c.Discard(ctx, off, n); err != nil {
				t.Fatalf("step %d: discard: %v", step, err)
			}
			if err := h.c.WriteZeroes(ctx, off, n, 0); err != nil {
				t.Fatalf("step %d: write zeroes: %v", step, err)
			}
			clear(guest[off : off+n])
		default:
			if err := h.c.Flush(ctx); err != nil {
				t.Fatalf("step %d: flush: %v", step, err)
			}
			copy(flushed, guest)
			clear(since)
			continue
		}
		mark(off, n)
		if rng.IntN(6) != 0 {
			continue
		}
		// A crash now, checked for consistency and for the data of the
		// last guest flush; and, checked for consistency, one just before
		// each of up to three flushes of the image file since the
		// previous check (inside some request, with the most writes
		// unflushed) and one at a random point.
		now := s.now()
		fl := s.flushesIn(checked, now)
		rng.Shuffle(len(fl), func(i, j int) { fl[i], fl[j] = fl[j], fl[i] })
		points := append([]int{now}, fl[:min(len(fl), 3)]...)
		points = append(points, checked+rng.IntN(now-checked+1))
		for k, at := range points {
			crashes++
			what := fmt.Sprintf("step %d, crash before file op %d of %d", step, at, now)
			img := filepath.Join(dir, fmt.Sprintf("crash-%d-%d.qcow2", step, k))
			if err := os.WriteFile(img, s.crashAt(at, rng), 0o644); err != nil {
				t.Fatal(err)
			}
			checkCrashed(t, img, what)
			if k == 0 {
				got := rawContent(t, img)
				for g := range since {
					if !since[g] {
						if o := g * grain; string(got[o:o+grain]) != string(flushed[o:o+grain]) {
							t.Fatalf("%s: flushed data at %d lost", what, o)
						}
					}
				}
			}
			os.Remove(img)
		}
		checked = now
		s.settle(checked)
	}
	if crashes == 0 {
		t.Fatal("no crash simulated")
	}
	// A clean close leaves a clean image with the guest's data.
	h.close(t)
	img := filepath.Join(dir, "closed.qcow2")
	s.mu.Lock()
	err = os.WriteFile(img, s.cur, 0o644)
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	checkClean(t, img)
	equalBytes(t, "content after close", rawContent(t, img), guest)
}
