package qbm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
	_ "github.com/qbmond/qbmond/drivers/file"
	"github.com/qbmond/qbmond/drivers/qbm"
	_ "github.com/qbmond/qbmond/drivers/qcow2"
	_ "github.com/qbmond/qbmond/drivers/raw"
)

var ctx = context.Background()

// create runs our blockdev-create for qbm with the descriptor at
// dir/name.qbm and returns the descriptor's path.
func create(t testing.TB, dir string, opts blockdev.Options) string {
	t.Helper()
	p := filepath.Join(dir, "disk.qbm")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	g := blockdev.NewGraph(zerolog.Nop())
	defer g.Close()
	o := opts.Clone()
	o["file"] = map[string]any{"driver": "file", "filename": p}
	if err := g.Create(ctx, "qbm", o, "job 'test'"); err != nil {
		t.Fatalf("create %v: %v", opts, err)
	}
	return p
}

func qbmOpts(desc string) blockdev.Options {
	return blockdev.Options{"driver": "qbm", "file": map[string]any{"driver": "file", "filename": desc}}
}

// rawImage writes a raw image of the given content.
func rawImage(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*13+i/509)
	}
	return p
}

type handle struct {
	g *blockdev.Graph
	n *blockdev.Node
	c *blockdev.Child
}

func openNode(t testing.TB, o blockdev.Options, perm blockdev.Perm) (*handle, error) {
	t.Helper()
	g := blockdev.NewGraph(zerolog.Nop())
	o = o.Clone()
	if !o.Has("node-name") {
		o["node-name"] = "q"
	}
	lk, unlock := drivertest.Lock(g)
	n, err := lk.Add(ctx, o)
	if err != nil {
		unlock()
		g.Close()
		return nil, err
	}
	c, err := lk.AttachRoot(n, "block device 'test'", perm, blockdev.PermAll)
	unlock()
	if err != nil {
		g.Close()
		return nil, err
	}
	h := &handle{g: g, n: n, c: c}
	t.Cleanup(func() { h.close(t) })
	return h, nil
}

func mustOpen(t testing.TB, o blockdev.Options) *handle {
	t.Helper()
	h, err := openNode(t, o, drivertest.RootPerm)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return h
}

func (h *handle) close(t testing.TB) {
	t.Helper()
	if h.g == nil {
		return
	}
	if err := h.g.Close(); err != nil {
		t.Errorf("closing: %v", err)
	}
	h.g = nil
}

func (h *handle) read(t testing.TB, off, n int64) []byte {
	t.Helper()
	b := make([]byte, n)
	if err := h.c.Read(ctx, off, b); err != nil {
		t.Fatalf("read %d+%d: %v", off, n, err)
	}
	return b
}

func (h *handle) write(t testing.TB, off int64, p []byte) {
	t.Helper()
	if err := h.c.Write(ctx, off, p, 0); err != nil {
		t.Fatalf("write %d+%d: %v", off, len(p), err)
	}
}

func readDesc(t testing.TB, p string) *qbm.Descriptor {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	d, err := qbm.Parse(b)
	if err != nil {
		t.Fatalf("parse %s: %v\n%s", p, err, b)
	}
	return d
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			return qbmOpts(create(t, t.TempDir(), blockdev.Options{"size": int64(4 << 20), "dirty-bitmaps": int64(2)}))
		},
		Stores: true,
	})
}

func TestConformanceAllocation(t *testing.T) {
	for _, g := range []int64{4096, 65536} {
		t.Run(fmt.Sprint(g), func(t *testing.T) {
			drivertest.Run(t, drivertest.Config{
				Options: func(t *testing.T) blockdev.Options {
					dir := t.TempDir()
					rawImage(t, dir, "base.raw", make([]byte, 3<<20))
					return qbmOpts(create(t, dir, blockdev.Options{"size": int64(4 << 20), "granularity": g,
						"backing-file": "base.raw", "backing-fmt": "raw"}))
				},
				Stores: true,
			})
		})
	}
}

