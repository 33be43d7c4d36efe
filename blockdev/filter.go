package blockdev

import (
	"context"
	"errors"
	"fmt"
)

// Filters are nodes that pass their one filtered child's data through
// (QEMU's is_filter drivers): copy-on-read, and the nodes block jobs put
// into a chain while they run (commit_top above the top of a passive
// commit, mirror_top above the source of an active commit, copy-on-read
// above the active layer of a stream). Backing chains are walked through
// them (QEMU's bdrv_filter_or_cow_bs), they count as a layer of their own
// in backing_file_depth and qemu:allocation-depth as in QEMU, and a
// filter a job inserts without a name is "implicit": it takes its child's
// file name, so that the views of the nodes above it do not change.

// isFilter tells whether the node's driver is a filter.
func (n *Node) isFilter() bool {
	_, ok := n.drv.(Filter)
	return ok
}

// filtered returns a filter's filtered child, nil for other nodes.
func (n *Node) filtered() *Child {
	if !n.isFilter() {
		return nil
	}
	for _, c := range n.children {
		if c.role&RoleFiltered != 0 {
			return c
		}
	}
	return nil
}

// filterOrCOW returns the child a chain continues with: a filter's
// filtered child, else the backing (COW) child.
func (n *Node) filterOrCOW() *Child {
	if f := n.filtered(); f != nil {
		return f
	}
	return n.backing()
}

// FilterOrCOW returns the next node of n's chain: the node a filter
// filters, or n's backing node (QEMU's bdrv_filter_or_cow_bs). Caller
// holds the graph lock.
func (n *Node) FilterOrCOW() *Node {
	if c := n.filterOrCOW(); c != nil {
		return c.node.Load()
	}
	return nil
}

// FilterOrCOWChild returns the edge n's chain continues with (see
// FilterOrCOW), or nil. Caller holds the graph lock.
func (n *Node) FilterOrCOWChild() *Child { return n.filterOrCOW() }

// BackingChild returns n's backing (COW) edge, or nil. Caller holds the
// graph lock.
func (n *Node) BackingChild() *Child { return n.backing() }

// IsFilter tells whether n is a filter node.
func (n *Node) IsFilter() bool { return n.isFilter() }

// ImplicitFilter tells whether n is a filter a job inserted without a
// node name of the user's (QEMU's implicit node).
func (n *Node) ImplicitFilter() bool { return n.implicitFilter }

// SkipFilters returns the first node at or below n that is not a filter
// (QEMU's bdrv_skip_filters). Caller holds the graph lock.
func (n *Node) SkipFilters() *Node {
	for n != nil && n.isFilter() {
		f := n.filtered()
		if f == nil {
			break
		}
		n = f.node.Load()
	}
	return n
}

// AppendFilter opens a filter node from opts (its driver, its options and
// its child naming n) and puts it above n: every parent of n moves to the
// filter (QEMU's bdrv_append). Without a node-name in opts the filter gets
// an automatic one and is implicit. Nothing holds the filter but the
// parents it took over; the caller adds its own edge if it needs one
// before a parent could go away. On a permission conflict nothing
// changes.
func (lk *Locked) AppendFilter(ctx context.Context, n *Node, opts Options) (*Node, error) {
	g := lk.g
	if g.closed {
		return nil, errors.New("the block layer is shutting down")
	}
	implicit := !opts.Has("node-name")
	tx := &openTx{}
	f, err := g.open(ctx, tx, opts, inherited{readOnly: n.ReadOnly()})
	if err != nil {
		g.rollback(tx)
		return nil, err
	}
	if !f.isFilter() || f.filtered() == nil || f.filtered().node.Load() != n {
		g.rollback(tx)
		return nil, fmt.Errorf("blockdev: %s is not a filter of %s", opts, n.name)
	}
	f.implicitFilter = implicit
	f.refreshFilename()
	if err := lk.ReplaceNode(ctx, n, f, f.filtered()); err != nil {
		g.rollback(tx)
		return nil, err
	}
	for _, c := range f.parents {
		if c.parent != nil {
			c.parent.refreshFilenames()
		}
	}
	g.log.Debug().Str("filter", f.name).Str("driver", f.drvName).Str("node", n.name).Msg("filter inserted")
	return f, nil
}

// RemoveFilter takes a filter out of the graph: its parents move to its
// filtered child and the filter closes once nothing else holds it
// (QEMU's bdrv_replace_node of a filter by its child).
func (lk *Locked) RemoveFilter(ctx context.Context, f *Node) error {
	g := lk.g
	c := f.filtered()
	if c == nil {
		return fmt.Errorf("blockdev: %s is not a filter", f.name)
	}
	child := c.node.Load()
	// What the filter froze for itself goes with it (QEMU's
	// bdrv_cor_filter_drop unfreezes first).
	f.unfreezeOwn()
	if err := lk.ReplaceNode(ctx, f, child, c); err != nil {
		return err
	}
	g.release(f)
	child.refreshFilenames()
	return nil
}

// CumulativePerm returns what n's users hold together and let others
// hold (QEMU's bdrv_get_cumulative_perm).
func (n *Node) CumulativePerm(_ *Locked) (perm, shared Perm) { return n.cumulative(nil) }

// IsRoot tells whether neither a node nor a job uses n (only root users
// such as exports, or nobody): QEMU's bdrv_is_root_node.
func (n *Node) IsRoot(_ *Locked) bool {
	for _, c := range n.parents {
		if c.parent != nil || c.job != "" {
			return false
		}
	}
	return true
}

// RefreshPerms recomputes the permissions n takes on its children, after
// its driver changed what ChildPerm answers (mirror_top once its job
// stops forwarding writes). Relaxing cannot fail; a tightening that
// conflicts fails without changing anything.
func (lk *Locked) RefreshPerms(n *Node) error {
	g := lk.g
	tx := newPermTx()
	if err := g.refreshPerms(n, tx); err != nil {
		tx.abort()
		return err
	}
	tx.apply()
	return nil
}
