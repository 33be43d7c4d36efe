package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qmp"
)

// block-commit merges the data of a range of a backing chain into a lower
// image, base. Passive commit (top below the active layer) copies what
// the layers from top down to base's overlay hold into base, then drops
// those layers: the overlay of top is pointed at base, in the graph and in
// its image header. Active commit (top is the active layer) is mirror.go.

// commitArgs are block-commit's arguments.
type commitArgs struct {
	JobID          *string `json:"job-id"`
	Device         string  `json:"device"`
	BaseNode       *string `json:"base-node"`
	Base           *string `json:"base"`
	TopNode        *string `json:"top-node"`
	Top            *string `json:"top"`
	BackingFile    *string `json:"backing-file"`
	Speed          int64   `json:"speed"`
	OnError        OnError `json:"on-error"`
	FilterNodeName *string `json:"filter-node-name"`
	AutoFinalize   *bool   `json:"auto-finalize"`
	AutoDismiss    *bool   `json:"auto-dismiss"`
}

// registerChainJobs installs block-commit and block-stream.
func (m *Manager) registerChainJobs(d *qmp.Dispatcher, g *blockdev.Graph) {
	d.Register("block-commit", func(ctx context.Context, raw json.RawMessage) (any, error) {
		var a commitArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		return nil, m.blockCommit(ctx, g, &a)
	})
	d.Register("block-stream", func(ctx context.Context, raw json.RawMessage) (any, error) {
		var a streamArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		return nil, m.blockStream(ctx, g, &a)
	})
}

func manualFlags(autoFinalize, autoDismiss *bool) (manualFinalize, manualDismiss bool) {
	return autoFinalize != nil && !*autoFinalize, autoDismiss != nil && !*autoDismiss
}

// chainContains tells whether n is top or below it in top's backing
// chain.
func chainContains(top, n *blockdev.Node) bool {
	for it := top; it != nil; it = it.BackingNode() {
		if it == n {
			return true
		}
	}
	return false
}

// findBase returns the bottom of top's chain, nil when top has no backing
// node (QEMU's bdrv_find_base).
func findBase(top *blockdev.Node) *blockdev.Node {
	if top.BackingNode() == nil {
		return nil
	}
	it := top
	for it.BackingNode() != nil {
		it = it.BackingNode()
	}
	return it
}

// findBackingImage finds the node below active whose image is called
// name, either as its overlay's header names it or by its filename
// (QEMU's bdrv_find_backing_image).
func findBackingImage(active *blockdev.Node, name string) *blockdev.Node {
	for it := active; it != nil; it = it.BackingNode() {
		b := it.BackingNode()
		if b == nil {
			return nil
		}
		if bf, ok := it.Driver().(blockdev.BackingFiler); ok {
			if hdr, _ := bf.BackingFile(); hdr != "" {
				if hdr == name {
					return b
				}
				if !filepath.IsAbs(hdr) && filepath.Join(filepath.Dir(it.Filename()), hdr) == filepath.Clean(name) {
					return b
				}
			}
		}
		if b.Filename() == name || filepath.Clean(b.Filename()) == filepath.Clean(name) {
			return b
		}
	}
	return nil
}

