package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Images the event scenarios start from (each made in a fresh directory).
const (
	// A fresh qcow2 image: the first write allocates an L2 table and a
	// data cluster.
	evFresh = "qemu-img create -q -f qcow2 t.qcow2 1M\n"
	// Clusters 0 and 1 hold data.
	evData = evFresh + "qemu-io -f qcow2 -c 'write -P 1 0 128k' t.qcow2 >/dev/null\n"
	// A raw backing file full of data under a qcow2 overlay whose
	// cluster 0 holds data.
	evBacking = "qemu-img create -q -f raw b.raw 1M\nqemu-io -f raw -c 'write -P 2 0 1M' b.raw >/dev/null\n" +
		"qemu-img create -q -f qcow2 -b b.raw -F raw t.qcow2\nqemu-io -f qcow2 -c 'write -P 1 0 64k' t.qcow2 >/dev/null\n"
	// Cluster 0 compressed, cluster 1 plain data.
	evCompressed = evFresh + "qemu-io -f qcow2 -c 'write -c -P 3 0 64k' -c 'write -P 1 64k 64k' t.qcow2 >/dev/null\n"
	// 512-byte clusters: a refcount block covers 128 KiB of the file and
	// the first refcount table 8 MiB, so big writes need new ones.
	evSmall = "qemu-img create -q -f qcow2 -o cluster_size=512 t.qcow2 16M\n"
	// A raw file full of data.
	evRaw = "qemu-img create -q -f raw t.raw 1M\nqemu-io -f raw -c 'write -P 1 0 1M' t.raw >/dev/null\n"
)

// blkdebugOps runs the scenario on a daemon of kind k: setup in a fresh
// directory, the node (qcow2 over blkdebug over dir/t.qcow2 unless raw,
// then raw over blkdebug over dir/t.raw) exported over NBD, then each op:
// a qemu-io command, each in its own qemu-io (QSD drops the connection
// after a failed read, which would fail the commands after it). It
// returns what each op did.
func blkdebugOps(t *testing.T, k kind, setup string, rules, nodeOpts map[string]any, raw bool, ops []string) []string {
	t.Helper()
	d, uri := blkdebugExport(t, k, setup, rules, nodeOpts, raw)
	defer d.stop()
	var got []string
	for _, op := range ops {
		got = append(got, qemuIOResults(t, uri, op)...)
	}
	return got
}

// blkdebugSession is blkdebugOps with every operation in one qemu-io, over
// one NBD connection.
func blkdebugSession(t *testing.T, k kind, setup string, rules map[string]any, raw bool, ops []string) []string {
	t.Helper()
	d, uri := blkdebugExport(t, k, setup, rules, nil, raw)
	defer d.stop()
	return qemuIOResults(t, uri, ops...)
}

// blkdebugExport starts a daemon with a blkdebug node below the image and
// exports it writable over NBD; it returns the daemon and the export's URI.
func blkdebugExport(t *testing.T, k kind, setup string, rules, nodeOpts map[string]any, raw bool) (*daemon, string) {
	t.Helper()
	dir := shortTempDir(t)
	sh(t, dir, setup)
	img, format := "t.qcow2", "qcow2"
	if raw {
		img, format = "t.raw", "raw"
	}
	bd := map[string]any{"driver": "blkdebug", "image": map[string]any{"driver": "file", "filename": filepath.Join(dir, img)}}
	for key, v := range rules {
		bd[key] = v
	}
	opts := map[string]any{"driver": format, "file": bd}
	for key, v := range nodeOpts {
		opts[key] = v
	}
	d, _, uri := exportNode(t, k, dir, opts, true, false)
	return d, uri
}

// qemuIOResults runs ops in one qemu-io on uri and returns, for each, the
// op and its result line.
func qemuIOResults(t *testing.T, uri string, ops ...string) []string {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, op := range ops {
		args = append(args, "-c", op)
	}
	out, _ := exec.Command(requireTool(t, "qemu-io"), append(args, uri)...).CombinedOutput()
	var got []string
	for l := range strings.SplitSeq(string(out), "\n") {
		if len(got) < len(ops) && (strings.HasPrefix(l, "read ") || strings.HasPrefix(l, "wrote ") ||
			strings.HasPrefix(l, "discard ") || strings.Contains(l, "failed")) {
			got = append(got, ops[len(got)]+": "+l)
		}
	}
	for len(got) < len(ops) {
		got = append(got, ops[len(got)]+": ?")
	}
	return got
}

