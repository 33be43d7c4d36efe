package exports

import (
	"context"
	"math"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/nbd"
)

// nodeBackend serves a node through an export's root edge: every request
// passes the node's I/O entry points with the export's permissions.
type nodeBackend struct {
	// root is the export's edge; its node may change under the export
	// (an active commit's pivot moves it to the base).
	root         *blockdev.Child
	writable     bool
	writethrough bool // every write is FUA (the export's write cache is off)
	bitmaps      []*blockdev.DirtyBitmap
}

var (
	_ nbd.Backend       = (*nodeBackend)(nil)
	_ nbd.FileReader    = (*nodeBackend)(nil)
	_ nbd.BitmapBackend = (*nodeBackend)(nil)
)

// DirtyStatus reports whether [off, ...) is dirty in the i-th exported
// bitmap and for how long (whole granules, cut at length).
func (b *nodeBackend) DirtyStatus(ctx context.Context, i int, off, length int64) (bool, int64, error) {
	start, n, ok := b.bitmaps[i].Bits().NextDirtyArea(off, length)
	switch {
	case !ok:
		return false, length, nil
	case start > off:
		return false, start - off, nil
	}
	return true, n, nil
}

func (b *nodeBackend) Size() int64    { return b.root.Node().Length() }
func (b *nodeBackend) ReadOnly() bool { return !b.writable }

func (b *nodeBackend) ReadAt(ctx context.Context, p []byte, off int64) error {
	return b.root.Node().Read(ctx, b.root, off, p)
}

// ReadFile lets the NBD server send data with sendfile when the node's
// bytes are a file's (raw over file without O_DIRECT).
func (b *nodeBackend) ReadFile(ctx context.Context, off, length int64, send func(fd int, fileOff, n int64) error) (bool, error) {
	return b.root.Node().ReadFile(ctx, b.root, off, length, send)
}

func (b *nodeBackend) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	var f blockdev.ReqFlags
	if fua || b.writethrough {
		f |= blockdev.ReqFUA
	}
	return b.root.Node().Write(ctx, b.root, off, p, f)
}

func (b *nodeBackend) WriteZeroes(ctx context.Context, off, length int64, mayTrim, fastZero bool) error {
	var f blockdev.ReqFlags
	if mayTrim {
		f |= blockdev.ReqMayUnmap
	}
	if fastZero {
		f |= blockdev.ReqNoFallback
	}
	if b.writethrough {
		f |= blockdev.ReqFUA
	}
	return b.root.Node().WriteZeroes(ctx, b.root, off, length, f)
}

func (b *nodeBackend) Trim(ctx context.Context, off, length int64) error {
	return b.root.Node().Discard(ctx, b.root, off, length)
}

func (b *nodeBackend) Flush(ctx context.Context) error { return b.root.Node().Flush(ctx, b.root) }

// Cache is advisory; the node has no cache to fill that reads would not.
func (b *nodeBackend) Cache(context.Context, int64, int64) error { return nil }

// BlockStatus is the status through the backing chain (base:allocation
// shows what a reader gets).
func (b *nodeBackend) BlockStatus(ctx context.Context, off, length int64) (nbd.Extent, error) {
	st, _, err := b.root.Node().BlockStatusAbove(ctx, b.root, off, length)
	if err != nil {
		return nbd.Extent{}, err
	}
	return nbd.Extent{
		Length: st.Length,
		Hole:   st.Flags&blockdev.StatusData == 0,
		Zero:   st.Flags&blockdev.StatusZero != 0,
	}, nil
}

// AllocationDepth reports which layer of the backing chain holds the
// data: 1 the node itself, 2 its backing node, ..., 0 none.
func (b *nodeBackend) AllocationDepth(ctx context.Context, off, length int64) (uint32, int64, error) {
	st, depth, err := b.root.Node().BlockStatusAbove(ctx, b.root, off, length)
	if err != nil {
		return 0, 0, err
	}
	return uint32(depth), st.Length, nil
}

// BlockSizes advertises what QEMU does: the node's request alignment as
// the minimum, at least 4 KiB as preferred, and as the largest request the
// node's transfer limit (none: 2^31-1) rounded down to the alignment, at
// most 32 MiB.
func (b *nodeBackend) BlockSizes() (minimum, preferred, maximum uint32) {
	n := b.root.Node()
	align := max(n.RequestAlignment(), 1)
	limit := int64(math.MaxInt32)
	if m := n.MaxTransfer(); m > 0 {
		limit = min(limit, m)
	}
	limit -= limit % align
	return uint32(align), uint32(max(4096, align)), uint32(min(limit, 32<<20))
}

// CanMultiConn: QSD 7.2 advertises multi-conn on every export, writable
// ones included: all connections reach the same node, whose writes are
// visible to every reader at once and whose flush covers them all.
func (b *nodeBackend) CanMultiConn() bool { return true }
