package jobs

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

// blockdev-mirror (and drive-mirror): the general mirror job of
// mirror.go, started with QEMU 7.2's checks (blockdev.c's
// blockdev_mirror_common and mirror.c's mirror_start), in its order.

func (m *Manager) registerMirror(d *qmp.Dispatcher, g *blockdev.Graph) {
	qmp.RegisterTyped(d, "blockdev-mirror", func(ctx context.Context, a *qapi.BlockdevMirrorArgs) (*qapi.Empty, error) {
		return nil, m.blockdevMirror(ctx, g, a)
	})
	qmp.RegisterTyped(d, "drive-mirror", func(ctx context.Context, a *qapi.DriveMirror) (*qapi.Empty, error) {
		return nil, m.driveMirror(ctx, g, a)
	})
}

// mirrorParams is what blockdev-mirror and drive-mirror have in common.
type mirrorParams struct {
	jobID          *string
	replaces       *string
	sync           qapi.MirrorSyncMode
	speed          *int64
	granularity    *uint32
	bufSize        *int64
	onSourceError  *qapi.BlockdevOnError
	onTargetError  *qapi.BlockdevOnError
	unmap          *bool
	filterNodeName *string
	copyMode       *qapi.MirrorCopyMode
	autoFinalize   *bool
	autoDismiss    *bool
}

// getRootBS is QEMU's qmp_get_root_bs for a storage daemon.
func getRootBS(lk *blockdev.Locked, name string) (*blockdev.Node, error) {
	bs := lk.Lookup(name)
	if bs == nil {
		return nil, fmt.Errorf("Cannot find device='%s' nor node-name='%s'", name, name)
	}
	if !bs.IsRoot(lk) {
		return nil, errors.New("Need a root block node")
	}
	return bs, nil
}

func (m *Manager) blockdevMirror(ctx context.Context, g *blockdev.Graph, a *qapi.BlockdevMirrorArgs) error {
	p := &mirrorParams{jobID: a.JobID, replaces: a.Replaces, sync: a.Sync, speed: a.Speed,
		granularity: a.Granularity, bufSize: a.BufSize, onSourceError: a.OnSourceError,
		onTargetError: a.OnTargetError, filterNodeName: a.FilterNodeName, copyMode: a.CopyMode,
		autoFinalize: a.AutoFinalize, autoDismiss: a.AutoDismiss}
	mj := newMirrorJob("mirror")
	mj.zeroTarget = a.Sync == qapi.MirrorSyncModeFull
	return m.startMirror(ctx, g, mj, p, func(lk *blockdev.Locked) (bs, target *blockdev.Node, err error) {
		if bs, err = getRootBS(lk, a.Device); err != nil {
			return nil, nil, err
		}
		if target = lk.Lookup(a.Target); target == nil {
			return nil, nil, fmt.Errorf("Cannot find device='%s' nor node-name='%s'", a.Target, a.Target)
		}
		return bs, target, nil
	})
}

