package blockdev

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/rs/zerolog"
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
func (lk *Locked) PrepareSnapshot(ctx context.Context, s Snapshot) (TxAction, error) {
	g := lk.g
	device, nodeName := s.Device, s.NodeName
	old, err := lk.LookupBS(device, nodeName)
	if err != nil {
		return nil, err
	}
	undrain := lk.Drain(old)
	fail := func(err error) (TxAction, error) {
		undrain()
		return nil, err
	}
	if err := old.opBlocker(lk); err != nil {
		return fail(err)
	}
	if !old.ReadOnly() {
		undrain()
		err := old.flushAll(ctx)
		undrain = lk.Drain(old)
		if err != nil {
			return fail(errors.New("An IO error has occurred"))
		}
	}
	var overlay *Node
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
			if err := CreateImage(ctx, format, s.SnapshotFile, old.Length(), old.Filename(), old.drvName); err != nil {
				return fail(err)
			}
		}
		opts := Options{"driver": format, "backing": nil,
			"file": map[string]any{"driver": "file", "filename": s.SnapshotFile}}
		if s.SnapshotNodeName != nil {
			opts["node-name"] = *s.SnapshotNodeName
		}
		tx := &openTx{}
		overlay, err = g.open(ctx, tx, opts, inherited{readOnly: old.ReadOnly(), autoReadOnly: old.autoReadOnly,
			cacheDirect: old.cacheDirect, noFlush: old.noFlush})
		if err != nil {
			g.rollback(tx)
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
			g.release(overlay)
		}
	}
	if perm, _ := overlay.cumulative(nil); perm&PermConsistentRead != 0 {
		drop()
		return fail(errors.New("The overlay is already in use"))
	}
	if err := overlay.opBlocker(lk); err != nil {
		drop()
		return fail(err)
	}
	if overlay.isFilter() {
		drop()
		return fail(errors.New("Filters cannot be used as overlays"))
	}
	if overlay.backing() != nil {
		drop()
		return fail(errors.New("The overlay already has a backing image"))
	}
	if _, ok := overlay.drv.(BackingUpdater); !ok {
		drop()
		return fail(errors.New("The overlay does not support backing images"))
	}
	undrain()
	if err := lk.appendOverlay(ctx, overlay, old); err != nil {
		drop()
		return nil, err
	}
	return txFunc{
		onCommit: func() {
			if err := lk.SetReadOnly(ctx, old, true); err != nil {
				g.log.Warn().Err(err).Str("node", old.name).Msg("snapshot: cannot make the old active layer read-only")
			}
		},
		onAbort: func() {
			// The parents back to old, and old no longer the
			// overlay's backing node.
			if err := lk.ReplaceNode(ctx, overlay, old, overlay.backing()); err != nil {
				g.log.Error().Err(err).Msg("snapshot: cannot undo the overlay")
			}
			if err := lk.SetBacking(ctx, overlay, nil); err != nil {
				g.log.Error().Err(err).Msg("snapshot: cannot detach the overlay's backing node")
			}
			drop()
		},
		onClean: func() {
			if created && len(overlay.parents) == 0 && !overlay.monitor && overlay.listed {
				g.release(overlay)
			}
		},
	}, nil
}

// appendOverlay makes old the backing node of overlay and moves every
// parent of old to overlay (QEMU's bdrv_append). On failure nothing has
// changed.
func (lk *Locked) appendOverlay(ctx context.Context, overlay, old *Node) error {
	g := lk.g
	if err := lk.SetBacking(ctx, overlay, old); err != nil {
		return err
	}
	if err := lk.ReplaceNode(ctx, old, overlay, overlay.backing()); err != nil {
		if uerr := lk.SetBacking(ctx, overlay, nil); uerr != nil {
			g.log.Error().Err(uerr).Msg("snapshot: cannot detach the overlay's backing node")
		}
		return err
	}
	return nil
}

// flushAll flushes the node through a temporary edge (a snapshot's
// bdrv_flush of the old active layer).
func (n *Node) flushAll(ctx context.Context) error {
	c := &Child{name: "root", role: RoleData, user: "snapshot"}
	c.node.Store(n)
	return n.Flush(ctx, c)
}

// CreateImage creates a new image file at path, as qemu-img create and
// QEMU's bdrv_img_create do for snapshot-sync and drive-backup: format
// (qcow2, qbm or raw) of size bytes, naming backing (of format backingFmt)
// as its backing file unless backing is "". It works in a private graph,
// so that the caller may hold the graph lock.
func CreateImage(ctx context.Context, format, path string, size int64, backing, backingFmt string) error {
	switch format {
	case "qcow2", "qbm":
	case "raw":
		if backing != "" {
			return errors.New("Backing file not supported for file format 'raw'")
		}
	default:
		return fmt.Errorf("Unknown file format '%s'", format)
	}
	g := NewGraph(zerolog.Nop())
	defer g.Close()
	if format == "raw" {
		return g.Create(ctx, "file", Options{"filename": path, "size": size}, "an unnamed block device")
	}
	if err := g.Create(ctx, "file", Options{"filename": path, "size": int64(0)}, "an unnamed block device"); err != nil {
		return err
	}
	opts := Options{"file": map[string]any{"driver": "file", "filename": path}, "size": size}
	if backing != "" {
		opts["backing-file"], opts["backing-fmt"] = backing, backingFmt
	}
	if err := g.Create(ctx, format, opts, "an unnamed block device"); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// ProbeFormat guesses the format of the image file at path, as QEMU's
// format probing does.
func ProbeFormat(path string) (string, error) { return probeFormat(path) }

// OpenHeld opens a tree of nodes from opts (blockdev-add options; without
// a node-name the root is implicit) that no monitor reference holds: the
// returned edge, held by user with no permission and sharing everything,
// keeps it open until the caller detaches it (by then something else
// should hold it, or it closes). All or nothing.
func (lk *Locked) OpenHeld(ctx context.Context, opts Options, user string) (*Node, *Child, error) {
	g := lk.g
	if g.closed {
		return nil, nil, errors.New("the block layer is shutting down")
	}
	tx := &openTx{}
	n, err := g.open(ctx, tx, opts, inherited{})
	if err != nil {
		g.rollback(tx)
		return nil, nil, err
	}
	c, err := lk.AttachRoot(n, user, 0, PermAll)
	if err != nil {
		g.rollback(tx)
		return nil, nil, err
	}
	return n, c, nil
}
