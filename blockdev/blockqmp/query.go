package blockqmp

import (
	"context"
	"fmt"
	"slices"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qapi"
)

// The query views: the graph's nodes as query-named-block-nodes,
// query-blockstats and x-debug-query-block-graph show them, built from
// the nodes' accessors into the schema's generated types. Optional
// members are left out (nil) exactly where QSD leaves them out.

// optString is an optional string member, left out when empty.
func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// allocatedSize is ImageInfo's actual-size: the driver's own answer, else
// its primary child's; ok is false when nobody knows.
func allocatedSize(ctx context.Context, n *blockdev.Node) (int64, bool) {
	if as, ok := n.Driver().(blockdev.AllocatedSizer); ok {
		s, err := as.AllocatedSize(ctx)
		return s, err == nil
	}
	if pc := n.PrimaryChild(); pc != nil {
		return allocatedSize(ctx, pc.Node())
	}
	return 0, false
}

// imageInfo builds the node's ImageInfo (without backing-image).
func imageInfo(ctx context.Context, n *blockdev.Node) (*qapi.ImageInfo, error) {
	ii := &qapi.ImageInfo{Filename: n.Filename(), Format: n.DriverName(), VirtualSize: n.Length()}
	if s, ok := allocatedSize(ctx, n); ok {
		ii.ActualSize = &s
	}
	if di, err := n.Driver().Info(ctx); err == nil {
		dirty := di.Dirty
		ii.DirtyFlag = &dirty
		if di.ClusterSize > 0 {
			cs := di.ClusterSize
			ii.ClusterSize = &cs
		}
	}
	if bf, ok := n.Driver().(blockdev.BackingFiler); ok {
		if name, format := bf.BackingFile(); name != "" {
			ii.BackingFilename, ii.FullBackingFilename = optString(name), optString(n.ResolveBacking(name))
			ii.BackingFilenameFormat = optString(format)
		}
	} else if b := n.BackingNode(); b != nil {
		ii.BackingFilename, ii.FullBackingFilename = optString(b.Filename()), optString(b.Filename())
		ii.BackingFilenameFormat = optString(b.DriverName())
	}
	if fi, ok := n.Driver().(blockdev.FormatInfoer); ok {
		spec, err := fi.FormatSpecific(ctx)
		if err == nil && spec != nil {
			s, ok := spec.(*qapi.ImageInfoSpecific)
			if !ok {
				return nil, fmt.Errorf("driver %s: format-specific information is %T, not *qapi.ImageInfoSpecific", n.DriverName(), spec)
			}
			ii.FormatSpecific = s
		}
	}
	return ii, nil
}

// BlockDeviceInfo builds the node's query-named-block-nodes entry. Unless
// flat, the image nests the backing chain's images (backing-image).
func BlockDeviceInfo(ctx context.Context, _ *blockdev.Locked, n *blockdev.Node, flat bool) (qapi.BlockDeviceInfo, error) {
	img, err := imageInfo(ctx, n)
	if err != nil {
		return qapi.BlockDeviceInfo{}, err
	}
	info := qapi.BlockDeviceInfo{
		File:         n.Filename(),
		NodeName:     optString(n.Name()),
		Ro:           n.ReadOnly(),
		Drv:          n.DriverName(),
		DetectZeroes: qapi.BlockdevDetectZeroesOptions(n.DetectZeroes()),
		Cache:        qapi.BlockdevCacheInfo{Writeback: true, Direct: n.CacheDirect(), NoFlush: n.NoFlush()},
	}
	if b := n.BackingNode(); b != nil {
		info.BackingFile = optString(b.Filename())
	}
	for _, b := range n.DirtyBitmaps() {
		d := qapi.BlockDirtyInfo{Recording: b.Recording(), Persistent: b.Persistent(), Busy: b.Busy(),
			Granularity: uint32(b.Bits().Granularity()), Count: int64(b.Bits().Count()),
			Name: optString(b.Name())} // none for anonymous bitmaps
		if b.Inconsistent() {
			t := true
			d.Inconsistent = &t
		}
		info.DirtyBitmaps = append(info.DirtyBitmaps, d)
	}
	// As in QEMU, the chain is walked (and backing_file_depth counted)
	// only for the full view.
	last := img
	for b := n.FilterOrCOW(); b != nil && !flat; b = b.FilterOrCOW() {
		info.BackingFileDepth++
		if last.BackingImage, err = imageInfo(ctx, b); err != nil {
			return qapi.BlockDeviceInfo{}, err
		}
		last = last.BackingImage
	}
	info.Image = *img
	return info, nil
}

