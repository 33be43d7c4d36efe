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
	s := n.stats.Load()
	const rd, wr, fl, un = iopath.Read, iopath.Write, iopath.Flush, iopath.Unmap
	out := BlockDeviceStats{
		RdBytes:                s.Bytes[rd],
		WrBytes:                s.Bytes[wr],
		UnmapBytes:             s.Bytes[un],
		RdOperations:           s.Ops[rd],
		WrOperations:           s.Ops[wr],
		FlushOperations:        s.Ops[fl],
		UnmapOperations:        s.Ops[un],
		RdTotalTimeNs:          s.TimeNs[rd],
		WrTotalTimeNs:          s.TimeNs[wr],
		FlushTotalTimeNs:       s.TimeNs[fl],
		UnmapTotalTimeNs:       s.TimeNs[un],
		WrHighestOffset:        s.WrHighest,
		FailedRdOperations:     s.Failed[rd],
		FailedWrOperations:     s.Failed[wr],
		FailedFlushOperations:  s.Failed[fl],
		FailedUnmapOperations:  s.Failed[un],
		InvalidRdOperations:    s.Invalid[rd],
		InvalidWrOperations:    s.Invalid[wr],
		InvalidFlushOperations: s.Invalid[fl],
		InvalidUnmapOperations: s.Invalid[un],
		TimedStats:             []struct{}{},
	}
	if s.HasIdle {
		idle := s.Idle
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
		s := n.stats.Load()
		return BlockStatsSpecificFile{
			Driver:          n.drvName,
			DiscardNbOK:     s.DiscardOK,
			DiscardNbFailed: s.DiscardFailed,
			DiscardBytesOK:  s.DiscardBytesOK,
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
