// Package chain holds the backing-chain operations that are policy over
// the graph's primitives: walking a chain (InChain, FindOverlay), dropping
// its intermediate layers (QEMU's bdrv_drop_intermediate and the
// drop-intermediate command), rewriting an image's backing file reference
// (change-backing-file) and external snapshots (blockdev-snapshot and
// blockdev-snapshot-sync as transaction actions), each with QEMU's checks,
// in QEMU's order, with QEMU's errors. It is built on blockdev's exported
// API: the edge and header changes it composes (Locked.SwitchBacking,
// RewriteBackingFile, SetBacking, ReplaceNode, SetReadOnly, Drain,
// OpenInherited, Release, AdoptInheritance) are the core's, atomic and
// drained there; what to check, what to change and in which order is
// decided here. Every function takes the *blockdev.Locked that proves the
// graph lock is held.
//
// The structural operations that need node internals stay in package
// blockdev: draining, op blockers, SetBacking, ReplaceNode, filter
// insertion and removal, reopen and chain freezing (see blockdev/doc.go).
package chain

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/qbmond/qbmond/blockdev"
)

// FindOverlay returns the node of active's chain whose next node (through
// filters and backing links) is n: QEMU's bdrv_find_overlay. It returns
// nil when n is active or not in its chain.
func FindOverlay(_ *blockdev.Locked, active, n *blockdev.Node) *blockdev.Node {
	if active == nil || n == nil || active == n {
		return nil
	}
	for cur := active; cur != nil; cur = cur.FilterOrCOW() {
		if cur.FilterOrCOW() == n {
			return cur
		}
	}
	return nil
}

// InChain tells whether n is active or a node of its chain, filters
// included (QEMU's bdrv_chain_contains).
func InChain(_ *blockdev.Locked, active, n *blockdev.Node) bool {
	for cur := active; cur != nil; cur = cur.FilterOrCOW() {
		if cur == n {
			return true
		}
	}
	return false
}

// backingRef is what a header records for base: the given name, else
// base's file name, and base's driver when it is a format node.
func backingRef(base *blockdev.Node, filename string) (string, string) {
	if base == nil {
		return "", ""
	}
	if filename == "" {
		filename = base.Filename()
	}
	format := ""
	if _, proto := base.Driver().(blockdev.ProtocolDriver); !proto {
		format = base.DriverName()
	}
	return filename, format
}

// ChangeBackingFile rewrites the backing file reference in n's image
// header (QEMU's bdrv_change_backing_file) and updates the node's file
// names in the query views; the backing node itself stays. A read-only n
// is reopened read-write for the rewrite and read-only again afterwards,
// as QEMU's change-backing-file does. A driver without BackingChanger
// fails with ErrNotSupported.
func ChangeBackingFile(ctx context.Context, lk *blockdev.Locked, n *blockdev.Node, filename, format string) error {
	return writable(ctx, lk, n, func() error { return lk.RewriteBackingFile(ctx, n, filename, format) }, nil)
}

// writable runs f with n read-write: a read-only n is reopened read-write
// before and read-only again after. A failure to go back is f's error
// when f succeeded, else it goes to warn (nil: dropped).
func writable(ctx context.Context, lk *blockdev.Locked, n *blockdev.Node, f func() error, warn func(error)) error {
	ro := n.ReadOnly()
	if ro {
		if err := lk.SetReadOnly(ctx, n, false); err != nil {
			return err
		}
	}
	err := f()
	if ro {
		if rerr := lk.SetReadOnly(ctx, n, true); rerr != nil {
			if err == nil && warn == nil {
				err = rerr
			} else if warn != nil {
				warn(rerr)
			}
		}
	}
	return err
}

