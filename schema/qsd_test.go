package schema

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// qsdSchema runs qemu-storage-daemon with QMP on stdio and returns its
// query-qmp-schema. The referee is required: `make test` installs it, so a
// missing binary fails the test rather than skipping it.
func qsdSchema(t *testing.T) []any {
	t.Helper()
	bin, err := exec.LookPath("qemu-storage-daemon")
	if err != nil {
		t.Fatal("qemu-storage-daemon is not installed (Debian package qemu-system-common; make test installs it)")
	}
	// The deadline only stops a wedged daemon; nothing is asserted on time.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--chardev", "stdio,id=m0", "--monitor", "chardev=m0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Read the reply before ending the daemon: a quit sent along could end
	// it before the long reply is fully written.
	defer func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	}()
	io.WriteString(stdin, `{"execute":"qmp_capabilities"}`+"\n"+`{"execute":"query-qmp-schema"}`+"\n")
	dec := json.NewDecoder(stdout)
	for {
		var msg struct {
			Return json.RawMessage `json:"return"`
		}
		if err := dec.Decode(&msg); err != nil {
			t.Fatalf("reading qemu-storage-daemon's replies: %v\n%s", err, stderr.Bytes())
		}
		var list []any
		if json.Unmarshal(msg.Return, &list) == nil && len(list) > 0 {
			return list
		}
	}
}

func indexInfo(t *testing.T, list []any) map[string]map[string]any {
	idx := map[string]map[string]any{}
	for _, e := range list {
		var m map[string]any
		if err := json.Unmarshal([]byte(marshal(t, e)), &m); err != nil {
			t.Fatal(err)
		}
		idx[m["name"].(string)] = m
	}
	return idx
}

// infoComparer compares two query-qmp-schema outputs structurally: type
// names are masked differently, so types are matched by walking from the
// commands. Enums used as union tags may be a subset of QEMU's (qbmond
// supports fewer drivers); their union then needs only the variants qbmond
// has. Everything else must be equal.
type infoComparer struct {
	ours, qsd map[string]map[string]any
	seen      map[[2]string]bool
	diffs     []string
}

func (c *infoComparer) diff(path, format string, a ...any) {
	c.diffs = append(c.diffs, path+": "+fmt.Sprintf(format, a...))
}

func (c *infoComparer) entity(name string) {
	o, q := c.ours[name], c.qsd[name]
	if q == nil && extensions[name] {
		return
	}
	if q == nil {
		c.diff(name, "not in QEMU's schema")
		return
	}
	if o["meta-type"] != q["meta-type"] {
		c.diff(name, "meta-type %v, QEMU %v", o["meta-type"], q["meta-type"])
		return
	}
	if !equalJSON(o["features"], q["features"]) {
		c.diff(name, "features %v, QEMU %v", o["features"], q["features"])
	}
	if !equalJSON(o["allow-oob"], q["allow-oob"]) {
		c.diff(name, "allow-oob %v, QEMU %v", o["allow-oob"], q["allow-oob"])
	}
	c.typ(name+" arg", str(o["arg-type"]), str(q["arg-type"]), false)
	if o["meta-type"] == "command" {
		c.typ(name+" ret", str(o["ret-type"]), str(q["ret-type"]), false)
	}
}

func str(v any) string { s, _ := v.(string); return s }

// extensions are what qbmond has and QEMU does not: drivers, whose values
// in driver enums and whose union variants are not compared, and
// commands, which are not looked for in QEMU's schema.
var extensions = map[string]bool{"qbm": true, "drop-intermediate": true}

func equalJSON(a, b any) bool {
	ab, _ := json.Marshal(a)
	bb, _ := json.Marshal(b)
	return bytes.Equal(ab, bb)
}

func (c *infoComparer) typ(path, on, qn string, subset bool) {
	key := [2]string{on, qn}
	if c.seen[key] {
		return
	}
	c.seen[key] = true
	o, q := c.ours[on], c.qsd[qn]
	if o == nil || q == nil {
		c.diff(path, "type %s / QEMU %s not listed", on, qn)
		return
	}
	if o["meta-type"] != q["meta-type"] {
		c.diff(path, "meta-type %v, QEMU %v", o["meta-type"], q["meta-type"])
		return
	}
	if !equalJSON(o["features"], q["features"]) {
		c.diff(path, "features %v, QEMU %v", o["features"], q["features"])
	}
	switch o["meta-type"] {
	case "builtin":
		if on != qn {
			c.diff(path, "builtin %s, QEMU %s", on, qn)
		}
	case "enum":
		ov, qv := o["values"].([]any), q["values"].([]any)
		if subset || withheldValues[path] {
			// Same relative order, each of ours in QEMU's.
			j := 0
			for _, v := range ov {
				if extensions[str(v)] {
					continue
				}
				for j < len(qv) && qv[j] != v {
					j++
				}
				if j == len(qv) {
					c.diff(path, "value %v not in QEMU's %v (or out of order)", v, qv)
					break
				}
			}
		} else if !equalJSON(ov, qv) || !equalJSON(o["members"], q["members"]) {
			c.diff(path, "enum %v, QEMU %v", o["members"], q["members"])
		}
	case "array":
		c.typ(path+"[]", str(o["element-type"]), str(q["element-type"]), false)
	case "alternate":
		om, qm := asList(o["members"]), asList(q["members"])
		if len(om) != len(qm) {
			c.diff(path, "alternate of %d, QEMU %d", len(om), len(qm))
			return
		}
		for i := range om {
			c.typ(fmt.Sprintf("%s|%d", path, i), str(om[i]["type"]), str(qm[i]["type"]), false)
		}
	case "object":
		c.object(path, o, q)
	}
}

