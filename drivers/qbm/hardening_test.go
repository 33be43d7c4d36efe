package qbm_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
	"github.com/qbmond/qbmond/drivers/qbm"
)

// A descriptor opened through a symbolic link is rewritten where the link
// points: the real descriptor marks the bitmap in use while the node is
// open (so after a crash it loads inconsistent, not as a clean bitmap
// with none of the writes), the link stays a link, and a clean close
// saves the bits into the real descriptor's entry.
func TestDescriptorThroughSymlink(t *testing.T) {
	dir := t.TempDir()
	desc := create(t, dir, blockdev.Options{"size": int64(8 << 20), "dirty-bitmaps": int64(1)})
	link := filepath.Join(dir, "link.qbm")
	if err := os.Symlink("disk.qbm", link); err != nil {
		t.Fatal(err)
	}
	isLink := func() {
		t.Helper()
		if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("link.qbm is no longer a symbolic link: %v %v", fi, err)
		}
	}
	h := mustOpen(t, qbmOpts(link))
	isLink()
	if e := readDesc(t, desc).Bitmap("dirty.0"); !e.InUse {
		t.Fatalf("real descriptor while open read-write: %+v", e)
	}
	h.write(t, 65536, pattern(4096, 1))
	want := h.n.DirtyBitmap("dirty.0").Bits().SHA256()
	crashed := copyDir(t, dir)
	h.close(t)
	isLink()

	h2 := mustOpen(t, qbmOpts(filepath.Join(crashed, "disk.qbm")))
	if b := h2.n.DirtyBitmap("dirty.0"); b == nil || !b.Inconsistent() {
		t.Fatalf("bitmap after a crash loads as consistent: %+v", b)
	}
	h2.close(t)

	if e := readDesc(t, desc).Bitmap("dirty.0"); e.InUse || e.SHA256 == "" {
		t.Fatalf("real descriptor after a clean close: %+v", e)
	}
	h3 := mustOpen(t, qbmOpts(link))
	if b := h3.n.DirtyBitmap("dirty.0"); b.Inconsistent() || b.Bits().SHA256() != want || b.Bits().Count() != 65536 {
		t.Fatalf("bitmap after a clean close: inconsistent %v count %d", b.Inconsistent(), b.Bits().Count())
	}
}

// The temporary descriptor is created exclusively: a symbolic link
// planted at its name (the old fixed DESC.tmp, or the next name the
// writer picks) is neither followed nor truncated.
func TestDescriptorTmpNotFollowed(t *testing.T) {
	dir := t.TempDir()
	desc := create(t, dir, blockdev.Options{"size": int64(1 << 20), "dirty-bitmaps": int64(1)})
	victim := rawImage(t, dir, "victim", []byte("precious data"))
	for _, name := range []string{desc + ".tmp", desc + ".tmp.planted"} {
		if err := os.Symlink(victim, name); err != nil {
			t.Fatal(err)
		}
	}
	names := []string{"planted", "fresh"}
	defer qbm.SetTmpSuffix(func() string {
		n := names[0]
		if len(names) > 1 {
			names = names[1:]
		}
		return n
	})()
	h := mustOpen(t, qbmOpts(desc)) // marks dirty.0 in use: a rewrite
	if e := readDesc(t, desc).Bitmap("dirty.0"); !e.InUse {
		t.Fatalf("descriptor not rewritten: %+v", e)
	}
	h.close(t)
	if b, _ := os.ReadFile(victim); string(b) != "precious data" {
		t.Fatalf("the file behind a planted link changed: %q", b)
	}
	for _, name := range []string{desc + ".tmp", desc + ".tmp.planted"} {
		if fi, err := os.Lstat(name); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("%s replaced: %v", name, err)
		}
	}
	if _, err := os.Lstat(desc + ".tmp.fresh"); !os.IsNotExist(err) {
		t.Fatalf("temporary file left behind: %v", err)
	}
	if fi, err := os.Stat(desc); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("descriptor mode after rewrites: %v %v", fi, err)
	}
}

