package blockdev

import "github.com/qbmond/qbmond/blockdev/internal/iopath"

// A node's counters are an iopath.Counters (node.stats). Like the
// accounting of a QEMU BlockBackend, the request counters cover only
// requests from root users (exports and other users attached with
// AttachRoot), in the bytes the user asked for, and with QEMU's rules for
// an export's backend (account_invalid and account_failed off): successful
// requests count operations, bytes and time; failed ones only their
// failed_* counter; requests refused before reaching the driver (out of
// range, read-only, missing permission) only their invalid_* counter.
// wr_highest_offset, the driver-level discard counters, follow every
// request the node sees, whoever sends it, as QEMU's node-level fields do.

func acctOf(op opKind) iopath.Class {
	switch op {
	case opRead:
		return iopath.Read
	case opWrite, opWriteZeroes:
		return iopath.Write
	case opFlush:
		return iopath.Flush
	case opDiscard:
		return iopath.Unmap
	}
	return iopath.None
}

// counted tells whether r is accounted: it comes from a root user and its
// kind has counters.
func (r *request) counted() bool {
	return r.from != nil && r.from.parent == nil && acctOf(r.op) != iopath.None
}

// IOStats is a snapshot of a node's counters for the query views: Bytes,
// Ops, Failed, Invalid and TimeNs are indexed read, write, flush, unmap.
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
	s := n.stats.Load()
	return IOStats{
		Bytes: s.Bytes, Ops: s.Ops, Failed: s.Failed, Invalid: s.Invalid, TimeNs: s.TimeNs,
		IdleTimeNs: s.Idle, Idle: s.HasIdle, WrHighestOffset: s.WrHighest,
		DiscardOK: s.DiscardOK, DiscardFailed: s.DiscardFailed, DiscardBytesOK: s.DiscardBytesOK,
	}
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
