package jobs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

// A block job is a job that works on block nodes (commit, stream, mirror,
// backup): QEMU's BlockJob. On top of the job core it has
//
//   - a device name, which is its id (query-block-jobs' "device");
//   - a speed limit in bytes per second (0: none), changed with
//     block-job-set-speed, enforced with a token bucket;
//   - an error policy (BlockdevOnError) and the I/O status it leads to;
//   - the nodes it works on: an edge to each with the permissions it
//     needs, and an op blocker that makes blockdev-del and other graph
//     changes refuse them while the job exists;
//   - the BLOCK_JOB_* events.
//
// Its progress is the job's: len is the total, offset the current.

// OnError is a BlockdevOnError policy.
type OnError string

// The policies QEMU knows.
const (
	OnErrorReport OnError = "report"
	OnErrorIgnore OnError = "ignore"
	OnErrorEnospc OnError = "enospc"
	OnErrorStop   OnError = "stop"
	OnErrorAuto   OnError = "auto"
)

// ErrorAction is what a block job does about an I/O error
// (BlockErrorAction).
type ErrorAction string

// The actions.
const (
	ActionReport ErrorAction = "report"
	ActionIgnore ErrorAction = "ignore"
	ActionStop   ErrorAction = "stop"
)

// BlockJob is the block-job state of a job; Job.Data of a block job's Job
// holds the kind's data, and BlockJobOf finds this.
type BlockJob struct {
	j       *Job
	g       *blockdev.Graph
	log     zerolog.Logger
	onError OnError
	// onTargetError, when set, is the policy for write errors (backup's
	// on-target-error; onError is then on-source-error).
	onTargetError OnError

	mu       sync.Mutex
	speed    int64
	lim      rateLimit
	ioStatus string

	// edges and unblock are the nodes the job holds; only the job's setup
	// and clean-up touch them, with the graph lock held.
	edges   []*blockdev.Child
	unblock []func()

	data any // the kind's own state
}

// BlockSpec describes a block job to start with StartBlock. The kind's
// graph work is in three parts, each handed the graph lock, in the order
// QEMU does it: Before runs before the job exists (the filter an
// active commit or a stream inserts first), Setup once it is created
// (it calls BlockJob.Created first, then attaches the nodes), and Undo
// takes away what both did when the job cannot start after all.
type BlockSpec struct {
	Spec
	// Speed is the initial speed limit in bytes per second (0: none).
	Speed int64
	// OnError is the error policy ("" is report); with OnTargetError set
	// it is the policy for read errors only and OnTargetError the one for
	// write errors (backup).
	OnError       OnError
	OnTargetError OnError
	Before        func(lk *blockdev.Locked, b *BlockJob) error
	Setup         func(lk *blockdev.Locked, b *BlockJob) error
	Undo          func(lk *blockdev.Locked, b *BlockJob)
}

// BlockJobOf returns the block-job state of j, or nil for other jobs.
func BlockJobOf(j *Job) *BlockJob {
	b, _ := j.data.(*BlockJob)
	return b
}

// Job returns the job.
func (b *BlockJob) Job() *Job { return b.j }

// Graph returns the graph the job works on.
func (b *BlockJob) Graph() *blockdev.Graph { return b.g }

// Data returns the kind's state, set with SetData.
func (b *BlockJob) Data() any { return b.data }

// SetData records the kind's state (in Setup).
func (b *BlockJob) SetData(v any) { b.data = v }

// errBadSpeed is QEMU's refusal of a negative speed.
var errBadSpeed = errors.New("Parameter 'speed' expects a non-negative value")

// StartBlock creates a block job (CreateBlock) and starts it (Begin).
func (m *Manager) StartBlock(ctx context.Context, g *blockdev.Graph, spec BlockSpec) (*Job, error) {
	j, err := m.CreateBlock(g, spec)
	if err != nil {
		return nil, err
	}
	j.Begin(ctx)
	return j, nil
}

