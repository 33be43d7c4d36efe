package blockdev

import (
	"context"
	"errors"
	"fmt"

	"github.com/qbmond/qbmond/qapi"
)

// The transaction command applies its actions all or nothing: every
// action is prepared in order (and takes effect, so later actions see
// it); if one fails, those prepared are undone newest first, otherwise
// all are committed. The command itself is the jobs package's (it starts
// backup jobs); the graph prepares the actions that are its own: abort,
// the dirty bitmap actions and the snapshots. The graph lock is held
// throughout.

// TxAction is one prepared action of a transaction.
type TxAction interface {
	// Commit makes the action final; Abort undoes it. Exactly one of
	// them runs, then Clean.
	Commit()
	Abort()
	Clean()
}

type txFunc struct{ onCommit, onAbort, onClean func() }

func (f txFunc) Commit() {
	if f.onCommit != nil {
		f.onCommit()
	}
}

func (f txFunc) Abort() {
	if f.onAbort != nil {
		f.onAbort()
	}
}

func (f txFunc) Clean() {
	if f.onClean != nil {
		f.onClean()
	}
}

// PrepareTxAction prepares one of the graph's transaction actions.
// grouped is the transaction's completion-mode: only backups support
// grouped completion, and the other actions refuse it as QEMU does.
func (lk *Locked) PrepareTxAction(ctx context.Context, act *qapi.TransactionAction, grouped bool) (TxAction, error) {
	typ := string(act.Type)
	if grouped && typ != "abort" {
		return nil, fmt.Errorf("Action '%s' does not support Transaction property completion-mode = grouped", typ)
	}
	switch typ {
	case "blockdev-snapshot", "blockdev-snapshot-sync":
		return lk.prepareSnapshot(ctx, act)
	}
	t, err := lk.prepareAction(typ, act)
	if err != nil {
		return nil, err
	}
	return t, nil
}

func (lk *Locked) prepareAction(typ string, act *qapi.TransactionAction) (TxAction, error) {
	g := lk.g
	switch typ {
	case "abort":
		return nil, errors.New("Transaction aborted using Abort action")
	case "block-dirty-bitmap-add":
		n, b, err := lk.addBitmapArgs(&act.BlockDirtyBitmapAdd.Data)
		if err != nil {
			return nil, err
		}
		return txFunc{onAbort: func() { n.dropBitmap(b, true) }}, nil
	case "block-dirty-bitmap-merge":
		dst, srcs, err := lk.mergeArgs(&act.BlockDirtyBitmapMerge.Data)
		if err != nil {
			return nil, err
		}
		shadow, own := dst.startShadow()
		backup := dst.bits.Copy()
		if err := dst.MergeInto(lk, srcs); err != nil {
			if own {
				dst.shadow.Store(nil)
			}
			return nil, err
		}
		return txFunc{
			onCommit: func() {
				if own {
					dst.shadow.Store(nil)
				}
			},
			onAbort: func() {
				// Back to the bits before the merge, plus every write
				// recorded since.
				dst.bits.Clear()
				_ = dst.bits.Merge(backup)
				_ = dst.bits.Merge(shadow)
				if own {
					dst.shadow.Store(nil)
				}
				g.logSave(dst)
			},
		}, nil
	}
	w, ok := act.Variant().(*qapi.BlockDirtyBitmapWrapper)
	if !ok {
		return nil, fmt.Errorf("Action '%s' is not supported", typ)
	}
	n, b, err := lk.LookupBitmap(w.Data.Node, w.Data.Name)
	if err != nil {
		return nil, err
	}
	switch typ {
	case "block-dirty-bitmap-remove":
		// The bitmap stays (a later action of the same transaction
		// still finds it, busy) and goes at commit.
		if err := b.Check(CheckBusy | CheckReadOnly); err != nil {
			return nil, err
		}
		b.Acquire()
		return txFunc{
			onCommit: func() {
				b.Release()
				if err := n.RemoveDirtyBitmap(lk, b.name); err != nil {
					g.log.Warn().Err(err).Str("bitmap", b.name).Msg("transaction: removing bitmap")
				}
			},
			onAbort: b.Release,
		}, nil
	case "block-dirty-bitmap-clear":
		if err := b.Check(CheckDefault); err != nil {
			return nil, err
		}
		backup := b.bits.Copy()
		b.bits.Clear()
		// Undoing a clear puts the old bits back beside those written
		// since, which only adds bits.
		return txFunc{
			onCommit: func() { g.logSave(b) },
			onAbort:  func() { _ = b.bits.Merge(backup); g.logSave(b) },
		}, nil
	case "block-dirty-bitmap-enable", "block-dirty-bitmap-disable":
		was := b.Recording()
		if err := b.SetRecording(typ == "block-dirty-bitmap-enable"); err != nil {
			return nil, err
		}
		return txFunc{onAbort: func() { _ = b.SetRecording(was) }}, nil
	}
	return nil, fmt.Errorf("Action '%s' is not supported", typ)
}

// logSave has a persistent bitmap's store save it after a transaction
// changed it; a failure cannot undo the transaction any more, so it is
// logged (the store marks what it could not save).
func (g *Graph) logSave(b *DirtyBitmap) {
	if err := b.saved(); err != nil {
		g.log.Warn().Err(err).Str("bitmap", b.name).Msg("saving bitmap after transaction")
	}
}
