package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// Schema honesty: query-qmp-schema advertises only what qbmond does. A
// client that probes the schema (libvirt does) decides from it what it may
// send; a member qbmond then refuses ("not supported") misleads it. QEMU's
// members that qbmond does not implement are therefore left out of the
// embedded schema, and come in with the change that makes them work.
//
// TestSchemaHonesty walks qbmond's own query-qmp-schema and, for every
// optional member of every command (the driver unions of blockdev-add and
// blockdev-create included, every value of an enum member), either tries it
// with a plausible value or finds it in a short list of members other
// tests exercise (each claim checked against the files it names). A member that is advertised but in neither table fails
// the test: whoever adds a member to the schema says how it is tried. A
// try fails the test when qbmond refuses with a "does not do this" kind of
// error that QSD, given the same command in the same setup, does not give
// word for word (QEMU's own refusals, such as "Compression is not
// supported for this drive", are QEMU's behaviour and pass).

// advertisedMember is one optional member of the schema.
type advertisedMember struct {
	path   string // "blockdev-add(qcow2).lazy-refcounts": command, union case, member path
	values []any  // an enum member's values
}

// advertisedMembers lists the optional members reached from the commands
// of a query-qmp-schema reply, each type walked once (at the first path
// that reaches it, in the order the reply lists commands).
func advertisedMembers(t *testing.T, schema []any) []advertisedMember {
	idx := map[string]map[string]any{}
	var commands []map[string]any
	for _, e := range schema {
		m := e.(map[string]any)
		idx[m["name"].(string)] = m
		if m["meta-type"] == "command" {
			commands = append(commands, m)
		}
	}
	var out []advertisedMember
	seen := map[string]bool{}
	var walk func(path, typ string)
	walk = func(path, typ string) {
		e := idx[typ]
		if e == nil {
			t.Fatalf("schema: %s: type %s not listed", path, typ)
		}
		if seen[typ] {
			return
		}
		seen[typ] = true
		switch e["meta-type"] {
		case "array":
			walk(path+"[]", e["element-type"].(string))
		case "alternate":
			for _, m := range e["members"].([]any) {
				walk(path+"|", m.(map[string]any)["type"].(string))
			}
		case "object":
			for _, m := range e["members"].([]any) {
				mm := m.(map[string]any)
				name, typ := mm["name"].(string), mm["type"].(string)
				if _, optional := mm["default"]; optional {
					am := advertisedMember{path: path + "." + name}
					if te := idx[typ]; te != nil && te["meta-type"] == "enum" {
						am.values = te["values"].([]any)
					}
					out = append(out, am)
				}
				walk(path+"."+name, typ)
			}
			if v, ok := e["variants"].([]any); ok {
				for _, x := range v {
					xm := x.(map[string]any)
					walk(path+"("+xm["case"].(string)+")", xm["type"].(string))
				}
			}
		}
	}
	for _, c := range commands {
		walk(c["name"].(string), c["arg-type"].(string))
	}
	return out
}

// refusal matches the errors that say a daemon does not do something, as
// opposed to errors about the value or the setup.
var refusal = regexp.MustCompile(`(?i)not supported|unsupported|not implemented|qbmond|does not support the option|doesn't support the option|is unexpected|does not accept value`)

// honestyEnv is the setup both daemons get: the same files, the same
// nodes (qbm ones on qbmond alone).
type honestyEnv struct {
	t   *testing.T
	dir map[kind]string
	c   map[kind]*client
	seq int
}

func (e *honestyEnv) next() int { e.seq++; return e.seq }

// honestyProbe tries one member on one daemon with the value v and
// returns the error ("" on success), undoing what it did.
type honestyProbe struct {
	try    func(e *honestyEnv, k kind, v any) string
	values []any // nil: the enum's values, else true
	qbmond bool  // qbmond's own (QSD cannot run it): judged alone
}

func errDesc(r map[string]any) string {
	if e, ok := r["error"].(map[string]any); ok {
		return e["desc"].(string)
	}
	return ""
}

// setMember sets v at the member path rel of o: "cache.direct" in a
// nested object, "inject-error[].state" in the first element of an array,
// "overlap-check|.template" in an alternate's object branch.
func setMember(o map[string]any, rel string, v any) {
	parts := strings.Split(strings.ReplaceAll(rel, "|", ""), ".")
	cur := o
	for _, p := range parts[:len(parts)-1] {
		if name, isArray := strings.CutSuffix(p, "[]"); isArray {
			list, _ := cur[name].([]any)
			if len(list) == 0 {
				list = []any{map[string]any{}}
			}
			cur[name] = list
			cur = list[0].(map[string]any)
			continue
		}
		next, _ := cur[p].(map[string]any)
		if next == nil {
			next = map[string]any{}
			cur[p] = next
		}
		cur = next
	}
	cur[parts[len(parts)-1]] = v
}

// nodeProbe tries a blockdev-add member on a node made from base (which
// may refer to the env's files and nodes), deleting the node if it opened.
func nodeProbe(base func(e *honestyEnv, k kind) map[string]any, rel string, qbmondOnly bool, values ...any) honestyProbe {
	return honestyProbe{qbmond: qbmondOnly, values: values, try: func(e *honestyEnv, k kind, v any) string {
		o := base(e, k)
		name := fmt.Sprintf("hp%d", e.next())
		o["node-name"] = name
		setMember(o, rel, v)
		if rel == "node-name" {
			name = v.(string)
		}
		c := e.c[k]
		if d := errDesc(c.cmd("blockdev-add", o)); d != "" {
			return d
		}
		c.ok("blockdev-del", map[string]any{"node-name": name})
		return ""
	}}
}