// A qbm overlay reads unallocated granules from its backing file, partial
// writes copy the rest of the granule up, and the allocation survives a
// reopen; make-empty shows the backing file again.
func TestAllocationOverlay(t *testing.T) {
	dir := t.TempDir()
	base := pattern(1<<20, 0x40)
	rawImage(t, dir, "base.raw", base)
	desc := create(t, dir, blockdev.Options{"size": int64(2 << 20), "granularity": int64(4096),
		"backing-file": "base.raw", "backing-fmt": "raw"})

	want := append(append([]byte(nil), base...), make([]byte, 1<<20)...)
	h := mustOpen(t, qbmOpts(desc))
	if h.n.RequestAlignment() != 4096 {
		t.Fatalf("alignment %d", h.n.RequestAlignment())
	}
	writes := []struct {
		off int64
		n   int
	}{{100, 10}, {4096, 4096}, {1<<20 - 50, 100}, {1<<20 + 8000, 5000}}
	for i, w := range writes {
		p := pattern(w.n, byte(i+1))
		h.write(t, w.off, p)
		copy(want[w.off:], p)
	}
	if got := h.read(t, 0, 2<<20); !bytes.Equal(got, want) {
		t.Fatal("content differs after writes")
	}
	st, err := h.c.BlockStatus(ctx, 0, 2<<20)
	if err != nil || st.Flags&blockdev.StatusAllocated == 0 || st.Length != 8192 {
		t.Fatalf("status at 0: %+v %v", st, err)
	}
	st, err = h.c.BlockStatus(ctx, 8192, 2<<20-8192)
	if err != nil || st.Flags != 0 || st.Length != 1<<20-4096-8192 {
		t.Fatalf("status at 8192: %+v %v", st, err)
	}
	if name, format := h.n.Driver().(blockdev.BackingFiler).BackingFile(); name != "base.raw" || format != "raw" {
		t.Fatalf("backing file %q %q", name, format)
	}
	h.close(t)

	d := readDesc(t, desc)
	a := d.Allocation()
	if a == nil || a.SHA256 == "" {
		t.Fatalf("allocation entry after close: %+v", a)
	}
	bits, err := os.ReadFile(filepath.Join(dir, a.File))
	if err != nil {
		t.Fatal(err)
	}
	if bits[0] != 0x03 || bits[1] != 0 {
		t.Fatalf("allocation bits %x", bits[:2])
	}

	h = mustOpen(t, qbmOpts(desc))
	if got := h.read(t, 0, 2<<20); !bytes.Equal(got, want) {
		t.Fatal("content differs after reopen")
	}
	if err := h.n.Driver().(interface{ MakeEmpty(context.Context) error }).MakeEmpty(ctx); err != nil {
		t.Fatal(err)
	}
	want = append(append([]byte(nil), base...), make([]byte, 1<<20)...)
	if got := h.read(t, 0, 2<<20); !bytes.Equal(got, want) {
		t.Fatal("content after make-empty is not the backing file's")
	}
	// Growing: the new area reads as zeroes even over a longer backing.
	if err := h.n.Driver().(blockdev.BackingChanger).ChangeBackingFile(ctx, "other.raw", "raw"); err != nil {
		t.Fatal(err)
	}
	if b := readDesc(t, desc).Allocation().Backing; b == nil || b.File != "other.raw" {
		t.Fatalf("backing after change-backing-file: %+v", b)
	}
}

// Growing an overlay whose backing file is longer keeps the new area zero.
func TestTruncateOverLongerBacking(t *testing.T) {
	dir := t.TempDir()
	base := pattern(3<<20, 0x11)
	rawImage(t, dir, "base.raw", base)
	desc := create(t, dir, blockdev.Options{"size": int64(1<<20 + 512), "granularity": int64(65536),
		"backing-file": "base.raw", "backing-fmt": "raw"})
	h := mustOpen(t, qbmOpts(desc))
	g := h.g
	_, unlock := drivertest.Lock(g)
	err := h.c.Truncate(ctx, 2<<20, false)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	if h.n.Length() != 2<<20 {
		t.Fatalf("length %d", h.n.Length())
	}
	want := append(append([]byte(nil), base[:1<<20+512]...), make([]byte, 1<<20-512)...)
	if got := h.read(t, 0, 2<<20); !bytes.Equal(got, want) {
		t.Fatal("content after growing differs")
	}
	h.close(t)
	h = mustOpen(t, qbmOpts(desc))
	if got := h.read(t, 0, 2<<20); !bytes.Equal(got, want) {
		t.Fatal("content after growing and reopening differs")
	}
}

