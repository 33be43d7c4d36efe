package chain

import (
	"context"
	"errors"

	"github.com/qbmond/qbmond/blockdev"
)

// External snapshots (QEMU's external_snapshot_prepare/commit/abort):
// blockdev-snapshot puts an existing node without a backing node above a
// node as its overlay; blockdev-snapshot-sync first creates the overlay's
// image (qcow2 or qbm, naming the node's file as its backing file) and
// opens it. Either way every parent of the node moves to the overlay,
// whose backing node the node becomes; at commit the node is made
// read-only, at abort the parents move back.

// Snapshot is an external snapshot to take: blockdev-snapshot's
// (Overlay names the existing overlay node) or, with Sync,
// blockdev-snapshot-sync's (the overlay is created and opened).
type Snapshot struct {
	// Device and NodeName name the node to snapshot, as QEMU's
	// bdrv_lookup_bs takes them.
	Device, NodeName string
	// Overlay is blockdev-snapshot's overlay node.
	Overlay string

	// Sync makes it blockdev-snapshot-sync's: Format is the new
	// overlay's format (the command's default, qcow2, already applied),
	// SnapshotFile its image file, SnapshotNodeName its node-name if one
	// is given; Existing says the image exists already (mode existing)
	// and is not created.
	Sync                 bool
	Format, SnapshotFile string
	SnapshotNodeName     *string
	Existing             bool
}

// PrepareSnapshot prepares a blockdev-snapshot or blockdev-snapshot-sync
// action (QEMU runs each command as a transaction of one action).
func PrepareSnapshot(ctx context.Context, lk *blockdev.Locked, s Snapshot) (blockdev.TxAction, error) {
	device, nodeName := s.Device, s.NodeName
	old, err := lk.LookupBS(device, nodeName)
	if err != nil {
		return nil, err
	}
	undrain := lk.Drain(old)
	fail := func(err error) (blockdev.TxAction, error) {
		undrain()
		return nil, err
	}
	if err := old.OpBlocker(lk); err != nil {
		return fail(err)
	}
	if !old.ReadOnly() {
		undrain()
		err := lk.FlushNode(ctx, old)
		undrain = lk.Drain(old)
		if err != nil {
			return fail(errors.New("An IO error has occurred"))
		}
	}
	var overlay *blockdev.Node
	created := false
	if s.Sync {
		format := s.Format
		if nodeName != "" && s.SnapshotNodeName == nil {
			return fail(errors.New("New overlay node-name missing"))
		}
		if s.SnapshotNodeName != nil && lk.Lookup(*s.SnapshotNodeName) != nil {
			return fail(errors.New("New overlay node-name already in use"))
		}
		if !s.Existing {
			if err := blockdev.CreateImage(ctx, format, s.SnapshotFile, old.Length(), old.Filename(), old.DriverName()); err != nil {
				return fail(err)
			}
		}
		opts := blockdev.Options{"driver": format, "backing": nil,
			"file": map[string]any{"driver": "file", "filename": s.SnapshotFile}}
		if s.SnapshotNodeName != nil {
			opts["node-name"] = *s.SnapshotNodeName
		}
		if overlay, err = lk.OpenInherited(ctx, opts, old); err != nil {
			return fail(err)
		}
		created = true
	} else {
		if overlay, err = lk.LookupBS(s.Overlay, s.Overlay); err != nil {
			return fail(err)
		}
	}
	drop := func() {
		if created {
			lk.Release(overlay)
		}
	}
	if perm, _ := overlay.CumulativePerm(lk); perm&blockdev.PermConsistentRead != 0 {
		drop()
		return fail(errors.New("The overlay is already in use"))
	}
	if err := overlay.OpBlocker(lk); err != nil {
		drop()
		return fail(err)
	}
	if overlay.IsFilter() {
		drop()
		return fail(errors.New("Filters cannot be used as overlays"))
	}
	if overlay.BackingChild() != nil {
		drop()
		return fail(errors.New("The overlay already has a backing image"))
	}
	if _, ok := overlay.Driver().(blockdev.BackingUpdater); !ok {
		drop()
		return fail(errors.New("The overlay does not support backing images"))
	}
	undrain()
	if err := appendOverlay(ctx, lk, overlay, old); err != nil {
		drop()
		return nil, err
	}
	return blockdev.TxFuncs{
		OnCommit: func() {
			if err := lk.SetReadOnly(ctx, old, true); err != nil {
				lk.Log().Warn().Err(err).Str("node", old.Name()).Msg("snapshot: cannot make the old active layer read-only")
			}
		},
		OnAbort: func() {
			// The parents back to old, and old no longer the
			// overlay's backing node.
			if err := lk.ReplaceNode(ctx, overlay, old, overlay.BackingChild()); err != nil {
				lk.Log().Error().Err(err).Msg("snapshot: cannot undo the overlay")
			}
			if err := lk.SetBacking(ctx, overlay, nil); err != nil {
				lk.Log().Error().Err(err).Msg("snapshot: cannot detach the overlay's backing node")
			}
			drop()
		},
		OnClean: func() {
			if created {
				lk.Release(overlay) // unless something holds it now
			}
		},
	}, nil
}

// appendOverlay makes old the backing node of overlay and moves every
// parent of old to overlay (QEMU's bdrv_append). On failure nothing has
// changed.
func appendOverlay(ctx context.Context, lk *blockdev.Locked, overlay, old *blockdev.Node) error {
	if err := lk.SetBacking(ctx, overlay, old); err != nil {
		return err
	}
	if err := lk.ReplaceNode(ctx, old, overlay, overlay.BackingChild()); err != nil {
		if uerr := lk.SetBacking(ctx, overlay, nil); uerr != nil {
			lk.Log().Error().Err(uerr).Msg("snapshot: cannot detach the overlay's backing node")
		}
		return err
	}
	return nil
}
