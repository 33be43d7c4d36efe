package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// workersPerConn bounds the requests one connection processes at once.
const workersPerConn = 16

// conn is one client connection.
type conn struct {
	srv    *Server
	nc     net.Conn
	br     *bufio.Reader
	ctx    context.Context
	cancel context.CancelFunc

	// The option being negotiated and how many of its data bytes are unread.
	opt     uint32
	optLeft uint32

	// Negotiated during the handshake; fixed during transmission.
	export     *export // set under srv.mu
	noZeroes   bool
	structured bool
	meta       []uint32 // selected metadata context IDs
	metaExport string   // the export the selection was made for
	size       int64
	flags      uint16

	raw      syscall.RawConn // for sendfile; nil when nc has no descriptor
	wmu      sync.Mutex      // serialises replies
	inflight sync.WaitGroup
}

// shutdown disconnects the client; safe to call more than once and from
// any goroutine.
func (c *conn) shutdown() {
	c.cancel()
	_ = c.nc.Close()
}

func (c *conn) run() {
	defer c.shutdown()
	log := c.srv.log.With().Str("remote", c.nc.RemoteAddr().String()).Logger()
	c.br = bufio.NewReaderSize(c.nc, 64<<10)
	if t := c.srv.HandshakeTimeout; t > 0 {
		// A client that does not finish negotiating in time is dropped,
		// so that idle connections cannot hold the server's slots.
		_ = c.nc.SetDeadline(time.Now().Add(t))
	}
	err := c.handshake()
	if err == nil && c.srv.HandshakeTimeout > 0 {
		err = c.nc.SetDeadline(time.Time{})
	}
	if err != nil {
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			log.Info().Dur("timeout", c.srv.HandshakeTimeout).Msg("nbd: client did not finish negotiating in time; disconnected")
		case !errors.Is(err, errAbort) && !errors.Is(err, io.EOF):
			log.Debug().Err(err).Msg("nbd: handshake ended")
		}
		return
	}
	log.Debug().Str("export", c.export.Name).Bool("structured", c.structured).Msg("nbd: client connected")
	if err := c.transmit(); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		log.Debug().Err(err).Msg("nbd: connection ended")
	}
}

// request is one transmission request, with its payload for a write.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	off    uint64
	length uint32
	data   []byte
}

// transmit reads requests until the client disconnects and runs them
// concurrently; it returns once all of them are answered.
func (c *conn) transmit() error {
	defer c.inflight.Wait()
	if sc, ok := c.nc.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			c.raw = raw
		}
	}
	// Requests go to at most workersPerConn long-lived workers, started
	// as the load needs them. A goroutine per request would grow a fresh
	// stack through the whole block layer each time: runtime.morestack
	// took 18% of the CPU of small qcow2 writes.
	work := make(chan request)
	workers := 0
	defer close(work)
	worker := func() {
		defer c.inflight.Done()
		for r := range work {
			if errno, msg := c.check(&r); errno != 0 {
				putBuf(r.data)
				c.replyError(&r, errno, msg)
				continue
			}
			c.handle(&r)
		}
	}
	var hdr [28]byte
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return err
		}
		r := request{
			flags:  be.Uint16(hdr[4:]),
			typ:    be.Uint16(hdr[6:]),
			handle: be.Uint64(hdr[8:]),
			off:    be.Uint64(hdr[16:]),
			length: be.Uint32(hdr[24:]),
		}
		if m := be.Uint32(hdr[0:]); m != requestMagic {
			// Answered, then the stream cannot be trusted any more.
			c.replyError(&r, errInval, fmt.Sprintf("invalid magic (got %#x)", m))
			return fmt.Errorf("nbd: bad request magic %#x", m)
		}
		if r.typ == cmdDisc {
			return nil
		}
		if r.typ == cmdWrite && r.length > maxPayload {
			// The payload is not read: answer, then hang up.
			c.replyError(&r, errInval, tooLong(r.length))
			return fmt.Errorf("nbd: write of %d bytes is too large", r.length)
		}
		if r.typ == cmdWrite {
			r.data = getBuf(int(r.length))
			if _, err := io.ReadFull(c.br, r.data); err != nil {
				putBuf(r.data)
				return err
			}
		}
		select {
		case work <- r:
		default:
			if workers < workersPerConn {
				workers++
				c.inflight.Add(1)
				go worker()
			}
			work <- r
		}
	}
}

