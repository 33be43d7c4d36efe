package blockdev

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/qbmond/qbmond/internal/qjson"
)

// The node state the query views (package blockqmp) read beyond the
// plain accessors: the node's file name as QEMU derives it, its backing
// node, where its backing file name points.

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

// ResolveBacking makes a backing file name recorded in n's image
// absolute, as QEMU's full-backing-filename: relative names are relative
// to the directory of n's primary child.
func (n *Node) ResolveBacking(name string) string {
	if pc := n.primaryChild(); pc != nil && !strings.HasPrefix(pc.node.Load().filename, "json:") {
		return combinePath(pc.node.Load().filename, name)
	}
	return name
}

// PrimaryChild returns the child holding the node's data or the node it
// filters (the one QEMU's bdrv_primary_child names), or nil.
func (n *Node) PrimaryChild() *Child { return n.primaryChild() }

// DetectZeroes returns the node's detect-zeroes mode ("off", "on" or
// "unmap").
func (n *Node) DetectZeroes() string { return n.detectZeroes }

// NoFlush tells whether cache.no-flush is on.
func (n *Node) NoFlush() bool { return n.noFlush }

// Job returns the id of the job a root edge belongs to, "" for other
// edges.
func (c *Child) Job() string { return c.job }
