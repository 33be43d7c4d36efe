package file_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/qbmond/qbmond/blockdev"
)

func createFile(t *testing.T, ctx context.Context, opts blockdev.Options) error {
	t.Helper()
	g := blockdev.NewGraph(zerolog.Nop())
	t.Cleanup(func() { g.Close() })
	return g.Create(ctx, "file", opts, "job 'c'")
}

func num(n int64) json.Number { return json.Number(strconv.FormatInt(n, 10)) }

func allocated(t *testing.T, p string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestCreateNewFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "new.img")
	if err := createFile(t, context.Background(), blockdev.Options{"filename": p, "size": num(3 << 20)}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 3<<20 || fi.Mode().Perm() != 0o644&^currentUmask() {
		t.Fatalf("size %d mode %v", fi.Size(), fi.Mode())
	}
	// Sparse, but with the first block written as QEMU does.
	if a := allocated(t, p); a == 0 || a >= 3<<20 {
		t.Errorf("allocated %d bytes", a)
	}
}

func currentUmask() os.FileMode {
	m := unix.Umask(0)
	unix.Umask(m)
	return os.FileMode(m)
}

func TestCreateEmptiesExistingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "old.img")
	old := bytes.Repeat([]byte("precious"), 1<<17) // 1 MiB
	if err := os.WriteFile(p, old, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := createFile(t, context.Background(), blockdev.Options{"filename": p, "size": num(2 << 20)}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2<<20 || !bytes.Equal(got, make([]byte, 2<<20)) {
		t.Fatalf("file not emptied: %d bytes, first %q", len(got), got[:16])
	}
}

func TestCreatePreallocation(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range []string{"falloc", "full"} {
		p := filepath.Join(dir, mode+".img")
		err := createFile(t, context.Background(), blockdev.Options{"filename": p, "size": num(1 << 20),
			"preallocation": mode, "nocow": true, "extent-size-hint": num(0)})
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if a := allocated(t, p); a < 1<<20 {
			t.Errorf("%s: only %d bytes allocated", mode, a)
		}
		got, _ := os.ReadFile(p)
		if !bytes.Equal(got, make([]byte, 1<<20)) {
			t.Errorf("%s: not 1 MiB of zeros", mode)
		}
	}
}

func TestCreateErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		opts blockdev.Options
		want string
		file bool // the file exists afterwards
	}{
		{"no directory", blockdev.Options{"filename": dir + "/nodir/x.img", "size": num(1)},
			"Could not create '" + dir + "/nodir/x.img': No such file or directory", false},
		{"metadata", blockdev.Options{"filename": dir + "/meta.img", "size": num(1 << 20), "preallocation": "metadata"},
			"Unsupported preallocation mode: metadata", true},
		{"hint", blockdev.Options{"filename": dir + "/hint.img", "size": num(1), "extent-size-hint": json.Number("4294967296")},
			"Extent size hint is too large", false},
		{"directory", blockdev.Options{"filename": dir, "size": num(1)},
			"Could not create '" + dir + "': Is a directory", true},
	} {
		err := createFile(t, context.Background(), tc.opts)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
		_, serr := os.Stat(tc.opts["filename"].(string))
		if (serr == nil) != tc.file {
			t.Errorf("%s: file exists: %v", tc.name, serr == nil)
		}
	}
	if fi, err := os.Stat(dir + "/meta.img"); err != nil || fi.Size() != 0 {
		t.Errorf("metadata: the file is not left empty")
	}
}

// holdLock takes a shared OFD lock on one byte of p from another open file,
// as another QEMU process holding the image would.
func holdLock(t *testing.T, p string, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fl := unix.Flock_t{Type: unix.F_RDLCK, Start: off, Len: 1}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &fl); err != nil {
		t.Fatal(err)
	}
}

func TestCreateLockConflicts(t *testing.T) {
	for _, tc := range []struct {
		off  int64
		want string
	}{
		{201, `Failed to get "write" lock`},         // another user does not share write
		{203, `Failed to get "resize" lock`},        // ... nor resize
		{103, `Failed to get shared "resize" lock`}, // another user resizes
	} {
		p := filepath.Join(t.TempDir(), "busy.img")
		if err := os.WriteFile(p, []byte("in use"), 0o644); err != nil {
			t.Fatal(err)
		}
		holdLock(t, p, tc.off)
		err := createFile(t, context.Background(), blockdev.Options{"filename": p, "size": num(1 << 20)})
		if err == nil || err.Error() != tc.want {
			t.Errorf("byte %d: error %v, want %q", tc.off, err, tc.want)
		}
		if got, _ := os.ReadFile(p); string(got) != "in use" {
			t.Errorf("byte %d: the file in use was changed: %q", tc.off, got)
		}
	}
	// Bytes of permissions the creation neither needs nor refuses to share
	// (another reader, another writer) do not stand in the way.
	p := filepath.Join(t.TempDir(), "shared.img")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	holdLock(t, p, 100)
	holdLock(t, p, 101)
	if err := createFile(t, context.Background(), blockdev.Options{"filename": p, "size": num(4096)}); err != nil {
		t.Fatal(err)
	}
}

func TestCreateCancelled(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cancel.img")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := createFile(t, ctx, blockdev.Options{"filename": p, "size": num(64 << 20), "preallocation": "full"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v", err)
	}
}
