package blockdev

import (
	"context"
	"fmt"

	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

// The block-dirty-bitmap-* commands. Bitmaps are found by node name (QEMU
// also accepts a device name; qbmond has no named devices).

func registerBitmapCommands(d *qmp.Dispatcher, g *Graph) {
	qmp.RegisterTyped(d, "block-dirty-bitmap-add", g.qmpBitmapAdd)
	qmp.RegisterTyped(d, "block-dirty-bitmap-remove", g.bitmapCmd(func(lk *Locked, n *Node, b *DirtyBitmap) error { return n.RemoveDirtyBitmap(lk, b.name) }))
	qmp.RegisterTyped(d, "block-dirty-bitmap-clear", g.bitmapCmd(func(lk *Locked, _ *Node, b *DirtyBitmap) error { return b.Clear(lk) }))
	qmp.RegisterTyped(d, "block-dirty-bitmap-enable", g.bitmapCmd(func(_ *Locked, _ *Node, b *DirtyBitmap) error { return b.SetRecording(true) }))
	qmp.RegisterTyped(d, "block-dirty-bitmap-disable", g.bitmapCmd(func(_ *Locked, _ *Node, b *DirtyBitmap) error { return b.SetRecording(false) }))
	qmp.RegisterTyped(d, "block-dirty-bitmap-merge", g.qmpBitmapMerge)
	qmp.RegisterTyped(d, "x-debug-block-dirty-bitmap-sha256", g.qmpBitmapSHA256)
}

// LookupBitmap finds a node's bitmap with QEMU's errors.
func (lk *Locked) LookupBitmap(node, name string) (*Node, *DirtyBitmap, error) {
	n := lk.Lookup(node)
	if n == nil {
		return nil, nil, fmt.Errorf("Node '%s' not found", node)
	}
	b := n.DirtyBitmap(name)
	if b == nil {
		return nil, nil, fmt.Errorf("Dirty bitmap '%s' not found", name)
	}
	return n, b, nil
}

func (g *Graph) bitmapCmd(f func(*Locked, *Node, *DirtyBitmap) error) func(context.Context, *qapi.BlockDirtyBitmap) (any, error) {
	return func(ctx context.Context, a *qapi.BlockDirtyBitmap) (any, error) {
		return WithLock(g, func(lk *Locked) (any, error) {
			n, b, err := lk.LookupBitmap(a.Node, a.Name)
			if err != nil {
				return nil, err
			}
			if err := f(lk, n, b); err != nil {
				return nil, err
			}
			return struct{}{}, nil
		})
	}
}

func (g *Graph) qmpBitmapAdd(ctx context.Context, a *qapi.BlockDirtyBitmapAdd) (any, error) {
	return WithLock(g, func(lk *Locked) (any, error) {
		if _, _, err := lk.addBitmapArgs(a); err != nil {
			return nil, err
		}
		return struct{}{}, nil
	})
}

// addBitmapArgs adds the bitmap block-dirty-bitmap-add's arguments (as
// the command or as a transaction action) describe.
func (lk *Locked) addBitmapArgs(a *qapi.BlockDirtyBitmapAdd) (*Node, *DirtyBitmap, error) {
	o := BitmapOptions{Persistent: qapi.Deref(a.Persistent), Disabled: qapi.Deref(a.Disabled)}
	if a.Granularity != nil {
		// Given as 0: refused like any other non-power of two.
		o.Granularity = max(uint64(*a.Granularity), 1)
	}
	n := lk.Lookup(a.Node)
	if n == nil {
		return nil, nil, fmt.Errorf("Cannot find device='%s' nor node-name='%s'", a.Node, a.Node)
	}
	b, err := n.AddDirtyBitmap(lk, a.Name, o)
	return n, b, err
}

func (g *Graph) qmpBitmapMerge(ctx context.Context, a *qapi.BlockDirtyBitmapMerge) (any, error) {
	return WithLock(g, func(lk *Locked) (any, error) {
		dst, srcs, err := lk.mergeArgs(a)
		if err != nil {
			return nil, err
		}
		if err := dst.MergeInto(lk, srcs); err != nil {
			return nil, err
		}
		return struct{}{}, nil
	})
}

// mergeArgs finds the target and the sources block-dirty-bitmap-merge's
// arguments name.
func (lk *Locked) mergeArgs(a *qapi.BlockDirtyBitmapMerge) (*DirtyBitmap, []*DirtyBitmap, error) {
	n, dst, err := lk.LookupBitmap(a.Node, a.Target)
	if err != nil {
		return nil, nil, err
	}
	srcs, err := lk.resolveBitmaps(n, a.Bitmaps)
	return dst, srcs, err
}

// resolveBitmaps finds merge sources, with QEMU's errors: a name alone
// is a bitmap of the target's node n, {node, name} one anywhere.
func (lk *Locked) resolveBitmaps(n *Node, refs []qapi.BlockDirtyBitmapOrStr) ([]*DirtyBitmap, error) {
	out := make([]*DirtyBitmap, 0, len(refs))
	for _, r := range refs {
		sn, name := n, qapi.Deref(r.Local)
		if r.External != nil {
			if sn = lk.Lookup(r.External.Node); sn == nil {
				return nil, fmt.Errorf("Node '%s' not found", r.External.Node)
			}
			name = r.External.Name
		}
		b := sn.DirtyBitmap(name)
		if b == nil {
			return nil, fmt.Errorf("Dirty bitmap '%s' not found", name)
		}
		out = append(out, b)
	}
	return out, nil
}

func (g *Graph) qmpBitmapSHA256(ctx context.Context, a *qapi.BlockDirtyBitmap) (any, error) {
	return WithLock(g, func(lk *Locked) (any, error) {
		_, b, err := lk.LookupBitmap(a.Node, a.Name)
		if err != nil {
			return nil, err
		}
		return struct {
			SHA256 string `json:"sha256"`
		}{b.bits.SHA256()}, nil
	})
}
