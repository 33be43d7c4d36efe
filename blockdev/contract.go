package blockdev

import "context"

// This file is the driver contract: the Driver interface every block
// driver implements, the Factory it registers, and every optional ability
// the block layer discovers by type assertion, each with who calls it and
// when. A driver registers once (Register) and gains an ability by having
// the methods: probing and creation on its Factory, the rest on its
// instances.

// Driver is one block driver instance: the code behind one node. It is
// modelled on QEMU's BlockDriver, in bytes rather than sectors.
//
// A driver package registers a Factory under its QMP name, once,
// database/sql style, and package blockdev never imports it:
//
//	func init() { blockdev.Register("qcow2", format{}) }
//
//	type format struct{}                 // the Factory
//	func (format) New() blockdev.Driver  { return new(Driver) }
//	func (format) Probe(head []byte) int { ... } // a Prober
//	func (format) Create(ctx, cc) error  { ... } // a Creator
//
// (RegisterDriver registers a plain function, for a driver that is neither
// probed nor created.)
//
// The lifecycle of a node, as the graph drives it:
//
//	// blockdev-add {"driver": "raw", "node-name": "disk", "offset": 512,
//	//               "file": {"driver": "file", "filename": "/img"}}
//	d := factory.New()               // a fresh, unopened instance
//	err := d.Open(ctx, oc)           // oc.Options() holds offset; the driver
//	                                 // calls oc.OpenChild(ctx, "file", RoleData|RolePrimary),
//	                                 // which opens (or looks up) the child node,
//	                                 // attaches it and checks permissions
//	n, _ := d.Length(ctx)            // cached by the node; refreshed after Truncate
//
//	// I/O never calls the driver directly: it goes through a Child (or the
//	// node's entry points), which checks bounds, read-only and the caller's
//	// permissions, then calls:
//	d.Read(ctx, off, buf)
//	d.Write(ctx, off, buf, ReqFUA)   // only flags the node let through
//	d.WriteZeroes(ctx, off, n, ReqMayUnmap)
//	d.Discard(ctx, off, n)
//	d.BlockStatus(ctx, off, n)       // status of a prefix of [off, off+n)
//	d.Flush(ctx)
//
//	// blockdev-del "disk" (or the last parent going away):
//	d.Flush(ctx); d.Close()          // children are detached by the graph afterwards
//
// A driver reaches its children only through the *Child values OpenChild
// returned; a child's I/O passes the child node's entry points in turn.
// Open may fail at any point: the graph then detaches every child the driver
// attached and closes every node the failed tree opened, so a driver needs
// no cleanup of its own for children (it must release its own resources,
// such as file descriptors, before returning the error).
//
// Request methods are called concurrently, with each other and with graph
// commands; the graph guarantees that the request lies inside the node and
// that Close is not called while requests are in flight. Open, Close and
// the optional reopen/truncate/backing abilities run under the graph lock.
//
// Optional abilities are separate small interfaces, all declared in this
// file and found by type assertion: on the registered Factory, Prober and
// Creator; on the instance, the rest:
//
//   - requests: WriteFlagger, Aligner, TransferLimiter, CompressedWriter,
//     FileMapper, FileWriter, DebugEventer, Ejecter;
//   - size: Truncater, AllocatedSizer;
//   - reopen: Reopener, OptionReopener, ReopenPoster;
//   - the graph's shape and permissions: Filter, ChildPermer, PermLocker,
//     BackingUpdater, BackingChanger;
//   - names and query views: ProtocolDriver, FileOpener, FilenameRefresher,
//     StrongOptioner, BackingFiler, FormatInfoer, SpecificStatser;
//   - persistent dirty bitmaps: BitmapStore, BitmapSaver, BitmapRecorder.
type Driver interface {
	// Open opens the node from its options (oc.Options(): the validated
	// blockdev-add arguments for this driver, without the generic ones
	// such as node-name, read-only or cache). Errors carry QEMU's text.
	Open(ctx context.Context, oc *OpenContext) error
	// Close releases the driver's resources. The node is flushed first.
	Close() error

	// Read fills p with the data at off.
	Read(ctx context.Context, off int64, p []byte) error
	// Write writes p at off. flags holds only flags the driver declared
	// with WriteFlagger (ReqFUA, for instance); the node emulates the rest.
	Write(ctx context.Context, off int64, p []byte, flags ReqFlags) error
	// WriteZeroes makes [off, off+n) read as zeroes. With ReqMayUnmap it
	// may deallocate; with ReqNoFallback it must fail with ErrNotSupported
	// rather than write explicit zero buffers.
	WriteZeroes(ctx context.Context, off, n int64, flags ReqFlags) error
	// Discard tells the driver [off, off+n) is no longer needed. It is
	// advisory: a driver that cannot discard returns nil.
	Discard(ctx context.Context, off, n int64) error
	// Flush makes completed writes stable.
	Flush(ctx context.Context) error
	// BlockStatus reports the status of the longest prefix of
	// [off, off+n) that shares one status (Length > 0).
	BlockStatus(ctx context.Context, off, n int64) (BlockStatus, error)
	// Length returns the driver's length in bytes.
	Length(ctx context.Context) (int64, error)
	// Info returns what QEMU's bdrv_get_info reports; ErrNotSupported when
	// the driver has no such information (query views then omit
	// dirty-flag and cluster-size).
	Info(ctx context.Context) (DriverInfo, error)
}

