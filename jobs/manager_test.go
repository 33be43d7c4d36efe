package jobs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
)

// recorder is an Emitter that keeps every event in order.
type recorder struct {
	ch chan string
}

func newRecorder() *recorder { return &recorder{ch: make(chan string, 4096)} }

func (r *recorder) Emit(name string, data any) {
	if name == "JOB_STATUS_CHANGE" {
		sc := data.(StatusChange)
		r.ch <- fmt.Sprintf("%s:%s", sc.ID, sc.Status)
		return
	}
	r.ch <- name
}

// expect reads the next events and compares them with want.
func (r *recorder) expect(t *testing.T, want ...string) {
	t.Helper()
	for _, w := range want {
		if got := <-r.ch; got != w {
			t.Fatalf("event %q, want %q", got, w)
		}
	}
}

// none checks that no event is queued.
func (r *recorder) none(t *testing.T) {
	t.Helper()
	select {
	case ev := <-r.ch:
		t.Fatalf("unexpected event %q", ev)
	default:
	}
}

// stepper is a job body driven by the test: it goes to the background,
// then runs one step per message and acknowledges it.
type stepper struct {
	steps chan string
	acks  chan error
}

func newStepper() *stepper {
	return &stepper{steps: make(chan string), acks: make(chan error)}
}

func (s *stepper) body(ctx context.Context, j *Job) error {
	j.SetProgressRemaining(10)
	j.Background()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case step := <-s.steps:
			var err error
			switch step {
			case "pause-point":
				err = j.PausePoint()
			case "progress":
				j.ProgressUpdate(3)
			case "ready":
				j.Ready()
			case "return":
				return nil
			case "fail":
				return errors.New("it broke")
			case "ignore-cancel":
				return nil
			}
			s.acks <- err
		}
	}
}

// do runs one step and returns the body's result of it.
func (s *stepper) do(step string) error {
	s.steps <- step
	return <-s.acks
}

func newManager() (*Manager, *recorder) {
	r := newRecorder()
	return New(r, zerolog.Nop()), r
}

func start(t *testing.T, m *Manager, spec Spec) *Job {
	t.Helper()
	if spec.Type == "" {
		spec.Type = "commit"
	}
	j, err := m.Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil || err.Error() != want {
		t.Fatalf("error %v, want %q", err, want)
	}
}

func TestSuccessfulJob(t *testing.T) {
	m, r := newManager()
	s := newStepper()
	var calls []string
	j := start(t, m, Spec{ID: "j0", Run: s.body, ManualDismiss: true, Hooks: Hooks{
		Prepare: func(*Job) error { calls = append(calls, "prepare"); return nil },
		Commit:  func(*Job) { calls = append(calls, "commit") },
		Abort:   func(*Job) { calls = append(calls, "abort") },
		Clean:   func(*Job) { calls = append(calls, "clean") },
		OnFinalized: func(in Info, cancelled bool) {
			calls = append(calls, fmt.Sprintf("finalized %s cancelled=%v", in.Status, cancelled))
		},
	}})
	r.expect(t, "j0:created", "j0:running")
	if err := s.do("progress"); err != nil {
		t.Fatal(err)
	}
	in := m.Query()
	if len(in) != 1 || in[0].ID != "j0" || in[0].Type != "commit" || in[0].Status != StatusRunning ||
		in[0].CurrentProgress != 3 || in[0].TotalProgress != 10 || in[0].Error != "" {
		t.Fatalf("query-jobs: %+v", in)
	}
	s.steps <- "return"
	<-j.Concluded()
	r.expect(t, "j0:waiting", "j0:pending", "j0:concluded")
	if got := strings.Join(calls, ","); got != "prepare,commit,clean,finalized pending cancelled=false" {
		t.Errorf("hooks: %s", got)
	}
	if j.Err() != nil || j.Status() != StatusConcluded {
		t.Fatalf("err %v status %s", j.Err(), j.Status())
	}
	if err := m.Dismiss("j0"); err != nil {
		t.Fatal(err)
	}
	r.expect(t, "j0:null")
	if m.Find("j0") != nil || len(m.Query()) != 0 {
		t.Fatal("dismissed job still listed")
	}
	wantErr(t, m.Dismiss("j0"), "Job not found")
	r.none(t)
}

