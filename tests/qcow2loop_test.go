package tests

import (
	"path/filepath"
	"testing"
)

// TestQcow2BackingLoop opens a qcow2 image whose backing chain leads back
// to itself (a.qcow2 → b.qcow2 → a.qcow2). Writable, image locking
// refuses the second open of a.qcow2 on both daemons alike. Read-only or
// with locking off, QSD 7.2 opens the chain without end (memory and file
// descriptors grow until it dies), so it cannot referee those cases:
// qbmond must refuse them with a clear error naming the image, and keep
// serving afterwards.
func TestQcow2BackingLoop(t *testing.T) {
	loop := func(t *testing.T, dir string) {
		sh(t, dir, `qemu-img create -q -f qcow2 a.qcow2 1M
qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2
qemu-img rebase -u -f qcow2 -b b.qcow2 -F qcow2 a.qcow2
qemu-img create -q -f qcow2 ok.qcow2 1M
`)
	}
	add := func(name, img string, extra map[string]any) map[string]any {
		a := map[string]any{"driver": "qcow2", "node-name": name, "file": map[string]any{"driver": "file", "filename": img}}
		for k, v := range extra {
			a[k] = v
		}
		return a
	}
	writable := map[kind]string{}
	for _, k := range []kind{kindQbmond, kindQSD} {
		dir := shortTempDir(t)
		loop(t, dir)
		d := startDaemon(t, k, dir)
		c := d.connect()
		class, desc := c.fail("blockdev-add", add("a", filepath.Join(dir, "a.qcow2"), nil))
		writable[k] = class + ": " + desc
		d.stop()
	}
	if writable[kindQbmond] != writable[kindQSD] {
		t.Errorf("writable loop: qbmond %q, QSD %q", writable[kindQbmond], writable[kindQSD])
	}

	dir := shortTempDir(t)
	loop(t, dir)
	d := startDaemon(t, kindQbmond, dir)
	c := d.connect()
	a, b := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2")
	for _, tc := range []struct {
		args map[string]any
		want string
	}{
		{add("a", a, map[string]any{"read-only": true}),
			"Could not open backing file: Could not open backing file: qcow2 backing loop: " + a + " is part of its own backing chain"},
		{add("b", b, map[string]any{"read-only": true}),
			"Could not open backing file: Could not open backing file: qcow2 backing loop: " + b + " is part of its own backing chain"},
		{map[string]any{"driver": "qcow2", "node-name": "a", "file": map[string]any{"driver": "file", "filename": a, "locking": "off"}},
			"Could not open backing file: Could not open backing file: qcow2 backing loop: " + a + " is part of its own backing chain"},
	} {
		if class, desc := c.fail("blockdev-add", tc.args); class != "GenericError" || desc != tc.want {
			t.Errorf("blockdev-add %v: %s: %s, want GenericError: %s", tc.args, class, desc, tc.want)
		}
	}
	// Still serving, and nothing of the loops is left in the graph.
	c.ok("blockdev-add", add("ok", filepath.Join(dir, "ok.qcow2"), nil))
	nodes, _ := c.ok("query-named-block-nodes", map[string]any{"flat": true}).([]any)
	if len(nodes) != 2 { // ok and its file node
		t.Errorf("query-named-block-nodes after the refused loops: %v", nodes)
	}
	d.stop()
}
