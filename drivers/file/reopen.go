package file

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/qbmond/qbmond/blockdev"
)

// ReopenPrepare opens the file again with the requested access mode; the
// node keeps using its descriptor until ReopenCommit.
func (d *Driver) ReopenPrepare(ctx context.Context, rs *blockdev.ReopenState) error {
	flags := unix.O_CLOEXEC | unix.O_RDWR
	if rs.ReadOnly {
		flags = unix.O_CLOEXEC | unix.O_RDONLY
	}
	if d.direct {
		flags |= unix.O_DIRECT
	}
	fd, err := unix.Open(d.filename, flags, 0)
	if err != nil {
		return fmt.Errorf("Could not reopen file: %s", blockdev.Strerror(err))
	}
	rs.Opaque = fd
	return nil
}

// ReopenCommit switches to the new descriptor. Image locks belong to an
// open file description, so the new one takes the locks the node holds
// before the old one, and with it its locks, is closed.
func (d *Driver) ReopenCommit(rs *blockdev.ReopenState) {
	fd := rs.Opaque.(int)
	old := d.fd
	d.fd = fd
	d.locks.heldPerm, d.locks.heldUnshared = 0, 0
	if d.locks.on {
		_ = d.applyLocks(d.locks.perm, ^d.locks.shared, true)
	}
	unix.Close(old)
	d.bsc.invalidate()
}

// ReopenAbort closes the descriptor ReopenPrepare opened.
func (d *Driver) ReopenAbort(rs *blockdev.ReopenState) {
	if fd, ok := rs.Opaque.(int); ok {
		unix.Close(fd)
	}
}

var _ blockdev.Reopener = (*Driver)(nil)