// cmdName is the name QEMU's messages give a command.
func cmdName(typ uint16) string {
	switch typ {
	case cmdRead:
		return "read"
	case cmdWrite:
		return "write"
	case cmdDisc:
		return "disconnect"
	case cmdFlush:
		return "flush"
	case cmdTrim:
		return "trim"
	case cmdCache:
		return "cache"
	case cmdWriteZeroes:
		return "write zeroes"
	case cmdBlockStatus:
		return "block status"
	}
	return "<unknown>"
}

// tooLong is QEMU's message for a read, write or cache over 32 MiB.
func tooLong(n uint32) string {
	return fmt.Sprintf("len (%d ) is larger than max len (%d)", n, maxPayload)
}

// check validates a request against the negotiated export in QEMU's order
// (size limit, read-only export, bounds, flags, command), with QEMU's
// messages; every refusal is EINVAL, as QEMU sends. It returns the error
// to send, or 0.
func (c *conn) check(r *request) (uint32, string) {
	if (r.typ == cmdRead || r.typ == cmdCache) && r.length > maxPayload {
		return errInval, tooLong(r.length)
	}
	if c.flags&flagReadOnly != 0 && (r.typ == cmdWrite || r.typ == cmdWriteZeroes || r.typ == cmdTrim) {
		return errInval, "Export is read-only"
	}
	size := uint64(c.size)
	if r.off > size || uint64(r.length) > size-r.off {
		return errInval, fmt.Sprintf("operation past EOF; From: %d, Len: %d, Size: %d", r.off, r.length, size)
	}
	valid := uint16(cmdFlagFUA)
	switch {
	case r.typ == cmdRead && c.structured:
		valid |= cmdFlagDF
	case r.typ == cmdWriteZeroes:
		valid |= cmdFlagNoHole | cmdFlagFastZero
	case r.typ == cmdBlockStatus:
		valid |= cmdFlagReqOne
	}
	if r.flags&^valid != 0 {
		return errInval, fmt.Sprintf("unsupported flags for command %s (got 0x%x)", cmdName(r.typ), r.flags)
	}
	switch r.typ {
	case cmdRead, cmdWrite, cmdFlush, cmdTrim, cmdCache, cmdWriteZeroes:
	case cmdBlockStatus:
		if r.length == 0 {
			return errInval, "need non-zero length"
		}
		if !c.structured || len(c.meta) == 0 {
			return errInval, "CMD_BLOCK_STATUS not negotiated"
		}
	default:
		return errInval, fmt.Sprintf("invalid request type (%d) received", r.typ)
	}
	return 0, ""
}

// handle runs a checked request. A failure is answered with QEMU's fixed
// message for the command (the cause goes to the debug log).
func (c *conn) handle(r *request) {
	ctx := c.ctx
	b := c.export.Backend
	off, length := int64(r.off), int64(r.length)
	fua := r.flags&cmdFlagFUA != 0
	var err error
	var msg string
	switch r.typ {
	case cmdRead:
		if fua {
			// QEMU flushes before a read that asks for FUA.
			if err := b.Flush(ctx); err != nil {
				c.fail(r, err, "flush failed")
				return
			}
		}
		c.read(r)
		return
	case cmdBlockStatus:
		c.blockStatus(r)
		return
	case cmdWrite:
		if length > 0 {
			err = b.WriteAt(ctx, r.data, off, fua)
		}
		putBuf(r.data)
		msg = "writing to file failed"
	case cmdFlush:
		err = b.Flush(ctx)
		msg = "flush failed"
	case cmdTrim:
		if length > 0 {
			err = b.Trim(ctx, off, length)
		}
		if err == nil && fua {
			err = b.Flush(ctx)
		}
		msg = "discard failed"
	case cmdCache:
		if length > 0 {
			err = b.Cache(ctx, off, length)
		}
		msg = "caching data failed"
	case cmdWriteZeroes:
		if length > 0 {
			err = b.WriteZeroes(ctx, off, length, r.flags&cmdFlagNoHole == 0, r.flags&cmdFlagFastZero != 0)
		}
		if err == nil && fua {
			err = b.Flush(ctx)
		}
		msg = "writing to file failed"
	}
	if err != nil {
		c.fail(r, err, msg)
		return
	}
	c.replySimple(r.handle, 0, nil)
}

