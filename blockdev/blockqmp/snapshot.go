package blockqmp

import (
	"context"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/chain"
	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

// External snapshots: blockdev-snapshot and blockdev-snapshot-sync (see
// chain.PrepareSnapshot).

func registerSnapshotCommands(d *qmp.Dispatcher, h handlers) {
	// QEMU runs both as a transaction of one action.
	one := func(ctx context.Context, act *qapi.TransactionAction) (*qapi.Empty, error) {
		return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (*qapi.Empty, error) {
			lk.DrainAll()
			a, err := PrepareTxAction(ctx, lk, act, false)
			if err != nil {
				return nil, err
			}
			a.Commit()
			a.Clean()
			return nil, nil
		})
	}
	qmp.RegisterTyped(d, "blockdev-snapshot", func(ctx context.Context, a *qapi.BlockdevSnapshot) (*qapi.Empty, error) {
		return one(ctx, &qapi.TransactionAction{Type: qapi.TransactionActionKindBlockdevSnapshot,
			BlockdevSnapshot: &qapi.BlockdevSnapshotWrapper{Data: *a}})
	})
	qmp.RegisterTyped(d, "blockdev-snapshot-sync", func(ctx context.Context, a *qapi.BlockdevSnapshotSync) (*qapi.Empty, error) {
		return one(ctx, &qapi.TransactionAction{Type: qapi.TransactionActionKindBlockdevSnapshotSync,
			BlockdevSnapshotSync: &qapi.BlockdevSnapshotSyncWrapper{Data: *a}})
	})
}

// snapshot is the snapshot a blockdev-snapshot or blockdev-snapshot-sync
// action describes.
func snapshot(act *qapi.TransactionAction) chain.Snapshot {
	if act.BlockdevSnapshot != nil {
		a := &act.BlockdevSnapshot.Data
		return chain.Snapshot{Device: a.Node, NodeName: a.Node, Overlay: a.Overlay}
	}
	a := &act.BlockdevSnapshotSync.Data
	s := chain.Snapshot{Device: qapi.Deref(a.Device), NodeName: qapi.Deref(a.NodeName), Sync: true,
		Format: "qcow2", SnapshotFile: a.SnapshotFile, SnapshotNodeName: a.SnapshotNodeName,
		Existing: qapi.Deref(a.Mode) == qapi.NewImageModeExisting}
	if a.Format != nil {
		s.Format = *a.Format
	}
	return s
}

func registerReopenCommand(d *qmp.Dispatcher, h handlers) {
	qmp.RegisterTyped(d, "blockdev-reopen", func(ctx context.Context, a *qapi.BlockdevReopenArgs) (*qapi.Empty, error) {
		// Each node's options stay generic: the drivers read their own.
		options := make([]map[string]any, len(a.Options))
		for i, raw := range a.Options {
			opts, err := blockdev.DecodeOptions(raw)
			if err != nil {
				return nil, qmp.Errorf("%v", err)
			}
			options[i] = opts
		}
		return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (*qapi.Empty, error) {
			return nil, lk.Reopen(ctx, options)
		})
	})
}