// DropIntermediate removes the nodes from top down to (excluding) base from
// active's backing chain, as QEMU's bdrv_drop_intermediate: the overlay of
// top gets base as its backing node (nil: none) and its image header names
// base (backingFile, or base's file name when empty; base's driver as the
// format when base is a format node). Every other node whose backing node
// top is (an overlay outside active's chain, such as a node a stream made
// point at a commit's filter) is switched to base the same way, after
// active's overlay. The dropped nodes leave the chain: implicit ones
// close, blockdev-add'ed ones stay until blockdev-del. The checks of an
// overlay come before its switch, and a failure leaves it as it was; each
// overlay is drained around its switch and, when read-only, reopened
// read-write for the header rewrite. Op blockers are not consulted (the
// job that calls it holds them); the drop-intermediate command checks
// them.
func DropIntermediate(ctx context.Context, lk *blockdev.Locked, active, top, base *blockdev.Node, backingFile string) error {
	if err := checkDrop(lk, active, top, base); err != nil {
		return err
	}
	overlays := []*blockdev.Node{FindOverlay(lk, active, top)}
	for _, c := range slices.Backward(top.Parents()) { // oldest first
		if p := c.Parent(); p != nil && c.Role()&blockdev.RoleCOW != 0 && c.Name() == "backing" && !slices.Contains(overlays, p) {
			overlays = append(overlays, p)
		}
	}
	name, format := backingRef(base, backingFile)
	inherit := lk.AdoptInheritance(base, top)
	for _, overlay := range overlays {
		if err := dropOverlay(ctx, lk, overlay, base, name, format); err != nil {
			return err
		}
	}
	inherit()
	lk.Release(top)
	lk.Log().Debug().Str("overlay", overlays[0].Name()).Str("top", top.Name()).Msg("intermediate nodes dropped")
	return nil
}

// dropOverlay is DropIntermediate's switch of one overlay to base.
func dropOverlay(ctx context.Context, lk *blockdev.Locked, overlay, base *blockdev.Node, name, format string) error {
	if _, ok := overlay.Driver().(blockdev.BackingChanger); !ok {
		return fmt.Errorf("Could not update backing file link: %s", blockdev.Strerror(blockdev.ErrNotSupported))
	}
	if _, canUpdate := overlay.Driver().(blockdev.BackingUpdater); base == nil && !canUpdate {
		return fmt.Errorf("Driver '%s' of node '%s' does not support backing files", overlay.DriverName(), overlay.Name())
	}
	return writable(ctx, lk, overlay, func() error {
		return lk.SwitchBacking(ctx, overlay, base, name, format)
	}, func(err error) {
		lk.Log().Warn().Str("node", overlay.Name()).Err(err).Msg("reopening read-only")
	})
}

// checkDrop checks that top lies strictly below active and base strictly
// below top in active's backing chain.
func checkDrop(lk *blockdev.Locked, active, top, base *blockdev.Node) error {
	if active == nil || top == nil {
		return errors.New("drop-intermediate: missing node")
	}
	if top == active {
		return fmt.Errorf("Top image file %s is the active layer", top.Name())
	}
	if !InChain(lk, active, top) {
		return fmt.Errorf("'%s' is not in this backing file chain", top.Name())
	}
	if base != nil && (base == top || !InChain(lk, top, base)) {
		return fmt.Errorf("'%s' is not in this backing file chain", base.Name())
	}
	return nil
}

// CheckDropUsers is the drop-intermediate command's check that nothing
// but the chain uses the nodes to be dropped (from top down to, excluding,
// base) and that no operation blocks them, active or base.
func CheckDropUsers(lk *blockdev.Locked, active, top, base *blockdev.Node) error {
	for _, n := range []*blockdev.Node{active, base} {
		if n != nil {
			if err := n.Blocker(lk); err != nil {
				return err
			}
		}
	}
	overlay := FindOverlay(lk, active, top)
	for cur, above := top, overlay; cur != nil && cur != base; cur, above = cur.FilterOrCOW(), cur {
		if err := cur.Blocker(lk); err != nil {
			return err
		}
		for _, c := range cur.Parents() {
			p := c.Parent()
			if p == above && c == above.FilterOrCOWChild() {
				continue
			}
			if p != nil && c.Role()&blockdev.RoleCOW != 0 {
				return fmt.Errorf("Node '%s' is busy: node is used as backing hd of '%s'", cur.Name(), p.Name())
			}
			return fmt.Errorf("Node '%s' is busy: node is used by %s", cur.Name(), c.ParentDesc())
		}
	}
	return nil
}