// CreateBlock creates a block job without starting it: Before runs, the
// job id is checked, the job is created and Setup attaches the nodes. The
// kind's hooks are wrapped so that the BLOCK_JOB_* events are sent and the
// nodes are released after the kind's Clean.
func (m *Manager) CreateBlock(g *blockdev.Graph, spec BlockSpec) (*Job, error) {
	return m.createBlock(g, spec, nil)
}

// createBlockLocked is CreateBlock for a caller that holds the control
// lock and the graph lock (a transaction).
func (m *Manager) createBlockLocked(lk *blockdev.Locked, spec BlockSpec) (*Job, error) {
	return m.createBlock(lk.Graph(), spec, lk)
}

// createBlock is CreateBlock; held is the graph lock when the caller holds
// it, else nil.
func (m *Manager) createBlock(g *blockdev.Graph, spec BlockSpec, held *blockdev.Locked) (*Job, error) {
	locked := held != nil
	withLock := func(fn func(lk *blockdev.Locked) error) error {
		if held != nil {
			return fn(held)
		}
		return g.Do(fn)
	}
	b := &BlockJob{g: g, log: m.log, onError: spec.OnError, onTargetError: spec.OnTargetError, ioStatus: "ok"}
	if b.onError == "" {
		b.onError = OnErrorReport
	}
	b.setSpeed(spec.Speed)
	s := spec.Spec
	s.Data = b
	h := s.Hooks
	emitInfo := func(name string, in Info) {
		m.em.Emit(name, b.eventData(in))
	}
	s.Hooks.OnReady = func(in Info) {
		emitInfo("BLOCK_JOB_READY", in)
		if h.OnReady != nil {
			h.OnReady(in)
		}
	}
	s.Hooks.OnPending = func(in Info) {
		m.em.Emit("BLOCK_JOB_PENDING", pendingEvent{Type: in.Type, ID: in.ID})
		if h.OnPending != nil {
			h.OnPending(in)
		}
	}
	s.Hooks.OnFinalized = func(in Info, cancelled bool) {
		if cancelled {
			// BLOCK_JOB_CANCELLED has no error member.
			in.Error = ""
			emitInfo("BLOCK_JOB_CANCELLED", in)
		} else {
			emitInfo("BLOCK_JOB_COMPLETED", in)
		}
		if h.OnFinalized != nil {
			h.OnFinalized(in, cancelled)
		}
	}
	s.Hooks.UserResume = func(j *Job) {
		b.mu.Lock()
		b.ioStatus = "ok"
		b.mu.Unlock()
		if h.UserResume != nil {
			h.UserResume(j)
		}
	}
	s.Hooks.Clean = func(j *Job) {
		if h.Clean != nil {
			h.Clean(j)
		}
		g.Do(func(lk *blockdev.Locked) error {
			b.release(lk)
			return nil
		})
	}
	undo := func() {
		withLock(func(lk *blockdev.Locked) error {
			b.release(lk)
			if spec.Undo != nil {
				spec.Undo(lk, b)
			}
			return nil
		})
	}
	if spec.Before != nil {
		err := withLock(func(lk *blockdev.Locked) error { return spec.Before(lk, b) })
		if err != nil {
			undo()
			return nil, err
		}
	}
	s.created = func(j *Job) error {
		b.j = j
		if spec.Setup == nil {
			return nil
		}
		return withLock(func(lk *blockdev.Locked) error { return spec.Setup(lk, b) })
	}
	var j *Job
	var err error
	if locked {
		j, err = m.createCtl(s)
	} else {
		j, err = m.Create(s)
	}
	if err != nil {
		undo()
		return nil, err
	}
	return j, nil
}

// Created is the end of QEMU's block_job_create, which a kind's Setup
// calls first: the job's edge to its main node, then the initial speed's
// check.
func (b *BlockJob) Created(lk *blockdev.Locked, main *blockdev.Node, perm, shared blockdev.Perm) error {
	if _, err := b.AddNode(lk, main, "main node", perm, shared); err != nil {
		return err
	}
	if b.Speed() < 0 {
		return errBadSpeed
	}
	return nil
}

// release drops the job's edges and blockers.
func (b *BlockJob) release(lk *blockdev.Locked) {
	for _, u := range b.unblock {
		u()
	}
	b.unblock = nil
	for i := len(b.edges) - 1; i >= 0; i-- {
		lk.DetachRoot(b.edges[i])
	}
	b.edges = nil
}