func TestAutoDismissAndManualFinalize(t *testing.T) {
	m, r := newManager()
	s := newStepper()
	pending := 0
	j := start(t, m, Spec{ID: "j1", Run: s.body, ManualFinalize: true, Hooks: Hooks{
		OnPending: func(in Info) { pending++ },
	}})
	r.expect(t, "j1:created", "j1:running")
	s.steps <- "return"
	r.expect(t, "j1:waiting", "j1:pending")
	if j.Status() != StatusPending || pending != 1 {
		t.Fatalf("status %s, OnPending %d", j.Status(), pending)
	}
	wantErr(t, m.Pause("j1"), "Job 'j1' in state 'pending' cannot accept command verb 'pause'")
	wantErr(t, m.Resume("j1"), "Can't resume a job that was not paused")
	wantErr(t, m.Complete("j1"), "Job 'j1' in state 'pending' cannot accept command verb 'complete'")
	wantErr(t, m.Dismiss("j1"), "Job 'j1' in state 'pending' cannot accept command verb 'dismiss'")
	if err := m.Finalize("j1"); err != nil {
		t.Fatal(err)
	}
	r.expect(t, "j1:concluded", "j1:null")
	if m.Find("j1") != nil {
		t.Fatal("auto-dismissed job still listed")
	}
}

func TestFailedJob(t *testing.T) {
	m, r := newManager()
	s := newStepper()
	var calls []string
	j := start(t, m, Spec{ID: "f", Run: s.body, ManualDismiss: true, Hooks: Hooks{
		Commit: func(*Job) { calls = append(calls, "commit") },
		Abort:  func(*Job) { calls = append(calls, "abort") },
		Clean:  func(*Job) { calls = append(calls, "clean") },
	}})
	r.expect(t, "f:created", "f:running")
	s.steps <- "fail"
	<-j.Concluded()
	r.expect(t, "f:aborting", "f:concluded")
	if got := strings.Join(calls, ","); got != "abort,clean" {
		t.Errorf("hooks: %s", got)
	}
	in := m.Query()[0]
	if in.Error != "it broke" || !in.Failed || in.Status != StatusConcluded {
		t.Fatalf("query-jobs: %+v", in)
	}
}

func TestPrepareFailure(t *testing.T) {
	m, r := newManager()
	s := newStepper()
	var calls []string
	j := start(t, m, Spec{ID: "p", Run: s.body, ManualDismiss: true, Hooks: Hooks{
		Prepare: func(*Job) error { return errors.New("cannot prepare") },
		Commit:  func(*Job) { calls = append(calls, "commit") },
		Abort:   func(*Job) { calls = append(calls, "abort") },
	}})
	r.expect(t, "p:created", "p:running")
	s.steps <- "return"
	<-j.Concluded()
	r.expect(t, "p:waiting", "p:pending", "p:aborting", "p:concluded")
	if got := strings.Join(calls, ","); got != "abort" || j.Err().Error() != "cannot prepare" {
		t.Errorf("hooks %s, err %v", got, j.Err())
	}
}