// startMirror is blockdev_mirror_common and mirror_start: nodes gives the
// source and the target (with the graph lock held).
func (m *Manager) startMirror(ctx context.Context, g *blockdev.Graph, mj *mirrorJob, p *mirrorParams,
	nodes func(lk *blockdev.Locked) (bs, target *blockdev.Node, err error)) error {
	if p.unmap != nil {
		mj.unmap = *p.unmap
	}
	if p.bufSize != nil {
		mj.bufSize = *p.bufSize
	}
	if p.replaces != nil {
		mj.replaces = *p.replaces
	}
	mj.filterName = p.filterNodeName
	var gran int64
	if p.granularity != nil {
		gran = int64(*p.granularity)
	}
	mj.granularity = gran
	mj.writeBlocking = qapi.Deref(p.copyMode) == qapi.MirrorCopyModeWriteBlocking
	manFin, manDis := manualFlags(p.autoFinalize, p.autoDismiss)
	onSrc, onTgt := OnErrorReport, OnErrorReport
	if p.onSourceError != nil {
		onSrc = OnError(*p.onSourceError)
	}
	if p.onTargetError != nil {
		onTgt = OnError(*p.onTargetError)
	}
	_, err := m.StartBlock(ctx, g, mj.spec(ctx, qapi.Deref(p.jobID), manFin, manDis, qapi.Deref(p.speed), onSrc, onTgt,
		func(lk *blockdev.Locked, b *BlockJob) error {
			bs, target, err := nodes(lk)
			if err != nil {
				return err
			}
			if gran != 0 && (gran < 512 || gran > 64<<20) {
				return errors.New("Parameter 'granularity' expects a value in range [512B, 64MB]")
			}
			if gran&(gran-1) != 0 {
				return errors.New("Parameter 'granularity' expects a power of 2")
			}
			if err := bs.Blocker(lk); err != nil {
				return err
			}
			if err := target.OpBlocker(lk); err != nil {
				return err
			}
			sync := p.sync
			base := chainNext(bs)
			if base == nil && sync == qapi.MirrorSyncModeTop {
				sync = qapi.MirrorSyncModeFull
			}
			if mj.replaces != "" {
				to := lk.Lookup(mj.replaces)
				if to == nil {
					return fmt.Errorf("Failed to find node with node-name='%s'", mj.replaces)
				}
				if err := to.OpBlocker(lk); err != nil {
					return err
				}
				if !canReplace(bs, to) {
					return fmt.Errorf("Cannot replace '%s' by a node mirrored from '%s', because it cannot be guaranteed that doing so would not lead to an abrupt change of visible data",
						mj.replaces, bs.Name())
				}
				if bs.Length() != to.Length() {
					return errors.New("cannot replace image with a mirror image of different size")
				}
			}
			if sync == qapi.MirrorSyncModeIncremental || sync == qapi.MirrorSyncModeBitmap {
				return fmt.Errorf("Sync mode '%s' not supported", sync)
			}
			mj.src, mj.target = bs, target
			mj.none = sync == qapi.MirrorSyncModeNone
			if sync == qapi.MirrorSyncModeTop {
				mj.base = base
			}
			return mj.before(ctx, lk, b)
		}))
	return err
}

// canReplace is QEMU's bdrv_recurse_can_replace: to is bs, or the node a
// chain of filters from bs leads to.
func canReplace(bs, to *blockdev.Node) bool {
	for it := bs; it != nil; it = it.FilterOrCOW() {
		if it == to {
			return true
		}
		if !it.IsFilter() {
			return false
		}
	}
	return false
}

