package blockdev_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/blockqmp"
	"github.com/qbmond/qbmond/drivers/drivertest"
	"github.com/qbmond/qbmond/qapi"
)

// testcow is a copy-on-write format for the tests: it allocates 4 KiB
// blocks in memory (data kept in its file child), reads unallocated blocks
// from its backing node, and names a backing file through its
// "x-backing-file" / "x-backing-fmt" options as a header would.
type testcow struct {
	file, backing *blockdev.Child
	name, format  string
	mu            sync.Mutex
	alloc         map[int64]bool
}

const cowBlock = 4096

func init() {
	blockdev.RegisterDriver("testcow", func() blockdev.Driver { return &testcow{alloc: map[int64]bool{}} })
}

func (d *testcow) Open(ctx context.Context, oc *blockdev.OpenContext) (err error) {
	if d.file, err = oc.OpenChild(ctx, "file", blockdev.RoleImage); err != nil {
		return err
	}
	o := oc.Options()
	d.name, _, _ = o.String("x-backing-file")
	d.format, _, _ = o.String("x-backing-fmt")
	d.backing, err = oc.OpenBacking(ctx, d.name, d.format)
	return err
}
func (d *testcow) Close() error { return nil }
func (d *testcow) Read(ctx context.Context, off int64, p []byte) error {
	for len(p) > 0 {
		n := min(int64(len(p)), cowBlock-off%cowBlock)
		d.mu.Lock()
		mine := d.alloc[off/cowBlock]
		d.mu.Unlock()
		switch {
		case mine:
			if err := d.file.Read(ctx, off, p[:n]); err != nil {
				return err
			}
		case d.backing != nil && off < d.backing.Length():
			if err := d.backing.Read(ctx, off, p[:n]); err != nil {
				return err
			}
		default:
			clear(p[:n])
		}
		off, p = off+n, p[n:]
	}
	return nil
}
func (d *testcow) Write(ctx context.Context, off int64, p []byte, f blockdev.ReqFlags) error {
	if off%cowBlock != 0 || len(p)%cowBlock != 0 {
		return blockdev.ErrNotSupported
	}
	if err := d.file.Write(ctx, off, p, f); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for b := off / cowBlock; b < (off+int64(len(p)))/cowBlock; b++ {
		d.alloc[b] = true
	}
	return nil
}
func (d *testcow) WriteZeroes(ctx context.Context, off, n int64, f blockdev.ReqFlags) error {
	return d.Write(ctx, off, make([]byte, n), f)
}
func (d *testcow) Discard(ctx context.Context, off, n int64) error { return nil }
func (d *testcow) Flush(ctx context.Context) error                 { return d.file.Flush(ctx) }
func (d *testcow) BlockStatus(ctx context.Context, off, n int64) (blockdev.BlockStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	mine := d.alloc[off/cowBlock]
	l := cowBlock - off%cowBlock
	for l < n && d.alloc[(off+l)/cowBlock] == mine {
		l += cowBlock
	}
	if mine {
		return blockdev.BlockStatus{Flags: blockdev.StatusData | blockdev.StatusAllocated, Length: min(l, n)}, nil
	}
	return blockdev.BlockStatus{Length: min(l, n)}, nil
}
func (d *testcow) Length(ctx context.Context) (int64, error) { return d.file.Length(), nil }
func (d *testcow) Info(ctx context.Context) (blockdev.DriverInfo, error) {
	return blockdev.DriverInfo{ClusterSize: cowBlock}, nil
}
func (d *testcow) BackingFile() (string, string) { return d.name, d.format }

