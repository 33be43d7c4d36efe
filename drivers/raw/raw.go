// Package raw implements the raw format driver: the image is the content of
// its "file" child, optionally a window of it (offset, size).
package raw

import (
	"context"
	"errors"
	"fmt"

	"github.com/qbmond/qbmond/blockdev"
)

func init() {
	blockdev.RegisterDriver("raw", func() blockdev.Driver { return new(Driver) })
}

// Driver is one raw node.
type Driver struct {
	file    *blockdev.Child
	offset  int64
	size    int64
	hasSize bool
	window  bool // offset or size given: the node is not a pure pass-through
}

// window is a raw node's view of its file: offset and size.
type window struct {
	offset, size int64
	hasSize, set bool // set: offset or size given
}

// parseWindow reads offset and size and checks them against the file's
// length.
func parseWindow(o blockdev.Options, fileLen int64) (window, error) {
	off, hasOff, err := o.Int("offset")
	if err != nil {
		return window{}, err
	}
	size, hasSize, err := o.Int("size")
	if err != nil {
		return window{}, err
	}
	if off < 0 {
		return window{}, errors.New("Parameter 'offset' expects a non-negative number below 2^64")
	}
	if size < 0 {
		return window{}, errors.New("Parameter 'size' expects a non-negative number below 2^64")
	}
	w := window{off, size, hasSize, hasOff || hasSize}
	if fileLen < 0 {
		return w, nil
	}
	if off > fileLen {
		return w, fmt.Errorf("Offset (%d) cannot be greater than size of the containing file (%d)", off, fileLen)
	}
	if hasSize && fileLen-off < size {
		return w, fmt.Errorf("The sum of offset (%d) and size (%d) has to be smaller or equal to the  actual size of the containing file (%d)", off, size, fileLen)
	}
	if hasSize && size%512 != 0 {
		return w, errors.New("Specified size is not multiple of 512")
	}
	return w, nil
}

// Open attaches the file child and checks offset and size against it.
func (d *Driver) Open(ctx context.Context, oc *blockdev.OpenContext) error {
	w, err := parseWindow(oc.Options(), -1)
	if err != nil {
		return err
	}
	role := blockdev.RoleFiltered | blockdev.RolePrimary
	if w.set {
		role = blockdev.RoleData | blockdev.RolePrimary
	}
	d.file, err = oc.OpenChild(ctx, "file", role)
	if err != nil {
		return err
	}
	if w, err = parseWindow(oc.Options(), d.file.Length()); err != nil {
		return err
	}
	d.setWindow(w)
	return nil
}

func (d *Driver) setWindow(w window) {
	d.offset, d.size, d.hasSize, d.window = w.offset, w.size, w.hasSize, w.set
}

// ReopenOptions: offset and size change on reopen, and may be left out.
func (d *Driver) ReopenOptions() (changeable, resettable []string) {
	opts := []string{"offset", "size"}
	return opts, opts
}

// ReopenPrepare checks the new window against the file.
func (d *Driver) ReopenPrepare(ctx context.Context, rs *blockdev.ReopenState) error {
	w, err := parseWindow(rs.Options, d.file.Length())
	if err != nil {
		return err
	}
	rs.Opaque = w
	return nil
}

// ReopenCommit takes the new window (the graph works the node's length
// out again). The file edge keeps the role it was opened with.
func (d *Driver) ReopenCommit(rs *blockdev.ReopenState) { d.setWindow(rs.Opaque.(window)) }

// ReopenAbort has nothing to undo.
func (d *Driver) ReopenAbort(rs *blockdev.ReopenState) {}

var _ blockdev.OptionReopener = (*Driver)(nil)

// Close does nothing: the graph detaches the child.
func (d *Driver) Close() error { return nil }

// Read reads from the file child.
func (d *Driver) Read(ctx context.Context, off int64, p []byte) error {
	d.file.DebugEvent("read_aio")
	return d.file.Read(ctx, d.offset+off, p)
}

// FileRange passes the file child's mapping on, shifted by offset.
func (d *Driver) FileRange(off, n int64) (int, int64, bool) {
	return d.file.FileRange(d.offset+off, n)
}

// Write writes to the file child.
func (d *Driver) Write(ctx context.Context, off int64, p []byte, flags blockdev.ReqFlags) error {
	d.file.DebugEvent("write_aio")
	return d.file.Write(ctx, d.offset+off, p, flags)
}

// WriteFromFile passes a copy offload on to the file child.
func (d *Driver) WriteFromFile(ctx context.Context, off, n int64, fd int, fileOff int64) error {
	if _, ok := d.file.Node().Driver().(blockdev.FileWriter); !ok {
		return blockdev.ErrNotSupported // declined before any debug event
	}
	d.file.DebugEvent("write_aio")
	return d.file.WriteFromFile(ctx, d.offset+off, n, fd, fileOff)
}

// WriteZeroes zeroes on the file child.
func (d *Driver) WriteZeroes(ctx context.Context, off, n int64, flags blockdev.ReqFlags) error {
	return d.file.WriteZeroes(ctx, d.offset+off, n, flags)
}

// Discard discards on the file child.
func (d *Driver) Discard(ctx context.Context, off, n int64) error {
	return d.file.Discard(ctx, d.offset+off, n)
}

// Flush flushes the file child.
func (d *Driver) Flush(ctx context.Context) error { return d.file.Flush(ctx) }

// BlockStatus is the file child's status.
func (d *Driver) BlockStatus(ctx context.Context, off, n int64) (blockdev.BlockStatus, error) {
	return d.file.BlockStatus(ctx, d.offset+off, n)
}

// Length is size, or what the file child has after offset.
func (d *Driver) Length(ctx context.Context) (int64, error) {
	if d.hasSize {
		return d.size, nil
	}
	return max(d.file.Length()-d.offset, 0), nil
}

// Info is the file child's.
func (d *Driver) Info(ctx context.Context) (blockdev.DriverInfo, error) {
	return d.file.Node().Driver().Info(ctx)
}

// SupportedWriteFlags: raw passes every flag on to its child.
func (d *Driver) SupportedWriteFlags() blockdev.ReqFlags {
	return blockdev.ReqFUA | blockdev.ReqMayUnmap | blockdev.ReqNoFallback | blockdev.ReqWriteUnchanged
}

// Truncate resizes the file child; a window (offset or size) cannot be
// resized.
func (d *Driver) Truncate(ctx context.Context, size int64, exact bool) error {
	if d.window {
		return fmt.Errorf("cannot resize fixed-size raw disks: %w", blockdev.ErrNotSupported)
	}
	return d.file.Truncate(ctx, size, exact)
}

// ChildPerm takes QEMU's defaults for the role but asks for write and
// resize only when raw's own users need them, to avoid needless conflicts.
func (d *Driver) ChildPerm(c *blockdev.Child, role blockdev.Role, perm, shared blockdev.Perm) (blockdev.Perm, blockdev.Perm) {
	p, s := blockdev.DefaultChildPerm(role, true, perm, shared)
	const wr = blockdev.PermWrite | blockdev.PermResize
	return p&^wr | perm&wr, s
}

// StrongOptions: offset and size change what the node presents.
func (d *Driver) StrongOptions() []string { return []string{"offset", "size"} }
