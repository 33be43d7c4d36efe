package blockqmp

import (
	"context"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

// The block-dirty-bitmap-* commands. Bitmaps are found by node name (QEMU
// also accepts a device name; qbmond has no named devices).

func registerBitmapCommands(d *qmp.Dispatcher, h handlers) {
	qmp.RegisterTyped(d, "block-dirty-bitmap-add", h.bitmapAdd)
	qmp.RegisterTyped(d, "block-dirty-bitmap-remove", h.bitmapCmd(func(lk *blockdev.Locked, n *blockdev.Node, b *blockdev.DirtyBitmap) error {
		return n.RemoveDirtyBitmap(lk, b.Name())
	}))
	qmp.RegisterTyped(d, "block-dirty-bitmap-clear", h.bitmapCmd(func(lk *blockdev.Locked, _ *blockdev.Node, b *blockdev.DirtyBitmap) error { return b.Clear(lk) }))
	qmp.RegisterTyped(d, "block-dirty-bitmap-enable", h.bitmapCmd(func(_ *blockdev.Locked, _ *blockdev.Node, b *blockdev.DirtyBitmap) error { return b.SetRecording(true) }))
	qmp.RegisterTyped(d, "block-dirty-bitmap-disable", h.bitmapCmd(func(_ *blockdev.Locked, _ *blockdev.Node, b *blockdev.DirtyBitmap) error {
		return b.SetRecording(false)
	}))
	qmp.RegisterTyped(d, "block-dirty-bitmap-merge", h.bitmapMerge)
	qmp.RegisterTyped(d, "x-debug-block-dirty-bitmap-sha256", h.bitmapSHA256)
}

func (h handlers) bitmapCmd(f func(*blockdev.Locked, *blockdev.Node, *blockdev.DirtyBitmap) error) func(context.Context, *qapi.BlockDirtyBitmap) (*qapi.Empty, error) {
	return func(ctx context.Context, a *qapi.BlockDirtyBitmap) (*qapi.Empty, error) {
		return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (*qapi.Empty, error) {
			n, b, err := lk.LookupBitmap(a.Node, a.Name)
			if err != nil {
				return nil, err
			}
			if err := f(lk, n, b); err != nil {
				return nil, err
			}
			return nil, nil
		})
	}
}

func (h handlers) bitmapAdd(ctx context.Context, a *qapi.BlockDirtyBitmapAdd) (*qapi.Empty, error) {
	return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (*qapi.Empty, error) {
		if _, _, err := lk.AddBitmap(a.Node, a.Name, bitmapOptions(a)); err != nil {
			return nil, err
		}
		return nil, nil
	})
}

// bitmapOptions are the options block-dirty-bitmap-add's arguments (as
// the command or as a transaction action) give.
func bitmapOptions(a *qapi.BlockDirtyBitmapAdd) blockdev.BitmapOptions {
	o := blockdev.BitmapOptions{Persistent: qapi.Deref(a.Persistent), Disabled: qapi.Deref(a.Disabled)}
	if a.Granularity != nil {
		// Given as 0: refused like any other non-power of two.
		o.Granularity = max(uint64(*a.Granularity), 1)
	}
	return o
}

// bitmapRefs are block-dirty-bitmap-merge's sources: a name alone is a
// bitmap of the target's node, {node, name} one anywhere.
func bitmapRefs(refs []qapi.BlockDirtyBitmapOrStr) []blockdev.BitmapRef {
	out := make([]blockdev.BitmapRef, 0, len(refs))
	for _, r := range refs {
		ref := blockdev.BitmapRef{Name: qapi.Deref(r.Local)}
		if r.External != nil {
			ref = blockdev.BitmapRef{External: true, Node: r.External.Node, Name: r.External.Name}
		}
		out = append(out, ref)
	}
	return out
}

func (h handlers) bitmapMerge(ctx context.Context, a *qapi.BlockDirtyBitmapMerge) (*qapi.Empty, error) {
	return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (*qapi.Empty, error) {
		dst, srcs, err := lk.MergeSources(a.Node, a.Target, bitmapRefs(a.Bitmaps))
		if err != nil {
			return nil, err
		}
		if err := dst.MergeInto(lk, srcs); err != nil {
			return nil, err
		}
		return nil, nil
	})
}

func (h handlers) bitmapSHA256(ctx context.Context, a *qapi.BlockDirtyBitmap) (*qapi.BlockDirtyBitmapSha256, error) {
	return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (*qapi.BlockDirtyBitmapSha256, error) {
		_, b, err := lk.LookupBitmap(a.Node, a.Name)
		if err != nil {
			return nil, err
		}
		return &qapi.BlockDirtyBitmapSha256{SHA256: b.SHA256()}, nil
	})
}
