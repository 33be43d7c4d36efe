package file_test

import (
	"context"
	"errors"
	"os"
	"slices"
	"testing"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
	"github.com/qbmond/qbmond/drivers/file"
	_ "github.com/qbmond/qbmond/drivers/raw"
)

// lockedBytes lists the lock bytes (100-103, 200-203) some open of path
// holds, probed from an open file of the test's own.
func lockedBytes(t *testing.T, path string) []int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var held []int
	for _, base := range []int{100, 200} {
		for i := range 4 {
			fl := unix.Flock_t{Type: unix.F_WRLCK, Start: int64(base + i), Len: 1}
			if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &fl); err != nil {
				t.Fatal(err)
			}
			if fl.Type != unix.F_UNLCK {
				held = append(held, base+i)
			}
		}
	}
	return held
}

func wantLocked(t *testing.T, path string, want ...int) {
	t.Helper()
	if got := lockedBytes(t, path); !slices.Equal(got, want) {
		t.Fatalf("locked bytes %v, want %v", got, want)
	}
}

// process is one graph standing in for one QEMU-like process.
type process struct {
	t *testing.T
	g *blockdev.Graph
}

func newProcess(t *testing.T) *process {
	g := blockdev.NewGraph(zerolog.Nop())
	t.Cleanup(func() { g.Close() })
	return &process{t, g}
}

func (p *process) add(o blockdev.Options) (*blockdev.Node, error) {
	lk, unlock := drivertest.Lock(p.g)
	defer unlock()
	return lk.Add(context.Background(), o)
}

func (p *process) attach(n *blockdev.Node, perm, shared blockdev.Perm) (*blockdev.Child, error) {
	lk, unlock := drivertest.Lock(p.g)
	defer unlock()
	return lk.AttachRoot(n, "block device 'u'", perm, shared)
}

func (p *process) detach(c *blockdev.Child) {
	lk, unlock := drivertest.Lock(p.g)
	defer unlock()
	lk.DetachRoot(c)
}

// open adds a file node on img and attaches a user with perm and shared.
func (p *process) open(img string, extra blockdev.Options, perm, shared blockdev.Perm) (*blockdev.Child, error) {
	p.t.Helper()
	o := blockdev.Options{"driver": "file", "node-name": "f", "filename": img}
	for k, v := range extra {
		o[k] = v
	}
	n, err := p.add(o)
	if err != nil {
		p.t.Fatal(err)
	}
	return p.attach(n, perm, shared)
}

const (
	cr     = blockdev.PermConsistentRead
	w      = blockdev.PermWrite
	resize = blockdev.PermResize
	all    = blockdev.PermAll
)

// What a qcow2 node writing its image holds on the file (as QEMU's qcow2
// does): read, write and resize, sharing neither write nor resize.
const (
	writerPerm   = cr | w | resize
	writerShared = all &^ (w | resize)
	readerPerm   = cr
	readerShared = all &^ (w | resize)
)

func TestLockWriterBlocksWriter(t *testing.T) {
	img := drivertest.Image(t, 1<<20)
	a := newProcess(t)
	if _, err := a.open(img, nil, writerPerm, writerShared); err != nil {
		t.Fatal(err)
	}
	wantLocked(t, img, 100, 101, 103, 201, 203)

	b := newProcess(t)
	_, err := b.open(img, nil, writerPerm, writerShared)
	var le *file.LockError
	if !errors.As(err, &le) || err.Error() != `Failed to get "write" lock` {
		t.Fatalf("second writer: %v", err)
	}
	if want := "Is another process using the image [" + img + "]?"; le.Hint() != want {
		t.Fatalf("hint %q, want %q", le.Hint(), want)
	}
	// A reader that does not share write with a writer.
	r, err := b.add(blockdev.Options{"driver": "file", "node-name": "r", "filename": img, "read-only": true})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.attach(r, readerPerm, readerShared)
	if err == nil || err.Error() != `Failed to get shared "write" lock` {
		t.Fatalf("reader not sharing write: %v", err)
	}
	// The failed attempts left nothing behind.
	wantLocked(t, img, 100, 101, 103, 201, 203)
	// A reader that shares everything is fine (qemu-img info -U).
	if _, err := b.attach(r, cr, all); err != nil {
		t.Fatalf("force-share reader: %v", err)
	}
}