// blockCommit is block-commit's checks, in QEMU's order, and the start of
// the job.
func (m *Manager) blockCommit(ctx context.Context, g *blockdev.Graph, a *commitArgs) error {
	if a.Speed < 0 {
		return errBadSpeed
	}
	manFin, manDis := manualFlags(a.AutoFinalize, a.AutoDismiss)
	type plan struct {
		bs, top, base *blockdev.Node
		id            string
	}
	resolve := func() (*plan, error) {
		bs := g.Lookup(a.Device)
		if bs == nil {
			// libvirt probes for block-commit with this error class.
			return nil, &qmp.Error{Class: qmp.ClassDeviceNotFound, Desc: fmt.Sprintf("Device '%s' not found", a.Device)}
		}
		if err := bs.Blocker(); err != nil {
			return nil, err
		}
		top := bs
		switch {
		case a.TopNode != nil && a.Top != nil:
			return nil, errors.New("'top-node' and 'top' are mutually exclusive")
		case a.TopNode != nil:
			top = g.Lookup(*a.TopNode)
			if top == nil {
				return nil, fmt.Errorf("Cannot find device='' nor node-name='%s'", *a.TopNode)
			}
			if !chainContains(bs, top) {
				return nil, fmt.Errorf("'%s' is not in this backing file chain", *a.TopNode)
			}
		case a.Top != nil:
			if bs.Filename() != *a.Top {
				top = findBackingImage(bs, *a.Top)
			}
		}
		if top == nil {
			name := "NULL"
			if a.Top != nil {
				name = *a.Top
			}
			return nil, fmt.Errorf("Top image file %s not found", name)
		}
		var base *blockdev.Node
		switch {
		case a.BaseNode != nil && a.Base != nil:
			return nil, errors.New("'base-node' and 'base' are mutually exclusive")
		case a.BaseNode != nil:
			base = g.Lookup(*a.BaseNode)
			if base == nil {
				return nil, fmt.Errorf("Cannot find device='' nor node-name='%s'", *a.BaseNode)
			}
			if !chainContains(top, base) {
				return nil, fmt.Errorf("'%s' is not in this backing file chain", *a.BaseNode)
			}
		case a.Base != nil:
			base = findBackingImage(top, *a.Base)
			if base == nil {
				return nil, fmt.Errorf("Can't find '%s' in the backing chain", *a.Base)
			}
		default:
			base = findBase(top)
			if base == nil {
				// QEMU's words, spelling included.
				return nil, errors.New("There is no backimg image")
			}
		}
		for it := top; it != nil && it != base; it = it.BackingNode() {
			if err := it.Blocker(); err != nil {
				return nil, err
			}
		}
		if top == base {
			return nil, errors.New("cannot commit an image into itself")
		}
		p := &plan{bs: bs, top: top, base: base}
		if top == bs {
			if a.BackingFile != nil {
				return nil, errors.New("'backing-file' specified, but 'top' is the active layer")
			}
		} else if ov := blockdev.FindOverlay(bs, top); ov != nil {
			if err := ov.Blocker(); err != nil {
				return nil, err
			}
		}
		return p, nil
	}
	g.Lock()
	p, err := resolve()
	g.Unlock()
	if err != nil {
		return err
	}
	id := ""
	if a.JobID != nil {
		id = *a.JobID
	}
	if p.top == p.bs {
		return m.startActiveCommit(ctx, g, a, id, manFin, manDis)
	}
	cj := &commitJob{backingFile: a.BackingFile}
	_, err = m.StartBlock(ctx, g, BlockSpec{
		Spec: Spec{ID: id, Type: "commit", ManualFinalize: manFin, ManualDismiss: manDis,
			Run: cj.run,
			Hooks: Hooks{
				Prepare: cj.prepare,
				Clean:   cj.clean,
			}},
		Speed:   a.Speed,
		OnError: a.OnError,
		Setup: func(b *BlockJob) error {
			// The graph may have changed since the checks: resolve again.
			p, err := resolve()
			if err != nil {
				return err
			}
			return cj.setup(ctx, b, p.bs, p.top, p.base)
		},
	})
	return err
}

// commitJob is a passive commit's state.
type commitJob struct {
	b                 *BlockJob
	active, top, base *blockdev.Node
	baseOverlay       *blockdev.Node
	layers            int // nodes from top down to baseOverlay
	topC, baseC       *blockdev.Child
	baseReadOnly      bool
	backingFile       *string
}

func (cj *commitJob) setup(ctx context.Context, b *BlockJob, active, top, base *blockdev.Node) error {
	g := b.Graph()
	cj.b, cj.active, cj.top, cj.base = b, active, top, base
	cj.baseOverlay = blockdev.FindOverlay(active, base)
	for it := top; it != base; it = it.BackingNode() {
		cj.layers++
	}
	if _, err := b.AddNode(active, "main node", 0, blockdev.PermAll); err != nil {
		return err
	}
	if base.ReadOnly() {
		if err := g.SetReadOnly(ctx, base, false); err != nil {
			return err
		}
		cj.baseReadOnly = true
	}
	for it := top; it != base; it = it.BackingNode() {
		if _, err := b.AddNode(it, "intermediate node", 0, blockdev.PermWriteUnchanged|blockdev.PermWrite); err != nil {
			cj.restoreBase(ctx)
			return err
		}
	}
	perm := blockdev.PermConsistentRead | blockdev.PermWrite
	if base.Length() < top.Length() {
		perm |= blockdev.PermResize
	}
	var err error
	if cj.baseC, err = b.AddNode(base, "base", perm, blockdev.PermConsistentRead|blockdev.PermWriteUnchanged); err != nil {
		cj.restoreBase(ctx)
		return err
	}
	if cj.topC, err = b.AddNode(top, "top", 0, blockdev.PermAll); err != nil {
		cj.restoreBase(ctx)
		return err
	}
	return nil
}