func TestPauseResume(t *testing.T) {
	m, r := newManager()
	s := newStepper()
	resumed := 0
	start(t, m, Spec{ID: "p", Run: s.body, Hooks: Hooks{UserResume: func(*Job) { resumed++ }}})
	r.expect(t, "p:created", "p:running")
	wantErr(t, m.Resume("p"), "Can't resume a job that was not paused")
	if err := m.Pause("p"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, m.Pause("p"), "Job is already paused")
	r.none(t) // nothing happens until the body reaches a pause point
	s.steps <- "pause-point"
	r.expect(t, "p:paused")
	in := m.Query()[0]
	if in.Status != StatusPaused || !in.Paused || in.Busy {
		t.Fatalf("paused job: %+v", in)
	}
	wantErr(t, m.Complete("p"), "Job 'p' in state 'paused' cannot accept command verb 'complete'")
	wantErr(t, m.Finalize("p"), "Job 'p' in state 'paused' cannot accept command verb 'finalize'")
	wantErr(t, m.Dismiss("p"), "Job 'p' in state 'paused' cannot accept command verb 'dismiss'")
	wantErr(t, m.Pause("p"), "Job is already paused")
	if err := m.Resume("p"); err != nil {
		t.Fatal(err)
	}
	if err := <-s.acks; err != nil {
		t.Fatal(err)
	}
	r.expect(t, "p:running")
	if resumed != 1 {
		t.Errorf("UserResume called %d times", resumed)
	}
	// Internal pauses are counted and do not make a user pause.
	j := m.Find("p")
	j.Pause()
	j.Pause()
	wantErr(t, m.Resume("p"), "Can't resume a job that was not paused")
	j.Resume()
	done := make(chan error)
	go func() { done <- s.do("pause-point") }()
	r.expect(t, "p:paused")
	j.Resume()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	r.expect(t, "p:running")
	// The stop error policy pauses as a user would.
	j.StopForError()
	if !j.UserPaused() {
		t.Fatal("StopForError did not pause as a user")
	}
	if err := m.Resume("p"); err != nil {
		t.Fatal(err)
	}
	s.steps <- "return"
	r.expect(t, "p:waiting", "p:pending", "p:concluded", "p:null")
}

func TestReadyStandbyComplete(t *testing.T) {
	m, r := newManager()
	s := newStepper()
	var events []string
	completed := make(chan struct{}, 1)
	start(t, m, Spec{ID: "a", Run: s.body, Hooks: Hooks{
		OnReady:  func(in Info) { events = append(events, "ready "+in.Status.String()) },
		Complete: func(*Job) error { completed <- struct{}{}; return nil },
	}})
	r.expect(t, "a:created", "a:running")
	wantErr(t, m.Complete("a"), "Job 'a' in state 'running' cannot accept command verb 'complete'")
	if err := s.do("ready"); err != nil {
		t.Fatal(err)
	}
	r.expect(t, "a:ready")
	if err := m.Pause("a"); err != nil {
		t.Fatal(err)
	}
	go func() { s.steps <- "pause-point" }()
	r.expect(t, "a:standby")
	wantErr(t, m.Complete("a"), "Job 'a' in state 'standby' cannot accept command verb 'complete'")
	if err := m.Resume("a"); err != nil {
		t.Fatal(err)
	}
	<-s.acks
	r.expect(t, "a:ready")
	if err := m.Complete("a"); err != nil {
		t.Fatal(err)
	}
	<-completed
	if len(events) != 1 || events[0] != "ready ready" {
		t.Errorf("OnReady: %q", events)
	}
	s.steps <- "return"
	r.expect(t, "a:waiting", "a:pending", "a:concluded", "a:null")
}

func TestCompleteWithoutHook(t *testing.T) {
	m, r := newManager()
	s := newStepper()
	start(t, m, Spec{ID: "a", Run: s.body})
	r.expect(t, "a:created", "a:running")
	if err := s.do("ready"); err != nil {
		t.Fatal(err)
	}
	r.expect(t, "a:ready")
	wantErr(t, m.Complete("a"), "The active block job 'a' cannot be completed")
	if err := m.Cancel("a", true); err != nil {
		t.Fatal(err)
	}
	r.expect(t, "a:aborting", "a:concluded", "a:null")
}

