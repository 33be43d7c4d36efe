package blockdev

import "context"

// WriteOp tells a before-write hook what kind of request is about to
// change a node.
type WriteOp uint8

const (
	// WriteOpWrite: a write of data.
	WriteOpWrite WriteOp = iota
	// WriteOpWriteZeroes: a write-zeroes request, including a write that
	// detect-zeroes turned into one.
	WriteOpWriteZeroes
	// WriteOpDiscard: a discard that will reach the driver.
	WriteOpDiscard
)

// String names the operation ("write", "write-zeroes", "discard").
func (o WriteOp) String() string {
	switch o {
	case WriteOpWrite:
		return "write"
	case WriteOpWriteZeroes:
		return "write-zeroes"
	case WriteOpDiscard:
		return "discard"
	}
	return "unknown"
}

// BeforeWriteHook is called before a request changes the node's content,
// with the range the driver is about to change: for writes and
// write-zeroes the range widened to the node's request alignment (the
// blocks a read-modify-write rewrites; equal to the request's range on
// nodes without alignment), for discards the request's range. It runs
// after the request has waited for overlapping requests it must not
// interleave with, so the range is stable while the hook runs. A non-nil
// error fails the request before the driver runs.
//
// Hooks run on the request's goroutine and may be called concurrently. A
// hook may read the node (copy-before-write) but must not write to
// overlapping ranges of the same node, which would wait for itself.
type BeforeWriteHook func(ctx context.Context, off, length int64, op WriteOp) error

type hookEntry struct{ h BeforeWriteHook }

// AddBeforeWriteHook registers h for every write, write-zeroes and discard
// that reaches the node, whoever sends it (dirty bitmaps and backup's
// copy-before-write hook in here). Hooks run in the order they were added.
// remove unregisters it; requests already past the hooks are not affected.
// Removing twice is harmless.
func (n *Node) AddBeforeWriteHook(h BeforeWriteHook) (remove func()) {
	e := &hookEntry{h: h}
	n.hookMu.Lock()
	defer n.hookMu.Unlock()
	var list []*hookEntry
	if cur := n.hooks.Load(); cur != nil {
		list = append(list, *cur...)
	}
	list = append(list, e)
	n.hooks.Store(&list)
	return func() {
		n.hookMu.Lock()
		defer n.hookMu.Unlock()
		cur := n.hooks.Load()
		if cur == nil {
			return
		}
		next := make([]*hookEntry, 0, len(*cur))
		for _, o := range *cur {
			if o != e {
				next = append(next, o)
			}
		}
		n.hooks.Store(&next)
	}
}

// runHooks calls the before-write hooks; the first error fails the request.
func (n *Node) runHooks(ctx context.Context, off, length int64, op WriteOp) error {
	list := n.hooks.Load()
	if list == nil {
		return nil
	}
	for _, e := range *list {
		if err := e.h(ctx, off, length, op); err != nil {
			return err
		}
	}
	return nil
}
