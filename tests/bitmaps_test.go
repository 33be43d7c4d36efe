package tests

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// nodeBitmaps returns the dirty-bitmaps of node as query-named-block-nodes
// shows them.
func nodeBitmaps(t *testing.T, c *client, node string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, n := range c.ok("query-named-block-nodes", map[string]any{"flat": true}).([]any) {
		m := n.(map[string]any)
		if m["node-name"] != node {
			continue
		}
		bms, _ := m["dirty-bitmaps"].([]any)
		for _, bm := range bms {
			out = append(out, bm.(map[string]any))
		}
	}
	return out
}

// bitmapState is what the test compares between daemons: sha256 and count
// of every bitmap, in order.
func bitmapState(t *testing.T, c *client, node string, names []string) string {
	t.Helper()
	var b strings.Builder
	counts := map[string]string{}
	for _, bi := range nodeBitmaps(t, c, node) {
		name, _ := bi["name"].(string) // an anonymous bitmap has none
		if name == "" {
			fmt.Fprintf(&b, "anonymous: count=%v granularity=%v recording=%v busy=%v\n", bi["count"], bi["granularity"], bi["recording"], bi["busy"])
			continue
		}
		counts[name] = fmt.Sprintf("count=%v granularity=%v recording=%v", bi["count"], bi["granularity"], bi["recording"])
	}
	for _, name := range names {
		r := c.ok("x-debug-block-dirty-bitmap-sha256", map[string]any{"node": node, "name": name}).(map[string]any)
		fmt.Fprintf(&b, "%s: %s %v\n", name, counts[name], r["sha256"])
	}
	return b.String()
}

// bitmapDisk starts a daemon of kind k with a raw node d0 (discard=unmap)
// over a fresh sparse file of 4 MiB + 1536 bytes, adds the given bitmaps
// (block-dirty-bitmap-add arguments without node) and exports d0
// writable with the bitmaps named in exported.
func bitmapDisk(t *testing.T, k kind, bitmaps []map[string]any, exported []any) (*daemon, *client, string) {
	t.Helper()
	dir := shortTempDir(t)
	sparseImage(t, dir, 4<<20+1536)
	d := startDaemon(t, k, dir)
	c := d.connect()
	c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "d0", "discard": "unmap",
		"file": map[string]any{"driver": "file", "filename": dir + "/disk.img"}})
	for _, b := range bitmaps {
		b["node"] = "d0"
		c.ok("block-dirty-bitmap-add", b)
	}
	sock := dir + "/nbd.sock"
	c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	exp := map[string]any{"type": "nbd", "id": "e0", "node-name": "d0", "writable": true}
	if exported != nil {
		exp["bitmaps"] = exported
	}
	c.ok("block-export-add", exp)
	return d, c, "nbd+unix:///d0?socket=" + sock
}

// mixedWrites write and zero at aligned and unaligned offsets, across
// cluster and granule boundaries: the start of bitmapWorkload and
// qcow2Workload.
var mixedWrites = []string{
	"write -P 0xab 0 64k",
	"write -P 0xcd 100001 3333",
	"write -P 0x11 1m 1m",
	"write -z 1m 4k",
	"write -P 0x22 3m 512",
	"write -P 0x33 4095 2",
	"write -P 0x44 65535 65538",
}

// bitmapWorkload writes at aligned and unaligned offsets, across
// granule boundaries, zeroes and discards (the node has discard=unmap, so
// discards mark bitmaps too).
var bitmapWorkload = append(slices.Clip(mixedWrites),
	"discard 2560k 64k",
	"write -z 3000000 100",
	"write -P 0x55 4194304 1536",
	"flush",
)

