package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
)

// The client's side of the handshake, as QEMU's client negotiates: fixed
// newstyle (oldstyle and plain newstyle servers are still understood),
// structured replies, one metadata context, then NBD_OPT_GO asking for the
// block sizes, falling back to NBD_OPT_EXPORT_NAME on a server without
// NBD_OPT_GO.

const oldstyleMagic = 0x00420281861253

// ExportInfo is what a client learnt about its export in the handshake.
type ExportInfo struct {
	// Size of the export in bytes.
	Size int64
	// Flags are the transmission flags (NBD_FLAG_*).
	Flags uint16
	// MinBlock, PrefBlock and MaxBlock are NBD_INFO_BLOCK_SIZE's sizes,
	// 0 when the server did not send them.
	MinBlock, PrefBlock, MaxBlock uint32
	// Structured: structured replies were negotiated.
	Structured bool
	// MetaContext: the metadata context the client asked for was
	// negotiated; block status reads it (ContextID is its id).
	MetaContext bool
	ContextID   uint32
}

// ReadOnly tells whether the server refuses writes to the export.
func (i ExportInfo) ReadOnly() bool { return i.Flags&flagReadOnly != 0 }

// CanFlush, CanFUA, CanTrim, CanWriteZeroes, CanFastZero, CanCache and
// CanMultiConn tell what the server advertised.
func (i ExportInfo) CanFlush() bool       { return i.Flags&flagSendFlush != 0 }
func (i ExportInfo) CanFUA() bool         { return i.Flags&flagSendFUA != 0 }
func (i ExportInfo) CanTrim() bool        { return i.Flags&flagSendTrim != 0 }
func (i ExportInfo) CanWriteZeroes() bool { return i.Flags&flagSendWriteZeroes != 0 }
func (i ExportInfo) CanFastZero() bool {
	return i.Flags&flagSendWriteZeroes != 0 && i.Flags&flagSendFastZero != 0
}
func (i ExportInfo) CanCache() bool     { return i.Flags&flagSendCache != 0 }
func (i ExportInfo) CanMultiConn() bool { return i.Flags&flagCanMultiConn != 0 }

// HandshakeError is a failed negotiation. Errno is what QEMU's open
// reports when it gives no message of its own (Msg empty): "Could not
// open image: " and the errno's text.
type HandshakeError struct {
	Msg   string
	Errno syscall.Errno
}

func (e *HandshakeError) Error() string {
	if e.Msg == "" {
		return e.Errno.Error()
	}
	return e.Msg
}
func (e *HandshakeError) Unwrap() error { return e.Errno }

func hsErr(format string, args ...any) error {
	return &HandshakeError{Msg: fmt.Sprintf(format, args...), Errno: syscall.EINVAL}
}

// hsConn is one connection being negotiated.
type hsConn struct {
	nc net.Conn
	br *bufio.Reader
}

func (h *hsConn) read(p []byte, what string) error {
	if _, err := io.ReadFull(h.br, p); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return &HandshakeError{Msg: "Failed to read " + what + ": Unexpected end-of-file before all data were read", Errno: syscall.EIO}
		}
		return &HandshakeError{Msg: "Failed to read " + what + ": " + err.Error(), Errno: syscall.EIO}
	}
	return nil
}

func (h *hsConn) write(p []byte, what string) error {
	if _, err := h.nc.Write(p); err != nil {
		return &HandshakeError{Msg: "Failed to send " + what + ": " + err.Error(), Errno: syscall.EIO}
	}
	return nil
}

func (h *hsConn) sendOpt(opt uint32, data []byte) error {
	p := make([]byte, 16, 16+len(data))
	be.PutUint64(p, optMagic)
	be.PutUint32(p[8:], opt)
	be.PutUint32(p[12:], uint32(len(data)))
	return h.write(append(p, data...), "option request")
}

