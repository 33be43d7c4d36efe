package tests

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDefaultSocket checks the default QMP socket under $XDG_RUNTIME_DIR,
// that its path is printed, that it is mode 0600 and that SIGTERM removes it.
func TestDefaultSocket(t *testing.T) {
	rt := shortTempDir(t)
	cmd := exec.Command(qbmondBin)
	cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+rt)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sock := filepath.Join(rt, "qbmond", "qmp.sock")
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(line, "unix:"+sock) {
		t.Fatalf("start-up line %q does not name %s", line, sock)
	}
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want socket 0600", fi.Mode())
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket still there after SIGTERM: %v", err)
	}
}

// TestQuitAndListeners starts qbmond with its own spelling of several QMP
// listeners (unix and tcp on loopback) and a JSON-RPC one, uses them all at
// once, and quits through one of them.
func TestQuitAndListeners(t *testing.T) {
	dir := shortTempDir(t)
	tcp := freePort(t)
	d := startDaemon(t, kindQbmond, dir,
		"--qmp", "unix:"+filepath.Join(dir, "second.sock"),
		"--qmp", "tcp:"+tcp,
		"--jsonrpc", "unix:"+filepath.Join(dir, "rpc.sock"),
		"--blockdev", "driver=null-co,node-name=n0")
	// Three QMP clients at once on three listeners.
	a := d.connect()
	b := dialNegotiate(t, "unix", filepath.Join(dir, "second.sock"))
	c := dialNegotiate(t, "tcp", tcp)
	for _, cl := range []*client{a, b, c} {
		nodes := cl.ok("query-named-block-nodes", map[string]any{"flat": true}).([]any)
		if len(nodes) != 1 {
			t.Fatalf("nodes: %v", nodes)
		}
	}
	b.ok("quit", nil)
	if err := d.waitExit(20 * time.Second); err != nil {
		t.Fatalf("quit: %v\n%s", err, d.stderr)
	}
	for _, s := range []string{"qmp.sock", "second.sock", "rpc.sock"} {
		if _, err := os.Stat(filepath.Join(dir, s)); !os.IsNotExist(err) {
			t.Errorf("%s left behind", s)
		}
	}
}

func dialNegotiate(t *testing.T, network, addr string) *client {
	t.Helper()
	conn, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &client{t: t, conn: conn, dec: json.NewDecoder(bufio.NewReader(conn))}
	c.dec.UseNumber()
	c.readAny()
	c.greeted = true
	c.ok("qmp_capabilities", nil)
	return c
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestLogging checks that --log-format json writes one JSON object per line
// and that each command is logged at debug with its id and duration.
func TestLogging(t *testing.T) {
	d := startDaemon(t, kindQbmond, "", "--log-format", "json")
	c := d.connect()
	c.send(`{"execute": "query-version", "id": "log-me"}` + "\n")
	c.reply()
	c.send(`{"execute": "blockdev-del", "arguments": {"node-name": "nope"}, "id": "fail-me"}` + "\n")
	c.reply()
	d.stop()
	var sawOK, sawFail bool
	for _, line := range strings.Split(strings.TrimSpace(d.stderr.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON log line: %q", line)
		}
		switch m["id"] {
		case "log-me":
			sawOK = m["level"] == "debug" && m["command"] == "query-version" && m["duration"] != nil
		case "fail-me":
			sawFail = m["level"] == "warn" && m["command"] == "blockdev-del"
		}
	}
	if !sawOK || !sawFail {
		t.Errorf("command log lines missing (ok %v, failure %v):\n%s", sawOK, sawFail, d.stderr)
	}
}

// TestBadCommandLine checks that bad options end the process with status 1
// and a message, before any socket is created.
func TestBadCommandLine(t *testing.T) {
	for _, args := range [][]string{
		{"--bogus"},
		{"--log-level", "loud"},
		{"--log-format", "xml"},
		{"--qmp", "smoke:signals"},
		{"--monitor", "chardev=nope"},
		{"--chardev", "socket,path=/tmp/x.sock,server=on,wait=off", "--monitor", "chardev=x"},
		{"--blockdev", "driver=null-co,node-name=a,node-name"},
	} {
		cmd := exec.Command(qbmondBin, args...)
		out, err := cmd.CombinedOutput()
		if exitCode(err) != 1 {
			t.Errorf("%v: exit %v, want 1\n%s", args, err, out)
		}
		if !strings.Contains(string(out), "qbmond: ") {
			t.Errorf("%v: no message: %s", args, out)
		}
	}
}
