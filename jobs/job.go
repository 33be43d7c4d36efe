package jobs

import (
	"context"
	"errors"
	"github.com/qbmond/qbmond/qapi"
	"sync"
	"time"
)

// Body is the work of a job. It runs in its own goroutine once the job has
// started and returns nil on success or an error in QEMU's words, which
// becomes the job's error (query-jobs' "error"). ctx is cancelled when the
// job is cancelled with force; a body that returns ctx's error then ends
// as QEMU's cancelled jobs do ("Operation canceled").
//
// A body that runs for more than a moment calls j.PausePoint (or j.Sleep)
// between steps so that job-pause takes effect, and j.Background before it
// first waits for I/O (see Background).
type Body func(ctx context.Context, j *Job) error

// Hooks are the optional parts of a job kind, QEMU's JobDriver callbacks.
// Any may be nil.
//
// Prepare, Commit, Abort, Clean, Complete, Cancel and UserResume run with
// the manager's control lock held (the lock job commands take), never with
// its state lock: they may take the graph lock, and must not call the
// Manager's or Job's command methods (UserPause, UserCancel, ...).
// OnPending, OnReady and OnFinalized run with the state lock held, in the
// order of the JOB_STATUS_CHANGE events around them: they are for emitting
// events (BLOCK_JOB_*), get a snapshot, and must not call any Job method
// that reads or changes its state.
type Hooks struct {
	// Prepare runs at finalisation when the body succeeded, before Commit;
	// an error aborts the job instead (it becomes the job's error).
	Prepare func(j *Job) error
	// Commit makes a successful job's result final; Abort undoes a failed
	// or cancelled one. Clean runs after either.
	Commit, Abort, Clean func(j *Job)
	// Complete asks a READY job to finish (job-complete). Without it the
	// job cannot be completed.
	Complete func(j *Job) error
	// Cancel is told of a cancel request and returns whether it is forced
	// (a soft cancel of a READY mirror completes it instead). Without it
	// every cancel is forced.
	Cancel func(j *Job, force bool) bool
	// UserResume runs when a user's pause ends (job-resume, or a cancel
	// lifting it); block jobs reset their I/O status there.
	UserResume func(j *Job)
	// Pause and Resume run in the body's goroutine around a pause at a
	// pause point.
	Pause, Resume func(j *Job)

	// OnPending tells that the job waits for job-finalize (manual
	// finalisation only): QEMU's BLOCK_JOB_PENDING.
	OnPending func(info Info)
	// OnReady tells that the job reached READY: BLOCK_JOB_READY.
	OnReady func(info Info)
	// OnFinalized tells that the job finished (before it concludes),
	// cancelled or not: BLOCK_JOB_CANCELLED or BLOCK_JOB_COMPLETED.
	OnFinalized func(info Info, cancelled bool)
}

// Spec describes a job to start.
type Spec struct {
	// ID is the job's id, checked as QEMU checks it.
	ID string
	// Type is the QAPI JobType ("create", "commit", ...).
	Type string
	// ManualFinalize and ManualDismiss are the opposites of QMP's
	// auto-finalize and auto-dismiss (which default to true).
	ManualFinalize, ManualDismiss bool
	// Run is the job's work.
	Run Body
	// Hooks are the kind's optional callbacks.
	Hooks Hooks
	// Data is the kind's own state, returned by Job.Data.
	Data any
	// Txn is the transaction the job belongs to (nil: one of its own);
	// the jobs of a transaction complete together (QEMU's JobTxn, the
	// transaction command's grouped completion).
	Txn *Txn
	// DrainsOnExit tells that the body, as QEMU's mirror, drains its
	// nodes before it returns: the coroutine yields there, so a cancel
	// never ends the job before the command replies.
	DrainsOnExit bool
	// CopiesInBackground tells that the job, as QEMU's backup, waits
	// while its copy runs apart from it: it shows as never busy.
	CopiesInBackground bool

	// created runs in Start once the job exists and CREATED has been
	// announced, before it runs; an error means the job goes to NULL and
	// Start fails with it (QEMU's job_early_fail). StartBlock sets it.
	created func(j *Job) error
}

// ErrCanceled is the error of a job cancelled with force whose body did not
// fail otherwise: QEMU's strerror(ECANCELED).
var ErrCanceled = errors.New("Operation canceled")

// Info is a snapshot of a job: what query-jobs lists of it (as
// qapi.JobInfo), query-block-jobs and the block job events read.
type Info struct {
	ID              string
	Type            string
	Status          Status
	CurrentProgress uint64
	TotalProgress   uint64
	Error           string // "" when none

	// Failed tells whether the job has an error (Error may be set then).
	Failed       bool
	Busy         bool
	Paused       bool // a pause is requested (QEMU's pause_count > 0)
	AutoFinalize bool
	AutoDismiss  bool
}

// JobInfo is the job's query-jobs entry.
func (in Info) JobInfo() qapi.JobInfo {
	return qapi.JobInfo{ID: in.ID, Type: qapi.JobType(in.Type), Status: qapi.JobStatus(in.Status.String()),
		CurrentProgress: int64(in.CurrentProgress), TotalProgress: int64(in.TotalProgress), Error: optString(in.Error)}
}