// Registration.

// Factory is what a driver package registers (see Register): it makes the
// driver's instances. The graph calls New for every node it opens with the
// driver (blockdev-add, an inline child, a backing file opened by name,
// blockdev-create's inline target), then Open on the fresh instance, which
// serves that node alone. A Factory may also be a Prober and a Creator.
type Factory interface {
	New() Driver
}

// FactoryFunc is a Factory made of a plain function.
type FactoryFunc func() Driver

// New calls f.
func (f FactoryFunc) New() Driver { return f() }

// Prober is a Factory whose format can be recognised by content. When an
// image file must be opened without a format (a backing file its overlay's
// header names without one, drive-backup's existing target given without
// one), the graph reads the file's first bytes (up to 512; fewer for a
// short file) and calls Probe on every registered Prober:
// it returns 0 for no, 100 for a certain match by magic number. The best
// score above 1 wins; raw matches anything, with score 1.
type Prober interface {
	Probe(head []byte) int
}

// Creator is a Factory whose images blockdev-create can create. The create
// job calls Create without the graph lock; cc.Options() holds the driver's
// variant of BlockdevCreateOptions (without "driver"), already validated
// by the schema. Create calls Background once the target is open and
// before its first lengthy I/O. Errors carry QEMU's text.
type Creator interface {
	Create(ctx context.Context, cc *CreateContext) error
}

// Requests.

// WriteFlagger declares the request flags a driver honours itself. The
// graph asks once, when it creates the node, before Open; the node's write
// entry points then pass the driver only those flags and emulate ReqFUA
// with a flush for drivers that do not declare it.
type WriteFlagger interface {
	SupportedWriteFlags() ReqFlags
}

// Aligner is a driver with a request alignment (the logical block size
// for O_DIRECT files). The graph asks after Open and after each reopen
// commit; Node.RequestAlignment reports it, and the node's
// entry points honour it: the driver's Read, Write and WriteZeroes only
// get offsets and lengths that are multiples of it (reads are widened
// through bounce blocks, partial blocks of writes are read-modify-written
// under serialising tracked requests). Buffers are not aligned in memory,
// and Discard is passed on unwidened.
type Aligner interface {
	RequestAlignment() int64
}

// TransferLimiter is a driver with a largest request it takes in one
// piece (blkdebug's max-transfer); MaxTransfer returns 0 for none. The
// graph asks when the driver has opened or reopened and when the node's
// children change. The
// node's entry points split larger reads and writes into pieces of at most
// that size (rounded down to the request alignment) as QEMU does, and the
// parents of the node inherit the limit (see Node.MaxTransfer).
type TransferLimiter interface {
	MaxTransfer() int64
}

// CompressedWriter is a format driver that writes compressed clusters
// (qcow2) when a write carries ReqCompressed. Node.SupportsCompressedWrites
// looks for it under the node's filters, when a backup job with compress
// starts; the job's writes then carry ReqCompressed. WritesCompressed is
// never called.
type CompressedWriter interface {
	WritesCompressed()
}

// FileMapper is a driver whose bytes are, unchanged, the bytes of a range
// of an open file (file itself; raw over a file, shifted by its offset).
// An export can then send them with sendfile instead of copying them
// through a buffer, and a copy can offload them (see Node.ReadFile, which
// calls FileRange per request, and CopyRange, whose source it maps).
// FileRange returns ok=false when the
// range cannot be mapped (O_DIRECT, a format with its own layout).
type FileMapper interface {
	FileRange(off, n int64) (fd int, fileOff int64, ok bool)
}

// FileWriter is a driver that can write n bytes at off taken from the
// open file fd at fileOff, without them passing through the process
// where its storage allows (copy_file_range for files; a format maps the
// range and passes it on). CopyRange (the copies of commit, mirror and
// backup's block-copy) calls it on the destination node once the source range is
// mapped to a file (FileMapper). It returns ErrNotSupported, having written
// nothing, when it cannot (the caller writes a buffer instead); a driver
// that finds out only midway finishes the job itself, with a buffer.
type FileWriter interface {
	WriteFromFile(ctx context.Context, off, n int64, fd int, fileOff int64) error
}

