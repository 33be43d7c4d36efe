package file_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/blockqmp"
	"github.com/qbmond/qbmond/drivers/drivertest"
	_ "github.com/qbmond/qbmond/drivers/file"
)

func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			return blockdev.Options{"driver": "file", "filename": drivertest.Image(t, 4<<20)}
		},
		Stores: true,
	})
}

// directSupported tells whether the test directory takes O_DIRECT (tmpfs
// does not).
func directSupported(t *testing.T) bool {
	p := drivertest.Image(t, 4096)
	fd, err := syscall.Open(p, syscall.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return false
	}
	syscall.Close(fd)
	return true
}

func TestConformanceDirect(t *testing.T) {
	if !directSupported(t) {
		t.Skip("O_DIRECT not supported in the temporary directory")
	}
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			return blockdev.Options{"driver": "file", "filename": drivertest.Image(t, 4<<20),
				"cache": map[string]any{"direct": true}, "aio": "native"}
		},
		Stores: true,
	})
}

func add(t *testing.T, g *blockdev.Graph, o blockdev.Options) (*blockdev.Node, error) {
	t.Helper()
	lk, unlock := drivertest.Lock(g)
	defer unlock()
	return lk.Add(context.Background(), o)
}

func TestOpenErrors(t *testing.T) {
	g := blockdev.NewGraph(zerolog.Nop())
	defer g.Close()
	img := drivertest.Image(t, 1<<20)
	dir := t.TempDir()
	for _, tc := range []struct {
		opts blockdev.Options
		want string
	}{
		// Messages checked against qemu-storage-daemon 7.2.
		{blockdev.Options{"filename": "/nonexistent/x.img"}, "Could not open '/nonexistent/x.img': No such file or directory"},
		{blockdev.Options{"filename": dir}, "Could not open '" + dir + "': Is a directory"},
		{blockdev.Options{"filename": img, "aio": "native"}, "aio=native was specified, but it requires cache.direct=on, which was not specified."},
	} {
		o := tc.opts
		o["driver"], o["node-name"] = "file", "f"
		_, err := add(t, g, o)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%v: got %v, want %q", o, err, tc.want)
		}
	}
	for _, aio := range []string{"threads", "io_uring"} {
		g2 := blockdev.NewGraph(zerolog.Nop())
		if _, err := add(t, g2, blockdev.Options{"driver": "file", "node-name": "f", "filename": img, "aio": aio, "locking": "off"}); err != nil {
			t.Errorf("aio=%s: %v", aio, err)
		}
		g2.Close()
	}
}

func TestReadOnlyOpensReadOnly(t *testing.T) {
	img := drivertest.Image(t, 1<<20)
	if err := os.Chmod(img, 0o400); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// root opens anything read-write; check the reverse instead: a
		// read-only node must not need write access, so it must work too.
		t.Log("running as root: mode bits do not restrict the open")
	}
	_, n, c := drivertest.Open(t, blockdev.Options{"driver": "file", "filename": img, "read-only": true}, blockdev.PermConsistentRead)
	if !n.ReadOnly() {
		t.Fatal("not read-only")
	}
	if err := c.Read(context.Background(), 0, make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
}

func TestAutoReadOnly(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores file modes")
	}
	img := drivertest.Image(t, 1<<20)
	if err := os.Chmod(img, 0o400); err != nil {
		t.Fatal(err)
	}
	g := blockdev.NewGraph(zerolog.Nop())
	defer g.Close()
	if _, err := add(t, g, blockdev.Options{"driver": "file", "node-name": "a", "filename": img}); err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("read-write open of a read-only file: %v", err)
	}
	n, err := add(t, g, blockdev.Options{"driver": "file", "node-name": "b", "filename": img, "auto-read-only": true})
	if err != nil || !n.ReadOnly() {
		t.Fatalf("auto-read-only: %v", err)
	}
}

