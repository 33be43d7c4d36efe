package jobs

import (
	"context"
	"time"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/blockqmp"
	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

// The transaction command (QEMU's qmp_transaction): its actions are
// prepared in order, each seeing what the ones before it did; if one
// fails, those prepared are aborted newest first; otherwise all commit,
// then the backup jobs they created begin. With completion-mode grouped
// the backup jobs share a Txn: they finalise together, and one that fails
// cancels the others. blockdev-backup and drive-backup are transactions
// of one action, as in QEMU. The control lock, then the graph lock, are
// held while the actions prepare and commit.

func (m *Manager) registerTransaction(d *qmp.Dispatcher, g *blockdev.Graph) {
	qmp.RegisterTyped(d, "transaction", func(ctx context.Context, a *qapi.TransactionArgs) (*qapi.Empty, error) {
		grouped := a.Properties != nil && qapi.Deref(a.Properties.CompletionMode) == qapi.ActionCompletionModeGrouped
		return nil, m.transaction(ctx, g, a.Actions, grouped)
	})
	qmp.RegisterTyped(d, "blockdev-backup", func(ctx context.Context, a *qapi.BlockdevBackup) (*qapi.Empty, error) {
		return nil, m.transaction(ctx, g, []qapi.TransactionAction{{Type: qapi.TransactionActionKindBlockdevBackup,
			BlockdevBackup: &qapi.BlockdevBackupWrapper{Data: *a}}}, false)
	})
	qmp.RegisterTyped(d, "drive-backup", func(ctx context.Context, a *qapi.DriveBackup) (*qapi.Empty, error) {
		return nil, m.transaction(ctx, g, []qapi.TransactionAction{{Type: qapi.TransactionActionKindDriveBackup,
			DriveBackup: &qapi.DriveBackupWrapper{Data: *a}}}, false)
	})
}

func (m *Manager) transaction(ctx context.Context, g *blockdev.Graph, actions []qapi.TransactionAction, grouped bool) error {
	var txn *Txn
	if grouped {
		txn = NewTxn()
	}
	m.ctl.Lock()
	var steps []*txStep
	err := g.Do(func(lk *blockdev.Locked) error {
		lk.DrainAll()
		fail := func(err error) error {
			for i := len(steps) - 1; i >= 0; i-- {
				if steps[i].abort != nil {
					steps[i].abort()
				}
			}
			for _, s := range steps {
				if s.clean != nil {
					s.clean()
				}
			}
			return err
		}
		for i := range actions {
			act := &actions[i]
			switch act.Type {
			case qapi.TransactionActionKindBlockdevBackup, qapi.TransactionActionKindDriveBackup:
				s, err := m.prepareBackupLocked(ctx, lk, act, txn)
				if err != nil {
					return fail(err)
				}
				steps = append(steps, s)
			default:
				t, err := blockqmp.PrepareTxAction(ctx, lk, act, grouped)
				if err != nil {
					return fail(err)
				}
				steps = append(steps, &txStep{commit: t.Commit, abort: t.Abort, clean: t.Clean})
			}
		}
		for _, s := range steps {
			if s.commit != nil {
				s.commit()
			}
			if s.job != nil && s.job.beginCtl(ctx) {
				s.job.waitStarted()
			}
		}
		for _, s := range steps {
			if s.clean != nil {
				s.clean()
			}
		}
		return nil
	})
	m.ctl.Unlock()
	if err != nil {
		return err
	}
	// A job that had nothing to do has ended already; as in QEMU, its
	// end (events included) comes before the reply.
	for _, s := range steps {
		if s.job == nil {
			continue
		}
		select {
		case <-s.job.bodyDone:
			select {
			case <-s.job.processed:
			case <-time.After(time.Second):
			}
		default:
		}
	}
	return nil
}
