package nbd

import (
	"context"
	"errors"
	"syscall"
)

// Wire constants, named as in the protocol document.
const (
	nbdMagic         = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic         = 0x49484156454F5054 // "IHAVEOPT"
	repMagic         = 0x3e889045565a9
	requestMagic     = 0x25609513
	simpleReplyMagic = 0x67446698
	structReplyMagic = 0x668e33ef

	// handshake flags
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1
	// client flags
	flagCFixedNewstyle = 1 << 0
	flagCNoZeroes      = 1 << 1

	// transmission flags
	flagHasFlags        = 1 << 0
	flagReadOnly        = 1 << 1
	flagSendFlush       = 1 << 2
	flagSendFUA         = 1 << 3
	flagSendTrim        = 1 << 5
	flagSendWriteZeroes = 1 << 6
	flagSendDF          = 1 << 7
	flagCanMultiConn    = 1 << 8
	flagSendCache       = 1 << 10
	flagSendFastZero    = 1 << 11

	// options
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10

	// option replies
	repAck              = 1
	repServer           = 2
	repInfo             = 3
	repMetaContext      = 4
	repErrBit           = 1 << 31
	repErrUnsup         = repErrBit | 1
	repErrPolicy        = repErrBit | 2
	repErrInvalid       = repErrBit | 3
	repErrUnknown       = repErrBit | 6
	repErrShutdown      = repErrBit | 7
	repErrBlockSizeReqd = repErrBit | 8
	repErrTooBig        = repErrBit | 9

	// info types
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3

	// commands
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	// command flags
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4

	// structured reply
	replyFlagDone        = 1 << 0
	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeOffsetHole  = 2
	replyTypeBlockStatus = 5
	replyTypeError       = 1<<15 | 1
	replyTypeErrorOffset = 1<<15 | 2

	// base:allocation flags
	stateHole = 1 << 0
	stateZero = 1 << 1

	// protocol error values
	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errNotSup   = 95
	errShutdown = 108
)

const (
	// maxStringLen is the longest string the protocol allows.
	maxStringLen = 4096
	// maxPayload bounds one read or write payload (the interoperable 32 MiB)
	// and the data of one option.
	maxPayload = 32 << 20
	// maxExtents bounds the descriptors of one block status chunk.
	maxExtents = 1024
)

// Metadata context names and the IDs this server gives them.
const (
	ctxBaseAllocation = "base:allocation"
	ctxAllocDepth     = "qemu:allocation-depth"
	ctxBitmapPrefix   = "qemu:dirty-bitmap:"
	idBaseAllocation  = 0
	idAllocDepth      = 1
	// idBitmapBase + i is the context of the export's i-th bitmap.
	idBitmapBase = 2

	// stateDirty is qemu:dirty-bitmap's flag for a dirty extent.
	stateDirty = 1
)

// wireErrno maps an error to the protocol's error values as QEMU does:
// an errno without a protocol value of its own becomes EINVAL; an error
// without an errno is EIO.
func wireErrno(err error) uint32 {
	var e syscall.Errno
	switch {
	case errors.As(err, &e):
	case errors.Is(err, context.Canceled):
		return errShutdown
	default:
		return errIO
	}
	switch e {
	case syscall.EPERM, syscall.EROFS:
		return errPerm
	case syscall.EIO:
		return errIO
	case syscall.ENOMEM:
		return errNoMem
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
		return errNoSpc
	case syscall.EOVERFLOW:
		return errOverflow
	case syscall.ENOTSUP:
		return errNotSup
	case syscall.ESHUTDOWN:
		return errShutdown
	case syscall.ENOMEDIUM:
		return errInval // QEMU's default for errnos NBD has no value for
	}
	return errInval
}