func addBitmap(t testing.TB, h *handle, name string, g uint64) *blockdev.DirtyBitmap {
	t.Helper()
	lk, unlock := drivertest.Lock(h.g)
	defer func() { unlock() }()
	b, err := h.n.AddDirtyBitmap(lk, name, blockdev.BitmapOptions{Granularity: g, Persistent: true})
	if err != nil {
		t.Fatalf("add %s: %v", name, err)
	}
	return b
}

// A persistent bitmap gets a file and an entry, survives a clean close
// with the same bits, and block-dirty-bitmap-remove deletes both.
func TestPersistentBitmap(t *testing.T) {
	dir := t.TempDir()
	desc := create(t, dir, blockdev.Options{"size": int64(8 << 20)})
	h := mustOpen(t, qbmOpts(desc))
	b := addBitmap(t, h, "back up/1", 4096)
	d := readDesc(t, desc)
	e := d.Bitmap("back up/1")
	if e == nil || e.File != "disk-back_up_1.bitmap" || !e.InUse || e.Granularity != 4096 {
		t.Fatalf("entry after add: %+v", e)
	}
	h.write(t, 5000, pattern(10000, 1))
	h.write(t, 3<<20, pattern(1, 2))
	if err := h.c.WriteZeroes(ctx, 7<<20, 65536, 0); err != nil {
		t.Fatal(err)
	}
	sum, count := b.Bits().SHA256(), b.Bits().Count()
	_, unlock := drivertest.Lock(h.g)
	err := b.SetRecording(false)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	if readDesc(t, desc).Bitmap("back up/1").Enabled {
		t.Fatal("disable did not reach the descriptor")
	}
	h.close(t)

	e = readDesc(t, desc).Bitmap("back up/1")
	if e.InUse || e.SHA256 == "" || e.Enabled {
		t.Fatalf("entry after close: %+v", e)
	}
	h = mustOpen(t, qbmOpts(desc))
	b = h.n.DirtyBitmap("back up/1")
	if b == nil || !b.Persistent() || b.Inconsistent() || b.Recording() {
		t.Fatalf("bitmap after reopen: %+v", b)
	}
	if b.Bits().SHA256() != sum || b.Bits().Count() != count || count != 3*4096+4096+65536 {
		t.Fatalf("bits after reopen: count %d (want %d)", b.Bits().Count(), count)
	}
	lk, unlock := drivertest.Lock(h.g)
	err = h.n.RemoveDirtyBitmap(lk, "back up/1")
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	if readDesc(t, desc).Bitmap("back up/1") != nil {
		t.Fatal("entry still there after remove")
	}
	if _, err := os.Stat(filepath.Join(dir, "disk-back_up_1.bitmap")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("bitmap file after remove: %v", err)
	}
}

