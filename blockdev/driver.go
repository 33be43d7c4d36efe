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