// optReply reads one option reply to opt, with its data (at most
// maxStringLen+... bytes: replies carrying more are refused).
func (h *hsConn) optReply(opt uint32) (typ uint32, data []byte, err error) {
	var hdr [20]byte
	if err := h.read(hdr[:], "option reply"); err != nil {
		return 0, nil, err
	}
	if m := be.Uint64(hdr[:]); m != repMagic {
		return 0, nil, hsErr("Unexpected option reply magic")
	}
	if o := be.Uint32(hdr[8:]); o != opt {
		return 0, nil, hsErr("Unexpected option type %d, expected %d", o, opt)
	}
	typ = be.Uint32(hdr[12:])
	n := be.Uint32(hdr[16:])
	if n > 64<<10 {
		return 0, nil, hsErr("server's option reply of %d bytes is too long", n)
	}
	data = make([]byte, n)
	if err := h.read(data, "option reply data"); err != nil {
		return 0, nil, err
	}
	return typ, data, nil
}

// replyError turns an error reply to opt into QEMU's message for it.
func replyError(opt, typ uint32) error {
	name := optName(opt)
	switch typ {
	case repErrUnsup:
		return hsErr("Unsupported option %d (%s)", opt, name)
	case repErrPolicy:
		return hsErr("Denied by server for option %d (%s)", opt, name)
	case repErrInvalid:
		return hsErr("Server rejected invalid option %d (%s)", opt, name)
	case repErrUnknown:
		return hsErr("Requested export not available")
	case repErrShutdown:
		return hsErr("Server shutting down before option %d (%s)", opt, name)
	case repErrBlockSizeReqd:
		return hsErr("Server requires INFO_BLOCK_SIZE for option %d (%s)", opt, name)
	case repErrTooBig:
		return hsErr("Server rejected request as too large for option %d (%s)", opt, name)
	}
	return hsErr("Unknown error code when asking for option %d (%s)", opt, name)
}

