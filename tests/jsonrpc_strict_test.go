package tests

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// rpcRaw is a JSON-RPC connection that sends raw bytes and reads replies
// one line at a time.
type rpcRaw struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialRPC(t *testing.T, path string) *rpcRaw {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rpcRaw{t: t, conn: c, r: bufio.NewReaderSize(c, 1<<20)}
}

// next reads one reply and renders it canonically (keys sorted; for a
// successful reply only the id and "result" are kept).
func (c *rpcRaw) next() string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		c.t.Fatalf("read: %v (after %q)", err, line)
	}
	dec := json.NewDecoder(strings.NewReader(string(line)))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		c.t.Fatalf("reply %q: %v", line, err)
	}
	if _, ok := m["result"]; ok {
		m["result"] = "…"
	}
	if e, ok := m["error"].(map[string]any); ok {
		delete(e, "data")
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func (c *rpcRaw) send(s string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.conn.Write([]byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// expect sends one message and checks the one reply it gets.
func (c *rpcRaw) expect(msg, want string) {
	c.t.Helper()
	c.send(msg + "\n")
	if got := c.next(); got != want {
		c.t.Errorf("%s\n got  %s\n want %s", msg, got, want)
	}
}

// until sends msg, then a request of its own, and returns every reply
// that comes before the latter's: all the replies msg got.
func (c *rpcRaw) until(msg string) []string {
	c.t.Helper()
	c.send(msg + "\n" + `{"jsonrpc": "2.0", "id": "sentinel", "method": "query-version"}` + "\n")
	var out []string
	for {
		r := c.next()
		if r == rpcOK(`"sentinel"`) {
			return out
		}
		out = append(out, r)
	}
}

func rpcErr(id string, code int, msg string) string {
	b, _ := json.Marshal(msg)
	return `{"error":{"code":` + itoa(code) + `,"message":` + string(b) + `},"id":` + id + `,"jsonrpc":"2.0"}`
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func rpcOK(id string) string { return `{"id":` + id + `,"jsonrpc":"2.0","result":"…"}` }

// TestJSONRPCStrict: every message that is not a well-formed JSON-RPC 2.0
// request gets the error object the specification requires, on a
// connection that stays open; duplicate keys and invalid UTF-8 are refused
// as QMP refuses them; any id JSON-RPC allows is echoed as sent.
func TestJSONRPCStrict(t *testing.T) {
	dir := shortTempDir(t)
	rpcSock := filepath.Join(dir, "rpc.sock")
	d := startDaemon(t, kindQbmond, dir, "--jsonrpc", "unix:"+rpcSock)
	c := dialRPC(t, rpcSock)

	// Duplicate keys: the second "method" must not win (it used to quit).
	c.expect(`{"jsonrpc": "2.0", "id": 1, "method": "query-version", "method": "quit"}`,
		rpcErr("null", -32700, "JSON parse error, duplicate key"))
	c.expect(`{"jsonrpc": "2.0", "id": 1, "method": "query-version", "params": {"a": 1, "a": 2}}`,
		rpcErr("null", -32700, "JSON parse error, duplicate key"))
	c.expect(`{"jsonrpc": "2.0", "id": 2, "method": }`, rpcErr("null", -32700, "JSON parse error, expecting value"))
	// Single quotes (QMP's extension) are not JSON: refused, and what
	// follows the first error is read as more (refused) input, as in QMP.
	quoted := c.until(`{'jsonrpc': '2.0', 'id': 2, 'method': 'query-version'}`)
	if len(quoted) == 0 || quoted[0] != rpcErr("null", -32700, "JSON parse error, stray '''") {
		t.Errorf("single quotes: %v", quoted)
	}
	for _, r := range quoted {
		if !strings.HasPrefix(r, `{"error":{"code":-32`) || !strings.HasSuffix(r, `"id":null,"jsonrpc":"2.0"}`) {
			t.Errorf("single quotes: %s", r)
		}
	}
	c.expect(`[{"jsonrpc": "2.0", "id": 3, "method": "query-version"}]`,
		rpcErr("null", -32600, "Invalid Request: batch requests are not supported"))
	c.expect(`[]`, rpcErr("null", -32600, "Invalid Request: batch requests are not supported"))
	c.expect(`"query-version"`, rpcErr("null", -32600, "Invalid Request: a request must be a JSON object"))
	c.expect(`{"jsonrpc": "2.0", "id": 4}`, rpcErr("4", -32600, "Invalid Request: member 'method' is missing"))
	c.expect(`{"jsonrpc": "2.0", "id": 4, "method": 7}`, rpcErr("4", -32600, "Invalid Request: member 'method' must be a string"))
	c.expect(`{"id": 5, "method": "query-version"}`, rpcErr("5", -32600, `Invalid Request: member 'jsonrpc' must be "2.0"`))
	c.expect(`{"jsonrpc": "1.0", "id": 5, "method": "query-version"}`, rpcErr("5", -32600, `Invalid Request: member 'jsonrpc' must be "2.0"`))
	c.expect(`{"jsonrpc": "2.0", "id": 6, "method": "query-version", "meta": 1}`,
		rpcErr("6", -32600, "Invalid Request: member 'meta' is unexpected"))
	c.expect(`{"jsonrpc": "2.0", "id": {"a": 1}, "method": "query-version"}`,
		rpcErr("null", -32600, "Invalid Request: member 'id' must be a string, a number or null"))
	c.expect(`{"jsonrpc": "2.0", "id": [1], "method": "query-version"}`,
		rpcErr("null", -32600, "Invalid Request: member 'id' must be a string, a number or null"))
	c.expect(`{"jsonrpc": "2.0", "id": 7, "method": "query-version", "params": 3}`,
		rpcErr("7", -32600, "Invalid Request: member 'params' must be an object or an array"))
	c.expect(`{"jsonrpc": "2.0", "id": 7, "method": "query-version", "params": [1]}`,
		rpcErr("7", -32602, "Invalid params: params must be an object"))
	c.expect(`{"jsonrpc": "2.0", "id": 8, "method": "no-such-command"}`,
		rpcErr("8", -32601, "The command no-such-command has not been found"))
	c.expect(`{"jsonrpc": "2.0", "id": 9, "method": "blockdev-del", "params": {}}`,
		rpcErr("9", -32602, "Parameter 'node-name' is missing"))
	c.expect(`{"jsonrpc": "2.0", "id": 9, "method": "blockdev-del", "params": {"node-name": 1}}`,
		rpcErr("9", -32602, "Invalid parameter type for 'node-name', expected: string"))
	c.expect(`{"jsonrpc": "2.0", "id": 10, "method": "blockdev-del", "params": {"node-name": "nope"}}`,
		rpcErr("10", -32000, "Failed to find node with node-name='nope'"))

	// Ids: any string or number, and null, come back as they were sent.
	for _, id := range []string{`1.5`, `-7`, `18446744073709551616`, `1e400`, `"x\"y"`, `""`, `null`, `0`} {
		c.expect(`{"jsonrpc": "2.0", "id": `+id+`, "method": "query-version", "params": null}`, rpcOK(id))
	}
	// A notification gets no reply, even when it fails: the next reply
	// is the next request's.
	c.send(`{"jsonrpc": "2.0", "method": "no-such-command"}` + "\n")
	c.expect(`{"jsonrpc": "2.0", "id": 11, "method": "query-version"}`, rpcOK("11"))

	// Invalid UTF-8 is refused, not replaced: no file named with U+FFFD.
	name := filepath.Join(dir, "bad")
	c.expect(`{"jsonrpc": "2.0", "id": 12, "method": "blockdev-create", "params": {"job-id": "j", "options": {"driver": "file", "filename": "`+name+"\xc3\x28"+`", "size": 0}}}`,
		rpcErr("null", -32700, "JSON parse error, invalid UTF-8 sequence in string"))
	errs := c.until(`{"jsonrpc": "2.0", "id": 13, "method": "blockdev-add", "params": {"driver": "file", "node-name": "u", "filename": "` + name + "\xff\xfe" + `"}}`)
	for _, r := range errs {
		if !strings.Contains(r, `"code":-32700`) || !strings.Contains(r, `"id":null`) {
			t.Errorf("\\xff\\xfe in a string: %s", r)
		}
	}
	if len(errs) == 0 {
		t.Errorf("\\xff\\xfe in a string: no parse error")
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "bad") {
			t.Errorf("file %q created from invalid UTF-8", e.Name())
		}
	}
	c.expect(`{"jsonrpc": "2.0", "id": "still-open", "method": "query-named-block-nodes"}`, rpcOK(`"still-open"`))
	select {
	case <-d.exited:
		t.Fatalf("qbmond exited: %s", d.stderr)
	default:
	}
}

// TestJSONRPCSizeLimit: a request larger than QMP's 64 MiB limit is
// refused with a parse error without the daemon's memory following it,
// and the connection goes on.
func TestJSONRPCSizeLimit(t *testing.T) {
	dir := shortTempDir(t)
	rpcSock := filepath.Join(dir, "rpc.sock")
	d := startDaemon(t, kindQbmond, dir, "--jsonrpc", "unix:"+rpcSock)
	c := dialRPC(t, rpcSock)
	big := strings.Repeat("a", 65<<20)
	go func() {
		c.conn.Write([]byte(`{"jsonrpc": "2.0", "id": 1, "method": "query-version", "params": {"x": "` + big + `"}}` + "\n" +
			`{"jsonrpc": "2.0", "id": 2, "method": "query-version"}` + "\n"))
	}()
	var got []string
	for {
		r := c.next()
		if r == rpcOK("2") {
			break
		}
		got = append(got, r)
	}
	if len(got) == 0 || got[0] != rpcErr("null", -32700, "JSON token size limit exceeded") {
		t.Errorf("replies before the next request's: %v", got)
	}
	// The reader holds at most one token of the limit's size (plus the
	// garbage collector's slack); without a limit this message cost
	// gigabytes. The race detector multiplies memory use.
	limit := int64(512 << 20)
	if raceEnabled {
		limit *= 3
	}
	rss := daemonRSS(t, d)
	t.Logf("qbmond peak RSS: %d MiB", rss>>20)
	if rss > limit {
		t.Errorf("qbmond's RSS after a 65 MiB request: %d MiB", rss>>20)
	}
}

// daemonRSS reads a daemon's resident memory high-water mark.
func daemonRSS(t *testing.T, d *daemon) int64 {
	b, err := os.ReadFile(filepath.Join("/proc", itoa(d.cmd.Process.Pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			var kb int64
			json.Unmarshal([]byte(f[1]), &kb)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}