// Job is one job. Its body and the code that made it use its methods;
// clients act on it through the Manager's commands.
type Job struct {
	m     *Manager
	id    string
	typ   string
	body  Body
	hooks Hooks
	data  any

	autoFinalize, autoDismiss bool
	drainsOnExit              bool
	copiesInBackground        bool
	txn                       *Txn
	started                   bool // Begin ran

	ctx    context.Context
	cancel context.CancelFunc

	// kick wakes the body from a pause or a sleep; one pending kick is
	// enough, senders never block.
	kick chan struct{}
	// bg is closed when the body first goes to the background (or the
	// job stops running), release when the command that started it has
	// replied; concluded when the job reaches CONCLUDED.
	bg        chan struct{}
	bgOnce    sync.Once
	release   chan struct{}
	relOnce   sync.Once
	concluded chan struct{}
	// bodyDone is closed when the body has returned (result is its
	// error); completion processing then runs once, by whoever takes it
	// first: the body's goroutine, or a cancel waiting for the body.
	bodyDone chan struct{}
	// processed is closed once the body's goroutine has processed its
	// result (or found it processed).
	processed chan struct{}
	result    error
	taken     bool
	// endGate, when set, holds the body's result back until a cancel's
	// command has replied (see cancelCtl).
	endGate chan struct{}

	// The state, guarded by m.mu.
	status      Status
	pauseCount  int
	userPaused  bool
	paused      bool // stopped in a pause point
	busy        bool
	cancelled   bool   // a cancel was requested (QEMU's job_cancel_requested)
	forceCancel bool   // ... and it is forced (QEMU's job_is_cancelled)
	deferred    bool   // the body has returned and its result is processed
	sleeping    bool   // the body waits in Sleep
	sleeps      uint64 // how many times the body has gone to Sleep
	err         error
	cur, total  uint64
}

type jobKey struct{}

// FromContext returns the job whose body runs with ctx, or nil.
func FromContext(ctx context.Context) *Job {
	j, _ := ctx.Value(jobKey{}).(*Job)
	return j
}

// ID returns the job's id.
func (j *Job) ID() string { return j.id }

// Type returns the job's QAPI type.
func (j *Job) Type() string { return j.typ }

// Data returns the kind's state given in Spec.Data.
func (j *Job) Data() any { return j.data }

// Context returns the context the body runs with.
func (j *Job) Context() context.Context { return j.ctx }

// Concluded returns a channel closed when the job reaches CONCLUDED.
func (j *Job) Concluded() <-chan struct{} { return j.concluded }

// Status returns the job's status.
func (j *Job) Status() Status {
	j.m.mu.Lock()
	defer j.m.mu.Unlock()
	return j.status
}

// Info returns a snapshot of the job.
func (j *Job) Info() Info {
	j.m.mu.Lock()
	defer j.m.mu.Unlock()
	return j.infoLocked()
}

func (j *Job) infoLocked() Info {
	in := Info{ID: j.id, Type: j.typ, Status: j.status, CurrentProgress: j.cur, TotalProgress: j.total,
		Failed: j.err != nil, Busy: j.busy && !j.copiesInBackground, Paused: j.pauseCount > 0,
		AutoFinalize: j.autoFinalize, AutoDismiss: j.autoDismiss}
	if j.err != nil {
		in.Error = j.err.Error()
	}
	return in
}

// Err returns the job's error once it has one (nil while it runs).
func (j *Job) Err() error {
	j.m.mu.Lock()
	defer j.m.mu.Unlock()
	return j.err
}

// IsCancelled tells whether the job is cancelled with force: the body
// should stop as soon as it can.
func (j *Job) IsCancelled() bool {
	j.m.mu.Lock()
	defer j.m.mu.Unlock()
	return j.forceCancel
}

// CancelRequested tells whether any cancel was requested (a soft cancel
// of a READY job included).
func (j *Job) CancelRequested() bool {
	j.m.mu.Lock()
	defer j.m.mu.Unlock()
	return j.cancelled
}

// UserPaused tells whether a user (or an error policy) paused the job.
func (j *Job) UserPaused() bool {
	j.m.mu.Lock()
	defer j.m.mu.Unlock()
	return j.userPaused
}

// SetProgressRemaining says how much work is left: the total becomes the
// current progress plus n.
func (j *Job) SetProgressRemaining(n uint64) {
	j.m.mu.Lock()
	j.total = j.cur + n
	j.m.mu.Unlock()
}

// IncreaseProgressRemaining adds n to the total.
func (j *Job) IncreaseProgressRemaining(n uint64) {
	j.m.mu.Lock()
	j.total += n
	j.m.mu.Unlock()
}

// ProgressUpdate records n more units of work done.
func (j *Job) ProgressUpdate(n uint64) {
	j.m.mu.Lock()
	j.cur += n
	j.m.mu.Unlock()
}

