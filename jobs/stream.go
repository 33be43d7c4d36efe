package jobs

import (
	"context"
	"errors"
	"fmt"

	"github.com/qbmond/qbmond/blockdev"
)

// block-stream copies into the active layer what the layers below it, down
// to (not including) base, hold, then makes base the active layer's
// backing node, in the graph and in its image header. Without base, the
// whole chain is copied and the active layer ends without a backing file.

// streamArgs are block-stream's arguments.
type streamArgs struct {
	JobID          *string `json:"job-id"`
	Device         string  `json:"device"`
	Base           *string `json:"base"`
	BaseNode       *string `json:"base-node"`
	BackingFile    *string `json:"backing-file"`
	Bottom         *string `json:"bottom"`
	Speed          int64   `json:"speed"`
	OnError        OnError `json:"on-error"`
	FilterNodeName *string `json:"filter-node-name"`
	AutoFinalize   *bool   `json:"auto-finalize"`
	AutoDismiss    *bool   `json:"auto-dismiss"`
}

// streamJob is a stream's state.
type streamJob struct {
	b           *BlockJob
	bs          *blockdev.Node // the active layer, streamed into
	base        *blockdev.Node // nil: the whole chain
	baseOverlay *blockdev.Node // the lowest layer copied
	layers      int            // nodes below bs down to baseOverlay
	bsC         *blockdev.Child
	readOnly    bool
	backingFile *string
}

func (m *Manager) blockStream(ctx context.Context, g *blockdev.Graph, a *streamArgs) error {
	if a.Speed < 0 {
		return errBadSpeed
	}
	manFin, manDis := manualFlags(a.AutoFinalize, a.AutoDismiss)
	type plan struct{ bs, base, bottom *blockdev.Node }
	resolve := func() (*plan, error) {
		bs := g.Lookup(a.Device)
		if bs == nil {
			return nil, fmt.Errorf("Cannot find device='%s' nor node-name='%s'", a.Device, a.Device)
		}
		switch {
		case a.Base != nil && a.BaseNode != nil:
			return nil, errors.New("'base' and 'base-node' cannot be specified at the same time")
		case a.Base != nil && a.Bottom != nil:
			return nil, errors.New("'base' and 'bottom' cannot be specified at the same time")
		case a.Bottom != nil && a.BaseNode != nil:
			return nil, errors.New("'bottom' and 'base-node' cannot be specified at the same time")
		}
		p := &plan{bs: bs}
		if a.Base != nil {
			p.base = findBackingImage(bs, *a.Base)
			if p.base == nil {
				return nil, fmt.Errorf("Can't find '%s' in the backing chain", *a.Base)
			}
		}
		if a.BaseNode != nil {
			p.base = g.Lookup(*a.BaseNode)
			if p.base == nil {
				return nil, fmt.Errorf("Cannot find device='' nor node-name='%s'", *a.BaseNode)
			}
			if p.base == bs || !chainContains(bs, p.base) {
				return nil, fmt.Errorf("Node '%s' is not a backing image of '%s'", *a.BaseNode, a.Device)
			}
		}
		if a.Bottom != nil {
			p.bottom = g.Lookup(*a.Bottom)
			if p.bottom == nil {
				return nil, fmt.Errorf("Cannot find device='' nor node-name='%s'", *a.Bottom)
			}
			if !chainContains(bs, p.bottom) {
				return nil, fmt.Errorf("Node '%s' is not in a chain starting from '%s'", *a.Bottom, a.Device)
			}
			p.base = p.bottom.BackingNode()
		}
		for it := bs; it != nil && it != p.base; it = it.BackingNode() {
			if err := it.Blocker(); err != nil {
				return nil, err
			}
		}
		if p.base == nil && a.BackingFile != nil {
			return nil, errors.New("backing file specified, but streaming the entire chain")
		}
		return p, nil
	}
	g.Lock()
	_, err := resolve()
	g.Unlock()
	if err != nil {
		return err
	}
	id := ""
	if a.JobID != nil {
		id = *a.JobID
	}
	sj := &streamJob{backingFile: a.BackingFile}
	_, err = m.StartBlock(ctx, g, BlockSpec{
		Spec: Spec{ID: id, Type: "stream", ManualFinalize: manFin, ManualDismiss: manDis,
			Run:   sj.run,
			Hooks: Hooks{Prepare: sj.prepare, Clean: sj.clean}},
		Speed:   a.Speed,
		OnError: a.OnError,
		Setup: func(b *BlockJob) error {
			p, err := resolve()
			if err != nil {
				return err
			}
			return sj.setup(ctx, b, p.bs, p.base, p.bottom)
		},
	})
	return err
}

