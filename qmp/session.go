package qmp

import (
	"bufio"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/internal/acceptretry"
)

// Server serves QMP on any number of listeners, each with any number of
// concurrent connections, all sharing one Dispatcher.
type Server struct {
	d   *Dispatcher
	v   VersionInfo
	log zerolog.Logger
	acc acceptor
}

// NewServer returns a QMP server for d that greets with v.
func NewServer(d *Dispatcher, v VersionInfo, log zerolog.Logger) *Server {
	return &Server{d: d, v: v, log: log}
}

// Serve accepts connections on l until l fails or the server is closed
// (then it returns nil).
func (s *Server) Serve(l net.Listener) error {
	return s.acc.serve(l, func(c net.Conn) { newSession(s, c).run() })
}

// Close stops every listener (removing unix socket files), ends every
// connection and waits for their goroutines. A connection stops reading at
// once but first writes what is queued for it, as QEMU's monitors flush
// their output at exit: the events of the jobs and exports a shutdown
// ended reach every client. A client that does not read gets closeGrace.
func (s *Server) Close() error { return s.acc.closeGently(closeGrace) }

// closeGrace is how long a closing server waits for a client to take
// what is queued for it.
const closeGrace = 5 * time.Second

// acceptor accepts connections on any number of listeners, runs a handler
// for each in its own goroutine and keeps track of them all so that close
// can end everything. The QMP and JSON-RPC servers share it.
type acceptor struct {
	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
}

func (a *acceptor) serve(l net.Listener, handle func(net.Conn)) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		l.Close()
		return nil
	}
	if a.listeners == nil {
		a.listeners, a.conns = map[net.Listener]struct{}{}, map[net.Conn]struct{}{}
	}
	a.listeners[l] = struct{}{}
	a.wg.Add(1)
	a.mu.Unlock()
	defer a.wg.Done()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			if c != nil {
				c.Close()
			}
			return nil
		}
		if err != nil {
			a.mu.Unlock()
			if !acceptretry.Temporary(err) {
				return err
			}
			// Out of descriptors (say, NBD clients hold them all) or
			// memory for now: keep the listener and try again shortly,
			// so that the monitor answers again once they are free.
			backoff = acceptretry.Next(backoff, 200*time.Millisecond)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		a.conns[c] = struct{}{}
		a.wg.Add(1)
		a.mu.Unlock()
		go func() {
			defer a.wg.Done()
			handle(c)
			c.Close()
			a.mu.Lock()
			delete(a.conns, c)
			a.mu.Unlock()
		}()
	}
}

func (a *acceptor) close() error {
	return a.shut(func(c net.Conn) { c.Close() })
}

// closeGently is close, except that each connection only stops reading
// (where it can) and its handler ends it after its output is written,
// within grace.
func (a *acceptor) closeGently(grace time.Duration) error {
	return a.shut(func(c net.Conn) {
		c.SetWriteDeadline(time.Now().Add(grace))
		if r, ok := c.(interface{ CloseRead() error }); !ok || r.CloseRead() != nil {
			c.Close()
		}
	})
}

// shut closes the listeners, ends each connection with end and waits for
// their handlers; it returns the first listener's close error.
func (a *acceptor) shut(end func(net.Conn)) error {
	a.mu.Lock()
	a.closed = true
	var first error
	for l := range a.listeners {
		if err := l.Close(); err != nil && first == nil {
			first = err
		}
	}
	for c := range a.conns {
		end(c)
	}
	a.mu.Unlock()
	a.wg.Wait()
	return first
}

// session is one QMP connection: greeting, negotiation, requests in order,
// out-of-band requests at once, events once negotiated.
type session struct {
	srv  *Server
	conn net.Conn
	log  zerolog.Logger

	// out is the session's one output queue, replies and events in the
	// order they happened; writer drains it.
	out   *outQueue
	wdone chan struct{}

	negotiated atomic.Bool
	oob        atomic.Bool
	unsub      func()
}

// queued is one parsed value, or the parse error that stands for it,
// waiting for the in-band worker.
type queued struct {
	v   any
	err *Error
}

// request is one checked request, or the error that replaces it.
type request struct {
	name  string
	args  any
	id    any
	hasID bool
	err   *Error
}

func newSession(s *Server, c net.Conn) *session {
	return &session{srv: s, conn: c, out: newOutQueue(), wdone: make(chan struct{}),
		log: s.log.With().Str("remote", c.RemoteAddr().String()).Logger()}
}

