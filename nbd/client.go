package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// The client: requests go out on one connection, each under a cookie of
// its own, and one reader goroutine per connection hands the replies to
// the requests they answer, in whatever order the server sends them.
//
// When the connection breaks (the server went away), the client connects
// again in the background, as QEMU's does: during ReconnectDelay after the
// break, requests wait for the new connection (those in flight are sent
// again on it); after it, they fail at once with EIO until a connection is
// back. A server that breaks the protocol is not reconnected to: its
// requests fail with EINVAL, and every later one with EIO.

// ClientOptions configure a Client.
type ClientOptions struct {
	// Dial connects to the server, for the first connection and every
	// reconnection. Its errors are reported as they are.
	Dial func(ctx context.Context) (net.Conn, error)
	// Export is the name of the export to attach to.
	Export string
	// MetaContext is the metadata context BlockStatus reads
	// ("base:allocation", or "qemu:dirty-bitmap:NAME"); "" for none.
	MetaContext string
	// ReconnectDelay: how long requests wait for a new connection after
	// the old one broke (0: they fail at once).
	ReconnectDelay time.Duration
	// OpenTimeout: how long Connect keeps trying (0: one attempt).
	OpenTimeout time.Duration
	Log         zerolog.Logger
}

// Client errors.
var (
	// ErrDisconnected: the client has no connection to the server.
	ErrDisconnected = fmt.Errorf("nbd: not connected to the server: %w", syscall.EIO)
	// errConnLost marks a request that failed because its connection
	// broke; it may be sent again on a new one.
	errConnLost = fmt.Errorf("nbd: connection to the server lost: %w", syscall.EIO)
)

// RequestError is the server's error reply to a request.
type RequestError struct {
	Errno   syscall.Errno
	Message string
}

func (e *RequestError) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("nbd: server error %d (%s): %s", int(e.Errno), e.Errno, e.Message)
	}
	return fmt.Sprintf("nbd: server error %d (%s)", int(e.Errno), e.Errno)
}
func (e *RequestError) Unwrap() error { return e.Errno }

// ProtocolError is a reply that breaks the protocol; the connection is
// dropped and not made again.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "nbd: protocol error: " + e.Msg }
func (e *ProtocolError) Unwrap() error { return syscall.EINVAL }

func protoErr(format string, args ...any) error {
	return &ProtocolError{Msg: fmt.Sprintf(format, args...)}
}

// systemErrno maps a protocol error value to the errno it stands for;
// unknown values are EINVAL, as in QEMU.
func systemErrno(v uint32) syscall.Errno {
	switch v {
	case errPerm:
		return syscall.EPERM
	case errIO:
		return syscall.EIO
	case errNoMem:
		return syscall.ENOMEM
	case errNoSpc:
		return syscall.ENOSPC
	case errOverflow:
		return syscall.EOVERFLOW
	case errNotSup:
		return syscall.ENOTSUP
	case errShutdown:
		return syscall.ESHUTDOWN
	}
	return syscall.EINVAL
}

// Client states.
const (
	stateConnected = iota
	stateWaiting   // reconnecting; requests wait until the deadline
	stateNoWait    // reconnecting; requests fail
	stateQuit      // the server broke the protocol, or Close was called
)

