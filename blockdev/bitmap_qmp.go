package blockdev

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/qbmond/qbmond/qmp"
)

// The block-dirty-bitmap-* commands. Bitmaps are found by node name (QEMU
// also accepts a device name; qbmond has no named devices).

func registerBitmapCommands(d *qmp.Dispatcher, g *Graph) {
	d.Register("block-dirty-bitmap-add", g.qmpBitmapAdd)
	d.Register("block-dirty-bitmap-remove", g.bitmapCmd(func(lk *Locked, n *Node, b *DirtyBitmap) error { return n.RemoveDirtyBitmap(lk, b.name) }))
	d.Register("block-dirty-bitmap-clear", g.bitmapCmd(func(lk *Locked, _ *Node, b *DirtyBitmap) error { return b.Clear(lk) }))
	d.Register("block-dirty-bitmap-enable", g.bitmapCmd(func(_ *Locked, _ *Node, b *DirtyBitmap) error { return b.SetRecording(true) }))
	d.Register("block-dirty-bitmap-disable", g.bitmapCmd(func(_ *Locked, _ *Node, b *DirtyBitmap) error { return b.SetRecording(false) }))
	d.Register("block-dirty-bitmap-merge", g.qmpBitmapMerge)
	d.Register("x-debug-block-dirty-bitmap-sha256", g.qmpBitmapSHA256)
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

type bitmapArgs struct {
	Node string `json:"node"`
	Name string `json:"name"`
}

// lookupBitmapArgs finds the bitmap a BlockDirtyBitmap argument names.
func (lk *Locked) lookupBitmapArgs(args json.RawMessage) (*Node, *DirtyBitmap, error) {
	var a bitmapArgs
	if err := json.Unmarshal(args, &a); err != nil {
		return nil, nil, qmp.Errorf("%v", err)
	}
	return lk.LookupBitmap(a.Node, a.Name)
}

func (g *Graph) bitmapCmd(f func(*Locked, *Node, *DirtyBitmap) error) qmp.Handler {
	return func(ctx context.Context, args json.RawMessage) (any, error) {
		return WithLock(g, func(lk *Locked) (any, error) {
			n, b, err := lk.lookupBitmapArgs(args)
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

func (g *Graph) qmpBitmapAdd(ctx context.Context, args json.RawMessage) (any, error) {
	return WithLock(g, func(lk *Locked) (any, error) {
		if _, _, err := lk.addBitmapArgs(args); err != nil {
			return nil, err
		}
		return struct{}{}, nil
	})
}

// addBitmapArgs adds the bitmap block-dirty-bitmap-add's arguments (as
// the command or as a transaction action) describe.
func (lk *Locked) addBitmapArgs(args json.RawMessage) (*Node, *DirtyBitmap, error) {
	var a struct {
		Node        string  `json:"node"`
		Name        string  `json:"name"`
		Granularity *uint64 `json:"granularity"`
		Persistent  bool    `json:"persistent"`
		Disabled    bool    `json:"disabled"`
	}
	if err := json.Unmarshal(args, &a); err != nil {
		return nil, nil, qmp.Errorf("%v", err)
	}
	o := BitmapOptions{Persistent: a.Persistent, Disabled: a.Disabled}
	if a.Granularity != nil {
		// Given as 0: refused like any other non-power of two.
		o.Granularity = max(*a.Granularity, 1)
	}
	n := lk.Lookup(a.Node)
	if n == nil {
		return nil, nil, fmt.Errorf("Cannot find device='%s' nor node-name='%s'", a.Node, a.Node)
	}
	b, err := n.AddDirtyBitmap(lk, a.Name, o)
	return n, b, err
}

// bitmapRef is BlockDirtyBitmapOrStr: a name on the target's node, or
// {node, name} anywhere.
type bitmapRef struct {
	local    string
	external *bitmapArgs
}

func (r *bitmapRef) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		return json.Unmarshal(b, &r.local)
	}
	r.external = new(bitmapArgs)
	return json.Unmarshal(b, r.external)
}

func (g *Graph) qmpBitmapMerge(ctx context.Context, args json.RawMessage) (any, error) {
	return WithLock(g, func(lk *Locked) (any, error) {
		dst, srcs, err := lk.mergeArgs(args)
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
func (lk *Locked) mergeArgs(args json.RawMessage) (*DirtyBitmap, []*DirtyBitmap, error) {
	var a struct {
		Node    string      `json:"node"`
		Target  string      `json:"target"`
		Bitmaps []bitmapRef `json:"bitmaps"`
	}
	if err := json.Unmarshal(args, &a); err != nil {
		return nil, nil, qmp.Errorf("%v", err)
	}
	n, dst, err := lk.LookupBitmap(a.Node, a.Target)
	if err != nil {
		return nil, nil, err
	}
	srcs, err := lk.resolveBitmaps(n, a.Bitmaps)
	return dst, srcs, err
}

// resolveBitmaps finds merge sources, with QEMU's errors.
func (lk *Locked) resolveBitmaps(n *Node, refs []bitmapRef) ([]*DirtyBitmap, error) {
	out := make([]*DirtyBitmap, 0, len(refs))
	for _, r := range refs {
		sn, name := n, r.local
		if r.external != nil {
			if sn = lk.Lookup(r.external.Node); sn == nil {
				return nil, fmt.Errorf("Node '%s' not found", r.external.Node)
			}
			name = r.external.Name
		}
		b := sn.DirtyBitmap(name)
		if b == nil {
			return nil, fmt.Errorf("Dirty bitmap '%s' not found", name)
		}
		out = append(out, b)
	}
	return out, nil
}

func (g *Graph) qmpBitmapSHA256(ctx context.Context, args json.RawMessage) (any, error) {
	return WithLock(g, func(lk *Locked) (any, error) {
		_, b, err := lk.lookupBitmapArgs(args)
		if err != nil {
			return nil, err
		}
		return struct {
			SHA256 string `json:"sha256"`
		}{b.bits.SHA256()}, nil
	})
}