func (s *session) run() {
	s.log.Debug().Msg("QMP connection opened")
	defer s.log.Debug().Msg("QMP connection closed")
	go s.writer()
	s.greet()
	// As QEMU's monitor does, the reader runs a request at once only when
	// it has exec-oob and out-of-band execution is already enabled;
	// everything else, parse errors included, is queued and fully checked
	// when its turn comes, so that a request sent right behind
	// qmp_capabilities sees the capabilities it enabled.
	inband := make(chan queued, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for q := range inband {
			if q.err != nil {
				s.reply(request{}, nil, q.err)
				continue
			}
			r, oob := s.check(q.v)
			if oob && r.err == nil {
				s.executeOOB(r)
			} else {
				s.execute(r)
			}
		}
	}()
	dec := NewDecoder(s.conn)
	for {
		v, err := dec.Next()
		if err != nil {
			if IsParseError(err) {
				inband <- queued{err: AsError(err)}
				continue
			}
			break
		}
		if m, ok := v.(map[string]any); ok && s.oob.Load() {
			if _, ok := m["exec-oob"]; ok {
				r, oob := s.check(v)
				if oob && r.err == nil {
					s.executeOOB(r)
				} else {
					s.reply(r, nil, r.err)
				}
				continue
			}
		}
		inband <- queued{v: v}
	}
	close(inband)
	<-done
	if s.unsub != nil {
		s.unsub()
	}
	s.out.close()
	<-s.wdone
}

// writer writes queued lines, taking all that are queued at once and
// flushing when they are written, so a burst of replies or events costs
// few system calls.
func (s *session) writer() {
	defer close(s.wdone)
	w := bufio.NewWriterSize(s.conn, 64<<10)
	var spare []outLine
	for {
		lines := s.out.take(spare)
		if lines == nil {
			return
		}
		for _, l := range lines {
			w.Write(l.b)
			w.WriteString("\r\n")
		}
		err := w.Flush()
		for i, l := range lines {
			if l.done != nil {
				close(l.done)
			}
			lines[i] = outLine{}
		}
		if err != nil {
			s.out.markDead()
			s.conn.Close() // the reader notices and ends the session
			return
		}
		spare = lines
	}
}

func (s *session) greet() {
	v := s.srv.v
	b := []byte(`{"QMP": {"version": {"qemu": {"micro": `)
	b = appendInt(b, v.Micro)
	b = append(b, `, "minor": `...)
	b = appendInt(b, v.Minor)
	b = append(b, `, "major": `...)
	b = appendInt(b, v.Major)
	b = append(b, `}, "package": `...)
	b, _ = appendValue(b, v.Package)
	b = append(b, `}, "capabilities": ["oob"]}}`...)
	s.writeLine(b, nil)
}

func appendInt(b []byte, n int) []byte {
	out, _ := appendValue(b, n)
	return out
}

// check turns a parsed value into a request, with QEMU's errors for
// requests of the wrong shape. oob reports an exec-oob request.
func (s *session) check(v any) (r request, oob bool) {
	m, ok := v.(map[string]any)
	if !ok {
		return request{err: Errorf("QMP input must be a JSON object")}, false
	}
	r.id, r.hasID = m["id"]
	fail := func(format string, a ...any) (request, bool) {
		r.err = Errorf(format, a...)
		return r, false
	}
	// Members are checked in QEMU's order (see qdictOrder), so a request
	// with several faults is blamed for the same one as by QEMU.
	oobOK := s.oob.Load()
	var execKey string
	for _, k := range qdictOrder(m) {
		v := m[k]
		switch {
		case k == "execute" || (k == "exec-oob" && oobOK):
			name, ok := v.(string)
			if !ok {
				return fail("QMP input member '%s' must be a string", k)
			}
			if execKey != "" {
				return fail("QMP input member '%s' clashes with '%s'", k, execKey)
			}
			execKey, r.name = k, name
		case k == "arguments":
			if _, ok := v.(map[string]any); !ok {
				return fail("QMP input member 'arguments' must be an object")
			}
			r.args = v
		case k == "id":
		default:
			return fail("QMP input member '%s' is unexpected", k)
		}
	}
	if execKey == "" {
		return fail("QMP input lacks member 'execute'")
	}
	return r, execKey == "exec-oob"
}

// negotiate implements qmp_capabilities for this session.
func (s *session) negotiate(enable []string) *Error {
	if s.negotiated.Load() {
		return NewError(ClassCommandNotFound, "Capabilities negotiation is already complete, command ignored")
	}
	for _, c := range enable {
		if c == "oob" {
			s.oob.Store(true)
		}
	}
	s.negotiated.Store(true)
	s.unsub = s.srv.d.SubscribeFunc(s.writeEvent)
	return nil
}

