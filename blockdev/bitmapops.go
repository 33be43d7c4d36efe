package blockdev

import "fmt"

// The lookups and changes of the block-dirty-bitmap-* commands and
// transaction actions, with QEMU's errors (the commands themselves are
// package blockqmp's). Bitmaps are found by node name (QEMU also accepts
// a device name; qbmond has no named devices).

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

// AddBitmap adds the bitmap name with options o to the node named node,
// as block-dirty-bitmap-add (the command or the transaction action) does.
func (lk *Locked) AddBitmap(node, name string, o BitmapOptions) (*Node, *DirtyBitmap, error) {
	n := lk.Lookup(node)
	if n == nil {
		return nil, nil, fmt.Errorf("Cannot find device='%s' nor node-name='%s'", node, node)
	}
	b, err := n.AddDirtyBitmap(lk, name, o)
	return n, b, err
}

// BitmapRef names a source bitmap of a merge: without External, the
// bitmap Name of the target's node; with it, the bitmap Name of the node
// named Node.
type BitmapRef struct {
	External   bool
	Node, Name string
}

// MergeSources finds the target bitmap (target of the node named node)
// and the sources of block-dirty-bitmap-merge, with QEMU's errors.
func (lk *Locked) MergeSources(node, target string, refs []BitmapRef) (*DirtyBitmap, []*DirtyBitmap, error) {
	n, dst, err := lk.LookupBitmap(node, target)
	if err != nil {
		return nil, nil, err
	}
	srcs, err := lk.resolveBitmaps(n, refs)
	return dst, srcs, err
}

// resolveBitmaps finds merge sources, with QEMU's errors: a name alone
// is a bitmap of the target's node n, {node, name} one anywhere.
func (lk *Locked) resolveBitmaps(n *Node, refs []BitmapRef) ([]*DirtyBitmap, error) {
	out := make([]*DirtyBitmap, 0, len(refs))
	for _, r := range refs {
		sn, name := n, r.Name
		if r.External {
			if sn = lk.Lookup(r.Node); sn == nil {
				return nil, fmt.Errorf("Node '%s' not found", r.Node)
			}
		}
		b := sn.DirtyBitmap(name)
		if b == nil {
			return nil, fmt.Errorf("Dirty bitmap '%s' not found", name)
		}
		out = append(out, b)
	}
	return out, nil
}

// SHA256 returns the SHA-256 of the bitmap's bits, hex-encoded
// (x-debug-block-dirty-bitmap-sha256).
func (b *DirtyBitmap) SHA256() string { return b.st.Bits().SHA256() }