// copyDir copies the files of a QBM image as a crash would leave them.
func copyDir(t testing.TB, from string) string {
	t.Helper()
	to := t.TempDir()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

// After a crash a bitmap-sync=close bitmap loads inconsistent; a
// bitmap-sync=write one loads with every written granule dirty.
func TestCrash(t *testing.T) {
	for _, mode := range []string{"close", "write"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			desc := create(t, dir, blockdev.Options{"size": int64(8 << 20), "dirty-bitmaps": int64(1)})
			o := qbmOpts(desc)
			o["bitmap-sync"] = mode
			h := mustOpen(t, o)
			b := addBitmap(t, h, "new", 65536)
			h.write(t, 70000, pattern(3, 1))
			h.write(t, 5<<20, pattern(200000, 2))
			if err := h.c.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			h.write(t, 8<<20-1, []byte{9})
			want := b.Bits().SHA256()
			crashed := copyDir(t, dir)
			h.close(t)

			h2 := mustOpen(t, qbmOpts(filepath.Join(crashed, "disk.qbm")))
			for _, name := range []string{"new", "dirty.0"} {
				b2 := h2.n.DirtyBitmap(name)
				if b2 == nil {
					t.Fatalf("%s missing after crash", name)
				}
				if mode == "close" {
					if !b2.Inconsistent() || b2.Recording() {
						t.Fatalf("%s after crash: inconsistent %v", name, b2.Inconsistent())
					}
					continue
				}
				if b2.Inconsistent() || b2.Bits().SHA256() != want {
					t.Fatalf("%s after crash: inconsistent %v, count %d", name, b2.Inconsistent(), b2.Bits().Count())
				}
			}
			h2.close(t)
			if mode == "close" {
				// Inconsistent bitmaps stay so; only removing helps.
				if e := readDesc(t, filepath.Join(crashed, "disk.qbm")).Bitmap("new"); !e.InUse {
					t.Fatal("in-use cleared for an inconsistent bitmap")
				}
			}
			// The clean close saved the original exactly.
			h3 := mustOpen(t, qbmOpts(desc))
			if b3 := h3.n.DirtyBitmap("new"); b3 == nil || b3.Inconsistent() || b3.Bits().SHA256() != want {
				t.Fatal("bitmap after clean close differs")
			}
		})
	}
}

func TestReadOnly(t *testing.T) {
	dir := t.TempDir()
	desc := create(t, dir, blockdev.Options{"size": int64(1 << 20), "dirty-bitmaps": int64(1)})
	before, _ := os.ReadFile(desc)
	o := qbmOpts(desc)
	o["read-only"] = true
	h, err := openNode(t, o, blockdev.PermConsistentRead)
	if err != nil {
		t.Fatal(err)
	}
	if !h.n.Child("image").Node().ReadOnly() {
		t.Fatal("image opened read-write under a read-only node")
	}
	lk, unlock := drivertest.Lock(h.g)
	_, err = h.n.AddDirtyBitmap(lk, "x", blockdev.BitmapOptions{Persistent: true})
	unlock()
	if err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("persistent bitmap on a read-only node: %v", err)
	}
	h.close(t)
	if after, _ := os.ReadFile(desc); !bytes.Equal(before, after) {
		t.Fatal("read-only open changed the descriptor")
	}
}

