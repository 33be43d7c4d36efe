package tests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// QEMU prints a JSON object in the order of its QDict's hash buckets (see
// internal/qjson), so the member order of every reply and event follows
// from the member names and the schema's order. TestMemberOrderLikeQSD
// runs the same commands on QSD and on qbmond, reads the raw lines, and
// checks that every object whose set of member names both daemons print
// lists those members in the same order. Values (times, sizes, versions)
// may differ; the order may not.
func TestMemberOrderLikeQSD(t *testing.T) {
	requireTool(t, "qemu-img")
	orders := map[kind]map[string]string{}
	for _, k := range []kind{kindQSD, kindQbmond} {
		dir := shortTempDir(t)
		for _, args := range [][]string{
			{"create", "-q", "-f", "qcow2", dir + "/base.qcow2", "4M"},
			{"create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", dir + "/top.qcow2", "4M"},
			{"create", "-q", "-f", "qcow2", dir + "/tgt.qcow2", "4M"},
		} {
			if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
				t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
			}
		}
		d := startDaemon(t, k, dir)
		conn, err := net.Dial("unix", d.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		rc := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
		rc.line() // greeting
		for _, c := range []string{
			`{"execute": "qmp_capabilities"}`,
			`{"execute": "query-version"}`,
			`{"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "base", "file": {"driver": "file", "filename": "base.qcow2"}}}`,
			`{"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "top", "backing": "base", "file": {"driver": "file", "filename": "top.qcow2", "locking": "off"}}}`,
			`{"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "tgt", "file": {"driver": "file", "filename": "tgt.qcow2"}}}`,
			`{"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "dbg", "file": {"driver": "blkdebug", "image": {"driver": "null-co", "size": 1048576}, "inject-error": [{"event": "read_aio", "errno": 5}]}}}`,
			`{"execute": "block-dirty-bitmap-add", "arguments": {"node": "top", "name": "b0", "granularity": 65536}}`,
			`{"execute": "query-named-block-nodes"}`,
			`{"execute": "query-named-block-nodes", "arguments": {"flat": true}}`,
			`{"execute": "query-blockstats", "arguments": {"query-nodes": true}}`,
			`{"execute": "x-debug-query-block-graph"}`,
			`{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}}}`,
			`{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e0", "node-name": "top", "writable": true}}`,
			`{"execute": "query-block-exports"}`,
			`{"execute": "blockdev-backup", "arguments": {"job-id": "j0", "device": "top", "target": "tgt", "sync": "full", "speed": 1, "auto-finalize": false}}`,
			`{"execute": "query-block-jobs"}`,
			`{"execute": "query-jobs"}`,
			`{"execute": "block-job-set-speed", "arguments": {"device": "j0", "speed": 0}}`,
			`{"execute": "job-finalize", "arguments": {"id": "j0"}}`,
			`{"execute": "block-export-del", "arguments": {"id": "e0"}}`,
			`{"execute": "query-commands"}`,
			`{"execute": "query-qmp-schema"}`,
		} {
			from := len(rc.lines)
			rc.send(c)
			if strings.Contains(c, `"block-job-set-speed"`) {
				rc.until(from, `"status": "pending"`)
			}
			if strings.Contains(c, `"job-finalize"`) {
				rc.until(from, `"status": "null"`)
			}
		}
		rc.send(`{"execute": "block-export-del", "arguments": {"id": "nosuch"}}`)
		time.Sleep(200 * time.Millisecond) // BLOCK_EXPORT_DELETED
		rc.send(`{"execute": "query-version"}`)
		o := map[string]string{}
		for _, l := range rc.lines {
			for set, order := range memberOrders(t, l) {
				o[set] = order
			}
		}
		orders[k] = o
	}
	// Objects are matched by their member names: the same set, or else
	// (one daemon prints a member the other does not) the set sharing the
	// most names, at least half of both; the common members are compared.
	compared := 0
	var bad []string
	for _, set := range slices.Sorted(mapKeys(orders[kindQSD])) {
		want := orders[kindQSD][set]
		got, ok := orders[kindQbmond][set]
		if !ok {
			best, score := "", 0.0
			for other := range orders[kindQbmond] {
				if sc := overlap(set, other); sc > score {
					best, score = other, sc
				}
			}
			if score < 0.5 {
				continue
			}
			got = orders[kindQbmond][best]
			want, got = common(want, got), common(got, want)
		}
		compared++
		if got != want {
			bad = append(bad, "QSD:    "+want+"\nqbmond: "+got)
		}
	}
	if len(bad) > 0 {
		t.Errorf("%d of %d objects in another member order:\n%s", len(bad), compared, strings.Join(bad, "\n\n"))
	}
	if compared < 40 {
		t.Errorf("only %d kinds of object seen by both daemons", compared)
	}
	t.Logf("%d kinds of object compared", compared)
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// rawClient reads a QMP connection line by line, keeping the text.
type rawClient struct {
	t     *testing.T
	conn  net.Conn
	r     *bufio.Reader
	lines []string
}

func (c *rawClient) line() string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (so far: %q)", err, c.lines)
	}
	c.lines = append(c.lines, l)
	return l
}

// send sends a command and reads up to its reply.
func (c *rawClient) send(cmd string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(cmd + "\n")); err != nil {
		c.t.Fatal(err)
	}
	for {
		l := c.line()
		if strings.HasPrefix(l, `{"return"`) || strings.HasPrefix(l, `{"error"`) {
			return
		}
	}
}

// until reads until a line containing s, looking first at the lines read
// since line from.
func (c *rawClient) until(from int, s string) {
	c.t.Helper()
	for _, l := range c.lines[from:] {
		if strings.Contains(l, s) {
			return
		}
	}
	for !strings.Contains(c.line(), s) {
	}
}

// memberOrders maps each object's sorted member names to the order the
// line prints them in.
func memberOrders(t *testing.T, line string) map[string]string {
	out := map[string]string{}
	dec := json.NewDecoder(bytes.NewReader([]byte(line)))
	var walk func() error
	walk = func() error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			var keys []string
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return err
				}
				keys = append(keys, k.(string))
				if err := walk(); err != nil {
					return err
				}
			}
			dec.Token()
			if len(keys) > 1 {
				s := slices.Clone(keys)
				sort.Strings(s)
				out[strings.Join(s, ",")] = strings.Join(keys, ",")
			}
		case json.Delim('['):
			for dec.More() {
				if err := walk(); err != nil {
					return err
				}
			}
			dec.Token()
		}
		return nil
	}
	if err := walk(); err != nil {
		t.Fatalf("line %q: %v", line, err)
	}
	return out
}

// overlap is the share of names two sets have in common (of their union).
func overlap(a, b string) float64 {
	as, bs := strings.Split(a, ","), strings.Split(b, ",")
	n := 0
	for _, x := range as {
		if slices.Contains(bs, x) {
			n++
		}
	}
	return float64(n) / float64(len(as)+len(bs)-n)
}

// common keeps the names of order a that order b has too.
func common(a, b string) string {
	bs := strings.Split(b, ",")
	var out []string
	for _, x := range strings.Split(a, ",") {
		if slices.Contains(bs, x) {
			out = append(out, x)
		}
	}
	return strings.Join(out, ",")
}