func TestCancelRunning(t *testing.T) {
	m, r := newManager()
	s := newStepper()
	cancelled := make(chan bool, 1)
	j := start(t, m, Spec{ID: "c", Run: s.body, ManualDismiss: true, Hooks: Hooks{
		OnFinalized: func(_ Info, c bool) { cancelled <- c },
	}})
	r.expect(t, "c:created", "c:running")
	if err := m.Cancel("c", true); err != nil {
		t.Fatal(err)
	}
	<-j.Concluded()
	r.expect(t, "c:aborting", "c:concluded")
	if !<-cancelled || j.Err() != ErrCanceled || m.Query()[0].Error != "Operation canceled" {
		t.Fatalf("err %v", j.Err())
	}
	wantErr(t, m.Cancel("c", true), "Job 'c' in state 'concluded' cannot accept command verb 'cancel'")
}

func TestCancelPaused(t *testing.T) {
	m, r := newManager()
	s := newStepper()
	j := start(t, m, Spec{ID: "c", Run: s.body, ManualDismiss: true})
	r.expect(t, "c:created", "c:running")
	if err := m.Pause("c"); err != nil {
		t.Fatal(err)
	}
	go func() { s.steps <- "pause-point" }()
	r.expect(t, "c:paused")
	if err := m.Cancel("c", true); err != nil {
		t.Fatal(err)
	}
	if err := <-s.acks; !errors.Is(err, context.Canceled) {
		t.Fatalf("pause point returned %v", err)
	}
	<-j.Concluded()
	r.expect(t, "c:running", "c:aborting", "c:concluded")
	// The cancel lifted the user pause.
	wantErr(t, m.Resume("c"), "Can't resume a job that was not paused")
}

func TestSoftCancel(t *testing.T) {
	m, r := newManager()
	s := newStepper()
	start(t, m, Spec{ID: "m", Run: s.body, Hooks: Hooks{
		Cancel:   func(_ *Job, force bool) bool { return force },
		Complete: func(*Job) error { return nil },
	}})
	r.expect(t, "m:created", "m:running")
	if err := m.Cancel("m", false); err != nil {
		t.Fatal(err)
	}
	j := m.Find("m")
	if !j.CancelRequested() || j.IsCancelled() {
		t.Fatal("a soft cancel is requested but not forced")
	}
	if err := s.do("ready"); err != nil {
		t.Fatal(err)
	}
	r.expect(t, "m:ready")
	wantErr(t, m.Complete("m"), "The active block job 'm' cannot be completed")
	s.steps <- "return"
	// A soft-cancelled job that ends well is not an aborted one.
	r.expect(t, "m:waiting", "m:pending", "m:concluded", "m:null")
	if j.Err() != nil {
		t.Fatal(j.Err())
	}
}

func TestCancelPending(t *testing.T) {
	m, r := newManager()
	s := newStepper()
	var calls []string
	j := start(t, m, Spec{ID: "d", Run: s.body, ManualFinalize: true, Hooks: Hooks{
		Commit:      func(*Job) { calls = append(calls, "commit") },
		Abort:       func(*Job) { calls = append(calls, "abort") },
		OnFinalized: func(_ Info, c bool) { calls = append(calls, fmt.Sprint("cancelled=", c)) },
	}})
	r.expect(t, "d:created", "d:running")
	s.steps <- "return"
	r.expect(t, "d:waiting", "d:pending")
	if err := m.Cancel("d", true); err != nil {
		t.Fatal(err)
	}
	r.expect(t, "d:aborting", "d:concluded", "d:null")
	if got := strings.Join(calls, ","); got != "abort,cancelled=true" || j.Err() != ErrCanceled {
		t.Fatalf("hooks %s err %v", got, j.Err())
	}
}

