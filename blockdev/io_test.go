package blockdev_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/blockqmp"
	"github.com/qbmond/qbmond/drivers/drivertest"
	"github.com/qbmond/qbmond/qapi"
)

// memdrv is an in-memory protocol driver with a request alignment. It
// records requests that break the alignment and the last zero-write flags,
// and can be told to fail requests. Each block has its own lock, so
// concurrent requests on different blocks really run concurrently and a
// read-modify-write that is not serialised loses data.
type memdrv struct {
	align  int64
	data   []byte
	locks  []sync.Mutex
	misal  atomic.Int64 // requests that were not aligned
	writes atomic.Int64 // driver Write calls
	zeroes atomic.Int64 // driver WriteZeroes calls
	zflags atomic.Uint32
	fail   atomic.Bool
}

func init() {
	blockdev.RegisterDriver("testmem", func() blockdev.Driver { return new(memdrv) })
}

var errInjected = errors.New("injected failure")

func (d *memdrv) Open(ctx context.Context, oc *blockdev.OpenContext) error {
	o := oc.Options()
	size, _, err := o.Int("size")
	if err != nil {
		return err
	}
	align, ok, err := o.Int("align")
	if err != nil {
		return err
	}
	if !ok {
		align = 512
	}
	d.align, d.data = align, make([]byte, size)
	d.locks = make([]sync.Mutex, (size+align-1)/align)
	return nil
}

func (d *memdrv) check(off, n int64) error {
	if off%d.align != 0 || n%d.align != 0 {
		d.misal.Add(1)
	}
	if d.fail.Load() {
		return errInjected
	}
	return nil
}

// each runs f on every block of [off, off+n) under the block's lock.
func (d *memdrv) each(off, n int64, f func(blk []byte, at int64)) {
	for at := off; at < off+n; {
		b := at / d.align
		end := min((b+1)*d.align, off+n)
		d.locks[b].Lock()
		f(d.data[at:end], at)
		d.locks[b].Unlock()
		at = end
	}
}

func (d *memdrv) Close() error { return nil }
func (d *memdrv) Read(ctx context.Context, off int64, p []byte) error {
	if err := d.check(off, int64(len(p))); err != nil {
		return err
	}
	d.each(off, int64(len(p)), func(blk []byte, at int64) { copy(p[at-off:], blk) })
	runtime.Gosched() // widen the window between a read and a write back
	return nil
}
func (d *memdrv) Write(ctx context.Context, off int64, p []byte, f blockdev.ReqFlags) error {
	if err := d.check(off, int64(len(p))); err != nil {
		return err
	}
	d.writes.Add(1)
	d.each(off, int64(len(p)), func(blk []byte, at int64) { copy(blk, p[at-off:]) })
	return nil
}
func (d *memdrv) WriteZeroes(ctx context.Context, off, n int64, f blockdev.ReqFlags) error {
	if err := d.check(off, n); err != nil {
		return err
	}
	d.zeroes.Add(1)
	d.zflags.Store(uint32(f))
	d.each(off, n, func(blk []byte, _ int64) { clear(blk) })
	return nil
}
func (d *memdrv) Discard(ctx context.Context, off, n int64) error { return nil }
func (d *memdrv) Flush(ctx context.Context) error {
	if d.fail.Load() {
		return errInjected
	}
	return nil
}
func (d *memdrv) BlockStatus(ctx context.Context, off, n int64) (blockdev.BlockStatus, error) {
	return blockdev.BlockStatus{Flags: blockdev.StatusData, Length: n}, nil
}
func (d *memdrv) Length(ctx context.Context) (int64, error) { return int64(len(d.data)), nil }
func (d *memdrv) Info(ctx context.Context) (blockdev.DriverInfo, error) {
	return blockdev.DriverInfo{}, blockdev.ErrNotSupported
}
func (d *memdrv) RequestAlignment() int64 { return d.align }
func (d *memdrv) Protocol()               {}

// snapshot copies the driver's data.
func (d *memdrv) snapshot() []byte {
	out := make([]byte, len(d.data))
	d.each(0, int64(len(d.data)), func(blk []byte, at int64) { copy(out[at:], blk) })
	return out
}

const rw = blockdev.PermConsistentRead | blockdev.PermWrite