func (sj *streamJob) setup(ctx context.Context, b *BlockJob, bs, base, bottom *blockdev.Node) error {
	g := b.Graph()
	sj.b, sj.bs, sj.base = b, bs, base
	if bottom != nil {
		sj.baseOverlay = bottom
	} else if base != nil {
		sj.baseOverlay = blockdev.FindOverlay(bs, base)
		if sj.baseOverlay == nil {
			return fmt.Errorf("'%s' is not in the backing chain of '%s'", base.Name(), bs.Name())
		}
	} else {
		sj.baseOverlay = findBase(bs)
		if sj.baseOverlay == nil {
			sj.baseOverlay = bs
		}
	}
	for it := bs; it != sj.baseOverlay; it = it.BackingNode() {
		sj.layers++
	}
	if bs.ReadOnly() {
		if err := g.SetReadOnly(ctx, bs, false); err != nil {
			return err
		}
		sj.readOnly = true
	}
	basic := blockdev.PermConsistentRead | blockdev.PermWriteUnchanged
	var err error
	if sj.bsC, err = b.AddNode(bs, "active node", blockdev.PermConsistentRead|blockdev.PermWriteUnchanged,
		basic|blockdev.PermWrite); err != nil {
		sj.restore(ctx)
		return err
	}
	for it := bs.BackingNode(); it != nil && it != base; it = it.BackingNode() {
		if _, err := b.AddNode(it, "intermediate node", 0, basic); err != nil {
			sj.restore(ctx)
			return err
		}
	}
	return nil
}

func (sj *streamJob) restore(ctx context.Context) {
	if sj.readOnly {
		sj.readOnly = false
		if err := sj.b.Graph().SetReadOnly(ctx, sj.bs, true); err != nil {
			sj.b.j.m.log.Warn().Err(err).Str("node", sj.bs.Name()).Msg("stream: cannot make the node read-only again")
		}
	}
}

// run copies, chunk by chunk, what the active layer does not allocate
// itself but a layer down to baseOverlay does. The writes leave the
// content unchanged: dirty bitmaps do not count them.
func (sj *streamJob) run(ctx context.Context, j *Job) error {
	j.Background()
	if sj.baseOverlay == sj.bs {
		return nil // nothing to stream
	}
	b := sj.b
	length := sj.bs.Length()
	j.SetProgressRemaining(uint64(length))
	var firstErr error
	var buf []byte
	for off := int64(0); off < length; {
		if err := j.PausePoint(); err != nil {
			return err
		}
		chunk := min(b.ChunkSize(), length-off)
		st, depth, err := sj.bs.BlockStatusAbove(ctx, sj.bsC, off, chunk)
		n := st.Length
		copyIt := err == nil && depth >= 2 && depth <= sj.layers+1
		if err == nil && n <= 0 {
			err = fmt.Errorf("block status made no progress at %d", off)
		}
		if copyIt {
			if int64(cap(buf)) < n {
				buf = make([]byte, n)
			}
			p := buf[:n]
			if err = sj.bsC.Read(ctx, off, p); err == nil {
				err = sj.bsC.Write(ctx, off, p, blockdev.ReqWriteUnchanged)
			}
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
			if err := b.Throttle(n); err != nil {
				return err
			}
		}
	}
	return firstErr
}

// prepare makes base the active layer's backing node and names it in the
// image header.
func (sj *streamJob) prepare(j *Job) error {
	g := sj.b.Graph()
	g.Lock()
	defer g.Unlock()
	if sj.bs.BackingNode() == nil {
		return nil
	}
	name, format := "", ""
	if sj.base != nil {
		name = sj.base.Filename()
		if sj.backingFile != nil {
			name = *sj.backingFile
		}
		format = formatName(sj.base)
	}
	sj.b.release()
	if err := g.SetBacking(j.Context(), sj.bs, sj.base); err != nil {
		return err
	}
	if err := g.ChangeBackingFile(j.Context(), sj.bs, name, format); err != nil {
		// QEMU reports the failure and goes on: the graph has changed.
		sj.b.j.m.log.Error().Err(err).Str("node", sj.bs.Name()).Msg("stream: cannot rewrite the backing file name")
	}
	return nil
}

// formatName is the format QEMU writes next to a backing file name: the
// node's driver unless it is a protocol node.
func formatName(n *blockdev.Node) string {
	if _, ok := n.Driver().(blockdev.ProtocolDriver); ok {
		return ""
	}
	return n.DriverName()
}

func (sj *streamJob) clean(j *Job) {
	g := sj.b.Graph()
	g.Lock()
	defer g.Unlock()
	sj.b.release()
	sj.restore(context.Background())
}

