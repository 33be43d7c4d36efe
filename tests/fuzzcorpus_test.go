package tests

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestFuzzCorpusAgainstDaemon replays every input in the QMP and JSON
// parsers' fuzz corpora (seeds and anything the fuzzers saved) to the real
// daemon, each on its own connection, then checks that the daemon still
// serves: no request crashes it or wedges it.
func TestFuzzCorpusAgainstDaemon(t *testing.T) {
	var inputs [][]byte
	for _, dir := range []string{"../qmp/testdata/fuzz", "../schema/testdata/fuzz", "../keyval/testdata/fuzz"} {
		filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err != nil || fi.IsDir() {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			inputs = append(inputs, corpusValues(b)...)
			return nil
		})
	}
	if len(inputs) < 10 {
		t.Fatalf("only %d corpus inputs found; the fuzz corpora should be in qmp/, schema/ and keyval/ testdata", len(inputs))
	}
	d := startDaemon(t, kindQbmond, "")
	first, _ := d.dial() // waits until the daemon listens
	first.conn.Close()
	for _, in := range inputs {
		conn, err := net.Dial("unix", d.sock)
		if err != nil {
			t.Fatalf("daemon stopped accepting after %d inputs: %v\n%s", len(inputs), err, d.stderr)
		}
		r := bufio.NewReader(conn)
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatalf("no greeting: %v", err)
		}
		// Negotiate first so that the input reaches the command layer, then
		// send the input, then close.
		conn.Write([]byte(`{"execute":"qmp_capabilities"}` + "\n"))
		conn.Write(in)
		conn.Write([]byte("\n"))
		conn.Close()
	}
	c := d.connect()
	if v := c.ok("query-version", nil).(map[string]any); v["package"] == nil {
		t.Fatalf("query-version after the corpus: %v", v)
	}
	select {
	case <-d.exited:
		t.Fatalf("daemon exited: %v\n%s", d.err, d.stderr)
	default:
	}
}

// corpusValues extracts the byte and string values of a Go fuzz corpus file
// ("go test fuzz v1" followed by one Go literal a line).
func corpusValues(b []byte) [][]byte {
	var out [][]byte
	lines := strings.Split(string(b), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "go test fuzz v1") {
		return [][]byte{b}
	}
	for _, l := range lines[1:] {
		l = strings.TrimSpace(l)
		var lit string
		switch {
		case strings.HasPrefix(l, "[]byte(") && strings.HasSuffix(l, ")"):
			lit = l[len("[]byte(") : len(l)-1]
		case strings.HasPrefix(l, "string(") && strings.HasSuffix(l, ")"):
			lit = l[len("string(") : len(l)-1]
		default:
			continue
		}
		if s, err := strconv.Unquote(lit); err == nil {
			out = append(out, []byte(s))
		}
	}
	return out
}

// TestSchemaCommandsAgree checks that every command in query-commands is in
// query-qmp-schema and the reverse.
func TestSchemaCommandsAgree(t *testing.T) {
	d := startDaemon(t, kindQbmond, "")
	c := d.connect()
	cmds := map[string]bool{}
	for _, x := range c.ok("query-commands", nil).([]any) {
		cmds[x.(map[string]any)["name"].(string)] = true
	}
	inSchema := map[string]bool{}
	for _, x := range c.ok("query-qmp-schema", nil).([]any) {
		m := x.(map[string]any)
		if m["meta-type"] == "command" {
			inSchema[m["name"].(string)] = true
		}
	}
	for n := range cmds {
		if !inSchema[n] {
			t.Errorf("%s is in query-commands but not in query-qmp-schema", n)
		}
	}
	for n := range inSchema {
		if !cmds[n] {
			t.Errorf("%s is in query-qmp-schema but not in query-commands", n)
		}
	}
	for _, want := range []string{"qmp_capabilities", "query-version", "query-commands", "query-qmp-schema",
		"quit", "blockdev-add", "blockdev-del", "query-named-block-nodes", "query-block", "x-debug-query-block-graph"} {
		if !cmds[want] {
			t.Errorf("command %s missing", want)
		}
	}
}
