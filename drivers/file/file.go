// Package file implements the file protocol drivers: "file", a node
// backed by a regular file, and "host_device", one backed by a block or
// character device (QEMU's file-posix drivers of those names, which
// refuse each other's kind of file), accessed with pread/pwrite (threads,
// in QEMU's terms), optionally with O_DIRECT (cache.direct=on).
package file

import (
	"context"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/internal/statuscache"
)

func init() {
	blockdev.Register("file", fileFactory{})
	blockdev.RegisterDriver("host_device", func() blockdev.Driver { return &Driver{device: true} })
}

// fileFactory is what the package registers for "file": it opens file
// nodes and creates files. host_device nodes cannot be created (QEMU's
// host_device has no blockdev-create either).
type fileFactory struct{}

func (fileFactory) New() blockdev.Driver { return new(Driver) }
func (fileFactory) Create(ctx context.Context, cc *blockdev.CreateContext) error {
	return create(ctx, cc)
}

// maxBounce caps one bounce buffer for O_DIRECT and zero-writing fallbacks.
const maxBounce = 1 << 20

// Driver is one file node.
type Driver struct {
	fd       int
	filename string
	direct   bool
	device   bool // host_device: a block or character device, not a file
	// align is the request alignment the file needs: 1 without O_DIRECT,
	// the logical block size with it. The node's entry points align every
	// request to it (reporting it through Aligner).
	align int64

	// locks are the QEMU-compatible image locks of the node's users'
	// permissions (lock.go).
	locks lockState

	// bsc remembers the last data extent SEEK_DATA/SEEK_HOLE found, so
	// that sequential reads through an export (which ask for the status
	// of every range they read) do not pay two lseek calls each.
	bsc statuscache.Cache
}

// Open opens the file. Options: filename (required), aio, aio-max-batch,
// locking, drop-cache, x-check-cache-dropped (QEMU's pr-manager names an
// object, which qbmond does not have, and is not in its schema).
func (d *Driver) Open(ctx context.Context, oc *blockdev.OpenContext) error {
	o := oc.Options()
	name, ok, err := o.String("filename")
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("Parameter 'filename' is missing")
	}
	d.filename = name
	d.direct = oc.CacheDirect()

	aio, _, err := o.String("aio")
	if err != nil {
		return err
	}
	switch aio {
	case "", "threads", "io_uring":
		// io_uring is served by the thread pool too: same semantics.
	case "native":
		if !d.direct {
			return errors.New("aio=native was specified, but it requires cache.direct=on, which was not specified.")
		}
	default:
		return fmt.Errorf("Parameter 'aio' does not accept value '%s'", aio)
	}
	locking, _, err := o.String("locking")
	if err != nil {
		return err
	}
	switch locking {
	case "", "auto", "on", "off":
	default:
		return fmt.Errorf("Parameter 'locking' does not accept value '%s'", locking)
	}

	flags := unix.O_CLOEXEC | unix.O_RDWR
	if oc.ReadOnly() {
		flags = unix.O_CLOEXEC | unix.O_RDONLY
	}
	if d.direct {
		flags |= unix.O_DIRECT
	}
	if err, ok := fdsetOpenError(name, flags); ok {
		return err
	}
	fd, err := unix.Open(name, flags, 0)
	if err != nil && !oc.ReadOnly() && oc.AutoReadOnly() &&
		(errors.Is(err, unix.EACCES) || errors.Is(err, unix.EROFS) || errors.Is(err, unix.EPERM)) {
		flags = flags&^unix.O_RDWR | unix.O_RDONLY
		if fd, err = unix.Open(name, flags, 0); err == nil {
			oc.SetReadOnly()
		}
	}
	if err != nil {
		return fmt.Errorf("Could not open '%s': %s", name, blockdev.Strerror(err))
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return fmt.Errorf("Could not open '%s': %s", name, blockdev.Strerror(err))
	}
	switch mode := st.Mode & unix.S_IFMT; {
	case !d.device && mode != unix.S_IFREG:
		unix.Close(fd)
		return fmt.Errorf("'file' driver requires '%s' to be a regular file", name)
	case d.device && mode != unix.S_IFBLK && mode != unix.S_IFCHR:
		unix.Close(fd)
		return fmt.Errorf("'host_device' driver requires '%s' to be either a character or block device", name)
	}
	d.fd = fd
	d.align = 1
	if d.direct {
		d.align = probeAlignment(fd, &st)
	}
	if err := d.lock(locking); err != nil {
		unix.Close(fd)
		return err
	}
	return nil
}

// probeAlignment finds the request alignment O_DIRECT needs: the logical
// block size of a block device, or for a regular file the smallest read
// size the file system accepts.
func probeAlignment(fd int, st *unix.Stat_t) int64 {
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		if sz, err := unix.IoctlGetInt(fd, unix.BLKSSZGET); err == nil && sz > 0 {
			return int64(sz)
		}
	}
	buf := alignedBuf(4096)
	for _, a := range []int{512, 1024, 2048, 4096} {
		if _, err := unix.Pread(fd, buf[:a], 0); !errors.Is(err, unix.EINVAL) {
			return int64(a)
		}
	}
	return 4096
}