// Malformed descriptors are refused with the error naming the problem.
func TestMalformed(t *testing.T) {
	dir := t.TempDir()
	rawImage(t, dir, "img.raw", make([]byte, 1<<20))
	rawImage(t, dir, "ok.bitmap", make([]byte, 2))
	rawImage(t, dir, "short.bitmap", make([]byte, 1))
	write := func(name string, v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return rawImage(t, dir, name, b)
	}
	img := map[string]any{"file": "img.raw", "format": "raw"}
	dirty := func(file string, g any) map[string]any {
		return map[string]any{"file": file, "type": "dirty", "granularity-bytes": g}
	}
	desc := func(q map[string]any) map[string]any { return map[string]any{"QBM": q} }
	base := func() map[string]any {
		return map[string]any{"version": 1, "image": img, "bitmaps": map[string]any{"b": dirty("ok.bitmap", 65536)}}
	}
	del := func(keys ...string) map[string]any {
		q := base()
		for _, k := range keys {
			delete(q, k)
		}
		return desc(q)
	}
	with := func(k string, v any) map[string]any {
		q := base()
		q[k] = v
		return desc(q)
	}
	entry := func(drop string, set map[string]any) map[string]any {
		e := dirty("ok.bitmap", 65536)
		delete(e, drop)
		for k, v := range set {
			e[k] = v
		}
		return with("bitmaps", map[string]any{"b": e})
	}
	cases := []struct {
		name string
		desc any
		want string
	}{
		{"no QBM", map[string]any{"qbm": base()}, `Json doesn't have key "QBM"`},
		{"no version", del("version"), `Key "version" not found in QBM descriptor`},
		{"version 2", with("version", 2), "Invalid version of QBM descriptor: 2"},
		{"version string", with("version", "1"), `Invalid version of QBM descriptor: "1"`},
		{"no image", del("image"), `Key "image" not found in QBM descriptor`},
		{"image string", with("image", "img.raw"), `"image" information invalid`},
		{"no image file", with("image", map[string]any{"format": "raw"}), "Image missing 'file' field"},
		{"no image format", with("image", map[string]any{"file": "img.raw"}), "Image missing 'format' field"},
		{"no bitmaps", del("bitmaps"), `"bitmaps" not found`},
		{"bitmaps list", with("bitmaps", []any{}), `"bitmaps" must be an object`},
		{"no file", entry("file", nil), `"file" is missing in bitmap "b"`},
		{"no type", entry("type", nil), `"type" is missing in bitmap "b"`},
		{"no granularity", entry("granularity-bytes", nil), `"granularity-bytes" is missing in bitmap "b"`},
		{"granularity string", entry("", map[string]any{"granularity-bytes": "64k"}), `"granularity-bytes" of bitmap "b" must be an integer`},
		{"granularity 3000", entry("", map[string]any{"granularity-bytes": 3000}), `"granularity-bytes" must be a power of two`},
		{"enabled string", entry("", map[string]any{"enabled": "yes"}), `"enabled" of bitmap "b" must be a boolean`},
		{"protocol", entry("", map[string]any{"file": "nbd:localhost:10809"}), `Protocol file names are not supported in QBM descriptors: "nbd:localhost:10809"`},
		{"too small", entry("", map[string]any{"file": "short.bitmap", "granularity-bytes": 512}),
			`Bitmap "b" file too small (expecting at least 256 bytes but got 1 bytes): ` + filepath.Join(dir, "short.bitmap")},
		{"self image", with("image", map[string]any{"file": "self-image.qbm", "format": "raw"}),
			"QBM descriptor names itself as its image: " + filepath.Join(dir, "self-image.qbm")},
		{"self bitmap", entry("", map[string]any{"file": "self-bitmap.qbm"}),
			`QBM descriptor names itself as the file of bitmap "b": ` + filepath.Join(dir, "self-bitmap.qbm")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := write(strings.ReplaceAll(tc.name, " ", "-")+".qbm", tc.desc)
			_, err := openNode(t, qbmOpts(p), drivertest.RootPerm)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("got %v\nwant %s", err, tc.want)
			}
		})
	}

	// A backing chain that comes back to the first descriptor.
	loop := func(name, backing string) {
		rawImage(t, dir, name+".bitmap", make([]byte, 16))
		write(name+".qbm", desc(map[string]any{"version": 1, "image": img, "bitmaps": map[string]any{
			"allocation": map[string]any{"file": name + ".bitmap", "type": "allocation", "granularity-bytes": 65536,
				"backing": map[string]any{"file": backing, "format": "qbm"}}}}))
	}
	loop("a", "b.qbm")
	loop("b", "a.qbm")
	_, err := openNode(t, qbmOpts(filepath.Join(dir, "a.qbm")), drivertest.RootPerm)
	want := "Could not open backing file: Could not open backing file: QBM descriptor loop: " + filepath.Join(dir, "a.qbm") + " is part of its own image or backing chain"
	if err == nil || err.Error() != want {
		t.Fatalf("backing loop: got %v\nwant %s", err, want)
	}
}