// fail answers a request whose backend operation failed with err.
func (c *conn) fail(r *request, err error, msg string) {
	c.srv.log.Debug().Err(err).Str("command", cmdName(r.typ)).Uint64("offset", r.off).
		Uint32("length", r.length).Msg("nbd: request failed")
	c.replyError(r, wireErrno(err), msg)
}

// read answers NBD_CMD_READ; with structured replies, zero extents of the
// backend go out as holes unless the client asked not to fragment.
func (c *conn) read(r *request) {
	off, length := int64(r.off), int64(r.length)
	if !c.structured {
		if length == 0 {
			c.replySimple(r.handle, 0, nil)
			return
		}
		h := simpleHeader(r.handle, 0)
		c.replyData(r, off, length, false, func(data []byte) [][]byte { return [][]byte{h, data} })
		return
	}
	if r.flags&cmdFlagDF != 0 || r.length == 0 {
		if r.length == 0 {
			c.chunk(r.handle, replyFlagDone, replyTypeNone, nil)
			return
		}
		c.replyData(r, off, length, false, func(data []byte) [][]byte {
			return chunkParts(r.handle, replyFlagDone, replyTypeOffsetData, offsetPrefix(off), length, data)
		})
		return
	}
	// Map the range first, so that the last chunk is known when it goes
	// out (it carries the done flag).
	type extent struct {
		off, n int64
		zero   bool
	}
	var exts []extent
	b := c.export.Backend
	var statusErr error
	for pos, end := off, off+length; pos < end; {
		n := end - pos
		ext, err := b.BlockStatus(c.ctx, pos, n)
		if err != nil {
			// QEMU reports the failure after the chunks before it.
			statusErr = err
			break
		}
		zero := ext.Zero && ext.Length > 0
		if ext.Length > 0 && ext.Length < n {
			n = ext.Length
		}
		if k := len(exts) - 1; k >= 0 && exts[k].zero == zero {
			exts[k].n += n
		} else {
			exts = append(exts, extent{pos, n, zero})
		}
		pos += n
	}
	for i, e := range exts {
		var flags uint16
		if i == len(exts)-1 && statusErr == nil {
			flags = replyFlagDone
		}
		if e.zero {
			h := be.AppendUint32(offsetPrefix(e.off), uint32(e.n))
			c.chunk(r.handle, flags, replyTypeOffsetHole, h)
			continue
		}
		if !c.replyData(r, e.off, e.n, true, func(data []byte) [][]byte {
			return chunkParts(r.handle, flags, replyTypeOffsetData, offsetPrefix(e.off), e.n, data)
		}) {
			return
		}
	}
	if statusErr != nil {
		c.fail(r, statusErr, "unable to check for holes: "+strerror(statusErr))
	}
}

// strerror spells err's errno as the C library does ("Input/output
// error"), for messages that QEMU builds with strerror.
func strerror(err error) string {
	var e syscall.Errno
	if !errors.As(err, &e) {
		e = syscall.EIO
	}
	s := e.Error()
	if s != "" {
		s = strings.ToUpper(s[:1]) + s[1:]
	}
	return s
}