// clientHandshake negotiates export on nc. metaCtx is the context block
// status should read ("" for none).
func clientHandshake(ctx context.Context, nc net.Conn, export, metaCtx string) (ExportInfo, *bufio.Reader, error) {
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
		defer stop()
	}
	h := &hsConn{nc: nc, br: bufio.NewReaderSize(nc, 64<<10)}
	var info ExportInfo
	var hdr [18]byte
	if err := h.read(hdr[:16], "initial magic"); err != nil {
		return info, nil, err
	}
	if m := be.Uint64(hdr[:]); m != nbdMagic {
		return info, nil, hsErr("Bad initial magic received: 0x%x", m)
	}
	switch m := be.Uint64(hdr[8:]); m {
	case oldstyleMagic:
		if export != "" {
			return info, nil, hsErr("Server does not support non-empty export names")
		}
		var p [12 + 124]byte
		if err := h.read(p[:], "export length"); err != nil {
			return info, nil, err
		}
		info.Size = int64(be.Uint64(p[:]))
		info.Flags = uint16(be.Uint32(p[8:]))
		return info, h.br, checkSize(info)
	case optMagic:
	default:
		return info, nil, hsErr("Bad server magic received: 0x%x", m)
	}
	if err := h.read(hdr[16:18], "server flags"); err != nil {
		return info, nil, err
	}
	sflags := be.Uint16(hdr[16:])
	fixed := sflags&flagFixedNewstyle != 0
	noZeroes := sflags&flagNoZeroes != 0
	var cflags uint32
	if fixed {
		cflags |= flagCFixedNewstyle
	}
	if noZeroes {
		cflags |= flagCNoZeroes
	}
	if err := h.write(be.AppendUint32(nil, cflags), "client flags"); err != nil {
		return info, nil, err
	}
	if !fixed {
		return exportName(h, info, export, noZeroes)
	}
	// Structured replies.
	if err := h.sendOpt(optStructuredReply, nil); err != nil {
		return info, nil, err
	}
	typ, _, err := h.optReply(optStructuredReply)
	if err != nil {
		return info, nil, err
	}
	info.Structured = typ == repAck
	// The metadata context block status reads.
	if info.Structured && metaCtx != "" {
		data := be.AppendUint32(nil, uint32(len(export)))
		data = append(data, export...)
		data = be.AppendUint32(data, 1)
		data = be.AppendUint32(data, uint32(len(metaCtx)))
		data = append(data, metaCtx...)
		if err := h.sendOpt(optSetMetaContext, data); err != nil {
			return info, nil, err
		}
		for {
			typ, data, err := h.optReply(optSetMetaContext)
			if err != nil {
				return info, nil, err
			}
			if typ == repAck {
				break
			}
			if typ&repErrBit != 0 {
				break // the server knows no contexts: block status reports data
			}
			if typ != repMetaContext || len(data) < 4 {
				return info, nil, hsErr("Unexpected reply type %d to option %d (%s)", typ, optSetMetaContext, optName(optSetMetaContext))
			}
			if string(data[4:]) != metaCtx || info.MetaContext {
				return info, nil, hsErr("Unexpected context name or count for %s", metaCtx)
			}
			info.MetaContext, info.ContextID = true, be.Uint32(data)
		}
	}
	// NBD_OPT_GO, asking for the block sizes.
	data := be.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = be.AppendUint16(data, 1)
	data = be.AppendUint16(data, infoBlockSize)
	if err := h.sendOpt(optGo, data); err != nil {
		return info, nil, err
	}
	gotExport := false
	for {
		typ, data, err := h.optReply(optGo)
		if err != nil {
			return info, nil, err
		}
		switch {
		case typ == repAck:
			if !gotExport {
				return info, nil, hsErr("broken server: NBD_OPT_GO acknowledged without export information")
			}
			return info, h.br, checkSize(info)
		case typ == repErrUnsup:
			return exportName(h, info, export, noZeroes)
		case typ&repErrBit != 0:
			return info, nil, replyError(optGo, typ)
		case typ != repInfo:
			return info, nil, hsErr("Unexpected reply type %d to option %d (%s)", typ, optGo, optName(optGo))
		case len(data) < 2:
			return info, nil, hsErr("Invalid information reply")
		}
		switch be.Uint16(data) {
		case infoExport:
			if len(data) != 12 {
				return info, nil, hsErr("Invalid length %d for export information", len(data))
			}
			info.Size = int64(be.Uint64(data[2:]))
			info.Flags = be.Uint16(data[10:])
			gotExport = true
		case infoBlockSize:
			if len(data) != 14 {
				return info, nil, hsErr("Invalid length %d for block size information", len(data))
			}
			info.MinBlock, info.PrefBlock, info.MaxBlock = be.Uint32(data[2:]), be.Uint32(data[6:]), be.Uint32(data[10:])
			if err := checkBlockSizes(info); err != nil {
				return info, nil, err
			}
		}
	}
}

// exportName attaches with NBD_OPT_EXPORT_NAME (no error reply exists: a
// server without the export hangs up).
func exportName(h *hsConn, info ExportInfo, export string, noZeroes bool) (ExportInfo, *bufio.Reader, error) {
	if err := h.sendOpt(optExportName, []byte(export)); err != nil {
		return info, nil, err
	}
	n := 10
	if !noZeroes {
		n += 124
	}
	p := make([]byte, n)
	if err := h.read(p, "export length"); err != nil {
		return info, nil, err
	}
	info.Size = int64(be.Uint64(p))
	info.Flags = be.Uint16(p[8:])
	return info, h.br, checkSize(info)
}

func checkSize(info ExportInfo) error {
	if info.Size < 0 {
		return hsErr("Export size %d is too large", uint64(info.Size))
	}
	return nil
}

// checkBlockSizes refuses the sizes QEMU's client refuses.
func checkBlockSizes(info ExportInfo) error {
	lo, pref, hi := info.MinBlock, info.PrefBlock, info.MaxBlock
	switch {
	case lo == 0 || lo&(lo-1) != 0 || lo > 64<<10:
		return hsErr("server minimum block size %d is not a power of two", lo)
	case pref < lo || pref&(pref-1) != 0:
		return hsErr("server preferred block size %d is not valid", pref)
	case hi < lo || (hi%lo != 0 && hi != 0xffffffff):
		return hsErr("server maximum block size %d is not valid", hi)
	}
	return nil
}
