package blockdev

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"syscall"
)

// Driver is one block driver instance: the code behind one node. It is
// modelled on QEMU's BlockDriver, in bytes rather than sectors.
//
// A driver package registers a factory under its QMP name, database/sql
// style, and package blockdev never imports it:
//
//	func init() { blockdev.RegisterDriver("raw", func() blockdev.Driver { return new(Raw) }) }
//
// The lifecycle of a node, as the graph drives it:
//
//	// blockdev-add {"driver": "raw", "node-name": "disk", "offset": 512,
//	//               "file": {"driver": "file", "filename": "/img"}}
//	d := factory()                   // a fresh, unopened instance
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
// Optional abilities are separate small interfaces found by type assertion:
// Truncater, Reopener, BackingChanger, BackingUpdater, ChildPermer, FilenameRefresher,
// FormatInfoer, AllocatedSizer, StrongOptioner, ProtocolDriver,
// WriteFlagger, Aligner, FileMapper, PermLocker, BackingFiler,
// DebugEventer.
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

// DriverInfo is what a driver tells about its image for the query views.
type DriverInfo struct {
	// ClusterSize in bytes; 0 when the format has none.
	ClusterSize int64
	// Dirty reports whether the image was not closed cleanly.
	Dirty bool
}

// ReqFlags modify a write request, like QEMU's BDRV_REQ_*.
type ReqFlags uint32

const (
	// ReqFUA: the data must be stable when the request completes.
	ReqFUA ReqFlags = 1 << iota
	// ReqMayUnmap: write-zeroes may deallocate the range.
	ReqMayUnmap
	// ReqNoFallback: write-zeroes must not fall back to writing buffers.
	ReqNoFallback
	// ReqWriteUnchanged: the write does not change the content; it needs
	// only PermWriteUnchanged.
	ReqWriteUnchanged
	// ReqCompressed: write the data compressed (QEMU's
	// BDRV_REQ_WRITE_COMPRESSED), for a CompressedWriter only: whole
	// clusters, or the image's last one, not allocated before.
	ReqCompressed
)

// CompressedWriter is a format driver that writes compressed clusters
// (qcow2) when a write carries ReqCompressed.
type CompressedWriter interface {
	WritesCompressed()
}

// SupportsCompressedWrites tells whether writes to n can be compressed:
// the node under n's filters is a CompressedWriter (QEMU's
// bdrv_supports_compressed_writes).
func (n *Node) SupportsCompressedWrites() bool {
	_, ok := n.SkipFilters().drv.(CompressedWriter)
	return ok
}

// StatusFlags describe a range in BlockStatus, like QEMU's BDRV_BLOCK_*.
type StatusFlags uint32

const (
	// StatusData: the range holds data (reads come from storage).
	StatusData StatusFlags = 1 << iota
	// StatusZero: the range reads as zeroes.
	StatusZero
	// StatusAllocated: the range is allocated in this node (not in a
	// backing file). Protocol nodes report everything allocated.
	StatusAllocated
)

// BlockStatus is the status of [Offset, Offset+Length).
type BlockStatus struct {
	Flags  StatusFlags
	Length int64
}

// Errors of the I/O path. They wrap the errno a network export reports.
var (
	// ErrNotSupported: the driver cannot do this (ENOTSUP).
	ErrNotSupported = fmt.Errorf("operation not supported: %w", syscall.ENOTSUP)
	// ErrOutOfRange: the request reaches past the end of the node (EIO, as
	// QEMU's block backends answer).
	ErrOutOfRange = fmt.Errorf("request beyond the end of the node: %w", syscall.EIO)
	// ErrReadOnly: a write to a read-only node (EACCES).
	ErrReadOnly = fmt.Errorf("node is read-only: %w", syscall.EACCES)
	// ErrPermission: the caller's child lacks the permission (EPERM).
	ErrPermission = fmt.Errorf("permission not granted: %w", syscall.EPERM)
	// ErrClosed: the node was closed.
	ErrClosed = fmt.Errorf("node is closed: %w", syscall.ENOMEDIUM)
)

// Truncater is a driver that can change its length.
type Truncater interface {
	// Truncate sets the length. exact requires exactly size (otherwise a
	// driver may round up).
	Truncate(ctx context.Context, size int64, exact bool) error
}

// ReopenState carries one node's new options through a reopen transaction.
type ReopenState struct {
	Node     *Node
	Options  Options
	ReadOnly bool
	// CacheDirect and NoFlush are the new cache settings.
	CacheDirect, NoFlush bool
	// Opaque is the driver's own prepared state, for Commit or Abort.
	Opaque any
}

// Reopener is a driver that can change its options on an open node. The
// graph calls ReopenPrepare on every node of a queue, then ReopenCommit on
// all of them, or ReopenAbort on those prepared if any prepare failed.
type Reopener interface {
	ReopenPrepare(ctx context.Context, rs *ReopenState) error
	ReopenCommit(rs *ReopenState)
	ReopenAbort(rs *ReopenState)
}

