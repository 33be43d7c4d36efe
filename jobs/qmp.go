package jobs

import (
	"context"
	"encoding/json"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qmp"
)

// RegisterCommands installs the job-* commands, query-jobs and
// blockdev-create (whose jobs create images in g).
func (m *Manager) RegisterCommands(d *qmp.Dispatcher, g *blockdev.Graph) {
	byID := func(f func(id string) error) qmp.Handler {
		return func(_ context.Context, raw json.RawMessage) (any, error) {
			var a struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(raw, &a); err != nil {
				return nil, err
			}
			return nil, f(a.ID)
		}
	}
	d.Register("job-pause", byID(m.Pause))
	d.Register("job-resume", byID(m.Resume))
	d.Register("job-cancel", func(ctx context.Context, raw json.RawMessage) (any, error) {
		var a struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		return nil, m.CancelAfterReply(ctx, a.ID, true)
	})
	d.Register("job-complete", byID(m.Complete))
	d.Register("job-finalize", byID(m.Finalize))
	d.Register("job-dismiss", byID(m.Dismiss))
	d.Register("query-jobs", func(context.Context, json.RawMessage) (any, error) {
		return m.Query(), nil
	})
	m.registerBlockJobCommands(d)
	m.registerChainJobs(d, g)
	m.registerTransaction(d, g)
	d.Register("blockdev-create", func(ctx context.Context, raw json.RawMessage) (any, error) {
		return nil, m.blockdevCreate(ctx, g, raw)
	})
}
