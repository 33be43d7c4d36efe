package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
)

// TestTranscripts runs every file in testdata/transcripts against
// qemu-storage-daemon and against qbmond. The expected output in the files is
// QSD's behaviour (regenerate with `go test ./tests -run TestTranscripts
// -rewrite`, which takes shared directives from QSD), so the two daemons
// agreeing with the same file is the differential test.
//
// Directives:
//
//	start            restart the daemon; input lines are extra command-line
//	                 arguments; output is "ok" or the exit status and message
//	qmp [conn=NAME]  send the input (well-formed JSON) on a negotiated
//	                 connection; output every reply and event until a
//	                 synchronisation request comes back
//	raw [conn=NAME] replies=N [nonl]
//	                 send the input as it is (a newline is added unless nonl)
//	                 on a connection, negotiated or not; output N replies
//	connect [conn=NAME]
//	                 open a connection without negotiating; output the greeting
//	close [conn=NAME]
//	                 close a connection (QSD serves one client per monitor
//	                 socket at a time, so transcripts use one at a time)
//	sh               run the input with bash in the daemon's directory
//	qmp defer        as qmp, but events are kept back for the next events
//	                 directive (replies still show): where a job's events
//	                 come while later commands run, which depends on timing
//	events [conn=NAME] [count=N]
//	                 output the events kept back and those arrived since;
//	                 with count, first wait (up to a minute) until N events
//	                 have come: a job's events arrive when it gets there,
//	                 which a fixed sleep cannot promise on a loaded machine
//
// Any directive can carry only=qbmond or only=qsd to run against one daemon
// alone; use it where qbmond goes further than QSD or differs on purpose, and
// say why in a comment.
func TestTranscripts(t *testing.T) {
	for _, k := range []kind{kindQSD, kindQbmond} {
		t.Run(string(k), func(t *testing.T) {
			datadriven.Walk(t, "testdata/transcripts", func(t *testing.T, path string) {
				s := &transcript{t: t, kind: k}
				datadriven.RunTest(t, path, s.run)
			})
		})
	}
}

type transcript struct {
	t     *testing.T
	kind  kind
	dir   string
	d     *daemon
	conns map[string]*client
	norm  *normalizer
	sync  int
	// deferred holds the rendered events a "qmp defer" kept back, and
	// deferredN counts them.
	deferred  string
	deferredN int
}