// Client is a connection to one export of an NBD server.
type Client struct {
	opts ClientOptions
	info ExportInfo // of the first connection

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	mu        sync.Mutex
	cc        *clientConn // nil when not connected
	state     int
	deadline  time.Time     // end of stateWaiting
	changed   chan struct{} // closed and replaced at every state change
	retrying  bool          // the reconnect goroutine runs
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// Connect connects to the server and negotiates the export, trying again
// until OpenTimeout has passed.
func Connect(ctx context.Context, opts ClientOptions) (*Client, error) {
	c := &Client{opts: opts, changed: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	var deadline time.Time
	if opts.OpenTimeout > 0 {
		// The timeout also bounds an attempt that hangs (a server that
		// accepts and says nothing).
		deadline = time.Now().Add(opts.OpenTimeout)
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	wait := time.Second
	var last error // the error to report: the last attempt's not cut short
	for {
		cc, err := c.dial(ctx)
		if err == nil {
			c.mu.Lock()
			c.info, c.cc = cc.info, cc
			c.mu.Unlock()
			go cc.readLoop()
			return c, nil
		}
		if last == nil || deadline.IsZero() || time.Now().Before(deadline) {
			last = err
		}
		left := time.Until(deadline)
		if deadline.IsZero() || left <= 0 {
			c.cancel()
			return nil, last
		}
		t := time.NewTimer(min(wait, left))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			c.cancel()
			return nil, last
		}
		if time.Until(deadline) <= 0 {
			c.cancel()
			return nil, last
		}
		wait = min(wait*2, 16*time.Second)
	}
}

// dial makes one connection and negotiates on it.
func (c *Client) dial(ctx context.Context) (*clientConn, error) {
	nc, err := c.opts.Dial(ctx)
	if err != nil {
		return nil, err
	}
	info, br, err := clientHandshake(ctx, nc, c.opts.Export, c.opts.MetaContext)
	if err != nil {
		nc.Close()
		return nil, err
	}
	// The caller starts the reader once the connection is installed.
	cc := &clientConn{nc: nc, br: br, info: info, pending: map[uint64]*pending{}, done: make(chan struct{}), owner: c}
	return cc, nil
}

// Info returns what the handshake told about the export.
func (c *Client) Info() ExportInfo { return c.info }

// Close disconnects (with NBD_CMD_DISC when connected) and stops
// reconnecting. Requests still waiting fail.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		cc := c.cc
		c.cc = nil
		c.setState(stateQuit)
		c.mu.Unlock()
		c.cancel()
		if cc != nil {
			cc.disconnect()
		}
		c.wg.Wait()
	})
	return nil
}

// setState changes the state and wakes whoever waits for a change.
// Caller holds c.mu.
func (c *Client) setState(s int) {
	c.state = s
	close(c.changed)
	c.changed = make(chan struct{})
}

// conn returns the connection to send a request on, waiting for one
// during the reconnect delay.
func (c *Client) conn(ctx context.Context) (*clientConn, error) {
	for {
		c.mu.Lock()
		switch c.state {
		case stateConnected:
			cc := c.cc
			c.mu.Unlock()
			return cc, nil
		case stateWaiting:
			left := time.Until(c.deadline)
			if left <= 0 {
				c.setState(stateNoWait)
				c.mu.Unlock()
				return nil, ErrDisconnected
			}
			ch := c.changed
			c.mu.Unlock()
			t := time.NewTimer(left)
			select {
			case <-ch:
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, ErrDisconnected
			}
			t.Stop()
			continue
		}
		c.mu.Unlock()
		return nil, ErrDisconnected
	}
}

// lost is called by a connection that broke with err.
func (c *Client) lost(cc *clientConn, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cc != cc || c.state == stateQuit {
		return
	}
	c.cc = nil
	var pe *ProtocolError
	if errors.As(err, &pe) {
		c.opts.Log.Warn().Err(err).Msg("nbd: the server broke the protocol; disconnected")
		c.setState(stateQuit)
		return
	}
	c.opts.Log.Info().Err(err).Msg("nbd: connection to the server lost; reconnecting")
	if c.opts.ReconnectDelay > 0 {
		c.deadline = time.Now().Add(c.opts.ReconnectDelay)
		c.setState(stateWaiting)
	} else {
		c.setState(stateNoWait)
	}
	if !c.retrying {
		c.retrying = true
		c.wg.Add(1)
		go c.reconnect()
	}
}

