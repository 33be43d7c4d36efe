package jobs

import (
	"context"
	"errors"
	"sync"

	"github.com/qbmond/qbmond/bitmap"
	"github.com/qbmond/qbmond/blockdev"
)

// Active commit: block-commit whose top is the active layer, a mirror of
// the active layer into base, as QEMU runs it (a mirror job of type
// "commit"). The job first copies what the layers above base allocate,
// then keeps copying what writes change; once nothing is left to copy it
// is READY and stays in sync. job-complete switches every parent of the
// active layer over to base (the pivot); a cancel while READY ends the job
// without the switch.
//
// What writes change is learnt from a write observer on the active layer,
// which marks the written range dirty once the write has finished. For the
// pivot the observer also holds new writes back: the job waits until the
// writes in flight are over, copies the last dirty ranges, and switches
// the graph; the writes held back then go to base.

// mirrorGranularity is the unit in which the job tracks what to copy.
const mirrorGranularity = 64 << 10

type mirrorJob struct {
	b            *BlockJob
	top, base    *blockdev.Node
	topC, baseC  *blockdev.Child
	layers       int
	baseReadOnly bool
	removeObs    func()

	dirty *bitmap.Bitmap

	mu       sync.Mutex
	cond     *sync.Cond // signalled when in-flight writes end or the gate opens
	inflight int
	gate     bool          // writes are held back
	wake     chan struct{} // a write finished (one pending signal)
	complete bool          // job-complete was accepted
	pivoted  bool
}

func (m *Manager) startActiveCommit(ctx context.Context, g *blockdev.Graph, a *commitArgs, id string, manFin, manDis bool) error {
	mj := &mirrorJob{wake: make(chan struct{}, 1)}
	mj.cond = sync.NewCond(&mj.mu)
	_, err := m.StartBlock(ctx, g, BlockSpec{
		Spec: Spec{ID: id, Type: "commit", ManualFinalize: manFin, ManualDismiss: manDis,
			Run: mj.run,
			Hooks: Hooks{
				Prepare:  mj.prepare,
				Clean:    mj.clean,
				Complete: mj.completeReq,
				Cancel: func(j *Job, force bool) bool {
					// A soft cancel of a READY job ends it without the pivot.
					st := j.Status()
					return force || (st != StatusReady && st != StatusStandby)
				},
			}},
		Speed:   a.Speed,
		OnError: a.OnError,
		Setup: func(b *BlockJob) error {
			top := g.Lookup(a.Device)
			if top == nil {
				return errors.New("the device went away")
			}
			var base *blockdev.Node
			switch {
			case a.BaseNode != nil:
				base = g.Lookup(*a.BaseNode)
			case a.Base != nil:
				base = findBackingImage(top, *a.Base)
			default:
				base = findBase(top)
			}
			if base == nil || !chainContains(top, base) || base == top {
				return errors.New("the backing chain changed")
			}
			return mj.setup(ctx, b, top, base)
		},
	})
	return err
}

func (mj *mirrorJob) setup(ctx context.Context, b *BlockJob, top, base *blockdev.Node) error {
	g := b.Graph()
	mj.b, mj.top, mj.base = b, top, base
	for it := top; it != base; it = it.BackingNode() {
		mj.layers++
	}
	if base.ReadOnly() {
		if err := g.SetReadOnly(ctx, base, false); err != nil {
			return err
		}
		mj.baseReadOnly = true
	}
	fail := func(err error) error {
		b.release()
		mj.restoreBase(ctx)
		return err
	}
	var err error
	if mj.topC, err = b.AddNode(top, "source", blockdev.PermConsistentRead,
		blockdev.PermConsistentRead|blockdev.PermWrite|blockdev.PermWriteUnchanged); err != nil {
		return fail(err)
	}
	for it := top.BackingNode(); it != base; it = it.BackingNode() {
		if _, err := b.AddNode(it, "intermediate node", 0, blockdev.PermAll); err != nil {
			return fail(err)
		}
	}
	perm := blockdev.PermConsistentRead | blockdev.PermWrite
	if base.Length() < top.Length() {
		perm |= blockdev.PermResize
	}
	if mj.baseC, err = b.AddNode(base, "target", perm, blockdev.PermAll); err != nil {
		return fail(err)
	}
	mj.dirty, err = bitmap.New(top.Length(), mirrorGranularity)
	if err != nil {
		return fail(err)
	}
	mj.removeObs = top.AddWriteObserver(blockdev.WriteObserver{Enter: mj.enter, Leave: mj.leave})
	return nil
}

func (mj *mirrorJob) restoreBase(ctx context.Context) {
	if mj.baseReadOnly {
		mj.baseReadOnly = false
		if err := mj.b.Graph().SetReadOnly(ctx, mj.base, true); err != nil {
			mj.b.j.m.log.Warn().Err(err).Str("node", mj.base.Name()).Msg("commit: cannot make the base read-only again")
		}
	}
}

