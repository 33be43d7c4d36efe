package jobs

import (
	"context"
	"errors"
	"fmt"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/chain"
	"github.com/qbmond/qbmond/qapi"
)

// block-stream copies into the active layer what the layers below it, down
// to (not including) base, hold, then makes base the active layer's
// backing node, in the graph and in its image header. Without base, the
// whole chain is copied and the active layer ends without a backing file.
//
// As in QEMU, a copy-on-read filter sits above the active layer while the
// job runs (bottom: the lowest layer streamed): the job reads through it,
// which copies; guest reads through it copy too. The copies are
// serialised with guest writes (see blockdev.CopyOnRead), so a write is
// never overwritten by the older data a copy fetched.

// streamPlan is what block-stream's checks resolved.
type streamPlan struct{ bs, base, bottom *blockdev.Node }

// resolveStream is qmp_block_stream's checks, in QEMU's order.
func resolveStream(lk *blockdev.Locked, a *qapi.BlockStreamArgs) (*streamPlan, error) {
	switch {
	case a.Base != nil && a.BaseNode != nil:
		return nil, errors.New("'base' and 'base-node' cannot be specified at the same time")
	case a.Base != nil && a.Bottom != nil:
		return nil, errors.New("'base' and 'bottom' cannot be specified at the same time")
	case a.Bottom != nil && a.BaseNode != nil:
		return nil, errors.New("'bottom' and 'base-node' cannot be specified at the same time")
	}
	bs := lk.Lookup(a.Device)
	if bs == nil {
		return nil, fmt.Errorf("Cannot find device='%s' nor node-name='%s'", a.Device, a.Device)
	}
	p := &streamPlan{bs: bs}
	if a.Base != nil {
		if p.base = findBackingImage(bs, *a.Base); p.base == nil {
			return nil, fmt.Errorf("Can't find '%s' in the backing chain", *a.Base)
		}
	}
	if a.BaseNode != nil {
		var err error
		if p.base, err = lookupNode(lk, *a.BaseNode); err != nil {
			return nil, err
		}
		if p.base == bs || !chainContains(lk, bs, p.base) {
			return nil, fmt.Errorf("Node '%s' is not a backing image of '%s'", *a.BaseNode, a.Device)
		}
	}
	if a.Bottom != nil {
		var err error
		if p.bottom, err = lookupNode(lk, *a.Bottom); err != nil {
			return nil, err
		}
		if p.bottom.IsFilter() {
			return nil, fmt.Errorf("Node '%s' is a filter, use a non-filter node as 'bottom'", *a.Bottom)
		}
		if !chainContains(lk, bs, p.bottom) {
			return nil, fmt.Errorf("Node '%s' is not in a chain starting from '%s'", *a.Bottom, a.Device)
		}
	}
	end := p.base
	if p.bottom != nil {
		end = p.bottom.FilterOrCOW()
	}
	for it := bs; it != nil && it != end; it = it.FilterOrCOW() {
		if err := it.Blocker(lk); err != nil {
			return nil, err
		}
	}
	if p.base == nil && a.BackingFile != nil {
		return nil, errors.New("backing file specified, but streaming the entire chain")
	}
	return p, nil
}

func (m *Manager) blockStream(ctx context.Context, g *blockdev.Graph, a *qapi.BlockStreamArgs) error {
	err := g.Do(func(lk *blockdev.Locked) error {
		_, err := resolveStream(lk, a)
		return err
	})
	if err != nil {
		return err
	}
	manFin, manDis := manualFlags(a.AutoFinalize, a.AutoDismiss)
	id := ""
	if a.JobID != nil {
		id = *a.JobID
	}
	sj := &streamJob{backingFile: a.BackingFile, filterName: a.FilterNodeName}
	_, err = m.StartBlock(ctx, g, BlockSpec{
		Spec: Spec{ID: id, Type: "stream", ManualFinalize: manFin, ManualDismiss: manDis,
			Run:   sj.run,
			Hooks: Hooks{Prepare: sj.prepare, Clean: sj.clean}},
		Speed:   qapi.Deref(a.Speed),
		OnError: OnError(qapi.Deref(a.OnError)),
		Before: func(lk *blockdev.Locked, b *BlockJob) error {
			p, err := resolveStream(lk, a)
			if err != nil {
				return err
			}
			return sj.before(ctx, lk, b, p.bs, p.base, p.bottom)
		},
		Setup: func(lk *blockdev.Locked, b *BlockJob) error { return sj.setup(lk, b) },
		Undo:  func(lk *blockdev.Locked, _ *BlockJob) { sj.undo(ctx, lk) },
	})
	return err
}

