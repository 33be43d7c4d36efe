package file

import (
	"context"
	"errors"
	"fmt"
	"math"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/qbmond/qbmond/blockdev"
)

// Linux ioctls and flags x/sys/unix does not define.
const (
	fsIocFSGetXattr = 0x801c581f // FS_IOC_FSGETXATTR: _IOR('X', 31, struct fsxattr)
	fsIocFSSetXattr = 0x401c5820 // FS_IOC_FSSETXATTR: _IOW('X', 32, struct fsxattr)
	fsXflagExtsize  = 0x800      // FS_XFLAG_EXTSIZE
	fsNocowFl       = 0x00800000 // FS_NOCOW_FL
)

// fsxattr is the kernel's struct fsxattr.
type fsxattr struct {
	Xflags     uint32
	Extsize    uint32
	Nextents   uint32
	Projid     uint32
	Cowextsize uint32
	Pad        [8]byte
}

// create is blockdev-create for the file driver (BlockdevCreateOptionsFile:
// filename, size, preallocation, nocow, extent-size-hint), in QEMU's
// steps: open the file creating it but without truncating, take the
// write and resize permissions with the image locks (not sharing resize)
// and check nobody else holds them, then empty the file, set its flags,
// and grow it to size with the preallocation asked for. What comes before
// the emptying cannot block for long and runs before blockdev-create
// replies, as in QSD; the rest runs in the background.
func create(ctx context.Context, cc *blockdev.CreateContext) (err error) {
	o := cc.Options()
	name, _, err := o.String("filename")
	if err != nil {
		return err
	}
	size, _, err := o.Int("size")
	if err != nil {
		return err
	}
	prealloc, ok, err := o.String("preallocation")
	if err != nil {
		return err
	}
	if !ok {
		prealloc = "off"
	}
	nocow, err := o.Bool("nocow", false)
	if err != nil {
		return err
	}
	hint, ok, err := o.Int("extent-size-hint")
	if err != nil {
		return err
	}
	if !ok {
		hint = 1 << 20
	}
	if uint64(hint) > math.MaxUint32 {
		return errors.New("Extent size hint is too large")
	}

	if ferr, ok := fdsetOpenError(name, unix.O_RDWR|unix.O_CREAT); ok {
		return ferr
	}
	fd, err := unix.Open(name, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("Could not create '%s': %s", name, blockdev.Strerror(err))
	}
	defer func() {
		if cerr := unix.Close(fd); cerr != nil && err == nil {
			err = fmt.Errorf("Could not close the new file: %s", blockdev.Strerror(cerr))
		}
	}()
	if err = createLock(fd, name); err != nil {
		return err
	}
	blockdev.Background(ctx)

	if err = unix.Ftruncate(fd, 0); err != nil {
		return fmt.Errorf("Could not resize file: %s", blockdev.Strerror(err))
	}
	if nocow {
		// An optimisation for copy-on-write file systems; failures are
		// ignored, as QEMU does.
		if flags, gerr := unix.IoctlGetInt(fd, unix.FS_IOC_GETFLAGS); gerr == nil {
			_ = unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, flags|fsNocowFl)
		}
	}
	if hint != 0 {
		// Extent size hints exist on some file systems (XFS); elsewhere
		// the hint is dropped silently.
		var attr fsxattr
		if ioctlPtr(fd, fsIocFSGetXattr, unsafe.Pointer(&attr)) == nil {
			attr.Xflags |= fsXflagExtsize
			attr.Extsize = uint32(hint)
			_ = ioctlPtr(fd, fsIocFSSetXattr, unsafe.Pointer(&attr))
		}
	}
	return createResize(ctx, fd, size, prealloc)
}

func ioctlPtr(fd int, req uintptr, p unsafe.Pointer) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p)); e != 0 {
		return e
	}
	return nil
}

// createLock takes the create function's image locks on the new file,
// write and resize without sharing resize, as QEMU's file creation does,
// and checks that no other open file stands in the way. The locks go
// with the descriptor.
func createLock(fd int, name string) error {
	d := &Driver{fd: fd, filename: name, locks: lockState{on: true, shared: blockdev.PermAll}}
	return d.CheckPerm(blockdev.PermWrite|blockdev.PermResize, blockdev.PermAll&^blockdev.PermResize)
}

// createResize grows the emptied file to size: sparse (off, with the first
// block written, as QEMU does to help later alignment probing), allocated
// (falloc), or written with zeros and synced (full).
func createResize(ctx context.Context, fd int, size int64, prealloc string) error {
	switch prealloc {
	case "off":
		if err := unix.Ftruncate(fd, size); err != nil {
			return fmt.Errorf("Could not resize file: %s", blockdev.Strerror(err))
		}
		if size > 0 {
			n := 4096
			if size < 4096 {
				n = 512
			}
			_, _ = unix.Pwrite(fd, make([]byte, n), 0) // best effort, as QEMU's
		}
		return nil
	case "falloc":
		if size == 0 {
			return nil
		}
		err := unix.Fallocate(fd, 0, 0, size)
		if errors.Is(err, unix.EOPNOTSUPP) {
			// posix_fallocate's fallback: write the zeros.
			err = createWriteZeros(ctx, fd, 0, size)
		}
		if err != nil {
			return fmt.Errorf("Could not preallocate new data: %s", blockdev.Strerror(err))
		}
		return nil
	case "full":
		if err := unix.Ftruncate(fd, size); err != nil {
			return fmt.Errorf("Could not resize file: %s", blockdev.Strerror(err))
		}
		if err := createWriteZeros(ctx, fd, 0, size); err != nil {
			if ctx.Err() != nil {
				return err
			}
			return fmt.Errorf("Could not write zeros for preallocation: %s", blockdev.Strerror(err))
		}
		if err := unix.Fsync(fd); err != nil {
			return fmt.Errorf("Could not flush file to disk: %s", blockdev.Strerror(err))
		}
		return nil
	}
	return fmt.Errorf("Unsupported preallocation mode: %s", prealloc)
}

// createWriteZeros writes zeros over [off, end) in 64 KiB pieces, stopping
// early when ctx is cancelled (a job cancelled with force).
func createWriteZeros(ctx context.Context, fd int, off, end int64) error {
	buf := make([]byte, 64<<10)
	for off < end {
		if err := ctx.Err(); err != nil {
			return err
		}
		p := buf[:min(int64(len(buf)), end-off)]
		n, err := unix.Pwrite(fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		off += int64(n)
	}
	return nil
}