// AddNode gives the job an edge to n under the name role with the
// permissions it needs and lets others share, and blocks graph changes of
// n while the job exists (QEMU's block_job_add_bdrv).
func (b *BlockJob) AddNode(lk *blockdev.Locked, n *blockdev.Node, role string, perm, shared blockdev.Perm) (*blockdev.Child, error) {
	c, err := lk.AttachJob(n, b.j.id, fmt.Sprintf("%s job '%s'", b.j.typ, b.j.id), role, perm, shared)
	if err != nil {
		return nil, err
	}
	b.edges = append(b.edges, c)
	b.unblock = append(b.unblock, n.AddBlocker(lk, fmt.Errorf("block device is in use by block job: %s", b.j.typ)))
	lk.SetDrainNotifier(c, b)
	return c, nil
}

// DrainBegin pauses the job for a drained section of one of its nodes, as
// QEMU's drains do: a job that runs reaches its pause point (PAUSED, or
// STANDBY when READY) before the drain goes on.
func (b *BlockJob) DrainBegin() {
	j := b.j
	j.Pause()
	j.waitFor(time.Second, func() bool {
		return !j.started || j.paused || j.pauseCount == 0 || j.deferred ||
			(j.status != StatusRunning && j.status != StatusReady)
	})
}

// DrainEnd ends a DrainBegin: the job runs on.
func (b *BlockJob) DrainEnd() {
	j := b.j
	j.Resume()
	j.waitFor(100*time.Millisecond, func() bool { return !j.paused || j.pauseCount > 0 || j.deferred })
}

// AddBackend gives the job an edge to n for its I/O, as QEMU's jobs open
// a BlockBackend on a node (it blocks nothing; AddNode does).
func (b *BlockJob) AddBackend(lk *blockdev.Locked, n *blockdev.Node, perm, shared blockdev.Perm) (*blockdev.Child, error) {
	c, err := lk.AttachRoot(n, "an unnamed block device", perm, shared)
	if err != nil {
		return nil, err
	}
	b.edges = append(b.edges, c)
	b.unblock = append(b.unblock, func() {})
	return c, nil
}

// DropFilter takes a filter the job put into the graph out of it again,
// unless it closed already with its last user; a failure is logged.
func (b *BlockJob) DropFilter(ctx context.Context, lk *blockdev.Locked, f *blockdev.Node) {
	if lk.Lookup(f.Name()) != f {
		return
	}
	if err := lk.RemoveFilter(ctx, f); err != nil {
		b.log.Error().Err(err).Str("node", f.Name()).Str("driver", f.DriverName()).Msg("cannot remove a job's filter")
	}
}

// DropNode releases an edge AddNode or AddBackend made before the job
// ends.
func (b *BlockJob) DropNode(lk *blockdev.Locked, c *blockdev.Child) {
	for i, e := range b.edges {
		if e == c {
			b.edges = append(b.edges[:i], b.edges[i+1:]...)
			b.unblock[i]()
			b.unblock = append(b.unblock[:i], b.unblock[i+1:]...)
			lk.DetachRoot(c)
			return
		}
	}
}

// Speed returns the speed limit in bytes per second (0: none).
func (b *BlockJob) Speed() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.speed
}

func (b *BlockJob) setSpeed(speed int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.speed = speed
	b.lim.setSpeed(max(speed, 0)) // a negative one fails Created
}

// SetSpeed is block-job-set-speed.
func (b *BlockJob) SetSpeed(speed int64) error {
	settle, err := b.setSpeedSettle(speed)
	if settle != nil {
		settle()
	}
	return err
}

