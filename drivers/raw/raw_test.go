package raw_test

import (
	"context"
	"errors"
	"os"
	"syscall"
	"testing"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
	_ "github.com/qbmond/qbmond/drivers/file"
	_ "github.com/qbmond/qbmond/drivers/null"
	_ "github.com/qbmond/qbmond/drivers/raw"
)

func fileOpts(t *testing.T, size int64) map[string]any {
	return map[string]any{"driver": "file", "filename": drivertest.Image(t, size)}
}

func TestConformanceOverFile(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			return blockdev.Options{"driver": "raw", "file": fileOpts(t, 4<<20)}
		},
		Stores: true,
	})
}

func TestConformanceWindow(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			return blockdev.Options{"driver": "raw", "offset": int64(1<<20 + 512), "size": int64(2 << 20), "file": fileOpts(t, 4<<20)}
		},
		Stores: true,
	})
}

func TestConformanceOverNull(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			return blockdev.Options{"driver": "raw", "file": map[string]any{"driver": "null-co", "read-zeroes": true}}
		},
	})
}

func TestWindowMapsOffsets(t *testing.T) {
	ctx := context.Background()
	img := drivertest.Image(t, 1<<20)
	_, n, c := drivertest.Open(t, blockdev.Options{"driver": "raw", "offset": int64(4096), "size": int64(8192),
		"file": map[string]any{"driver": "file", "filename": img}}, drivertest.RootPerm)
	if n.Length() != 8192 {
		t.Fatalf("length %d", n.Length())
	}
	if err := c.Write(ctx, 0, []byte("hello"), 0); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if string(b[4096:4101]) != "hello" {
		t.Fatalf("write at 0 did not land at offset 4096")
	}
	if err := c.Write(ctx, 8192, []byte{1}, 0); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("write past size: %v", err)
	}
	if err := c.Truncate(ctx, 16384, true); !errors.Is(err, blockdev.ErrNotSupported) {
		t.Fatalf("truncate of a window: %v", err)
	}
}

func TestOffsetSizeErrors(t *testing.T) {
	// Messages as qemu-storage-daemon 7.2 gives them (1 MiB file),
	// including the double space.
	img := drivertest.Image(t, 1<<20)
	g := blockdev.NewGraph(zerolog.Nop())
	defer g.Close()
	for _, tc := range []struct {
		off, size any
		want      string
	}{
		{int64(2000000), nil, "Offset (2000000) cannot be greater than size of the containing file (1048576)"},
		{nil, int64(2000000), "The sum of offset (0) and size (2000000) has to be smaller or equal to the  actual size of the containing file (1048576)"},
		{int64(1000000), int64(100000), "The sum of offset (1000000) and size (100000) has to be smaller or equal to the  actual size of the containing file (1048576)"},
		{nil, int64(1000), "Specified size is not multiple of 512"},
	} {
		o := blockdev.Options{"driver": "raw", "node-name": "r", "file": map[string]any{"driver": "file", "filename": img, "node-name": "f"}}
		if tc.off != nil {
			o["offset"] = tc.off
		}
		if tc.size != nil {
			o["size"] = tc.size
		}
		lk, unlock := drivertest.Lock(g)
		_, err := lk.Add(context.Background(), o)
		left := lk.Len()
		unlock()
		if err == nil || err.Error() != tc.want {
			t.Errorf("offset %v size %v: got %v, want %q", tc.off, tc.size, err, tc.want)
		}
		if left != 0 {
			t.Errorf("offset %v size %v: %d nodes left behind", tc.off, tc.size, left)
		}
	}
	// Offset at the very end is fine: an empty node.
	lk, unlock := drivertest.Lock(g)
	defer unlock()
	n, err := lk.Add(context.Background(), blockdev.Options{"driver": "raw", "node-name": "r", "offset": int64(1 << 20),
		"file": map[string]any{"driver": "file", "filename": img}})
	if err != nil || n.Length() != 0 {
		t.Fatalf("offset at the end: %v", err)
	}
}

func TestPermissionsPassThrough(t *testing.T) {
	// A writer on raw makes raw take write on its file child; a reader
	// does not.
	g, n, _ := drivertest.Open(t, blockdev.Options{"driver": "raw", "file": fileOpts(t, 1<<20)}, blockdev.PermConsistentRead)
	lk, unlock := drivertest.Lock(g)
	defer unlock()
	fc := n.Child("file")
	if fc.Perm() != blockdev.PermConsistentRead {
		t.Fatalf("file perm with a reader above: %v", fc.Perm().Names())
	}
	w, err := lk.AttachRoot(n, "block device 'w'", blockdev.PermWrite|blockdev.PermConsistentRead, blockdev.PermAll)
	if err != nil {
		t.Fatal(err)
	}
	if fc.Perm() != blockdev.PermConsistentRead|blockdev.PermWrite {
		t.Fatalf("file perm with a writer above: %v", fc.Perm().Names())
	}
	lk.DetachRoot(w)
	if fc.Perm() != blockdev.PermConsistentRead {
		t.Fatalf("file perm after the writer left: %v", fc.Perm().Names())
	}
}

// ReadFile maps a raw window over a file to the file's own range, so that
// an export's sendfile sends the bytes a Read would return; over null-co
// there is no file and nothing is mapped.
func TestReadFileMapsWindow(t *testing.T) {
	ctx := context.Background()
	const off = 1<<20 + 512
	_, n, c := drivertest.Open(t, blockdev.Options{"driver": "raw", "offset": int64(off), "size": int64(2 << 20),
		"file": fileOpts(t, 4<<20)}, drivertest.RootPerm)
	pat := make([]byte, 8192)
	for i := range pat {
		pat[i] = byte(i + 3)
	}
	if err := c.Write(ctx, 4096, pat, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(pat))
	ok, err := n.ReadFile(ctx, c, 4096, int64(len(pat)), func(fd int, foff, l int64) error {
		if foff != off+4096 || l != int64(len(pat)) {
			t.Errorf("mapped to %d+%d, want %d+%d", foff, l, off+4096, len(pat))
		}
		_, err := syscall.Pread(fd, got, foff)
		return err
	})
	if !ok || err != nil {
		t.Fatalf("ReadFile: %v %v", ok, err)
	}
	if string(got) != string(pat) {
		t.Fatal("mapped bytes differ from what was written")
	}
	// Past the end: refused by the bounds check, before any mapping.
	if ok, err := n.ReadFile(ctx, c, 2<<20-512, 1024, nil); !ok || !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("read past the end: %v %v", ok, err)
	}

	_, nn, nc := drivertest.Open(t, blockdev.Options{"driver": "raw", "file": map[string]any{"driver": "null-co", "size": int64(1 << 20)}}, drivertest.RootPerm)
	if ok, err := nn.ReadFile(ctx, nc, 0, 4096, func(int, int64, int64) error { t.Error("sink called over null-co"); return nil }); ok || err != nil {
		t.Fatalf("null-co mapped: %v %v", ok, err)
	}
}
