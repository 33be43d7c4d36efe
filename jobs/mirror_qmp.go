package jobs

import (
	"context"
	"errors"
	"fmt"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

// blockdev-mirror (and drive-mirror): the general mirror job of
// mirror.go, started with QEMU 7.2's checks (blockdev.c's
// blockdev_mirror_common and mirror.c's mirror_start), in its order.

func (m *Manager) registerMirror(d *qmp.Dispatcher, g *blockdev.Graph) {
	qmp.RegisterTyped(d, "blockdev-mirror", func(ctx context.Context, a *qapi.BlockdevMirrorArgs) (any, error) {
		return nil, m.blockdevMirror(ctx, g, a)
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
	if qapi.Deref(p.copyMode) == qapi.MirrorCopyModeWriteBlocking {
		return errors.New("copy-mode write-blocking is not supported")
	}
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

// openTargetBacking opens the backing chain the target's image header
// names (drive-mirror with mode existing).
func (mj *mirrorJob) openTargetBacking(ctx context.Context, lk *blockdev.Locked) error {
	return nil
}