// createProbe tries a blockdev-create member with the options base makes.
func createProbe(base func(e *honestyEnv, k kind) map[string]any, rel string, qbmondOnly bool, values ...any) honestyProbe {
	return honestyProbe{qbmond: qbmondOnly, values: values, try: func(e *honestyEnv, k kind, v any) string {
		o := base(e, k)
		setMember(o, rel, v)
		id := fmt.Sprintf("hc%d", e.next())
		c := e.c[k]
		if d := errDesc(c.cmd("blockdev-create", map[string]any{"job-id": id, "options": o})); d != "" {
			return d
		}
		return waitConcluded(e.t, c, id)
	}}
}

// cmdProbe tries a member of a command whose arguments base makes; undo,
// if any, runs after a success.
func cmdProbe(name string, base func(e *honestyEnv, k kind) map[string]any, rel string, undo func(e *honestyEnv, k kind, args map[string]any), values ...any) honestyProbe {
	return honestyProbe{values: values, try: func(e *honestyEnv, k kind, v any) string {
		args := base(e, k)
		setMember(args, rel, v)
		if d := errDesc(e.c[k].cmd(name, args)); d != "" {
			return d
		}
		if undo != nil {
			undo(e, k, args)
		}
		return ""
	}}
}

// chainJobProbe tries a member of block-commit or block-stream on a chain
// made for the try (base <- mid <- top, each node added on its own), by
// default committing mid into base or streaming into top down to base.
// Values "$job", "$base", "$mid", "$filter" (node names) and
// "$basefile", "$midfile" stand for this try's.
func chainJobProbe(cmd, rel string, values ...any) honestyProbe {
	return honestyProbe{values: values, try: func(e *honestyEnv, k kind, v any) string {
		n := e.next()
		c := e.c[k]
		sub := map[string]string{"$job": fmt.Sprintf("hj%d", n), "$filter": fmt.Sprintf("hf%d", n)}
		var nodes []string
		for i, layer := range []string{"base", "mid", "top"} {
			file := e.file(k, fmt.Sprintf("hj%d-%s.qcow2", n, layer))
			args := []string{"create", "-q", "-f", "qcow2", file, "1M"}
			if i > 0 {
				args = []string{"create", "-q", "-f", "qcow2", "-b", filepath.Base(sub["$"+[]string{"", "base", "mid"}[i]+"file"]), "-F", "qcow2", file}
			}
			if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
				e.t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
			}
			name := fmt.Sprintf("hj%d%s", n, layer)
			o := map[string]any{"driver": "qcow2", "node-name": name, "file": map[string]any{"driver": "file", "filename": file}}
			if i > 0 {
				o["backing"] = nodes[i-1]
			}
			c.ok("blockdev-add", o)
			nodes = append(nodes, name)
			sub["$"+layer], sub["$"+layer+"file"] = name, file
		}
		defer func() {
			for i := len(nodes) - 1; i >= 0; i-- {
				c.cmd("blockdev-del", map[string]any{"node-name": nodes[i]})
			}
		}()
		id := sub["$job"]
		args := map[string]any{"job-id": id, "device": sub["$top"], "base-node": sub["$base"], "auto-dismiss": false}
		if cmd == "block-commit" {
			args["top-node"] = sub["$mid"]
		}
		switch rel {
		case "base", "bottom":
			delete(args, "base-node")
		case "top":
			delete(args, "top-node")
		}
		if s, ok := v.(string); ok && strings.HasPrefix(s, "$") {
			v = sub[s]
		}
		setMember(args, rel, v)
		return runJobProbe(e.t, c, cmd, args, id)
	}}
}

// runJobProbe sends the job command cmd with args and returns its error,
// or once job id has ended, its own error ("" when it dismissed itself).
func runJobProbe(t *testing.T, c *client, cmd string, args map[string]any, id string) string {
	if d := errDesc(c.cmd(cmd, args)); d != "" {
		return d
	}
	if args["auto-dismiss"] == true {
		waitJobGone(t, c, id)
		return ""
	}
	return waitConcluded(t, c, id)
}

