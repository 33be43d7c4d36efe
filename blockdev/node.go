package blockdev

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"

	"github.com/qbmond/qbmond/blockdev/dirty"
	"github.com/qbmond/qbmond/blockdev/internal/iopath"
	"github.com/qbmond/qbmond/internal/qjson"
)

// Node is one block node of the graph: a driver instance with its options,
// its children (the nodes it uses) and its parents (the users of this node).
//
// Structural fields (children, parents, names, ownership) belong to the
// graph lock. The fields the I/O path reads (length, read-only, child
// permissions) are atomics, so I/O never takes the graph lock.
type Node struct {
	g        *Graph
	name     string
	implicit bool // auto-named: created for an inline child definition
	// implicitFilter: a filter a job inserted without a name (QEMU's
	// implicit nodes); it shows its child's file name.
	implicitFilter bool
	drvName        string
	drv            Driver
	opts           Options // the options as given, generic ones included
	drvOpts        Options // the options handed to the driver

	readOnly     atomic.Bool
	autoReadOnly bool
	cacheDirect  bool
	noFlush      bool
	// forceShare (force-share=on, read-only nodes only): the node's
	// parents share every permission on it, so that it can be opened
	// while others write to the same image.
	forceShare   bool
	detectZeroes string
	discard      string
	writeFlags   ReqFlags // flags the driver honours itself
	// dbg is the driver when it listens to debug events (blkdebug).
	dbg DebugEventer
	// writeGen counts the modifying requests and flushedGen is its value
	// at the last successful flush: flush_to_disk is raised only when
	// something was written since (QEMU's write_gen and flushed_gen).
	writeGen, flushedGen atomic.Uint64

	monitor  bool     // a blockdev-add reference holds the node
	children []*Child // in attach order
	parents  []*Child // in attach order; QEMU reports the newest first
	opened   bool     // the driver's Open succeeded
	listed   bool     // in the graph's node list (fully open)

	prev, next *Node // the graph's node list, oldest first

	length atomic.Int64 // rounded up to 512 bytes, as QEMU 7.2 reports it

	exactFilename string
	filename      string
	fullOpts      *qjson.Object
	// autoBackingFile is what the image's header calls its backing file
	// (the file name of the backing node when that was opened from the
	// header); a backing node that differs is an override, which makes
	// the file name a json: one (QEMU's auto_backing_file).
	autoBackingFile string

	// io is held shared by every request in flight and exclusively by
	// Close, so a node is never closed under a request.
	io     sync.RWMutex
	closed bool // under io

	// align is the request alignment, fixed when the driver has opened.
	align int64
	// maxTransfer is the largest request the node passes to its driver
	// (0: no limit); see refreshLimits.
	maxTransfer atomic.Int64
	// trk tracks the modifying requests in flight (nodes with align > 1,
	// and any node while copy-on-read is enabled on it).
	trk iopath.Tracker
	// corUsers counts the users that copy on read into the node
	// (EnableCopyOnRead): while > 0 every modifying request is tracked.
	corUsers atomic.Int32
	// observers see modifying requests enter and leave (observe.go).
	observers  atomic.Pointer[[]*observerEntry]
	observerMu sync.Mutex // serialises changes of observers
	// stats are the node's I/O statistics (query-blockstats).
	stats iopath.Counters
	// bitmaps are the node's dirty bitmaps.
	bitmaps dirty.Set[*DirtyBitmap]

	// inheritsFrom is the parent the node was opened inline for; it
	// takes its read-only setting from it on reopen (QEMU's
	// inherits_from). Graph lock.
	inheritsFrom *Node
	// wasWritable marks, during a reopen, a node going from read-write
	// to read-only (for QEMU's permission error).
	wasWritable bool
	// drains counts the Drain calls holding the node (io held
	// exclusively while > 0). Graph lock.
	drains int
	// blockers are the operations that block the node, oldest first.
	// Graph lock.
	blockers []*blocker
	// neverFreeze: links to this node may not be frozen (a job's filter,
	// which must always be removable: QEMU's never_freeze). Graph lock.
	neverFreeze bool
	// ownFrozen are the links the node froze for itself while it is open
	// (a copy-on-read filter's chain down to its bottom). Graph lock.
	ownFrozen []*Child
}