// replyData sends n bytes of the export at off in the message parts
// builds around them: with sendfile when the backend can name the file
// they are in, else through a buffer. A failed read is answered with an
// error reply, or ends the connection when it is part of a sparse
// structured read (as in QEMU); it returns false then, or when the
// connection broke.
func (c *conn) replyData(r *request, off, n int64, sparse bool, parts func(data []byte) [][]byte) bool {
	failed := func(err error) bool {
		if sparse {
			c.srv.log.Debug().Err(err).Int64("offset", off).Msg("nbd: read failed; disconnecting the client")
			c.shutdown()
			return false
		}
		c.fail(r, err, "reading from file failed")
		return false
	}
	sent := false
	if fr, ok := c.export.Backend.(FileReader); ok && c.raw != nil {
		handled, err := fr.ReadFile(c.ctx, off, n, func(fd int, foff, n int64) error {
			c.wmu.Lock()
			defer c.wmu.Unlock()
			sent = true
			return c.sendFile(parts(nil), fd, foff, n)
		})
		switch {
		case handled && err == nil:
			return true
		case handled && sent:
			// The reply was under way: the stream is broken.
			c.shutdown()
			return false
		case handled:
			return failed(err)
		}
	}
	buf := getBuf(int(n))
	defer putBuf(buf)
	if err := c.export.Backend.ReadAt(c.ctx, buf, off); err != nil {
		return failed(err)
	}
	c.send(parts(buf)...)
	return true
}

// sendFile writes head, then n bytes of fd at foff with sendfile(2); the
// part past the end of the file goes out as zeroes. The caller holds wmu.
func (c *conn) sendFile(head [][]byte, fd int, foff, n int64) error {
	bufs := make(net.Buffers, 0, len(head))
	for _, p := range head {
		if len(p) > 0 {
			bufs = append(bufs, p)
		}
	}
	if _, err := bufs.WriteTo(c.nc); err != nil {
		return err
	}
	var serr error
	eof := false
	err := c.raw.Write(func(s uintptr) bool {
		for n > 0 && !eof {
			w, err := unix.Sendfile(int(s), fd, &foff, int(min(n, 1<<30)))
			switch {
			case err == unix.EAGAIN:
				return false
			case err == unix.EINTR:
			case err != nil:
				serr = err
				return true
			case w == 0:
				eof = true
			default:
				n -= int64(w)
			}
		}
		return true
	})
	if err == nil {
		err = serr
	}
	if err == nil && n > 0 {
		zero := make([]byte, min(n, 64<<10))
		for err == nil && n > 0 {
			var w int
			w, err = c.nc.Write(zero[:min(n, int64(len(zero)))])
			n -= int64(w)
		}
	}
	return err
}

func offsetPrefix(off int64) []byte {
	return be.AppendUint64(make([]byte, 0, 12), uint64(off))
}

// blockStatus answers NBD_CMD_BLOCK_STATUS with one chunk per selected context.
func (c *conn) blockStatus(r *request) {
	off := int64(r.off)
	for i, id := range c.meta {
		descs, err := c.extents(id, off, int64(r.length), r.flags&cmdFlagReqOne != 0)
		if err != nil {
			c.fail(r, err, "can't get block status")
			return
		}
		p := make([]byte, 4, 4+8*len(descs))
		be.PutUint32(p, id)
		for _, d := range descs {
			p = be.AppendUint32(p, d[0])
			p = be.AppendUint32(p, d[1])
		}
		var flags uint16
		if i == len(c.meta)-1 {
			flags = replyFlagDone
		}
		c.chunk(r.handle, flags, replyTypeBlockStatus, p)
	}
}

// extents returns (length, flags) descriptors of one context for
// [off, off+length), merging neighbours with equal flags.
func (c *conn) extents(id uint32, off, length int64, one bool) ([][2]uint32, error) {
	b := c.export.Backend
	var out [][2]uint32
	for pos, end := off, off+length; pos < end && len(out) < maxExtents; {
		var n int64
		var flags uint32
		var err error
		if id == idAllocDepth {
			var depth uint32
			depth, n, err = b.AllocationDepth(c.ctx, pos, end-pos)
			flags = depth
		} else if id >= idBitmapBase {
			bb, ok := b.(BitmapBackend)
			if !ok {
				return nil, fmt.Errorf("export serves no bitmaps: %w", syscall.EINVAL)
			}
			var dirty bool
			dirty, n, err = bb.DirtyStatus(c.ctx, int(id-idBitmapBase), pos, end-pos)
			if dirty {
				flags = stateDirty
			}
		} else {
			var e Extent
			e, err = b.BlockStatus(c.ctx, pos, end-pos)
			n = e.Length
			if e.Hole {
				flags |= stateHole
			}
			if e.Zero {
				flags |= stateZero
			}
		}
		if err == nil && n <= 0 {
			err = fmt.Errorf("backend returned an empty extent at %d: %w", pos, syscall.EIO)
		}
		if err != nil {
			if len(out) > 0 {
				break // report what is known; the client asks again for the rest
			}
			return nil, err
		}
		n = min(n, end-pos)
		if k := len(out); k > 0 && out[k-1][1] == flags && uint64(out[k-1][0])+uint64(n) <= math.MaxUint32 {
			out[k-1][0] += uint32(n)
		} else {
			out = append(out, [2]uint32{uint32(n), flags})
		}
		pos += n
		if one {
			break
		}
	}
	return out, nil
}

