package schema

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/qbmond/qbmond/qmp"
	"github.com/rs/zerolog"
)

func loadString(src string) (*Schema, error) {
	return load(fstest.MapFS{"s.json": {Data: []byte(src)}}, "s.json")
}

func loadTest(tb testing.TB, src string) *Schema {
	tb.Helper()
	s, err := loadString(src)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func TestLoadCommands(t *testing.T) {
	s := mustLoad(t)
	want := []string{"query-block", "query-named-block-nodes", "x-debug-query-block-graph", "query-blockstats",
		"blockdev-add", "blockdev-del",
		"block-dirty-bitmap-add", "block-dirty-bitmap-remove", "block-dirty-bitmap-clear",
		"block-dirty-bitmap-enable", "block-dirty-bitmap-disable", "block-dirty-bitmap-merge",
		"x-debug-block-dirty-bitmap-sha256", "blockdev-create",
		"change-backing-file", "drop-intermediate",
		"job-pause", "job-resume", "job-cancel", "job-complete", "job-dismiss", "job-finalize", "query-jobs",
		"query-block-jobs", "block-commit", "block-stream", "block-job-set-speed", "block-job-cancel",
		"block-job-pause", "block-job-resume", "block-job-complete", "block-job-dismiss", "block-job-finalize",
		"blockdev-backup", "drive-backup", "blockdev-snapshot", "blockdev-snapshot-sync", "blockdev-reopen",
		"blockdev-mirror", "drive-mirror",
		"transaction",
		"nbd-server-start", "nbd-server-stop",
		"block-export-add", "block-export-del", "nbd-server-add", "nbd-server-remove",
		"query-block-exports", "qmp_capabilities", "query-version",
		"query-commands", "quit", "query-qmp-schema"}
	if got := s.Commands(); !slices.Equal(got, want) {
		t.Fatalf("commands %v, want %v", got, want)
	}
	for _, name := range want {
		c := s.entities[name]
		if !s.HasCommand(name) || c.arg == nil || c.ret == nil || c.arg.kind != kindObject {
			t.Errorf("%s: bad command %+v", name, c)
		}
		if s.AllowOOB(name) {
			t.Errorf("%s: allow-oob, but QEMU 7.2 has none of these out of band", name)
		}
		// Every type reachable from the command is resolved.
		var walk func(*typ)
		seen := map[*typ]bool{}
		walk = func(ty *typ) {
			if seen[ty] {
				return
			}
			seen[ty] = true
			if !ty.resolved {
				t.Errorf("%s: type %s unresolved", name, ty.name)
			}
			for _, m := range ty.members {
				walk(m.typ)
			}
			for _, v := range ty.variants {
				walk(v.typ)
			}
			for _, a := range ty.alts {
				walk(a)
			}
			if ty.elem != nil {
				walk(ty.elem)
			}
		}
		walk(c.arg)
		walk(c.ret)
	}
	if s.HasCommand("BlockdevOptions") || s.HasCommand("nope") {
		t.Error("HasCommand accepts a non-command")
	}
	if !s.entities["blockdev-add"].boxed || s.entities["blockdev-add"].arg.name != "BlockdevOptions" {
		t.Error("blockdev-add is not boxed BlockdevOptions")
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct{ src, want string }{
		{`{"struct": "A", "data": {"x": "Nope"}}`, "unknown type 'Nope'"},
		{`{"struct": "A", "data": {"x": ["Nope"]}}`, "unknown type 'Nope'"},
		{`{"command": "c", "returns": "Nope"}`, "unknown type 'Nope'"},
		{`{"command": "c", "data": "Nope"}`, "unknown type 'Nope'"},
		{`{"struct": "A", "data": {}} {"enum": "A", "data": []}`, "'A' is already defined at s.json:1"},
		{`{"command": "c"}` + "\n" + `{"command": "c"}`, "s.json:2: 'c' is already defined at s.json:1"},
		{`{"struct": "int", "data": {}}`, "builtin"},
		{`{"enum": "E", "data": ["a", "a"]}`, "value 'a' is defined twice"},
		{`{"struct": "A", "base": "B", "data": {"x": "int"}} {"struct": "B", "data": {"x": "str"}}`, "member 'x' is defined twice"},
		{`{"struct": "A", "base": "A", "data": {}}`, "refers back"},
		{`{"struct": "A", "data": {"x": "int", "x": "int"}}`, "duplicate key 'x'"},
		{`{"union": "U", "base": {"k": "str"}, "discriminator": "k", "data": {}}`, "mandatory enum member"},
		{`{"enum": "E", "data": ["a"]} {"union": "U", "base": {"*k": "E"}, "discriminator": "k", "data": {}}`, "mandatory enum member"},
		{`{"enum": "E", "data": ["a"]} {"struct": "S", "data": {}} {"union": "U", "base": {"k": "E"}, "discriminator": "k", "data": {"b": "S"}}`, "case 'b' is not a value of E"},
		{`{"enum": "E", "data": ["a"]} {"union": "U", "base": {"k": "E"}, "discriminator": "k", "data": {"a": "E"}}`, "must be an object type"},
		{`{"enum": "E", "data": ["a"]} {"struct": "S", "data": {"k": "int"}} {"union": "U", "base": {"k": "E"}, "discriminator": "k", "data": {"a": "S"}}`, "clashes with the base"},
		{`{"alternate": "A", "data": {"a": "int", "b": "number"}}`, "cannot be told apart"},
		{`{"alternate": "A", "data": {"a": "any"}}`, "cannot be of type 'any'"},
		{`{"struct": "A", "data": {}, "bogus": 1}`, "unknown key 'bogus'"},
		{`{"thing": "A"}`, "unknown definition kind"},
		{`{"struct": "A", "data": {}`, "s.json:1"},
		{`{"enum": "E", "data": ["a"]} {"union": "U", "base": {"k": "E"}, "discriminator": "k", "data": {}} {"command": "c", "data": "U"}`, "needs \"boxed\": true"},
		{`{"include": "missing.json"}`, "missing.json"},
	}
	for _, tc := range tests {
		_, err := loadString(tc.src)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to mention %q", tc.src, err, tc.want)
		}
	}
}

func TestLoadComments(t *testing.T) {
	s := loadTest(t, "# a comment\n  # another\n{\"command\": \"c\",\n# inside\n \"data\": {\"*x\": \"int\"}}\n")
	if !s.HasCommand("c") {
		t.Fatal("command c not loaded")
	}
}

func TestLoadImplicitEmptyVariants(t *testing.T) {
	s := loadTest(t, `
{"enum": "E", "data": ["a", "b", "c"]}
{"struct": "A", "data": {"x": "int"}}
{"union": "U", "base": {"k": "E"}, "discriminator": "k", "data": {"b": "A"}}
{"command": "c", "data": "U", "boxed": true}
`)
	if _, err := s.Args("c", map[string]any{"k": "a"}, false); err != nil {
		t.Errorf("empty case: %v", err)
	}
	if _, err := s.Args("c", map[string]any{"k": "a", "x": json.Number("1")}, false); err == nil ||
		err.Error() != "Parameter 'x' is unexpected" {
		t.Errorf("member of another case: %v", err)
	}
	if _, err := s.Args("c", map[string]any{"k": "b"}, false); err == nil ||
		err.Error() != "Parameter 'x' is missing" {
		t.Errorf("missing variant member: %v", err)
	}
	info := s.Introspect([]string{"c"})
	b, _ := json.Marshal(info)
	if !strings.Contains(string(b), `"variants":[{"case":"b","type":"3"},{"case":"a","type":"1"},{"case":"c","type":"1"}]`) {
		t.Errorf("variants of U: %s", b)
	}
}

func TestIntrospect(t *testing.T) {
	s := mustLoad(t)
	info := s.Introspect(s.Commands())
	byName := map[string]map[string]any{}
	var order []string
	for _, e := range info {
		var m map[string]any
		if err := json.Unmarshal([]byte(marshal(t, e)), &m); err != nil {
			t.Fatal(err)
		}
		name := m["name"].(string)
		if _, dup := byName[name]; dup {
			t.Fatalf("%s listed twice", name)
		}
		byName[name] = m
		order = append(order, name)
	}
	if order[0] != "query-block" {
		t.Errorf("first entry %s, want query-block (definition order)", order[0])
	}
	// QEMU's numbering: q_empty is "0" as the first command's argument.
	if got := marshal(t, byName["0"]); got != `{"members":[],"meta-type":"object","name":"0"}` {
		t.Errorf("0 = %s", got)
	}
	qb := byName["query-block"]
	if qb["arg-type"] != "0" || qb["ret-type"] != "[1]" {
		t.Errorf("query-block = %v", qb)
	}
	if g := byName["x-debug-query-block-graph"]; marshal(t, g["features"]) != `["unstable"]` {
		t.Errorf("x-debug-query-block-graph features %v", g["features"])
	}
	// Every type named is listed; builtins appear with their json-type.
	for _, e := range byName {
		for _, ref := range typeRefs(e) {
			if _, ok := byName[ref]; !ok {
				t.Errorf("%v refers to unlisted %s", e["name"], ref)
			}
		}
	}
	if got := marshal(t, byName["int"]); got != `{"json-type":"int","meta-type":"builtin","name":"int"}` {
		t.Errorf("int = %s", got)
	}
	for _, n := range []string{"uint64", "size", "int8", "q_empty", "BlockdevOptions"} {
		if _, ok := byName[n]; ok {
			t.Errorf("%s is not masked", n)
		}
	}
	// blockdev-add's argument is the union, members include the base.
	add := byName[byName["blockdev-add"]["arg-type"].(string)]
	if add["tag"] != "driver" {
		t.Fatalf("blockdev-add arg %v", add)
	}
	var members []string
	for _, m := range add["members"].([]any) {
		mm := m.(map[string]any)
		_, opt := mm["default"]
		members = append(members, mm["name"].(string)+map[bool]string{true: "?"}[opt])
	}
	want := "driver node-name? discard? cache? read-only? auto-read-only? force-share? detect-zeroes?"
	if strings.Join(members, " ") != want {
		t.Errorf("members %v", members)
	}
	// Enums have values and members.
	drv := byName[add["members"].([]any)[0].(map[string]any)["type"].(string)]
	if marshal(t, drv["values"]) != `["blkdebug","copy-before-write","copy-on-read","file","host_device","nbd","null-aio","null-co","qbm","qcow2","raw"]` ||
		marshal(t, drv["members"]) != `[{"name":"blkdebug"},{"name":"copy-before-write"},{"name":"copy-on-read"},{"name":"file"},{"name":"host_device"},{"name":"nbd"},{"name":"null-aio"},{"name":"null-co"},{"name":"qbm"},{"name":"qcow2"},{"name":"raw"}]` {
		t.Errorf("BlockdevDriver = %v", drv)
	}

	// Only the given commands are listed (events always are).
	few := s.Introspect([]string{"quit"})
	var cmds []string
	for _, e := range few {
		if j := marshal(t, e); strings.Contains(j, `"meta-type":"command"`) {
			cmds = append(cmds, j)
		}
	}
	if len(cmds) != 1 || !strings.HasPrefix(cmds[0], `{"name":"quit","meta-type":"command","arg-type":"`) {
		t.Errorf("Introspect(quit) = %s", marshal(t, few))
	}
}

func typeRefs(e map[string]any) []string {
	var refs []string
	for _, k := range []string{"arg-type", "ret-type", "element-type"} {
		if v, ok := e[k].(string); ok {
			refs = append(refs, v)
		}
	}
	if e["meta-type"] != "enum" {
		for _, m := range asList(e["members"]) {
			refs = append(refs, m["type"].(string))
		}
	}
	for _, v := range asList(e["variants"]) {
		refs = append(refs, v["type"].(string))
	}
	return refs
}

func asList(v any) []map[string]any {
	l, _ := v.([]any)
	out := make([]map[string]any, len(l))
	for i, e := range l {
		out[i] = e.(map[string]any)
	}
	return out
}

// newDispatcher registers every command of the schema with a stub handler.
func newDispatcher(t *testing.T, s *Schema, skip ...string) *qmp.Dispatcher {
	d := qmp.NewDispatcher(s, zerolog.Nop())
	RegisterCommands(d, s)
	for _, c := range s.Commands() {
		if c == "query-qmp-schema" || c == "query-commands" || slices.Contains(skip, c) {
			continue
		}
		d.Register(c, func(context.Context, json.RawMessage) (any, error) { return nil, nil })
	}
	return d
}

func execute(t *testing.T, d *qmp.Dispatcher, name string) []map[string]any {
	t.Helper()
	res, qerr := d.Execute(context.Background(), qmp.Request{Name: name})
	if qerr != nil {
		t.Fatalf("%s: %v", name, qerr)
	}
	var out []map[string]any
	if err := json.Unmarshal([]byte(marshal(t, res)), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func commandSets(t *testing.T, d *qmp.Dispatcher) (fromCommands, fromSchema []string) {
	for _, c := range execute(t, d, "query-commands") {
		fromCommands = append(fromCommands, c["name"].(string))
	}
	for _, e := range execute(t, d, "query-qmp-schema") {
		if e["meta-type"] == "command" {
			fromSchema = append(fromSchema, e["name"].(string))
		}
	}
	slices.Sort(fromCommands)
	slices.Sort(fromSchema)
	return fromCommands, fromSchema
}

// query-commands and query-qmp-schema list the same commands, also when
// commands are registered after the first call.
func TestQueryCommandsMatchesSchema(t *testing.T) {
	s := mustLoad(t)
	d := newDispatcher(t, s, "quit")
	cmds, inSchema := commandSets(t, d)
	if !slices.Equal(cmds, inSchema) || slices.Contains(cmds, "quit") || len(cmds) != len(s.Commands())-1 {
		t.Fatalf("query-commands %v, query-qmp-schema %v", cmds, inSchema)
	}
	d.Register("quit", func(context.Context, json.RawMessage) (any, error) { return nil, nil })
	cmds, inSchema = commandSets(t, d)
	if !slices.Equal(cmds, inSchema) || !slices.Contains(inSchema, "quit") {
		t.Fatalf("after late registration: query-commands %v, query-qmp-schema %v", cmds, inSchema)
	}
	want := slices.Clone(s.Commands())
	slices.Sort(want)
	if !slices.Equal(cmds, want) {
		t.Fatalf("commands %v, want %v", cmds, want)
	}
}

func TestEvents(t *testing.T) {
	s := loadTest(t, `
{"event": "EV_EMPTY"}
{"struct": "EvData", "data": {"id": "str", "*n": "uint32"}}
{"event": "EV_NAMED", "data": "EvData", "features": ["unstable"]}
{"command": "c", "data": {"x": "int"}, "allow-oob": true}
{"event": "EV_INLINE", "data": {"reason": "str"}}
`)
	if s.HasCommand("EV_EMPTY") || s.AllowOOB("EV_NAMED") || !s.AllowOOB("c") {
		t.Fatal("events taken for commands, or allow-oob lost")
	}
	if got := s.Events(); !slices.Equal(got, []string{"EV_EMPTY", "EV_NAMED", "EV_INLINE"}) {
		t.Fatalf("events %v", got)
	}
	if _, err := s.Args("EV_NAMED", nil, false); err == nil {
		t.Fatal("Args accepted an event")
	}
	got := marshal(t, s.Introspect(nil))
	want := `[{"name":"EV_EMPTY","meta-type":"event","arg-type":"0"},` +
		`{"name":"EV_NAMED","meta-type":"event","arg-type":"1","features":["unstable"]},` +
		`{"name":"EV_INLINE","meta-type":"event","arg-type":"2"},` +
		`{"name":"0","meta-type":"object","members":[]},` +
		`{"name":"1","meta-type":"object","members":[{"name":"id","type":"str"},{"name":"n","type":"int","default":null}]},` +
		`{"name":"2","meta-type":"object","members":[{"name":"reason","type":"str"}]},` +
		`{"name":"str","meta-type":"builtin","json-type":"string"},` +
		`{"name":"int","meta-type":"builtin","json-type":"int"}]`
	if got != want {
		t.Errorf("Introspect:\n got %s\nwant %s", got, want)
	}
	withCmd := marshal(t, s.Introspect([]string{"c"}))
	if !strings.Contains(withCmd, `{"name":"c","meta-type":"command","arg-type":"2","ret-type":"0","allow-oob":true}`) {
		t.Errorf("command c: %s", withCmd)
	}
}