// openRoot adds a node from opts and attaches a root user holding perm.
func openRoot(t *testing.T, g *blockdev.Graph, opts blockdev.Options, perm blockdev.Perm) (*blockdev.Node, *blockdev.Child) {
	t.Helper()
	mustAdd(t, g, opts)
	lk, unlock := drivertest.Lock(g)
	defer unlock()
	n := lk.Lookup(opts["node-name"].(string))
	c, err := lk.AttachRoot(n, "block device 'test'", perm, blockdev.PermAll)
	if err != nil {
		t.Fatal(err)
	}
	return n, c
}

func memNode(t *testing.T, extra blockdev.Options) (*blockdev.Node, *blockdev.Child, *memdrv) {
	t.Helper()
	o := blockdev.Options{"driver": "testmem", "node-name": "mem", "size": int64(256 << 10), "align": int64(512)}
	for k, v := range extra {
		o[k] = v
	}
	n, c := openRoot(t, newGraph(t), o, rw)
	return n, c, n.Driver().(*memdrv)
}

func fill(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*13+i/509) | 1 // never zero: detect-zeroes stays out
	}
	return p
}

func TestUnalignedIOAgainstModel(t *testing.T) {
	for _, align := range []int64{512, 4096} {
		t.Run(fmt.Sprint(align), func(t *testing.T) {
			n, c, d := memNode(t, blockdev.Options{"align": align})
			if got := n.RequestAlignment(); got != align {
				t.Fatalf("RequestAlignment = %d, want %d", got, align)
			}
			ctx := context.Background()
			size := int(n.Length())
			model := make([]byte, size)
			rng := rand.New(rand.NewPCG(1, uint64(align)))
			for i := range 400 {
				off := rng.IntN(size - 1)
				l := 1 + rng.IntN(min(size-off, 3*int(align))-1+1)
				switch i % 3 {
				case 0:
					p := fill(l, byte(i))
					if err := c.Write(ctx, int64(off), p, 0); err != nil {
						t.Fatal(err)
					}
					copy(model[off:], p)
				case 1:
					if err := c.WriteZeroes(ctx, int64(off), int64(l), 0); err != nil {
						t.Fatal(err)
					}
					clear(model[off : off+l])
				case 2:
					p := make([]byte, l)
					if err := c.Read(ctx, int64(off), p); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(p, model[off:off+l]) {
						t.Fatalf("read %d+%d differs from what was written", off, l)
					}
				}
			}
			if !bytes.Equal(d.snapshot(), model) {
				t.Fatal("the node's content differs from the model")
			}
			if m := d.misal.Load(); m != 0 {
				t.Fatalf("the driver got %d unaligned requests", m)
			}
		})
	}
}

func TestUnalignedZeroesNoFallback(t *testing.T) {
	_, c, d := memNode(t, nil)
	ctx := context.Background()
	if err := c.WriteZeroes(ctx, 100, 1000, blockdev.ReqNoFallback); !errors.Is(err, blockdev.ErrNotSupported) {
		t.Fatalf("unaligned no-fallback write-zeroes: %v, want ErrNotSupported", err)
	}
	if err := c.WriteZeroes(ctx, 512, 1024, blockdev.ReqNoFallback); err != nil {
		t.Fatal(err)
	}
	if d.writes.Load() != 0 || d.zeroes.Load() != 1 {
		t.Fatalf("writes %d, write-zeroes %d; want 0 and 1", d.writes.Load(), d.zeroes.Load())
	}
}