// qemuIOFirstLines runs each op in its own qemu-io on uri and returns, for
// each, the op and the first line qemu-io printed.
func qemuIOFirstLines(t *testing.T, uri string, ops ...string) []string {
	t.Helper()
	var got []string
	for _, op := range ops {
		out, _ := exec.Command(requireTool(t, "qemu-io"), "-f", "raw", "-c", op, uri).CombinedOutput()
		got = append(got, op+": "+strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0])
	}
	return got
}

// probeRules detect that event fired: it moves the state to 2, where
// read_aio (which a qcow2 or raw node raises for every read of guest data
// from its file) arms a rule that fails reads. A read of data after the
// operations fails exactly when the event fired during them.
func probeRules(event string) map[string]any {
	return map[string]any{
		"set-state":    []any{map[string]any{"event": event, "new_state": 2}},
		"inject-error": []any{map[string]any{"event": "read_aio", "state": 2, "iotype": "read"}},
	}
}

// TestBlkdebugEventsLikeQSD fires each debug event qbmond's drivers raise
// in a scenario where QSD raises it, and checks that it did fire (on QSD,
// which referees; the last read fails) and that qbmond agrees with every
// step. Other tests here cover the pwritev family, L1 growth, compressed
// writes, reftable_load and cor_write. Not covered: events QEMU raises where qbmond
// has no counterpart (l2_alloc_cow_read needs internal snapshots, which
// qbmond opens read-only; vmstate_*; empty_image_prepare; l1_shrink_*;
// refblock_update and reftable_update, which QEMU 7.2 never raises).
// cor_write has its own test: it is raised on the node that copies on
// read, which must then be the blkdebug node itself.
func TestBlkdebugEventsLikeQSD(t *testing.T) {
	requireTool(t, "qemu-storage-daemon")
	firstWrite := []string{"write -P 1 0 4k", "read 0 4k"}
	type tc struct {
		events   []string
		setup    string
		nodeOpts map[string]any
		raw      bool
		ops      []string
		// quiet: the event must not fire (the last read succeeds).
		quiet bool
	}
	cases := []tc{
		// A partial write into a fresh image: a new L2 table and a data
		// cluster whose untouched part reads as zeroes.
		{events: []string{"l1_update", "l2_alloc_write", "l2_update", "cluster_alloc", "refblock_alloc",
			"refblock_load", "refblock_update_part", "cluster_alloc_space", "write_aio", "flush_to_os", "flush_to_disk",
			"pwritev", "pwritev_done"},
			setup: evFresh, ops: firstWrite},
		{events: []string{"write_aio"}, setup: evFresh, ops: []string{"write -P 1 0 64k", "read 0 4k"}},
		{events: []string{"l2_load"}, setup: evData, ops: []string{"read 0 4k"}},
		// read_aio moves the state at the first read; the second fails.
		{events: []string{"read_aio"}, setup: evData, ops: []string{"read 0 4k", "read 64k 4k"}},
		{events: []string{"read_backing_aio"}, setup: evBacking, ops: []string{"read 512k 4k", "read 0 4k"}},
		{events: []string{"cow_read", "cow_write", "read_backing_aio"}, setup: evBacking,
			ops: []string{"write -P 5 128k 4k", "read 0 4k"}},
		{events: []string{"read_compressed"}, setup: evCompressed, ops: []string{"read 0 4k", "read 64k 4k"}},
		{events: []string{"cluster_free"}, setup: evData, nodeOpts: map[string]any{"discard": "unmap"},
			ops: []string{"discard 0 64k", "read 64k 4k"}},
		{events: []string{"refblock_alloc_write", "refblock_alloc_hookup"}, setup: evSmall,
			ops: []string{"write -P 1 0 1M", "read 0 4k"}},
		{events: []string{"reftable_grow", "refblock_alloc_write_blocks", "refblock_alloc_write_table",
			"refblock_alloc_switch_table"}, setup: evSmall, ops: []string{"write -P 1 0 9M", "read 0 4k"}},
		// A raw node raises flush_to_os on its file at every flush (qemu-io
		// flushes when it closes the export), flush_to_disk only after
		// writes.
		{events: []string{"flush_to_os", "flush_to_disk", "write_aio"}, setup: evRaw, raw: true, ops: firstWrite},
		{events: []string{"flush_to_os"}, setup: evRaw, raw: true, ops: []string{"read 0 4k", "read 0 4k"}},
		{events: []string{"flush_to_disk"}, setup: evRaw, raw: true, ops: []string{"read 0 4k", "read 0 4k"}, quiet: true},
		// Nothing written since the open: the flush of a qcow2 node does
		// not reach the disk either.
		{events: []string{"flush_to_disk", "l2_update", "cluster_alloc"}, setup: evData,
			ops: []string{"read 0 4k", "read 0 4k"}, quiet: true},
	}
	for _, c := range cases {
		for _, ev := range c.events {
			name := ev + "/" + strings.ReplaceAll(strings.Join(c.ops, ","), " ", "_")
			if c.raw {
				name = "raw/" + name
			}
			t.Run(name, func(t *testing.T) {
				want := blkdebugOps(t, kindQSD, c.setup, probeRules(ev), c.nodeOpts, c.raw, c.ops)
				last := want[len(want)-1]
				if fired := strings.Contains(last, "failed"); fired == c.quiet {
					t.Fatalf("QSD: event %s fired=%v, the scenario expects %v:\n%s", ev, fired, !c.quiet, strings.Join(want, "\n"))
				}
				got := blkdebugOps(t, kindQbmond, c.setup, probeRules(ev), c.nodeOpts, c.raw, c.ops)
				sameLines(t, "results", got, want)
			})
		}
	}
}

