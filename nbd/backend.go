// Package nbd implements both sides of the Network Block Device protocol
// as described by the public NBD protocol document (NetworkBlockDevice/nbd,
// doc/proto.md): a server (fixed newstyle handshake, structured replies,
// metadata contexts; Server) and a client (Connect, Client) that shares
// its constants and reply formats.
//
// The package does not know about the block graph: an export serves a
// Backend, and the caller adapts its nodes to that interface; the nbd
// block driver (drivers/nbd) wraps a Client.
package nbd

import "context"

// Backend is what an export serves. Offsets and lengths are in bytes and
// always inside [0, Size()) when the server calls them. Methods are called
// concurrently. Errors wrapping a syscall.Errno are sent as that errno
// (EIO, EPERM, ENOSPC, EINVAL, ENOTSUP, ...); others as EIO.
type Backend interface {
	Size() int64
	ReadOnly() bool
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	WriteZeroes(ctx context.Context, off, length int64, mayTrim, fastZero bool) error // fastZero: fail with ENOTSUP rather than write slowly
	Trim(ctx context.Context, off, length int64) error
	Flush(ctx context.Context) error
	Cache(ctx context.Context, off, length int64) error
	// BlockStatus describes a prefix of [off, off+length): Hole and Zero as NBD_STATE_HOLE / NBD_STATE_ZERO.
	BlockStatus(ctx context.Context, off, length int64) (Extent, error)
	// AllocationDepth for qemu:allocation-depth: 0 unallocated, 1 the top layer, 2.. deeper (only called when the export enables it).
	AllocationDepth(ctx context.Context, off, length int64) (depth uint32, n int64, err error)
	// Block sizes advertised with NBD_INFO_BLOCK_SIZE.
	BlockSizes() (minimum, preferred, maximum uint32)
	// CanMultiConn: whether NBD_FLAG_CAN_MULTI_CONN may be advertised.
	CanMultiConn() bool
}

// Extent is the status of a prefix of a range asked of Backend.BlockStatus.
type Extent struct {
	Length int64
	Hole   bool
	Zero   bool
}

// FileReader is an optional Backend ability: a read whose bytes lie
// unchanged in an open file. ReadFile calls send once with that file range
// (the descriptor is valid only during the call), and the server writes the
// reply with sendfile(2) instead of copying the data through a buffer. It
// returns false, without calling send, when the range is not in a file; the
// server then uses ReadAt. An error from send is returned as it is.
type FileReader interface {
	ReadFile(ctx context.Context, off, length int64, send func(fd int, fileOff, n int64) error) (bool, error)
}

// BitmapBackend is a Backend that serves the dirty bitmaps an Export lists
// (qemu:dirty-bitmap:NAME contexts). DirtyStatus describes a prefix of
// [off, off+length) of the bitmap with that index in Export.Bitmaps.
type BitmapBackend interface {
	DirtyStatus(ctx context.Context, bitmap int, off, length int64) (dirty bool, n int64, err error)
}
