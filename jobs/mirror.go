package jobs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/qbmond/qbmond/bitmap"
	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qapi"
)

// Active commit: block-commit whose top is the active layer, a mirror of
// the active layer into base, as QEMU runs it (a mirror job of type
// "commit", QEMU's commit_active_start and mirror.c). A mirror_top filter
// goes above the active layer, so that every guest write passes it: the
// job first copies what the layers above base allocate, then keeps
// copying what writes change; once nothing is left to copy it is READY
// and stays in sync. job-complete switches every parent of the active
// layer over to base (the pivot); a cancel while READY ends the job
// without the switch.
//
// What writes change is learnt from a write observer on the filter, which
// marks the written range dirty once the write has finished. For the
// pivot the observer also holds new writes back (QEMU drains the source):
// the job waits until the writes in flight are over and copies the last
// dirty ranges; then the graph is switched, and the writes held back go
// to the node the filter's parents use now.

// The job's sizes, QEMU's: the dirty bitmap's granularity is the target's
// cluster size within [4 KiB, 64 KiB]; one iteration copies a run of
// dirty granules of up to mirrorBufSize in requests of up to mirrorMaxIO;
// the job goes on without sleeping for the speed limit for up to
// mirrorSlice at a time.
const (
	mirrorBufSize = 16 << 20
	mirrorMaxIO   = 1 << 20
	mirrorSlice   = 100 * time.Millisecond
)

type mirrorJob struct {
	b            *BlockJob
	top, base    *blockdev.Node
	mirrorTop    *blockdev.Node
	topC, baseC  *blockdev.Child
	layers       int
	baseReadOnly bool
	unfreeze     func() // lets go of the links from mirrorTop to base
	removeObs    func()
	filterName   *string

	dirty  *bitmap.Bitmap
	cursor int64  // where the next iteration looks for dirty data
	buf    []byte // for copies that cannot be offloaded

	mu       sync.Mutex
	cond     *sync.Cond // signalled when in-flight writes end or the gate opens
	inflight int
	gate     bool          // writes are held back
	wake     chan struct{} // a write finished (one pending signal)
	complete bool          // job-complete was accepted
	exited   bool          // the graph is back to normal (exitCommon ran)
}

// stopper is the part of the mirror_top driver the job uses.
type stopper interface {
	SetCommit()
	Stop()
}

func (m *Manager) startActiveCommit(ctx context.Context, g *blockdev.Graph, a *qapi.BlockCommitArgs, id string, manFin, manDis bool) error {
	mj := &mirrorJob{wake: make(chan struct{}, 1), filterName: a.FilterNodeName}
	mj.cond = sync.NewCond(&mj.mu)
	_, err := m.StartBlock(ctx, g, BlockSpec{
		Spec: Spec{ID: id, Type: "commit", ManualFinalize: manFin, ManualDismiss: manDis,
			Run: mj.run, DrainsOnExit: true,
			Hooks: Hooks{
				Prepare:  func(j *Job) error { return mj.exit(j, false) },
				Abort:    func(j *Job) { mj.exit(j, true) },
				Clean:    func(*Job) { mj.openGate() },
				Complete: mj.completeReq,
				Cancel: func(j *Job, force bool) bool {
					// A soft cancel of a READY job ends it without the pivot.
					st := j.Status()
					return force || (st != StatusReady && st != StatusStandby)
				},
			}},
		Speed:   qapi.Deref(a.Speed),
		OnError: OnError(qapi.Deref(a.OnError)),
		Before: func(lk *blockdev.Locked, b *BlockJob) error {
			p, err := resolveCommit(lk, a)
			if err != nil {
				return err
			}
			return mj.before(ctx, lk, b, p.top, p.base)
		},
		Setup: func(lk *blockdev.Locked, b *BlockJob) error { return mj.setup(ctx, lk, b) },
		Undo:  func(lk *blockdev.Locked, _ *BlockJob) { mj.undoSetup(ctx, lk) },
	})
	return err
}

