package blockdev

import "context"

// WriteObserver follows every request that may change a node's content
// (write, write-zeroes, discard) from its admission to its end: the way a
// mirror learns what to copy again, and holds writes back while it
// switches the graph over (QEMU does the latter with drained sections).
//
// Enter runs before the request is admitted (before the node's drain
// guard, so it may wait): an error fails the request. If the parent's
// edge was moved to another node while Enter waited, the request goes to
// that node instead. Leave runs once the request has finished, failed or
// not, with its range; it must not block. Both may run concurrently.
type WriteObserver struct {
	Enter func(ctx context.Context) error
	Leave func(off, length int64)
}

type observerEntry struct{ o WriteObserver }

// AddWriteObserver registers o; remove unregisters it. Requests already
// admitted when o is added are not seen by it, and those admitted before
// it is removed still get their Leave.
func (n *Node) AddWriteObserver(o WriteObserver) (remove func()) {
	e := &observerEntry{o: o}
	n.observerMu.Lock()
	defer n.observerMu.Unlock()
	var list []*observerEntry
	if cur := n.observers.Load(); cur != nil {
		list = append(list, *cur...)
	}
	list = append(list, e)
	n.observers.Store(&list)
	return func() {
		n.observerMu.Lock()
		defer n.observerMu.Unlock()
		cur := n.observers.Load()
		if cur == nil {
			return
		}
		next := make([]*observerEntry, 0, len(*cur))
		for _, x := range *cur {
			if x != e {
				next = append(next, x)
			}
		}
		n.observers.Store(&next)
	}
}

// enterObservers runs the observers' Enter for a modifying request and
// remembers who must see it leave.
func (n *Node) enterObservers(ctx context.Context, r *request) error {
	list := n.observers.Load()
	if list == nil || len(*list) == 0 {
		return nil
	}
	for i, e := range *list {
		if e.o.Enter == nil {
			continue
		}
		if err := e.o.Enter(ctx); err != nil {
			r.observed = (*list)[:i]
			n.leaveObservers(r)
			return err
		}
	}
	r.observed = *list
	if r.from.node.Load() != n {
		n.leaveObservers(r)
		return errMoved
	}
	return nil
}

func (n *Node) leaveObservers(r *request) {
	for _, e := range r.observed {
		if e.o.Leave != nil {
			e.o.Leave(r.offset, r.bytes)
		}
	}
	r.observed = nil
}