// TestBlkdebugRMWEventsLikeQSD: writes to a blkdebug node with a 4 KiB
// alignment that do not cover whole blocks are read-modify-written, with
// the pwritev_rmw_* events around the reads and pwritev ... pwritev_done
// around the write. Each event is probed by moving the state to 2, where
// the next pwritev arms a rule failing one write; pwritev_rmw_after_*,
// pwritev and pwritev_zero also arm a once rule directly, which fails the
// request after them.
//
// QEMU 7.2 ignores a failed read of the partial blocks of a write and
// writes the block anyway, so a rule armed by pwritev_rmw_head (or _tail)
// does not fail the write there; qbmond fails it rather than write data
// it could not read, and that case is not compared.
func TestBlkdebugRMWEventsLikeQSD(t *testing.T) {
	requireTool(t, "qemu-storage-daemon")
	ops := []string{"write -P 1 512 512", "write -P 2 0 512", "write -P 3 3584 8192", "write -z 512 8192", "read -P 0 512 512"}
	probe := func(ev string) []any {
		return []any{map[string]any{"event": ev, "new_state": 2}}
	}
	type tc struct {
		name   string
		inject []any
		sets   []any
	}
	var cases []tc
	for _, ev := range []string{"pwritev_rmw_head", "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail",
		"pwritev", "pwritev_zero", "pwritev_done"} {
		cases = append(cases, tc{"probe/" + ev,
			[]any{map[string]any{"event": "pwritev", "state": 2, "iotype": "write", "once": true}}, probe(ev)})
	}
	for _, ev := range []string{"pwritev_rmw_after_head", "pwritev_rmw_after_tail", "pwritev", "pwritev_zero"} {
		cases = append(cases, tc{"once/" + ev, []any{map[string]any{"event": ev, "once": true}}, nil})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			run := func(k kind) []string {
				dir := shortTempDir(t)
				sh(t, dir, evRaw)
				// The export is of a raw node over the blkdebug node: an export
				// of the blkdebug node itself would advertise its 4 KiB block
				// size, and qemu-io would write whole blocks.
				bd := map[string]any{"driver": "blkdebug", "align": 4096,
					"image":        map[string]any{"driver": "file", "filename": filepath.Join(dir, "t.raw")},
					"inject-error": c.inject}
				if c.sets != nil {
					bd["set-state"] = c.sets
				}
				d, _, uri := exportNode(t, k, dir, map[string]any{"driver": "raw", "file": bd}, true, false)
				defer d.stop()
				return qemuIOFirstLines(t, uri, ops...)
			}
			want, got := run(kindQSD), run(kindQbmond)
			t.Logf("QSD:\n%s", strings.Join(want, "\n"))
			if !strings.Contains(strings.Join(want, "\n"), "failed") {
				t.Fatalf("the event did not fire on QSD")
			}
			sameLines(t, "results", got, want)
		})
	}
}

