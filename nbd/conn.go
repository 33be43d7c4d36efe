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
	"sync"
	"syscall"
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

	// Negotiated during the handshake; fixed during transmission.
	export     *export // set under srv.mu
	noZeroes   bool
	structured bool
	meta       []uint32 // selected metadata context IDs
	metaExport string   // the export the selection was made for
	size       int64
	flags      uint16
	maxBlock   uint32

	wmu      sync.Mutex // serialises replies
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
	if err := c.handshake(); err != nil {
		if !errors.Is(err, errAbort) && !errors.Is(err, io.EOF) {
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
	sem := make(chan struct{}, workersPerConn)
	var hdr [28]byte
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return err
		}
		if m := be.Uint32(hdr[0:]); m != requestMagic {
			return fmt.Errorf("nbd: bad request magic %#x", m)
		}
		r := request{
			flags:  be.Uint16(hdr[4:]),
			typ:    be.Uint16(hdr[6:]),
			handle: be.Uint64(hdr[8:]),
			off:    be.Uint64(hdr[16:]),
			length: be.Uint32(hdr[24:]),
		}
		if r.typ == cmdDisc {
			return nil
		}
		if r.typ == cmdWrite && r.length > maxPayload {
			return fmt.Errorf("nbd: write of %d bytes is too large", r.length)
		}
		sem <- struct{}{}
		if r.typ == cmdWrite {
			r.data = getBuf(int(r.length))
			if _, err := io.ReadFull(c.br, r.data); err != nil {
				putBuf(r.data)
				<-sem
				return err
			}
		}
		c.inflight.Add(1)
		go func() {
			defer func() { <-sem; c.inflight.Done() }()
			if errno, msg := c.check(&r); errno != 0 {
				putBuf(r.data)
				c.replyError(&r, errno, msg, nil)
				return
			}
			c.handle(&r)
		}()
	}
}

// check validates a request against the negotiated export; it returns the
// error to send, or 0.
func (c *conn) check(r *request) (uint32, string) {
	allowed := uint16(cmdFlagFUA)
	writes := false
	switch r.typ {
	case cmdRead:
		if c.structured {
			allowed |= cmdFlagDF
		}
	case cmdWrite, cmdTrim:
		writes = true
	case cmdWriteZeroes:
		writes = true
		allowed |= cmdFlagNoHole | cmdFlagFastZero
	case cmdBlockStatus:
		allowed |= cmdFlagReqOne
	case cmdFlush, cmdCache:
	default:
		return errInval, fmt.Sprintf("unknown command %d", r.typ)
	}
	if r.flags&^allowed != 0 {
		return errInval, fmt.Sprintf("unsupported flags %#x for command %d", r.flags&^allowed, r.typ)
	}
	if writes && c.flags&flagReadOnly != 0 {
		return errPerm, "export is read-only"
	}
	if r.typ == cmdFlush {
		if r.off != 0 || r.length != 0 {
			return errInval, "flush with nonzero offset or length"
		}
		return 0, ""
	}
	size := uint64(c.size)
	if r.off > size || uint64(r.length) > size-r.off {
		if r.typ == cmdWrite || r.typ == cmdWriteZeroes {
			return errNoSpc, "request past the end of the export"
		}
		return errInval, "request past the end of the export"
	}
	if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > c.maxBlock {
		return errInval, "request larger than the maximum block size"
	}
	if r.typ == cmdBlockStatus {
		if !c.structured || len(c.meta) == 0 {
			return errInval, "no metadata context negotiated"
		}
		if r.length == 0 {
			return errInval, "block status of an empty range"
		}
	}
	return 0, ""
}

func (c *conn) handle(r *request) {
	ctx := c.ctx
	b := c.export.Backend
	off, length := int64(r.off), int64(r.length)
	fua := r.flags&cmdFlagFUA != 0
	var err error
	switch r.typ {
	case cmdRead:
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
	case cmdFlush:
		err = b.Flush(ctx)
	case cmdTrim:
		if length > 0 {
			err = b.Trim(ctx, off, length)
		}
		if err == nil && fua {
			err = b.Flush(ctx)
		}
	case cmdCache:
		if length > 0 {
			err = b.Cache(ctx, off, length)
		}
	case cmdWriteZeroes:
		if length > 0 {
			err = b.WriteZeroes(ctx, off, length, r.flags&cmdFlagNoHole == 0, r.flags&cmdFlagFastZero != 0)
		}
		if err == nil && fua {
			err = b.Flush(ctx)
		}
	}
	if err != nil {
		c.replyError(r, wireErrno(err), err.Error(), nil)
		return
	}
	c.replySimple(r.handle, 0, nil)
}

