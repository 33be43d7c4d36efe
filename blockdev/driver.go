package blockdev

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"syscall"
)

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

// registration is what Register found on a driver's Factory.
type registration struct {
	factory Factory
	probe   Prober  // nil: not probed by content
	create  Creator // nil: no blockdev-create
}

var (
	registryMu sync.RWMutex
	registry   = map[string]registration{}
)

// Register makes a driver available under its QMP name: the driver's one
// registration. f makes the driver's instances (see Factory); whether the
// format can be probed and created is found on f itself, by type assertion
// (Prober, Creator), and every other ability on the instances New returns
// (see Driver). It panics if the name is taken or f is nil, like
// database/sql.Register.
func Register(name string, f Factory) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if f == nil {
		panic("blockdev: Register " + name + " with a nil factory")
	}
	if _, dup := registry[name]; dup {
		panic("blockdev: Register called twice for driver " + name)
	}
	r := registration{factory: f}
	r.probe, _ = f.(Prober)
	r.create, _ = f.(Creator)
	registry[name] = r
}

// RegisterDriver is Register(name, FactoryFunc(f)), for a driver whose
// format is neither probed nor created.
func RegisterDriver(name string, f func() Driver) {
	if f == nil {
		panic("blockdev: RegisterDriver " + name + " with a nil factory")
	}
	Register(name, FactoryFunc(f))
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

// lookupDriver returns the function that makes a fresh instance of the
// driver registered under name.
func lookupDriver(name string) (func() Driver, error) {
	registryMu.RLock()
	r, ok := registry[name]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("Unknown driver '%s'", name)
	}
	return r.factory.New, nil
}

// isNotSupported tells whether err means "not supported".
func isNotSupported(err error) bool {
	return errors.Is(err, syscall.ENOTSUP) || errors.Is(err, syscall.EOPNOTSUPP)
}
