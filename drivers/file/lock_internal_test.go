package file

import (
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
)

const (
	cr     = blockdev.PermConsistentRead
	w      = blockdev.PermWrite
	resize = blockdev.PermResize
	all    = blockdev.PermAll
)

// openLocking opens img as the file driver would, with locking on, and
// without a graph around it, so the test drives the PermLocker calls.
func openLocking(t *testing.T, img string) *Driver {
	t.Helper()
	fd, err := unix.Open(img, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	d := &Driver{fd: fd, filename: img}
	if err := d.lock("on"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// held returns the lock bytes some open of img holds,
// probed from an open file of the test's own.
func held(t *testing.T, img string) []int {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []int
	for _, off := range []int{100, 101, 102, 103, 200, 201, 202, 203} {
		fl := unix.Flock_t{Type: unix.F_WRLCK, Start: int64(off), Len: 1}
		if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &fl); err != nil {
			t.Fatal(err)
		}
		if fl.Type != unix.F_UNLCK {
			out = append(out, off)
		}
	}
	return out
}

func expectHeld(t *testing.T, img string, want ...int) {
	t.Helper()
	if got := held(t, img); !slices.Equal(got, want) {
		t.Fatalf("locked bytes %v, want %v", got, want)
	}
}

func TestCheckSetAbort(t *testing.T) {
	img := drivertest.Image(t, 1<<20)
	d := openLocking(t, img)

	if err := d.CheckPerm(cr, all&^resize); err != nil {
		t.Fatal(err)
	}
	d.SetPerm(cr, all&^resize)
	expectHeld(t, img, 100, 203)

	// A wider check locks old and new together until the outcome is known.
	if err := d.CheckPerm(cr|w, all&^w); err != nil {
		t.Fatal(err)
	}
	expectHeld(t, img, 100, 101, 201, 203)
	d.AbortPerm()
	expectHeld(t, img, 100, 203)

	// Several checks in one change, then the last one is committed.
	if err := d.CheckPerm(cr|w, all); err != nil {
		t.Fatal(err)
	}
	if err := d.CheckPerm(cr|resize, all&^w); err != nil {
		t.Fatal(err)
	}
	d.SetPerm(cr|resize, all&^w)
	expectHeld(t, img, 100, 103, 201)

	// Narrowing needs no test and changes nothing before SetPerm.
	if err := d.CheckPerm(0, all); err != nil {
		t.Fatal(err)
	}
	expectHeld(t, img, 100, 103, 201)
	d.SetPerm(0, all)
	expectHeld(t, img)
}

func TestFailedCheckRestores(t *testing.T) {
	img := drivertest.Image(t, 1<<20)
	d := openLocking(t, img)
	other := openLocking(t, img)
	if err := other.CheckPerm(cr|w, all); err != nil {
		t.Fatal(err)
	}
	other.SetPerm(cr|w, all)

	if err := d.CheckPerm(cr, all); err != nil {
		t.Fatal(err)
	}
	d.SetPerm(cr, all)
	// write is free to take, but not to keep from the other writer.
	err := d.CheckPerm(cr|w|resize, all&^w)
	if err == nil || err.Error() != `Failed to get shared "write" lock` {
		t.Fatalf("unsharing write another open holds: %v", err)
	}
	other.Close()
	expectHeld(t, img, 100) // d's own, as before the failed check
	if d.locks.heldPerm != cr || d.locks.heldUnshared != 0 {
		t.Fatalf("held %v / unshared %v after a failed check", d.locks.heldPerm, d.locks.heldUnshared)
	}
}

func TestLockByteTakenExclusively(t *testing.T) {
	// Something other than QEMU holds a write lock on a lock byte: taking
	// the byte fails as QEMU reports it, without the errno for EAGAIN.
	img := drivertest.Image(t, 1<<20)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fl := unix.Flock_t{Type: unix.F_WRLCK, Start: 101, Len: 1}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &fl); err != nil {
		t.Fatal(err)
	}
	d := openLocking(t, img)
	err = d.CheckPerm(cr|w, all)
	if err == nil || err.Error() != "Failed to lock byte 101" {
		t.Fatalf("locking a byte held exclusively: %v", err)
	}
	if d.locks.heldPerm != 0 || d.locks.heldUnshared != 0 {
		t.Fatalf("locks left after a failed check: %v %v", d.locks.heldPerm, d.locks.heldUnshared)
	}
}

func TestLockingOffTakesNothing(t *testing.T) {
	img := drivertest.Image(t, 1<<20)
	d := openLocking(t, img)
	if err := d.lock("off"); err != nil {
		t.Fatal(err)
	}
	if err := d.CheckPerm(all, 0); err != nil {
		t.Fatal(err)
	}
	d.SetPerm(all, 0)
	expectHeld(t, img)
}