// DebugEventer is a driver that reacts to QEMU's block debug events
// (blkdebug: "read_aio", "write_aio", "flush_to_disk", ...), which a parent
// fires on its child with Child.DebugEvent as QEMU's BLKDBG_EVENT does,
// at the points of its own I/O QEMU fires them.
type DebugEventer interface {
	DebugEvent(event string)
}

// Ejecter is a driver that can stop serving its node for good: QEMU takes
// the driver away from a node whose format driver found fatal corruption
// (qcow2 marks the image corrupt), after which the node's requests find
// no medium and the node cannot be described. The node's request entry
// points ask before each request, and query-named-block-nodes before it
// describes the node.
type Ejecter interface {
	Ejected() bool
}

// Size.

// Truncater is a driver that can change its length. Node.Truncate (and
// Child.Truncate) calls it: a commit or mirror growing its base, a create
// function sizing its new image; the node then refreshes its cached
// length.
type Truncater interface {
	// Truncate sets the length. exact requires exactly size (otherwise a
	// driver may round up).
	Truncate(ctx context.Context, size int64, exact bool) error
}

// AllocatedSizer is a driver that knows how many bytes its storage uses
// (ImageInfo's actual-size). The query views (query-named-block-nodes,
// query-block) ask when they describe the node. Without it the graph asks
// the primary child.
type AllocatedSizer interface {
	AllocatedSize(ctx context.Context) (int64, error)
}

// Reopen.

// Reopener is a driver that can change its options on an open node
// (blockdev-reopen, and Graph.SetReadOnly, with which jobs make a node
// read-write and back). The
// graph calls ReopenPrepare on every node of a queue, then ReopenCommit on
// all of them, or ReopenAbort on those prepared if any prepare failed.
type Reopener interface {
	ReopenPrepare(ctx context.Context, rs *ReopenState) error
	ReopenCommit(rs *ReopenState)
	ReopenAbort(rs *ReopenState)
}

// ReopenPoster is a Reopener told once a reopen has been committed, the
// new permissions applied and the nodes' drains ended (QEMU's
// bdrv_reopen_commit_post; here after the drains, so that the driver's
// own requests to its children, which a drain would hold, can go). The
// graph lock is still held. The reopen has happened whatever it returns:
// an error is logged, as QEMU reports it.
type ReopenPoster interface {
	Reopener
	ReopenCommitPost(ctx context.Context, rs *ReopenState) error
}

// OptionReopener is a Reopener whose driver options may change on
// reopen. ReopenOptions lists those its ReopenPrepare takes from
// ReopenState.Options (they may have new values), and among them those
// that may also be left out, going back to their defaults (QEMU's
// mutable_opts). Every other option must be given again unchanged. A name
// covers its nested members ("overlap-check" covers
// "overlap-check.template"). blockdev-reopen asks while it checks the
// new options, before any ReopenPrepare.
type OptionReopener interface {
	Reopener
	ReopenOptions() (changeable, resettable []string)
}

// The graph's shape and permissions.

// Filter is a driver whose node is a filter. Its filtered child is the
// child attached with RoleFiltered. The graph looks for it whenever it
// walks a chain (backing chains, file names, permissions, the query
// views).
type Filter interface {
	// IsFilter marks the driver; it is never called.
	IsFilter()
}

// ChildPermer is a driver that decides its children's permissions itself
// (QEMU's bdrv_child_perm). Without it the graph uses DefaultChildPerm.
// perm and shared are the cumulative permissions of the node's own users.
// The graph calls it, under the graph lock, whenever it works out the
// permissions of the node's children again: on attaching or detaching an
// edge, on reopen, on a change of the node's users.
type ChildPermer interface {
	ChildPerm(c *Child, role Role, perm, shared Perm) (Perm, Perm)
}

// PermLocker is a driver that holds its node's permissions outside the
// process too, as the file driver does with QEMU-compatible byte-range
// locks, so that other processes see them. Whenever the permissions its
// users hold (perm) and share (shared) change, the graph calls CheckPerm
// with the new ones, possibly several times in one change, and then either
// SetPerm with the last values or AbortPerm, which restores what the last
// SetPerm established. CheckPerm fails, with QEMU's message, when another
// process holds what the node needs or needs what it would stop sharing;
// a failed CheckPerm leaves the driver as it was (AbortPerm follows only
// when an earlier CheckPerm of the same change succeeded). All three run
// under the graph lock.
type PermLocker interface {
	CheckPerm(perm, shared Perm) error
	SetPerm(perm, shared Perm)
	AbortPerm()
}

