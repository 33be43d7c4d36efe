package nbd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/internal/acceptretry"
)

// Export is one named export of a Server.
type Export struct {
	// Name is the name clients ask for; "" is a valid name like any other.
	Name string
	// Description is sent with NBD_OPT_LIST and NBD_INFO_DESCRIPTION.
	Description string
	// DescriptionSet sends NBD_INFO_DESCRIPTION even when Description is
	// empty: QEMU sends one whenever the export was given a description,
	// "" included.
	DescriptionSet bool
	// Backend serves the data.
	Backend Backend
	// Writable lets clients write; the export is also read-only when the
	// Backend says so.
	Writable bool
	// AllocationDepth offers the qemu:allocation-depth metadata context.
	AllocationDepth bool
	// Bitmaps are offered as qemu:dirty-bitmap:NAME contexts; the Backend
	// must be a BitmapBackend, asked by index into this list.
	Bitmaps []string
}

// Errors returned by Server methods.
var (
	ErrExportExists = errors.New("nbd: export already exists")
	ErrNoExport     = errors.New("nbd: no such export")
	ErrExportInUse  = errors.New("nbd: export is still in use")
	ErrServerClosed = errors.New("nbd: server closed")
)

// export is an Export with the connections that use it.
type export struct {
	*Export
	clients map[*conn]struct{}
	removed bool
}

// Server serves exports to NBD clients. Its zero value is not usable; call
// NewServer. Exports can be added and removed while it serves.
type Server struct {
	// MaxConnections limits the clients connected at once (0: no limit).
	// At the limit the server stops accepting: further clients wait in the
	// listen backlog until one leaves, as with QEMU's server, and use no
	// descriptor of the process meanwhile. Set it before Serve.
	MaxConnections int
	// HandshakeTimeout disconnects a client that has not finished
	// negotiating within it (0: no limit). Set it before Serve.
	HandshakeTimeout time.Duration
	// OnExportDeleted, when set, is called (without locks held) once a
	// removed export has no client left, which may be within RemoveExport.
	OnExportDeleted func(name string)

	log zerolog.Logger

	mu        sync.Mutex
	exports   map[string]*export
	order     []string // export names in the order they were added
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closed    bool
	done      chan struct{} // closed by Close
	slots     *sync.Cond    // signalled when a client leaves or the server closes
	wg        sync.WaitGroup
}

// NewServer returns a server with no exports.
func NewServer(log zerolog.Logger) *Server {
	s := &Server{
		log:       log,
		exports:   map[string]*export{},
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
		done:      make(chan struct{}),
	}
	s.slots = sync.NewCond(&s.mu)
	return s
}

// AddExport starts serving e. The name must be unique and at most 4096 bytes.
func (s *Server) AddExport(e *Export) error {
	if e == nil || e.Backend == nil {
		return errors.New("nbd: export without backend")
	}
	if len(e.Name) > maxStringLen {
		return fmt.Errorf("nbd: export name longer than %d bytes", maxStringLen)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrServerClosed
	}
	if _, ok := s.exports[e.Name]; ok {
		return fmt.Errorf("%w: %q", ErrExportExists, e.Name)
	}
	s.exports[e.Name] = &export{Export: e, clients: map[*conn]struct{}{}}
	s.order = append(s.order, e.Name)
	return nil
}

// RemoveExport stops offering the named export to new clients. Without hard,
// it fails with ErrExportInUse while clients use the export; with hard, it
// disconnects them. OnExportDeleted is called once the last client is gone.
func (s *Server) RemoveExport(name string, hard bool) error {
	s.mu.Lock()
	ex, ok := s.exports[name]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrNoExport, name)
	}
	if len(ex.clients) > 0 && !hard {
		s.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrExportInUse, name)
	}
	delete(s.exports, name)
	for i, n := range s.order {
		if n == name {
			s.order = append(s.order[:i], s.order[i+1:]...)
			break
		}
	}
	ex.removed = true
	var victims []*conn
	for c := range ex.clients {
		victims = append(victims, c)
	}
	cb := s.OnExportDeleted
	s.mu.Unlock()
	if len(victims) == 0 {
		if cb != nil {
			cb(name)
		}
		return nil
	}
	for _, c := range victims {
		c.shutdown()
	}
	return nil
}

