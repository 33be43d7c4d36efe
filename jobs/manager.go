// Package jobs runs background jobs the way QEMU does: the job state
// machine (QAPI's JobStatus and JobVerb, QEMU's transition and verb
// tables), the registry of jobs by id, JOB_STATUS_CHANGE events, the job-*
// commands and query-jobs, and the kinds of job (blockdev-create here;
// block jobs build on the same core).
//
// A job is started with Manager.Start and a Spec: its Body runs in a
// goroutine, calling PausePoint/Sleep between steps and reporting progress;
// when it returns, the manager moves the job through WAITING and PENDING
// to CONCLUDED (or through ABORTING when it failed or was cancelled),
// calling the kind's Hooks on the way, and job-dismiss (or auto-dismiss)
// removes it:
//
//	created → running → waiting → pending → concluded → null
//	                 ↘ (error or cancel) aborting → concluded → null
//
// Locking: the manager has a control lock, held by job commands and by
// the processing of a finished body (QEMU does both under its big lock),
// and a state lock for the fields the body reads and writes. The control
// lock comes before the graph lock: hooks may take the graph lock, and
// code holding the graph lock must not call the manager's commands
// (package lockorder ranks the locks; tests built with the lockcheck tag
// panic on a wrong order).
// Events are emitted with the state lock held, so they leave in the order
// of the transitions.
package jobs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/internal/lockorder"
	"github.com/qbmond/qbmond/keyval"
	"github.com/qbmond/qbmond/qmp"
)

// Emitter sends QMP events; *qmp.Dispatcher is one.
type Emitter interface {
	Emit(name string, data any)
}

// Manager owns the jobs.
type Manager struct {
	em  Emitter
	log zerolog.Logger

	ctl lockorder.Mutex[lockorder.JobControl] // serialises commands and completion processing

	mu     sync.Mutex // guards the jobs' state and the list
	jobs   []*Job     // newest first, as QEMU lists them
	closed bool

	wg sync.WaitGroup // bodies still running
}

// New returns a manager that emits events through em.
func New(em Emitter, log zerolog.Logger) *Manager {
	return &Manager{em: em, log: log}
}

// Start creates a job and starts it: CREATED and RUNNING are emitted, and
// the body runs in its own goroutine. Start returns once the body has gone
// to the background (Job.Background) or the job has stopped running (it
// has failed, or finished up to PENDING or CONCLUDED); the body goes on
// from Background once the reply to the command running in ctx has been
// sent (qmp.AfterReply), so that its events follow that reply as QSD's do.
// The caller must not hold the graph lock.
func (m *Manager) Start(ctx context.Context, spec Spec) (*Job, error) {
	j, err := m.Create(spec)
	if err != nil {
		return nil, err
	}
	j.Begin(ctx)
	return j, nil
}

// Create creates a job without starting it (QEMU's job_create): it is
// CREATED until Begin. A transaction creates its jobs while it prepares
// and starts them when it commits; one that aborts cancels them.
func (m *Manager) Create(spec Spec) (*Job, error) {
	m.ctl.Lock()
	defer m.ctl.Unlock()
	return m.createCtl(spec)
}