// Progress returns the current and total progress.
func (j *Job) Progress() (current, total uint64) {
	j.m.mu.Lock()
	defer j.m.mu.Unlock()
	return j.cur, j.total
}

// Background marks the point where the body first waits for lengthy I/O,
// where QEMU's coroutine would first yield. Manager.Start runs the body in
// step with the command that starts the job up to this point (so an early
// failure concludes the job before the command replies, as in QSD), and
// the body goes on from here once that reply has been sent. Later calls
// return at once.
func (j *Job) Background() {
	j.bgOnce.Do(func() { close(j.bg) })
	select {
	case <-j.release:
	case <-j.ctx.Done():
	}
}

func (j *Job) releaseBody() { j.relOnce.Do(func() { close(j.release) }) }

// kickLocked wakes the body if it waits in a pause or a sleep.
func (j *Job) kickLocked() {
	select {
	case j.kick <- struct{}{}:
	default:
	}
}

// PausePoint is where the body may be paused: while a pause is requested
// the job goes to PAUSED (STANDBY when READY) and waits here. It returns
// ctx's error once the job is cancelled with force.
func (j *Job) PausePoint() error {
	m := j.m
	m.mu.Lock()
	if j.pauseCount == 0 || j.forceCancel {
		j.busy = true // after Ready
		m.mu.Unlock()
		return j.ctx.Err()
	}
	m.mu.Unlock()
	if j.hooks.Pause != nil {
		j.hooks.Pause(j)
	}
	m.mu.Lock()
	if j.pauseCount > 0 && !j.forceCancel {
		was := j.status
		to := StatusPaused
		if was == StatusReady {
			to = StatusStandby
		}
		m.transitionLocked(j, to)
		j.paused, j.busy = true, false
		for j.pauseCount > 0 && !j.forceCancel {
			m.mu.Unlock()
			<-j.kick
			m.mu.Lock()
		}
		j.paused, j.busy = false, true
		m.transitionLocked(j, was)
	}
	m.mu.Unlock()
	if j.hooks.Resume != nil {
		j.hooks.Resume(j)
	}
	return j.ctx.Err()
}

// Sleep waits for d (not busy, as for a rate limit), or less when the job
// is paused or cancelled, then passes a pause point.
func (j *Job) Sleep(d time.Duration) error {
	m := j.m
	m.mu.Lock()
	if j.forceCancel {
		m.mu.Unlock()
		return j.ctx.Err()
	}
	// A kick sent while the job was busy is stale (QEMU's job_enter does
	// nothing to a busy job): only what comes from now on wakes it.
	select {
	case <-j.kick:
	default:
	}
	if j.pauseCount == 0 {
		j.busy, j.sleeping = false, true
		j.sleeps++
		m.mu.Unlock()
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-j.kick:
			t.Stop()
		}
		m.mu.Lock()
		j.busy, j.sleeping = true, false
	}
	m.mu.Unlock()
	return j.PausePoint()
}

// Ready moves a running job to READY (mirror-like jobs, once source and
// target are in sync) and calls the OnReady hook.
func (j *Job) Ready() {
	m := j.m
	m.mu.Lock()
	defer m.mu.Unlock()
	m.transitionLocked(j, StatusReady)
	// QEMU's mirror goes from READY straight to its sleep without
	// yielding, so nobody sees it busy in between: the body is shown idle
	// until its next sleep or pause point.
	j.busy = false
	if j.hooks.OnReady != nil {
		j.hooks.OnReady(j.infoLocked())
	}
}

// Pause and Resume are pauses the code asks for (QEMU's job_pause and
// job_resume, used around drains), counted: the job runs again when every
// Pause has had its Resume.
func (j *Job) Pause() {
	j.m.mu.Lock()
	defer j.m.mu.Unlock()
	j.pauseLocked()
}

// Resume ends one Pause.
func (j *Job) Resume() {
	j.m.mu.Lock()
	defer j.m.mu.Unlock()
	if j.pauseCount > 0 {
		j.pauseCount--
		if j.pauseCount == 0 {
			j.kickLocked()
		}
	}
}

func (j *Job) pauseLocked() {
	j.pauseCount++
	if !j.paused {
		j.kickLocked()
	}
}

// StopForError pauses the job as a user would (job-resume ends it): the
// "stop" error policy of block jobs.
func (j *Job) StopForError() {
	j.m.mu.Lock()
	defer j.m.mu.Unlock()
	if !j.userPaused {
		j.userPaused = true
		j.pauseLocked()
	}
}

// Txn groups jobs that complete together: they finalise together once all
// have finished, and one that fails or is cancelled cancels the others
// (QEMU's JobTxn). A transaction command with completion-mode grouped
// gives its jobs one; every other job has its own. Its fields belong to
// the manager's control lock.
type Txn struct {
	jobs     []*Job
	aborting bool
}

// NewTxn returns an empty transaction for Spec.Txn.
func NewTxn() *Txn { return &Txn{} }

func (t *Txn) remove(j *Job) {
	for i, x := range t.jobs {
		if x == j {
			t.jobs = append(t.jobs[:i], t.jobs[i+1:]...)
			return
		}
	}
}
