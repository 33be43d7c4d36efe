package iopath

import (
	"sync/atomic"
	"time"
)

// Class is a statistics class, like QEMU's BlockAcctType.
type Class uint8

const (
	Read Class = iota
	Write
	Flush
	Unmap
	None // not counted (block-status, truncate)
)

// Counters are a node's I/O counters. Everything is an atomic: the I/O
// path takes no lock to count. Which requests count, and in which class,
// is the caller's rule (blockdev counts root users' requests, as a QEMU
// BlockBackend does); Counters only add up.
type Counters struct {
	bytes   [None]atomic.Int64
	ops     [None]atomic.Int64
	failed  [None]atomic.Int64
	invalid [None]atomic.Int64
	timeNs  [None]atomic.Int64
	// lastAccess is Now()+1 at the last counted completion; 0: never.
	lastAccess atomic.Int64
	wrHighest  atomic.Int64

	discardOK, discardFailed, discardBytesOK atomic.Int64
}

// clockBase anchors Now; time.Since uses the monotonic clock.
var clockBase = time.Now()

// Now is the monotonic time in nanoseconds the counters measure with.
func Now() int64 { return int64(time.Since(clockBase)) }

// Refused counts a request of class c refused before it reached the
// driver (out of range, read-only, missing permission).
func (s *Counters) Refused(c Class) { s.invalid[c].Add(1) }

// Done counts a completed request of class c that began at start (Now())
// and asked for bytes: a failure only as failed.
func (s *Counters) Done(c Class, bytes, start int64, err error) {
	if err != nil {
		s.failed[c].Add(1)
		return
	}
	now := Now()
	s.bytes[c].Add(bytes)
	s.ops[c].Add(1)
	s.timeNs[c].Add(now - start)
	s.lastAccess.Store(now + 1)
}

// Wrote raises the highest offset written (wr_highest_offset) to end.
func (s *Counters) Wrote(end int64) {
	for {
		cur := s.wrHighest.Load()
		if end <= cur || s.wrHighest.CompareAndSwap(cur, end) {
			return
		}
	}
}

// Discarded counts a discard that reached the driver (the file driver's
// discard-nb-ok, discard-nb-failed, discard-bytes-ok).
func (s *Counters) Discarded(bytes int64, err error) {
	if err != nil {
		s.discardFailed.Add(1)
		return
	}
	s.discardOK.Add(1)
	s.discardBytesOK.Add(bytes)
}

// Snapshot is the counters' values at one time, per class.
type Snapshot struct {
	Bytes, Ops, Failed, Invalid, TimeNs [None]int64
	WrHighest                           int64
	// Idle is the time since the last counted completion; HasIdle is
	// false before the first.
	Idle    int64
	HasIdle bool

	DiscardOK, DiscardFailed, DiscardBytesOK int64
}

// Load reads the counters.
func (s *Counters) Load() Snapshot {
	var out Snapshot
	for c := Read; c < None; c++ {
		out.Bytes[c] = s.bytes[c].Load()
		out.Ops[c] = s.ops[c].Load()
		out.Failed[c] = s.failed[c].Load()
		out.Invalid[c] = s.invalid[c].Load()
		out.TimeNs[c] = s.timeNs[c].Load()
	}
	out.WrHighest = s.wrHighest.Load()
	if last := s.lastAccess.Load(); last != 0 {
		out.Idle, out.HasIdle = max(Now()-(last-1), 0), true
	}
	out.DiscardOK = s.discardOK.Load()
	out.DiscardFailed = s.discardFailed.Load()
	out.DiscardBytesOK = s.discardBytesOK.Load()
	return out
}