// createCtl is Create with the control lock held.
func (m *Manager) createCtl(spec Spec) (*Job, error) {
	if !keyval.IDWellFormed(spec.ID) {
		return nil, fmt.Errorf("Invalid job ID '%s'", spec.ID)
	}
	if spec.Run == nil {
		return nil, errors.New("jobs: Start without a body")
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, errors.New("the job manager is shutting down")
	}
	if m.findLocked(spec.ID) != nil {
		m.mu.Unlock()
		return nil, fmt.Errorf("Job ID '%s' already in use", spec.ID)
	}
	j := &Job{m: m, id: spec.ID, typ: spec.Type, body: spec.Run, hooks: spec.Hooks, data: spec.Data,
		autoFinalize: !spec.ManualFinalize, autoDismiss: !spec.ManualDismiss, drainsOnExit: spec.DrainsOnExit,
		copiesInBackground: spec.CopiesInBackground,
		kick:               make(chan struct{}, 1), bg: make(chan struct{}), release: make(chan struct{}),
		concluded: make(chan struct{}), bodyDone: make(chan struct{}), processed: make(chan struct{})}
	j.ctx, j.cancel = context.WithCancel(context.WithValue(context.Background(), jobKey{}, j))
	j.txn = spec.Txn
	if j.txn == nil {
		j.txn = &Txn{}
	}
	// Newest first, as QEMU's job_txn_add_job inserts at the list's
	// head: a transaction prepares, finalizes and aborts its jobs in
	// that order, which shows in the order of their events.
	j.txn.jobs = append([]*Job{j}, j.txn.jobs...)
	m.transitionLocked(j, StatusCreated)
	m.jobs = append([]*Job{j}, m.jobs...)
	if spec.created != nil {
		// The control lock keeps other commands away meanwhile.
		m.mu.Unlock()
		err := spec.created(j)
		m.mu.Lock()
		if err == nil && m.closed {
			err = errors.New("the job manager is shutting down")
		}
		if err != nil {
			j.txn.remove(j)
			m.dismissLocked(j)
			m.mu.Unlock()
			return nil, err
		}
	}
	m.mu.Unlock()
	return j, nil
}

// Begin starts a created job: RUNNING, and the body runs in its own
// goroutine. It returns once the body has gone to the background
// (Job.Background) or the job has stopped running; the body goes on from
// Background once the reply to the command running in ctx has been sent
// (qmp.AfterReply), so that its events follow that reply as QSD's do. A
// job cancelled before it began does not begin.
func (j *Job) Begin(ctx context.Context) {
	j.m.ctl.Lock()
	started := j.beginCtl(ctx)
	j.m.ctl.Unlock()
	if started {
		j.waitStarted()
	}
}

// beginCtl starts the job's goroutine (control lock held); false when the
// job cannot begin (cancelled, or begun already).
func (j *Job) beginCtl(ctx context.Context) bool {
	m := j.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if j.status != StatusCreated || j.started {
		return false
	}
	j.started = true
	m.transitionLocked(j, StatusRunning)
	j.busy = true
	m.wg.Add(1)
	qmp.AfterReply(ctx, j.releaseBody)
	qmp.WhenReplied(ctx, j.settleStart)
	go m.run(j)
	return true
}

// startSettle bounds how long the monitor waits after a job's start for
// the job's first wait.
const startSettle = 30 * time.Millisecond

// settleStart runs after the reply to the command that started j: QEMU
// enters a new job's coroutine before the monitor reads its next command,
// and a job with little to do (or throttled) has finished, or sleeps, by
// then, its events sent. So the monitor waits a little until the body
// sleeps, is paused or has ended (and its end been processed); a job
// busy copying lets it go on.
func (j *Job) settleStart() {
	j.waitFor(startSettle, func() bool { return j.sleeping || j.paused || isClosed(j.bodyDone) })
	if isClosed(j.bodyDone) {
		select {
		case <-j.processed:
		case <-time.After(settleWait):
		}
	}
}

// waitStarted waits until the body has gone to the background, stopped
// running, or parked at a pause point (a job begun in a drained section).
func (j *Job) waitStarted() {
	for {
		select {
		case <-j.bg:
			return
		case <-time.After(time.Millisecond):
			j.m.mu.Lock()
			parked := j.paused
			j.m.mu.Unlock()
			if parked {
				return
			}
		}
	}
}