// TestBlkdebugConfigFileLikeQSD opens blkdebug nodes with config files
// (rules in QEMU's INI format, alone and with rules in the options) and
// compares the errors of blockdev-add and of the I/O with QSD.
func TestBlkdebugConfigFileLikeQSD(t *testing.T) {
	requireTool(t, "qemu-storage-daemon")
	for _, tc := range []struct {
		name, file string
		opts       map[string]any
		ops        []string
	}{
		// (A failed read drops QSD's NBD connection, and qemu-io reports
		// EIO whatever the errno: errno values are checked on writes.)
		{"state-machine", "# fail writes from the second on\n[set-state]\nevent = \"write_aio\"\nnew_state = \"2\"\n\n" +
			"[inject-error]\nevent = \"write_aio\"\nstate = \"0x2\"\niotype = \"write\"\nerrno = \"034\"\n",
			nil, []string{"read 0 4k", "write -P 1 0 4k", "write -P 1 0 4k", "read 0 4k"}},
		{"with-options", "[inject-error \"r1\"]\nevent = \"write_aio\"\nsector = \"8\"\nonce = \"on\"\n",
			map[string]any{"inject-error": []any{map[string]any{"event": "read_aio", "iotype": "read", "errno": 5, "once": true}}},
			[]string{"write -P 1 0 8k", "write -P 1 0 8k", "read 0 4k", "read 0 4k"}},
		{"bad-event", "[inject-error]\nevent = \"no_such_event\"\n", nil, nil},
		{"bad-key", "[set-state]\nevent = \"read_aio\"\nerrno = \"5\"\n", nil, nil},
		{"no-group", "event = \"read_aio\"\n", nil, nil},
		{"bad-number", "[inject-error]\nevent = \"read_aio\"\nerrno = \"5x\"\n", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := func(k kind) []string {
				dir := shortTempDir(t)
				sh(t, dir, evRaw)
				cfg := filepath.Join(dir, "rules.cfg")
				if err := os.WriteFile(cfg, []byte(tc.file), 0o644); err != nil {
					t.Fatal(err)
				}
				bd := map[string]any{"driver": "blkdebug", "config": cfg,
					"image": map[string]any{"driver": "file", "filename": filepath.Join(dir, "t.raw")}}
				for key, v := range tc.opts {
					bd[key] = v
				}
				d := startDaemon(t, k, dir)
				defer d.stop()
				c := d.connect()
				r := c.cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "n0", "file": bd})
				if e, ok := r["error"].(map[string]any); ok {
					return []string{fmt.Sprintf("blockdev-add: %v: %v", e["class"], e["desc"])}
				}
				got := []string{fmt.Sprint("file name: ", strings.ReplaceAll(nodeFilename(t, c, "n0"), dir, "$DIR"))}
				uri := startNBD(t, c, dir, "n0")
				got = append(got, qemuIOFirstLines(t, uri, tc.ops...)...)
				return got
			}
			want, got := run(kindQSD), run(kindQbmond)
			t.Logf("QSD:\n%s", strings.Join(want, "\n"))
			sameLines(t, "results", got, want)
		})
	}
}

// nodeFilename is the file name query-named-block-nodes shows for node.
func nodeFilename(t *testing.T, c *client, node string) string {
	t.Helper()
	for _, x := range c.ok("query-named-block-nodes", nil).([]any) {
		n := x.(map[string]any)
		if n["node-name"] == node {
			return fmt.Sprint(n["file"])
		}
	}
	t.Fatalf("no node %s", node)
	return ""
}