// withheld are QEMU's optional members qbmond leaves out of its schema
// because it does not implement them (a client probing the schema must
// not be misled), by the object they belong to: a union variant
// "(case)" wherever it is reached, or a command's arguments "name arg".
// A member comes back into the schema, and out of this list, with the
// change that makes it work.
var withheld = map[string][]string{
	"(qcow2)":              {"encrypt", "data-file", "data-file-raw", "extended-l2"},
	"(file)":               {"pr-manager"},
	"nbd-server-start arg": {"tls-creds", "tls-authz"},
	"block-export-add arg": {"iothread"},
}

// withheldValues are enum members whose values are a subset of QEMU's
// because qbmond does not implement the others there, by path.
var withheldValues = map[string]bool{
	"blockdev-create arg.options(qcow2).preallocation": true,
}

// withholding is QEMU's member list q without the members qbmond
// withholds from the object at path.
func withholding(path string, q []map[string]any) []map[string]any {
	key := path
	if i := strings.LastIndex(path, "("); i >= 0 && strings.HasSuffix(path, ")") {
		key = path[i:]
	}
	names := withheld[key]
	if len(names) == 0 {
		return q
	}
	var out []map[string]any
	for _, m := range q {
		_, opt := m["default"]
		if opt && slices.Contains(names, str(m["name"])) {
			continue
		}
		out = append(out, m)
	}
	return out
}

func (c *infoComparer) object(path string, o, q map[string]any) {
	om, qm := asList(o["members"]), withholding(path, asList(q["members"]))
	names := func(l []map[string]any) []string {
		var n []string
		for _, m := range l {
			_, opt := m["default"]
			n = append(n, str(m["name"])+map[bool]string{true: "?"}[opt])
		}
		return n
	}
	if !slices.Equal(names(om), names(qm)) {
		c.diff(path, "members %v, QEMU %v", names(om), names(qm))
		return
	}
	if o["tag"] != q["tag"] {
		c.diff(path, "tag %v, QEMU %v", o["tag"], q["tag"])
		return
	}
	for i := range om {
		if !equalJSON(om[i]["features"], qm[i]["features"]) {
			c.diff(path+"."+str(om[i]["name"]), "features %v, QEMU %v", om[i]["features"], qm[i]["features"])
		}
		isTag := o["tag"] != nil && om[i]["name"] == o["tag"]
		c.typ(path+"."+str(om[i]["name"]), str(om[i]["type"]), str(qm[i]["type"]), isTag)
	}
	qv := map[string]string{}
	for _, v := range asList(q["variants"]) {
		qv[str(v["case"])] = str(v["type"])
	}
	for _, v := range asList(o["variants"]) {
		qt, ok := qv[str(v["case"])]
		if !ok && extensions[str(v["case"])] {
			continue
		}
		if !ok {
			c.diff(path, "variant %v not in QEMU's", v["case"])
			continue
		}
		c.typ(path+"("+str(v["case"])+")", str(v["type"]), qt, false)
	}
}

// TestAgainstQSD checks that every command and event of the schema has the
// same arguments, return type and features as in qemu-storage-daemon 7.2,
// resolved recursively (for blockdev-add, the drivers qbmond implements).
func TestAgainstQSD(t *testing.T) {
	qsd := indexInfo(t, qsdSchema(t))
	s := mustLoad(t)
	c := &infoComparer{ours: indexInfo(t, s.Introspect(s.Commands())), qsd: qsd, seen: map[[2]string]bool{}}
	for _, name := range append(s.Commands(), s.Events()...) {
		c.entity(name)
	}
	for _, d := range c.diffs {
		t.Error(d)
	}
}

// The comparer finds differences (checked without QEMU: our schema against
// a doctored copy of itself).
func TestInfoComparer(t *testing.T) {
	s := mustLoad(t)
	compare := func(doctor func(map[string]map[string]any)) []string {
		ours := indexInfo(t, s.Introspect(s.Commands()))
		other := indexInfo(t, s.Introspect(s.Commands()))
		doctor(other)
		c := &infoComparer{ours: ours, qsd: other, seen: map[[2]string]bool{}}
		for _, name := range s.Commands() {
			c.entity(name)
		}
		return c.diffs
	}
	if d := compare(func(map[string]map[string]any) {}); len(d) != 0 {
		t.Fatalf("differences with itself: %v", d)
	}
	argOf := func(m map[string]map[string]any, cmd string) map[string]any {
		return m[m[cmd]["arg-type"].(string)]
	}
	d := compare(func(m map[string]map[string]any) {
		asList(argOf(m, "blockdev-del")["members"])[0]["default"] = nil
	})
	if len(d) != 1 || !strings.Contains(d[0], "blockdev-del") {
		t.Errorf("optional flag change: %v", d)
	}
	d = compare(func(m map[string]map[string]any) {
		add := argOf(m, "blockdev-add")
		tag := m[asList(add["members"])[0]["type"].(string)]
		tag["values"] = []any{"file", "null-aio", "raw", "null-co", "qcow2"}
	})
	if len(d) != 1 || !strings.Contains(d[0], "not in QEMU's") {
		t.Errorf("tag enum order: %v", d)
	}
	d = compare(func(m map[string]map[string]any) {
		m["x-debug-query-block-graph"]["features"] = nil
	})
	if len(d) != 1 {
		t.Errorf("features: %v", d)
	}
}