func TestLockReadersShare(t *testing.T) {
	img := drivertest.Image(t, 1<<20)
	a, b := newProcess(t), newProcess(t)
	ro := blockdev.Options{"read-only": true}
	if _, err := a.open(img, ro, readerPerm, readerShared); err != nil {
		t.Fatal(err)
	}
	if _, err := b.open(img, ro, readerPerm, readerShared); err != nil {
		t.Fatalf("second reader: %v", err)
	}
	wantLocked(t, img, 100, 201, 203)
	// Neither reader lets a writer in.
	c := newProcess(t)
	if _, err := c.open(img, nil, writerPerm, all); err == nil || err.Error() != `Failed to get "write" lock` {
		t.Fatalf("writer after readers: %v", err)
	}
}

func TestLockingOff(t *testing.T) {
	img := drivertest.Image(t, 1<<20)
	a := newProcess(t)
	if _, err := a.open(img, blockdev.Options{"locking": "off"}, writerPerm, writerShared); err != nil {
		t.Fatal(err)
	}
	wantLocked(t, img)
	b := newProcess(t)
	if _, err := b.open(img, nil, writerPerm, writerShared); err != nil {
		t.Fatalf("writer next to a locking=off writer: %v", err)
	}
	// and locking=off does not look at others' locks either.
	c := newProcess(t)
	if _, err := c.open(img, blockdev.Options{"locking": "off"}, writerPerm, writerShared); err != nil {
		t.Fatalf("locking=off writer next to a locking writer: %v", err)
	}
	for _, mode := range []string{"on", "auto"} {
		d := newProcess(t)
		if _, err := d.open(img, blockdev.Options{"locking": mode}, writerPerm, writerShared); err == nil {
			t.Fatalf("locking=%s writer next to a locking writer succeeded", mode)
		}
	}
}

func TestLockShrinksAndReleases(t *testing.T) {
	img := drivertest.Image(t, 1<<20)
	a := newProcess(t)
	n := a.mustAdd(blockdev.Options{"driver": "raw", "node-name": "r",
		"file": map[string]any{"driver": "file", "filename": img}})
	wantLocked(t, img) // no users, no locks
	reader := a.mustAttach(n, cr, all&^resize)
	writer := a.mustAttach(n, cr|w, all&^resize)
	wantLocked(t, img, 100, 101, 203)
	a.detach(writer)
	wantLocked(t, img, 100, 203)
	a.detach(reader)
	wantLocked(t, img)

}

func TestLockReleasedOnDelete(t *testing.T) {
	img := drivertest.Image(t, 1<<20)
	a := newProcess(t)
	n := a.mustAdd(blockdev.Options{"driver": "raw", "node-name": "r",
		"file": map[string]any{"driver": "file", "filename": img}})
	c := a.mustAttach(n, cr|w, all&^w)
	wantLocked(t, img, 100, 101, 201)
	a.detach(c)
	lk, unlock := drivertest.Lock(a.g)
	err := lk.Delete(context.Background(), "r")
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	wantLocked(t, img)
	b := newProcess(t)
	if _, err := b.open(img, nil, writerPerm, writerShared); err != nil {
		t.Fatalf("writer after blockdev-del: %v", err)
	}
}

func TestLockReleasedOnClose(t *testing.T) {
	img := drivertest.Image(t, 1<<20)
	a := newProcess(t)
	if _, err := a.open(img, nil, writerPerm, writerShared); err != nil {
		t.Fatal(err)
	}
	wantLocked(t, img, 100, 101, 103, 201, 203)
	if err := a.g.Close(); err != nil {
		t.Fatal(err)
	}
	wantLocked(t, img)
}

// mustAdd is add, failing the test on error.
func (p *process) mustAdd(o blockdev.Options) *blockdev.Node {
	p.t.Helper()
	n, err := p.add(o)
	if err != nil {
		p.t.Fatal(err)
	}
	return n
}

// mustAttach is attach, failing the test on error.
func (p *process) mustAttach(n *blockdev.Node, perm, shared blockdev.Perm) *blockdev.Child {
	p.t.Helper()
	c, err := p.attach(n, perm, shared)
	if err != nil {
		p.t.Fatal(err)
	}
	return c
}