// TestBlkdebugBackupFailsAfterFlushLikeQSD is the scenario of issue 12: a
// rule moves the source's state when it is flushed to disk and then fails
// its reads. The guest writes (its flush arms the rule), so the
// incremental backup that follows must fail and keep its bitmap, and the
// retry copies the writes, on both daemons.
func TestBlkdebugBackupFailsAfterFlushLikeQSD(t *testing.T) {
	requireTool(t, "qemu-storage-daemon")
	runOn := func(k kind) *jobOutcome {
		o := &jobOutcome{}
		defer o.showOnFailure(t, k)
		dir := shortTempDir(t)
		backupSource(t, dir, "full.qcow2", "inc.qcow2", "inc2.qcow2")
		d := startDaemon(t, k, dir)
		c := d.connect()
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "src",
			"file": map[string]any{"driver": "blkdebug",
				"image":        map[string]any{"driver": "file", "filename": filepath.Join(dir, "src.qcow2")},
				"set-state":    []any{map[string]any{"event": "flush_to_disk", "state": 1, "new_state": 2}},
				"inject-error": []any{map[string]any{"event": "read_aio", "state": 2, "iotype": "read"}}}})
		for _, n := range []string{"full", "inc", "inc2"} {
			addQcow2(t, c, dir, "t"+n, n+".qcow2")
		}
		uri := startNBD(t, c, dir, "src")
		o.start(c, "transaction", map[string]any{"actions": []any{
			map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": "src", "name": "b0"}},
			map[string]any{"type": "blockdev-backup", "data": map[string]any{"job-id": "full", "device": "src", "target": "tfull", "sync": "full"}},
		}})
		c.waitJob("full", "null")
		qemuIO(t, uri, []string{"write -P 0x24 6M 64k", "write -P 0x25 100000 5000"})
		o.bitmaps(t, c, "src", "b0")
		o.start(c, "blockdev-backup", map[string]any{"job-id": "inc", "device": "src", "target": "tinc",
			"sync": "incremental", "bitmap": "b0"})
		c.waitJob("inc", "null")
		o.bitmaps(t, c, "src", "b0")
		o.events = c.jobEvents("offset", "len")
		d.stop()
		o.scrub(dir)
		return o
	}
	ours, qsd := runOn(kindQbmond), runOn(kindQSD)
	if !strings.Contains(strings.Join(qsd.events, "\n"), "error=") {
		t.Fatalf("QSD's incremental backup did not fail:\n%s", qsd)
	}
	compareOutcomes(t, ours, qsd)
}

// TestBlkdebugL1GrowLikeQSD: a commit into a smaller base grows it, and
// its L1 table with it (QEMU always moves the table; qbmond extends it in
// place when its cluster has room, raising the same events).
func TestBlkdebugL1GrowLikeQSD(t *testing.T) {
	requireTool(t, "qemu-storage-daemon")
	for _, ev := range []string{"l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table"} {
		t.Run(ev, func(t *testing.T) {
			run := func(k kind) []string {
				dir := shortTempDir(t)
				sh(t, dir, "qemu-img create -q -f qcow2 base.qcow2 1M\nqemu-io -f qcow2 -c 'write -P 1 0 64k' base.qcow2 >/dev/null\n"+
					"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 1G\nqemu-io -f qcow2 -c 'write -P 2 128k 64k' mid.qcow2 >/dev/null\n"+
					"qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 1G\n")
				d := startDaemon(t, k, dir)
				defer d.stop()
				c := d.connect()
				bd := map[string]any{"driver": "blkdebug", "image": map[string]any{"driver": "file", "filename": filepath.Join(dir, "base.qcow2")}}
				for key, v := range probeRules(ev) {
					bd[key] = v
				}
				c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "base", "file": bd})
				for _, n := range [][2]string{{"mid", "base"}, {"top", "mid"}} {
					c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": n[0], "backing": n[1],
						"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, n[0]+".qcow2")}})
				}
				o := &jobOutcome{}
				o.start(c, "block-commit", map[string]any{"job-id": "c", "device": "top", "top-node": "mid", "base-node": "base"})
				c.waitJob("c", "null")
				got := c.jobEvents()
				uri := startNBD(t, c, dir, "base")
				got = append(got, qemuIOFirstLines(t, uri, "read -P 2 128k 4k", "read -P 1 0 4k")...)
				return got
			}
			want := run(kindQSD)
			if !strings.Contains(want[len(want)-1], "failed") {
				t.Fatalf("QSD did not raise %s:\n%s", ev, strings.Join(want, "\n"))
			}
			sameLines(t, "results", run(kindQbmond), want)
		})
	}
}

