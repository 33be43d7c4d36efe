package blockdev

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/qbmond/qbmond/internal/qjson"
)

// refreshFilename works out the node's file name the way QEMU's
// bdrv_refresh_filename does: the driver's own exact name if it has one; a
// format node over a protocol node without strong options of its own takes
// the protocol node's name; anything else becomes "json:" followed by the
// options that recreate the node (driver, strong options, children).
func (n *Node) refreshFilename() {
	if f := n.filtered(); f != nil && n.implicitFilter {
		c := f.node.Load()
		n.fullOpts, n.exactFilename, n.filename = c.fullOpts, c.exactFilename, c.filename
		return
	}
	// Members in the order QEMU adds them, which decides their order
	// in the printed name (see package qjson).
	full := &qjson.Object{}
	full.Set("driver", n.drvName)
	strong := false
	if v, ok := n.drvOpts["filename"]; ok {
		full.Set("filename", v)
	}
	if so, ok := n.drv.(StrongOptioner); ok {
		for _, k := range so.StrongOptions() {
			if v, ok := nestedOption(n.drvOpts, k); ok {
				flattenOption(full, k, v)
				strong = true
			}
		}
	}
	overridden := n.backingOverridden()
	others := 0 // children besides the primary one and a backing node as recorded
	for _, c := range n.children {
		if c.role&RoleCOW != 0 && c.name == "backing" && !overridden {
			continue
		}
		full.Set(c.name, c.node.Load().fullOpts)
		if c.role&RolePrimary == 0 {
			others++
		}
	}
	if overridden && n.backing() == nil {
		full.Set("backing", nil)
	}
	exact := ""
	if fr, ok := n.drv.(FilenameRefresher); ok {
		exact = fr.ExactFilename()
	} else if pc := n.primaryChild(); pc != nil && !strong && !overridden && others == 0 && !n.isFilter() {
		// A format node over a protocol-level node (one QEMU opens with
		// bdrv_file_open) has that node's file name: it could be probed
		// from it. A filter cannot be probed, so it needs its options.
		switch pc.node.Load().drv.(type) {
		case ProtocolDriver, FileOpener:
			exact = pc.node.Load().exactFilename
		}
	}
	n.fullOpts, n.exactFilename = full, exact
	if exact != "" {
		n.filename = exact
		return
	}
	var b strings.Builder
	b.WriteString("json:")
	writeQEMUJSON(&b, full)
	n.filename = b.String()
}

// flattenOption stores option k with value v in full as QEMU keeps a
// node's options, flattened (qdict_flatten): a list or object becomes
// one entry per scalar, "k.0.event", "k.0.state", ...
func flattenOption(full *qjson.Object, k string, v any) {
	switch x := v.(type) {
	case []any:
		for i, e := range x {
			flattenOption(full, fmt.Sprintf("%s.%d", k, i), e)
		}
	case map[string]any:
		// Which of an option's members QEMU added last depends on how
		// the request was parsed and flattened; added in reverse name
		// order, members sharing a bucket print in name order, as QSD
		// prints them (blkdebug's inject-error.0.errno before
		// inject-error.0.event).
		keys := slices.Sorted(maps.Keys(x))
		slices.Reverse(keys)
		for _, sk := range keys {
			flattenOption(full, k+"."+sk, x[sk])
		}
	case Options:
		flattenOption(full, k, map[string]any(x))
	default:
		full.Set(k, v)
	}
}

// BlockDeviceInfo is QEMU's BlockDeviceInfo, one element of
// query-named-block-nodes.
type BlockDeviceInfo struct {
	File             string            `json:"file"`
	NodeName         string            `json:"node-name,omitempty"`
	Ro               bool              `json:"ro"`
	Drv              string            `json:"drv"`
	BackingFile      string            `json:"backing_file,omitempty"`
	BackingFileDepth int64             `json:"backing_file_depth"`
	Encrypted        bool              `json:"encrypted"`
	DetectZeroes     string            `json:"detect_zeroes"`
	Bps              int64             `json:"bps"`
	BpsRd            int64             `json:"bps_rd"`
	BpsWr            int64             `json:"bps_wr"`
	Iops             int64             `json:"iops"`
	IopsRd           int64             `json:"iops_rd"`
	IopsWr           int64             `json:"iops_wr"`
	Image            *ImageInfo        `json:"image"`
	Cache            BlockdevCacheInfo `json:"cache"`
	WriteThreshold   int64             `json:"write_threshold"`
	DirtyBitmaps     []BlockDirtyInfo  `json:"dirty-bitmaps,omitempty"`
}