func TestBackingStatusAbove(t *testing.T) {
	ctx := context.Background()
	g := newGraph(t)
	// base: 16 KiB of data then 16 KiB; top: 64 KiB over it.
	if err := add(g, blockdev.Options{"driver": "testmem", "node-name": "basefile", "size": int64(32 << 10), "align": int64(1)}); err != nil {
		t.Fatal(err)
	}
	if err := add(g, blockdev.Options{"driver": "testcow", "node-name": "base",
		"file": "basefile", "backing": nil}); err != nil {
		t.Fatal(err)
	}
	if err := add(g, blockdev.Options{"driver": "testcow", "node-name": "top",
		"file":    map[string]any{"driver": "testmem", "size": int64(64 << 10), "align": int64(1)},
		"backing": "base"}); err != nil {
		t.Fatal(err)
	}
	lk, unlock := drivertest.Lock(g)
	base, top := lk.Lookup("base"), lk.Lookup("top")
	bc, err := lk.AttachRoot(base, "test", blockdev.PermConsistentRead|blockdev.PermWrite, blockdev.PermAll)
	if err != nil {
		unlock()
		t.Fatal(err)
	}
	tc, err := lk.AttachRoot(top, "test", blockdev.PermConsistentRead|blockdev.PermWrite, blockdev.PermAll)
	unlock()
	if err != nil {
		t.Fatalf("writer on top while base is its backing: %v", err)
	}
	if err := bc.Write(ctx, 0, make([]byte, 8<<10), 0); err != nil {
		t.Fatal(err)
	}
	if err := tc.Write(ctx, 4<<10, make([]byte, 4<<10), 0); err != nil {
		t.Fatal(err)
	}
	type want struct {
		off, len int64
		flags    blockdev.StatusFlags
		depth    int
	}
	for _, w := range []want{
		{0, 4 << 10, blockdev.StatusData, 2},
		{4 << 10, 4 << 10, blockdev.StatusData | blockdev.StatusAllocated, 1},
		{8 << 10, 24 << 10, blockdev.StatusZero, 0},  // in base, allocated nowhere
		{32 << 10, 32 << 10, blockdev.StatusZero, 2}, // past base's end: base's zeroes
	} {
		st, depth, err := top.BlockStatusAbove(ctx, tc, w.off, 64<<10-w.off)
		if err != nil || st.Flags != w.flags || st.Length != w.len || depth != w.depth {
			t.Errorf("at %d: %+v depth %d %v, want %+v", w.off, st, depth, err, w)
		}
	}
	lk, unlock = drivertest.Lock(g)
	info, ierr := blockqmp.BlockDeviceInfo(ctx, lk, top, false)
	lk.DetachRoot(bc)
	lk.DetachRoot(tc)
	unlock()
	if err := del(g, "base"); err == nil || err.Error() != "Node 'base' is busy: node is used as backing hd of 'top'" {
		t.Errorf("deleting a backing node: %v", err)
	}
	if ierr != nil || info.BackingFileDepth != 1 || info.Image.BackingImage == nil || qapi.Deref(info.BackingFile) != base.Filename() {
		t.Errorf("info: depth %d backing %q image %+v (%v)", info.BackingFileDepth, qapi.Deref(info.BackingFile), info.Image.BackingImage, ierr)
	}
}

// A backing file the image names is opened read-only relative to the
// image's directory; a missing one fails with QEMU's message.
func TestBackingFromHeader(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"base.img", "top.img", "bad.img"} {
		if err := os.WriteFile(filepath.Join(dir, f), make([]byte, 64<<10), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	g := newGraph(t)
	err := add(g, blockdev.Options{"driver": "testcow", "node-name": "top",
		"file":           map[string]any{"driver": "file", "filename": filepath.Join(dir, "top.img")},
		"x-backing-file": "base.img"})
	if err != nil {
		t.Fatal(err)
	}
	lk, unlock := drivertest.Lock(g)
	top := lk.Lookup("top")
	info, ierr := blockqmp.BlockDeviceInfo(context.Background(), lk, top, false)
	var backingRO bool
	for _, c := range top.Children() {
		if c.Name() == "backing" {
			backingRO = c.Node().ReadOnly()
			if c.Node().DriverName() != "raw" {
				t.Errorf("probed format %q, want raw", c.Node().DriverName())
			}
		}
	}
	unlock()
	if !backingRO {
		t.Error("backing node not read-only")
	}
	if ierr != nil || qapi.Deref(info.Image.BackingFilename) != "base.img" ||
		qapi.Deref(info.Image.FullBackingFilename) != filepath.Join(dir, "base.img") ||
		qapi.Deref(info.BackingFile) != filepath.Join(dir, "base.img") {
		t.Errorf("backing names: %q %q %q (%v)", qapi.Deref(info.Image.BackingFilename),
			qapi.Deref(info.Image.FullBackingFilename), qapi.Deref(info.BackingFile), ierr)
	}
	err = add(g, blockdev.Options{"driver": "testcow", "node-name": "bad",
		"file":           map[string]any{"driver": "file", "filename": filepath.Join(dir, "bad.img")},
		"x-backing-file": "missing.img", "x-backing-fmt": "raw", "read-only": true})
	want := "Could not open backing file: Could not open '" + filepath.Join(dir, "missing.img") + "': No such file or directory"
	if err == nil || err.Error() != want {
		t.Fatalf("missing backing: %v", err)
	}
	// top, its file, the raw backing node and its file: nothing of the
	// failed open is left.
	if got := names(g); len(got) != 4 {
		t.Errorf("nodes after a failed open: %v", got)
	}
}
