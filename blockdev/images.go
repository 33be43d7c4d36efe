package blockdev

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/rs/zerolog"
)

// Opening and creating images for the operations built on the graph
// (snapshots, drive-backup): nodes opened with a parent's settings or held
// by a temporary edge, image files created in a private graph, and the
// flush of a node no edge of the caller's reaches.

// OpenInherited opens a tree of nodes from opts (blockdev-add options) as
// a child opened inline for like would be: read-only, auto-read-only,
// cache.direct and cache.no-flush come from like unless opts set them
// (blockdev-snapshot-sync's new overlay). All or nothing. Nothing holds
// the new node: Release closes it again, an edge to it keeps it.
func (lk *Locked) OpenInherited(ctx context.Context, opts Options, like *Node) (*Node, error) {
	g := lk.g
	tx := &openTx{}
	n, err := g.open(ctx, tx, opts, inherited{readOnly: like.ReadOnly(), autoReadOnly: like.autoReadOnly,
		cacheDirect: like.cacheDirect, noFlush: like.noFlush})
	if err != nil {
		g.rollback(tx)
		return nil, err
	}
	return n, nil
}

// FlushNode flushes n through a temporary edge (a snapshot's bdrv_flush of
// the old active layer), for a caller that holds no edge to n.
func (lk *Locked) FlushNode(ctx context.Context, n *Node) error {
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