// read answers NBD_CMD_READ; with structured replies, zero extents of the
// backend go out as holes unless the client asked not to fragment.
func (c *conn) read(r *request) {
	b := c.export.Backend
	off, end := int64(r.off), int64(r.off)+int64(r.length)
	if !c.structured || r.flags&cmdFlagDF != 0 || r.length == 0 {
		buf := getBuf(int(r.length))
		defer putBuf(buf)
		if r.length > 0 {
			if err := b.ReadAt(c.ctx, buf, off); err != nil {
				c.replyError(r, wireErrno(err), err.Error(), &off)
				return
			}
		}
		if !c.structured {
			c.replySimple(r.handle, 0, buf)
		} else if r.length == 0 {
			c.chunk(r.handle, replyFlagDone, replyTypeNone, nil)
		} else {
			c.chunk(r.handle, replyFlagDone, replyTypeOffsetData, offsetPrefix(off), buf)
		}
		return
	}
	// pending holds the last chunk built, sent once we know whether it is final.
	type chunk struct {
		typ  uint16
		head []byte
		data []byte
	}
	var pending *chunk
	flush := func(flags uint16) {
		if pending != nil {
			c.chunk(r.handle, flags, pending.typ, pending.head, pending.data)
			putBuf(pending.data)
			pending = nil
		}
	}
	for pos := off; pos < end; {
		n := end - pos
		ext, err := b.BlockStatus(c.ctx, pos, n)
		zero := err == nil && ext.Zero && ext.Length > 0
		if err == nil && ext.Length > 0 && ext.Length < n {
			n = ext.Length
		}
		var ch chunk
		if zero {
			h := offsetPrefix(pos)
			h = be.AppendUint32(h, uint32(n))
			ch = chunk{typ: replyTypeOffsetHole, head: h}
		} else {
			buf := getBuf(int(n))
			if err := b.ReadAt(c.ctx, buf, pos); err != nil {
				putBuf(buf)
				flush(0)
				p := pos
				c.replyError(r, wireErrno(err), err.Error(), &p)
				return
			}
			ch = chunk{typ: replyTypeOffsetData, head: offsetPrefix(pos), data: buf}
		}
		flush(0)
		pending = &ch
		pos += n
	}
	flush(replyFlagDone)
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
			c.replyError(r, wireErrno(err), err.Error(), &off)
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
	h := make([]byte, 16)
	be.PutUint32(h, simpleReplyMagic)
	be.PutUint32(h[4:], errno)
	be.PutUint64(h[8:], handle)
	c.send(h, data)
}

// chunk sends one structured reply chunk whose payload is head+data.
func (c *conn) chunk(handle uint64, flags, typ uint16, head []byte, data ...[]byte) {
	n := len(head)
	for _, d := range data {
		n += len(d)
	}
	h := make([]byte, 20)
	be.PutUint32(h, structReplyMagic)
	be.PutUint16(h[4:], flags)
	be.PutUint16(h[6:], typ)
	be.PutUint64(h[8:], handle)
	be.PutUint32(h[16:], uint32(n))
	c.send(append([][]byte{h, head}, data...)...)
}

// replyError reports a failed request: a final error chunk with structured
// replies (with the offset when given), else a simple reply.
func (c *conn) replyError(r *request, errno uint32, msg string, off *int64) {
	if !c.structured {
		c.replySimple(r.handle, errno, nil)
		return
	}
	if len(msg) > maxStringLen {
		msg = msg[:maxStringLen]
	}
	p := make([]byte, 6, 6+len(msg)+8)
	be.PutUint32(p, errno)
	be.PutUint16(p[4:], uint16(len(msg)))
	p = append(p, msg...)
	typ := uint16(replyTypeError)
	if off != nil {
		typ = replyTypeErrorOffset
		p = be.AppendUint64(p, uint64(*off))
	}
	c.chunk(r.handle, replyFlagDone, typ, p)
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
