package jobs

import (
	"context"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

// RegisterCommands installs the job-* commands, query-jobs and
// blockdev-create (whose jobs create images in g).
func (m *Manager) RegisterCommands(d *qmp.Dispatcher, g *blockdev.Graph) {
	qmp.RegisterTyped(d, "job-pause", func(_ context.Context, a *qapi.JobPauseArgs) (*qapi.Empty, error) {
		return nil, m.Pause(a.ID)
	})
	qmp.RegisterTyped(d, "job-resume", func(_ context.Context, a *qapi.JobResumeArgs) (*qapi.Empty, error) {
		return nil, m.Resume(a.ID)
	})
	qmp.RegisterTyped(d, "job-cancel", func(ctx context.Context, a *qapi.JobCancelArgs) (*qapi.Empty, error) {
		return nil, m.CancelAfterReply(ctx, a.ID, true)
	})
	qmp.RegisterTyped(d, "job-complete", func(ctx context.Context, a *qapi.JobCompleteArgs) (*qapi.Empty, error) {
		return nil, m.CompleteAfterReply(ctx, a.ID)
	})
	qmp.RegisterTyped(d, "job-finalize", func(_ context.Context, a *qapi.JobFinalizeArgs) (*qapi.Empty, error) {
		return nil, m.Finalize(a.ID)
	})
	qmp.RegisterTyped(d, "job-dismiss", func(_ context.Context, a *qapi.JobDismissArgs) (*qapi.Empty, error) {
		return nil, m.Dismiss(a.ID)
	})
	qmp.RegisterTyped(d, "query-jobs", func(context.Context, *qapi.Empty) ([]qapi.JobInfo, error) {
		q := m.Query()
		out := make([]qapi.JobInfo, len(q))
		for i, in := range q {
			out[i] = in.JobInfo()
		}
		return out, nil
	})
	m.registerBlockJobCommands(d)
	m.registerChainJobs(d, g)
	m.registerMirror(d, g)
	m.registerTransaction(d, g)
	qmp.RegisterTyped(d, "blockdev-create", func(ctx context.Context, a *qapi.BlockdevCreateArgs) (*qapi.Empty, error) {
		return nil, m.blockdevCreate(ctx, g, a)
	})
}