// BackingUpdater is a format driver told when the graph changes its
// backing link (SetBacking, SwitchBacking, ReplaceNode): c is the
// "backing" edge now (the same edge when only its node changed), nil when
// the node has no backing node any more. It is called under the graph
// lock with the node drained. Without it a node can have its backing node
// swapped, but not added or removed.
type BackingUpdater interface {
	SetBackingChild(c *Child)
}

// BackingChanger is a format driver that records a backing file name in its
// image header. The graph calls it, under the graph lock, when a chain
// operation rewrites the header: change-backing-file, a commit dropping
// the intermediate nodes, a stream completing.
type BackingChanger interface {
	ChangeBackingFile(ctx context.Context, filename, format string) error
}

// Names and query views.

// ProtocolDriver marks a protocol driver (file, null-co): one that talks to
// storage rather than to a child. A format node over a protocol node
// without strong options takes the protocol node's file name; block status
// of a protocol node is always allocated; a backing file reference to a
// protocol node records no format. Protocol is never called.
type ProtocolDriver interface {
	Protocol()
}

// FileOpener marks a driver QEMU opens at the protocol level although it
// has a child (blkdebug): a format node over it takes its file name when
// the graph works out the format node's file name. FileOpen is never
// called.
type FileOpener interface {
	FileOpen()
}

// FilenameRefresher is a driver that knows its own exact file name (file
// names its file, null-co says "null-co://"). It returns "" when the
// options cannot be expressed as a plain file name, in which case the graph
// builds a "json:{...}" pseudo file name. The graph asks whenever it works
// out the node's file name: after Open, and after the node or a node
// below it changed (reopen, chain operations, filters coming and going).
type FilenameRefresher interface {
	ExactFilename() string
}

// StrongOptioner lists the driver options that change what the node
// presents and so belong in its json: pseudo file name (raw: offset, size).
// A member of an object option may be named on its own ("server.port"),
// where the order QEMU adds members in matters to the name's text.
// The graph asks whenever it works out the node's file name (see
// FilenameRefresher).
type StrongOptioner interface {
	StrongOptions() []string
}

// BackingFiler is a format driver whose image records a backing file: the
// name as the header has it (relative names are relative to the image's
// own file) and the format ("" when not recorded). Both are "" when the
// image names none. Query views report them as backing-filename and
// backing-filename-format when they describe the node.
type BackingFiler interface {
	BackingFile() (filename, format string)
}

// FormatInfoer is a driver with format-specific information for the
// query views (ImageInfo's format-specific), asked when they describe the
// node. The value is a *qapi.ImageInfoSpecific (blockdev does not name
// package qapi; blockqmp fails the query on any other type).
type FormatInfoer interface {
	FormatSpecific(ctx context.Context) (any, error)
}

// SpecificStatser is a driver with statistics of its own for
// query-blockstats' driver-specific member (QEMU's BlockStatsSpecific: an
// object with "driver" and the driver's members), asked by
// query-blockstats for each node it reports. Without it, file and
// host_device nodes report the discards the node passed to the driver, as
// QEMU's file-posix does, and other drivers report nothing. The value is
// nil or a *qapi.BlockStatsSpecific (blockqmp fails the query on any
// other type).
type SpecificStatser interface {
	SpecificStats() any
}

// Persistent dirty bitmaps.

// BitmapStore is a format driver that keeps persistent dirty bitmaps (qbm;
// qcow2 would). The graph calls it under the graph lock: CanStoreBitmap
// and StoreBitmap from block-dirty-bitmap-add with persistent, RemoveBitmap
// from block-dirty-bitmap-remove (and a transaction's undo of an add).
type BitmapStore interface {
	// CanStoreBitmap fails, with the reason, when the driver cannot add a
	// persistent bitmap of that name and granularity.
	CanStoreBitmap(name string, granularity uint64) error
	// StoreBitmap starts keeping b; RemoveBitmap forgets it and deletes
	// what was stored.
	StoreBitmap(b *DirtyBitmap) error
	RemoveBitmap(name string) error
}

// BitmapSaver is a BitmapStore told when a persistent bitmap's bits
// changed other than by writes (clear, merge, a transaction's undo), so
// that a store which keeps bits durable as they change (qbm's
// bitmap-sync=write) saves them before the command returns.
type BitmapSaver interface {
	SaveBitmap(name string) error
}

// BitmapRecorder is a BitmapStore that also stores whether a persistent
// bitmap records writes (qbm's "enabled"). block-dirty-bitmap-enable and
// -disable (and their transaction actions) call SetBitmapRecording before
// the state changes; an error leaves the bitmap as it was.
type BitmapRecorder interface {
	SetBitmapRecording(name string, on bool) error
}