// QueryNamedBlockNodes is query-named-block-nodes: every node, newest
// first, as QEMU lists them.
func QueryNamedBlockNodes(ctx context.Context, lk *blockdev.Locked, flat bool) ([]qapi.BlockDeviceInfo, error) {
	nodes := lk.Nodes()
	out := make([]qapi.BlockDeviceInfo, 0, len(nodes))
	for i := len(nodes) - 1; i >= 0; i-- {
		info, err := BlockDeviceInfo(ctx, lk, nodes[i], flat)
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// permList names permissions as x-debug-query-block-graph lists them
// (QEMU builds the list back to front: resize first).
func permList(p blockdev.Perm) []qapi.BlockPermission {
	names := p.Names()
	out := make([]qapi.BlockPermission, len(names))
	for i, n := range names {
		out[len(out)-1-i] = qapi.BlockPermission(n)
	}
	return out
}

// QueryBlockGraph is x-debug-query-block-graph. Node ids are numbered in
// the order QEMU meets them (walking nodes oldest first, each node then its
// children), and both lists come newest first as QEMU prints them.
func QueryBlockGraph(lk *blockdev.Locked) *qapi.XDbgBlockGraph {
	nodes := lk.Nodes()
	ids := make(map[*blockdev.Node]uint64, len(nodes))
	id := func(n *blockdev.Node) uint64 {
		if v, ok := ids[n]; ok {
			return v
		}
		v := uint64(len(ids) + 1)
		ids[n] = v
		return v
	}
	out := &qapi.XDbgBlockGraph{Nodes: make([]qapi.XDbgBlockGraphNode, 0, len(nodes)), Edges: []qapi.XDbgBlockGraphEdge{}}
	next := uint64(0)
	jobs := map[string]uint64{}
	for _, n := range nodes {
		out.Nodes = append(out.Nodes, qapi.XDbgBlockGraphNode{ID: id(n), Type: qapi.XDbgBlockGraphNodeTypeBlockDriver, Name: n.Name()})
		for _, c := range n.Children() {
			out.Edges = append(out.Edges, qapi.XDbgBlockGraphEdge{
				Parent: id(n), Child: id(c.Node()), Name: c.Name(),
				Perm: permList(c.Perm()), SharedPerm: permList(c.Shared()),
			})
		}
		// Root users (exports, jobs) appear as QEMU shows its
		// BlockBackends: an unnamed "block-backend" node with a "root"
		// edge. Their ids come after every node's. Parents lists the
		// newest first: walk it from the oldest.
		parents := n.Parents()
		for i := len(parents) - 1; i >= 0; i-- {
			c := parents[i]
			if c.Parent() != nil {
				continue
			}
			var rid uint64
			if job := c.Job(); job != "" {
				// A job is one vertex, whatever number of nodes it uses.
				if rid = jobs[job]; rid == 0 {
					next++
					rid = uint64(1<<32) + next
					jobs[job] = rid
					out.Nodes = append(out.Nodes, qapi.XDbgBlockGraphNode{ID: rid, Type: qapi.XDbgBlockGraphNodeTypeBlockJob, Name: job})
				}
			} else {
				next++
				rid = uint64(1<<32) + next
				out.Nodes = append(out.Nodes, qapi.XDbgBlockGraphNode{ID: rid, Type: qapi.XDbgBlockGraphNodeTypeBlockBackend, Name: ""})
			}
			out.Edges = append(out.Edges, qapi.XDbgBlockGraphEdge{
				Parent: rid, Child: id(n), Name: c.Name(),
				Perm: permList(c.Perm()), SharedPerm: permList(c.Shared()),
			})
		}
	}
	slices.Reverse(out.Nodes)
	slices.Reverse(out.Edges)
	return out
}

// NodeStats returns the node's statistics as query-blockstats shows them.
// idle_time_ns is present once a counted request has completed.
func NodeStats(n *blockdev.Node) qapi.BlockDeviceStats {
	s := n.IOStats()
	const rd, wr, fl, un = 0, 1, 2, 3
	out := qapi.BlockDeviceStats{
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
		WrHighestOffset:        s.WrHighestOffset,
		FailedRdOperations:     s.Failed[rd],
		FailedWrOperations:     s.Failed[wr],
		FailedFlushOperations:  s.Failed[fl],
		FailedUnmapOperations:  s.Failed[un],
		InvalidRdOperations:    s.Invalid[rd],
		InvalidWrOperations:    s.Invalid[wr],
		InvalidFlushOperations: s.Invalid[fl],
		InvalidUnmapOperations: s.Invalid[un],
		// qbmond keeps no latency intervals.
		TimedStats: []qapi.BlockDeviceTimedStats{},
	}
	if s.Idle {
		out.IdleTimeNs = &s.IdleTimeNs
	}
	return out
}

// specificStats is the node's driver-specific statistics: the driver's
// own (blockdev.SpecificStatser), else for file and host_device nodes the
// discards that reached the driver, as QEMU's file-posix counts them.
func specificStats(n *blockdev.Node) (*qapi.BlockStatsSpecific, error) {
	if ss, ok := n.Driver().(blockdev.SpecificStatser); ok {
		v := ss.SpecificStats()
		if v == nil {
			return nil, nil
		}
		s, ok := v.(*qapi.BlockStatsSpecific)
		if !ok {
			return nil, fmt.Errorf("driver %s: specific statistics are %T, not *qapi.BlockStatsSpecific", n.DriverName(), v)
		}
		return s, nil
	}
	switch drv := qapi.BlockdevDriver(n.DriverName()); drv {
	case qapi.BlockdevDriverFile, qapi.BlockdevDriverHostDevice:
		s := n.IOStats()
		f := &qapi.BlockStatsSpecificFile{DiscardNbOk: uint64(s.DiscardOK), DiscardNbFailed: uint64(s.DiscardFailed),
			DiscardBytesOk: uint64(s.DiscardBytesOK)}
		out := &qapi.BlockStatsSpecific{Driver: drv}
		if drv == qapi.BlockdevDriverFile {
			out.File = f
		} else {
			out.HostDevice = f
		}
		return out, nil
	}
	return nil, nil
}

// BlockStats returns the node's query-blockstats entry with the data
// child's entry nested as parent (node level: no backing).
func BlockStats(lk *blockdev.Locked, n *blockdev.Node) (*qapi.BlockStats, error) {
	spec, err := specificStats(n)
	if err != nil {
		return nil, err
	}
	bs := &qapi.BlockStats{NodeName: optString(n.Name()), Stats: NodeStats(n), DriverSpecific: spec}
	if c := n.DataChild(lk); c != nil {
		if bs.Parent, err = BlockStats(lk, c.Node()); err != nil {
			return nil, err
		}
	}
	return bs, nil
}

// QueryBlockStats is query-blockstats. Without queryNodes QEMU lists named
// BlockBackends, of which qbmond (like qemu-storage-daemon) has none, so
// the list is empty; with it, every node in opening order, oldest first.
func QueryBlockStats(lk *blockdev.Locked, queryNodes bool) ([]qapi.BlockStats, error) {
	out := []qapi.BlockStats{}
	if !queryNodes {
		return out, nil
	}
	for _, n := range lk.Nodes() {
		bs, err := BlockStats(lk, n)
		if err != nil {
			return nil, err
		}
		out = append(out, *bs)
	}
	return out, nil
}