// driveMirror is QEMU's qmp_drive_mirror: the target image created (in
// the source's format unless format says otherwise; for sync top backed by
// the source's backing file, for sync none by the source) or, with mode
// existing, opened as it is; then the same job as blockdev-mirror. The
// target's backing chain is attached when the job ends: the source's, or
// for mode existing the one the image header names.
func (m *Manager) driveMirror(ctx context.Context, g *blockdev.Graph, a *qapi.DriveMirror) error {
	p := &mirrorParams{jobID: a.JobID, replaces: a.Replaces, sync: a.Sync, speed: a.Speed,
		granularity: a.Granularity, bufSize: a.BufSize, onSourceError: a.OnSourceError,
		onTargetError: a.OnTargetError, unmap: a.Unmap, copyMode: a.CopyMode,
		autoFinalize: a.AutoFinalize, autoDismiss: a.AutoDismiss}
	mj := newMirrorJob("mirror")
	var hold *blockdev.Child
	defer func() {
		if hold != nil {
			g.Do(func(lk *blockdev.Locked) error {
				lk.DetachRoot(hold) // the job holds the target now, or nothing does
				return nil
			})
		}
	}()
	return m.startMirror(ctx, g, mj, p, func(lk *blockdev.Locked) (bs, target *blockdev.Node, err error) {
		if bs, err = getRootBS(lk, a.Device); err != nil {
			return nil, nil, err
		}
		if err := bs.Blocker(lk); err != nil {
			return nil, nil, err
		}
		mode := qapi.NewImageModeAbsolutePaths
		if a.Mode != nil {
			mode = *a.Mode
		}
		existing := mode == qapi.NewImageModeExisting
		format := ""
		if a.Format != nil {
			format = *a.Format
		} else if !existing {
			format = bs.DriverName()
		}
		targetBacking := bs.SkipFilters().BackingNode()
		if targetBacking == nil && p.sync == qapi.MirrorSyncModeTop {
			p.sync = qapi.MirrorSyncModeFull
		}
		if p.sync == qapi.MirrorSyncModeNone {
			targetBacking = bs
		}
		if a.Replaces != nil && a.NodeName == nil {
			return nil, nil, errors.New("a node-name must be provided when replacing a named node of the graph")
		}
		mj.backing = backingSource
		if existing {
			mj.backing = backingOpen
		}
		switch {
		case existing:
		case p.sync == qapi.MirrorSyncModeFull || targetBacking == nil:
			err = blockdev.CreateImage(ctx, format, a.Target, bs.Length(), "", "")
		default:
			b := skipImplicitFilters(targetBacking)
			err = blockdev.CreateImage(ctx, format, a.Target, bs.Length(), b.Filename(), b.DriverName())
		}
		if err != nil {
			return nil, nil, err
		}
		if format == "" {
			if format, err = blockdev.ProbeFormat(a.Target); err != nil {
				return nil, nil, err
			}
		}
		opts := blockdev.Options{"driver": format, "backing": nil,
			"file": map[string]any{"driver": "file", "filename": a.Target}}
		if format == "raw" {
			delete(opts, "backing")
		}
		if a.NodeName != nil {
			opts["node-name"] = *a.NodeName
		}
		if bs.DiscardUnmap() {
			opts["discard"] = "unmap"
		}
		if target, hold, err = lk.OpenHeld(ctx, opts, "drive-mirror"); err != nil {
			return nil, nil, err
		}
		// A new image reads as zeroes already.
		mj.zeroTarget = p.sync == qapi.MirrorSyncModeFull && existing
		return bs, target, nil
	})
}

// skipImplicitFilters is QEMU's bdrv_skip_implicit_filters: n below the
// filters the graph inserted itself (those without a node name of the
// user's).
func skipImplicitFilters(n *blockdev.Node) *blockdev.Node {
	for n != nil && n.ImplicitFilter() {
		n = n.FilterOrCOW()
	}
	return n
}

// openTargetBacking opens the backing chain the target's image header
// names and attaches it (QEMU's bdrv_open_backing_file), for drive-mirror
// with mode existing.
func (mj *mirrorJob) openTargetBacking(ctx context.Context, lk *blockdev.Locked) error {
	t := mj.target.SkipFilters()
	if t.BackingNode() != nil {
		return nil
	}
	bf, ok := t.Driver().(blockdev.BackingFiler)
	if !ok {
		return nil
	}
	name, format := bf.BackingFile()
	if name == "" {
		return nil
	}
	// A relative name is relative to the directory of the image's file
	// (QEMU's bdrv_dirname goes down to the protocol node).
	path := name
	if !filepath.IsAbs(path) {
		base := t.Filename()
		if f := t.Child("file"); f != nil {
			base = f.Node().Filename()
		}
		path = base[:strings.LastIndex(base, "/")+1] + name
	}
	if format == "" {
		var err error
		if format, err = blockdev.ProbeFormat(path); err != nil {
			return err
		}
	}
	b, hold, err := lk.OpenHeld(ctx, blockdev.Options{"driver": format, "read-only": true,
		"file": map[string]any{"driver": "file", "filename": path}}, "drive-mirror")
	if err != nil {
		mj.b.log.Error().Err(err).Msg("mirror: cannot open the target's backing file")
		return err
	}
	defer lk.DetachRoot(hold)
	return lk.SetBacking(ctx, t, b)
}
