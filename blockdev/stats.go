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

// BlockDeviceStats is QEMU's BlockDeviceStats.
type BlockDeviceStats struct {
	RdBytes                int64  `json:"rd_bytes"`
	WrBytes                int64  `json:"wr_bytes"`
	UnmapBytes             int64  `json:"unmap_bytes"`
	RdOperations           int64  `json:"rd_operations"`
	WrOperations           int64  `json:"wr_operations"`
	FlushOperations        int64  `json:"flush_operations"`
	UnmapOperations        int64  `json:"unmap_operations"`
	RdTotalTimeNs          int64  `json:"rd_total_time_ns"`
	WrTotalTimeNs          int64  `json:"wr_total_time_ns"`
	FlushTotalTimeNs       int64  `json:"flush_total_time_ns"`
	UnmapTotalTimeNs       int64  `json:"unmap_total_time_ns"`
	WrHighestOffset        int64  `json:"wr_highest_offset"`
	RdMerged               int64  `json:"rd_merged"`
	WrMerged               int64  `json:"wr_merged"`
	UnmapMerged            int64  `json:"unmap_merged"`
	IdleTimeNs             *int64 `json:"idle_time_ns,omitempty"`
	FailedRdOperations     int64  `json:"failed_rd_operations"`
	FailedWrOperations     int64  `json:"failed_wr_operations"`
	FailedFlushOperations  int64  `json:"failed_flush_operations"`
	FailedUnmapOperations  int64  `json:"failed_unmap_operations"`
	InvalidRdOperations    int64  `json:"invalid_rd_operations"`
	InvalidWrOperations    int64  `json:"invalid_wr_operations"`
	InvalidFlushOperations int64  `json:"invalid_flush_operations"`
	InvalidUnmapOperations int64  `json:"invalid_unmap_operations"`
	AccountInvalid         bool   `json:"account_invalid"`
	AccountFailed          bool   `json:"account_failed"`
	// TimedStats is always empty: qbmond keeps no latency intervals.
	TimedStats []struct{} `json:"timed_stats"`
}

// BlockStats is QEMU's BlockStats as query-blockstats returns it for a
// node: its statistics, its driver's own counters, and the statistics of
// the child that stores its data (parent, in QEMU's naming).
type BlockStats struct {
	NodeName       string           `json:"node-name,omitempty"`
	Stats          BlockDeviceStats `json:"stats"`
	DriverSpecific any              `json:"driver-specific,omitempty"`
	Parent         *BlockStats      `json:"parent,omitempty"`
	Backing        *BlockStats      `json:"backing,omitempty"`
}

// BlockStatsSpecificFile is the driver-specific part of the statistics of
// file nodes: discards that reached the driver.
type BlockStatsSpecificFile struct {
	Driver          string `json:"driver"`
	DiscardNbOK     int64  `json:"discard-nb-ok"`
	DiscardNbFailed int64  `json:"discard-nb-failed"`
	DiscardBytesOK  int64  `json:"discard-bytes-ok"`
}

// Stats returns the node's statistics in QEMU's shape. idle_time_ns is
// present once a counted request has completed.
func (n *Node) Stats() BlockDeviceStats {
	s := &n.stats
	out := BlockDeviceStats{
		RdBytes:                s.bytes[acctRead].Load(),
		WrBytes:                s.bytes[acctWrite].Load(),
		UnmapBytes:             s.bytes[acctUnmap].Load(),
		RdOperations:           s.ops[acctRead].Load(),
		WrOperations:           s.ops[acctWrite].Load(),
		FlushOperations:        s.ops[acctFlush].Load(),
		UnmapOperations:        s.ops[acctUnmap].Load(),
		RdTotalTimeNs:          s.timeNs[acctRead].Load(),
		WrTotalTimeNs:          s.timeNs[acctWrite].Load(),
		FlushTotalTimeNs:       s.timeNs[acctFlush].Load(),
		UnmapTotalTimeNs:       s.timeNs[acctUnmap].Load(),
		WrHighestOffset:        s.wrHighest.Load(),
		FailedRdOperations:     s.failed[acctRead].Load(),
		FailedWrOperations:     s.failed[acctWrite].Load(),
		FailedFlushOperations:  s.failed[acctFlush].Load(),
		FailedUnmapOperations:  s.failed[acctUnmap].Load(),
		InvalidRdOperations:    s.invalid[acctRead].Load(),
		InvalidWrOperations:    s.invalid[acctWrite].Load(),
		InvalidFlushOperations: s.invalid[acctFlush].Load(),
		InvalidUnmapOperations: s.invalid[acctUnmap].Load(),
		TimedStats:             []struct{}{},
	}
	if last := s.lastAccess.Load(); last != 0 {
		idle := max(monoNow()-(last-1), 0)
		out.IdleTimeNs = &idle
	}
	return out
}

func (n *Node) specificStats() any {
	if ss, ok := n.drv.(SpecificStatser); ok {
		return ss.SpecificStats()
	}
	switch n.drvName {
	case "file", "host_device":
		return BlockStatsSpecificFile{
			Driver:          n.drvName,
			DiscardNbOK:     n.stats.discardOK.Load(),
			DiscardNbFailed: n.stats.discardFailed.Load(),
			DiscardBytesOK:  n.stats.discardBytesOK.Load(),
		}
	}
	return nil
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

// BlockStats returns the node's query-blockstats entry with the data
// child's entry nested as parent (node level: no backing).
func (n *Node) BlockStats(lk *Locked) *BlockStats {
	bs := &BlockStats{NodeName: n.name, Stats: n.Stats(), DriverSpecific: n.specificStats()}
	if c := n.dataChild(); c != nil {
		bs.Parent = c.node.Load().BlockStats(lk)
	}
	return bs
}

// QueryBlockStats is query-blockstats. Without queryNodes QEMU lists named
// BlockBackends, of which qbmond (like qemu-storage-daemon) has none, so
// the list is empty; with it, every node in opening order, oldest first.
func (lk *Locked) QueryBlockStats(queryNodes bool) []*BlockStats {
	g := lk.g
	out := []*BlockStats{}
	if !queryNodes {
		return out
	}
	for n := g.head; n != nil; n = n.next {
		out = append(out, n.BlockStats(lk))
	}
	return out
}
