package nbd

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"
)

// startServer serves the exports on a fresh unix socket and stops at cleanup.
func startServer(t testing.TB, exports ...*Export) (*Server, string) {
	t.Helper()
	s := NewServer(zerolog.Nop())
	for _, e := range exports {
		if err := s.AddExport(e); err != nil {
			t.Fatal(err)
		}
	}
	return serveOn(t, s)
}

// client is a minimal NBD client for protocol tests.
type client struct {
	t testing.TB
	c net.Conn
}

func dial(t testing.TB, sock string) *client {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cl := &client{t: t, c: c}
	var g [18]byte
	cl.readFull(g[:])
	if be.Uint64(g[:]) != nbdMagic || be.Uint64(g[8:]) != optMagic {
		t.Fatalf("bad greeting % x", g)
	}
	if f := be.Uint16(g[16:]); f != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags %#x", f)
	}
	cl.write(be.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes))
	return cl
}

func (cl *client) readFull(p []byte) {
	cl.t.Helper()
	if _, err := io.ReadFull(cl.c, p); err != nil {
		cl.t.Fatalf("read: %v", err)
	}
}

func (cl *client) write(p []byte) {
	cl.t.Helper()
	if _, err := cl.c.Write(p); err != nil {
		cl.t.Fatalf("write: %v", err)
	}
}

func (cl *client) sendOpt(opt uint32, data []byte) {
	cl.t.Helper()
	p := be.AppendUint64(nil, optMagic)
	p = be.AppendUint32(p, opt)
	p = be.AppendUint32(p, uint32(len(data)))
	cl.write(append(p, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (cl *client) readOptReply() optReply {
	cl.t.Helper()
	var h [20]byte
	cl.readFull(h[:])
	if m := be.Uint64(h[:]); m != repMagic {
		cl.t.Fatalf("bad reply magic %#x", m)
	}
	r := optReply{opt: be.Uint32(h[8:]), typ: be.Uint32(h[12:]), data: make([]byte, be.Uint32(h[16:]))}
	cl.readFull(r.data)
	return r
}

// opt sends an option and collects replies up to the final one.
func (cl *client) opt(opt uint32, data []byte) []optReply {
	cl.t.Helper()
	cl.sendOpt(opt, data)
	var out []optReply
	for {
		r := cl.readOptReply()
		if r.opt != opt {
			cl.t.Fatalf("reply for option %d, want %d", r.opt, opt)
		}
		out = append(out, r)
		if r.typ == repAck || r.typ&repErrBit != 0 {
			return out
		}
	}
}

func nameData(name string, rest ...byte) []byte {
	p := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	return append(append(p, name...), rest...)
}

func metaData(name string, queries ...string) []byte {
	p := nameData(name)
	p = binary.BigEndian.AppendUint32(p, uint32(len(queries)))
	for _, q := range queries {
		p = binary.BigEndian.AppendUint32(p, uint32(len(q)))
		p = append(p, q...)
	}
	return p
}

// goExport negotiates structured replies (when asked), metadata contexts and
// NBD_OPT_GO; it returns the transmission flags and size.
func (cl *client) goExport(name string, structured bool, contexts ...string) (uint16, uint64) {
	cl.t.Helper()
	if structured {
		if r := cl.opt(optStructuredReply, nil); r[0].typ != repAck {
			cl.t.Fatalf("structured reply refused: %+v", r)
		}
	}
	if len(contexts) > 0 {
		if r := cl.opt(optSetMetaContext, metaData(name, contexts...)); r[len(r)-1].typ != repAck {
			cl.t.Fatalf("set meta context refused: %+v", r)
		}
	}
	rs := cl.opt(optGo, nameData(name, 0, 0))
	last := rs[len(rs)-1]
	if last.typ != repAck {
		cl.t.Fatalf("GO %q: reply %#x %q", name, last.typ, last.data)
	}
	for _, r := range rs {
		if r.typ == repInfo && be.Uint16(r.data) == infoExport {
			return be.Uint16(r.data[10:]), be.Uint64(r.data[2:])
		}
	}
	cl.t.Fatal("no NBD_INFO_EXPORT")
	return 0, 0
}

func (cl *client) request(typ, flags uint16, handle, off uint64, length uint32, data []byte) {
	cl.t.Helper()
	p := be.AppendUint32(nil, requestMagic)
	p = be.AppendUint16(p, flags)
	p = be.AppendUint16(p, typ)
	p = be.AppendUint64(p, handle)
	p = be.AppendUint64(p, off)
	p = be.AppendUint32(p, length)
	cl.write(append(p, data...))
}

// simpleReply reads a simple reply header (structured replies are refused).
func (cl *client) simpleReply() (handle uint64, errno uint32) {
	cl.t.Helper()
	var h [16]byte
	cl.readFull(h[:])
	if m := be.Uint32(h[:]); m != simpleReplyMagic {
		cl.t.Fatalf("reply magic %#x, want simple", m)
	}
	return be.Uint64(h[8:]), be.Uint32(h[4:])
}

type chunkMsg struct {
	magic   uint32
	flags   uint16
	typ     uint16
	handle  uint64
	errno   uint32 // for simple replies
	payload []byte
}

// anyReply reads either a simple reply (without data) or a structured chunk.
func (cl *client) anyReply() chunkMsg {
	cl.t.Helper()
	var m [4]byte
	cl.readFull(m[:])
	switch magic := be.Uint32(m[:]); magic {
	case simpleReplyMagic:
		var h [12]byte
		cl.readFull(h[:])
		return chunkMsg{magic: magic, errno: be.Uint32(h[:]), handle: be.Uint64(h[4:]), flags: replyFlagDone}
	case structReplyMagic:
		var h [16]byte
		cl.readFull(h[:])
		c := chunkMsg{magic: magic, flags: be.Uint16(h[:]), typ: be.Uint16(h[2:]), handle: be.Uint64(h[4:])}
		c.payload = make([]byte, be.Uint32(h[12:]))
		cl.readFull(c.payload)
		if c.typ&(1<<15) != 0 {
			c.errno = be.Uint32(c.payload)
		}
		return c
	default:
		cl.t.Fatalf("bad reply magic %#x", magic)
		return chunkMsg{}
	}
}

// replyChunks reads chunks of one handle's reply up to the final one.
func (cl *client) replyChunks(handle uint64) []chunkMsg {
	cl.t.Helper()
	var out []chunkMsg
	for {
		c := cl.anyReply()
		if c.handle != handle {
			cl.t.Fatalf("reply for handle %d, want %d", c.handle, handle)
		}
		out = append(out, c)
		if c.flags&replyFlagDone != 0 {
			return out
		}
	}
}

// expectClosed checks the server closes the connection.
func (cl *client) expectClosed() {
	cl.t.Helper()
	buf := make([]byte, 1<<16)
	for {
		_, err := cl.c.Read(buf)
		if err != nil {
			return
		}
	}
}

func (c chunkMsg) String() string {
	return fmt.Sprintf("{magic %#x flags %d type %#x handle %d errno %d len %d}", c.magic, c.flags, c.typ, c.handle, c.errno, len(c.payload))
}

func zeroLog() zerolog.Logger { return zerolog.Nop() }

func dialRaw(sock string) (net.Conn, error) { return net.Dial("unix", sock) }

// serveOn serves an already configured server on a fresh socket.
func serveOn(t testing.TB, s *Server) (*Server, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, sock
}
