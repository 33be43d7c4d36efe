package iopath

import "sync"

// Tracker keeps the modifying requests (write, write-zeroes, discard) in
// flight on a node, like QEMU's tracked requests, so that a
// read-modify-write cycle never interleaves with another request on the
// same blocks.
//
// Every tracked request covers the aligned range it touches. A serialising
// request (one doing read-modify-write) waits for every overlapping request
// that entered before it; any request waits for overlapping serialising
// requests that entered before it. A request only ever waits for earlier
// ones, so waits cannot form a cycle, and a serialising request that is
// waiting already holds its place: later overlapping requests queue behind
// it rather than starving it.
type Tracker struct {
	mu   sync.Mutex
	reqs []*Tracked
}

// Tracked is one request in the tracker.
type Tracked struct {
	start, end int64 // aligned range [start, end)
	serial     bool
	done       chan struct{} // closed when the request leaves
}

// Enter adds a request for [start, end) and waits until no earlier
// overlapping request conflicts with it.
func (t *Tracker) Enter(start, end int64, serial bool) *Tracked {
	me := &Tracked{start: start, end: end, serial: serial, done: make(chan struct{})}
	var wait []*Tracked
	t.mu.Lock()
	for _, o := range t.reqs {
		if (serial || o.serial) && o.start < end && start < o.end {
			wait = append(wait, o)
		}
	}
	t.reqs = append(t.reqs, me)
	t.mu.Unlock()
	for _, o := range wait {
		<-o.done
	}
	return me
}

// Leave removes a request and wakes those waiting for it.
func (t *Tracker) Leave(me *Tracked) {
	t.mu.Lock()
	for i, o := range t.reqs {
		if o == me {
			last := len(t.reqs) - 1
			copy(t.reqs[i:], t.reqs[i+1:])
			t.reqs[last] = nil
			t.reqs = t.reqs[:last]
			break
		}
	}
	t.mu.Unlock()
	close(me.done)
}
