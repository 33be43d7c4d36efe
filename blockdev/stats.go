package blockdev

import (
	"sync/atomic"
	"time"
)

// acctType is a statistics class, like QEMU's BlockAcctType.
type acctType uint8

const (
	acctRead acctType = iota
	acctWrite
	acctFlush
	acctUnmap
	acctNone // not counted (block-status, truncate)
)

// ioStats are a node's counters. Everything is an atomic: the I/O path
// takes no lock to count.
//
// Like the accounting of a QEMU BlockBackend, the request counters cover
// only requests from root users (exports and other users attached with
// AttachRoot), in the bytes the user asked for, and with QEMU's rules for
// an export's backend (account_invalid and account_failed off): successful
// requests count operations, bytes and time; failed ones only their
// failed_* counter; requests refused before reaching the driver (out of
// range, read-only, missing permission) only their invalid_* counter.
// wr_highest_offset, the driver-level discard counters, follow every
// request the node sees, whoever sends it, as QEMU's node-level fields do.
type ioStats struct {
	bytes   [acctNone]atomic.Int64
	ops     [acctNone]atomic.Int64
	failed  [acctNone]atomic.Int64
	invalid [acctNone]atomic.Int64
	timeNs  [acctNone]atomic.Int64
	// lastAccess is monoNow()+1 at the last counted completion; 0: never.
	lastAccess atomic.Int64
	wrHighest  atomic.Int64

	discardOK, discardFailed, discardBytesOK atomic.Int64
}

// clockBase anchors monoNow; time.Since uses the monotonic clock.
var clockBase = time.Now()

func monoNow() int64 { return int64(time.Since(clockBase)) }

func acctOf(op opKind) acctType {
	switch op {
	case opRead:
		return acctRead
	case opWrite, opWriteZeroes:
		return acctWrite
	case opFlush:
		return acctFlush
	case opDiscard:
		return acctUnmap
	}
	return acctNone
}

// counted tells whether r is accounted: it comes from a root user and its
// kind has counters.
func (r *request) counted() bool {
	return r.from != nil && r.from.parent == nil && acctOf(r.op) != acctNone
}

// refused counts a request refused by begin.
func (s *ioStats) refused(r *request) {
	if r.counted() {
		s.invalid[acctOf(r.op)].Add(1)
	}
}

// done counts a completed request that begin admitted.
func (s *ioStats) done(r *request, err error) {
	if !r.counted() {
		return
	}
	t := acctOf(r.op)
	if err != nil {
		s.failed[t].Add(1)
		return
	}
	now := monoNow()
	s.bytes[t].Add(r.bytes)
	s.ops[t].Add(1)
	s.timeNs[t].Add(now - r.start)
	s.lastAccess.Store(now + 1)
}

// wrote raises wr_highest_offset to end.
func (s *ioStats) wrote(end int64) {
	for {
		cur := s.wrHighest.Load()
		if end <= cur || s.wrHighest.CompareAndSwap(cur, end) {
			return
		}
	}
}

// IOStats is a snapshot of a node's counters (see ioStats) for the query
// views: Bytes, Ops, Failed, Invalid and TimeNs are indexed read, write,
// flush, unmap.
type IOStats struct {
	Bytes, Ops, Failed, Invalid, TimeNs [4]int64
	// IdleTimeNs is the time since the last counted completion; Idle is
	// false when none has completed yet.
	IdleTimeNs      int64
	Idle            bool
	WrHighestOffset int64
	// Discards that reached the driver (file-posix's own counters).
	DiscardOK, DiscardFailed, DiscardBytesOK int64
}

// IOStats returns the node's counters.
func (n *Node) IOStats() IOStats {
	s := &n.stats
	var out IOStats
	for t := range acctNone {
		out.Bytes[t] = s.bytes[t].Load()
		out.Ops[t] = s.ops[t].Load()
		out.Failed[t] = s.failed[t].Load()
		out.Invalid[t] = s.invalid[t].Load()
		out.TimeNs[t] = s.timeNs[t].Load()
	}
	out.WrHighestOffset = s.wrHighest.Load()
	if last := s.lastAccess.Load(); last != 0 {
		out.IdleTimeNs, out.Idle = max(monoNow()-(last-1), 0), true
	}
	out.DiscardOK, out.DiscardFailed, out.DiscardBytesOK = s.discardOK.Load(), s.discardFailed.Load(), s.discardBytesOK.Load()
	return out
}

// dataChild is the child query-blockstats reports as parent: the primary
// child if it holds data or is filtered, else the only data child.
func (n *Node) dataChild() *Child {
	if pc := n.primaryChild(); pc != nil && pc.role&(RoleData|RoleFiltered) != 0 {
		return pc
	}
	var found *Child
	for _, c := range n.children {
		if c.role&RoleData != 0 {
			if found != nil {
				return nil
			}
			found = c
		}
	}
	return found
}

// DataChild returns the child query-blockstats reports as the node's
// parent, or nil. Caller holds the graph lock.
func (n *Node) DataChild(_ *Locked) *Child { return n.dataChild() }
