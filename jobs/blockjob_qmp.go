package jobs

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/qbmond/qbmond/qmp"
)

// registerBlockJobCommands installs query-block-jobs and the block-job-*
// commands, which find a job by its device name (its id).
func (m *Manager) registerBlockJobCommands(d *qmp.Dispatcher) {
	byDevice := func(f func(ctx context.Context, b *BlockJob, raw json.RawMessage) error) qmp.Handler {
		return func(ctx context.Context, raw json.RawMessage) (any, error) {
			var a struct {
				Device string `json:"device"`
				ID     string `json:"id"`
			}
			if err := json.Unmarshal(raw, &a); err != nil {
				return nil, err
			}
			if a.Device == "" {
				a.Device = a.ID
			}
			b, err := m.FindBlockJob(a.Device)
			if err != nil {
				return nil, err
			}
			return nil, f(ctx, b, raw)
		}
	}
	d.Register("query-block-jobs", func(context.Context, json.RawMessage) (any, error) {
		return m.QueryBlockJobs(), nil
	})
	d.Register("block-job-set-speed", byDevice(func(ctx context.Context, b *BlockJob, raw json.RawMessage) error {
		var a struct {
			Speed int64 `json:"speed"`
		}
		if err := json.Unmarshal(raw, &a); err != nil {
			return err
		}
		settle, err := b.setSpeedSettle(a.Speed)
		if settle != nil {
			qmp.AfterReply(ctx, settle)
		}
		return err
	}))
	d.Register("block-job-cancel", byDevice(func(ctx context.Context, b *BlockJob, raw json.RawMessage) error {
		var a struct {
			Device string `json:"device"`
			Force  bool   `json:"force"`
		}
		if err := json.Unmarshal(raw, &a); err != nil {
			return err
		}
		var finish func()
		err := b.j.ctlDo(func() (err error) {
			if b.j.UserPaused() && !a.Force {
				return fmt.Errorf("The block job for device '%s' is currently paused", a.Device)
			}
			finish, err = b.j.userCancelCtl(a.Force)
			return err
		})
		if finish != nil {
			qmp.AfterReply(ctx, finish)
		}
		return err
	}))
	d.Register("block-job-pause", byDevice(func(_ context.Context, b *BlockJob, _ json.RawMessage) error { return b.j.UserPause() }))
	d.Register("block-job-resume", byDevice(func(_ context.Context, b *BlockJob, _ json.RawMessage) error { return b.j.UserResume() }))
	d.Register("block-job-complete", byDevice(func(_ context.Context, b *BlockJob, _ json.RawMessage) error { return b.j.UserComplete() }))
	d.Register("block-job-finalize", byDevice(func(_ context.Context, b *BlockJob, _ json.RawMessage) error { return b.j.UserFinalize() }))
	d.Register("block-job-dismiss", byDevice(func(_ context.Context, b *BlockJob, _ json.RawMessage) error { return b.j.UserDismiss() }))
}