// reconnect connects again until it succeeds or the client closes,
// waiting 1, 2, 4, ... 16 seconds between attempts, as QEMU does.
func (c *Client) reconnect() {
	defer c.wg.Done()
	wait := time.Second
	for {
		cc, err := c.dial(c.ctx)
		if err == nil && (cc.info.Size != c.info.Size || cc.info.ReadOnly() && !c.info.ReadOnly()) {
			err = errors.New("nbd: the export changed its size or became read-only")
			_ = cc.nc.Close()
		}
		if err == nil {
			c.mu.Lock()
			c.retrying = false
			if c.state == stateQuit {
				c.mu.Unlock()
				_ = cc.nc.Close()
				return
			}
			c.cc = cc
			c.setState(stateConnected)
			c.mu.Unlock()
			go cc.readLoop()
			c.opts.Log.Info().Msg("nbd: reconnected to the server")
			return
		}
		c.opts.Log.Debug().Err(err).Msg("nbd: reconnect attempt failed")
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			c.mu.Lock()
			c.retrying = false
			c.mu.Unlock()
			return
		}
		wait = min(wait*2, 16*time.Second)
	}
}

// do sends a request, waits for its reply and returns the request's
// outcome, sending it again on a new connection if its connection broke
// while requests may wait for one.
func (c *Client) do(ctx context.Context, r *pending) error {
	for {
		cc, err := c.conn(ctx)
		if err != nil {
			return err
		}
		err = cc.do(r)
		if !errors.Is(err, errConnLost) {
			return err
		}
		r.reset()
	}
}

// request builds a request; reads carry their destination.
func newPending(typ, flags uint16, off int64, length uint32, data []byte) *pending {
	return &pending{typ: typ, flags: flags, off: uint64(off), length: length, data: data}
}

// maxRequest is the largest length one request carries here: reads and
// writes to the interoperable payload limit, other commands to what
// QEMU sends (INT_MAX rounded down to 64 KiB, a multiple of every block size).
const maxRequestLen = 1<<31 - 1<<16

