package jobs

import (
	"context"
	"errors"
	"fmt"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/chain"
	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

// block-commit merges the data of a range of a backing chain into a lower
// image, base. Passive commit (top below the active layer, and nobody
// writing to it) copies what the layers from top down to base's overlay
// hold into base, then drops those layers: the overlay of top is pointed
// at base, in the graph and in its image header. Active commit (top is the
// active layer) is mirror.go.
//
// As in QEMU, a commit_top filter sits above top while the job runs: the
// overlay reads the chain through it, and it takes no permission on the
// layers, so the job can forbid everyone else consistent reads of them
// (their content is not consistent any more once base has been written).

// commitPlan is what block-commit's checks resolved.
type commitPlan struct {
	bs, top, base *blockdev.Node
	active        bool
}

// resolveCommit is qmp_block_commit's checks, in QEMU's order.
func resolveCommit(lk *blockdev.Locked, a *qapi.BlockCommitArgs) (*commitPlan, error) {
	bs := lk.Lookup(a.Device)
	if bs == nil {
		// libvirt probes for block-commit with this error class.
		return nil, &qmp.Error{Class: qmp.ClassDeviceNotFound, Desc: fmt.Sprintf("Device '%s' not found", a.Device)}
	}
	if !bs.IsRoot(lk) {
		return nil, errors.New("Need a root block node")
	}
	if err := bs.Blocker(lk); err != nil {
		return nil, err
	}
	top := bs
	switch {
	case a.TopNode != nil && a.Top != nil:
		return nil, errors.New("'top-node' and 'top' are mutually exclusive")
	case a.TopNode != nil:
		var err error
		if top, err = lookupNode(lk, *a.TopNode); err != nil {
			return nil, err
		}
		if !chainContains(lk, bs, top) {
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
		var err error
		if base, err = lookupNode(lk, *a.BaseNode); err != nil {
			return nil, err
		}
		if !chainContains(lk, top, base) {
			return nil, fmt.Errorf("'%s' is not in this backing file chain", *a.BaseNode)
		}
	case a.Base != nil:
		if base = findBackingImage(top, *a.Base); base == nil {
			return nil, fmt.Errorf("Can't find '%s' in the backing chain", *a.Base)
		}
	default:
		if base = findBase(top); base == nil {
			// QEMU's words, spelling included.
			return nil, errors.New("There is no backimg image")
		}
	}
	for it := top; it != nil && it != base.FilterOrCOW(); it = it.FilterOrCOW() {
		if err := it.Blocker(lk); err != nil {
			return nil, err
		}
	}
	if top == base {
		return nil, errors.New("cannot commit an image into itself")
	}
	// Active commit when top is the active layer or somebody writes to
	// it, as in QEMU.
	topPerm, _ := top.CumulativePerm(lk)
	p := &commitPlan{bs: bs, top: top, base: base,
		active: top.SkipFilters() == bs.SkipFilters() || topPerm&blockdev.PermWrite != 0}
	if p.active {
		if a.BackingFile != nil {
			if top.SkipFilters() == bs.SkipFilters() {
				return nil, errors.New("'backing-file' specified, but 'top' is the active layer")
			}
			return nil, errors.New("'backing-file' specified, but 'top' has a writer on it")
		}
	} else if ov := findOverlay(bs, top); ov != nil {
		if err := ov.Blocker(lk); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// blockCommit checks block-commit's arguments and starts the job.
func (m *Manager) blockCommit(ctx context.Context, g *blockdev.Graph, a *qapi.BlockCommitArgs) error {
	p, err := blockdev.WithLock(g, func(lk *blockdev.Locked) (*commitPlan, error) { return resolveCommit(lk, a) })
	if err != nil {
		return err
	}
	manFin, manDis := manualFlags(a.AutoFinalize, a.AutoDismiss)
	id := ""
	if a.JobID != nil {
		id = *a.JobID
	}
	if p.active {
		return m.startActiveCommit(ctx, g, a, id, manFin, manDis)
	}
	cj := &commitJob{backingFile: a.BackingFile, filterName: a.FilterNodeName}
	_, err = m.StartBlock(ctx, g, BlockSpec{
		Spec: Spec{ID: id, Type: "commit", ManualFinalize: manFin, ManualDismiss: manDis,
			Run: cj.run,
			Hooks: Hooks{
				Prepare: cj.prepare,
				Abort:   cj.abort,
				Clean:   cj.clean,
			}},
		Speed:   qapi.Deref(a.Speed),
		OnError: OnError(qapi.Deref(a.OnError)),
		Undo:    func(lk *blockdev.Locked, _ *BlockJob) { cj.undo(ctx, lk) },
		Setup: func(lk *blockdev.Locked, b *BlockJob) error {
			// The graph may have changed since the checks: resolve again.
			p, err := resolveCommit(lk, a)
			if err != nil {
				return err
			}
			if p.active {
				return errors.New("the top node has become the active layer")
			}
			return cj.setup(ctx, lk, b, p.bs, p.top, p.base)
		},
	})
	return err
}

// commitJob is a passive commit's state.
type commitJob struct {
	b                 *BlockJob
	active, top, base *blockdev.Node
	commitTop         *blockdev.Node // the filter above top
	layers            int            // nodes from top down to base's overlay
	topC, baseC       *blockdev.Child
	baseReadOnly      bool
	unfreeze          func() // lets go of the links from commitTop to base
	backingFile       *string
	filterName        *string
}

// setup is QEMU's commit_start: the job's edges with QEMU's permissions,
// base made writable, and the commit_top filter above top. On failure
// StartBlock calls undo.
func (cj *commitJob) setup(ctx context.Context, lk *blockdev.Locked, b *BlockJob, active, top, base *blockdev.Node) error {
	cj.b, cj.active, cj.top, cj.base = b, active, top, base
	if top.SkipFilters() == base.SkipFilters() {
		return errors.New("Invalid files for merge: top and base are the same")
	}
	basePerm := blockdev.PermConsistentRead | blockdev.PermWrite
	if base.Length() < top.Length() {
		basePerm |= blockdev.PermResize
	}
	if err := b.Created(lk, active, 0, blockdev.PermAll); err != nil {
		return err
	}
	if base.ReadOnly() {
		if err := lk.SetReadOnly(ctx, base, false); err != nil {
			return err
		}
		cj.baseReadOnly = true
	}
	opts := blockdev.Options{"driver": "commit_top", "backing": top.Name(), "read-only": true}
	if cj.filterName != nil {
		opts["node-name"] = *cj.filterName
	}
	var err error
	if cj.commitTop, err = lk.AppendFilter(ctx, top, opts); err != nil {
		return err
	}
	// So that it can always be taken out again.
	cj.commitTop.SetNeverFreeze(lk)
	cj.layers = layersBetween(top, base)
	// The layers from top down to base hold data base is getting: nobody
	// else may read them as consistent, but filters on base may be.
	baseOverlay := findOverlay(top, base)
	filteredBase := baseOverlay.BackingNode()
	shared := blockdev.PermWriteUnchanged | blockdev.PermWrite
	for it := top; it != nil && it != base; it = it.FilterOrCOW() {
		if it == filteredBase {
			shared |= blockdev.PermConsistentRead
		}
		if _, err := b.AddNode(lk, it, "intermediate node", 0, shared); err != nil {
			return err
		}
	}
	// The links from the filter down to base stay as they are until the
	// job ends.
	if cj.unfreeze, err = lk.FreezeChain(cj.commitTop, base); err != nil {
		return err
	}
	if _, err := b.AddNode(lk, base, "base", 0, blockdev.PermAll); err != nil {
		return err
	}
	if cj.baseC, err = b.AddBackend(lk, base, basePerm, blockdev.PermConsistentRead|blockdev.PermWriteUnchanged); err != nil {
		return err
	}
	if cj.topC, err = b.AddBackend(lk, top, 0, blockdev.PermAll); err != nil {
		return err
	}
	return nil
}

// undo takes the job's edges and the filter away and makes base read-only
// again if the job made it writable.
func (cj *commitJob) undo(ctx context.Context, lk *blockdev.Locked) {
	if cj.b == nil {
		return // setup did not start
	}
	cj.thaw(lk)
	cj.b.release(lk)
	if cj.commitTop != nil {
		if err := lk.RemoveFilter(ctx, cj.commitTop); err != nil {
			cj.b.log.Error().Err(err).Str("node", cj.commitTop.Name()).Msg("commit: cannot remove the commit_top filter")
		}
		cj.commitTop = nil
	}
	cj.restoreBase(ctx, lk)
}

// thaw unfreezes the links the job froze, if it did.
func (cj *commitJob) thaw(lk *blockdev.Locked) {
	if cj.unfreeze != nil {
		cj.unfreeze()
		cj.unfreeze = nil
	}
}

// restoreBase makes base read-only again if the job made it writable.
// The job's edge to base is gone.
func (cj *commitJob) restoreBase(ctx context.Context, lk *blockdev.Locked) {
	if cj.baseReadOnly {
		cj.baseReadOnly = false
		if err := lk.SetReadOnly(ctx, cj.base, true); err != nil {
			cj.b.log.Warn().Err(err).Str("node", cj.base.Name()).
				Msg("commit: cannot make the base read-only again")
		}
	}
}

// run copies what top..baseOverlay allocate into base, chunk by chunk
// (QEMU's commit_run).
func (cj *commitJob) run(ctx context.Context, j *Job) error {
	j.Background()
	length := cj.topC.Length()
	j.SetProgressRemaining(uint64(length))
	if cj.baseC.Length() < length {
		if err := cj.baseC.Truncate(ctx, length, false); err != nil {
			return ioError(err)
		}
	}
	return copyAllocated(ctx, cj.b, cj.topC, cj.baseC, cj.layers, 0, length)
}

// copyAllocated copies [off, end) of from's view to to where one of the
// first layers nodes of from's chain allocates it, a chunk at a time, with
// the job's speed limit and error policy (QEMU's commit loop). Zeroes are
// written as data, as QEMU 7.2 does.
func copyAllocated(ctx context.Context, b *BlockJob, from, to *blockdev.Child, layers int, off, end int64) error {
	j := b.Job()
	buf := make([]byte, chunkSize)
	for off < end {
		if err := b.RateLimitSleep(); err != nil {
			return err
		}
		st, depth, err := from.Node().BlockStatusAbove(ctx, from, off, min(chunkSize, end-off))
		n := st.Length
		inSource := true
		copyIt := err == nil && depth >= 1 && depth <= layers
		if err == nil && n <= 0 {
			err = fmt.Errorf("block status made no progress at %d", off)
		}
		if copyIt && st.Flags&blockdev.StatusData != 0 && n == chunkSize && b.Speed() == 0 {
			// Without a speed limit, a longer run of data goes by copy
			// offload at once. Should that fail, the run is copied
			// chunk by chunk, so that an error is met (and reported) at
			// the chunk QEMU would report it at.
			if k := offloadRun(ctx, from, to, layers, off, end); k > 0 {
				off += k
				j.ProgressUpdate(uint64(k))
				continue
			}
		}
		if copyIt {
			if st.Flags&blockdev.StatusZero != 0 && st.Flags&blockdev.StatusData == 0 {
				// QEMU 7.2's commit reads the zeroes and writes them
				// as data (the base gets allocated zero clusters, not
				// zero-flag ones, unless its detect-zeroes says so).
				clear(buf[:n])
				err = to.Write(ctx, off, buf[:n], 0)
				inSource = false
			} else {
				// By copy offload where both ends are files, else
				// through the buffer.
				var ok bool
				if ok, err = blockdev.CopyRange(ctx, from, off, to, off, n); !ok && err == nil {
					if err = from.Read(ctx, off, buf[:n]); err == nil {
						err = to.Write(ctx, off, buf[:n], 0)
						inSource = false
					}
				} else if _, target := err.(*blockdev.TargetError); target {
					inSource = false
				}
			}
		}
		if err != nil {
			if errors.Is(err, context.Canceled) && j.IsCancelled() {
				return err
			}
			if b.ErrorAction(err, inSource) == ActionReport {
				return ioError(err)
			}
			continue // retry, after the pause for "stop"
		}
		off += n
		j.ProgressUpdate(uint64(n))
		if copyIt {
			b.Processed(n)
		}
	}
	return nil
}

// maxOffloadRun bounds one copy offload of a commit.
const maxOffloadRun = 16 << 20

// offloadRun copies by copy offload the run of data at off that the
// first layers nodes of from's chain allocate, up to maxOffloadRun, and
// returns its length; 0 when it copied nothing (the run is not longer
// than a chunk, the nodes do not allow offload, or it failed).
func offloadRun(ctx context.Context, from, to *blockdev.Child, layers int, off, end int64) int64 {
	st, depth, err := from.Node().BlockStatusAbove(ctx, from, off, min(maxOffloadRun, end-off))
	if err != nil || depth < 1 || depth > layers || st.Flags&blockdev.StatusData == 0 || st.Length <= chunkSize {
		return 0
	}
	n := st.Length / chunkSize * chunkSize
	if ok, err := blockdev.CopyRange(ctx, from, off, to, off, n); !ok || err != nil {
		return 0
	}
	return n
}

// prepare drops the committed layers: the overlay of top now uses base
// (QEMU's commit_prepare, bdrv_drop_intermediate from the filter down).
func (cj *commitJob) prepare(j *Job) error {
	g := cj.b.Graph()
	return g.Do(func(lk *blockdev.Locked) error {
		// The job's edges and frozen links would stand in the way of the
		// change.
		cj.thaw(lk)
		cj.b.release(lk)
		bf := ""
		if cj.backingFile != nil {
			bf = *cj.backingFile
		}
		if err := chain.DropIntermediate(j.Context(), lk, cj.active, cj.commitTop, cj.base, bf); err != nil {
			return err
		}
		cj.commitTop = nil // closed with the dropped layers
		return nil
	})
}

// abort takes the filter out again: the chain is as before the job.
func (cj *commitJob) abort(j *Job) {
	g := cj.b.Graph()
	g.Do(func(lk *blockdev.Locked) error {
		cj.undo(context.Background(), lk)
		return nil
	})
}

func (cj *commitJob) clean(j *Job) {
	g := cj.b.Graph()
	g.Do(func(lk *blockdev.Locked) error {
		cj.undo(context.Background(), lk)
		return nil
	})
}