func TestStartErrors(t *testing.T) {
	m, r := newManager()
	s := newStepper()
	for _, id := range []string{"", "1x", "a b", "#block1"} {
		_, err := m.Start(context.Background(), Spec{ID: id, Run: s.body})
		wantErr(t, err, fmt.Sprintf("Invalid job ID '%s'", id))
	}
	start(t, m, Spec{ID: "x", Run: s.body})
	r.expect(t, "x:created", "x:running")
	_, err := m.Start(context.Background(), Spec{ID: "x", Run: s.body})
	wantErr(t, err, "Job ID 'x' already in use")
	r.none(t)
	m.CancelAll()
	r.expect(t, "x:aborting", "x:concluded", "x:null")
	_, err = m.Start(context.Background(), Spec{ID: "y", Run: s.body})
	if err == nil {
		t.Fatal("Start after CancelAll succeeded")
	}
}

func TestBodyWithoutBackground(t *testing.T) {
	m, r := newManager()
	j, err := m.Start(context.Background(), Spec{ID: "q", Type: "create", ManualDismiss: true,
		Run: func(ctx context.Context, j *Job) error {
			j.SetProgressRemaining(1)
			j.ProgressUpdate(1)
			return errors.New("no such thing")
		}})
	if err != nil {
		t.Fatal(err)
	}
	// Start returned after the job concluded: the events are all there.
	r.expect(t, "q:created", "q:running", "q:aborting", "q:concluded")
	r.none(t)
	if in := j.Info(); in.Status != StatusConcluded || in.CurrentProgress != 1 || in.TotalProgress != 1 {
		t.Fatalf("%+v", in)
	}
}

func TestCancelAll(t *testing.T) {
	m, r := newManager()
	s1, s2 := newStepper(), newStepper()
	start(t, m, Spec{ID: "a", Run: s1.body, ManualDismiss: true})
	r.expect(t, "a:created", "a:running")
	s1.steps <- "return"
	r.expect(t, "a:waiting", "a:pending", "a:concluded")
	start(t, m, Spec{ID: "b", Run: s2.body})
	r.expect(t, "b:created", "b:running")
	if err := m.Pause("b"); err != nil {
		t.Fatal(err)
	}
	m.CancelAll()
	r.expect(t, "b:aborting", "b:concluded", "b:null", "a:null")
	if len(m.Jobs()) != 0 {
		t.Fatal("jobs left after CancelAll")
	}
}

// TestConcurrentJobs runs many jobs whose bodies pass pause points while
// clients pause, resume and cancel them from other goroutines, and checks
// that every job ends and that each job's events follow QEMU's table.
func TestConcurrentJobs(t *testing.T) {
	m, r := newManager()
	const n = 16
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("j%d", i)
			j, err := m.Start(context.Background(), Spec{ID: id, Type: "stream", ManualDismiss: i%2 == 0,
				Run: func(ctx context.Context, j *Job) error {
					j.Background()
					for k := 0; k < 200; k++ {
						j.ProgressUpdate(1)
						if err := j.PausePoint(); err != nil {
							return err
						}
					}
					return nil
				}})
			if err != nil {
				t.Error(err)
				return
			}
			for k := 0; k < 20; k++ {
				_ = m.Pause(id)
				_ = m.Query()
				_ = m.Resume(id)
			}
			if i%3 == 0 {
				_ = m.Cancel(id, true)
			}
			<-j.Concluded()
			_ = m.Dismiss(id)
		}()
	}
	wg.Wait()
	m.CancelAll()
	close(r.ch)
	last := map[string]Status{}
	names := map[string]Status{}
	for s := StatusUndefined; s < numStatus; s++ {
		names[s.String()] = s
	}
	for ev := range r.ch {
		id, st, _ := strings.Cut(ev, ":")
		to := names[st]
		if !CanTransition(last[id], to) {
			t.Errorf("%s went from %s to %s", id, last[id], to)
		}
		last[id] = to
	}
	if len(last) != n {
		t.Fatalf("%d jobs seen", len(last))
	}
	for id, s := range last {
		if s != StatusNull {
			t.Errorf("%s ended %s", id, s)
		}
	}
}