// ExportNames lists the exports offered to new clients, in the order added.
func (s *Server) ExportNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.order...)
}

// Clients returns how many clients use the named export (0 if unknown).
func (s *Server) Clients(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ex, ok := s.exports[name]; ok {
		return len(ex.clients)
	}
	return 0
}

// Serve accepts clients on l until l fails or the server is closed; after
// Close it returns nil, also when Close came first (l is closed then).
// Serve may be called for several listeners.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	backoff := time.Duration(0)
	for {
		if !s.waitSlot() {
			return nil
		}
		nc, err := l.Accept()
		if err != nil {
			if s.isClosed() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if !acceptretry.Temporary(err) {
				return err
			}
			// Out of descriptors or memory for now: wait and try again,
			// longer each time, rather than spin or stop serving.
			backoff = acceptretry.Next(backoff, time.Second)
			s.log.Warn().Err(err).Dur("retry_in", backoff).Msg("nbd: cannot accept a client")
			select {
			case <-time.After(backoff):
			case <-s.done:
				return nil
			}
			continue
		}
		backoff = 0
		s.serveConn(nc)
	}
}

// waitSlot waits until the server has room for another client; false when
// it closed meanwhile.
func (s *Server) waitSlot() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for !s.closed && s.MaxConnections > 0 && len(s.conns) >= s.MaxConnections {
		s.slots.Wait()
	}
	return !s.closed
}

// sendBuffer is the socket send buffer asked for each client.
const sendBuffer = 4 << 20

// serveConn registers a client and runs it in its own goroutine, or closes
// it when the server is full or closed.
func (s *Server) serveConn(nc net.Conn) {
	s.mu.Lock()
	if s.closed || (s.MaxConnections > 0 && len(s.conns) >= s.MaxConnections) {
		s.mu.Unlock()
		s.log.Debug().Str("remote", nc.RemoteAddr().String()).Msg("nbd: refusing client")
		_ = nc.Close()
		return
	}
	// A send buffer that holds several maximum-size replies lets reads
	// stream ahead of the client instead of stopping at every reply (the
	// default is about 200 KiB, less than one 256 KiB read). The kernel
	// caps it at net.core.wmem_max.
	if b, ok := nc.(interface{ SetWriteBuffer(int) error }); ok {
		_ = b.SetWriteBuffer(sendBuffer)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{srv: s, nc: nc, ctx: ctx, cancel: cancel}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		c.run()
		s.dropConn(c)
	}()
}

// attach binds c to the named export for transmission; nil if it is gone.
func (s *Server) attach(c *conn, name string) *export {
	s.mu.Lock()
	defer s.mu.Unlock()
	ex, ok := s.exports[name]
	if !ok || s.closed {
		return nil
	}
	ex.clients[c] = struct{}{}
	c.export = ex
	return ex
}

// lookup returns the named export offered to new clients.
func (s *Server) lookup(name string) *export {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exports[name]
}

// list returns the offered exports in order.
func (s *Server) list() []*export {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*export, 0, len(s.order))
	for _, n := range s.order {
		out = append(out, s.exports[n])
	}
	return out
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// dropConn forgets a finished client and reports a removed export whose
// last client it was.
func (s *Server) dropConn(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.slots.Broadcast()
	deleted := false
	ex := c.export
	if ex != nil {
		delete(ex.clients, c)
		if ex.removed && len(ex.clients) == 0 {
			deleted = true
			ex.removed = false // report once
		}
	}
	cb := s.OnExportDeleted
	s.mu.Unlock()
	if deleted && cb != nil {
		cb(ex.Name)
	}
}

// Close stops all listeners, disconnects every client and waits for their
// goroutines. Exports stay registered; remove them first when their
// deletion must be reported.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.slots.Broadcast()
	var errs []error
	for l := range s.listeners {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.shutdown()
	}
	s.wg.Wait()
	return errors.Join(errs...)
}
