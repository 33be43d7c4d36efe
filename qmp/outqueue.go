package qmp

import "sync"

// A connection's output (replies and events, in the order they happened)
// waits in an outQueue until the connection's writer takes it. Events are
// never dropped while the connection lives: QEMU's monitor keeps every
// unsent line in memory for a client that reads slowly, and so does this
// queue. Memory is bounded by closing, with a warning in the log, a client
// that falls more than maxBacklog bytes behind. (QEMU also rate-limits a
// few guest-triggered events — RTC_CHANGE, WATCHDOG, BALLOON_CHANGE,
// QUORUM_*, VSERPORT_CHANGE, MEMORY_DEVICE_SIZE_CHANGE — to one a second
// per source, keeping the last one; qbmond emits none of them.)
//
// Replies are produced only as fast as the client sends requests, so they
// do not close the connection: a reply waits while more than
// replyBacklog bytes are queued, which stops that connection's reader
// until the client reads again.

// Limits on one connection's queued output (variables so tests can scale
// them).
var (
	maxBacklog   = 64 << 20
	replyBacklog = 1 << 20
)

// outLine is one line for the writer. done, when set, is closed once the
// line has been written to the connection (or the connection is gone).
type outLine struct {
	b    []byte
	done chan struct{}
}

type outQueue struct {
	mu     sync.Mutex
	cond   sync.Cond
	lines  []outLine
	bytes  int
	closed bool // no more lines: the writer ends once the queue is empty
	dead   bool // the connection is gone: lines are discarded
}

func newOutQueue() *outQueue {
	q := &outQueue{}
	q.cond.L = &q.mu
	return q
}

// reply queues a line, first waiting while the backlog exceeds
// replyBacklog. It reports false when the connection is gone (done is
// then closed at once).
func (q *outQueue) reply(l outLine) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.bytes > replyBacklog && !q.dead && !q.closed {
		q.cond.Wait()
	}
	if q.dead || q.closed {
		if l.done != nil {
			close(l.done)
		}
		return false
	}
	q.add(l)
	return true
}

// event queues a line without waiting. It returns false, and marks the
// queue dead, when the line would put the backlog past maxBacklog; the
// caller then closes the connection. A dead queue takes nothing.
func (q *outQueue) event(b []byte) (ok bool, backlog, lines int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.dead || q.closed {
		return true, 0, 0
	}
	if q.bytes+len(b) > maxBacklog {
		backlog, lines = q.bytes, len(q.lines)
		q.kill()
		return false, backlog, lines
	}
	q.add(outLine{b: b})
	return true, 0, 0
}

func (q *outQueue) add(l outLine) {
	q.lines = append(q.lines, l)
	q.bytes += len(l.b)
	q.cond.Broadcast()
}

// take waits for lines and returns all of them, in order, leaving the
// queue empty; nil once the queue is closed and empty, or dead.
func (q *outQueue) take(spare []outLine) []outLine {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.lines) == 0 && !q.closed && !q.dead {
		q.cond.Wait()
	}
	if q.dead || len(q.lines) == 0 {
		return nil
	}
	out := q.lines
	if cap(spare) > 4096 {
		spare = nil // a burst's memory is not kept
	}
	q.lines, q.bytes = spare[:0], 0
	q.cond.Broadcast() // replies waiting for room
	return out
}

// markDead discards every queued line (closing their done channels) and
// refuses new ones: the connection is gone.
func (q *outQueue) markDead() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.kill()
}

func (q *outQueue) kill() {
	for _, l := range q.lines {
		if l.done != nil {
			close(l.done)
		}
	}
	q.lines, q.bytes, q.dead = nil, 0, true
	q.cond.Broadcast()
}

// close lets the writer finish what is queued and end.
func (q *outQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.cond.Broadcast()
}
