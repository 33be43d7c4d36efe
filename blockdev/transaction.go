package blockdev

// The transaction command applies its actions all or nothing: every
// action is prepared in order (and takes effect, so later actions see
// it); if one fails, those prepared are undone newest first, otherwise
// all are committed. The command itself is the jobs package's (it starts
// backup jobs); blockqmp.PrepareTxAction hands the graph the actions
// that are its own, the dirty bitmap actions (the Prepare methods here)
// and the snapshots (package chain's PrepareSnapshot). The graph lock is held
// throughout.

// TxAction is one prepared action of a transaction.
type TxAction interface {
	// Commit makes the action final; Abort undoes it. Exactly one of
	// them runs, then Clean.
	Commit()
	Abort()
	Clean()
}

// TxFuncs is a TxAction made of functions; a nil one does nothing.
type TxFuncs struct{ OnCommit, OnAbort, OnClean func() }

func (f TxFuncs) Commit() {
	if f.OnCommit != nil {
		f.OnCommit()
	}
}

func (f TxFuncs) Abort() {
	if f.OnAbort != nil {
		f.OnAbort()
	}
}

func (f TxFuncs) Clean() {
	if f.OnClean != nil {
		f.OnClean()
	}
}

// PrepareBitmapAdd prepares block-dirty-bitmap-add as a transaction
// action: the bitmap is added now and dropped again on abort.
func (lk *Locked) PrepareBitmapAdd(node, name string, o BitmapOptions) (TxAction, error) {
	n, b, err := lk.AddBitmap(node, name, o)
	if err != nil {
		return nil, err
	}
	return TxFuncs{OnAbort: func() { n.dropBitmap(b, true) }}, nil
}

// PrepareBitmapMerge prepares block-dirty-bitmap-merge as a transaction
// action (arguments as MergeSources takes them): the merge is done now,
// and undone on abort without losing the writes recorded since.
func (lk *Locked) PrepareBitmapMerge(node, target string, refs []BitmapRef) (TxAction, error) {
	g := lk.g
	dst, srcs, err := lk.MergeSources(node, target, refs)
	if err != nil {
		return nil, err
	}
	shadow, own := dst.st.StartShadow()
	backup := dst.st.Bits().Copy()
	if err := dst.MergeInto(lk, srcs); err != nil {
		if own {
			dst.st.StopShadow()
		}
		return nil, err
	}
	return TxFuncs{
		OnCommit: func() {
			if own {
				dst.st.StopShadow()
			}
		},
		OnAbort: func() {
			// Back to the bits before the merge, plus every write
			// recorded since.
			dst.st.Bits().Clear()
			_ = dst.st.Bits().Merge(backup)
			_ = dst.st.Bits().Merge(shadow)
			if own {
				dst.st.StopShadow()
			}
			g.logSave(dst)
		},
	}, nil
}

// PrepareBitmapRemove prepares block-dirty-bitmap-remove as a transaction
// action: the bitmap stays (a later action of the same transaction still
// finds it, busy) and goes at commit.
func (lk *Locked) PrepareBitmapRemove(node, name string) (TxAction, error) {
	g := lk.g
	n, b, err := lk.LookupBitmap(node, name)
	if err != nil {
		return nil, err
	}
	if err := b.Check(CheckBusy | CheckReadOnly); err != nil {
		return nil, err
	}
	b.Acquire()
	return TxFuncs{
		OnCommit: func() {
			b.Release()
			if err := n.RemoveDirtyBitmap(lk, b.name); err != nil {
				g.log.Warn().Err(err).Str("bitmap", b.name).Msg("transaction: removing bitmap")
			}
		},
		OnAbort: b.Release,
	}, nil
}

// PrepareBitmapClear prepares block-dirty-bitmap-clear as a transaction
// action: the bits are cleared now and put back on abort.
func (lk *Locked) PrepareBitmapClear(node, name string) (TxAction, error) {
	g := lk.g
	_, b, err := lk.LookupBitmap(node, name)
	if err != nil {
		return nil, err
	}
	if err := b.Check(CheckDefault); err != nil {
		return nil, err
	}
	backup := b.st.Bits().Copy()
	b.st.Bits().Clear()
	// Undoing a clear puts the old bits back beside those written
	// since, which only adds bits.
	return TxFuncs{
		OnCommit: func() { g.logSave(b) },
		OnAbort:  func() { _ = b.st.Bits().Merge(backup); g.logSave(b) },
	}, nil
}

// PrepareBitmapRecording prepares block-dirty-bitmap-enable (on) or
// block-dirty-bitmap-disable as a transaction action: the bitmap records
// (or not) from now on, as before on abort.
func (lk *Locked) PrepareBitmapRecording(node, name string, on bool) (TxAction, error) {
	_, b, err := lk.LookupBitmap(node, name)
	if err != nil {
		return nil, err
	}
	was := b.Recording()
	if err := b.SetRecording(on); err != nil {
		return nil, err
	}
	return TxFuncs{OnAbort: func() { _ = b.SetRecording(was) }}, nil
}

// logSave has a persistent bitmap's store save it after a transaction
// changed it; a failure cannot undo the transaction any more, so it is
// logged (the store marks what it could not save).
func (g *Graph) logSave(b *DirtyBitmap) {
	if err := b.saved(); err != nil {
		g.log.Warn().Err(err).Str("bitmap", b.name).Msg("saving bitmap after transaction")
	}
}
