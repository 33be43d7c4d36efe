package blockdev

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/qbmond/qbmond/qmp"
)

// The transaction command applies its actions all or nothing: every
// action is prepared in order (and takes effect, so later actions see
// it); if one fails, those prepared are undone newest first, otherwise
// all are committed. The graph lock is held throughout.

// txAction is one prepared action.
type txAction interface {
	commit()
	abort()
}

type txFunc struct{ onCommit, onAbort func() }

func (f txFunc) commit() {
	if f.onCommit != nil {
		f.onCommit()
	}
}

func (f txFunc) abort() {
	if f.onAbort != nil {
		f.onAbort()
	}
}

func (g *Graph) qmpTransaction(ctx context.Context, args json.RawMessage) (any, error) {
	var a struct {
		Actions []struct {
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		} `json:"actions"`
		Properties struct {
			CompletionMode string `json:"completion-mode"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(args, &a); err != nil {
		return nil, qmp.Errorf("%v", err)
	}
	g.Lock()
	defer g.Unlock()
	var done []txAction
	for _, act := range a.Actions {
		if a.Properties.CompletionMode == "grouped" {
			// No action qbmond has yet supports grouped completion
			// (QEMU: only backups do).
			err := fmt.Errorf("Action '%s' does not support Transaction property completion-mode = grouped", act.Type)
			g.abortTx(done)
			return nil, err
		}
		t, err := g.prepareAction(act.Type, act.Data)
		if err != nil {
			g.abortTx(done)
			return nil, err
		}
		done = append(done, t)
	}
	for _, t := range done {
		t.commit()
	}
	return struct{}{}, nil
}

func (g *Graph) abortTx(done []txAction) {
	for i := len(done) - 1; i >= 0; i-- {
		done[i].abort()
	}
}

func (g *Graph) prepareAction(typ string, data json.RawMessage) (txAction, error) {
	switch typ {
	case "abort":
		return nil, errors.New("Transaction aborted using Abort action")
	case "block-dirty-bitmap-add":
		n, b, err := g.addBitmapArgs(data)
		if err != nil {
			return nil, err
		}
		return txFunc{onAbort: func() { n.dropBitmap(b, true) }}, nil
	case "block-dirty-bitmap-merge":
		dst, srcs, err := g.mergeArgs(data)
		if err != nil {
			return nil, err
		}
		shadow, own := dst.startShadow()
		backup := dst.bits.Copy()
		if err := dst.MergeInto(srcs); err != nil {
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
	n, b, err := g.lookupBitmapArgs(data)
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
				if err := n.RemoveDirtyBitmap(b.name); err != nil {
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