// before is QEMU's commit_active_start and the start of mirror_start_job:
// base made writable and the mirror_top filter put above the active
// layer, before the job exists.
func (mj *mirrorJob) before(ctx context.Context, lk *blockdev.Locked, b *BlockJob, top, base *blockdev.Node) error {
	mj.b, mj.top, mj.base = b, top, base
	if base.ReadOnly() {
		if err := lk.SetReadOnly(ctx, base, false); err != nil {
			return err
		}
		mj.baseReadOnly = true
	}
	if top.SkipFilters() == base.SkipFilters() {
		return errors.New("Can't mirror node into itself")
	}
	opts := blockdev.Options{"driver": "mirror_top", "backing": top.Name(), "read-only": false}
	if mj.filterName != nil {
		opts["node-name"] = *mj.filterName
	}
	var err error
	if mj.mirrorTop, err = lk.AppendFilter(ctx, top, opts); err != nil {
		return err
	}
	// So that it can always be taken out again.
	mj.mirrorTop.SetNeverFreeze(lk)
	if s, ok := mj.mirrorTop.Driver().(stopper); ok {
		s.SetCommit()
		if err := lk.RefreshPerms(mj.mirrorTop); err != nil {
			return err
		}
	}
	return nil
}

// setup is the rest of mirror_start_job once the job exists: its edges
// with QEMU's permissions and the write observer. On failure StartBlock
// calls undoSetup.
func (mj *mirrorJob) setup(ctx context.Context, lk *blockdev.Locked, b *BlockJob) error {
	top, base := mj.top, mj.base
	if err := b.Created(lk, mj.mirrorTop, blockdev.PermConsistentRead,
		blockdev.PermConsistentRead|blockdev.PermWriteUnchanged|blockdev.PermWrite); err != nil {
		return err
	}
	var err error
	perm := blockdev.PermWrite
	if base.Length() < top.Length() {
		perm |= blockdev.PermResize
	}
	if mj.baseC, err = b.AddBackend(lk, base, perm,
		blockdev.PermWriteUnchanged|blockdev.PermConsistentRead|blockdev.PermWrite); err != nil {
		return err
	}
	gran := bitmap.DefaultGranularity(0)
	if di, err := base.Driver().Info(ctx); err == nil {
		gran = bitmap.DefaultGranularity(di.ClusterSize)
	}
	if mj.dirty, err = bitmap.New(top.Length(), gran); err != nil {
		return err
	}
	if mj.topC, err = b.AddNode(lk, top, "source", 0,
		blockdev.PermWriteUnchanged|blockdev.PermWrite|blockdev.PermConsistentRead); err != nil {
		return err
	}
	if _, err := b.AddNode(lk, base, "target", 0, blockdev.PermAll); err != nil {
		return err
	}
	mj.layers = layersBetween(top, base)
	filteredBase := findOverlay(top, base).BackingNode()
	shared := blockdev.PermWriteUnchanged | blockdev.PermWrite
	for it := top.FilterOrCOW(); it != nil && it != base; it = it.FilterOrCOW() {
		if it == filteredBase {
			shared |= blockdev.PermConsistentRead
		}
		if _, err := b.AddNode(lk, it, "intermediate node", 0, shared); err != nil {
			return err
		}
	}
	// The links from the filter down to base stay as they are until the
	// job ends.
	if mj.unfreeze, err = lk.FreezeChain(mj.mirrorTop, base); err != nil {
		return err
	}
	mj.removeObs = mj.mirrorTop.AddWriteObserver(blockdev.WriteObserver{Enter: mj.enter, Leave: mj.leave})
	return nil
}

// undoSetup takes away what a failed before and setup did.
func (mj *mirrorJob) undoSetup(ctx context.Context, lk *blockdev.Locked) {
	if mj.b == nil {
		return
	}
	mj.thaw(lk)
	mj.b.release(lk)
	mj.dropFilter(ctx, lk)
	mj.restoreBase(ctx, lk)
}

// dropFilter stops the filter forwarding and takes it out of the graph,
// if it is still there.
func (mj *mirrorJob) dropFilter(ctx context.Context, lk *blockdev.Locked) {
	f := mj.mirrorTop
	if f == nil {
		return
	}
	mj.mirrorTop = nil
	if lk.Lookup(f.Name()) != f {
		return // it closed with its last user
	}
	if s, ok := f.Driver().(stopper); ok {
		s.Stop()
		if err := lk.RefreshPerms(f); err != nil {
			mj.b.log.Error().Err(err).Msg("commit: mirror_top permissions")
		}
	}
	mj.b.DropFilter(ctx, lk, f)
}