// waitJobGone waits for a job that dismisses itself.
func waitJobGone(t *testing.T, c *client, id string) {
	t.Helper()
	for i := 0; i < 3000; i++ {
		gone := true
		for _, j := range c.ok("query-jobs", nil).([]any) {
			gone = gone && j.(map[string]any)["id"] != id
		}
		if gone {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("job %s did not go", id)
}

// backupProbe tries a member of blockdev-backup (hr into ht) or
// drive-backup (hr into a new raw image), a full backup unless the
// member needs a bitmap (b0 on hr). "$job" and "$filter" stand for this
// try's names.
func backupProbe(cmd, rel string, values ...any) honestyProbe {
	return honestyProbe{values: values, try: func(e *honestyEnv, k kind, v any) string {
		n := e.next()
		c := e.c[k]
		id := fmt.Sprintf("hj%d", n)
		args := map[string]any{"job-id": id, "device": "hr", "sync": "full", "auto-dismiss": false}
		if cmd == "blockdev-backup" {
			args["target"] = "ht"
		} else {
			target := e.file(k, id+".img")
			args["target"], args["format"] = target, "raw"
			if rel == "mode" && v == "existing" {
				if err := os.WriteFile(target, make([]byte, 4<<20), 0o644); err != nil {
					e.t.Fatal(err)
				}
			}
		}
		switch rel {
		case "bitmap":
			args["sync"] = "incremental"
		case "bitmap-mode":
			args["sync"], args["bitmap"] = "bitmap", "b0"
		}
		if s, ok := v.(string); ok && strings.HasPrefix(s, "$") {
			v = map[string]string{"$job": id, "$filter": fmt.Sprintf("hf%d", n)}[s]
		}
		setMember(args, rel, v)
		return runJobProbe(e.t, c, cmd, args, id)
	}}
}

// snapshotProbe tries a member of blockdev-snapshot-sync on a qcow2 node
// made for the try; "$node" and "$snap" stand for its name and the
// overlay's.
func snapshotProbe(rel string, values ...any) honestyProbe {
	return honestyProbe{values: values, try: func(e *honestyEnv, k kind, v any) string {
		n := e.next()
		c := e.c[k]
		node, snap := fmt.Sprintf("hs%d", n), fmt.Sprintf("hs%dsnap", n)
		file, overlay := e.file(k, node+".qcow2"), e.file(k, snap+".qcow2")
		args := []string{"create", "-q", "-f", "qcow2", file, "1M"}
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			e.t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
		}
		if rel == "mode" && v == "existing" {
			args = []string{"create", "-q", "-f", "qcow2", "-b", filepath.Base(file), "-F", "qcow2", overlay}
			if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
				e.t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
			}
		}
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": node,
			"file": map[string]any{"driver": "file", "filename": file}})
		a := map[string]any{"node-name": node, "snapshot-file": overlay, "snapshot-node-name": snap, "format": "qcow2"}
		if rel == "device" {
			delete(a, "node-name")
		}
		if s, ok := v.(string); ok && strings.HasPrefix(s, "$") {
			v = map[string]string{"$node": node, "$snap": snap}[s]
		}
		setMember(a, rel, v)
		d := errDesc(c.cmd("blockdev-snapshot-sync", a))
		if d == "" {
			c.cmd("blockdev-del", map[string]any{"node-name": a["snapshot-node-name"]})
		}
		c.cmd("blockdev-del", map[string]any{"node-name": node})
		return d
	}}
}