// Name returns the node-name (auto-generated names start with '#').
func (n *Node) Name() string { return n.name }

// DriverName returns the QMP name of the node's driver.
func (n *Node) DriverName() string { return n.drvName }

// Driver returns the node's driver instance.
func (n *Node) Driver() Driver { return n.drv }

// Options returns the options the node was opened with. Do not modify.
func (n *Node) Options() Options { return n.opts }

// ReadOnly tells whether the node is read-only.
func (n *Node) ReadOnly() bool { return n.readOnly.Load() }

// CacheDirect tells whether cache.direct is on.
func (n *Node) CacheDirect() bool { return n.cacheDirect }

// DiscardUnmap tells whether the node passes discards down (discard=unmap,
// QEMU's BDRV_O_UNMAP). Read it with the graph lock held.
func (n *Node) DiscardUnmap() bool { return n.discard == "unmap" }

// Length returns the node's length in bytes. Like QEMU 7.2 it is the
// driver's length rounded up to a multiple of 512.
func (n *Node) Length() int64 { return n.length.Load() }

// RequestAlignment returns the alignment the node's driver wants requests
// in (1 when it has no preference).
func (n *Node) RequestAlignment() int64 {
	if n.align > 0 {
		return n.align
	}
	return driverAlignment(n.drv)
}

// MaxTransfer returns the largest request the node hands its driver in
// one piece, in bytes (0: no limit): the driver's own limit
// (TransferLimiter), else the smallest of those of the children that hold
// its data, its filtered node or its backing node, as QEMU's
// bdrv_refresh_limits works out max_transfer.
func (n *Node) MaxTransfer() int64 { return n.maxTransfer.Load() }

// refreshLimits works out the node's transfer limit again: when its driver
// has opened or reopened, and when its children change. Children are
// opened first, so their limits are known. Caller holds the graph lock.
func (n *Node) refreshLimits() {
	var m int64
	if l, ok := n.drv.(TransferLimiter); ok {
		m = l.MaxTransfer()
	}
	if m <= 0 {
		m = 0
		for _, c := range n.children {
			if c.role&(RoleData|RoleFiltered|RoleCOW) == 0 {
				continue
			}
			if v := c.node.Load().maxTransfer.Load(); v > 0 && (m == 0 || v < m) {
				m = v
			}
		}
	}
	n.maxTransfer.Store(m)
}

func driverAlignment(d Driver) int64 {
	if a, ok := d.(Aligner); ok {
		if v := a.RequestAlignment(); v > 0 {
			return v
		}
	}
	return 1
}

// Filename returns the node's file name as query views show it: a plain
// name when one describes the node, else a "json:{...}" pseudo file name.
func (n *Node) Filename() string { return n.filename }

// MonitorOwned tells whether a blockdev-add reference holds the node.
func (n *Node) MonitorOwned(_ *Locked) bool { return n.monitor }

// Children returns the node's children in attach order. Caller holds the
// graph lock.
func (n *Node) Children() []*Child { return append([]*Child(nil), n.children...) }

// Parents returns the edges that point at the node, newest first (QEMU's
// order). Caller holds the graph lock.
func (n *Node) Parents() []*Child {
	ps := make([]*Child, len(n.parents))
	for i, c := range n.parents {
		ps[len(ps)-1-i] = c
	}
	return ps
}