// thaw unfreezes the links the job froze, if it did.
func (mj *mirrorJob) thaw(lk *blockdev.Locked) {
	if mj.unfreeze != nil {
		mj.unfreeze()
		mj.unfreeze = nil
	}
}

func (mj *mirrorJob) restoreBase(ctx context.Context, lk *blockdev.Locked) {
	if mj.baseReadOnly {
		mj.baseReadOnly = false
		if err := lk.SetReadOnly(ctx, mj.base, true); err != nil {
			mj.b.log.Warn().Err(err).Str("node", mj.base.Name()).Msg("commit: cannot make the base read-only again")
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

// closeGate holds new writes back and waits for those in flight.
func (mj *mirrorJob) closeGate() {
	mj.mu.Lock()
	mj.gate = true
	for mj.inflight > 0 {
		mj.cond.Wait()
	}
	mj.mu.Unlock()
}

func (mj *mirrorJob) openGate() {
	mj.mu.Lock()
	mj.gate = false
	mj.cond.Broadcast()
	mj.mu.Unlock()
}

func (mj *mirrorJob) completeReq(j *Job) error {
	if st := j.Status(); st != StatusReady && st != StatusStandby {
		return fmt.Errorf("The active block job '%s' cannot be completed", j.ID())
	}
	mj.mu.Lock()
	mj.complete = true
	mj.mu.Unlock()
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

// run is QEMU's mirror_run for an active commit: the initial dirty map,
// then iterations until the job is completed or cancelled.
func (mj *mirrorJob) run(ctx context.Context, j *Job) error {
	j.Background()
	b := mj.b
	length := mj.topC.Length()
	if mj.baseC.Length() < length {
		if err := mj.baseC.Truncate(ctx, length, false); err != nil {
			return ioError(err)
		}
	}
	// What the layers above base allocate is to be copied.
	for off := int64(0); off < length; {
		if err := b.RateLimitSleep(); err != nil {
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
	ready := false
	lastPause := time.Now()
	for {
		if err := j.PausePoint(); err != nil {
			return err
		}
		if j.IsCancelled() {
			return nil
		}
		// The count from before this pass's iteration decides, as in
		// QEMU: what an iteration copied is waited for first.
		cnt := mj.dirty.Count()
		j.SetProgressRemaining(uint64(cnt))
		if cnt != 0 && time.Since(lastPause) < mirrorSlice && b.IOStatus() == "ok" {
			if err := mj.iteration(ctx, j); err != nil {
				return err
			}
		}
		shouldComplete := false
		if cnt == 0 {
			if !ready {
				if err := mj.baseC.Flush(ctx); err != nil {
					if b.ErrorAction(err, false) == ActionReport {
						return ioError(err)
					}
					continue
				}
				ready = true
				j.Ready()
			}
			shouldComplete = mj.completing() || j.CancelRequested()
			cnt = mj.dirty.Count()
		}
		if cnt == 0 && shouldComplete {
			// Hold writes back and wait for those in flight: if they
			// changed nothing more, base is the active layer's exact
			// copy, and the writes stay held until the graph switch.
			mj.closeGate()
			if mj.dirty.Count() == 0 {
				if err := mj.baseC.Flush(ctx); err == nil {
					return nil
				}
			}
			mj.openGate()
			continue
		}
		// Once READY the job keeps up without a speed limit, idling for
		// a slice (or until a write) when there is nothing to copy.
		var err error
		switch {
		case ready && !shouldComplete && cnt == 0:
			err = mj.waitWork(j)
		case ready && !shouldComplete:
		default:
			err = b.RateLimitSleep()
		}
		if err != nil {
			return err
		}
		lastPause = time.Now()
	}
}

// iteration copies one run of dirty granules, starting at the first one
// at or after the cursor (QEMU's mirror_iteration): the run's bits are
// cleared, then it is copied in requests of up to mirrorMaxIO, what reads
// as zeroes written as zeroes. A failed request marks its range dirty
// again.
func (mj *mirrorJob) iteration(ctx context.Context, j *Job) error {
	b := mj.b
	length := mj.dirty.Size()
	gran := int64(mj.dirty.Granularity())
	off, run, ok := mj.dirty.NextDirtyArea(mj.cursor, -1)
	if !ok {
		if off, run, ok = mj.dirty.NextDirtyArea(0, -1); !ok {
			return nil
		}
	}
	if err := j.PausePoint(); err != nil {
		return err
	}
	if a := off % gran; a != 0 {
		off, run = off-a, run+a
	}
	run = min(run, mirrorBufSize)
	mj.dirty.Reset(off, run)
	end := off + run
	for off < end {
		st, err := mj.statusOf(ctx, off, end-off)
		n := st.Length
		data := err != nil || st.Flags&blockdev.StatusData != 0
		if data {
			n = min(n, mirrorMaxIO)
		}
		if n -= n % gran; n < gran {
			n = gran
		}
		n = min(n, length-off)
		zero := err == nil && !data && st.Flags&blockdev.StatusZero != 0
		inSource := true
		if zero {
			inSource = false
			err = mj.baseC.WriteZeroes(ctx, off, n, blockdev.ReqMayUnmap)
		} else if err == nil {
			// By copy offload where both ends are files, else through
			// the buffer.
			var ok bool
			if ok, err = blockdev.CopyRange(ctx, mj.topC, off, mj.baseC, off, n); !ok && err == nil {
				if int64(cap(mj.buf)) < n {
					mj.buf = make([]byte, n)
				}
				p := mj.buf[:n]
				if err = mj.topC.Read(ctx, off, p); err == nil {
					inSource = false
					err = mj.baseC.Write(ctx, off, p, 0)
				}
			} else if _, target := err.(*blockdev.TargetError); target {
				inSource = false
			}
		}
		if err != nil {
			mj.dirty.Set(off, end-off)
			mj.cursor = off
			if errors.Is(err, context.Canceled) && j.IsCancelled() {
				return err
			}
			if b.ErrorAction(err, inSource) == ActionReport {
				return ioError(err)
			}
			return nil
		}
		j.ProgressUpdate(uint64(n))
		if !zero {
			b.Processed(n)
		}
		off += n
	}
	mj.cursor = end
	return nil
}

// statusOf is the status of the active layer's view at off: data, zeroes
// or neither (what the chain has there).
func (mj *mirrorJob) statusOf(ctx context.Context, off, n int64) (blockdev.BlockStatus, error) {
	st, _, err := mj.top.BlockStatusAbove(ctx, mj.topC, off, n)
	if err == nil && st.Length <= 0 {
		st.Length = n
	}
	return st, err
}

// waitWork sleeps until a write ends, or the job is completed, paused or
// cancelled, or a slice has passed.
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
	return j.Sleep(mirrorSlice)
}

// exit is QEMU's mirror_exit_common, for prepare (abort false) and abort:
// the filter stops forwarding; when the job was completed and has not
// failed, every parent of the active layer moves to base; then the job's
// edges go, the filter leaves the graph and the writes held back go on.
func (mj *mirrorJob) exit(j *Job, abort bool) error {
	g := mj.b.Graph()
	defer mj.openGate()
	return g.Do(func(lk *blockdev.Locked) error {
		if mj.exited {
			return nil
		}
		mj.exited = true
		mj.thaw(lk)
		ctx := j.Context()
		if mj.removeObs != nil {
			mj.removeObs()
		}
		mj.b.DropNode(lk, mj.baseC)
		if s, ok := mj.mirrorTop.Driver().(stopper); ok {
			s.Stop()
			if err := lk.RefreshPerms(mj.mirrorTop); err != nil {
				mj.b.log.Error().Err(err).Msg("commit: mirror_top permissions")
			}
		}
		var err error
		if mj.completing() && !abort && !j.IsCancelled() {
			if ro := mj.top.ReadOnly(); ro != mj.base.ReadOnly() {
				if rerr := lk.SetReadOnly(ctx, mj.base, ro); rerr != nil {
					mj.b.log.Warn().Err(rerr).Str("node", mj.base.Name()).Msg("commit: base read-only state")
				}
			}
			if err = lk.ReplaceNode(ctx, mj.top, mj.base); err != nil {
				mj.b.log.Error().Err(err).Msg("commit: the pivot failed")
			} else {
				mj.baseReadOnly = false // base is the active layer now
			}
		}
		mj.b.release(lk)
		mj.dropFilter(context.Background(), lk)
		return err
	})
}