// waitConcluded waits for a job that does not dismiss itself, dismisses
// it and returns its error.
func waitConcluded(t *testing.T, c *client, id string) string {
	t.Helper()
	for i := 0; i < 3000; i++ {
		for _, j := range c.ok("query-jobs", nil).([]any) {
			m := j.(map[string]any)
			if m["id"] != id {
				continue
			}
			switch m["status"] {
			case "pending":
				c.ok("job-finalize", map[string]any{"id": id})
			case "concluded":
				c.ok("job-dismiss", map[string]any{"id": id})
				e, _ := m["error"].(string)
				return e
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("job %s did not conclude", id)
	return ""
}

func (e *honestyEnv) file(k kind, name string) string { return filepath.Join(e.dir[k], name) }

func fileBase(e *honestyEnv, k kind) map[string]any {
	return map[string]any{"driver": "file", "filename": e.file(k, "raw.img")}
}

func honestyProbes() map[string]honestyProbe {
	p := map[string]honestyProbe{}
	add := func(prefix string, base func(*honestyEnv, kind) map[string]any, qbmondOnly bool, members map[string][]any) {
		for rel, values := range members {
			p[prefix+"."+rel] = nodeProbe(base, rel, qbmondOnly, values...)
		}
	}
	// Members every node has, tried on a file node.
	add("blockdev-add", fileBase, false, map[string][]any{
		"node-name": {"honest"}, "discard": nil, "cache.direct": {true, false}, "cache.no-flush": {true},
		"read-only": {true}, "auto-read-only": {true},
		"cache": {map[string]any{}},
	})
	add("blockdev-add", func(e *honestyEnv, k kind) map[string]any {
		o := fileBase(e, k)
		o["read-only"] = true // force-share needs it
		return o
	}, false, map[string][]any{"force-share": {true}})
	add("blockdev-add", func(e *honestyEnv, k kind) map[string]any {
		o := fileBase(e, k)
		o["discard"] = "unmap" // detect-zeroes=unmap needs it
		return o
	}, false, map[string][]any{"detect-zeroes": nil})
	add("blockdev-add(file)", fileBase, false, map[string][]any{
		"locking": nil, "aio": nil, "aio-max-batch": {16}, "drop-cache": {false}, "x-check-cache-dropped": {true},
	})
	raw := func(e *honestyEnv, k kind) map[string]any {
		return map[string]any{"driver": "raw", "file": fileBase(e, k)}
	}
	add("blockdev-add(raw)", raw, false, map[string][]any{"offset": {512}, "size": {4096}})
	// null-aio and null-co share their options (walked under null-aio).
	for _, drv := range []string{"null-aio", "null-co"} {
		null := func(*honestyEnv, kind) map[string]any { return map[string]any{"driver": drv} }
		for rel, values := range map[string][]any{"size": {1 << 20}, "latency-ns": {1000}, "read-zeroes": {true}} {
			key := "blockdev-add(null-aio)." + rel
			inner := nodeProbe(null, rel, false, values...)
			if prev, ok := p[key]; ok {
				// Try both drivers with each value.
				prevTry := prev.try
				prev.try = func(e *honestyEnv, k kind, v any) string {
					if d := prevTry(e, k, v); d != "" {
						return d
					}
					return inner.try(e, k, v)
				}
				p[key] = prev
				continue
			}
			p[key] = inner
		}
	}
	qcow2 := func(e *honestyEnv, k kind) map[string]any {
		return map[string]any{"driver": "qcow2", "file": map[string]any{"driver": "file", "filename": e.file(k, "disk.qcow2")}}
	}
	add("blockdev-add(qcow2)", qcow2, false, map[string][]any{
		"backing": {nil, "hq"}, "lazy-refcounts": {true}, "pass-discard-request": {true},
		"pass-discard-snapshot": {false}, "pass-discard-other": {true},
		"overlap-check": {"all", map[string]any{}}, "overlap-check|.template": nil,
		"cache-size": {1 << 20}, "l2-cache-size": {1 << 19}, "l2-cache-entry-size": {4096},
		"refcount-cache-size": {1 << 16}, "cache-clean-interval": {10},
	})
	for _, f := range []string{"main-header", "active-l1", "active-l2", "refcount-table", "refcount-block",
		"snapshot-table", "inactive-l1", "inactive-l2", "bitmap-directory"} {
		p["blockdev-add(qcow2).overlap-check|."+f] = nodeProbe(qcow2, "overlap-check|."+f, false, true, false)
	}
	blkdebug := func(e *honestyEnv, k kind) map[string]any {
		return map[string]any{"driver": "blkdebug", "image": raw(e, k)}
	}
	add("blockdev-add(blkdebug)", blkdebug, false, map[string][]any{
		"config": {"blkdebug.conf"}, "align": {4096}, "max-transfer": {65536},
		"opt-write-zero": {4096}, "max-write-zero": {65536}, "opt-discard": {4096}, "max-discard": {65536},
		"inject-error":        {[]any{map[string]any{"event": "read_aio"}}},
		"set-state":           {[]any{map[string]any{"event": "read_aio", "new_state": 2}}},
		"take-child-perms":    {[]any{"consistent-read"}, []any{"write"}, []any{"write-unchanged"}, []any{"resize"}},
		"unshare-child-perms": {[]any{"consistent-read"}, []any{"write"}, []any{"write-unchanged"}, []any{"resize"}},
	})
	ruleBase := func(list string) func(*honestyEnv, kind) map[string]any {
		return func(e *honestyEnv, k kind) map[string]any {
			o := blkdebug(e, k)
			r := map[string]any{"event": "read_aio"}
			if list == "set-state" {
				r["new_state"] = 2
			}
			o[list] = []any{r}
			return o
		}
	}
	add("blockdev-add(blkdebug)", ruleBase("inject-error"), false, map[string][]any{
		"inject-error[].state": {1}, "inject-error[].iotype": nil, "inject-error[].errno": {5},
		"inject-error[].sector": {0}, "inject-error[].once": {true}, "inject-error[].immediately": {true},
	})
	add("blockdev-add(blkdebug)", ruleBase("set-state"), false, map[string][]any{"set-state[].state": {1}})
	cor := func(e *honestyEnv, k kind) map[string]any {
		return map[string]any{"driver": "copy-on-read", "file": "hov"}
	}
	add("blockdev-add(copy-on-read)", cor, false, map[string][]any{"bottom": {"hq"}})
	cbw := func(e *honestyEnv, k kind) map[string]any {
		return map[string]any{"driver": "copy-before-write", "file": "hr", "target": "ht"}
	}
	add("blockdev-add(copy-before-write)", cbw, false, map[string][]any{
		"bitmap": {map[string]any{"node": "hr", "name": "b0"}}, "on-cbw-error": nil, "cbw-timeout": {5},
	})
	qbm := func(e *honestyEnv, k kind) map[string]any {
		return map[string]any{"driver": "qbm", "file": map[string]any{"driver": "file", "filename": e.file(k, "disk.qbm")}}
	}
	add("blockdev-add(qbm)", qbm, true, map[string][]any{
		"image":   {map[string]any{"driver": "raw", "file": map[string]any{"driver": "file", "filename": "raw.img"}}},
		"backing": {nil}, "bitmap-sync": nil,
	})

	// blockdev-create.
	fileCreate := func(e *honestyEnv, k kind) map[string]any {
		return map[string]any{"driver": "file", "filename": e.file(k, fmt.Sprintf("new%d.img", e.next())), "size": 1 << 20}
	}
	for rel, values := range map[string][]any{"preallocation": nil, "nocow": {true}, "extent-size-hint": {1 << 20}} {
		p["blockdev-create.options(file)."+rel] = createProbe(fileCreate, rel, false, values...)
	}
	qcow2Create := func(e *honestyEnv, k kind) map[string]any {
		n := e.next()
		f := e.file(k, fmt.Sprintf("new%d.qcow2", n))
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			e.t.Fatal(err)
		}
		return map[string]any{"driver": "qcow2", "file": map[string]any{"driver": "file", "filename": f}, "size": 1 << 20}
	}
	for rel, values := range map[string][]any{
		"version": nil, "backing-file": {"raw.img"}, "backing-fmt": nil, "cluster-size": {65536},
		"preallocation": nil, "lazy-refcounts": {true}, "refcount-bits": {16}, "compression-type": nil,
	} {
		base := qcow2Create
		if rel == "backing-fmt" {
			base = withBackingFile(base)
		}
		p["blockdev-create.options(qcow2)."+rel] = createProbe(base, rel, false, values...)
	}
	qbmCreateBase := func(e *honestyEnv, k kind) map[string]any {
		f := e.file(k, fmt.Sprintf("new%d.qbm", e.next()))
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			e.t.Fatal(err)
		}
		return map[string]any{"driver": "qbm", "file": map[string]any{"driver": "file", "filename": f}, "size": 1 << 20}
	}
	for rel, values := range map[string][]any{
		"size": {2 << 20}, "image": {"honest.img"}, "backing-file": {"raw.img"}, "backing-fmt": {"raw"},
		"granularity": {65536}, "dirty-bitmaps": {1},
	} {
		base := qbmCreateBase
		if rel == "backing-fmt" {
			base = withBackingFile(base)
		}
		p["blockdev-create.options(qbm)."+rel] = createProbe(base, rel, true, values...)
	}

	// Queries and bitmaps.
	p["query-named-block-nodes.flat"] = cmdProbe("query-named-block-nodes", func(*honestyEnv, kind) map[string]any { return map[string]any{} }, "flat", nil, true, false)
	p["query-blockstats.query-nodes"] = cmdProbe("query-blockstats", func(*honestyEnv, kind) map[string]any { return map[string]any{} }, "query-nodes", nil, true, false)
	// qbmond keeps persistent bitmaps in QBM descriptors (README, "QBM"),
	// QSD in qcow2 images: each is tried where its daemon keeps them.
	bitmapBase := func(e *honestyEnv, k kind) map[string]any {
		node := "hq"
		if k == kindQbmond {
			node = "hqbm"
		}
		return map[string]any{"node": node, "name": fmt.Sprintf("hb%d", e.next())}
	}
	removeBitmap := func(e *honestyEnv, k kind, a map[string]any) {
		e.c[k].ok("block-dirty-bitmap-remove", map[string]any{"node": a["node"], "name": a["name"]})
	}
	for rel, values := range map[string][]any{"granularity": {65536}, "persistent": {true}, "disabled": {true}} {
		p["block-dirty-bitmap-add."+rel] = cmdProbe("block-dirty-bitmap-add", bitmapBase, rel, removeBitmap, values...)
	}
	p["transaction.properties"] = cmdProbe("transaction", func(*honestyEnv, kind) map[string]any {
		return map[string]any{"actions": []any{}}
	}, "properties", nil, map[string]any{})
	p["transaction.properties.completion-mode"] = cmdProbe("transaction", func(*honestyEnv, kind) map[string]any {
		return map[string]any{"actions": []any{}}
	}, "properties.completion-mode", nil)

	// A backup's performance knobs.
	for rel, values := range map[string][]any{"x-perf": {map[string]any{}}, "x-perf.use-copy-range": {true, false},
		"x-perf.max-workers": {4}, "x-perf.max-chunk": {1 << 20}} {
		rel, values := rel, values
		p["blockdev-backup."+rel] = honestyProbe{values: values, try: func(e *honestyEnv, k kind, v any) string {
			id := fmt.Sprintf("hj%d", e.next())
			args := map[string]any{"job-id": id, "device": "hr", "target": "ht", "sync": "full", "auto-dismiss": false}
			setMember(args, rel, v)
			if d := errDesc(e.c[k].cmd("blockdev-backup", args)); d != "" {
				return d
			}
			return waitConcluded(e.t, e.c[k], id)
		}}
	}
	for _, cmd := range []string{"blockdev-backup", "drive-backup"} {
		for rel, values := range map[string][]any{"job-id": {"$job"}, "speed": {1 << 30}, "bitmap": {"b0"},
			"bitmap-mode": nil, "compress": {true}, "on-source-error": nil, "on-target-error": nil,
			"auto-finalize": {false, true}, "auto-dismiss": {true, false}, "filter-node-name": {"$filter"}} {
			p[cmd+"."+rel] = backupProbe(cmd, rel, values...)
		}
	}
	mirrorProbes(p)
	p["drive-backup.format"] = backupProbe("drive-backup", "format", "raw", "qcow2")
	p["drive-backup.mode"] = backupProbe("drive-backup", "mode")
	for rel, values := range map[string][]any{"device": {"$node"}, "node-name": {"$node"},
		"snapshot-node-name": {"$snap"}, "format": {"qcow2"}, "mode": nil} {
		p["blockdev-snapshot-sync."+rel] = snapshotProbe(rel, values...)
	}
	p["drive-backup.x-perf"] = honestyProbe{values: []any{map[string]any{"max-workers": 2, "max-chunk": 1 << 20, "use-copy-range": false}},
		try: func(e *honestyEnv, k kind, v any) string {
			id := fmt.Sprintf("hj%d", e.next())
			args := map[string]any{"job-id": id, "device": "hr", "target": e.file(k, id+".img"), "format": "raw",
				"sync": "full", "auto-dismiss": false, "x-perf": v}
			if d := errDesc(e.c[k].cmd("drive-backup", args)); d != "" {
				return d
			}
			return waitConcluded(e.t, e.c[k], id)
		}}

	// Commit and stream, each on a chain of its own.
	for cmd, members := range map[string]map[string][]any{
		"block-commit": {"job-id": {"$job"}, "base-node": {"$base"}, "base": {"$basefile"}, "top-node": {"$mid"},
			"top": {"$midfile"}, "backing-file": {"b.qcow2"}, "speed": {1 << 30}, "on-error": nil,
			"filter-node-name": {"$filter"}, "auto-finalize": {false, true}, "auto-dismiss": {true, false}},
		"block-stream": {"job-id": {"$job"}, "base": {"$basefile"}, "base-node": {"$base"}, "backing-file": {"b.qcow2"},
			"bottom": {"$mid"}, "speed": {1 << 30}, "on-error": nil, "filter-node-name": {"$filter"},
			"auto-finalize": {false, true}, "auto-dismiss": {true, false}},
	} {
		for rel, values := range members {
			p[cmd+"."+rel] = chainJobProbe(cmd, rel, values...)
		}
	}

	// The NBD server and exports (the server runs on a unix socket
	// during the export probes; these stop and start it).
	restart := func(e *honestyEnv, k kind, _ map[string]any) {
		e.c[k].ok("nbd-server-stop", nil)
		e.startNBD(k)
	}
	inet := func(e *honestyEnv, k kind) map[string]any {
		e.c[k].ok("nbd-server-stop", nil)
		return map[string]any{"addr": map[string]any{"type": "inet", "data": map[string]any{"host": "127.0.0.1", "port": "0"}}}
	}
	unixAddr := func(e *honestyEnv, k kind) map[string]any {
		e.c[k].ok("nbd-server-stop", nil)
		return map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": e.file(k, fmt.Sprintf("h%d.sock", e.next()))}}}
	}
	withServer := func(pr honestyProbe) honestyProbe {
		inner := pr.try
		pr.try = func(e *honestyEnv, k kind, v any) string {
			d := inner(e, k, v)
			if d != "" {
				e.startNBD(k)
			}
			return d
		}
		return pr
	}
	for rel, values := range map[string][]any{"numeric": {true}, "to": {65535}, "ipv4": {true}, "ipv6": {false},
		"keep-alive": {true}, "mptcp": {true, false}} {
		// InetSocketAddress is walked first under blockdev-add's nbd
		// driver; its probes there try the server's members too.
		p["blockdev-add(nbd).server(inet)."+rel] = withServer(cmdProbe("nbd-server-start", inet, "addr.data."+rel, restart, values...))
	}
	for rel, values := range map[string][]any{"abstract": {true, false}, "tight": {true, false}} {
		p["blockdev-add(nbd).server(unix)."+rel] = withServer(cmdProbe("nbd-server-start", unixAddr, "addr.data."+rel, restart, values...))
	}
	p["nbd-server-start.max-connections"] = withServer(cmdProbe("nbd-server-start", unixAddr, "max-connections", restart, 2))
	exportBase := func(e *honestyEnv, k kind) map[string]any {
		n := e.next()
		return map[string]any{"type": "nbd", "id": fmt.Sprintf("he%d", n), "node-name": "hr", "name": fmt.Sprintf("he%d", n)}
	}
	delExport := func(e *honestyEnv, k kind, a map[string]any) {
		e.c[k].ok("block-export-del", map[string]any{"id": a["id"]})
	}
	for rel, values := range map[string][]any{
		"fixed-iothread": {true}, "writable": {true}, "writethrough": {true},
	} {
		p["block-export-add."+rel] = cmdProbe("block-export-add", exportBase, rel, delExport, values...)
	}
	for rel, values := range map[string][]any{
		"name": {"honest-name"}, "description": {"a disk"}, "bitmaps": {[]any{"bd"}}, "allocation-depth": {true},
	} {
		p["block-export-add(nbd)."+rel] = cmdProbe("block-export-add", exportBase, rel, delExport, values...)
	}
	p["block-export-del.mode"] = honestyProbe{try: func(e *honestyEnv, k kind, v any) string {
		a := exportBase(e, k)
		e.c[k].ok("block-export-add", a)
		return errDesc(e.c[k].cmd("block-export-del", map[string]any{"id": a["id"], "mode": v}))
	}}
	serverAddBase := func(e *honestyEnv, k kind) map[string]any {
		return map[string]any{"device": "hr", "name": fmt.Sprintf("hn%d", e.next())}
	}
	removeExport := func(e *honestyEnv, k kind, a map[string]any) {
		e.c[k].ok("nbd-server-remove", map[string]any{"name": a["name"]})
	}
	for rel, values := range map[string][]any{"name": {"honest-export"}, "description": {"a disk"}, "writable": {true}, "bitmap": {"bd"}} {
		p["nbd-server-add."+rel] = cmdProbe("nbd-server-add", serverAddBase, rel, removeExport, values...)
	}
	p["nbd-server-remove.mode"] = honestyProbe{try: func(e *honestyEnv, k kind, v any) string {
		a := serverAddBase(e, k)
		e.c[k].ok("nbd-server-add", a)
		return errDesc(e.c[k].cmd("nbd-server-remove", map[string]any{"name": a["name"], "mode": v}))
	}}

	// The nbd driver, each daemon a client of the other's server.
	for rel, values := range map[string][]any{
		"export": {"$export"}, "tls-creds": {"t0"}, "tls-hostname": {"h"},
		"x-dirty-bitmap": {"qemu:dirty-bitmap:bd"}, "reconnect-delay": {1}, "open-timeout": {1},
		"server(unix).abstract": {true, false}, "server(unix).tight": {true, false},
		"server(inet).numeric": {true}, "server(inet).to": {65535}, "server(inet).ipv4": {true},
		"server(inet).ipv6": {false}, "server(inet).keep-alive": {true}, "server(inet).mptcp": {true, false},
	} {
		key := "blockdev-add(nbd)." + rel
		inner := nbdProbe(rel, values...)
		if server, ok := p[key]; ok {
			// The socket address members: as server (above), then as client.
			serverTry := server.try
			inner.try = func(e *honestyEnv, k kind, v any) string {
				if d := serverTry(e, k, v); d != "" {
					return d
				}
				return nbdProbe(rel).try(e, k, v)
			}
			if len(server.values) > 0 {
				inner.values = server.values
			}
		}
		p[key] = inner
	}
	return p
}

// nbdProbe tries a member of the nbd driver on a node reading an export
// of hr (bitmap bd offered) that the other daemon adds for the try; the
// server is its NBD server, or for inet members 127.0.0.1:1 (nothing
// listens: both daemons fail to connect alike). "$export" stands for the
// export's name.
func nbdProbe(rel string, values ...any) honestyProbe {
	return honestyProbe{values: values, try: func(e *honestyEnv, k kind, v any) string {
		other := kindQSD
		if k == kindQSD {
			other = kindQbmond
		}
		n := e.next()
		name := fmt.Sprintf("hb%d", n)
		e.c[other].ok("block-export-add", map[string]any{"type": "nbd", "id": name, "node-name": "hr", "name": name, "bitmaps": []any{"bd"}})
		defer e.c[other].ok("block-export-del", map[string]any{"id": name})
		server := map[string]any{"type": "unix", "path": e.file(other, "nbd.sock")}
		if strings.HasPrefix(rel, "server(inet)") {
			server = map[string]any{"type": "inet", "host": "127.0.0.1", "port": "1"}
		}
		o := map[string]any{"driver": "nbd", "node-name": name, "read-only": true, "export": name, "server": server}
		if v == "$export" {
			v = name
		}
		setMember(o, strings.NewReplacer("(unix)", "", "(inet)", "").Replace(rel), v)
		c := e.c[k]
		if d := errDesc(c.cmd("blockdev-add", o)); d != "" {
			return d
		}
		c.ok("blockdev-del", map[string]any{"node-name": name})
		return ""
	}}
}

// coveredElsewhere are advertised members other tests exercise on both
// daemons, with where.
var coveredElsewhere = map[string]string{
	"drop-intermediate.backing-file": "chain_test.go (qbmond's own command)",
	"qmp_capabilities.enable":        "negotiation.txt",
	"block-job-cancel.force":         "blockjobs.txt, blockjobs_test.go",
}

// pendingElsewhere are members that work on another branch of the same
// issue and are refused on this one until it is merged. An entry that
// works must leave this list.
var pendingElsewhere = map[string]string{}

// same tells whether two daemons' errors say the same, their directories
// and the probes' numbered names aside.
func (e *honestyEnv) same(a string, ka kind, b string, kb kind) bool {
	norm := func(s string, k kind) string {
		s = strings.ReplaceAll(s, e.dir[k], "$DIR")
		return probeName.ReplaceAllString(s, "h?")
	}
	return norm(a, ka) == norm(b, kb)
}

var probeName = regexp.MustCompile(`\bh[pcjenb][0-9]+|new[0-9]+`)

func (e *honestyEnv) startNBD(k kind) {
	e.c[k].ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": e.file(k, "nbd.sock")}}})
}

func TestSchemaHonesty(t *testing.T) {
	requireTool(t, "qemu-img")
	env := &honestyEnv{t: t, dir: map[kind]string{}, c: map[kind]*client{}}
	for _, k := range []kind{kindQSD, kindQbmond} {
		dir := shortTempDir(t)
		env.dir[k] = dir
		for _, args := range [][]string{
			{"create", "-q", "-f", "qcow2", filepath.Join(dir, "disk.qcow2"), "4M"},
			{"create", "-q", "-f", "qcow2", filepath.Join(dir, "hq.qcow2"), "4M"},
			{"create", "-q", "-f", "raw", filepath.Join(dir, "raw.img"), "4M"},
			{"create", "-q", "-f", "raw", filepath.Join(dir, "hr.img"), "4M"},
			{"create", "-q", "-f", "raw", filepath.Join(dir, "ht.img"), "4M"},
			{"create", "-q", "-f", "qcow2", "-b", "hq.qcow2", "-F", "qcow2", filepath.Join(dir, "hov.qcow2")},
		} {
			if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
				t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "blkdebug.conf"), []byte("[inject-error]\nevent = \"read_aio\"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		c := startDaemon(t, k, dir).connect()
		env.c[k] = c
		c.ok("blockdev-add", map[string]any{"driver": "file", "node-name": "hqf", "filename": filepath.Join(dir, "hq.qcow2")})
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "hq", "file": "hqf"})
		c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "hr", "file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "hr.img")}})
		c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "ht", "file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "ht.img")}})
		c.ok("block-dirty-bitmap-add", map[string]any{"node": "hr", "name": "b0"})
		c.ok("block-dirty-bitmap-add", map[string]any{"node": "hr", "name": "bd", "disabled": true})
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "hov", "backing": "hq",
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "hov.qcow2")}})
		if err := os.WriteFile(filepath.Join(dir, "honest.img"), make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		env.startNBD(k)
		if k == kindQbmond {
			qbmCreate(t, c, dir, map[string]any{"size": 4 << 20})
			if err := os.Rename(filepath.Join(dir, "disk.qbm"), filepath.Join(dir, "hqbm.qbm")); err != nil {
				t.Fatal(err)
			}
			qbmCreate(t, c, dir, map[string]any{"size": 4 << 20})
			c.ok("blockdev-add", map[string]any{"driver": "qbm", "node-name": "hqbm",
				"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "hqbm.qbm")}})
		}
	}
	qb := env.c[kindQbmond]
	members := advertisedMembers(t, qb.ok("query-qmp-schema", nil).([]any))
	probes := honestyProbes()
	advertised := map[string]bool{}
	for _, m := range members {
		advertised[m.path] = true
		_, probed := probes[m.path]
		if !probed && coveredElsewhere[m.path] == "" {
			t.Errorf("%s is advertised but neither tried here nor covered elsewhere: add a probe (a plausible value to try) to honestyProbes, or the test that exercises it to coveredElsewhere", m.path)
		}
	}
	// What coveredElsewhere claims is checked: one of the files named
	// uses the command with the member.
	for path, where := range coveredElsewhere {
		cmd, _, _ := strings.Cut(path, ".")
		cmd, _, _ = strings.Cut(cmd, "(")
		member := path[strings.LastIndex(path, ".")+1:]
		found := false
		for _, f := range strings.Split(where, ", ") {
			f, _, _ = strings.Cut(f, " ")
			name := f
			if strings.HasSuffix(f, ".txt") {
				name = filepath.Join("testdata", "transcripts", f)
			}
			b, err := os.ReadFile(name)
			if err != nil {
				t.Errorf("coveredElsewhere[%s]: %v", path, err)
				continue
			}
			if strings.Contains(string(b), `"`+cmd+`"`) && strings.Contains(string(b), `"`+member+`"`) {
				found = true
			}
		}
		if !found {
			t.Errorf("coveredElsewhere[%s] names %s, where %s does not appear with %q: probe it here instead", path, where, cmd, member)
		}
	}
	for _, table := range []map[string]bool{keysOf(probes), keysOf(coveredElsewhere)} {
		for path := range table {
			if !advertised[path] {
				t.Errorf("%s is in a table of TestSchemaHonesty but not advertised: remove it", path)
			}
		}
	}
	var refused []string
	tried := 0
	for _, m := range members {
		pr, ok := probes[m.path]
		if !ok {
			continue
		}
		values := pr.values
		if len(values) == 0 {
			values = m.values
		}
		if len(values) == 0 {
			values = []any{true}
		}
		var bad []string
		for _, v := range values {
			tried++
			got := pr.try(env, kindQbmond, v)
			if got != "" {
				t.Logf("%s = %v: %s", m.path, v, got)
			}
			if got == "" || !refusal.MatchString(got) {
				continue
			}
			if !pr.qbmond {
				// QEMU's own refusal, or QSD not knowing the value
				// (a driver of qbmond's own), is not qbmond's.
				ref := pr.try(env, kindQSD, v)
				if env.same(got, kindQbmond, ref, kindQSD) || strings.Contains(ref, "does not accept value 'qbm'") {
					continue
				}
				got += fmt.Sprintf(" (QSD: %q)", ref)
			}
			bad = append(bad, fmt.Sprintf("%v: %s", v, got))
		}
		if len(bad) == 0 {
			if why, pending := pendingElsewhere[m.path]; pending {
				t.Errorf("%s works now (%s): remove it from pendingElsewhere", m.path, why)
			}
			continue
		}
		if why, pending := pendingElsewhere[m.path]; pending {
			t.Logf("%s: refused until %s is merged: %s", m.path, why, strings.Join(bad, "; "))
			continue
		}
		refused = append(refused, m.path+" = "+strings.Join(bad, "; "))
	}
	slices.Sort(refused)
	for _, r := range refused {
		t.Errorf("advertised but refused: %s", r)
	}
	t.Logf("%d optional members advertised, %d values tried, %d covered elsewhere", len(members), tried, len(coveredElsewhere))
}

func keysOf[V any](m map[string]V) map[string]bool {
	out := map[string]bool{}
	for k := range m {
		out[k] = true
	}
	return out
}

// withBackingFile is base with backing-file raw.img: a backing format
// needs a backing file.
func withBackingFile(base func(*honestyEnv, kind) map[string]any) func(*honestyEnv, kind) map[string]any {
	return func(e *honestyEnv, k kind) map[string]any {
		o := base(e, k)
		o["backing-file"] = "raw.img"
		return o
	}
}
