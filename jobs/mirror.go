package jobs

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qbmond/qbmond/bitmap"
	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qapi"
)

// The mirror job, QEMU's mirror.c: blockdev-mirror and drive-mirror
// (mirror_qmp.go), and active commit, block-commit whose top is the active
// layer, a mirror of the active layer into its base (a job of type
// "commit", QEMU's commit_active_start). A mirror_top filter goes above
// the source, so that every guest write passes it: the job first copies
// what the source's chain allocates (down to base for sync top and
// commit, nothing for sync none; with the target zeroed first, or
// everything, when it must be), then keeps copying what writes change;
// once nothing is left to copy it is READY and stays in sync.
// job-complete switches every parent of the source (or of the node named
// by replaces) over to the target (the pivot); a cancel while READY ends
// the job without the switch, the target a consistent copy.
//
// What writes change is learnt from a write observer on the filter, which
// marks the written range dirty once the write has finished (in
// write-blocking mode the filter's active-write hook copies the write to
// the target instead, see activeWrite). For the pivot the observer also
// holds new writes back (QEMU drains the source): the job waits until the
// writes in flight are over and copies the last dirty ranges; then the
// graph is switched, and the writes held back go to the node the filter's
// parents use now.

// The job's sizes, QEMU's: the dirty bitmap's granularity is the target's
// cluster size within [4 KiB, 64 KiB] (unless granularity says otherwise);
// one iteration copies a run of dirty granules of up to the buffer size
// (mirrorBufSize unless buf-size says otherwise) in requests of up to a
// sixteenth of it, at least mirrorMaxIO;
// the job goes on without sleeping for the speed limit for up to
// mirrorSlice at a time.
const (
	mirrorBufSize = 16 << 20
	mirrorMaxIO   = 1 << 20
	mirrorSlice   = 100 * time.Millisecond
	// mirrorMaxInFlight bounds the requests an iteration has in flight.
	mirrorMaxInFlight = 16
)

type mirrorJob struct {
	b *BlockJob
	// src is the node mirrored (an active commit's top), target the copy
	// (its base); base is where the initial copy stops (sync top, commit:
	// the layers above it are copied; nil: the whole chain).
	src, target, base *blockdev.Node
	// commit: the target is in the source's backing chain (QEMU's
	// target_is_backing): the job shares writes and consistent reads of
	// the layers in between and freezes them.
	commit         bool
	none           bool // sync none: no initial copy
	mirrorTop      *blockdev.Node
	srcC, targetC  *blockdev.Child
	layers         int // layers from src down to base (0: the whole chain)
	targetReadOnly bool
	unfreeze       func() // lets go of the links from mirrorTop to target
	removeObs      func()
	unlistDirty    func() // takes the job's bitmap off the source's list
	filterName     *string
	typ            string // the job type, for log messages

	// The job's parameters, QEMU's (0: the default).
	granularity int64
	bufSize     int64
	unmap       bool
	zeroTarget  bool // the target is zeroed (or fully copied) first
	replaces    string
	backing     backingMode
	// writeBlocking: copy-mode write-blocking, guest writes are copied to
	// the target before they complete (once active is set: after the
	// initial dirty map, while the job has not failed or been cancelled).
	writeBlocking bool
	active        atomic.Bool
	failed        atomic.Bool // an active copy failed with the report policy
	failErr       error       // its error (under mu)
	copyMu        sync.Mutex  // serialises the job's active writes

	// The ranges the job's copies and active writes hold (lockRange),
	// and the copies in flight: how many, their bytes, and the first
	// failure by offset (opErr, opErrOff, opErrSrc: it was the source's).
	rangeMu   sync.Mutex
	rangeCond *sync.Cond
	ranges    [][2]int64
	opsN      int
	opsBytes  int64
	opErr     error
	opErrOff  int64
	opErrSrc  bool

	// Set by job-complete: the node whose place the target takes, and the
	// blocker on it.
	toReplace      *blockdev.Node
	unblockReplace func()

	dirty  *bitmap.Bitmap
	cursor int64       // where the next iteration looks for dirty data
	bufs   chan []byte // the buffers for copies in flight (mirrorSlots)

	mu       sync.Mutex
	cond     *sync.Cond // signalled when in-flight writes end or the gate opens
	inflight int
	gate     bool          // writes are held back
	wake     chan struct{} // a write finished (one pending signal)
	complete bool          // job-complete was accepted
	exited   bool          // the graph is back to normal (exitCommon ran)
}