// alignedBuf returns n bytes aligned to 4096 in memory, as O_DIRECT needs.
func alignedBuf(n int) []byte {
	const a = 4096
	b := make([]byte, n+a)
	shift := int(uintptr(unsafe.Pointer(&b[0])) & (a - 1))
	if shift != 0 {
		shift = a - shift
	}
	return b[shift : shift+n : shift+n]
}

// FileRange maps a range to the file itself, except with O_DIRECT, where
// sendfile would go through the page cache the user asked to bypass.
func (d *Driver) FileRange(off, n int64) (int, int64, bool) {
	if d.direct {
		return 0, 0, false
	}
	return d.fd, off, true
}

// Close closes the file, which releases its locks.
func (d *Driver) Close() error {
	d.locks = lockState{}
	return unix.Close(d.fd)
}

// pread reads all of p at off; the part past the end of the file reads as
// zeroes (QEMU's behaviour for the tail of a node rounded up to 512).
func (d *Driver) pread(p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pread(d.fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			clear(p)
			return nil
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

func (d *Driver) pwrite(p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pwrite(d.fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return unix.EIO
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// checkAligned enforces the contract with the node's entry points: with
// O_DIRECT they hand the driver only requests aligned to d.align.
func (d *Driver) checkAligned(off int64, n int) error {
	if off%d.align != 0 || int64(n)%d.align != 0 {
		return fmt.Errorf("unaligned O_DIRECT request (%d+%d, alignment %d): %w", off, n, d.align, unix.EINVAL)
	}
	return nil
}

// Read reads p at off. With O_DIRECT, off and len(p) are aligned already
// and only the memory needs an aligned bounce buffer.
func (d *Driver) Read(ctx context.Context, off int64, p []byte) error {
	if !d.direct {
		return d.pread(p, off)
	}
	if err := d.checkAligned(off, len(p)); err != nil {
		return err
	}
	for len(p) > 0 {
		buf := alignedBuf(min(len(p), maxBounce))
		if err := d.pread(buf, off); err != nil {
			return err
		}
		n := copy(p, buf)
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// Write writes p at off (aligned with O_DIRECT, as for Read).
func (d *Driver) Write(ctx context.Context, off int64, p []byte, flags blockdev.ReqFlags) error {
	if !d.direct {
		return d.pwrite(p, off)
	}
	if err := d.checkAligned(off, len(p)); err != nil {
		return err
	}
	for len(p) > 0 {
		buf := alignedBuf(min(len(p), maxBounce))
		n := copy(buf, p)
		if err := d.pwrite(buf, off); err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

func (d *Driver) size() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return 0, err
	}
	return st.Size, nil
}

// WriteZeroes zeroes [off, off+n): by punching a hole with ReqMayUnmap,
// else with FALLOC_FL_ZERO_RANGE, else (without ReqNoFallback) by writing
// zero buffers.
func (d *Driver) WriteZeroes(ctx context.Context, off, n int64, flags blockdev.ReqFlags) error {
	defer d.bsc.Forget()
	if flags&blockdev.ReqMayUnmap != 0 {
		err := unix.Fallocate(d.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		if err == nil {
			return d.extendTo(off + n)
		}
	}
	if err := unix.Fallocate(d.fd, unix.FALLOC_FL_ZERO_RANGE, off, n); err == nil {
		return nil
	} else if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		return err
	}
	if flags&blockdev.ReqNoFallback != 0 {
		return blockdev.ErrNotSupported
	}
	zero := make([]byte, min(n, maxBounce))
	for n > 0 {
		chunk := min(n, int64(len(zero)))
		if err := d.Write(ctx, off, zero[:chunk], 0); err != nil {
			return err
		}
		off, n = off+chunk, n-chunk
	}
	return nil
}

// extendTo grows the file to end if it is shorter (a punched hole past
// EOF must still make the node that long). A device has its size (and
// fstat reports 0 for it).
func (d *Driver) extendTo(end int64) error {
	if d.device {
		return nil
	}
	size, err := d.size()
	if err != nil || size >= end {
		return err
	}
	return unix.Ftruncate(d.fd, end)
}

// Discard punches a hole; file systems without hole punching ignore it.
func (d *Driver) Discard(ctx context.Context, off, n int64) error {
	defer d.bsc.Forget()
	err := unix.Fallocate(d.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return nil
	}
	return err
}

// Flush calls fdatasync.
func (d *Driver) Flush(ctx context.Context) error {
	for {
		err := unix.Fdatasync(d.fd)
		if err != unix.EINTR {
			return err
		}
	}
}

// BlockStatus finds data and holes with SEEK_DATA/SEEK_HOLE. Holes (and
// the part past the end of the file) read as zeroes. Data extents are
// cached (see statusCache).
func (d *Driver) BlockStatus(ctx context.Context, off, n int64) (blockdev.BlockStatus, error) {
	cached, gen := d.bsc.Lookup(off)
	if cached > 0 {
		return blockdev.BlockStatus{Flags: blockdev.StatusData, Length: min(cached, n)}, nil
	}
	data, err := unix.Seek(d.fd, off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return blockdev.BlockStatus{Flags: blockdev.StatusZero, Length: n}, nil
	case err != nil:
		return blockdev.BlockStatus{Flags: blockdev.StatusData, Length: n}, nil
	case data > off:
		return blockdev.BlockStatus{Flags: blockdev.StatusZero, Length: min(data-off, n)}, nil
	}
	hole, err := unix.Seek(d.fd, off, unix.SEEK_HOLE)
	if err != nil || hole <= off {
		return blockdev.BlockStatus{Flags: blockdev.StatusData, Length: n}, nil
	}
	d.bsc.Fill(gen, off, hole)
	return blockdev.BlockStatus{Flags: blockdev.StatusData, Length: min(hole-off, n)}, nil
}

// Length is the file's size (the block device's for devices).
func (d *Driver) Length(ctx context.Context) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return 0, err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		n, err := unix.Seek(d.fd, 0, unix.SEEK_END)
		return n, err
	}
	return st.Size, nil
}

// Info: a file is never dirty.
func (d *Driver) Info(ctx context.Context) (blockdev.DriverInfo, error) {
	return blockdev.DriverInfo{}, nil
}

// AllocatedSize is what the file occupies on disk (st_blocks).
func (d *Driver) AllocatedSize(ctx context.Context) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// Truncate sets the file's size. A device keeps its size, as with QEMU's
// host_device: growing it fails, and so does any change when exact; a
// smaller size is otherwise accepted and changes nothing.
func (d *Driver) Truncate(ctx context.Context, size int64, exact bool) error {
	defer d.bsc.Forget()
	if !d.device {
		return unix.Ftruncate(d.fd, size)
	}
	cur, err := d.Length(ctx)
	switch {
	case err != nil:
		return err
	case size != cur && exact:
		return &sizeError{"Cannot resize device files", unix.ENOTSUP}
	case size > cur:
		return &sizeError{"Cannot grow device files", unix.EINVAL}
	}
	return nil
}

// sizeError is a refused resize: QEMU's message, and its errno.
type sizeError struct {
	msg   string
	errno unix.Errno
}

func (e *sizeError) Error() string { return e.msg }
func (e *sizeError) Unwrap() error { return e.errno }

// Protocol marks file as a protocol driver.
func (d *Driver) Protocol() {}

// ExactFilename is the file name.
func (d *Driver) ExactFilename() string { return d.filename }

// RequestAlignment is the alignment the file needs for efficient I/O (the
// logical block size with O_DIRECT, else 1). The driver handles misaligned
// requests itself by read-modify-write for now.
func (d *Driver) RequestAlignment() int64 { return d.align }

// WriteFromFile copies n bytes of the open file fd at fileOff into the
// file at off with copy_file_range: the kernel moves them (or shares
// them, on a filesystem with reflinks). Not with O_DIRECT. When the
// kernel cannot copy between the two files it says so before anything is
// written (ErrNotSupported: the caller writes a buffer); should it stop
// midway, the rest goes through a buffer. Bytes past the end of fd read
// as zeroes, as pread's do.
func (d *Driver) WriteFromFile(ctx context.Context, off, n int64, fd int, fileOff int64) error {
	if d.direct {
		return blockdev.ErrNotSupported
	}
	for done := int64(0); done < n; {
		so, do := fileOff+done, off+done
		k, err := unix.CopyFileRange(fd, &so, d.fd, &do, int(min(n-done, 1<<30)), 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil || k == 0 {
			switch err {
			case unix.EXDEV, unix.ENOSYS, unix.EOPNOTSUPP, unix.EINVAL, unix.EBADF:
				if done == 0 {
					return blockdev.ErrNotSupported
				}
			case nil:
			default:
				return err
			}
			return d.writeThroughBuffer(fd, fileOff+done, off+done, n-done)
		}
		done += int64(k)
	}
	return nil
}

// writeThroughBuffer is WriteFromFile's fallback: pread from fd (zeroes
// past its end), pwrite here.
func (d *Driver) writeThroughBuffer(fd int, fileOff, off, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		p := buf[:min(n, int64(len(buf)))]
		for got := 0; got < len(p); {
			k, err := unix.Pread(fd, p[got:], fileOff+int64(got))
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			if k == 0 {
				clear(p[got:])
				break
			}
			got += k
		}
		if err := d.pwrite(p, off); err != nil {
			return err
		}
		fileOff, off, n = fileOff+int64(len(p)), off+int64(len(p)), n-int64(len(p))
	}
	return nil
}