// waitFor waits up to d (state lock not held) until cond holds, checked
// with the state lock held.
func (j *Job) waitFor(d time.Duration, cond func() bool) {
	deadline := time.Now().Add(d)
	for {
		j.m.mu.Lock()
		ok := cond()
		j.m.mu.Unlock()
		if ok || time.Now().After(deadline) {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// run is a job's goroutine: a pause point, the body, then the processing
// of its result.
func (m *Manager) run(j *Job) {
	defer m.wg.Done()
	var err error
	if err = j.PausePoint(); err == nil {
		err = j.body(j.ctx, j)
	}
	m.mu.Lock()
	j.result = err
	m.mu.Unlock()
	close(j.bodyDone)
	// A cancel may hold the result back until its command has replied.
	m.mu.Lock()
	gate := j.endGate
	m.mu.Unlock()
	if gate != nil {
		<-gate
	}
	m.ctl.Lock()
	m.takeCompletionCtl(j)
	m.ctl.Unlock()
	close(j.processed)
	j.bgOnce.Do(func() { close(j.bg) })
}

// takeCompletionCtl processes the body's result unless that was done
// already (control lock held, body returned).
func (m *Manager) takeCompletionCtl(j *Job) {
	m.mu.Lock()
	taken := j.taken
	j.taken = true
	err := j.result
	m.mu.Unlock()
	if !taken {
		m.completedLocked(j, err)
	}
}

// transitionLocked moves j to status to, emitting JOB_STATUS_CHANGE when
// the status changes. A move QEMU's table forbids is a bug in this package.
func (m *Manager) transitionLocked(j *Job, to Status) {
	from := j.status
	if !CanTransition(from, to) {
		panic(fmt.Sprintf("jobs: job '%s' cannot go from %s to %s", j.id, from, to))
	}
	j.status = to
	if to != from {
		m.em.Emit("JOB_STATUS_CHANGE", StatusChange{Status: to, ID: j.id})
	}
}

// StatusChange is the data of JOB_STATUS_CHANGE, members in QSD's order.
type StatusChange struct {
	ID     string `json:"id"`
	Status Status `json:"status"`
}

func (m *Manager) findLocked(id string) *Job {
	for _, j := range m.jobs {
		if j.id == id {
			return j
		}
	}
	return nil
}

// Find returns the job with the given id, or nil.
func (m *Manager) Find(id string) *Job {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.findLocked(id)
}

// Jobs returns the jobs, newest first.
func (m *Manager) Jobs() []*Job {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*Job(nil), m.jobs...)
}

// Query returns query-jobs' list, newest first.
func (m *Manager) Query() []Info {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Info, 0, len(m.jobs))
	for _, j := range m.jobs {
		out = append(out, j.infoLocked())
	}
	return out
}

// verbErr is QEMU's refusal of a verb in the job's status.
func verbErr(j *Job, v Verb) error {
	return fmt.Errorf("Job '%s' in state '%s' cannot accept command verb '%s'", j.id, j.status, v)
}

// CheckVerb tells whether the job accepts verb v now, with QEMU's error if
// not (block-job-set-speed asks it for set-speed).
func (j *Job) CheckVerb(v Verb) error {
	j.m.mu.Lock()
	defer j.m.mu.Unlock()
	if !VerbAllowed(v, j.status) {
		return verbErr(j, v)
	}
	return nil
}

// errNotFound is QEMU's reply to a job-* command naming no job.
var errNotFound = errors.New("Job not found")

// withJob runs f on the job named id with the control lock held.
func (m *Manager) withJob(id string, f func(j *Job) error) error {
	m.ctl.Lock()
	defer m.ctl.Unlock()
	j := m.Find(id)
	if j == nil {
		return errNotFound
	}
	return f(j)
}

// Pause is job-pause.
func (m *Manager) Pause(id string) error { return m.withJob(id, (*Job).userPauseCtl) }

// Resume is job-resume.
func (m *Manager) Resume(id string) error { return m.withJob(id, (*Job).userResumeCtl) }

// Cancel is job-cancel (force) or a block-job-cancel. A job that ends
// after the reply ends before Cancel returns; CancelAfterReply leaves
// that to after the reply of the command running with ctx.
func (m *Manager) Cancel(id string, force bool) error {
	return m.CancelAfterReply(context.Background(), id, force)
}

// CancelAfterReply is Cancel for a QMP command running with ctx.
func (m *Manager) CancelAfterReply(ctx context.Context, id string, force bool) error {
	var finish func()
	err := m.withJob(id, func(j *Job) (err error) {
		finish, err = j.userCancelCtl(force)
		return err
	})
	if finish != nil {
		qmp.AfterReply(ctx, finish)
	}
	return err
}

// Complete is job-complete.
func (m *Manager) Complete(id string) error { return m.withJob(id, (*Job).userCompleteCtl) }

// CompleteAfterReply is job-complete as the command runs it: a job that
// drains on its way out (QEMU's mirror) ends in a bottom half there, so
// its result waits until the command has replied.
func (m *Manager) CompleteAfterReply(ctx context.Context, id string) error {
	var finish func()
	err := m.withJob(id, func(j *Job) (err error) {
		finish, err = j.completeGatedCtl()
		return err
	})
	if finish != nil {
		qmp.AfterReply(ctx, finish)
	}
	return err
}

// UserCompleteAfterReply is CompleteAfterReply on j (block-job-complete).
func (j *Job) UserCompleteAfterReply(ctx context.Context) error {
	var finish func()
	err := j.ctlDo(func() (err error) {
		finish, err = j.completeGatedCtl()
		return err
	})
	if finish != nil {
		qmp.AfterReply(ctx, finish)
	}
	return err
}

// completeGatedCtl is userCompleteCtl with the body's result held back
// for a job that drains on exit; finish lets it go.
func (j *Job) completeGatedCtl() (finish func(), err error) {
	if !j.drainsOnExit {
		return nil, j.userCompleteCtl()
	}
	m := j.m
	m.mu.Lock()
	var gate chan struct{}
	if j.endGate == nil {
		gate = make(chan struct{})
		j.endGate = gate
	}
	m.mu.Unlock()
	if err := j.userCompleteCtl(); err != nil {
		if gate != nil {
			m.mu.Lock()
			if j.endGate == gate {
				j.endGate = nil
			}
			m.mu.Unlock()
			close(gate)
		}
		return nil, err
	}
	if gate == nil {
		return nil, nil
	}
	return func() {
		close(gate)
		m.waitEnd(j, false)
	}, nil
}

// Finalize is job-finalize.
func (m *Manager) Finalize(id string) error { return m.withJob(id, (*Job).userFinalizeCtl) }

// Dismiss is job-dismiss.
func (m *Manager) Dismiss(id string) error { return m.withJob(id, (*Job).userDismissCtl) }

// UserPause, UserResume, UserCancel, UserComplete, UserFinalize and
// UserDismiss are the client verbs on a job found by other means (the
// block-job-* commands find jobs by device too).
func (j *Job) UserPause() error { return j.ctlDo(j.userPauseCtl) }

// UserResume is job-resume on j.
func (j *Job) UserResume() error { return j.ctlDo(j.userResumeCtl) }

// UserCancel is a client's cancel of j.
func (j *Job) UserCancel(force bool) error {
	var finish func()
	err := j.ctlDo(func() (err error) {
		finish, err = j.userCancelCtl(force)
		return err
	})
	if finish != nil {
		finish()
	}
	return err
}

// UserComplete is job-complete on j.
func (j *Job) UserComplete() error { return j.ctlDo(j.userCompleteCtl) }

// UserFinalize is job-finalize on j.
func (j *Job) UserFinalize() error { return j.ctlDo(j.userFinalizeCtl) }

// UserDismiss is job-dismiss on j.
func (j *Job) UserDismiss() error { return j.ctlDo(j.userDismissCtl) }

func (j *Job) ctlDo(f func() error) error {
	j.m.ctl.Lock()
	defer j.m.ctl.Unlock()
	return f()
}

func (j *Job) userPauseCtl() error {
	m := j.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if !VerbAllowed(VerbPause, j.status) {
		return verbErr(j, VerbPause)
	}
	if j.userPaused {
		return errors.New("Job is already paused")
	}
	j.userPaused = true
	j.pauseLocked()
	m.settleLocked(j, func() bool { return j.paused })
	return nil
}

// settleWait bounds how long a pause or resume command waits for the
// job to act on it.
const settleWait = 100 * time.Millisecond

// settleLocked waits a little (state lock held, released meanwhile) until
// done() holds, when the body is idle (sleeping or paused, not in I/O):
// QEMU enters an idle job's coroutine before the command replies, so the
// JOB_STATUS_CHANGE of a pause or resume precedes the reply.
func (m *Manager) settleLocked(j *Job, done func() bool) {
	if j.busy || j.deferred {
		return
	}
	deadline := time.Now().Add(settleWait)
	for !done() && !j.deferred && time.Now().Before(deadline) {
		m.mu.Unlock()
		time.Sleep(time.Millisecond)
		m.mu.Lock()
	}
}

func (j *Job) userResumeCtl() error {
	m := j.m
	m.mu.Lock()
	if !j.userPaused || j.pauseCount <= 0 {
		m.mu.Unlock()
		return errors.New("Can't resume a job that was not paused")
	}
	if !VerbAllowed(VerbResume, j.status) {
		defer m.mu.Unlock()
		return verbErr(j, VerbResume)
	}
	m.mu.Unlock()
	if j.hooks.UserResume != nil {
		j.hooks.UserResume(j)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	j.userPaused = false
	j.pauseCount--
	if j.pauseCount == 0 {
		j.kickLocked()
		m.settleLocked(j, func() bool { return !j.paused })
	}
	return nil
}

// userCancelCtl is a client's cancel (control lock held). The function
// it returns, if not nil, must be called once the control lock is
// released (after the command's reply, for QMP): see cancelCtl.
func (j *Job) userCancelCtl(force bool) (finish func(), err error) {
	if err := j.CheckVerb(VerbCancel); err != nil {
		return nil, err
	}
	return j.m.cancelCtl(j, force), nil
}

// cancelCtl cancels j (QEMU's job_cancel): a concluded job is dismissed;
// a job whose body has finished is aborted at once when the cancel is
// forced; a running body is told (ctx cancelled when forced) and woken.
//
// QEMU enters an idle job's coroutine from the cancel command, and a
// forced cancel ends it there and then: the job is aborted and its events
// sent before the command replies. So does cancelCtl, when the body
// returns at once. A job that drains on its way out (QEMU's mirror)
// yields there and ends right after the reply, before the next command
// (QEMU's completion bottom half): then the body's result waits for the
// returned finish function, which the caller runs after the reply.
func (m *Manager) cancelCtl(j *Job, force bool) (finish func()) {
	m.mu.Lock()
	if j.status == StatusConcluded {
		m.dismissLocked(j)
		m.mu.Unlock()
		return nil
	}
	m.mu.Unlock()
	if j.hooks.Cancel != nil {
		force = j.hooks.Cancel(j, force)
	} else {
		force = true
	}
	m.mu.Lock()
	if j.userPaused {
		if j.hooks.UserResume != nil {
			m.mu.Unlock()
			j.hooks.UserResume(j)
			m.mu.Lock()
		}
		j.userPaused = false
		j.pauseCount--
	}
	// A soft cancel of a job whose body is done changes nothing.
	if force || !j.deferred {
		j.cancelled = true
		j.forceCancel = j.forceCancel || force
	}
	if j.deferred {
		abort := j.forceCancel
		m.mu.Unlock()
		if abort {
			m.finalizeOneCtl(j)
		}
		return nil
	}
	if !j.started {
		// Never begun: it ends now (QEMU's job_completed from
		// job_cancel), without BLOCK_JOB_* events.
		j.taken = true
		m.mu.Unlock()
		m.completedLocked(j, nil)
		return nil
	}
	forced, idle := j.forceCancel, !j.busy
	if forced {
		j.cancel()
	}
	var gate chan struct{}
	if forced && idle && j.drainsOnExit {
		gate = make(chan struct{})
		j.endGate = gate
	}
	wasPaused := j.paused
	j.kickLocked()
	m.mu.Unlock()
	if forced && wasPaused {
		// QEMU enters a paused job's coroutine from the cancel command:
		// it leaves its pause (back to RUNNING or READY) before the reply.
		j.waitFor(settleWait, func() bool { return !j.paused || isClosed(j.bodyDone) })
	}
	switch {
	case gate != nil:
		return func() {
			close(gate)
			m.waitEnd(j, false)
		}
	case forced && idle:
		m.waitEnd(j, true)
	}
	return nil
}

// waitEnd waits a little for the body to return and processes its result
// (with the control lock held or not, as ctlHeld says); a body still busy
// ends on its own.
func (m *Manager) waitEnd(j *Job, ctlHeld bool) {
	select {
	case <-j.bodyDone:
		if !ctlHeld {
			m.ctl.Lock()
			defer m.ctl.Unlock()
		}
		m.takeCompletionCtl(j)
	case <-time.After(settleWait):
	}
}

func (j *Job) userCompleteCtl() error {
	m := j.m
	m.mu.Lock()
	if !VerbAllowed(VerbComplete, j.status) {
		defer m.mu.Unlock()
		return verbErr(j, VerbComplete)
	}
	if j.cancelled || j.hooks.Complete == nil {
		defer m.mu.Unlock()
		return fmt.Errorf("The active block job '%s' cannot be completed", j.id)
	}
	m.mu.Unlock()
	return j.hooks.Complete(j)
}

func (j *Job) userFinalizeCtl() error {
	if err := j.CheckVerb(VerbFinalize); err != nil {
		return err
	}
	j.m.finalizeCtl(j)
	return nil
}

func (j *Job) userDismissCtl() error {
	m := j.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if !VerbAllowed(VerbDismiss, j.status) {
		return verbErr(j, VerbDismiss)
	}
	m.dismissLocked(j)
	return nil
}

// updateResultLocked is QEMU's job_update_rc: a forced cancel without
// another error becomes ErrCanceled, and a job with an error is ABORTING.
func (m *Manager) updateResultLocked(j *Job) {
	if j.err == nil && j.forceCancel {
		j.err = ErrCanceled
	}
	if j.err != nil {
		m.transitionLocked(j, StatusAborting)
	}
}

// completedLocked processes a body's result (control lock held), QEMU's
// job_completed: a failed or cancelled job aborts its transaction; a
// successful one waits (WAITING) until every job of its transaction has
// finished, then they all go to PENDING together and, unless one needs
// job-finalize, are finalised together.
func (m *Manager) completedLocked(j *Job, err error) {
	m.mu.Lock()
	j.deferred, j.busy = true, false
	if err != nil && j.forceCancel && errors.Is(err, context.Canceled) {
		err = nil // the cancel, not a failure of its own
	}
	j.err = err
	m.updateResultLocked(j)
	failed := j.err != nil
	if !failed {
		m.transitionLocked(j, StatusWaiting)
	}
	m.mu.Unlock()
	if failed {
		m.txnAbortCtl(j)
		return
	}
	t := j.txn
	m.mu.Lock()
	for _, o := range t.jobs {
		if !o.completedLocked() {
			m.mu.Unlock()
			return // the last job of the transaction to finish goes on
		}
	}
	manual := 0
	for _, o := range t.jobs {
		m.transitionLocked(o, StatusPending)
		if !o.autoFinalize {
			manual++
			if o.hooks.OnPending != nil {
				o.hooks.OnPending(o.infoLocked())
			}
		}
	}
	m.mu.Unlock()
	if manual == 0 {
		m.finalizeCtl(j)
	}
}

// completedLocked tells whether the job's body is done (QEMU's
// job_is_completed). State lock held.
func (j *Job) completedLocked() bool {
	switch j.status {
	case StatusWaiting, StatusPending, StatusAborting, StatusConcluded, StatusNull:
		return true
	}
	return false
}

// finalizeCtl is QEMU's job_do_finalize: every job of j's transaction
// prepares; if one fails the transaction aborts, otherwise each commits
// and concludes.
func (m *Manager) finalizeCtl(j *Job) {
	t := j.txn
	for _, o := range append([]*Job(nil), t.jobs...) {
		m.mu.Lock()
		ok := o.err == nil
		m.mu.Unlock()
		if ok && o.hooks.Prepare != nil {
			err := o.hooks.Prepare(o)
			m.mu.Lock()
			o.err = err
			m.updateResultLocked(o)
			m.mu.Unlock()
			if err != nil {
				m.txnAbortCtl(o)
				return
			}
		}
	}
	for _, o := range append([]*Job(nil), t.jobs...) {
		m.finalizeOneCtl(o)
	}
}

// txnAbortCtl is QEMU's job_completed_txn_abort: j failed (or was
// cancelled), so every other job of its transaction is cancelled with
// force; once each has stopped, all are aborted, in the transaction's
// order (newest job first).
func (m *Manager) txnAbortCtl(j *Job) {
	t := j.txn
	if t.aborting {
		return
	}
	t.aborting = true
	for _, o := range t.jobs {
		if o != j {
			m.cancelAsync(o)
		}
	}
	for len(t.jobs) > 0 {
		o := t.jobs[0]
		m.mu.Lock()
		done := o.completedLocked()
		started := o.started
		m.mu.Unlock()
		if !done {
			if started {
				// Its goroutine gives the result up to us (it takes
				// the control lock only after closing bodyDone).
				<-o.bodyDone
			}
			m.mu.Lock()
			o.taken = true
			o.deferred, o.busy = true, false
			o.err = o.result
			if o.err != nil && errors.Is(o.err, context.Canceled) {
				o.err = nil
			}
			m.updateResultLocked(o)
			m.mu.Unlock()
		}
		m.finalizeOneCtl(o)
	}
}

// cancelAsync cancels a job of a transaction that is aborting: forced,
// without waiting (QEMU's job_cancel_async with force).
func (m *Manager) cancelAsync(j *Job) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if j.userPaused {
		j.userPaused = false
		j.pauseCount--
	}
	j.cancelled, j.forceCancel = true, true
	j.cancel()
	j.kickLocked()
}

// finalizeOneCtl commits or aborts a finished job, tells the kind, and
// concludes the job (dismissing it when auto-dismiss is on). A job that
// never began sends no BLOCK_JOB_* event, as in QEMU.
func (m *Manager) finalizeOneCtl(j *Job) {
	m.mu.Lock()
	m.updateResultLocked(j)
	failed := j.err != nil
	m.mu.Unlock()
	if !failed && j.hooks.Commit != nil {
		j.hooks.Commit(j)
	}
	if failed && j.hooks.Abort != nil {
		j.hooks.Abort(j)
	}
	if j.hooks.Clean != nil {
		j.hooks.Clean(j)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	j.txn.remove(j)
	if j.hooks.OnFinalized != nil && j.started {
		j.hooks.OnFinalized(j.infoLocked(), j.forceCancel)
	}
	m.transitionLocked(j, StatusConcluded)
	close(j.concluded)
	if j.autoDismiss {
		m.dismissLocked(j)
	}
}

// dismissLocked takes a concluded job out of the registry (NULL).
func (m *Manager) dismissLocked(j *Job) {
	j.busy, j.paused, j.deferred = false, false, true
	m.transitionLocked(j, StatusNull)
	for i, x := range m.jobs {
		if x == j {
			m.jobs = append(m.jobs[:i], m.jobs[i+1:]...)
			break
		}
	}
	j.cancel()
}

// CancelAll cancels every job with force and waits until they are gone
// (daemon shutdown, QEMU's job_cancel_sync_all); no job starts after it.
func (m *Manager) CancelAll() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	for {
		m.ctl.Lock()
		jobs := m.Jobs()
		if len(jobs) == 0 {
			m.ctl.Unlock()
			break
		}
		j := jobs[0]
		finish := m.cancelCtl(j, true)
		m.ctl.Unlock()
		if finish != nil {
			finish()
		}
		<-j.concluded
	}
	m.wg.Wait()
}