// Read reads len(p) bytes at off.
func (c *Client) Read(ctx context.Context, off int64, p []byte) error {
	for len(p) > 0 {
		n := min(len(p), maxPayload)
		r := newPending(cmdRead, 0, off, uint32(n), nil)
		r.buf = p[:n]
		if err := c.do(ctx, r); err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// Write writes p at off; fua asks the server to make it stable first.
func (c *Client) Write(ctx context.Context, off int64, p []byte, fua bool) error {
	var flags uint16
	if fua {
		flags = cmdFlagFUA
	}
	for len(p) > 0 {
		n := min(len(p), maxPayload)
		if err := c.do(ctx, newPending(cmdWrite, flags, off, uint32(n), p[:n])); err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// span sends typ for [off, off+n) in requests of at most limit bytes.
func (c *Client) span(ctx context.Context, typ, flags uint16, off, n, limit int64) error {
	for n > 0 {
		k := min(n, limit)
		if err := c.do(ctx, newPending(typ, flags, off, uint32(k), nil)); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// WriteZeroes zeroes [off, off+n): with mayTrim the server may punch a
// hole (otherwise NBD_CMD_FLAG_NO_HOLE), with fastZero it must fail with
// ENOTSUP rather than zero slowly.
func (c *Client) WriteZeroes(ctx context.Context, off, n int64, mayTrim, fastZero, fua bool) error {
	var flags uint16
	if !mayTrim {
		flags |= cmdFlagNoHole
	}
	if fastZero {
		flags |= cmdFlagFastZero
	}
	if fua {
		flags |= cmdFlagFUA
	}
	return c.span(ctx, cmdWriteZeroes, flags, off, n, maxRequestLen)
}

// Trim tells the server [off, off+n) is not needed any more.
func (c *Client) Trim(ctx context.Context, off, n int64, fua bool) error {
	var flags uint16
	if fua {
		flags = cmdFlagFUA
	}
	return c.span(ctx, cmdTrim, flags, off, n, maxRequestLen)
}

// Cache asks the server to cache [off, off+n).
func (c *Client) Cache(ctx context.Context, off, n int64) error {
	return c.span(ctx, cmdCache, 0, off, n, maxRequestLen)
}

// Flush makes the completed writes stable.
func (c *Client) Flush(ctx context.Context) error {
	return c.do(ctx, newPending(cmdFlush, 0, 0, 0, nil))
}

// BlockStatus returns the status of a prefix of [off, off+n) in the
// negotiated metadata context (asked with NBD_CMD_FLAG_REQ_ONE): the
// context's flag bit 0 as Hole, bit 1 as Zero (a dirty-bitmap context's
// dirty flag is bit 0). Without a negotiated context the whole range is
// data.
func (c *Client) BlockStatus(ctx context.Context, off, n int64) (Extent, error) {
	if !c.info.MetaContext {
		return Extent{Length: n}, nil
	}
	n = min(n, maxRequestLen)
	r := newPending(cmdBlockStatus, cmdFlagReqOne, off, uint32(n), nil)
	r.ctxID = c.info.ContextID
	if err := c.do(ctx, r); err != nil {
		return Extent{}, err
	}
	l := int64(r.ext[0])
	if lo := int64(c.info.MinBlock); lo > 1 && l%lo != 0 {
		// A server reporting unaligned extents (as QEMU's client puts up
		// with): a longer one is cut to the alignment, a shorter one
		// taken as allocated data.
		if l > lo {
			l -= l % lo
		} else {
			l, r.ext[1] = lo, 0
		}
	}
	return Extent{Length: min(l, n), Hole: r.ext[1]&stateHole != 0, Zero: r.ext[1]&stateZero != 0}, nil
}

// pending is one request and, once answered, its outcome.
type pending struct {
	typ, flags uint16
	off        uint64
	length     uint32
	data       []byte // a write's payload
	buf        []byte // a read's destination
	ctxID      uint32 // block status: the context to expect

	ch     chan struct{} // closed when answered
	err    error         // the request's error
	ext    [2]uint32     // block status: the first extent
	gotExt bool
}

func (r *pending) reset() {
	r.ch, r.err, r.gotExt = nil, nil, false
}

// clientConn is one connection in transmission.
type clientConn struct {
	nc    net.Conn
	br    *bufio.Reader
	info  ExportInfo
	owner *Client

	wmu sync.Mutex // serialises requests on the wire

	mu      sync.Mutex
	pending map[uint64]*pending
	cookie  uint64
	err     error         // set once the connection broke
	done    chan struct{} // closed when the reader has ended
}

// do sends r and waits for its reply. A broken connection fails r with
// an error wrapping errConnLost or a *ProtocolError.
func (cc *clientConn) do(r *pending) error {
	r.ch = make(chan struct{})
	cc.mu.Lock()
	if cc.err != nil {
		err := cc.err
		cc.mu.Unlock()
		return err
	}
	cc.cookie++
	cookie := cc.cookie
	cc.pending[cookie] = r
	cc.mu.Unlock()

	hdr := make([]byte, 28)
	be.PutUint32(hdr, requestMagic)
	be.PutUint16(hdr[4:], r.flags)
	be.PutUint16(hdr[6:], r.typ)
	be.PutUint64(hdr[8:], cookie)
	be.PutUint64(hdr[16:], r.off)
	be.PutUint32(hdr[24:], r.length)
	bufs := net.Buffers{hdr}
	if len(r.data) > 0 {
		bufs = append(bufs, r.data)
	}
	cc.wmu.Lock()
	_, err := bufs.WriteTo(cc.nc)
	cc.wmu.Unlock()
	if err != nil {
		// The reader, stopped by the close, fails every request
		// waiting (it may be filling one's buffer right now).
		_ = cc.nc.Close()
	}
	<-r.ch
	return r.err
}

// disconnect sends NBD_CMD_DISC and closes the connection.
func (cc *clientConn) disconnect() {
	hdr := make([]byte, 28)
	be.PutUint32(hdr, requestMagic)
	be.PutUint16(hdr[6:], cmdDisc)
	cc.wmu.Lock()
	_ = cc.nc.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = cc.nc.Write(hdr)
	cc.wmu.Unlock()
	_ = cc.nc.Close()
	<-cc.done
}

// fail breaks the connection: every request waiting on it fails with err.
// Only the reader calls it, once it stopped reading.
func (cc *clientConn) fail(err error) {
	cc.mu.Lock()
	cc.err = err
	cc.mu.Unlock()
	_ = cc.nc.Close()
	// The client's state changes before the requests learn of the
	// failure, so that what they do next sees the new state.
	cc.owner.lost(cc, err)
	cc.mu.Lock()
	for k, r := range cc.pending {
		r.err = err
		close(r.ch)
		delete(cc.pending, k)
	}
	cc.mu.Unlock()
}

// take removes the request under cookie from those waiting.
func (cc *clientConn) take(cookie uint64) *pending {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	r := cc.pending[cookie]
	delete(cc.pending, cookie)
	return r
}

func (cc *clientConn) lookup(cookie uint64) *pending {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.pending[cookie]
}

func (cc *clientConn) readLoop() {
	defer close(cc.done)
	err := cc.readReplies()
	var pe *ProtocolError
	if !errors.As(err, &pe) {
		err = fmt.Errorf("%w: %v", errConnLost, err)
	}
	cc.fail(err)
}

// Bounds of the payloads the reader accepts besides read data.
const (
	maxErrorPayload  = 6 + maxStringLen
	maxStatusPayload = 4 + 8*(1<<16)
)

// readReplies reads replies until the connection breaks or the server
// breaks the protocol.
func (cc *clientConn) readReplies() error {
	var hdr [20]byte
	for {
		if _, err := io.ReadFull(cc.br, hdr[:4]); err != nil {
			return err
		}
		switch m := be.Uint32(hdr[:]); m {
		case simpleReplyMagic:
			if _, err := io.ReadFull(cc.br, hdr[4:16]); err != nil {
				return err
			}
			if err := cc.simple(be.Uint32(hdr[4:]), be.Uint64(hdr[8:])); err != nil {
				return err
			}
		case structReplyMagic:
			if _, err := io.ReadFull(cc.br, hdr[4:20]); err != nil {
				return err
			}
			if !cc.info.Structured {
				return protoErr("unexpected structured reply")
			}
			if err := cc.chunk(be.Uint16(hdr[4:]), be.Uint16(hdr[6:]), be.Uint64(hdr[8:]), be.Uint32(hdr[16:])); err != nil {
				return err
			}
		default:
			return protoErr("invalid reply magic 0x%x", m)
		}
	}
}

func (cc *clientConn) simple(errno uint32, cookie uint64) error {
	r := cc.lookup(cookie)
	if r == nil {
		return protoErr("unexpected cookie value %d", cookie)
	}
	if r.typ == cmdRead && cc.info.Structured && errno == 0 {
		return protoErr("simple reply when structured reply chunk was expected")
	}
	if r.typ == cmdBlockStatus && errno == 0 {
		return protoErr("simple reply to a block status request")
	}
	if errno != 0 {
		r.err = &RequestError{Errno: systemErrno(errno)}
	} else if r.typ == cmdRead {
		if _, err := io.ReadFull(cc.br, r.buf); err != nil {
			return err
		}
	}
	cc.complete(cookie)
	return nil
}

// complete answers the request under cookie.
func (cc *clientConn) complete(cookie uint64) {
	if r := cc.take(cookie); r != nil {
		close(r.ch)
	}
}

func (cc *clientConn) chunk(flags, typ uint16, cookie uint64, length uint32) error {
	r := cc.lookup(cookie)
	if r == nil {
		return protoErr("unexpected cookie value %d", cookie)
	}
	switch {
	case typ == replyTypeNone:
		if flags&replyFlagDone == 0 || length != 0 {
			return protoErr("NBD_REPLY_TYPE_NONE chunk without the done flag or with a payload")
		}
	case typ == replyTypeOffsetData:
		if r.typ != cmdRead {
			return protoErr("unexpected NBD_REPLY_TYPE_OFFSET_DATA chunk")
		}
		if length <= 8 {
			return protoErr("invalid payload for NBD_REPLY_TYPE_OFFSET_DATA")
		}
		if length-8 > r.length {
			return protoErr("server sent chunk exceeding requested region")
		}
		var p [8]byte
		if _, err := io.ReadFull(cc.br, p[:]); err != nil {
			return err
		}
		off, n := be.Uint64(p[:]), uint64(length-8)
		if off < r.off || n > uint64(r.length) || off-r.off > uint64(r.length)-n {
			return protoErr("server sent chunk exceeding requested region")
		}
		if _, err := io.ReadFull(cc.br, r.buf[off-r.off:off-r.off+n]); err != nil {
			return err
		}
	case typ == replyTypeOffsetHole:
		if r.typ != cmdRead {
			return protoErr("unexpected NBD_REPLY_TYPE_OFFSET_HOLE chunk")
		}
		if length != 12 {
			return protoErr("invalid payload for NBD_REPLY_TYPE_OFFSET_HOLE")
		}
		var p [12]byte
		if _, err := io.ReadFull(cc.br, p[:]); err != nil {
			return err
		}
		off, n := be.Uint64(p[:]), uint64(be.Uint32(p[8:]))
		if n == 0 || off < r.off || n > uint64(r.length) || off-r.off > uint64(r.length)-n {
			return protoErr("server sent chunk exceeding requested region")
		}
		clear(r.buf[off-r.off : off-r.off+n])
	case typ == replyTypeBlockStatus:
		if r.typ != cmdBlockStatus {
			return protoErr("unexpected NBD_REPLY_TYPE_BLOCK_STATUS chunk")
		}
		if length < 12 || length > maxStatusPayload || (length-4)%8 != 0 {
			return protoErr("invalid payload for NBD_REPLY_TYPE_BLOCK_STATUS")
		}
		p := make([]byte, length)
		if _, err := io.ReadFull(cc.br, p); err != nil {
			return err
		}
		if id := be.Uint32(p); id != r.ctxID {
			return protoErr("unexpected context id %d for NBD_REPLY_TYPE_BLOCK_STATUS, when negotiated context id is %d", id, r.ctxID)
		}
		if r.gotExt {
			return protoErr("several NBD_REPLY_TYPE_BLOCK_STATUS chunks for one context")
		}
		if be.Uint32(p[4:]) == 0 {
			return protoErr("server sent status chunk with zero length")
		}
		// Extents after the first (the request asked for one) and
		// beyond the request are ignored, as QEMU does.
		r.ext = [2]uint32{min(be.Uint32(p[4:]), r.length), be.Uint32(p[8:])}
		r.gotExt = true
	case typ&(1<<15) != 0:
		if length < 6 || length > maxErrorPayload+8 {
			return protoErr("invalid payload for structured error")
		}
		p := make([]byte, length)
		if _, err := io.ReadFull(cc.br, p); err != nil {
			return err
		}
		errno := be.Uint32(p)
		if errno == 0 {
			return protoErr("server sent structured error chunk with error = 0")
		}
		msgLen := uint32(be.Uint16(p[4:]))
		if msgLen > length-6 {
			return protoErr("server sent structured error chunk with incorrect message size")
		}
		if typ == replyTypeErrorOffset && length-6-msgLen != 8 {
			return protoErr("invalid payload for NBD_REPLY_TYPE_ERROR_OFFSET")
		}
		if r.err == nil {
			r.err = &RequestError{Errno: systemErrno(errno), Message: string(p[6 : 6+msgLen])}
		}
	default:
		return protoErr("unexpected reply type %d", typ)
	}
	if flags&replyFlagDone != 0 {
		if r.typ == cmdBlockStatus && r.err == nil && !r.gotExt {
			r.err = &RequestError{Errno: syscall.EIO, Message: "server did not reply with any status extents"}
		}
		cc.complete(cookie)
	}
	return nil
}
