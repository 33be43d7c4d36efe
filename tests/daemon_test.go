package tests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// kind names the daemon implementation a test talks to.
type kind string

const (
	kindQbmond kind = "qbmond"
	kindQSD    kind = "qsd"
)

// daemon is one spawned qbmond or qemu-storage-daemon with a QMP socket.
type daemon struct {
	t      testing.TB
	kind   kind
	dir    string // scratch directory for images and sockets
	sock   string // QMP unix socket
	cmd    *exec.Cmd
	stderr *lockedBuffer
	exited chan struct{}
	err    error // process exit status, valid after exited is closed
	killed bool  // killed on purpose: its exit status and leftovers are expected
}

// kill ends the daemon with SIGKILL, as a crash would, and waits for it.
func (d *daemon) kill() {
	d.killed = true
	d.cmd.Process.Kill()
	<-d.exited
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// shortTempDir returns a fresh directory with a short path: unix socket
// paths are limited to 107 bytes and t.TempDir() paths can be long.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "qbt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startDaemon spawns a daemon of the given kind in dir (a fresh one when
// empty) with its QMP monitor on dir/qmp.sock, spelled the QSD way, which
// qbmond accepts unchanged. extra are more command-line arguments.
func startDaemon(t testing.TB, k kind, dir string, extra ...string) *daemon {
	t.Helper()
	if dir == "" {
		dir = shortTempDir(t)
	}
	d := &daemon{t: t, kind: k, dir: dir, sock: filepath.Join(dir, "qmp.sock"),
		stderr: &lockedBuffer{}, exited: make(chan struct{})}
	// A daemon killed earlier in the same directory leaves its socket
	// file; waiting for "the" socket must not find that one.
	os.Remove(d.sock)
	args := []string{
		"--chardev", "socket,path=" + d.sock + ",server=on,wait=off,id=mon0",
		"--monitor", "chardev=mon0",
	}
	args = append(args, extra...)
	var bin string
	switch k {
	case kindQbmond:
		bin = qbmondBin
		args = append(args, "--log-level", "debug")
	case kindQSD:
		bin = requireTool(t, "qemu-storage-daemon")
	}
	d.cmd = exec.Command(bin, args...)
	d.cmd.Dir = dir
	d.cmd.Stderr = d.stderr
	d.cmd.Stdout = io.Discard
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", k, err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(d.stop)
	deadline := time.Now().Add(20 * time.Second)
	// Wait for the socket file rather than connecting: QSD serves one
	// client per monitor socket, and a probe connection's hang-up can race
	// with the test's own connection under load.
	for {
		if fi, err := os.Stat(d.sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			break
		}
		select {
		case <-d.exited:
			t.Fatalf("%s exited at start: %v\n%s", k, d.err, d.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not open %s\n%s", k, d.sock, d.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return d
}

// stop terminates the daemon with SIGTERM and checks a qbmond exits 0 and
// removes its socket.
func (d *daemon) stop() {
	select {
	case <-d.exited:
	default:
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(30 * time.Second):
			d.cmd.Process.Kill()
			<-d.exited
			if d.kind == kindQSD {
				// QSD 7.2 now and then hangs at exit after an I/O
				// error; the referee's shutdown is not under test.
				d.t.Logf("qsd did not exit on SIGTERM; killed\n%s", d.stderr)
				return
			}
			d.t.Errorf("%s did not exit on SIGTERM\n%s", d.kind, d.stderr)
			return
		}
	}
	if d.kind != kindQbmond || d.killed {
		return
	}
	if d.err != nil {
		d.t.Errorf("qbmond exited with %v\n%s", d.err, d.stderr)
	}
	if strings.Contains(d.stderr.String(), "WARNING: DATA RACE") {
		d.t.Errorf("qbmond reported a data race:\n%s", d.stderr)
	}
	if _, err := os.Stat(d.sock); err == nil {
		d.t.Errorf("qbmond left its socket %s behind", d.sock)
	}
}

// waitExit waits for the daemon to exit by itself (after quit).
func (d *daemon) waitExit(timeout time.Duration) error {
	select {
	case <-d.exited:
		return d.err
	case <-time.After(timeout):
		return fmt.Errorf("%s still running after %v", d.kind, timeout)
	}
}

// client is a raw QMP connection. Replies and events are JSON values; the
// reader keeps events aside so replies can be matched in order.
type client struct {
	t      testing.TB
	d      *daemon
	conn   net.Conn
	dec    *json.Decoder
	events []map[string]any
	// scanned counts the events waitEvent has looked at.
	scanned int
	// greeted is set once the greeting has been read.
	greeted bool
}

// dial connects without negotiating and returns the greeting.
func (d *daemon) dial() (*client, map[string]any) {
	d.t.Helper()
	// The socket file appears at bind(), a moment before listen(): a
	// connection refused in between is retried (it was never accepted, so
	// QSD's one-client monitor is not disturbed).
	var conn net.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		conn, err = net.Dial("unix", d.sock)
		// Refused: bound but not yet listening. Not found: a stale
		// socket file was just replaced.
		retry := errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
		if err == nil || !retry || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		d.t.Fatalf("dial %s: %v", d.sock, err)
	}
	d.t.Cleanup(func() { conn.Close() })
	c := &client{t: d.t, d: d, conn: conn, dec: json.NewDecoder(bufio.NewReader(conn))}
	c.dec.UseNumber()
	g := c.readAny()
	if _, ok := g["QMP"]; !ok {
		d.t.Fatalf("greeting expected, got %v", g)
	}
	c.greeted = true
	return c, g
}

// connect dials and negotiates capabilities.
func (d *daemon) connect() *client {
	d.t.Helper()
	c, _ := d.dial()
	if r := c.cmd("qmp_capabilities", nil); r["return"] == nil {
		d.t.Fatalf("qmp_capabilities: %v", r)
	}
	return c
}

func (c *client) readAny() map[string]any {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	var v map[string]any
	if err := c.dec.Decode(&v); err != nil {
		if c.d != nil {
			select {
			case <-c.d.exited:
				c.t.Fatalf("read QMP: %v; %s exited: %v\n%s", err, c.d.kind, c.d.err, c.d.stderr)
			case <-time.After(time.Second):
			}
			c.t.Fatalf("read QMP: %v (%s still running)\n%s", err, c.d.kind, c.d.stderr)
		}
		c.t.Fatalf("read QMP: %v", err)
	}
	if _, ok := v["QMP"]; ok && c.greeted {
		// QSD 7.2 sometimes greets twice when a client connects while
		// its monitor is still being set up (the chardev's OPENED event
		// is replayed when the monitor installs its handlers). That is
		// QSD's race, not part of what is compared; qbmond must never
		// do it.
		if c.d != nil && c.d.kind == kindQSD {
			c.t.Logf("QSD greeted a second time; skipped")
			return c.readAny()
		}
		c.t.Fatalf("second greeting on one connection: %v", v)
	}
	return v
}

// reply reads the next reply, keeping events aside.
func (c *client) reply() map[string]any {
	c.t.Helper()
	for {
		v := c.readAny()
		if _, ok := v["event"]; ok {
			c.events = append(c.events, v)
			continue
		}
		return v
	}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(s)); err != nil {
		c.t.Fatalf("write QMP: %v", err)
	}
}

// cmd runs one command and returns the whole reply object.
func (c *client) cmd(name string, args any) map[string]any {
	c.t.Helper()
	req := map[string]any{"execute": name}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		c.t.Fatal(err)
	}
	c.send(string(b) + "\n")
	return c.reply()
}

// ok runs a command that must succeed and returns its "return" value.
func (c *client) ok(name string, args any) any {
	c.t.Helper()
	r := c.cmd(name, args)
	ret, found := r["return"]
	if !found {
		c.t.Fatalf("%s %v: %v", name, args, r)
	}
	return ret
}

// fail runs a command that must fail and returns its error description.
func (c *client) fail(name string, args any) (class, desc string) {
	c.t.Helper()
	r := c.cmd(name, args)
	e, ok := r["error"].(map[string]any)
	if !ok {
		c.t.Fatalf("%s %v: expected an error, got %v", name, args, r)
	}
	return e["class"].(string), e["desc"].(string)
}
