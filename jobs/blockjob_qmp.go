package jobs

import (
	"context"
	"fmt"

	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

// registerBlockJobCommands installs query-block-jobs and the block-job-*
// commands, which find a job by its device name (its id).
func (m *Manager) registerBlockJobCommands(d *qmp.Dispatcher) {
	qmp.RegisterTyped(d, "query-block-jobs", func(context.Context, *qapi.Empty) ([]qapi.BlockJobInfo, error) {
		return m.QueryBlockJobs(), nil
	})
	qmp.RegisterTyped(d, "block-job-set-speed", byDevice(m, func(a *qapi.BlockJobSetSpeedArgs) string { return a.Device },
		func(ctx context.Context, b *BlockJob, a *qapi.BlockJobSetSpeedArgs) error {
			settle, err := b.setSpeedSettle(a.Speed)
			if settle != nil {
				qmp.AfterReply(ctx, settle)
			}
			return err
		}))
	qmp.RegisterTyped(d, "block-job-cancel", byDevice(m, func(a *qapi.BlockJobCancelArgs) string { return a.Device },
		func(ctx context.Context, b *BlockJob, a *qapi.BlockJobCancelArgs) error {
			force := qapi.Deref(a.Force)
			var finish func()
			err := b.j.ctlDo(func() (err error) {
				if b.j.UserPaused() && !force {
					return fmt.Errorf("The block job for device '%s' is currently paused", a.Device)
				}
				finish, err = b.j.userCancelCtl(force)
				return err
			})
			if finish != nil {
				qmp.AfterReply(ctx, finish)
			}
			return err
		}))
	qmp.RegisterTyped(d, "block-job-pause", byDevice(m, func(a *qapi.BlockJobPauseArgs) string { return a.Device },
		func(_ context.Context, b *BlockJob, _ *qapi.BlockJobPauseArgs) error { return b.j.UserPause() }))
	qmp.RegisterTyped(d, "block-job-resume", byDevice(m, func(a *qapi.BlockJobResumeArgs) string { return a.Device },
		func(_ context.Context, b *BlockJob, _ *qapi.BlockJobResumeArgs) error { return b.j.UserResume() }))
	qmp.RegisterTyped(d, "block-job-complete", byDevice(m, func(a *qapi.BlockJobCompleteArgs) string { return a.Device },
		func(ctx context.Context, b *BlockJob, _ *qapi.BlockJobCompleteArgs) error {
			return b.j.UserCompleteAfterReply(ctx)
		}))
	qmp.RegisterTyped(d, "block-job-finalize", byDevice(m, func(a *qapi.BlockJobFinalizeArgs) string { return a.ID },
		func(_ context.Context, b *BlockJob, _ *qapi.BlockJobFinalizeArgs) error { return b.j.UserFinalize() }))
	qmp.RegisterTyped(d, "block-job-dismiss", byDevice(m, func(a *qapi.BlockJobDismissArgs) string { return a.ID },
		func(_ context.Context, b *BlockJob, _ *qapi.BlockJobDismissArgs) error { return b.j.UserDismiss() }))
}

// byDevice makes the handler of a block-job-* command: the job is found
// by the name its arguments give (device, or id for finalize and dismiss),
// then f runs on it.
func byDevice[A any](m *Manager, device func(*A) string, f func(context.Context, *BlockJob, *A) error) func(context.Context, *A) (*qapi.Empty, error) {
	return func(ctx context.Context, a *A) (*qapi.Empty, error) {
		b, err := m.FindBlockJob(device(a))
		if err != nil {
			return nil, err
		}
		return nil, f(ctx, b, a)
	}
}
