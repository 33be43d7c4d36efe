package blockdev

import (
	"context"
	"errors"
)

// Copy offload: a job copying from one node to another (commit, mirror)
// lets the kernel move the bytes when both ends are files, with
// copy_file_range, instead of reading them into the process and writing
// them out again (QEMU's bdrv_co_copy_range). The source side maps the
// range to a file range (FileMapper, as exports' sendfile does); the
// destination side writes from that file range (FileWriter). Either side
// may decline, and the caller then copies through a buffer.

// errNoOffload stops a CopyRange whose destination declines.
var errNoOffload = errors.New("copy offload declined")

// TargetError is an error of CopyRange's destination (errors of the
// source come as they are): a job's error policy tells reads and writes
// apart.
type TargetError struct{ Err error }

func (e *TargetError) Error() string { return e.Err.Error() }
func (e *TargetError) Unwrap() error { return e.Err }

// CopyRange copies n bytes at srcOff of src's node to dstOff of dst's
// node by copy offload. ok is false, with nothing done, when the nodes
// do not allow it; the caller then reads and writes. Errors of the
// destination are TargetErrors. The write is a
// write in every other way: it needs PermWrite, passes write observers
// and marks dirty bitmaps.
func CopyRange(ctx context.Context, src *Child, srcOff int64, dst *Child, dstOff, n int64) (ok bool, err error) {
	if _, can := dst.node.Load().drv.(FileWriter); !can {
		return false, nil
	}
	mapped, err := src.node.Load().ReadFile(ctx, src, srcOff, n, func(fd int, fileOff, k int64) error {
		err := dst.node.Load().WriteFromFile(ctx, dst, dstOff, k, fd, fileOff)
		if err != nil && err != errNoOffload {
			return &TargetError{err}
		}
		return err
	})
	if errors.Is(err, errNoOffload) {
		return false, nil
	}
	return mapped, err
}

// WriteFromFile writes n bytes at off taken from the open file fd at
// fileOff, on behalf of from, through the node's entry point like Write
// (admission, permissions, observers, tracking, bitmaps,
// statistics; no detect-zeroes). It fails with errNoOffload, having done
// nothing, when the driver cannot.
func (n *Node) WriteFromFile(ctx context.Context, from *Child, off, length int64, fd int, fileOff int64) (err error) {
	fw, ok := n.drv.(FileWriter)
	if !ok || n.align > 1 {
		return errNoOffload
	}
	r := request{node: n, from: from, op: opWrite, offset: off, bytes: length, ctx: ctx}
	if err := n.begin(&r); err != nil {
		if err == errMoved {
			return from.node.Load().WriteFromFile(ctx, from, off, length, fd, fileOff)
		}
		return err
	}
	defer func() { n.end(&r, err) }()
	if length == 0 {
		return nil
	}
	marked := false
	defer func() {
		if marked {
			n.markDirty(off, length)
		}
	}()
	if n.tracking() {
		defer n.trk.Leave(n.trk.Enter(off, off+length, false))
	}
	err = fw.WriteFromFile(ctx, off, length, fd, fileOff)
	if errors.Is(err, ErrNotSupported) {
		r.abandoned = true
		return errNoOffload
	}
	marked = true
	n.stats.Wrote(off + length)
	return err
}

// WriteFromFile writes to the child node from a file range (FileWriter's
// way down a chain of drivers); ErrNotSupported when it cannot.
func (c *Child) WriteFromFile(ctx context.Context, off, n int64, fd int, fileOff int64) error {
	err := c.node.Load().WriteFromFile(ctx, c, off, n, fd, fileOff)
	if errors.Is(err, errNoOffload) {
		return ErrNotSupported
	}
	return err
}