// Bitmap files are written at every clean close, so a descriptor may not
// point them at the image, the backing chain, another bitmap's file, a
// file outside its directory tree or something that is not a regular
// file; files are compared by device and inode.
func TestBitmapFileRules(t *testing.T) {
	dir := t.TempDir()
	other := t.TempDir()
	imgData := pattern(1<<20, 7)
	rawImage(t, dir, "img.raw", imgData)
	rawImage(t, dir, "base.raw", pattern(1<<20, 9))
	rawImage(t, dir, "ok.bitmap", make([]byte, 16))
	rawImage(t, dir, "alloc.bitmap", make([]byte, 16))
	rawImage(t, other, "x.bitmap", make([]byte, 16))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Link(filepath.Join(dir, "img.raw"), filepath.Join(dir, "img-link.bitmap")))
	must(os.Link(filepath.Join(dir, "ok.bitmap"), filepath.Join(dir, "ok-link.bitmap")))
	must(os.Symlink(filepath.Join(other, "x.bitmap"), filepath.Join(dir, "abs-out.bitmap")))
	must(os.Symlink("../"+filepath.Base(other)+"/x.bitmap", filepath.Join(dir, "rel-out.bitmap")))
	must(os.Symlink("ok.bitmap", filepath.Join(dir, "rel-in.bitmap")))
	must(os.Mkdir(filepath.Join(dir, "sub"), 0o755))
	must(syscall.Mkfifo(filepath.Join(dir, "fifo.bitmap"), 0o644))

	dirty := func(file string) map[string]any {
		return map[string]any{"file": file, "type": "dirty", "granularity-bytes": 65536}
	}
	write := func(name string, bitmaps map[string]any) string {
		b, err := json.Marshal(map[string]any{"QBM": map[string]any{"version": 1,
			"image": map[string]any{"file": "img.raw", "format": "raw"}, "bitmaps": bitmaps}})
		must(err)
		return rawImage(t, dir, name+".qbm", b)
	}
	outsideMsg := func(name string) string {
		return `Bitmap "b" file must be a regular file inside the QBM descriptor's directory ` + dir +
			` (no "..", absolute name or symbolic link leading out of it): ` + name
	}
	alloc := map[string]any{"file": "alloc.bitmap", "type": "allocation", "granularity-bytes": 65536,
		"backing": map[string]any{"file": "base.raw", "format": "raw"}}
	for _, tc := range []struct {
		name    string
		bitmaps map[string]any
		want    string
	}{
		{"image", map[string]any{"b": dirty("img.raw")}, `Bitmap "b" file is also a file of the data image: ` + filepath.Join(dir, "img.raw")},
		{"image hard link", map[string]any{"b": dirty("img-link.bitmap")}, `Bitmap "b" file is also a file of the data image: ` + filepath.Join(dir, "img-link.bitmap")},
		{"two bitmaps", map[string]any{"a": dirty("ok.bitmap"), "b": dirty("ok.bitmap")}, `Bitmap "b" file is also the file of bitmap "a": ` + filepath.Join(dir, "ok.bitmap")},
		{"two bitmaps hard link", map[string]any{"a": dirty("ok.bitmap"), "b": dirty("ok-link.bitmap")}, `Bitmap "b" file is also the file of bitmap "a": ` + filepath.Join(dir, "ok-link.bitmap")},
		{"allocation and dirty", map[string]any{"allocation": alloc, "b": dirty("alloc.bitmap")}, `Bitmap "b" file is also the file of bitmap "allocation": ` + filepath.Join(dir, "alloc.bitmap")},
		{"backing", map[string]any{"allocation": alloc, "b": dirty("base.raw")}, `Bitmap "b" file is also a file of the backing chain: ` + filepath.Join(dir, "base.raw")},
		{"dot dot", map[string]any{"b": dirty("../" + filepath.Base(other) + "/x.bitmap")}, outsideMsg("../" + filepath.Base(other) + "/x.bitmap")},
		{"absolute outside", map[string]any{"b": dirty(filepath.Join(other, "x.bitmap"))}, outsideMsg(filepath.Join(other, "x.bitmap"))},
		{"absolute link out", map[string]any{"b": dirty("abs-out.bitmap")}, outsideMsg("abs-out.bitmap")},
		{"relative link out", map[string]any{"b": dirty("rel-out.bitmap")}, outsideMsg("rel-out.bitmap")},
		{"directory", map[string]any{"b": dirty("sub")}, `Bitmap "b" file is not a regular file: ` + filepath.Join(dir, "sub")},
		{"fifo", map[string]any{"b": dirty("fifo.bitmap")}, `Bitmap "b" file is not a regular file: ` + filepath.Join(dir, "fifo.bitmap")},
		{"missing", map[string]any{"b": dirty("none.bitmap")}, "Could not open '" + filepath.Join(dir, "none.bitmap") + "': No such file or directory"},
		// Allowed: an absolute name inside the directory, a link that
		// stays inside it, a name with ".." that comes back into it.
		{"absolute inside", map[string]any{"b": dirty(filepath.Join(dir, "ok.bitmap"))}, ""},
		{"relative link in", map[string]any{"b": dirty("rel-in.bitmap")}, ""},
		{"dot dot back in", map[string]any{"b": dirty("sub/../ok.bitmap")}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := write(strings.ReplaceAll(tc.name, " ", "-"), tc.bitmaps)
			h, err := openNode(t, qbmOpts(p), drivertest.RootPerm)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				h.write(t, 0, pattern(4096, 3))
				h.close(t)
				return
			}
			if err == nil || err.Error() != tc.want {
				t.Fatalf("got %v\nwant %s", err, tc.want)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "img.raw")); !bytes.Equal(b, imgData) {
				t.Fatal("the image changed")
			}
		})
	}
}

// A read-only node reopened read-write opens its bitmap files again: one
// renamed over meanwhile is refused rather than written unchecked.
func TestReopenReplacedBitmapFile(t *testing.T) {
	dir, _, h := openOneBitmapReadOnly(t)
	var err error
	bm := filepath.Join(dir, "disk-dirty.0.bitmap")
	rawImage(t, dir, "new.bitmap", make([]byte, 16))
	if err := os.Rename(filepath.Join(dir, "new.bitmap"), bm); err != nil {
		t.Fatal(err)
	}
	lk, unlock := drivertest.Lock(h.g)
	err = lk.SetReadOnly(ctx, h.n, false)
	unlock()
	want := `Bitmap "dirty.0" file was replaced since the node was opened: ` + bm
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
}