// backingMode is what happens to the target's backing chain when the job
// ends without failing (QEMU's BlockMirrorBackingMode).
type backingMode int

const (
	backingLeave  backingMode = iota // as it is
	backingSource                    // the source's base (or, for sync none, the source)
	backingOpen                      // opened from the target's image header
)

func newMirrorJob(typ string) *mirrorJob {
	mj := &mirrorJob{wake: make(chan struct{}, 1), typ: typ, bufSize: mirrorBufSize, unmap: true}
	mj.cond = sync.NewCond(&mj.mu)
	mj.rangeCond = sync.NewCond(&mj.rangeMu)
	return mj
}

// stopper is the part of the mirror_top driver the job uses.
type stopper interface {
	SetCommit()
	Stop()
}

// activeSetter is mirror_top's hook for write-blocking mode.
type activeSetter interface {
	SetActiveWrite(func(ctx context.Context, kind int, off, n int64, data []byte, flags blockdev.ReqFlags, err error))
}

func (m *Manager) startActiveCommit(ctx context.Context, g *blockdev.Graph, a *qapi.BlockCommitArgs, id string, manFin, manDis bool) error {
	mj := newMirrorJob("commit")
	mj.filterName = a.FilterNodeName
	_, err := m.StartBlock(ctx, g, mj.spec(ctx, id, manFin, manDis, qapi.Deref(a.Speed),
		OnError(qapi.Deref(a.OnError)), "",
		func(lk *blockdev.Locked, b *BlockJob) error {
			p, err := resolveCommit(lk, a)
			if err != nil {
				return err
			}
			mj.src, mj.target, mj.base, mj.commit = p.top, p.base, p.base, true
			return mj.before(ctx, lk, b)
		}))
	return err
}

// spec is the BlockSpec of a mirror job; before resolves the nodes and
// calls mj.before.
func (mj *mirrorJob) spec(ctx context.Context, id string, manFin, manDis bool, speed int64, onErr, onTarget OnError,
	before func(lk *blockdev.Locked, b *BlockJob) error) BlockSpec {
	return BlockSpec{
		Spec: Spec{ID: id, Type: mj.typ, ManualFinalize: manFin, ManualDismiss: manDis,
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
				// As QEMU's mirror_pause, a pause waits for the copies
				// in flight.
				Pause: func(*Job) { mj.waitOps() },
			}},
		Speed:         speed,
		OnError:       onErr,
		OnTargetError: onTarget,
		Before:        before,
		Setup:         func(lk *blockdev.Locked, b *BlockJob) error { return mj.setup(ctx, lk, b) },
		Undo:          func(lk *blockdev.Locked, _ *BlockJob) { mj.undoSetup(ctx, lk) },
	}
}