func (s *transcript) run(t *testing.T, td *datadriven.TestData) string {
	only := ""
	for _, a := range td.CmdArgs {
		if a.Key == "only" && len(a.Vals) == 1 {
			only = a.Vals[0]
		}
	}
	if only != "" && only != string(s.kind) {
		return td.Expected // not this daemon's directive
	}
	// When rewriting, shared directives take QSD's output: qbmond returns
	// the file's text so that its run does not overwrite the referee's.
	if td.Rewrite && s.kind == kindQbmond && only == "" {
		return td.Expected
	}
	if s.dir == "" {
		s.dir = shortTempDir(t)
		s.norm = newNormalizer(s.dir)
	}
	conn := "main"
	if td.HasArg("conn") {
		td.ScanArgs(t, "conn", &conn)
	}
	switch td.Cmd {
	case "start":
		return s.start(t, strings.Fields(td.Input))
	case "sh":
		cmd := exec.Command("bash", "-c", td.Input)
		cmd.Dir = s.dir
		cmd.Env = append(os.Environ(), "DIR="+s.dir)
		out, err := cmd.CombinedOutput()
		res := s.norm.text(string(out))
		if err != nil {
			res += fmt.Sprintf("error: %v\n", err)
		}
		return res
	case "connect":
		s.ensure(t)
		c, greeting := s.d.dial()
		s.conns[conn] = c
		return s.norm.render(greeting)
	case "qmp", "events":
		c := s.client(t, conn)
		s.sync++
		id := fmt.Sprintf("sync-%d", s.sync)
		in := ""
		if td.Cmd == "qmp" {
			in = strings.TrimRight(td.Input, "\n") + "\n"
		}
		c.send(in + `{"execute": "query-version", "id": "` + id + `"}` + "\n")
		var out strings.Builder
		events := 0
		if td.Cmd == "events" {
			out.WriteString(s.deferred)
			events = s.deferredN
			s.deferred, s.deferredN = "", 0
		}
		want := 0
		if td.HasArg("count") {
			td.ScanArgs(t, "count", &want)
		}
		deadline := time.Now().Add(time.Minute)
		for {
			v := c.readAny()
			if v["id"] == id {
				if events >= want || time.Now().After(deadline) {
					break
				}
				// Not all there yet: ask again in a moment.
				time.Sleep(20 * time.Millisecond)
				s.sync++
				id = fmt.Sprintf("sync-%d", s.sync)
				c.send(`{"execute": "query-version", "id": "` + id + `"}` + "\n")
				continue
			}
			if _, ev := v["event"]; ev && td.HasArg("defer") {
				s.deferred += s.norm.render(v)
				s.deferredN++
				continue
			}
			if _, ev := v["event"]; ev {
				events++
			}
			out.WriteString(s.norm.render(v))
		}
		return out.String()
	case "close":
		if c, ok := s.conns[conn]; ok {
			c.conn.Close()
			delete(s.conns, conn)
		}
		return ""
	case "raw":
		var n int
		td.ScanArgs(t, "replies", &n)
		c := s.client(t, conn)
		in := td.Input
		if !td.HasArg("nonl") {
			in += "\n"
		}
		c.send(in)
		var out strings.Builder
		for i := 0; i < n; i++ {
			out.WriteString(s.norm.render(c.readAny()))
		}
		return out.String()
	default:
		td.Fatalf(t, "unknown directive %q", td.Cmd)
		return ""
	}
}

// ensure starts the daemon with no extra arguments if none runs.
func (s *transcript) ensure(t *testing.T) {
	if s.d == nil {
		if out := s.start(t, nil); out != "ok\n" {
			t.Fatalf("start: %s", out)
		}
	}
}

// client returns the named connection, dialled and negotiated on first use.
func (s *transcript) client(t *testing.T, name string) *client {
	s.ensure(t)
	c, ok := s.conns[name]
	if !ok {
		c = s.d.connect()
		s.conns[name] = c
	}
	return c
}

var daemonPrefix = regexp.MustCompile(`(?m)^(qemu-storage-daemon|qbmond): `)

func (s *transcript) start(t *testing.T, args []string) string {
	if s.d != nil {
		s.d.stop()
		s.d = nil
	}
	s.conns = map[string]*client{}
	if len(args) > 0 {
		if out, failed := s.probeStart(t, args); failed {
			return out
		}
	}
	s.d = startDaemon(t, s.kind, s.dir, args...)
	return "ok\n"
}