// BlockDirtyInfo is QEMU's BlockDirtyInfo, one bitmap in the query views.
type BlockDirtyInfo struct {
	Name         string `json:"name,omitempty"` // none for anonymous bitmaps
	Count        int64  `json:"count"`
	Granularity  uint64 `json:"granularity"`
	Recording    bool   `json:"recording"`
	Busy         bool   `json:"busy"`
	Persistent   bool   `json:"persistent"`
	Inconsistent bool   `json:"inconsistent,omitempty"`
}

// BlockdevCacheInfo is QEMU's BlockdevCacheInfo.
type BlockdevCacheInfo struct {
	Writeback bool `json:"writeback"`
	Direct    bool `json:"direct"`
	NoFlush   bool `json:"no-flush"`
}

// ImageInfo is QEMU's ImageInfo as query-named-block-nodes fills it.
type ImageInfo struct {
	Filename              string     `json:"filename"`
	Format                string     `json:"format"`
	DirtyFlag             *bool      `json:"dirty-flag,omitempty"`
	ActualSize            *int64     `json:"actual-size,omitempty"`
	VirtualSize           int64      `json:"virtual-size"`
	ClusterSize           *int64     `json:"cluster-size,omitempty"`
	BackingFilename       string     `json:"backing-filename,omitempty"`
	FullBackingFilename   string     `json:"full-backing-filename,omitempty"`
	BackingFilenameFormat string     `json:"backing-filename-format,omitempty"`
	BackingImage          *ImageInfo `json:"backing-image,omitempty"`
	FormatSpecific        any        `json:"format-specific,omitempty"`
}

// backingOverridden tells whether the node's backing node is not the one
// its image records (QEMU's bdrv_backing_overridden): another node, or
// none where the image names one.
func (n *Node) backingOverridden() bool {
	if b := n.backing(); b != nil {
		return n.autoBackingFile != b.node.Load().filename
	}
	return n.autoBackingFile != ""
}

// BackingNode returns the node's backing node (the COW child's node), or
// nil. Caller holds the graph lock.
func (n *Node) BackingNode() *Node {
	if b := n.backing(); b != nil {
		return b.node.Load()
	}
	return nil
}

// backing returns the node's COW child, if any.
func (n *Node) backing() *Child {
	for _, c := range n.children {
		if c.role&RoleCOW != 0 {
			return c
		}
	}
	return nil
}

// resolveBacking makes a backing file name recorded in n's image absolute:
// relative names are relative to the directory of n's primary child.
func (n *Node) resolveBacking(name string) string {
	if pc := n.primaryChild(); pc != nil && !strings.HasPrefix(pc.node.Load().filename, "json:") {
		return combinePath(pc.node.Load().filename, name)
	}
	return name
}

// allocatedSize is ImageInfo's actual-size: the driver's own answer, else
// its primary child's; ok is false when nobody knows.
func (n *Node) allocatedSize(ctx context.Context) (int64, bool) {
	if as, ok := n.drv.(AllocatedSizer); ok {
		s, err := as.AllocatedSize(ctx)
		return s, err == nil
	}
	if pc := n.primaryChild(); pc != nil {
		return pc.node.Load().allocatedSize(ctx)
	}
	return 0, false
}

// imageInfo builds the node's ImageInfo (without backing-image).
func (n *Node) imageInfo(ctx context.Context) *ImageInfo {
	ii := &ImageInfo{Filename: n.filename, Format: n.drvName, VirtualSize: n.Length()}
	if s, ok := n.allocatedSize(ctx); ok {
		ii.ActualSize = &s
	}
	if di, err := n.drv.Info(ctx); err == nil {
		dirty := di.Dirty
		ii.DirtyFlag = &dirty
		if di.ClusterSize > 0 {
			cs := di.ClusterSize
			ii.ClusterSize = &cs
		}
	}
	if bf, ok := n.drv.(BackingFiler); ok {
		if name, format := bf.BackingFile(); name != "" {
			ii.BackingFilename = name
			ii.FullBackingFilename = n.resolveBacking(name)
			ii.BackingFilenameFormat = format
		}
	} else if b := n.backing(); b != nil {
		ii.BackingFilename = b.node.Load().filename
		ii.FullBackingFilename = b.node.Load().filename
		ii.BackingFilenameFormat = b.node.Load().drvName
	}
	if fi, ok := n.drv.(FormatInfoer); ok {
		if spec, err := fi.FormatSpecific(ctx); err == nil && spec != nil {
			ii.FormatSpecific = spec
		}
	}
	return ii
}

