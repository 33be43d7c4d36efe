package jobs

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qmp"
)

// startBlock starts a block job whose body is driven by s.
func startBlock(t *testing.T, m *Manager, id string, onError OnError, s *stepper, manualFinalize bool) (*Job, *BlockJob) {
	t.Helper()
	j, err := m.StartBlock(context.Background(), blockdev.NewGraph(zerolog.Nop()), BlockSpec{
		Spec:    Spec{ID: id, Type: "commit", Run: s.body, ManualFinalize: manualFinalize},
		OnError: onError,
	})
	if err != nil {
		t.Fatal(err)
	}
	return j, BlockJobOf(j)
}

// TestBlockJobErrorPolicies: the policies pick QEMU's action, "stop"
// pauses the job with a failed (or nospace) I/O status that a resume
// clears, and BLOCK_JOB_ERROR precedes the pause.
func TestBlockJobErrorPolicies(t *testing.T) {
	eio := fmt.Errorf("write: %w", syscall.EIO)
	enospc := fmt.Errorf("write: %w", syscall.ENOSPC)
	for _, c := range []struct {
		policy OnError
		err    error
		want   ErrorAction
		status string
	}{
		{OnErrorReport, eio, ActionReport, "ok"},
		{OnErrorIgnore, eio, ActionIgnore, "ok"},
		{OnErrorStop, eio, ActionStop, "failed"},
		{OnErrorEnospc, eio, ActionReport, "ok"},
		{OnErrorEnospc, enospc, ActionStop, "nospace"},
		{OnErrorAuto, enospc, ActionStop, "nospace"},
	} {
		t.Run(fmt.Sprintf("%s/%v", c.policy, c.err), func(t *testing.T) {
			m, r := newManager()
			s := newStepper()
			j, b := startBlock(t, m, "j", c.policy, s, false)
			r.expect(t, "j:created", "j:running")
			if got := b.ErrorAction(c.err, false); got != c.want {
				t.Fatalf("action %s, want %s", got, c.want)
			}
			r.expect(t, "BLOCK_JOB_ERROR")
			if got := b.IOStatus(); got != c.status {
				t.Fatalf("io-status %s, want %s", got, c.status)
			}
			if c.want == ActionStop {
				ack := make(chan error, 1)
				go func() { ack <- s.do("pause-point") }()
				r.expect(t, "j:paused")
				if err := j.UserResume(); err != nil {
					t.Fatal(err)
				}
				r.expect(t, "j:running")
				if err := <-ack; err != nil {
					t.Fatal(err)
				}
				if b.IOStatus() != "ok" {
					t.Fatalf("io-status %s after resume", b.IOStatus())
				}
			}
			s.steps <- "return"
			<-j.Concluded()
			r.expect(t, "j:waiting", "j:pending", "BLOCK_JOB_COMPLETED", "j:concluded", "j:null")
		})
	}
}

// TestBlockJobEvents: a forced cancel ends in BLOCK_JOB_CANCELLED, manual
// finalisation sends BLOCK_JOB_PENDING, and the block-job views list the
// job with QEMU's members.
func TestBlockJobEvents(t *testing.T) {
	m, r := newManager()
	s := newStepper()
	j, b := startBlock(t, m, "j", "", s, true)
	r.expect(t, "j:created", "j:running")
	if err := b.SetSpeed(-1); err == nil || err.Error() != "Parameter 'speed' expects a non-negative value" {
		t.Fatalf("negative speed: %v", err)
	}
	if err := b.SetSpeed(4096); err != nil {
		t.Fatal(err)
	}
	q := m.QueryBlockJobs()
	if len(q) != 1 || q[0].Device != "j" || q[0].Speed != 4096 || q[0].IoStatus != "ok" || q[0].Type != "commit" ||
		q[0].AutoFinalize || !q[0].AutoDismiss || q[0].Ready {
		t.Fatalf("query-block-jobs %+v", q)
	}
	s.steps <- "return"
	r.expect(t, "j:waiting", "j:pending", "BLOCK_JOB_PENDING")
	if err := j.UserFinalize(); err != nil {
		t.Fatal(err)
	}
	r.expect(t, "BLOCK_JOB_COMPLETED", "j:concluded", "j:null")

	s2 := newStepper()
	j2, _ := startBlock(t, m, "k", "", s2, false)
	r.expect(t, "k:created", "k:running")
	if err := j2.UserCancel(true); err != nil {
		t.Fatal(err)
	}
	<-j2.Concluded()
	r.expect(t, "k:aborting", "BLOCK_JOB_CANCELLED", "k:concluded", "k:null")

	_, err := m.FindBlockJob("k")
	var qe *qmp.Error
	if !errors.As(err, &qe) || qe.Class != qmp.ClassDeviceNotActive || qe.Desc != "Block job 'k' not found" {
		t.Fatalf("FindBlockJob of a gone job: %v", err)
	}
}

// TestBlockJobSetupFails: a failing Before leaves no job and no event; a
// failing Setup fails the created job (created, then null, as QEMU's
// job_early_fail); Undo runs in both cases.
func TestBlockJobSetupFails(t *testing.T) {
	m, r := newManager()
	undone := 0
	_, err := m.StartBlock(context.Background(), blockdev.NewGraph(zerolog.Nop()), BlockSpec{
		Spec:   Spec{ID: "j", Type: "stream", Run: func(context.Context, *Job) error { return nil }},
		Before: func(*blockdev.Locked, *BlockJob) error { return errors.New("no such chain") },
		Undo:   func(*blockdev.Locked, *BlockJob) { undone++ },
	})
	wantErr(t, err, "no such chain")
	r.none(t)
	_, err = m.StartBlock(context.Background(), blockdev.NewGraph(zerolog.Nop()), BlockSpec{
		Spec:  Spec{ID: "j", Type: "stream", Run: func(context.Context, *Job) error { return nil }},
		Setup: func(*blockdev.Locked, *BlockJob) error { return errors.New("permission conflict") },
		Undo:  func(*blockdev.Locked, *BlockJob) { undone++ },
	})
	wantErr(t, err, "permission conflict")
	r.expect(t, "j:created", "j:null")
	r.none(t)
	if len(m.Jobs()) != 0 || undone != 2 {
		t.Fatalf("%d jobs after failed starts, %d undos", len(m.Jobs()), undone)
	}
}