// probeStart runs the daemon with args once to see whether it exits (bad
// arguments); a start that fails is part of the transcript.
func (s *transcript) probeStart(t *testing.T, args []string) (string, bool) {
	// A failing start is part of the transcript: run the daemon once to
	// see whether it exits, with the same arguments it would be started
	// with.
	bin := qbmondBin
	if s.kind == kindQSD {
		bin = requireTool(t, "qemu-storage-daemon")
	}
	probe := exec.Command(bin, append([]string{"--chardev",
		"socket,path=" + filepath.Join(s.dir, "probe.sock") + ",server=on,wait=off,id=mon0",
		"--monitor", "chardev=mon0"}, args...)...)
	probe.Dir = s.dir
	var stderr bytes.Buffer
	probe.Stderr = &stderr
	if err := probe.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- probe.Wait() }()
	select {
	case err := <-done:
		msg := daemonPrefix.ReplaceAllString(strings.TrimSpace(stderr.String()), "")
		return s.norm.text(fmt.Sprintf("exit %v: %s\n", exitCode(err), msg)), true
	case <-time.After(500 * time.Millisecond):
		probe.Process.Kill()
		<-done
		os.Remove(filepath.Join(s.dir, "probe.sock"))
		return "", false
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// normalizer makes replies of different daemons and runs comparable: it
// masks timestamps and versions, replaces the scratch directory by $DIR,
// renames auto node-names (#blockNNN) and graph ids in order of first
// appearance, and prints objects with sorted keys.
type normalizer struct {
	dir    string
	blocks map[string]string
}

func newNormalizer(dir string) *normalizer {
	return &normalizer{dir: dir, blocks: map[string]string{}}
}

var autoName = regexp.MustCompile(`#block[0-9]+`)

func (n *normalizer) text(s string) string {
	s = strings.ReplaceAll(s, n.dir, "$DIR")
	return autoName.ReplaceAllStringFunc(s, func(m string) string {
		if r, ok := n.blocks[m]; ok {
			return r
		}
		r := fmt.Sprintf("#block<%d>", len(n.blocks)+1)
		n.blocks[m] = r
		return r
	})
}

func (n *normalizer) value(v any) any {
	switch v := v.(type) {
	case string:
		return n.text(v)
	case []any:
		for i := range v {
			v[i] = n.value(v[i])
		}
		return v
	case map[string]any:
		if _, ok := v["timestamp"]; ok {
			v["timestamp"] = "<timestamp>"
		}
		if _, ok := v["package"]; ok {
			if q, ok := v["qemu"].(map[string]any); ok {
				v["package"] = "<package>"
				q["micro"] = "<micro>"
			}
		}
		if nodes, ok := v["nodes"].([]any); ok {
			if edges, ok := v["edges"].([]any); ok {
				n.graphIDs(nodes, edges)
			}
		}
		for _, k := range sortedKeys(v) {
			v[k] = n.value(v[k])
		}
		return v
	}
	return v
}

// graphIDs renumbers x-debug-query-block-graph ids 1, 2, ... by the order
// of the nodes list, and sorts nodes and edges so that the hash order in
// which QEMU lists them does not matter.
func (n *normalizer) graphIDs(nodes, edges []any) {
	// Unnamed block-backend nodes are told apart by the nodes they use.
	names := map[string]string{}
	for _, x := range nodes {
		m := x.(map[string]any)
		names[fmt.Sprint(m["id"])] = n.text(fmt.Sprint(m["name"]))
	}
	uses := map[string][]string{}
	for _, x := range edges {
		m := x.(map[string]any)
		p := fmt.Sprint(m["parent"])
		uses[p] = append(uses[p], names[fmt.Sprint(m["child"])])
	}
	key := func(m map[string]any) string {
		u := uses[fmt.Sprint(m["id"])]
		sort.Strings(u)
		return fmt.Sprint(m["type"], "/", n.text(fmt.Sprint(m["name"])), "/", u)
	}
	sort.SliceStable(nodes, func(i, j int) bool {
		return key(nodes[i].(map[string]any)) < key(nodes[j].(map[string]any))
	})
	ids := map[string]string{}
	for i, x := range nodes {
		m := x.(map[string]any)
		ids[fmt.Sprint(m["id"])] = fmt.Sprint(i + 1)
		m["id"] = json.Number(fmt.Sprint(i + 1))
	}
	for _, x := range edges {
		m := x.(map[string]any)
		m["parent"] = json.Number(ids[fmt.Sprint(m["parent"])])
		m["child"] = json.Number(ids[fmt.Sprint(m["child"])])
	}
	sort.SliceStable(edges, func(i, j int) bool {
		a, b := edges[i].(map[string]any), edges[j].(map[string]any)
		return fmt.Sprint(a["parent"], a["name"]) < fmt.Sprint(b["parent"], b["name"])
	})
}

func sortedKeys(m map[string]any) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// render prints a normalised value: on one line when short, indented when
// long, with sorted keys either way.
func (n *normalizer) render(v map[string]any) string {
	nv := n.value(v)
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(nv)
	if b.Len() <= 100 {
		return b.String()
	}
	b.Reset()
	enc.SetIndent("", "  ")
	enc.Encode(nv)
	return b.String()
}