// enter holds writes back while the gate is closed and counts them.
func (mj *mirrorJob) enter(ctx context.Context) error {
	mj.mu.Lock()
	defer mj.mu.Unlock()
	for mj.gate {
		mj.cond.Wait()
	}
	mj.inflight++
	return nil
}

// leave marks the written range to be copied again.
func (mj *mirrorJob) leave(off, length int64) {
	mj.dirty.Set(off, length)
	mj.mu.Lock()
	mj.inflight--
	if mj.inflight == 0 {
		mj.cond.Broadcast()
	}
	mj.mu.Unlock()
	select {
	case mj.wake <- struct{}{}:
	default:
	}
}

func (mj *mirrorJob) completeReq(j *Job) error {
	mj.mu.Lock()
	mj.complete = true
	mj.mu.Unlock()
	select {
	case mj.wake <- struct{}{}:
	default:
	}
	j.m.mu.Lock()
	j.kickLocked()
	j.m.mu.Unlock()
	return nil
}

func (mj *mirrorJob) completing() bool {
	mj.mu.Lock()
	defer mj.mu.Unlock()
	return mj.complete
}

// run copies the initial data, then follows the writes until completed or
// cancelled.
func (mj *mirrorJob) run(ctx context.Context, j *Job) error {
	j.Background()
	b := mj.b
	length := mj.top.Length()
	if mj.base.Length() < length {
		if err := mj.baseC.Truncate(ctx, length, false); err != nil {
			return err
		}
	}
	// What the layers above base allocate is to be copied.
	for off := int64(0); off < length; {
		if err := j.PausePoint(); err != nil {
			return err
		}
		st, depth, err := mj.top.BlockStatusAbove(ctx, mj.topC, off, length-off)
		if err != nil {
			return ioError(err)
		}
		if st.Length <= 0 {
			break
		}
		if depth >= 1 && depth <= mj.layers {
			mj.dirty.Set(off, st.Length)
		}
		off += st.Length
	}
	j.SetProgressRemaining(uint64(mj.dirty.Count()))
	var buf []byte
	ready := false
	for {
		if err := j.PausePoint(); err != nil {
			return err
		}
		if j.CancelRequested() {
			return nil
		}
		start, n, ok := mj.dirty.NextDirtyArea(0, length)
		if !ok {
			if !ready {
				ready = true
				j.Ready()
			}
			if mj.completing() {
				// Hold writes back, wait for those in flight, and copy
				// what they changed: then base is the active layer's
				// exact copy, and prepare switches the graph.
				mj.mu.Lock()
				mj.gate = true
				for mj.inflight > 0 {
					mj.cond.Wait()
				}
				mj.mu.Unlock()
				if mj.dirty.Count() == 0 {
					return nil
				}
				continue // copy the rest with the writes held back
			}
			// Wait for a write, a completion, a pause or a cancel.
			if err := mj.waitWork(j); err != nil {
				return err
			}
			continue
		}
		n = min(n, b.ChunkSize())
		mj.dirty.Reset(start, n)
		if int64(cap(buf)) < n {
			buf = make([]byte, n)
		}
		p := buf[:n]
		readErr := true
		err := mj.topC.Read(ctx, start, p)
		if err == nil {
			readErr = false
			err = mj.baseC.Write(ctx, start, p, 0)
		}
		if err != nil {
			mj.dirty.Set(start, n)
			if errors.Is(err, context.Canceled) && j.IsCancelled() {
				return err
			}
			if b.ErrorAction(err, readErr) == ActionReport {
				return ioError(err)
			}
			continue
		}
		j.ProgressUpdate(uint64(n))
		j.SetProgressRemaining(uint64(mj.dirty.Count()))
		if err := b.Throttle(n); err != nil {
			return err
		}
	}
}

// waitWork sleeps until a write ends, the job is completed, paused or
// cancelled.
func (mj *mirrorJob) waitWork(j *Job) error {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-mj.wake:
			j.m.mu.Lock()
			j.kickLocked()
			j.m.mu.Unlock()
		case <-stop:
		}
	}()
	// A long sleep that any of the above cuts short.
	return j.Sleep(1 << 40)
}

func (mj *mirrorJob) openGate() {
	mj.mu.Lock()
	mj.gate = false
	mj.cond.Broadcast()
	mj.mu.Unlock()
}

// prepare pivots when the job was completed: every parent of the active
// layer now uses base.
func (mj *mirrorJob) prepare(j *Job) error {
	if !mj.completing() || j.CancelRequested() {
		return nil
	}
	g := mj.b.Graph()
	g.Lock()
	defer g.Unlock()
	mj.removeObs()
	mj.b.release()
	if err := g.ReplaceNode(j.Context(), mj.top, mj.base); err != nil {
		return err
	}
	mj.pivoted = true
	mj.baseReadOnly = false // base is the active layer now
	return nil
}

func (mj *mirrorJob) clean(j *Job) {
	g := mj.b.Graph()
	g.Lock()
	if mj.removeObs != nil {
		mj.removeObs()
	}
	mj.b.release()
	mj.restoreBase(context.Background())
	g.Unlock()
	mj.openGate()
}
