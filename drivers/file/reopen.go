package file

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/qbmond/qbmond/blockdev"
)

// reopened is a prepared reopen: the new descriptor and its settings.
type reopened struct {
	fd     int
	direct bool
	align  int64
}

// ReopenOptions: drop-cache and x-check-cache-dropped are QEMU's reopen
// options of a file node (the page cache is not dropped here: a reopen
// keeps the data the cache holds, which is the file's); only the latter
// may be left out.
func (d *Driver) ReopenOptions() (changeable, resettable []string) {
	return []string{"drop-cache", "x-check-cache-dropped"}, []string{"x-check-cache-dropped"}
}

// ReopenPrepare opens the file again with the requested access mode and
// cache.direct setting; the node keeps using its descriptor until
// ReopenCommit.
func (d *Driver) ReopenPrepare(ctx context.Context, rs *blockdev.ReopenState) error {
	for _, k := range []string{"drop-cache", "x-check-cache-dropped"} {
		if _, err := rs.Options.Bool(k, false); err != nil {
			return err
		}
	}
	flags := unix.O_CLOEXEC | unix.O_RDWR
	if rs.ReadOnly {
		flags = unix.O_CLOEXEC | unix.O_RDONLY
	}
	if rs.CacheDirect {
		flags |= unix.O_DIRECT
	}
	fd, err := unix.Open(d.filename, flags, 0)
	if err != nil {
		return fmt.Errorf("Could not reopen file: %s", blockdev.Strerror(err))
	}
	r := &reopened{fd: fd, direct: rs.CacheDirect, align: 1}
	if r.direct {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return fmt.Errorf("Could not reopen file: %s", blockdev.Strerror(err))
		}
		r.align = probeAlignment(fd, &st)
	}
	rs.Opaque = r
	return nil
}

// ReopenCommit switches to the new descriptor. Image locks belong to an
// open file description, so the new one takes the locks the node holds
// before the old one, and with it its locks, is closed.
func (d *Driver) ReopenCommit(rs *blockdev.ReopenState) {
	r := rs.Opaque.(*reopened)
	old := d.fd
	d.fd, d.direct, d.align = r.fd, r.direct, r.align
	d.locks.heldPerm, d.locks.heldUnshared = 0, 0
	if d.locks.on {
		_ = d.applyLocks(d.locks.perm, ^d.locks.shared, true)
	}
	unix.Close(old)
	d.bsc.Forget()
}

// ReopenAbort closes the descriptor ReopenPrepare opened.
func (d *Driver) ReopenAbort(rs *blockdev.ReopenState) {
	if r, ok := rs.Opaque.(*reopened); ok {
		unix.Close(r.fd)
	}
}

var _ blockdev.OptionReopener = (*Driver)(nil)