// Info builds the node's BlockDeviceInfo. Unless flat, the image nests the
// backing chain's images (backing-image).
func (n *Node) Info(ctx context.Context, _ *Locked, flat bool) BlockDeviceInfo {
	info := BlockDeviceInfo{
		File:         n.filename,
		NodeName:     n.name,
		Ro:           n.ReadOnly(),
		Drv:          n.drvName,
		DetectZeroes: n.detectZeroes,
		Image:        n.imageInfo(ctx),
		Cache:        BlockdevCacheInfo{Writeback: true, Direct: n.cacheDirect, NoFlush: n.noFlush},
	}
	if b := n.backing(); b != nil {
		info.BackingFile = b.node.Load().filename
	}
	for _, b := range n.DirtyBitmaps() {
		info.DirtyBitmaps = append(info.DirtyBitmaps, BlockDirtyInfo{
			Name: b.name, Recording: b.Recording(), Persistent: b.persistent, Busy: b.Busy(),
			Granularity: b.bits.Granularity(), Count: b.bits.Count(), Inconsistent: b.inconsistent,
		})
	}
	// As in QEMU, the chain is walked (and backing_file_depth counted)
	// only for the full view.
	img := info.Image
	for b := n.filterOrCOW(); b != nil && !flat; b = b.node.Load().filterOrCOW() {
		info.BackingFileDepth++
		img.BackingImage = b.node.Load().imageInfo(ctx)
		img = img.BackingImage
	}
	return info
}

// QueryNamedBlockNodes is query-named-block-nodes: every node, newest
// first, as QEMU lists them.
func (lk *Locked) QueryNamedBlockNodes(ctx context.Context, flat bool) []BlockDeviceInfo {
	g := lk.g
	out := make([]BlockDeviceInfo, 0, g.count)
	for n := g.tail; n != nil; n = n.prev {
		out = append(out, n.Info(ctx, lk, flat))
	}
	return out
}

// XDbgBlockGraph is x-debug-query-block-graph's reply.
type XDbgBlockGraph struct {
	Nodes []XDbgBlockGraphNode `json:"nodes"`
	Edges []XDbgBlockGraphEdge `json:"edges"`
}

// XDbgBlockGraphNode is one vertex of XDbgBlockGraph.
type XDbgBlockGraphNode struct {
	ID   uint64 `json:"id"`
	Type string `json:"type"`
	Name string `json:"name"`
}

// XDbgBlockGraphEdge is one edge of XDbgBlockGraph.
type XDbgBlockGraphEdge struct {
	Parent     uint64   `json:"parent"`
	Child      uint64   `json:"child"`
	Name       string   `json:"name"`
	Perm       []string `json:"perm"`
	SharedPerm []string `json:"shared-perm"`
}

// permList names permissions as x-debug-query-block-graph lists them
// (QEMU builds the list back to front: resize first).
func permList(p Perm) []string {
	names := p.Names()
	slices.Reverse(names)
	return names
}

// QueryBlockGraph is x-debug-query-block-graph. Node ids are numbered in
// the order QEMU meets them (walking nodes oldest first, each node then its
// children), and both lists come newest first as QEMU prints them.
func (lk *Locked) QueryBlockGraph() XDbgBlockGraph {
	g := lk.g
	ids := make(map[*Node]uint64, g.count)
	id := func(n *Node) uint64 {
		if v, ok := ids[n]; ok {
			return v
		}
		v := uint64(len(ids) + 1)
		ids[n] = v
		return v
	}
	var out XDbgBlockGraph
	out.Nodes = make([]XDbgBlockGraphNode, 0, g.count)
	out.Edges = []XDbgBlockGraphEdge{}
	next := uint64(0)
	jobs := map[string]uint64{}
	for n := g.head; n != nil; n = n.next {
		out.Nodes = append(out.Nodes, XDbgBlockGraphNode{ID: id(n), Type: "block-driver", Name: n.name})
		for _, c := range n.children {
			out.Edges = append(out.Edges, XDbgBlockGraphEdge{
				Parent: id(n), Child: id(c.node.Load()), Name: c.name,
				Perm: permList(c.Perm()), SharedPerm: permList(c.Shared()),
			})
		}
		// Root users (exports, jobs) appear as QEMU shows its
		// BlockBackends: an unnamed "block-backend" node with a "root"
		// edge. Their ids come after every node's.
		for _, c := range n.parents {
			if c.parent != nil {
				continue
			}
			var rid uint64
			if c.job != "" {
				// A job is one vertex, whatever number of nodes it uses.
				if rid = jobs[c.job]; rid == 0 {
					next++
					rid = uint64(1<<32) + next
					jobs[c.job] = rid
					out.Nodes = append(out.Nodes, XDbgBlockGraphNode{ID: rid, Type: "block-job", Name: c.job})
				}
			} else {
				next++
				rid = uint64(1<<32) + next
				out.Nodes = append(out.Nodes, XDbgBlockGraphNode{ID: rid, Type: "block-backend", Name: ""})
			}
			out.Edges = append(out.Edges, XDbgBlockGraphEdge{
				Parent: rid, Child: id(n), Name: c.name,
				Perm: permList(c.Perm()), SharedPerm: permList(c.Shared()),
			})
		}
	}
	slices.Reverse(out.Nodes)
	slices.Reverse(out.Edges)
	return out
}