// streamJob is a stream's state.
type streamJob struct {
	b           *BlockJob
	bs          *blockdev.Node // the active layer, streamed into
	baseOverlay *blockdev.Node // the lowest layer copied
	aboveBase   *blockdev.Node // the node right above base (base: its next)
	cor         *blockdev.Node // the copy-on-read filter
	layers      int            // nodes below bs down to baseOverlay
	corC        *blockdev.Child
	bsC         *blockdev.Child // for block status of bs itself
	readOnly    bool
	backingFile *string
	filterName  *string
}

// before is the start of QEMU's stream_start, before the job exists: bs
// made writable and the copy-on-read filter put above it.
func (sj *streamJob) before(ctx context.Context, lk *blockdev.Locked, b *BlockJob, bs, base, bottom *blockdev.Node) error {
	sj.b, sj.bs = b, bs
	if bottom != nil {
		sj.baseOverlay, sj.aboveBase = bottom, bottom
	} else {
		if sj.baseOverlay = findOverlay(bs, base); sj.baseOverlay == nil {
			return fmt.Errorf("'%s' is not in the backing chain of '%s'", base.Name(), bs.Name())
		}
		// Between base's overlay and base there can only be filters.
		sj.aboveBase = sj.baseOverlay
		if b := sj.aboveBase.BackingNode(); b != nil && b != base {
			sj.aboveBase = b
			for sj.aboveBase.FilterOrCOW() != base && sj.aboveBase.FilterOrCOW() != nil {
				sj.aboveBase = sj.aboveBase.FilterOrCOW()
			}
		}
	}
	if bs.ReadOnly() {
		// The chain is held for the reopen (QEMU freezes it from bs down
		// to the node above base meanwhile; the filter holds it after).
		unfreeze, err := lk.FreezeChain(bs, sj.aboveBase)
		if err != nil {
			return err
		}
		err = lk.SetReadOnly(ctx, bs, false)
		unfreeze()
		if err != nil {
			return err
		}
		sj.readOnly = true
	}
	opts := blockdev.Options{"driver": "copy-on-read", "file": bs.Name(), "bottom": sj.baseOverlay.Name(),
		"read-only": false}
	if sj.filterName != nil {
		opts["node-name"] = *sj.filterName
	}
	var err error
	if sj.cor, err = lk.AppendFilter(ctx, bs, opts); err != nil {
		return fmt.Errorf("Could not create node: %w", err)
	}
	return nil
}

// setup is the rest of stream_start once the job exists: its edges with
// QEMU's permissions. On failure StartBlock calls undo.
func (sj *streamJob) setup(lk *blockdev.Locked, b *BlockJob) error {
	if err := b.Created(lk, sj.cor, 0, blockdev.PermAll); err != nil {
		return err
	}
	basic := blockdev.PermConsistentRead | blockdev.PermWriteUnchanged
	var err error
	if sj.corC, err = b.AddBackend(lk, sj.cor, blockdev.PermConsistentRead, basic|blockdev.PermWrite); err != nil {
		return err
	}
	if sj.bsC, err = b.AddNode(lk, sj.bs, "active node", 0, basic|blockdev.PermWrite); err != nil {
		return err
	}
	base := sj.aboveBase.FilterOrCOW()
	for it := sj.bs.FilterOrCOW(); it != nil && it != base; it = it.FilterOrCOW() {
		if _, err := b.AddNode(lk, it, "intermediate node", 0, basic); err != nil {
			return err
		}
	}
	sj.layers = layersBetween(sj.bs, sj.baseOverlay) // bs and the layers above baseOverlay
	return nil
}