// BackingChanger is a format driver that records a backing file name in its
// image header.
type BackingChanger interface {
	ChangeBackingFile(ctx context.Context, filename, format string) error
}

// BackingUpdater is a format driver told when the graph changes its
// backing link (SetBacking, DropIntermediate, ReplaceNode): c is the
// "backing" edge now (the same edge when only its node changed), nil when
// the node has no backing node any more. It is called under the graph
// lock with the node drained. Without it a node can have its backing node
// swapped, but not added or removed.
type BackingUpdater interface {
	SetBackingChild(c *Child)
}

// ChildPermer is a driver that decides its children's permissions itself
// (QEMU's bdrv_child_perm). Without it the graph uses DefaultChildPerm.
// perm and shared are the cumulative permissions of the node's own users.
type ChildPermer interface {
	ChildPerm(c *Child, role Role, perm, shared Perm) (Perm, Perm)
}

// FilenameRefresher is a driver that knows its own exact file name (file
// names its file, null-co says "null-co://"). It returns "" when the
// options cannot be expressed as a plain file name, in which case the graph
// builds a "json:{...}" pseudo file name.
type FilenameRefresher interface {
	ExactFilename() string
}

// StrongOptioner lists the driver options that change what the node
// presents and so belong in its json: pseudo file name (raw: offset, size).
type StrongOptioner interface {
	StrongOptions() []string
}

// ProtocolDriver marks a protocol driver (file, null-co): one that talks to
// storage rather than to a child. A format node over a protocol node
// without strong options takes the protocol node's file name.
type ProtocolDriver interface {
	Protocol()
}

// FileOpener marks a driver QEMU opens at the protocol level although it
// has a child (blkdebug): a format node over it takes its file name.
type FileOpener interface {
	FileOpen()
}

// FormatInfoer is a driver with format-specific information for the
// query views (ImageInfo's format-specific: {"type": ..., "data": ...}).
type FormatInfoer interface {
	FormatSpecific(ctx context.Context) (any, error)
}

// AllocatedSizer is a driver that knows how many bytes its storage uses
// (ImageInfo's actual-size). Without it the graph asks the primary child.
type AllocatedSizer interface {
	AllocatedSize(ctx context.Context) (int64, error)
}

// WriteFlagger declares the request flags a driver honours itself. The node
// emulates ReqFUA with a flush for drivers that do not.
type WriteFlagger interface {
	SupportedWriteFlags() ReqFlags
}

// Aligner is a driver with a request alignment (the logical block size
// for O_DIRECT files). Node.RequestAlignment reports it, and the node's
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
// node's entry points split larger reads and writes into pieces of at most
// that size (rounded down to the request alignment) as QEMU does, and the
// parents of the node inherit the limit (see Node.MaxTransfer).
type TransferLimiter interface {
	MaxTransfer() int64
}

// FileMapper is a driver whose bytes are, unchanged, the bytes of a range
// of an open file (file itself; raw over a file, shifted by its offset).
// An export can then send them with sendfile instead of copying them
// through a buffer (see Node.ReadFile). FileRange returns ok=false when the
// range cannot be mapped (O_DIRECT, a format with its own layout).
type FileMapper interface {
	FileRange(off, n int64) (fd int, fileOff int64, ok bool)
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

// BackingFiler is a format driver whose image records a backing file: the
// name as the header has it (relative names are relative to the image's
// own file) and the format ("" when not recorded). Both are "" when the
// image names none. Query views report them as backing-filename and
// backing-filename-format.
type BackingFiler interface {
	BackingFile() (filename, format string)
}

// DebugEventer is a driver that reacts to QEMU's block debug events
// (blkdebug: "read_aio", "write_aio", "flush_to_disk", ...), which a parent
// fires on its child with Child.DebugEvent as QEMU's BLKDBG_EVENT does.
type DebugEventer interface {
	DebugEvent(event string)
}

// Factory returns a fresh, unopened driver instance.
type Factory func() Driver

var (
	registryMu sync.RWMutex
	registry   = map[string]Factory{}
)

// RegisterDriver makes a driver available under its QMP name. It panics if
// the name is taken or the factory is nil, like database/sql.Register.
func RegisterDriver(name string, f Factory) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if f == nil {
		panic("blockdev: RegisterDriver " + name + " with a nil factory")
	}
	if _, dup := registry[name]; dup {
		panic("blockdev: RegisterDriver called twice for driver " + name)
	}
	registry[name] = f
}

// Drivers lists the registered driver names, sorted.
func Drivers() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func lookupDriver(name string) (Factory, error) {
	registryMu.RLock()
	f := registry[name]
	registryMu.RUnlock()
	if f == nil {
		return nil, fmt.Errorf("Unknown driver '%s'", name)
	}
	return f, nil
}

// isNotSupported tells whether err means "not supported".
func isNotSupported(err error) bool {
	return errors.Is(err, syscall.ENOTSUP) || errors.Is(err, syscall.EOPNOTSUPP)
}
