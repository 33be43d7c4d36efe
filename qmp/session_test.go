package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// fakeSchema accepts any arguments for its commands; "slow" and "ping"
// allow out-of-band execution.
type fakeSchema map[string]bool

func (f fakeSchema) HasCommand(n string) bool { _, ok := f[n]; return ok }
func (f fakeSchema) AllowOOB(n string) bool   { return f[n] }
func (f fakeSchema) Args(n string, a any, _ bool) (any, error) {
	if m, ok := a.(map[string]any); ok && m["bad"] != nil {
		return nil, Errorf("Parameter 'bad' is unexpected")
	}
	return a, nil
}

// Decode decodes the arguments through JSON, refusing members the Go type
// lacks (the real schema refuses them with QEMU's message first).
func (f fakeSchema) Decode(n string, a any, k bool, dst any) error {
	a, err := f.Args(n, a, k)
	if err != nil || a == nil {
		return err
	}
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	dec.DisallowUnknownFields()
	return dec.Decode(dst)
}

// testServer returns a server with core commands plus "echo" (returns its
// arguments), "ping" (oob) and "emit" (sends an event).
func testServer(t testing.TB) (*Server, *Dispatcher, chan struct{}) {
	d := NewDispatcher(fakeSchema{"qmp_capabilities": false, "query-version": false, "quit": false,
		"echo": false, "ping": true, "emit": false}, zerolog.Nop())
	quit := make(chan struct{}, 1)
	v := VersionInfo{Major: 7, Minor: 2, Micro: 0, Package: "qbmond test"}
	// Many quits may arrive (fuzzing); the test only needs to see one.
	RegisterCore(d, v, func() {
		select {
		case quit <- struct{}{}:
		default:
		}
	})
	d.Register("echo", func(_ context.Context, a json.RawMessage) (any, error) { return a, nil })
	d.Register("ping", func(context.Context, json.RawMessage) (any, error) { return "pong", nil })
	d.Register("emit", func(_ context.Context, a json.RawMessage) (any, error) {
		d.Emit("TEST_EVENT", map[string]any{"args": a})
		return nil, nil
	})
	return NewServer(d, v, zerolog.Nop()), d, quit
}

type pipeClient struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

func dialPipe(t testing.TB, s *Server) *pipeClient {
	a, b := net.Pipe()
	go newSession(s, b).run()
	t.Cleanup(func() { a.Close() })
	c := &pipeClient{t: t, conn: a, r: bufio.NewReader(a)}
	return c
}