// setSpeedSettle is SetSpeed but for the wake-up: a job that sleeps for
// the old limit is woken by the returned function, which the monitor runs
// once the command has replied.
func (b *BlockJob) setSpeedSettle(speed int64) (settle func(), _ error) {
	j := b.j
	wake := false
	err := j.ctlDo(func() error {
		if err := b.j.CheckVerb(VerbSetSpeed); err != nil {
			return err
		}
		if speed < 0 {
			return errBadSpeed
		}
		old := b.Speed()
		b.setSpeed(speed)
		// A job sleeping for the old limit wakes when the new one is
		// higher (or none), as in QEMU, and then goes on.
		wake = speed == 0 || speed > old
		return nil
	})
	if err != nil || !wake {
		return nil, err
	}
	// QEMU enters the sleeping job at once; it runs until its next wait,
	// and what it started then (maybe the rest of its work) completes
	// after the reply but before the monitor reads another command. So
	// the wake-up follows the reply, and the monitor waits a little
	// (not holding the control lock, which the job's end takes) until
	// the job sleeps again or has ended.
	return func() {
		j.m.mu.Lock()
		woken, sleeps := j.sleeping, j.sleeps
		j.kickLocked()
		j.m.mu.Unlock()
		if !woken {
			return
		}
		j.waitFor(settleWait, func() bool { return j.sleeps != sleeps || isClosed(j.bodyDone) })
		if isClosed(j.bodyDone) {
			select {
			case <-j.processed:
			case <-time.After(settleWait):
			}
		}
	}, nil
}

// Processed accounts for n bytes the job has just copied against the
// speed limit (QEMU's block_job_ratelimit_processed_bytes); the next
// RateLimitSleep waits for them.
func (b *BlockJob) Processed(n int64) {
	if n <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lim.delay(time.Now(), uint64(n))
}

// RateLimitSleep sleeps as long as the speed limit asks for what
// Processed accounted, then passes a pause point (QEMU 7.2's
// block_job_ratelimit_sleep). Like QEMU's, the sleep is not resumed when
// something wakes the job early (a pause for a drain, a higher speed):
// the job goes on at once. It returns the context's error once the job
// is cancelled with force.
func (b *BlockJob) RateLimitSleep() error {
	b.mu.Lock()
	d := b.lim.delay(time.Now(), 0)
	b.mu.Unlock()
	if d <= 0 || b.j.IsCancelled() {
		return b.j.PausePoint()
	}
	return b.j.Sleep(d)
}

// RateLimitWait is the speed limit as QEMU's block-copy applies it (the
// backup job): before each request it waits until the limiter lets one
// through, asking again after every wake-up, so that a drain or a pause
// does not let a throttled backup copy more.
func (b *BlockJob) RateLimitWait() error {
	for {
		b.mu.Lock()
		d := b.lim.delay(time.Now(), 0)
		b.mu.Unlock()
		if d <= 0 || b.j.IsCancelled() {
			return b.j.PausePoint()
		}
		if err := b.j.Sleep(d); err != nil {
			return err
		}
	}
}

// jobSlice is QEMU's BLOCK_JOB_SLICE_TIME: a job's speed limit is
// accounted in slices of this length.
const jobSlice = 100 * time.Millisecond

// rateLimit is the speed limit algorithm of QEMU's RateLimit, kept
// exactly because it shows in job progress: a slice lets quota bytes
// through at once; more than that extends the slice until the excess is
// paid for, and a new slice begins (from nothing dispatched) when the
// current one has ended. A token bucket would remember a debt across an
// early wake-up; QEMU's limiter lets the job copy again when it is
// resumed after the slice's end.
type rateLimit struct {
	quota      uint64 // bytes per slice; 0: no limit
	sliceStart time.Time
	sliceEnd   time.Time
	dispatched uint64
}

func (l *rateLimit) setSpeed(speed int64) {
	if speed == 0 {
		l.quota = 0
		return
	}
	l.quota = max(uint64(float64(speed)*jobSlice.Seconds()), 1)
}

// delay accounts for n more bytes and returns how long to wait before
// the next request (QEMU's ratelimit_calculate_delay).
func (l *rateLimit) delay(now time.Time, n uint64) time.Duration {
	if l.quota == 0 {
		return 0
	}
	if l.sliceEnd.Before(now) {
		l.sliceStart, l.sliceEnd, l.dispatched = now, now.Add(jobSlice), 0
	}
	l.dispatched += n
	if l.dispatched < l.quota {
		return 0
	}
	slices := float64(l.dispatched) / float64(l.quota)
	l.sliceEnd = l.sliceStart.Add(time.Duration(slices * float64(jobSlice)))
	return l.sliceEnd.Sub(now)
}