func TestSparseStatusAndActualSize(t *testing.T) {
	ctx := context.Background()
	img := drivertest.Image(t, 4<<20)
	g, n, c := drivertest.Open(t, blockdev.Options{"driver": "file", "filename": img, "discard": "unmap"}, drivertest.RootPerm)
	st, err := c.BlockStatus(ctx, 0, c.Length())
	if err != nil {
		t.Fatal(err)
	}
	if st.Flags != blockdev.StatusZero|blockdev.StatusAllocated || st.Length != 4<<20 {
		t.Fatalf("fresh sparse file: %+v", st)
	}
	if err := c.Write(ctx, 1<<20, make([]byte, 64<<10), 0); err != nil {
		t.Fatal(err)
	}
	st, err = c.BlockStatus(ctx, 0, c.Length())
	if err != nil || st.Flags&blockdev.StatusZero == 0 || st.Length != 1<<20 {
		t.Fatalf("hole before data: %+v %v", st, err)
	}
	st, err = c.BlockStatus(ctx, 1<<20, c.Length()-1<<20)
	if err != nil || st.Flags&blockdev.StatusData == 0 || st.Length < 64<<10 {
		t.Fatalf("data: %+v %v", st, err)
	}
	lk, unlock := drivertest.Lock(g)
	info, ierr := blockqmp.BlockDeviceInfo(ctx, lk, n, true)
	unlock()
	if ierr != nil || info.Image.ActualSize == nil || *info.Image.ActualSize < 64<<10 {
		t.Fatalf("actual-size after 64 KiB of data: %v (%v)", info.Image.ActualSize, ierr)
	}
	// Discard punches the hole again.
	if err := c.Discard(ctx, 1<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	st, err = c.BlockStatus(ctx, 1<<20, 64<<10)
	if err != nil || st.Flags&blockdev.StatusZero == 0 {
		t.Fatalf("after discard: %+v %v", st, err)
	}
}

func TestWriteZeroesNoFallback(t *testing.T) {
	ctx := context.Background()
	_, _, c := drivertest.Open(t, blockdev.Options{"driver": "file", "filename": drivertest.Image(t, 1<<20)}, drivertest.RootPerm)
	err := c.WriteZeroes(ctx, 0, 4096, blockdev.ReqNoFallback)
	if err != nil && !errors.Is(err, blockdev.ErrNotSupported) {
		t.Fatalf("write-zeroes without fallback: %v", err)
	}
}

func TestTruncate(t *testing.T) {
	ctx := context.Background()
	img := drivertest.Image(t, 1<<20)
	_, n, c := drivertest.Open(t, blockdev.Options{"driver": "file", "filename": img}, drivertest.RootPerm)
	if err := c.Truncate(ctx, 2<<20, true); err != nil {
		t.Fatal(err)
	}
	if n.Length() != 2<<20 {
		t.Fatalf("length after truncate %d", n.Length())
	}
	if fi, err := os.Stat(img); err != nil || fi.Size() != 2<<20 {
		t.Fatalf("file size after truncate: %v %v", fi, err)
	}
	if err := c.Write(ctx, 2<<20-512, make([]byte, 512), 0); err != nil {
		t.Fatalf("write into the new area: %v", err)
	}
	_, _, ro := drivertest.Open(t, blockdev.Options{"driver": "file", "filename": img}, blockdev.PermConsistentRead)
	if err := ro.Truncate(ctx, 1<<20, true); !errors.Is(err, blockdev.ErrPermission) {
		t.Fatalf("truncate without resize: %v", err)
	}
}

func TestOddSizeFile(t *testing.T) {
	// A 1000-byte file is a 1024-byte node (QEMU 7.2 rounds to sectors);
	// the tail past EOF reads as zeroes.
	ctx := context.Background()
	img := drivertest.Image(t, 1000)
	if err := os.WriteFile(img, []byte(strings.Repeat("x", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, n, c := drivertest.Open(t, blockdev.Options{"driver": "file", "filename": img}, drivertest.RootPerm)
	if n.Length() != 1024 {
		t.Fatalf("length %d, want 1024", n.Length())
	}
	buf := make([]byte, 48)
	if err := c.Read(ctx, 976, buf); err != nil {
		t.Fatal(err)
	}
	if string(buf[:24]) != strings.Repeat("x", 24) || strings.Trim(string(buf[24:]), "\x00") != "" {
		t.Fatalf("tail read %q", buf)
	}
}

// The block-status cache must forget a data extent once part of it is
// zeroed with unmap or cut off by a truncate.
func TestStatusCacheInvalidation(t *testing.T) {
	ctx := context.Background()
	img := drivertest.Image(t, 4<<20)
	_, _, c := drivertest.Open(t, blockdev.Options{"driver": "file", "filename": img, "discard": "unmap"}, drivertest.RootPerm)
	data := func(off int64) bool {
		t.Helper()
		st, err := c.BlockStatus(ctx, off, 4096)
		if err != nil {
			t.Fatal(err)
		}
		return st.Flags&blockdev.StatusData != 0
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = 1
	}
	if err := c.Write(ctx, 0, buf, 0); err != nil {
		t.Fatal(err)
	}
	if !data(0) || !data(512<<10) {
		t.Fatal("written range not reported as data")
	}
	if err := c.WriteZeroes(ctx, 512<<10, 64<<10, blockdev.ReqMayUnmap); err != nil {
		t.Fatal(err)
	}
	if data(512 << 10) {
		t.Fatal("range zeroed with unmap still reported as data")
	}
	if !data(0) {
		t.Fatal("data before the zeroed range lost")
	}
}