func (s *session) execute(r request) {
	if r.err != nil {
		s.reply(r, nil, r.err)
		return
	}
	if !s.negotiated.Load() && r.name != "qmp_capabilities" {
		s.reply(r, nil, NewError(ClassCommandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'"))
		return
	}
	var after []func()
	ctx := context.WithValue(context.Background(), negotiatorKey{}, negotiator(s))
	ctx = context.WithValue(ctx, afterReplyKey{}, func(f func()) { after = append(after, f) })
	res, err := s.srv.d.Execute(ctx, Request{Name: r.name, Args: r.args, ID: r.id, Origin: "qmp"})
	if len(after) == 0 {
		s.reply(r, res, err)
		return
	}
	// Work that must follow the reply (quit) waits until the reply is on
	// the wire: shutting down closes the connection.
	flushed := make(chan struct{})
	s.replyThen(r, res, err, flushed)
	<-flushed
	for _, f := range after {
		f()
	}
}

func (s *session) executeOOB(r request) {
	d := s.srv.d
	switch {
	case !d.HasCommand(r.name):
		s.reply(r, nil, NewError(ClassCommandNotFound, "The command %s has not been found", r.name))
	case !d.AllowOOB(r.name):
		s.reply(r, nil, Errorf("The command %s does not support OOB", r.name))
	default:
		res, err := d.Execute(context.Background(), Request{Name: r.name, Args: r.args, ID: r.id, Origin: "qmp"})
		s.reply(r, res, err)
	}
}

// reply queues a reply with members in QEMU's order.
func (s *session) reply(r request, res any, e *Error) { s.replyThen(r, res, e, nil) }

// replyThen queues a reply; done (if not nil) is closed once it is
// flushed to the connection.
func (s *session) replyThen(r request, res any, e *Error, done chan struct{}) {
	var b []byte
	if e != nil {
		b = append(b, '{')
		if r.hasID {
			b = append(b, `"id": `...)
			b = appendID(b, r.id)
			b = append(b, ", "...)
		}
		b = append(b, `"error": {"class": `...)
		b, _ = appendValue(b, e.Class)
		b = append(b, `, "desc": `...)
		b, _ = appendValue(b, e.Desc)
		b = append(b, "}}"...)
	} else {
		b = append(b, `{"return": `...)
		var err error
		if b, err = appendValue(b, res); err != nil {
			s.log.Error().Err(err).Str("command", r.name).Msg("cannot encode reply")
			b = append(b[:0], `{"return": `...)
			b = append(b, "{}"...)
		}
		if r.hasID {
			b = append(b, `, "id": `...)
			b = appendID(b, r.id)
		}
		b = append(b, '}')
	}
	s.writeLine(b, done)
}

// appendID appends an echoed id as QEMU prints it. An id that cannot be
// printed (it came from the parser, so this does not happen) becomes null
// rather than costing the client its reply.
func appendID(b []byte, id any) []byte {
	out, err := appendTree(b, id)
	if err != nil {
		return append(b, "null"...)
	}
	return out
}

func (s *session) writeEvent(ev Event) {
	us := ev.Time.UnixMicro()
	b := []byte(`{"timestamp": {"seconds": `)
	b = appendInt(b, int(us/1e6))
	b = append(b, `, "microseconds": `...)
	b = appendInt(b, int(us%1e6))
	b = append(b, `}, "event": `...)
	b, _ = appendValue(b, ev.Name)
	if ev.Data != nil {
		b = append(b, `, "data": `...)
		var err error
		if b, err = appendValue(b, ev.Data); err != nil {
			s.log.Error().Err(err).Str("event", ev.Name).Msg("cannot encode event")
			return
		}
	}
	b = append(b, '}')
	s.queueEvent(b, ev.Name)
}

// writeLine queues a reply. It waits while much output is queued (the
// client reads slowly), which holds back this session's next command only.
func (s *session) writeLine(b []byte, done chan struct{}) {
	s.out.reply(outLine{b: b, done: done})
}

// queueEvent queues an event without ever blocking the emitter and without
// ever dropping it: a client so far behind that its backlog passes
// maxBacklog is disconnected instead, and the log says so.
func (s *session) queueEvent(b []byte, name string) {
	if ok, backlog, lines := s.out.event(b); !ok {
		s.log.Warn().Str("event", name).Int("backlog_bytes", backlog).Int("backlog_lines", lines).
			Msg("QMP client too far behind reading events; closing its connection")
		s.conn.Close()
	}
}
