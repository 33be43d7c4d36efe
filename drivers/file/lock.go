package file

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/qbmond/qbmond/blockdev"
)

// Image locking, compatible with QEMU's file driver, so that qemu-img,
// qemu-io, QEMU and qbmond see each other's use of an image.
//
// Every permission bit i (blockdev.Perm, numbered as QEMU's BLK_PERM_*)
// has two lock bytes in the image file: byte lockPermBase+i, held with a
// shared lock while this open file uses the permission, and byte
// lockSharedBase+i, held while it does not let others use it. The locks
// are open file description (OFD) locks on the node's own descriptor, so
// they belong to this open of the file and not to the process: two nodes
// of one process that open the same file see each other's locks as QEMU
// would, and a descriptor never sees its own (F_OFD_GETLK ignores them).
//
// Taking permission i requires that nobody else holds byte lockSharedBase+i;
// not sharing it requires that nobody else holds byte lockPermBase+i. The
// test asks the kernel whether an exclusive lock on the byte could be
// placed, without placing it.
const (
	lockPermBase   = 100
	lockSharedBase = 200
	// lockBits is the number of permission bits with lock bytes: QEMU 7.2
	// knows consistent-read, write, write-unchanged and resize.
	lockBits = 4
)

// lockPermNames are the permission names QEMU's lock messages use (its
// bdrv_perm_names: words separated by spaces, not QAPI's hyphens).
var lockPermNames = [lockBits]string{"consistent read", "write", "write unchanged", "resize"}

// LockError is a lock conflict (or a failure to take or test a lock) in
// QEMU's words. Error is what QMP reports as desc; Hint is the second line
// QEMU prints below it on its command line.
type LockError struct {
	Msg      string
	Filename string
}

func (e *LockError) Error() string { return e.Msg }

// Hint is QEMU's suggestion: "Is another process using the image [PATH]?".
func (e *LockError) Hint() string {
	return fmt.Sprintf("Is another process using the image [%s]?", e.Filename)
}

// lockState is what the driver tracks of its locks.
type lockState struct {
	// on tells whether locking is in use (locking=on|auto; off disables).
	on bool
	// perm and shared are the permissions last established by SetPerm.
	perm, shared blockdev.Perm
	// heldPerm and heldUnshared are the bits whose bytes are locked now
	// (lockPermBase+i and lockSharedBase+i respectively).
	heldPerm, heldUnshared blockdev.Perm
}

// lock decides, from the locking option, whether the node takes locks. No
// lock is taken at open: the node holds nothing until it has users, as in
// QEMU. auto means on, since Linux always has OFD locks.
func (d *Driver) lock(mode string) error {
	d.locks = lockState{on: mode != "off", shared: blockdev.PermAll}
	return nil
}

// lockErr builds a LockError for d. A conflict (EAGAIN, EACCES) is the
// bare message; any other failure carries the system's reason too.
func (d *Driver) lockErr(err error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) {
		msg += ": " + blockdev.Strerror(err)
	}
	return &LockError{Msg: msg, Filename: d.filename}
}

// setByte takes (shared) or releases the lock on one byte.
func (d *Driver) setByte(off int64, lock bool) error {
	fl := unix.Flock_t{Type: unix.F_UNLCK, Whence: 0, Start: off, Len: 1}
	if lock {
		fl.Type = unix.F_RDLCK
	}
	for {
		err := unix.FcntlFlock(uintptr(d.fd), unix.F_OFD_SETLK, &fl)
		if err != unix.EINTR {
			return err
		}
	}
}

// byteTaken tells whether another open file holds a lock on the byte at
// off, by asking whether an exclusive lock could be placed there.
func (d *Driver) byteTaken(off int64) (bool, error) {
	fl := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: off, Len: 1}
	for {
		err := unix.FcntlFlock(uintptr(d.fd), unix.F_OFD_GETLK, &fl)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, err
		}
		return fl.Type != unix.F_UNLCK, nil
	}
}

// applyLocks locks the bytes of perm and unshared that are not locked yet;
// with release it also unlocks the bytes of bits outside them. It stops at
// the first failure, keeping heldPerm/heldUnshared exact.
func (d *Driver) applyLocks(perm, unshared blockdev.Perm, release bool) error {
	perm &= blockdev.PermAll
	unshared &= blockdev.PermAll
	for i := range lockBits {
		bit := blockdev.Perm(1) << i
		for _, b := range []struct {
			base int64
			want bool
			held *blockdev.Perm
		}{
			{lockPermBase, perm&bit != 0, &d.locks.heldPerm},
			{lockSharedBase, unshared&bit != 0, &d.locks.heldUnshared},
		} {
			off := b.base + int64(i)
			switch has := *b.held&bit != 0; {
			case b.want && !has:
				if err := d.setByte(off, true); err != nil {
					return d.lockErr(err, "Failed to lock byte %d", off)
				}
				*b.held |= bit
			case !b.want && has && release:
				if err := d.setByte(off, false); err != nil {
					return d.lockErr(err, "Failed to unlock byte %d", off)
				}
				*b.held &^= bit
			}
		}
	}
	return nil
}

// checkLocks tests whether another open file stands in the way of holding
// perm and sharing only shared: first each permission wanted, then each
// permission not shared, in bit order, reporting the first conflict.
func (d *Driver) checkLocks(perm, shared blockdev.Perm) error {
	for i := range lockBits {
		if perm&(1<<i) == 0 {
			continue
		}
		if taken, err := d.byteTaken(lockSharedBase + int64(i)); taken || err != nil {
			return d.lockErr(err, `Failed to get "%s" lock`, lockPermNames[i])
		}
	}
	for i := range lockBits {
		if shared&(1<<i) != 0 {
			continue
		}
		if taken, err := d.byteTaken(lockPermBase + int64(i)); taken || err != nil {
			return d.lockErr(err, `Failed to get shared "%s" lock`, lockPermNames[i])
		}
	}
	return nil
}

// CheckPerm makes sure the node may hold perm and share only shared. When
// the change widens what the node holds or keeps from others, it first
// locks the bytes of both the old and the new state (so that nobody slips
// in between) and then tests for conflicts; on failure the locks are put
// back as they were. A change that only narrows is left to SetPerm.
func (d *Driver) CheckPerm(perm, shared blockdev.Perm) error {
	l := &d.locks
	if !l.on {
		return nil
	}
	if l.perm|perm == l.perm && l.shared&shared == l.shared {
		return nil
	}
	heldPerm, heldUnshared := l.heldPerm, l.heldUnshared
	err := d.applyLocks(l.perm|perm, ^l.shared|^shared, false)
	if err == nil {
		err = d.checkLocks(perm, shared)
	}
	if err != nil {
		_ = d.applyLocks(heldPerm, heldUnshared, true)
		return err
	}
	return nil
}

// SetPerm makes the locks exactly those of perm and shared. Unlocking
// cannot conflict; should the kernel refuse anyway, the node keeps a byte
// too many, which only makes it more cautious (QEMU warns and goes on).
func (d *Driver) SetPerm(perm, shared blockdev.Perm) {
	l := &d.locks
	if !l.on {
		return
	}
	_ = d.applyLocks(perm, ^shared, true)
	l.perm, l.shared = perm, shared
}

// AbortPerm puts the locks back as the last SetPerm left them.
func (d *Driver) AbortPerm() {
	l := &d.locks
	if !l.on {
		return
	}
	_ = d.applyLocks(l.perm, ^l.shared, true)
}

var _ blockdev.PermLocker = (*Driver)(nil)