// Child returns the child attached under name, or nil. Caller holds the
// graph lock.
func (n *Node) Child(name string) *Child {
	for _, c := range n.children {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (n *Node) primaryChild() *Child {
	for _, c := range n.children {
		if c.role&RolePrimary != 0 {
			return c
		}
	}
	return nil
}

func roundUp512(x int64) int64 { return (x + 511) &^ 511 }

// refreshLength asks the driver for its length.
func (n *Node) refreshLength(ctx context.Context) error {
	l, err := n.drv.Length(ctx)
	if err != nil {
		return err
	}
	if l < 0 || l > MaxLength {
		// QEMU refuses a node longer than BDRV_MAX_LENGTH at open (and
		// after a resize), whatever its driver.
		return errors.New("Could not refresh total sector count: File too large")
	}
	n.length.Store(roundUp512(l))
	return nil
}

// MaxLength is the largest length a node may have: QEMU's
// BDRV_MAX_LENGTH, INT64_MAX rounded down to a multiple of 1 GiB (its
// largest request alignment), so that rounding a length up to any
// alignment cannot overflow.
const MaxLength = math.MaxInt64 &^ (1<<30 - 1)

// Child is an edge of the graph: a parent's use of a node under a name
// ("file", "backing", or a root user's name), with a role and the
// permissions the parent holds (Perm) and lets other users hold (Shared).
// All I/O a parent issues to a child goes through the Child, which is how
// the node checks the caller's permissions.
type Child struct {
	name   string
	role   Role
	parent *Node  // nil for a root (export, job, test)
	user   string // how a root parent is named in errors
	job    string // the id of the job a root parent is, if one
	// drainer is told of drained sections (a job's edge). Graph lock.
	drainer DrainNotifier
	node    atomic.Pointer[Node] // changes only under the graph lock, drained
	// frozen: the link may not change (a job holds the chain it is on).
	// Graph lock.
	frozen bool

	perm   atomic.Uint64
	shared atomic.Uint64
}

// Name returns the child's name ("file", "backing", ...).
func (c *Child) Name() string { return c.name }

// Role returns the child's role.
func (c *Child) Role() Role { return c.role }

// Node returns the node the child points at.
func (c *Child) Node() *Node { return c.node.Load() }

// Parent returns the parent node, nil for a root child.
func (c *Child) Parent() *Node { return c.parent }

// Perm returns the permissions the parent holds on the node.
func (c *Child) Perm() Perm { return Perm(c.perm.Load()) }

// Shared returns the permissions the parent lets other users hold.
func (c *Child) Shared() Perm { return Perm(c.shared.Load()) }

// Length returns the child node's length.
func (c *Child) Length() int64 { return c.node.Load().Length() }

// Read reads from the child node through its entry point.
func (c *Child) Read(ctx context.Context, off int64, p []byte) error {
	return c.node.Load().Read(ctx, c, off, p)
}

// Write writes to the child node through its entry point.
func (c *Child) Write(ctx context.Context, off int64, p []byte, flags ReqFlags) error {
	return c.node.Load().Write(ctx, c, off, p, flags)
}

// WriteZeroes zeroes a range of the child node.
func (c *Child) WriteZeroes(ctx context.Context, off, n int64, flags ReqFlags) error {
	return c.node.Load().WriteZeroes(ctx, c, off, n, flags)
}

// Discard discards a range of the child node.
func (c *Child) Discard(ctx context.Context, off, n int64) error {
	return c.node.Load().Discard(ctx, c, off, n)
}

// Flush flushes the child node.
func (c *Child) Flush(ctx context.Context) error { return c.node.Load().Flush(ctx, c) }

// FileRange maps a range of the child node to a file range, for a
// FileMapper parent passing the mapping up. The parent's own request in
// flight keeps the child, and so the descriptor, open.
func (c *Child) FileRange(off, n int64) (fd int, fileOff int64, ok bool) {
	if off < 0 || n < 0 || off > c.node.Load().Length()-n {
		return 0, 0, false
	}
	return c.node.Load().fileRange(off, n)
}

// BlockStatus queries the child node.
func (c *Child) BlockStatus(ctx context.Context, off, n int64) (BlockStatus, error) {
	return c.node.Load().BlockStatus(ctx, c, off, n)
}

// Truncate resizes the child node.
func (c *Child) Truncate(ctx context.Context, size int64, exact bool) error {
	return c.node.Load().Truncate(ctx, c, size, exact)
}

// ParentDesc names the parent of c as QEMU's errors do: "node 'x'" for a
// node, the user's description for a root user.
func (c *Child) ParentDesc() string { return c.parentDesc() }

// parentDesc names the parent of c in permission errors, as QEMU does.
func (c *Child) parentDesc() string {
	if c.parent != nil {
		return "node '" + c.parent.name + "'"
	}
	return c.user
}