// undo takes the job's edges and the filter away and makes bs read-only
// again if the job made it writable.
func (sj *streamJob) undo(ctx context.Context, lk *blockdev.Locked) {
	if sj.b == nil {
		return
	}
	sj.b.release(lk)
	sj.dropFilter(ctx, lk)
	if sj.readOnly {
		sj.readOnly = false
		if err := lk.SetReadOnly(ctx, sj.bs, true); err != nil {
			sj.b.log.Warn().Err(err).Str("node", sj.bs.Name()).Msg("stream: cannot make the node read-only again")
		}
	}
}

func (sj *streamJob) dropFilter(ctx context.Context, lk *blockdev.Locked) {
	f := sj.cor
	if f == nil {
		return
	}
	sj.cor = nil
	sj.b.DropFilter(ctx, lk, f)
}

// run is QEMU's stream_run: chunk by chunk, what the active layer does
// not allocate itself but a layer down to baseOverlay does is read
// through the copy-on-read filter, which copies it up.
func (sj *streamJob) run(ctx context.Context, j *Job) error {
	j.Background()
	if sj.baseOverlay == sj.bs {
		return nil // nothing to stream
	}
	b := sj.b
	length := sj.bsC.Length()
	j.SetProgressRemaining(uint64(length))
	var firstErr error
	buf := make([]byte, chunkSize)
	for off := int64(0); off < length; {
		if err := b.RateLimitSleep(); err != nil {
			return err
		}
		if j.IsCancelled() {
			break
		}
		st, depth, err := sj.bs.BlockStatusAbove(ctx, sj.bsC, off, min(chunkSize, length-off))
		n := st.Length
		copyIt := err == nil && depth >= 2 && depth <= sj.layers+1
		if err == nil && n <= 0 {
			err = fmt.Errorf("block status made no progress at %d", off)
		}
		if copyIt {
			err = sj.corC.Read(ctx, off, buf[:n])
		}
		if err != nil {
			if errors.Is(err, context.Canceled) && j.IsCancelled() {
				return err
			}
			act := b.ErrorAction(err, true)
			if act == ActionStop {
				continue
			}
			if firstErr == nil {
				firstErr = ioError(err)
			}
			if act == ActionReport {
				break
			}
		}
		off += n
		j.ProgressUpdate(uint64(n))
		if copyIt {
			b.Processed(n)
		}
	}
	// A backing file stays when an error was ignored.
	return firstErr
}

// prepare (QEMU's stream_prepare) takes the filter out, then makes base
// the active layer's backing node and names it in the image header.
func (sj *streamJob) prepare(j *Job) error {
	g := sj.b.Graph()
	return g.Do(func(lk *blockdev.Locked) error {
		ctx := j.Context()
		sj.dropFilter(ctx, lk)
		if sj.bs.BackingNode() == nil {
			return nil
		}
		base := sj.aboveBase.FilterOrCOW()
		name, format := "", ""
		if ub := base; ub != nil {
			ub = ub.SkipFilters()
			name = ub.Filename()
			if sj.backingFile != nil {
				name = *sj.backingFile
			}
			format = ub.DriverName()
		}
		sj.b.release(lk)
		if err := lk.SetBacking(ctx, sj.bs, base); err != nil {
			return err
		}
		if err := chain.ChangeBackingFile(ctx, lk, sj.bs, name, format); err != nil {
			return fmt.Errorf("Could not change the backing file: %s", blockdev.Strerror(err))
		}
		return nil
	})
}

func (sj *streamJob) clean(j *Job) {
	g := sj.b.Graph()
	g.Do(func(lk *blockdev.Locked) error {
		sj.undo(context.Background(), lk)
		return nil
	})
}