// before is the start of QEMU's mirror_start_job (for an active commit,
// commit_active_start first makes the base writable): the checks, and the
// mirror_top filter put above the source, before the job exists.
func (mj *mirrorJob) before(ctx context.Context, lk *blockdev.Locked, b *BlockJob) error {
	mj.b = b
	src, target := mj.src, mj.target
	if mj.commit && target.ReadOnly() {
		if err := lk.SetReadOnly(ctx, target, false); err != nil {
			return err
		}
		mj.targetReadOnly = true
	}
	if mj.bufSize < 0 {
		return errors.New("Invalid parameter 'buf-size'")
	}
	if mj.bufSize == 0 {
		mj.bufSize = mirrorBufSize
	}
	if src.SkipFilters() == target.SkipFilters() {
		return errors.New("Can't mirror node into itself")
	}
	if !mj.commit {
		// QEMU's target_is_backing.
		mj.commit = chainContains(lk, src, target)
	}
	opts := blockdev.Options{"driver": "mirror_top", "backing": src.Name(), "read-only": false}
	if mj.filterName != nil {
		opts["node-name"] = *mj.filterName
	}
	var err error
	if mj.mirrorTop, err = lk.AppendFilter(ctx, src, opts); err != nil {
		return err
	}
	// So that it can always be taken out again.
	mj.mirrorTop.SetNeverFreeze(lk)
	if s, ok := mj.mirrorTop.Driver().(stopper); ok && mj.commit {
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
	src, target := mj.src, mj.target
	if err := b.Created(lk, mj.mirrorTop, blockdev.PermConsistentRead,
		blockdev.PermConsistentRead|blockdev.PermWriteUnchanged|blockdev.PermWrite); err != nil {
		return err
	}
	perm, shared := blockdev.PermWrite, blockdev.PermWriteUnchanged
	if mj.commit {
		if target.Length() < src.Length() {
			perm |= blockdev.PermResize
		}
		shared |= blockdev.PermConsistentRead | blockdev.PermWrite
	} else if chainContains(lk, src, target.SkipFilters()) {
		return errors.New("Cannot mirror to a filter on top of a node in the source's backing chain")
	}
	var err error
	if mj.targetC, err = b.AddBackend(lk, target, perm, shared); err != nil {
		return err
	}
	gran := uint64(mj.granularity)
	if gran == 0 {
		gran = bitmap.DefaultGranularity(0)
		if di, err := target.Driver().Info(ctx); err == nil {
			gran = bitmap.DefaultGranularity(di.ClusterSize)
		}
	}
	mj.granularity = int64(gran)
	mj.bufSize = (mj.bufSize + mj.granularity - 1) / mj.granularity * mj.granularity
	if mj.dirty, err = bitmap.New(src.Length(), gran); err != nil {
		return err
	}
	if mj.srcC, err = b.AddNode(lk, src, "source", 0,
		blockdev.PermWriteUnchanged|blockdev.PermWrite|blockdev.PermConsistentRead); err != nil {
		return err
	}
	if _, err := b.AddNode(lk, target, "target", 0, blockdev.PermAll); err != nil {
		return err
	}
	if mj.base != nil {
		mj.layers = layersBetween(src, mj.base)
	}
	if mj.commit {
		filteredTarget := findOverlay(src, target).BackingNode()
		shared := blockdev.PermWriteUnchanged | blockdev.PermWrite
		for it := src.FilterOrCOW(); it != nil && it != target; it = it.FilterOrCOW() {
			if it == filteredTarget {
				shared |= blockdev.PermConsistentRead
			}
			if _, err := b.AddNode(lk, it, "intermediate node", 0, shared); err != nil {
				return err
			}
		}
		// The links from the filter down to the target stay as they are
		// until the job ends.
		if mj.unfreeze, err = lk.FreezeChain(mj.mirrorTop, target); err != nil {
			return err
		}
	}
	// QEMU 7.2 keeps the job's dirty bitmap on the source node, where
	// query-named-block-nodes lists it (anonymous, not busy) until the job
	// ends. It records the source's writes once they are done (so the
	// observer below only gates them), except in write-blocking mode, where activeWrite alone decides which
	// granules a write leaves dirty (a recording bitmap would mark the
	// partial granules first, and activeWrite would then leave them to
	// the background copy).
	mj.unlistDirty = src.AddAnonymousBitmap(mj.dirty, !mj.writeBlocking)
	mj.removeObs = mj.mirrorTop.AddWriteObserver(blockdev.WriteObserver{Enter: mj.enter, Leave: mj.leave})
	if a, ok := mj.mirrorTop.Driver().(activeSetter); ok && mj.writeBlocking {
		a.SetActiveWrite(mj.activeWrite)
	}
	return nil
}

// activeWrite is QEMU 7.2's write-blocking path (bdrv_mirror_top_do_write
// and do_sync_target_write), run once the source has done a guest
// request. While the job copies actively the request goes to the target
// too before it completes, and the whole granules it covers are clean;
// an unaligned end in a granule that is dirty anyway is left to the
// background copy. Otherwise the range becomes dirty.
func (mj *mirrorJob) activeWrite(ctx context.Context, kind int, off, n int64, data []byte, flags blockdev.ReqFlags, err error) {
	j := mj.b.j
	if !mj.active.Load() || mj.failed.Load() || j.IsCancelled() {
		mj.dirty.Set(off, n)
		return
	}
	if err != nil || n <= 0 {
		return
	}
	mj.copyMu.Lock()
	defer mj.copyMu.Unlock()
	gran := mj.granularity
	base, end := off, off+n
	// Wait for the job's copies of the granules written (one that read
	// the source before this write must not land on the target after it).
	held := off / gran * gran
	mj.lockRange(held, (end+gran-1)/gran*gran)
	defer mj.unlockRange(held)
	if off%gran != 0 && mj.dirty.Get(off) {
		off = (off/gran + 1) * gran
	}
	if end%gran != 0 && end > off && mj.dirty.Get(end-1) {
		end = end / gran * gran
	}
	if end <= off {
		return
	}
	if a, b := (off+gran-1)/gran*gran, end/gran*gran; a < b {
		mj.dirty.Reset(a, b-a)
	}
	j.IncreaseProgressRemaining(uint64(end - off))
	switch kind {
	case 0:
		err = mj.targetC.Write(ctx, off, data[off-base:end-base], flags)
	case 1:
		err = mj.targetC.WriteZeroes(ctx, off, end-off, flags)
	default:
		err = mj.targetC.Discard(ctx, off, end-off)
	}
	if err == nil {
		j.ProgressUpdate(uint64(end - off))
		return
	}
	mj.dirty.Set(off, end-off)
	if mj.b.ErrorAction(err, false) == ActionReport {
		mj.mu.Lock()
		if mj.failErr == nil {
			mj.failErr = err
		}
		mj.mu.Unlock()
		mj.failed.Store(true)
	}
}

// undoSetup takes away what a failed before and setup did.
func (mj *mirrorJob) undoSetup(ctx context.Context, lk *blockdev.Locked) {
	if mj.b == nil {
		return
	}
	mj.thaw(lk)
	mj.unlist()
	mj.b.release(lk)
	mj.dropFilter(ctx, lk)
	mj.restoreTarget(ctx, lk)
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
			mj.b.log.Error().Err(err).Msg(mj.typ + ": mirror_top permissions")
		}
	}
	mj.b.DropFilter(ctx, lk, f)
}