// restoreBase makes base read-only again if the job made it writable.
// Graph lock held; the job's edge to base is gone.
func (cj *commitJob) restoreBase(ctx context.Context) {
	if cj.baseReadOnly {
		cj.baseReadOnly = false
		if err := cj.b.Graph().SetReadOnly(ctx, cj.base, true); err != nil {
			cj.b.j.m.log.Warn().Err(err).Str("node", cj.base.Name()).
				Msg("commit: cannot make the base read-only again")
		}
	}
}

// run copies what top..baseOverlay allocate into base.
func (cj *commitJob) run(ctx context.Context, j *Job) error {
	j.Background()
	length := cj.top.Length()
	j.SetProgressRemaining(uint64(length))
	if cj.base.Length() < length {
		if err := cj.baseC.Truncate(ctx, length, false); err != nil {
			return err
		}
	}
	return copyAllocated(ctx, cj.b, cj.topC, cj.baseC, cj.layers, 0, length)
}

// copyAllocated copies [off, end) of from's view to to where one of the
// first layers nodes of from's chain allocates it, in chunks, with the
// job's speed limit and error policy. Zeroes are written as zeroes.
func copyAllocated(ctx context.Context, b *BlockJob, from, to *blockdev.Child, layers int, off, end int64) error {
	j := b.Job()
	var buf []byte
	for off < end {
		if err := j.PausePoint(); err != nil {
			return err
		}
		chunk := min(b.ChunkSize(), end-off)
		st, depth, err := from.Node().BlockStatusAbove(ctx, from, off, chunk)
		readErr := true
		n := st.Length
		copyIt := err == nil && depth >= 1 && depth <= layers
		if err == nil && n <= 0 {
			err = fmt.Errorf("block status made no progress at %d", off)
		}
		if copyIt {
			if st.Flags&blockdev.StatusZero != 0 {
				err = to.WriteZeroes(ctx, off, n, 0)
				readErr = false
			} else {
				if int64(cap(buf)) < n {
					buf = make([]byte, n)
				}
				p := buf[:n]
				if err = from.Read(ctx, off, p); err == nil {
					err = to.Write(ctx, off, p, 0)
					readErr = false
				}
			}
		}
		if err != nil {
			if errors.Is(err, context.Canceled) && j.IsCancelled() {
				return err
			}
			if b.ErrorAction(err, readErr) == ActionReport {
				return ioError(err)
			}
			continue // retry, after the pause for "stop"
		}
		off += n
		j.ProgressUpdate(uint64(n))
		if copyIt {
			if err := b.Throttle(n); err != nil {
				return err
			}
		}
	}
	return nil
}

// ioError turns an I/O error into QEMU's job error: strerror of its errno.
func ioError(err error) error {
	return errors.New(blockdev.Strerror(err))
}

// prepare drops the committed layers: the overlay of top now uses base.
func (cj *commitJob) prepare(j *Job) error {
	g := cj.b.Graph()
	g.Lock()
	defer g.Unlock()
	// The job's own edges would stand in the way of the change.
	cj.b.release()
	bf := ""
	if cj.backingFile != nil {
		bf = *cj.backingFile
	}
	return g.DropIntermediate(j.Context(), cj.active, cj.top, cj.base, bf)
}

func (cj *commitJob) clean(j *Job) {
	g := cj.b.Graph()
	g.Lock()
	defer g.Unlock()
	cj.b.release()
	cj.restoreBase(context.Background())
}