// TestBlkdebugCompressedWriteEventsLikeQSD: a compressing backup into a
// qcow2 target over blkdebug raises write_compressed (and
// cluster_alloc_bytes, l2_update_compressed) on the target's file; the
// probe then fails a read of a compressed cluster of the target.
func TestBlkdebugCompressedWriteEventsLikeQSD(t *testing.T) {
	requireTool(t, "qemu-storage-daemon")
	for _, ev := range []string{"write_compressed", "cluster_alloc_bytes", "l2_update_compressed"} {
		t.Run(ev, func(t *testing.T) {
			run := func(k kind) []string {
				dir := shortTempDir(t)
				sh(t, dir, "qemu-img create -q -f qcow2 src.qcow2 1M\nqemu-io -f qcow2 -c 'write -P 7 0 256k' src.qcow2 >/dev/null\n"+
					"qemu-img create -q -f qcow2 t.qcow2 1M\n")
				d := startDaemon(t, k, dir)
				defer d.stop()
				c := d.connect()
				addQcow2(t, c, dir, "src", "src.qcow2")
				c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "tgt", "file": map[string]any{"driver": "blkdebug",
					"image":        map[string]any{"driver": "file", "filename": filepath.Join(dir, "t.qcow2")},
					"set-state":    []any{map[string]any{"event": ev, "new_state": 2}},
					"inject-error": []any{map[string]any{"event": "read_compressed", "state": 2, "iotype": "read"}}}})
				o := &jobOutcome{}
				o.start(c, "blockdev-backup", map[string]any{"job-id": "b", "device": "src", "target": "tgt", "sync": "full", "compress": true})
				c.waitJob("b", "null")
				got := c.jobEvents()
				uri := startNBD(t, c, dir, "tgt")
				out, _ := exec.Command(requireTool(t, "qemu-io"), "-f", "raw", "-c", "read -P 7 0 4k", uri).CombinedOutput()
				return append(got, "read: "+strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0])
			}
			want := run(kindQSD)
			t.Logf("QSD:\n%s", strings.Join(want, "\n"))
			if !strings.Contains(want[len(want)-1], "failed") {
				t.Fatalf("QSD did not raise %s", ev)
			}
			sameLines(t, "results", run(kindQbmond), want)
		})
	}
}

// TestBlkdebugOpenEventsLikeQSD: qcow2 raises reftable_load on its file
// while it opens, right before it reads the refcount table, so a rule on
// it fails the open.
func TestBlkdebugOpenEventsLikeQSD(t *testing.T) {
	requireTool(t, "qemu-storage-daemon")
	run := func(k kind) string {
		dir := shortTempDir(t)
		sh(t, dir, evData)
		d := startDaemon(t, k, dir)
		defer d.stop()
		c := d.connect()
		class, desc := c.fail("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "n0", "file": map[string]any{"driver": "blkdebug",
			"image":        map[string]any{"driver": "file", "filename": filepath.Join(dir, "t.qcow2")},
			"inject-error": []any{map[string]any{"event": "reftable_load", "errno": 28}}}})
		return class + ": " + desc
	}
	want, got := run(kindQSD), run(kindQbmond)
	if got != want {
		t.Errorf("qbmond: %s\nqemu-storage-daemon: %s", got, want)
	}
}