// Writers own distinct unaligned segments that share blocks: every
// partial block is a read-modify-write racing with the neighbours'. Without
// serialisation some segment ends up with stale data.
func TestConcurrentRMWLosesNothing(t *testing.T) {
	_, c, d := memNode(t, nil)
	ctx := context.Background()
	const writers, seg, rounds = 16, 100, 60 // segments of 100 bytes straddle 512-byte blocks
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for r := range rounds {
				p := bytes.Repeat([]byte{byte(w*rounds + r + 1)}, seg)
				for k := range 8 { // the writer's segment in 8 regions
					off := int64(k*writers*seg + w*seg)
					if err := c.Write(ctx, off, p, 0); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	got := d.snapshot()
	for k := range 8 {
		for w := range writers {
			off := k*writers*seg + w*seg
			want := bytes.Repeat([]byte{byte(w*rounds + rounds)}, seg)
			if !bytes.Equal(got[off:off+seg], want) {
				t.Fatalf("writer %d's segment at %d lost its last write: % x...", w, off, got[off:off+8])
			}
		}
	}
}

// Writers write the same unaligned range, spanning several blocks, with
// distinct patterns: overlapping serialising requests run one at a time,
// so every block of the range ends up from one writer, the same one.
func TestConcurrentOverlappingWritesAreAtomic(t *testing.T) {
	_, c, d := memNode(t, nil)
	ctx := context.Background()
	const off, l = 300, 5*512 + 111
	var wg sync.WaitGroup
	for w := range 12 {
		wg.Go(func() {
			for r := range 40 {
				var err error
				if r%5 == 4 && w%2 == 0 {
					err = c.WriteZeroes(ctx, off, l, 0)
				} else {
					err = c.Write(ctx, off, bytes.Repeat([]byte{byte(w + 1)}, l), 0)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	got := d.snapshot()
	r := got[off : off+l]
	if !bytes.Equal(r, bytes.Repeat(r[:1], l)) {
		t.Fatalf("the range mixes writers: first bytes of each block %v", []byte{r[0], r[212], r[724], r[1236], r[1748], r[2260], r[l-1]})
	}
	if !bytes.Equal(got[:off], make([]byte, off)) || !bytes.Equal(got[off+l:], make([]byte, len(got)-off-l)) {
		t.Fatal("bytes outside the range changed")
	}
}

func TestDetectZeroes(t *testing.T) {
	for _, tc := range []struct {
		opts             blockdev.Options
		zeroes, mayUnmap bool
	}{
		{blockdev.Options{}, false, false},
		{blockdev.Options{"detect-zeroes": "on"}, true, false},
		{blockdev.Options{"detect-zeroes": "on", "discard": "unmap"}, true, false},
		{blockdev.Options{"detect-zeroes": "unmap", "discard": "unmap"}, true, true},
	} {
		t.Run(fmt.Sprint(tc.opts), func(t *testing.T) {
			_, c, d := memNode(t, tc.opts)
			if err := c.Write(context.Background(), 0, make([]byte, 4096), 0); err != nil {
				t.Fatal(err)
			}
			if got := d.zeroes.Load() == 1 && d.writes.Load() == 0; got != tc.zeroes {
				t.Fatalf("write-zeroes %d, writes %d", d.zeroes.Load(), d.writes.Load())
			}
			if got := blockdev.ReqFlags(d.zflags.Load())&blockdev.ReqMayUnmap != 0; got != tc.mayUnmap {
				t.Fatalf("may-unmap %v, want %v", got, tc.mayUnmap)
			}
			// Non-zero data is written as data.
			before := d.writes.Load()
			if err := c.Write(context.Background(), 0, fill(512, 9), 0); err != nil {
				t.Fatal(err)
			}
			if d.writes.Load()-before != 1 {
				t.Fatalf("a data write reached the driver %d times", d.writes.Load()-before)
			}
		})
	}
}

func TestStatsCountRootRequests(t *testing.T) {
	g := newGraph(t)
	raw, c := openRoot(t, g, blockdev.Options{"driver": "raw", "node-name": "disk", "discard": "unmap",
		"file": map[string]any{"driver": "testmem", "node-name": "mem", "size": int64(1 << 20), "align": int64(512)}}, rw)
	lk, unlock := drivertest.Lock(g)
	mem := lk.Lookup("mem")
	unlock()
	d := mem.Driver().(*memdrv)
	ctx := context.Background()

	if s := blockqmp.NodeStats(raw); s.IdleTimeNs != nil || s.TimedStats == nil {
		t.Fatalf("fresh stats: idle %v, timed_stats %v", s.IdleTimeNs, s.TimedStats)
	}
	mustOK := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mustOK(c.Write(ctx, 100, fill(1000, 1), 0))
	mustOK(c.Write(ctx, 8192, fill(4096, 2), 0))
	mustOK(c.WriteZeroes(ctx, 65536, 512, 0))
	mustOK(c.Read(ctx, 0, make([]byte, 300)))
	mustOK(c.Flush(ctx))
	mustOK(c.Discard(ctx, 0, 4096))
	if _, err := c.BlockStatus(ctx, 0, 512); err != nil {
		t.Fatal(err)
	}
	// Invalid: past the end; read-only user writing.
	if err := c.Read(ctx, 1<<20, make([]byte, 1)); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("read past the end: %v", err)
	}
	if err := c.Discard(ctx, 1<<20-512, 1024); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("discard past the end: %v", err)
	}
	// Failed: the driver errs.
	d.fail.Store(true)
	if err := c.Write(ctx, 0, fill(512, 3), 0); !errors.Is(err, errInjected) {
		t.Fatalf("failing write: %v", err)
	}
	if err := c.Flush(ctx); !errors.Is(err, errInjected) {
		t.Fatalf("failing flush: %v", err)
	}
	d.fail.Store(false)

	s := blockqmp.NodeStats(raw)
	if s.IdleTimeNs == nil || *s.IdleTimeNs < 0 {
		t.Fatalf("idle_time_ns %v after I/O", s.IdleTimeNs)
	}
	if s.RdTotalTimeNs <= 0 || s.WrTotalTimeNs <= 0 {
		t.Fatalf("total times rd %d wr %d", s.RdTotalTimeNs, s.WrTotalTimeNs)
	}
	s.IdleTimeNs, s.RdTotalTimeNs, s.WrTotalTimeNs, s.FlushTotalTimeNs, s.UnmapTotalTimeNs = nil, 0, 0, 0, 0
	want := qapi.BlockDeviceStats{
		RdBytes: 300, WrBytes: 1000 + 4096 + 512, UnmapBytes: 4096,
		RdOperations: 1, WrOperations: 3, FlushOperations: 1, UnmapOperations: 1,
		WrHighestOffset:    65536 + 512,
		FailedWrOperations: 1, FailedFlushOperations: 1,
		InvalidRdOperations: 1, InvalidUnmapOperations: 1,
		TimedStats: []qapi.BlockDeviceTimedStats{},
	}
	if fmt.Sprintf("%+v", s) != fmt.Sprintf("%+v", want) {
		t.Fatalf("stats\n got %+v\nwant %+v", s, want)
	}
	// The child sees the parent's requests, uncounted, but tracks its
	// highest write (aligned: what the driver wrote) as QEMU's nodes do.
	ms := blockqmp.NodeStats(mem)
	if ms.WrOperations != 0 || ms.RdOperations != 0 || ms.IdleTimeNs != nil || ms.WrHighestOffset != 65536+512 {
		t.Fatalf("child stats %+v", ms)
	}
}

func TestStatsReadOnlyUserIsInvalid(t *testing.T) {
	n, c := openRoot(t, newGraph(t), blockdev.Options{"driver": "testmem", "node-name": "mem",
		"size": int64(1 << 20), "read-only": true}, blockdev.PermConsistentRead)
	if err := c.Write(context.Background(), 0, fill(512, 1), 0); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Fatalf("write to a read-only node: %v", err)
	}
	if s := blockqmp.NodeStats(n); s.InvalidWrOperations != 1 || s.WrOperations != 0 || s.IdleTimeNs != nil {
		t.Fatalf("stats %+v", s)
	}
}

// query-blockstats against qemu-storage-daemon 7.2, for a raw node over an
// implicit file node and a null-co node (captured with /work/helpers/qsd.sh).
const qsdZeroStats = `{"unmap_operations": 0, "unmap_merged": 0, "flush_total_time_ns": 0, "wr_highest_offset": 0, "wr_total_time_ns": 0, "failed_wr_operations": 0, "failed_rd_operations": 0, "wr_merged": 0, "wr_bytes": 0, "timed_stats": [], "failed_unmap_operations": 0, "failed_flush_operations": 0, "account_invalid": false, "rd_total_time_ns": 0, "invalid_unmap_operations": 0, "flush_operations": 0, "wr_operations": 0, "unmap_bytes": 0, "rd_merged": 0, "rd_bytes": 0, "unmap_total_time_ns": 0, "invalid_flush_operations": 0, "account_failed": false, "rd_operations": 0, "invalid_wr_operations": 0, "invalid_rd_operations": 0}`

func TestQueryBlockStatsLikeQSD(t *testing.T) {
	d, g := newDispatcher(t)
	img := drivertest.Image(t, 1<<20)
	mustExec(t, d, "blockdev-add", fmt.Sprintf(`{"driver":"raw","node-name":"disk","file":{"driver":"file","filename":%q}}`, img))
	mustExec(t, d, "blockdev-add", `{"driver":"null-co","node-name":"nul"}`)
	sameJSON(t, mustExec(t, d, "query-blockstats", ""), img, `[]`)
	sameJSON(t, mustExec(t, d, "query-blockstats", `{"query-nodes":false}`), img, `[]`)
	fileEntry := `{"stats": ` + qsdZeroStats + `, "node-name": "#block074", "driver-specific": {"discard-bytes-ok": 0, "discard-nb-ok": 0, "driver": "file", "discard-nb-failed": 0}}`
	sameJSON(t, mustExec(t, d, "query-blockstats", `{"query-nodes":true}`), img,
		`[`+fileEntry+`, {"parent": `+fileEntry+`, "stats": `+qsdZeroStats+`, "node-name": "disk"}, {"stats": `+qsdZeroStats+`, "node-name": "nul"}]`)

	// After an export wrote 1000 bytes at 100, read 4 KiB, flushed and
	// discarded 4 KiB (discard=ignore), QSD showed every counter zero but
	// wr_highest_offset 1100 on both nodes. qbmond counts the root user's
	// requests on the node it uses, on purpose; the file node below, which
	// only its parent uses, matches QSD exactly.
	lk, unlock := drivertest.Lock(g)
	c, err := lk.AttachRoot(lk.Lookup("disk"), "export 'e0'", rw, blockdev.PermAll)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, err := range []error{
		c.Write(ctx, 100, fill(1000, 7), 0), c.Read(ctx, 0, make([]byte, 4096)), c.Flush(ctx), c.Discard(ctx, 0, 4096),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	hi := `"wr_highest_offset": 1100`
	fileAfter := bytes.ReplaceAll([]byte(fileEntry), []byte(`"wr_highest_offset": 0`), []byte(hi))
	got := mustExec(t, d, "query-blockstats", `{"query-nodes":true}`).([]any)
	sameJSON(t, got[0], img, string(fileAfter))
	disk := got[1].(map[string]any)
	sameJSON(t, disk["parent"], img, string(fileAfter))
	st := disk["stats"].(map[string]any)
	for k, v := range map[string]string{"wr_highest_offset": "1100", "wr_bytes": "1000", "wr_operations": "1",
		"rd_bytes": "4096", "rd_operations": "1", "flush_operations": "1", "unmap_operations": "1", "unmap_bytes": "4096"} {
		if fmt.Sprint(st[k]) != v {
			t.Errorf("disk %s = %v, want %s", k, st[k], v)
		}
	}
	if _, ok := st["idle_time_ns"]; !ok {
		t.Error("idle_time_ns missing after I/O")
	}
}

func TestFileDirectUnalignedWrites(t *testing.T) {
	img := drivertest.Image(t, 1<<20)
	if !directOK(img) {
		t.Skip("the file system has no O_DIRECT")
	}
	g := newGraph(t)
	n, c := openRoot(t, g, blockdev.Options{"driver": "file", "node-name": "f", "filename": img,
		"cache": map[string]any{"direct": true}}, rw)
	if n.RequestAlignment() < 512 {
		t.Fatalf("O_DIRECT alignment %d", n.RequestAlignment())
	}
	ctx := context.Background()
	model := make([]byte, 1<<20)
	var wg sync.WaitGroup
	for w := range 8 {
		p := fill(777, byte(w*16))
		off := 123 + w*777 // adjacent unaligned segments sharing blocks
		copy(model[off:], p)
		wg.Go(func() {
			for range 20 {
				if err := c.Write(ctx, int64(off), p, 0); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("the file differs from what was written")
	}
	back := make([]byte, 5000)
	if err := c.Read(ctx, 99, back); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, model[99:5099]) {
		t.Fatal("unaligned read differs")
	}
}