// unlist takes the job's bitmap off the source's list, once. Caller
// holds the graph lock.
func (mj *mirrorJob) unlist() {
	if mj.unlistDirty != nil {
		mj.unlistDirty()
		mj.unlistDirty = nil
	}
}

// thaw unfreezes the links the job froze, if it did.
func (mj *mirrorJob) thaw(lk *blockdev.Locked) {
	if mj.unfreeze != nil {
		mj.unfreeze()
		mj.unfreeze = nil
	}
}

// restoreTarget makes an active commit's base read-only again.
func (mj *mirrorJob) restoreTarget(ctx context.Context, lk *blockdev.Locked) {
	if mj.targetReadOnly {
		mj.targetReadOnly = false
		if err := lk.SetReadOnly(ctx, mj.target, true); err != nil {
			mj.b.log.Warn().Err(err).Str("node", mj.target.Name()).Msg(mj.typ + ": cannot make the base read-only again")
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

// leave counts a write out and wakes the job: the source's recording
// bitmap (mj.dirty, listed on the source in setup) has marked the range
// already; in write-blocking mode activeWrite decided about it.
func (mj *mirrorJob) leave(off, length int64) {
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

// completeReq is job-complete (QEMU's mirror_complete): the node to
// replace, when there is one, is looked up and blocked now.
func (mj *mirrorJob) completeReq(j *Job) error {
	if st := j.Status(); st != StatusReady && st != StatusStandby {
		return fmt.Errorf("The active block job '%s' cannot be completed", j.ID())
	}
	if mj.replaces != "" {
		err := mj.b.Graph().Do(func(lk *blockdev.Locked) error {
			n := lk.Lookup(mj.replaces)
			if n == nil {
				return fmt.Errorf("Node name '%s' not found", mj.replaces)
			}
			if mj.unblockReplace == nil {
				mj.unblockReplace = n.AddBlocker(lk, errors.New("block device is in use by block-job-complete"))
			}
			mj.toReplace = n
			return nil
		})
		if err != nil {
			return err
		}
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

// run is QEMU's mirror_run: the sizes, the initial dirty map, then
// iterations until the job is completed or cancelled.
//
// QEMU runs the job in the starting command's coroutine until its first
// request that waits: j.Background() comes before the first I/O that
// reads or writes data, so that a mirror with nothing to copy is READY
// before the command replies, as there.
func (mj *mirrorJob) run(ctx context.Context, j *Job) (err error) {
	defer func() {
		if err != nil {
			// A failure ends the job after the reply (QEMU's job_exit
			// runs in a bottom half).
			j.Background()
		}
	}()
	length := mj.srcC.Length()
	if tl := mj.targetC.Length(); mj.commit && mj.base == mj.target {
		// An active commit grows the base to the top's size.
		if tl < length {
			j.Background()
			if err := mj.targetC.Truncate(ctx, length, false); err != nil {
				return ioError(err)
			}
		}
	} else if tl != length {
		return errors.New("Source and target image have different sizes")
	}
	if err := mj.dirtyInit(ctx, j, length); err != nil || j.IsCancelled() {
		return err
	}
	mj.active.Store(true)
	defer mj.waitOps()
	return mj.loop(ctx, j)
}

// dirtyInit is QEMU's mirror_dirty_init: the target zeroed first when it
// must be (or, when it cannot be zeroed cheaply, everything marked to be
// copied), then what the layers above base allocate marked.
func (mj *mirrorJob) dirtyInit(ctx context.Context, j *Job, length int64) error {
	b := mj.b
	if mj.zeroTarget {
		if !mj.canZeroWithUnmap() {
			mj.dirty.Set(0, length)
			return nil
		}
		j.Background()
		flags := blockdev.ReqFlags(0)
		if mj.unmap {
			flags = blockdev.ReqMayUnmap
		}
		step := int64(math.MaxInt32) / mj.granularity * mj.granularity
		for off := int64(0); off < length; off += step {
			if err := b.RateLimitSleep(); err != nil {
				return err
			}
			if j.IsCancelled() {
				return nil
			}
			n := min(step, length-off)
			if err := mj.targetC.WriteZeroes(ctx, off, n, flags); err != nil {
				// QEMU's initial zeroing ignores the error here; the
				// copy that follows writes every byte anyway.
				mj.dirty.Set(0, length)
				return nil
			}
		}
	}
	if mj.none {
		return nil
	}
	// QEMU's scan waits for metadata reads (QSD replies before an active
	// commit of an empty layer is READY).
	j.Background()
	for off := int64(0); off < length; {
		if err := b.RateLimitSleep(); err != nil {
			return err
		}
		if j.IsCancelled() {
			return nil
		}
		st, depth, err := mj.src.BlockStatusAbove(ctx, mj.srcC, off, length-off)
		if err != nil {
			return ioError(err)
		}
		if st.Length <= 0 {
			break
		}
		if depth >= 1 && (mj.layers == 0 || depth <= mj.layers) {
			mj.dirty.Set(off, st.Length)
		}
		off += st.Length
	}
	return nil
}

// canZeroWithUnmap is QEMU's bdrv_can_write_zeroes_with_unmap for the
// target: writable, opened with discard=unmap, and of a format that zeroes
// by deallocating (qcow2).
func (mj *mirrorJob) canZeroWithUnmap() bool {
	t := mj.target
	return !t.ReadOnly() && t.DiscardUnmap() && t.DriverName() == "qcow2"
}

// loop is the main loop of mirror_run.
func (mj *mirrorJob) loop(ctx context.Context, j *Job) error {
	b := mj.b
	ready := false
	lastPause := time.Now()
	for {
		if mj.failed.Load() {
			mj.mu.Lock()
			err := mj.failErr
			mj.mu.Unlock()
			return ioError(err)
		}
		if err := mj.settle(j, false); err != nil {
			return err
		}
		if err := j.PausePoint(); err != nil {
			return err
		}
		if j.IsCancelled() {
			return nil
		}
		// The count from before this pass's iteration decides, as in
		// QEMU: what an iteration copied is waited for first.
		cnt := mj.dirty.Count()
		j.SetProgressRemaining(uint64(cnt + mj.bytesInFlight()))
		if cnt != 0 && time.Since(lastPause) < mirrorSlice && b.IOStatus() == "ok" {
			j.Background()
			if err := mj.iteration(ctx, j); err != nil {
				return err
			}
			if err := mj.settle(j, false); err != nil {
				return err
			}
		}
		shouldComplete := false
		if cnt == 0 && mj.opsPending() {
			// In sync only once the copies in flight are done (and
			// none failed).
			j.Background()
			if err := mj.settle(j, true); err != nil {
				return err
			}
			continue
		}
		if cnt == 0 {
			if !ready {
				if err := mj.targetC.Flush(ctx); err != nil {
					j.Background()
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
			// changed nothing more, the target is the source's exact
			// copy, and the writes stay held until the graph switch.
			j.Background()
			mj.closeGate()
			if mj.dirty.Count() == 0 {
				if err := mj.targetC.Flush(ctx); err == nil {
					return nil
				}
			}
			mj.openGate()
			continue
		}
		// Once READY the job keeps up without a speed limit, idling for
		// a slice (or until a write) when there is nothing to copy.
		j.Background()
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
// cleared, then it is copied in requests of up to a sixteenth of the
// buffer (at least mirrorMaxIO), what reads as zeroes written as zeroes,
// what is neither data nor zeroes discarded. As in QEMU the requests run
// concurrently and go on after the iteration, up to mirrorMaxInFlight of
// them and no more than the buffer size in all (see mirrorSlots), each
// with a buffer of the job's pool; one waits for those in flight on an
// overlapping range (lockRange). A failed request marks its range dirty
// again, and so does what was not started after it; settle acts on the
// failure.
func (mj *mirrorJob) iteration(ctx context.Context, j *Job) error {
	length := mj.dirty.Size()
	gran := mj.granularity
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
	run = min(run, mj.bufSize)
	maxIO := max(mj.bufSize/16, mirrorMaxIO)
	mj.dirty.Reset(off, run)
	end := off + run
	mj.cursor = end
	zflags := blockdev.ReqFlags(0)
	if mj.unmap {
		zflags = blockdev.ReqMayUnmap
	}
	if mj.bufs == nil {
		mj.bufs = make(chan []byte, mirrorSlots(mj.bufSize, maxIO))
		for range cap(mj.bufs) {
			mj.bufs <- nil
		}
	}
	canUnmap := mj.canZeroWithUnmap()
	for off < end && !mj.opsFailed() {
		buf := <-mj.bufs
		// No active write may land between a copy's block status,
		// read and write, nor may two copies of a range overlap
		// (QEMU's in-flight conflicts): the rest of the run is held
		// while its status is asked, then the request's range until
		// it is done.
		mj.lockRange(off, end)
		st, err := mj.statusOf(ctx, off, end-off)
		n := st.Length
		data := err != nil || st.Flags&blockdev.StatusData != 0
		if data {
			n = min(n, maxIO)
		}
		if n -= n % gran; n < gran {
			n = gran
			data = true
		}
		n = min(n, length-off)
		if err != nil {
			mj.unlockRange(off)
			mj.bufs <- buf
			mj.opStart(0)
			mj.opDone(off, 0, err, true)
			break
		}
		mj.shrinkRange(off, off+n)
		zero := !data && st.Flags&blockdev.StatusZero != 0
		if data || !canUnmap {
			// For the speed limit when it is started, as in QEMU
			// (the requests go on while the job sleeps).
			mj.b.Processed(n)
		}
		mj.opStart(n)
		go func(off, n int64, buf []byte) {
			inSource := true
			var err error
			switch {
			case zero:
				inSource = false
				err = mj.targetC.WriteZeroes(ctx, off, n, zflags)
			case !data:
				inSource = false
				err = mj.targetC.Discard(ctx, off, n)
			default:
				// By copy offload where both ends are files, else
				// through the buffer.
				var ok bool
				if ok, err = blockdev.CopyRange(ctx, mj.srcC, off, mj.targetC, off, n); !ok && err == nil {
					if int64(cap(buf)) < n {
						buf = make([]byte, n)
					}
					p := buf[:n]
					if err = mj.srcC.Read(ctx, off, p); err == nil {
						inSource = false
						err = mj.targetC.Write(ctx, off, p, 0)
					}
				} else if _, target := err.(*blockdev.TargetError); target {
					inSource = false
				}
			}
			mj.unlockRange(off)
			mj.bufs <- buf
			if err != nil {
				mj.dirty.Set(off, n)
			} else {
				j.ProgressUpdate(uint64(n))
			}
			mj.opDone(off, n, err, inSource)
		}(off, n, buf)
		off += n
	}
	if off < end {
		mj.dirty.Set(off, end-off) // not started after a failure
	}
	return nil
}

// settle acts on a failed copy once those in flight are done (with wait,
// it waits for them anyway): the cursor goes back to the first failure,
// and the error policy decides, as QEMU's mirror_error_action.
func (mj *mirrorJob) settle(j *Job, wait bool) error {
	if !wait && !mj.opsFailed() {
		return nil
	}
	mj.waitOps()
	mj.rangeMu.Lock()
	err, off, inSource := mj.opErr, mj.opErrOff, mj.opErrSrc
	mj.opErr = nil
	mj.rangeMu.Unlock()
	if err == nil {
		return nil
	}
	mj.cursor = off
	if errors.Is(err, context.Canceled) && j.IsCancelled() {
		return err
	}
	if mj.b.ErrorAction(err, inSource) == ActionReport {
		return ioError(err)
	}
	return nil
}

func (mj *mirrorJob) opStart(n int64) {
	mj.rangeMu.Lock()
	mj.opsN++
	mj.opsBytes += n
	mj.rangeMu.Unlock()
}

// opDone ends a copy of n bytes at off; err is its failure.
func (mj *mirrorJob) opDone(off, n int64, err error, inSource bool) {
	mj.rangeMu.Lock()
	defer mj.rangeMu.Unlock()
	mj.opsN--
	mj.opsBytes -= n
	if err != nil && (mj.opErr == nil || off < mj.opErrOff) {
		mj.opErr, mj.opErrOff, mj.opErrSrc = err, off, inSource
	}
	mj.rangeCond.Broadcast()
}

// waitOps waits until no copy is in flight.
func (mj *mirrorJob) waitOps() {
	mj.rangeMu.Lock()
	defer mj.rangeMu.Unlock()
	for mj.opsN > 0 {
		mj.rangeCond.Wait()
	}
}

// opsFailed tells whether a copy failed (and settle has not acted on it).
func (mj *mirrorJob) opsFailed() bool {
	mj.rangeMu.Lock()
	defer mj.rangeMu.Unlock()
	return mj.opErr != nil
}

// opsPending tells whether copies are in flight or one failed.
func (mj *mirrorJob) opsPending() bool {
	mj.rangeMu.Lock()
	defer mj.rangeMu.Unlock()
	return mj.opsN > 0 || mj.opErr != nil
}

// bytesInFlight is what the copies in flight copy.
func (mj *mirrorJob) bytesInFlight() int64 {
	mj.rangeMu.Lock()
	defer mj.rangeMu.Unlock()
	return mj.opsBytes
}

// mirrorSlots is how many requests an iteration keeps in flight: as many
// requests of maxIO as the buffer holds, at least one and at most
// mirrorMaxInFlight (QEMU's MAX_IN_FLIGHT).
func mirrorSlots(bufSize, maxIO int64) int {
	return int(max(1, min(mirrorMaxInFlight, bufSize/maxIO)))
}

// lockRange waits until no copy or active write of the job holds a range
// overlapping [off, end), then holds it (write-blocking mode: QEMU's
// in-flight bitmap, against the active writes' conflicts).
func (mj *mirrorJob) lockRange(off, end int64) {
	mj.rangeMu.Lock()
	defer mj.rangeMu.Unlock()
	for mj.rangeBusy(off, end) {
		mj.rangeCond.Wait()
	}
	mj.ranges = append(mj.ranges, [2]int64{off, end})
}

func (mj *mirrorJob) rangeBusy(off, end int64) bool {
	for _, r := range mj.ranges {
		if r[0] < end && off < r[1] {
			return true
		}
	}
	return false
}

// shrinkRange makes the range held from off end at end.
func (mj *mirrorJob) shrinkRange(off, end int64) {
	mj.rangeMu.Lock()
	defer mj.rangeMu.Unlock()
	for i := range mj.ranges {
		if mj.ranges[i][0] == off {
			mj.ranges[i][1] = end
			break
		}
	}
	mj.rangeCond.Broadcast()
}

// unlockRange lets go of the range held from off.
func (mj *mirrorJob) unlockRange(off int64) {
	mj.rangeMu.Lock()
	defer mj.rangeMu.Unlock()
	for i, r := range mj.ranges {
		if r[0] == off {
			mj.ranges = append(mj.ranges[:i], mj.ranges[i+1:]...)
			break
		}
	}
	mj.rangeCond.Broadcast()
}

// statusOf is the status of the source's view at off: data, zeroes or
// neither (what the chain has there).
func (mj *mirrorJob) statusOf(ctx context.Context, off, n int64) (blockdev.BlockStatus, error) {
	st, _, err := mj.src.BlockStatusAbove(ctx, mj.srcC, off, n)
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
// the filter stops forwarding; the target's backing chain is set up as
// the job's backing mode says; when the job was completed and has not
// failed, every parent of the source (or of the node to replace) moves to
// the target; then the job's edges go, the filter leaves the graph and
// the writes held back go on.
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
		mj.unlist()
		if a, ok := mj.mirrorTop.Driver().(activeSetter); ok && mj.writeBlocking {
			a.SetActiveWrite(nil)
		}
		mj.b.DropNode(lk, mj.targetC)
		if s, ok := mj.mirrorTop.Driver().(stopper); ok {
			s.Stop()
			if err := lk.RefreshPerms(mj.mirrorTop); err != nil {
				mj.b.log.Error().Err(err).Msg(mj.typ + ": mirror_top permissions")
			}
		}
		var err error
		if !abort {
			err = mj.setTargetBacking(ctx, lk)
		}
		if mj.completing() && !abort && !j.IsCancelled() {
			to := mj.src
			if mj.toReplace != nil {
				to = mj.toReplace
			}
			if ro := to.ReadOnly(); ro != mj.target.ReadOnly() {
				if rerr := lk.SetReadOnly(ctx, mj.target, ro); rerr != nil {
					mj.b.log.Warn().Err(rerr).Str("node", mj.target.Name()).Msg(mj.typ + ": target read-only state")
				}
			}
			if rerr := lk.ReplaceNode(ctx, to, mj.target); rerr != nil {
				mj.b.log.Error().Err(rerr).Msg(mj.typ + ": the pivot failed")
				err = rerr
			} else {
				mj.targetReadOnly = false // the target is the active layer now
			}
		}
		if mj.unblockReplace != nil {
			mj.unblockReplace()
			mj.unblockReplace = nil
		}
		mj.b.release(lk)
		mj.dropFilter(context.Background(), lk)
		return err
	})
}

// setTargetBacking gives the target its backing chain when the job ends
// without failing: the source's base (sync none: the source itself), or
// the one its image header names.
func (mj *mirrorJob) setTargetBacking(ctx context.Context, lk *blockdev.Locked) error {
	switch mj.backing {
	case backingSource:
		backing := mj.base
		if mj.none {
			backing = mj.src
		}
		t := mj.target.SkipFilters()
		if t.BackingNode() != backing {
			if err := lk.SetBacking(ctx, t, backing); err != nil {
				mj.b.log.Error().Err(err).Msg(mj.typ + ": cannot set the target's backing node")
				return err
			}
		}
	case backingOpen:
		return mj.openTargetBacking(ctx, lk)
	}
	return nil
}