// TestBlkdebugWriteTriggerLikeQSD is the case issue 12 reports as rule
// semantics: a rule armed by write_aio fails every read after it (and
// with once, only the first). The rules agree; the difference was QSD's
// NBD server, which drops the connection after a failed read, so that
// the next read of the same qemu-io fails too. Each command runs in its
// own qemu-io, then all in one.
func TestBlkdebugWriteTriggerLikeQSD(t *testing.T) {
	requireTool(t, "qemu-storage-daemon")
	ops := []string{"read 0 4k", "write -P 1 0 4k", "read 0 4k", "read 0 4k"}
	for _, once := range []bool{false, true} {
		t.Run(fmt.Sprint("once=", once), func(t *testing.T) {
			rules := map[string]any{"inject-error": []any{map[string]any{"event": "write_aio", "iotype": "read", "once": once}}}
			want := blkdebugOps(t, kindQSD, evRaw, rules, nil, true, ops)
			got := blkdebugOps(t, kindQbmond, evRaw, rules, nil, true, ops)
			t.Logf("QSD:\n%s", strings.Join(want, "\n"))
			sameLines(t, "results", got, want)
			// The issue's own form: all in one qemu-io, where a failed
			// structured read ends QSD's connection, so every read after
			// it fails too; qbmond's server does the same now.
			want = blkdebugSession(t, kindQSD, evRaw, rules, true, ops)
			got = blkdebugSession(t, kindQbmond, evRaw, rules, true, ops)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("one session: qbmond:\n%s\nqemu-storage-daemon:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// TestBlkdebugOnceRulesLikeQSD arms a once rule (every I/O type) with
// each event of the write path: the first request on the blkdebug node
// after the event fails, so where the event sits among the node's
// requests decides which guest request fails. qemu-io writes with FUA,
// which qcow2 emulates with a flush of the node (flush_to_os and
// flush_to_disk inside the write); a first write into a fresh cluster
// zeroes the cluster with a write-zeroes request (pwritev_zero) on both.
// Not compared: cluster_free, after which QEMU discards the freed
// clusters at once (a discard that fails silently and takes the once
// rule) where qbmond frees them once the new mapping is stable; l2_load
// before a read, where the failure lands in the block status of the NBD
// read, which QSD's server turns into a failed read and qbmond's does not.
func TestBlkdebugOnceRulesLikeQSD(t *testing.T) {
	requireTool(t, "qemu-storage-daemon")
	evs := []string{"l1_update", "l2_alloc_write", "l2_update", "cluster_alloc", "refblock_alloc",
		"refblock_load", "refblock_update_part", "cluster_alloc_space", "write_aio", "flush_to_os", "flush_to_disk",
		"pwritev", "pwritev_done"}
	for _, sc := range []struct {
		name, setup string
		ops         []string
		extra       []string
	}{
		{"fresh", evFresh, []string{"write -P 1 0 4k", "write -P 1 64k 4k", "write -P 1 0 4k", "read 0 4k"}, []string{"pwritev_zero"}},
		{"data", evData, []string{"write -P 1 0 4k", "write -z 0 64k", "write -P 1 256k 64k", "read 64k 4k"}, []string{"pwritev_zero"}},
		{"reads", evData, []string{"read 0 4k", "read 0 4k", "write -P 1 0 4k", "read 64k 4k"}, nil},
		{"cow-backing", evBacking, []string{"write -P 5 128k 4k", "read 512k 4k", "write -P 5 0 4k", "read 0 4k"},
			[]string{"cow_read", "cow_write", "read_backing_aio", "l2_load"}},
		{"cow-compressed", evCompressed, []string{"read 0 4k", "write -P 5 0 4k", "read 64k 4k"},
			[]string{"read_compressed", "cow_read", "cow_write"}},
		{"refblocks", evSmall, []string{"write -P 1 0 1M", "write -P 1 1M 8M", "read 0 4k"},
			[]string{"refblock_alloc_write", "refblock_alloc_hookup", "reftable_grow", "refblock_alloc_write_blocks",
				"refblock_alloc_write_table", "refblock_alloc_switch_table"}},
	} {
		list := append(evs, sc.extra...)
		if sc.name != "fresh" && sc.name != "data" && sc.name != "reads" {
			list = sc.extra
		}
		for _, ev := range list {
			t.Run(sc.name+"/"+ev, func(t *testing.T) {
				rules := map[string]any{"inject-error": []any{map[string]any{"event": ev, "once": true}}}
				want := blkdebugOps(t, kindQSD, sc.setup, rules, nil, false, sc.ops)
				got := blkdebugOps(t, kindQbmond, sc.setup, rules, nil, false, sc.ops)
				sameLines(t, "results", got, want)
			})
		}
	}
}

// TestBlkdebugCOWOrderLikeQSD pins the order of the events of a partial
// write into a new cluster whose other part comes from the backing file:
// for each pair, a rule armed in the state the first event sets fails the
// write only when the second event comes after it. QEMU reads the old data
// (cow_read, read_backing_aio), writes the guest data (write_aio), then
// the copied part (cow_write).
func TestBlkdebugCOWOrderLikeQSD(t *testing.T) {
	requireTool(t, "qemu-storage-daemon")
	evs := []string{"cluster_alloc", "cow_read", "write_aio", "cow_write"}
	for _, first := range evs {
		for _, second := range evs {
			if first == second {
				continue
			}
			t.Run(first+"-"+second, func(t *testing.T) {
				rules := map[string]any{
					"set-state":    []any{map[string]any{"event": first, "new_state": 2}},
					"inject-error": []any{map[string]any{"event": second, "state": 2}},
				}
				ops := []string{"write -P 5 132k 4k", "read 0 4k"}
				want := blkdebugOps(t, kindQSD, evBacking, rules, nil, false, ops)
				got := blkdebugOps(t, kindQbmond, evBacking, rules, nil, false, ops)
				sameLines(t, "results", got, want)
			})
		}
	}
}

// TestBlkdebugCORWriteLikeQSD: a copy-on-read filter over a blkdebug node
// over a qcow2 overlay makes the blkdebug node copy what it reads from
// the backing file; it raises cor_write on itself before the copy, so a
// rule armed then (for writes) fails the copy and the guest's read.
func TestBlkdebugCORWriteLikeQSD(t *testing.T) {
	requireTool(t, "qemu-storage-daemon")
	for _, iotype := range []string{"write", "read"} {
		t.Run(iotype, func(t *testing.T) {
			run := func(k kind) []string {
				dir := shortTempDir(t)
				sh(t, dir, evBacking)
				d := startDaemon(t, k, dir)
				defer d.stop()
				c := d.connect()
				c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top",
					"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "t.qcow2")}})
				c.ok("blockdev-add", map[string]any{"driver": "blkdebug", "node-name": "bd", "image": "top",
					"inject-error": []any{map[string]any{"event": "cor_write", "iotype": iotype}}})
				c.ok("blockdev-add", map[string]any{"driver": "copy-on-read", "node-name": "cor", "file": "bd"})
				uri := startNBD(t, c, dir, "cor")
				return qemuIOFirstLines(t, uri, "read -P 1 0 4k", "read -P 2 512k 4k", "read -P 2 512k 4k", "read -P 2 600k 4k")
			}
			want, got := run(kindQSD), run(kindQbmond)
			t.Logf("QSD:\n%s", strings.Join(want, "\n"))
			sameLines(t, "results", got, want)
		})
	}
}

// TestBlkdebugRuleSemanticsLikeQSD checks how rules combine, with raw over
// blkdebug (raw raises read_aio and write_aio): an event that has
// inject-error rules for the current state replaces the active rules with
// them (in the order given), the first active rule that matches a request
// decides (errno 0: the request succeeds), several set-state rules on one
// event leave the state the first one given sets, every rule of an event
// sees the state from before it, a sector filter is the byte offset
// sector*512 (wrapping as QEMU's unsigned arithmetic does), and once
// rules go for good.
func TestBlkdebugRuleSemanticsLikeQSD(t *testing.T) {
	requireTool(t, "qemu-storage-daemon")
	inj := func(kv ...any) map[string]any {
		m := map[string]any{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	writes := []string{"write -P 1 0 4k", "write -P 1 4k 4k", "write -P 1 0 4k", "write -P 1 8k 4k", "write -P 1 0 4k"}
	for _, tc := range []struct {
		name  string
		rules map[string]any
		ops   []string
	}{
		{"first-match-decides", map[string]any{"inject-error": []any{
			inj("event", "write_aio", "sector", 8, "errno", 28),
			inj("event", "write_aio", "errno", 0),
			inj("event", "write_aio", "errno", 5)}}, writes},
		{"replace-active", map[string]any{"inject-error": []any{
			inj("event", "write_aio", "iotype", "write", "errno", 28),
			inj("event", "read_aio", "iotype", "write", "sector", 0, "errno", 5)}},
			[]string{"write -P 1 0 4k", "write -P 1 4k 4k", "read 4k 4k", "write -P 1 4k 4k", "write -P 1 0 4k", "write -P 1 0 4k"}},
		{"set-state-order", map[string]any{
			"set-state": []any{inj("event", "write_aio", "new_state", 3), inj("event", "write_aio", "new_state", 2),
				inj("event", "write_aio", "state", 3, "new_state", 4)},
			"inject-error": []any{inj("event", "write_aio", "state", 3, "iotype", "write", "errno", 28),
				inj("event", "write_aio", "state", 4, "iotype", "write", "errno", 5)}}, writes},
		{"once-for-good", map[string]any{"inject-error": []any{
			inj("event", "write_aio", "iotype", "write", "once", true, "errno", 28, "immediately", true),
			inj("event", "write_aio", "iotype", "write", "sector", 16, "errno", 5)}}, writes},
		{"sector-wraps", map[string]any{"inject-error": []any{
			inj("event", "write_aio", "iotype", "write", "sector", int64(1)<<55, "errno", 28),
			inj("event", "write_aio", "iotype", "write", "sector", -2, "errno", 5)}}, writes},
		{"state-any", map[string]any{
			"set-state":    []any{inj("event", "read_aio", "state", 1, "new_state", 7)},
			"inject-error": []any{inj("event", "write_aio", "state", 7, "iotype", "write", "errno", 28)}},
			[]string{"write -P 1 0 4k", "read 0 4k", "write -P 1 0 4k", "read 0 4k", "write -P 1 0 4k"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := blkdebugOps(t, kindQSD, evRaw, tc.rules, nil, true, tc.ops)
			got := blkdebugOps(t, kindQbmond, evRaw, tc.rules, nil, true, tc.ops)
			t.Logf("QSD:\n%s", strings.Join(want, "\n"))
			sameLines(t, "results", got, want)
		})
	}
}
