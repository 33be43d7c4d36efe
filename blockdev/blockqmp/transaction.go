package blockqmp

import (
	"context"
	"errors"
	"fmt"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/chain"
	"github.com/qbmond/qbmond/qapi"
)

// PrepareTxAction prepares one of the graph's transaction actions (abort,
// the dirty bitmap actions and the snapshots) with blockdev's Prepare
// methods; the jobs package's transaction command calls it for every
// action that is not a backup, with the graph lock held. grouped is the
// transaction's completion-mode: only backups support grouped completion,
// and the other actions refuse it as QEMU does.
func PrepareTxAction(ctx context.Context, lk *blockdev.Locked, act *qapi.TransactionAction, grouped bool) (blockdev.TxAction, error) {
	typ := string(act.Type)
	if grouped && typ != "abort" {
		return nil, fmt.Errorf("Action '%s' does not support Transaction property completion-mode = grouped", typ)
	}
	switch typ {
	case "blockdev-snapshot", "blockdev-snapshot-sync":
		return chain.PrepareSnapshot(ctx, lk, snapshot(act))
	case "abort":
		return nil, errors.New("Transaction aborted using Abort action")
	case "block-dirty-bitmap-add":
		a := &act.BlockDirtyBitmapAdd.Data
		return lk.PrepareBitmapAdd(a.Node, a.Name, bitmapOptions(a))
	case "block-dirty-bitmap-merge":
		a := &act.BlockDirtyBitmapMerge.Data
		return lk.PrepareBitmapMerge(a.Node, a.Target, bitmapRefs(a.Bitmaps))
	}
	w, ok := act.Variant().(*qapi.BlockDirtyBitmapWrapper)
	if !ok {
		return nil, fmt.Errorf("Action '%s' is not supported", typ)
	}
	switch typ {
	case "block-dirty-bitmap-remove":
		return lk.PrepareBitmapRemove(w.Data.Node, w.Data.Name)
	case "block-dirty-bitmap-clear":
		return lk.PrepareBitmapClear(w.Data.Node, w.Data.Name)
	case "block-dirty-bitmap-enable", "block-dirty-bitmap-disable":
		return lk.PrepareBitmapRecording(w.Data.Node, w.Data.Name, typ == "block-dirty-bitmap-enable")
	}
	return nil, fmt.Errorf("Action '%s' is not supported", typ)
}