// ErrorAction applies the job's error policy to an I/O error (QEMU's
// block_job_error_action): it sends BLOCK_JOB_ERROR unless the job is
// cancelled, and for "stop" pauses the job as a user would and sets its
// I/O status. The kind fails with the error on ActionReport and retries
// the request otherwise (after the pause, for ActionStop).
func (b *BlockJob) ErrorAction(err error, read bool) ErrorAction {
	enospc := errors.Is(err, syscall.ENOSPC)
	var act ErrorAction
	policy := b.onError
	if !read && b.onTargetError != "" {
		policy = b.onTargetError
	}
	switch policy {
	case OnErrorIgnore:
		act = ActionIgnore
	case OnErrorStop:
		act = ActionStop
	case OnErrorEnospc, OnErrorAuto:
		act = ActionReport
		if enospc {
			act = ActionStop
		}
	default:
		act = ActionReport
	}
	if !b.j.IsCancelled() {
		op := "write"
		if read {
			op = "read"
		}
		b.j.m.em.Emit("BLOCK_JOB_ERROR", errorEvent{Device: b.j.id, Operation: op, Action: string(act)})
	}
	if act == ActionStop {
		b.j.StopForError()
		b.mu.Lock()
		if b.ioStatus == "ok" {
			b.ioStatus = "failed"
			if enospc {
				b.ioStatus = "nospace"
			}
		}
		b.mu.Unlock()
	}
	return act
}

// IOStatus returns the job's BlockDeviceIoStatus.
func (b *BlockJob) IOStatus() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ioStatus
}

// blockEvent is the data of BLOCK_JOB_COMPLETED, _CANCELLED and _READY.
type blockEvent struct {
	Type   string `json:"type"`
	Device string `json:"device"`
	Len    uint64 `json:"len"`
	Offset uint64 `json:"offset"`
	Speed  int64  `json:"speed"`
	Error  string `json:"error,omitempty"`
}

type pendingEvent struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

type errorEvent struct {
	Device    string `json:"device"`
	Operation string `json:"operation"`
	Action    string `json:"action"`
}

func (b *BlockJob) eventData(in Info) blockEvent {
	return blockEvent{Device: in.ID, Len: in.TotalProgress, Offset: in.CurrentProgress,
		Speed: b.Speed(), Type: in.Type, Error: in.Error}
}

func (b *BlockJob) info(in Info) qapi.BlockJobInfo {
	return qapi.BlockJobInfo{AutoFinalize: in.AutoFinalize, IoStatus: qapi.BlockDeviceIoStatus(b.IOStatus()), Device: in.ID,
		AutoDismiss: in.AutoDismiss, Busy: in.Busy, Len: int64(in.TotalProgress), Offset: int64(in.CurrentProgress),
		Status: qapi.JobStatus(in.Status.String()), Paused: in.Paused, Speed: b.Speed(),
		Ready: in.Status == StatusReady || in.Status == StatusStandby, Type: in.Type, Error: optString(in.Error)}
}

// optString is an optional string member that is left out when empty.
func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// QueryBlockJobs is query-block-jobs: the block jobs, newest first.
func (m *Manager) QueryBlockJobs() []qapi.BlockJobInfo {
	out := []qapi.BlockJobInfo{}
	for _, j := range m.Jobs() {
		if b := BlockJobOf(j); b != nil {
			out = append(out, b.info(j.Info()))
		}
	}
	return out
}

// FindBlockJob returns the block job called id with QEMU's error when
// there is none.
func (m *Manager) FindBlockJob(id string) (*BlockJob, error) {
	if j := m.Find(id); j != nil {
		if b := BlockJobOf(j); b != nil {
			return b, nil
		}
	}
	return nil, &qmp.Error{Class: qmp.ClassDeviceNotActive, Desc: fmt.Sprintf("Block job '%s' not found", id)}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