// With bitmap-sync=write, a clear and a merge reach the bitmap files when
// the command returns: a crash right after loses neither.
func TestCrashAfterClearAndMerge(t *testing.T) {
	dir := t.TempDir()
	desc := create(t, dir, blockdev.Options{"size": int64(8 << 20), "dirty-bitmaps": int64(2)})
	o := qbmOpts(desc)
	o["bitmap-sync"] = "write"
	h := mustOpen(t, o)
	b0, b1 := h.n.DirtyBitmap("dirty.0"), h.n.DirtyBitmap("dirty.1")
	h.write(t, 0, pattern(4096, 1))
	lk, unlock := drivertest.Lock(h.g)
	if err := b0.Clear(lk); err != nil {
		unlock()
		t.Fatal(err)
	}
	unlock()
	h.write(t, 1<<20, pattern(4096, 2))
	lk, unlock = drivertest.Lock(h.g)
	err := b0.MergeInto(lk, []*blockdev.DirtyBitmap{b1}) // b1 has both writes
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	lk, unlock = drivertest.Lock(h.g)
	err = b1.Clear(lk)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	want0, want1 := b0.Bits().SHA256(), b1.Bits().SHA256()
	if b0.Bits().Count() != 2*65536 || b1.Bits().Count() != 0 {
		t.Fatalf("counts before the crash: %d %d", b0.Bits().Count(), b1.Bits().Count())
	}
	crashed := copyDir(t, dir)
	h.close(t)
	h2 := mustOpen(t, qbmOpts(filepath.Join(crashed, "disk.qbm")))
	defer h2.close(t)
	if got := h2.n.DirtyBitmap("dirty.0"); got.Inconsistent() || got.Bits().SHA256() != want0 {
		t.Fatalf("merged bitmap after crash: count %d", got.Bits().Count())
	}
	if got := h2.n.DirtyBitmap("dirty.1"); got.Inconsistent() || got.Bits().SHA256() != want1 {
		t.Fatalf("cleared bitmap after crash: count %d", got.Bits().Count())
	}
}

// openOneBitmapReadOnly creates a 1 MiB image with one persistent dirty
// bitmap in a new directory and opens it read-only, with no permission
// taken; it returns the directory, the descriptor's path and the node.
func openOneBitmapReadOnly(t *testing.T) (dir, desc string, h *handle) {
	t.Helper()
	dir = t.TempDir()
	desc = create(t, dir, blockdev.Options{"size": int64(1 << 20), "dirty-bitmaps": int64(1)})
	o := qbmOpts(desc)
	o["read-only"] = true
	h, err := openNode(t, o, 0)
	if err != nil {
		t.Fatal(err)
	}
	return dir, desc, h
}

// A read-only node reopened read-write (as a job does with a commit base)
// writes and records into its persistent bitmap, with the descriptor
// marking the bitmap in use; reopened read-only again, everything is
// saved as at a clean close and loads back the same.
func TestReopenReadWrite(t *testing.T) {
	_, desc, h := openOneBitmapReadOnly(t)
	setRO := func(ro bool) {
		t.Helper()
		lk, unlock := drivertest.Lock(h.g)
		defer func() { unlock() }()
		if err := lk.SetReadOnly(ctx, h.n, ro); err != nil {
			t.Fatalf("reopen read-only=%v: %v", ro, err)
		}
	}
	setRO(false)
	if e := readDesc(t, desc).Bitmap("dirty.0"); !e.InUse || e.SHA256 != "" {
		t.Fatalf("entry once read-write: %+v", e)
	}
	lk, unlock := drivertest.Lock(h.g)
	w, err := lk.AttachRoot(h.n, "block device 'w'", blockdev.PermWrite, blockdev.PermAll)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(ctx, 65536, pattern(4096, 3), 0); err != nil {
		t.Fatal(err)
	}
	sum := h.n.DirtyBitmap("dirty.0").Bits().SHA256()
	lk, unlock = drivertest.Lock(h.g)
	lk.DetachRoot(w)
	unlock()
	setRO(true)
	if e := readDesc(t, desc).Bitmap("dirty.0"); e.InUse || e.SHA256 == "" {
		t.Fatalf("entry once read-only again: %+v", e)
	}
	h.close(t)
	h = mustOpen(t, qbmOpts(desc))
	if b := h.n.DirtyBitmap("dirty.0"); b == nil || b.Inconsistent() || b.Bits().SHA256() != sum || b.Bits().Count() == 0 {
		t.Fatalf("bitmap after the reopens: %+v", b)
	}
	if !bytes.Equal(h.read(t, 65536, 4096), pattern(4096, 3)) {
		t.Fatal("the write made while read-write is lost")
	}
}