// The same qemu-io workload through an NBD export marks the same bits in
// qbmond's bitmaps as in QSD's, at several granularities, and the bitmap
// commands (clear, disable, enable, merge) leave the same bits.
func TestBitmapsLikeQSD(t *testing.T) {
	names := []string{"g512", "g4k", "g64k", "g1m", "gdef", "off"}
	allNames := append(names, "new")
	steps := map[kind][]string{}
	for _, k := range []kind{kindQSD, kindQbmond} {
		d, c, uri := bitmapDisk(t, k, []map[string]any{
			{"name": "g512", "granularity": 512}, {"name": "g4k", "granularity": 4096},
			{"name": "g64k", "granularity": 65536}, {"name": "g1m", "granularity": 1 << 20},
			{"name": "gdef"}, {"name": "off", "disabled": true},
		}, nil)
		record := func(label string) {
			have := names
			if strings.Contains(label, "transaction") {
				have = allNames
			}
			steps[k] = append(steps[k], label+"\n"+bitmapState(t, c, "d0", have))
		}
		record("fresh")
		qemuIO(t, uri, bitmapWorkload)
		record("after workload")
		c.ok("block-dirty-bitmap-clear", map[string]any{"node": "d0", "name": "g4k"})
		c.ok("block-dirty-bitmap-disable", map[string]any{"node": "d0", "name": "g64k"})
		c.ok("block-dirty-bitmap-enable", map[string]any{"node": "d0", "name": "off"})
		qemuIO(t, uri, []string{"write -P 0x5 4194303 1", "write -z 2000000 70000", "discard 3m 4k", "write -P 0x6 0 1"})
		record("after clear/disable/enable and more writes")
		c.ok("block-dirty-bitmap-merge", map[string]any{"node": "d0", "target": "off",
			"bitmaps": []any{"g512", map[string]any{"node": "d0", "name": "g1m"}}})
		c.ok("block-dirty-bitmap-merge", map[string]any{"node": "d0", "target": "g1m", "bitmaps": []any{"g4k"}})
		record("after merges")
		act := func(typ string, data map[string]any) map[string]any {
			return map[string]any{"type": typ, "data": data}
		}
		c.ok("transaction", map[string]any{"actions": []any{
			act("block-dirty-bitmap-clear", map[string]any{"node": "d0", "name": "g1m"}),
			act("block-dirty-bitmap-merge", map[string]any{"node": "d0", "target": "g1m", "bitmaps": []any{"gdef"}}),
			act("block-dirty-bitmap-disable", map[string]any{"node": "d0", "name": "off"}),
			act("block-dirty-bitmap-add", map[string]any{"node": "d0", "name": "new", "granularity": 16384}),
		}})
		qemuIO(t, uri, []string{"write -P 0x7 1234567 89012"})
		record("after a transaction and a write")
		c.fail("transaction", map[string]any{"actions": []any{
			act("block-dirty-bitmap-clear", map[string]any{"node": "d0", "name": "g512"}),
			act("block-dirty-bitmap-merge", map[string]any{"node": "d0", "target": "g4k", "bitmaps": []any{"g512"}}),
			act("block-dirty-bitmap-enable", map[string]any{"node": "d0", "name": "off"}),
			act("abort", map[string]any{}),
		}})
		record("after a transaction rolled back")
		d.stop()
	}
	for i := range steps[kindQSD] {
		if steps[kindQSD][i] != steps[kindQbmond][i] {
			t.Errorf("QSD:\n%s\nqbmond:\n%s", steps[kindQSD][i], steps[kindQbmond][i])
		}
	}
	if !strings.Contains(steps[kindQbmond][1], "count=") || strings.Contains(steps[kindQbmond][1], "g4k: count=0 ") {
		t.Errorf("the workload marked nothing:\n%s", steps[kindQbmond][1])
	}
}

// Exported bitmaps show the same dirty extents through NBD as QSD's, to
// nbdinfo and to qemu-img map with x-dirty-bitmap.
func TestBitmapExportLikeQSD(t *testing.T) {
	maps := map[kind]string{}
	for _, k := range []kind{kindQSD, kindQbmond} {
		d, _, uri := bitmapDisk(t, k, []map[string]any{{"name": "b64k"}, {"name": "b4k", "granularity": 4096}},
			[]any{"b64k", "b4k"})
		dir, sock := d.dir, d.dir+"/nbd.sock"
		qemuIO(t, uri, bitmapWorkload)
		var b strings.Builder
		for _, bm := range []string{"b64k", "b4k"} {
			b.WriteString(run(t, "nbdinfo", "--map=qemu:dirty-bitmap:"+bm, uri))
			b.WriteString(run(t, "qemu-img", "map", "--output=json", "--image-opts",
				"driver=nbd,export=d0,server.type=unix,server.path="+sock+",x-dirty-bitmap=qemu:dirty-bitmap:"+bm))
		}
		b.WriteString(run(t, "nbdinfo", "--list", uri))
		maps[k] = strings.ReplaceAll(b.String(), dir, "DIR")
		d.stop()
	}
	if maps[kindQSD] != maps[kindQbmond] {
		t.Fatalf("QSD:\n%s\nqbmond:\n%s", maps[kindQSD], maps[kindQbmond])
	}
	if !strings.Contains(maps[kindQbmond], "dirty") {
		t.Fatalf("no dirty extents:\n%s", maps[kindQbmond])
	}
}