func (c *pipeClient) line() string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	if !strings.HasSuffix(l, "\r\n") {
		c.t.Fatalf("line %q does not end in CRLF", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

func (c *pipeClient) send(s string) {
	c.t.Helper()
	go c.conn.Write([]byte(s)) // net.Pipe is synchronous
}

func (c *pipeClient) expect(req string, want ...string) {
	c.t.Helper()
	c.send(req)
	for _, w := range want {
		if got := c.line(); got != w {
			c.t.Errorf("%s\n got  %s\n want %s", req, got, w)
		}
	}
}

func TestSessionProtocol(t *testing.T) {
	s, _, quit := testServer(t)
	c := dialPipe(t, s)
	if g := c.line(); g != `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "qbmond test"}, "capabilities": ["oob"]}}` {
		t.Fatalf("greeting %s", g)
	}
	c.expect(`{"execute": "echo", "id": 1}`,
		`{"id": 1, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}`)
	c.expect(`{"execute": "nope"}`,
		`{"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}`)
	c.expect(`{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}`, `{"return": {}}`)
	c.expect(`{"execute": "qmp_capabilities"}`,
		`{"error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}`)
	c.expect(`{'execute': 'echo', 'arguments': {'x': [1, 'é']}, 'id': {'n': 1.5e3}}`,
		`{"return": {"x": [1, "\u00E9"]}, "id": {"n": 1500}}`)
	c.expect(`{"execute": "echo", "id": 2.5e3}`, `{"return": {}, "id": 2500}`)
	c.expect(`{"execute": "echo", "arguments": {"bad": 1}, "id": "v"}`,
		`{"id": "v", "error": {"class": "GenericError", "desc": "Parameter 'bad' is unexpected"}}`)
	c.expect(`{"execute": "nope"}`, `{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}`)
	c.expect(`[]`, `{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}`)
	c.expect(`{"execute": 1}`, `{"error": {"class": "GenericError", "desc": "QMP input member 'execute' must be a string"}}`)
	c.expect(`{"execute": "echo", "arguments": 1}`, `{"error": {"class": "GenericError", "desc": "QMP input member 'arguments' must be an object"}}`)
	c.expect(`{"execute": "echo", "zzz": 1, "aaa": 2}`, `{"error": {"class": "GenericError", "desc": "QMP input member 'aaa' is unexpected"}}`)
	c.expect(`{"id": 3}`, `{"id": 3, "error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}}`)
	c.expect(`{"exec-oob": "ping", "id": "o"}`, `{"return": "pong", "id": "o"}`)
	c.expect(`{"exec-oob": "echo", "id": "o"}`, `{"id": "o", "error": {"class": "GenericError", "desc": "The command echo does not support OOB"}}`)
	c.expect(`{"exec-oob": "nope"}`, `{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}`)
	c.expect(`{"exec-oob": "ping", "execute": "ping"}`, `{"error": {"class": "GenericError", "desc": "QMP input member 'execute' clashes with 'exec-oob'"}}`)
	c.expect("{\"execute\": }\n", `{"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}`)
	c.expect(`{"execute": "query-version"}`, `{"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "qbmond test"}}`)
	c.expect(`{"execute": "quit", "id": "q"}`, `{"return": {}, "id": "q"}`)
	select {
	case <-quit:
	case <-time.After(10 * time.Second):
		t.Fatal("quit did not call back")
	}
}

func TestSessionWithoutOOB(t *testing.T) {
	s, _, _ := testServer(t)
	c := dialPipe(t, s)
	c.line()
	c.expect(`{"execute": "qmp_capabilities"}`, `{"return": {}}`)
	c.expect(`{"exec-oob": "ping", "id": 1}`, `{"id": 1, "error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}}`)
}

// TestEventsAndConcurrency runs many sessions at once; every negotiated
// session sees every event, un-negotiated ones see none.
func TestEventsAndConcurrency(t *testing.T) {
	s, _, _ := testServer(t)
	silent := dialPipe(t, s)
	silent.line()
	const n = 8
	clients := make([]*pipeClient, n)
	for i := range clients {
		clients[i] = dialPipe(t, s)
		clients[i].line()
		clients[i].expect(`{"execute": "qmp_capabilities"}`, `{"return": {}}`)
	}
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				c.send(fmt.Sprintf(`{"execute": "echo", "arguments": {"c": %d, "j": %d}, "id": %d}`, i, j, j))
				if got, want := c.line(), fmt.Sprintf(`{"return": {"j": %d, "c": %d}, "id": %d}`, j, i, j); got != want {
					t.Errorf("got %s want %s", got, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	clients[0].send(`{"execute": "emit", "arguments": {"k": 1}}`)
	// Client 0 gets its reply and the event, in either order; the others
	// get the event alone.
	for i, c := range clients {
		n := 1
		if i == 0 {
			n = 2
		}
		events := 0
		for k := 0; k < n; k++ {
			l := c.line()
			switch {
			case strings.HasPrefix(l, `{"timestamp": {"seconds": `) && strings.Contains(l, `"event": "TEST_EVENT", "data": {"args": {"k": 1}}}`):
				events++
			case l == `{"return": {}}` && i == 0:
			default:
				t.Errorf("client %d: unexpected %s", i, l)
			}
		}
		if events != 1 {
			t.Errorf("client %d saw %d events", i, events)
		}
	}
	// The session that never negotiated gets nothing but its own replies.
	silent.expect(`{"execute": "qmp_capabilities"}`, `{"return": {}}`)
}

func TestServerCloseEndsSessions(t *testing.T) {
	s, _, _ := testServer(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("connection still open after Close")
	}
}

func FuzzSession(f *testing.F) {
	for _, s := range []string{
		`{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}{"exec-oob": "ping"}`,
		"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"echo\",\"arguments\":{\"a\":[1,{}]},\"id\":[null]}\n",
		"}{]['\x01\xff\"", `{"execute": "quit"}`,
		`{"execute":"qmp_capabilities"}{"execute":"quit"}{"execute":"quit"}{"execute":"quit"}`, `{"execute": "emit", "id": 1e999}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		s, _, _ := testServer(t)
		a, b := net.Pipe()
		done := make(chan struct{})
		go func() { newSession(s, b).run(); b.Close(); close(done) }()
		go func() {
			// Drain replies so the session never blocks on writing.
			buf := make([]byte, 4096)
			for {
				if _, err := a.Read(buf); err != nil {
					return
				}
			}
		}()
		a.Write(in)
		a.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("session did not end after its input closed")
		}
	})
}