// replySimple sends a simple reply, with data for a successful read.
func (c *conn) replySimple(handle uint64, errno uint32, data []byte) {
	c.send(simpleHeader(handle, errno), data)
}

func simpleHeader(handle uint64, errno uint32) []byte {
	h := make([]byte, 16)
	be.PutUint32(h, simpleReplyMagic)
	be.PutUint32(h[4:], errno)
	be.PutUint64(h[8:], handle)
	return h
}

// chunk sends one structured reply chunk whose payload is head+data.
func (c *conn) chunk(handle uint64, flags, typ uint16, head []byte, data ...[]byte) {
	n := len(head)
	for _, d := range data {
		n += len(d)
	}
	h := chunkHeader(handle, flags, typ, n)
	c.send(append([][]byte{h, head}, data...)...)
}

// chunkParts is a structured chunk whose payload is head and dataLen bytes
// of data (data itself, or nil when the data follows by sendfile).
func chunkParts(handle uint64, flags, typ uint16, head []byte, dataLen int64, data []byte) [][]byte {
	return [][]byte{chunkHeader(handle, flags, typ, len(head)+int(dataLen)), head, data}
}

func chunkHeader(handle uint64, flags, typ uint16, n int) []byte {
	h := make([]byte, 20)
	be.PutUint32(h, structReplyMagic)
	be.PutUint16(h[4:], flags)
	be.PutUint16(h[6:], typ)
	be.PutUint64(h[8:], handle)
	be.PutUint32(h[16:], uint32(n))
	return h
}

// replyError reports a failed request: a final error chunk with structured
// replies (QEMU sends no offset with its errors), else a simple reply.
func (c *conn) replyError(r *request, errno uint32, msg string) {
	if !c.structured {
		c.replySimple(r.handle, errno, nil)
		return
	}
	if len(msg) > maxStringLen {
		msg = msg[:maxStringLen]
	}
	p := make([]byte, 6, 6+len(msg))
	be.PutUint32(p, errno)
	be.PutUint16(p[4:], uint16(len(msg)))
	p = append(p, msg...)
	c.chunk(r.handle, replyFlagDone, replyTypeError, p)
}

// send writes one message atomically; a failed write ends the connection.
func (c *conn) send(parts ...[]byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	bufs := make(net.Buffers, 0, len(parts))
	for _, p := range parts {
		if len(p) > 0 {
			bufs = append(bufs, p)
		}
	}
	if _, err := bufs.WriteTo(c.nc); err != nil {
		c.shutdown()
	}
}

// Payload buffers are pooled by power-of-two size class.
var bufPools [26]sync.Pool

func sizeClass(n int) int {
	if n <= 4096 {
		return 12
	}
	return bits.Len(uint(n - 1))
}

func getBuf(n int) []byte {
	if n == 0 {
		return nil
	}
	k := sizeClass(n)
	if k >= len(bufPools) {
		return make([]byte, n)
	}
	if p, ok := bufPools[k].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<k)
}

func putBuf(b []byte) {
	if b == nil {
		return
	}
	k := sizeClass(cap(b))
	if k >= len(bufPools) || cap(b) != 1<<k {
		return
	}
	b = b[:cap(b)]
	bufPools[k].Put(&b)
}
