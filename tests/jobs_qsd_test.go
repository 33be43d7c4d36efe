package tests

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Job lifetimes and graph rules against qemu-storage-daemon: what a quit
// does to running jobs and exports, which backing links a job freezes,
// and streams that have nothing to copy.

// secondMonitor returns extra daemon arguments for a second QMP monitor
// on dir/qmp2.sock, and a function that connects to it.
func secondMonitor(dir string) (args []string, connect func(d *daemon) *client) {
	sock := filepath.Join(dir, "qmp2.sock")
	args = []string{"--chardev", "socket,path=" + sock + ",server=on,wait=off,id=mon1", "--monitor", "chardev=mon1"}
	return args, func(d *daemon) *client {
		d2 := *d
		d2.sock = sock
		c := d2.connect()
		c.d = d
		return c
	}
}

// readToEOF reads everything a daemon still sends on c until it closes
// the connection.
func readToEOF(c *client) []map[string]any {
	c.t.Helper()
	var out []map[string]any
	for {
		c.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		var v map[string]any
		if err := c.dec.Decode(&v); err != nil {
			if strings.Contains(err.Error(), "timeout") {
				c.t.Fatalf("the daemon did not close the connection: %v", err)
			}
			return out
		}
		out = append(out, v)
	}
}

// lifetimeView renders a monitor's events (and replies, as "reply ...")
// in order, leaving out the pause and resume of jobs around drains (QSD's
// come and go with timing) and a job's readiness (a throttled mirror
// reaches it or not depending on timing); progress is masked. Runs of
// BLOCK_EXPORT_DELETED are sorted: QSD closes its exports concurrently.
func lifetimeView(msgs []map[string]any) []string {
	var out []string
	var deleted []string
	flush := func() {
		slices.Sort(deleted)
		out = append(out, deleted...)
		deleted = nil
	}
	for _, m := range msgs {
		name, _ := m["event"].(string)
		d, _ := m["data"].(map[string]any)
		switch {
		case name == "":
			flush()
			b, _ := json.Marshal(m)
			out = append(out, "reply "+string(b))
		case name == "BLOCK_EXPORT_DELETED":
			deleted = append(deleted, fmt.Sprintf("%s %v", name, d["id"]))
		case name == "JOB_STATUS_CHANGE":
			switch d["status"] {
			case "paused", "running", "ready", "standby":
				continue
			}
			flush()
			out = append(out, fmt.Sprintf("%s %v %v", name, d["id"], d["status"]))
		case name == "BLOCK_JOB_READY":
		default:
			flush()
			out = append(out, (&client{events: []map[string]any{m}}).jobEvents("len", "offset")...)
		}
	}
	flush()
	return out
}

// TestQuitEndsJobsAndExportsLikeQSD quits a daemon with jobs running and
// two exports, with two monitors connected: as QSD, each export is
// closed (BLOCK_EXPORT_DELETED), then each job is cancelled, newest
// first, with its whole ending (aborting, BLOCK_JOB_CANCELLED, concluded,
// null), on both monitors; the reply to quit comes last on the monitor
// that sent it. SIGTERM ends them the same way.
func TestQuitEndsJobsAndExportsLikeQSD(t *testing.T) {
	for _, tc := range []struct {
		name    string
		start   func(c *client)
		sigterm bool // end the daemon with SIGTERM instead of quit
	}{
		{"commit", func(c *client) {
			c.ok("block-commit", map[string]any{"job-id": "j0", "device": "l2", "top-node": "l1", "speed": 1})
		}, false},
		{"active-commit", func(c *client) {
			c.ok("block-commit", map[string]any{"job-id": "j0", "device": "l2", "speed": 1})
		}, false},
		{"active-commit-ready", func(c *client) {
			c.ok("block-commit", map[string]any{"job-id": "j0", "device": "l2"})
			c.waitJob("j0", "ready")
		}, false},
		{"backup", func(c *client) {
			c.ok("blockdev-backup", map[string]any{"job-id": "j0", "device": "l2", "target": "tgt", "sync": "full", "speed": 1})
		}, false},
		{"stream", func(c *client) {
			c.ok("block-stream", map[string]any{"job-id": "j0", "device": "l2", "speed": 1})
		}, false},
		{"commit-and-backup", func(c *client) {
			c.ok("block-commit", map[string]any{"job-id": "j0", "device": "l2", "top-node": "l1", "speed": 1})
			c.ok("blockdev-backup", map[string]any{"job-id": "j1", "device": "x", "target": "tgt", "sync": "full", "speed": 1})
		}, false},
		{"pending-and-concluded", func(c *client) {
			c.ok("block-commit", map[string]any{"job-id": "j0", "device": "l2", "top-node": "l1", "auto-finalize": false})
			c.waitJob("j0", "pending")
			c.ok("blockdev-backup", map[string]any{"job-id": "j1", "device": "x", "target": "tgt", "sync": "full", "auto-dismiss": false})
			c.waitJob("j1", "concluded")
		}, false},
		{"sigterm", func(c *client) {
			c.ok("block-commit", map[string]any{"job-id": "j0", "device": "l2", "top-node": "l1", "speed": 1})
			c.ok("blockdev-backup", map[string]any{"job-id": "j1", "device": "x", "target": "tgt", "sync": "full", "speed": 1})
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
				sh(t, dir, layerScript(3)+"qemu-img create -q -f qcow2 tgt.qcow2 8M\nqemu-img create -q -f qcow2 x.qcow2 8M\n")
				extra, connect2 := secondMonitor(dir)
				d := startDaemon(t, k, dir, extra...)
				c := d.connect()
				c2 := connect2(d)
				addLayers(t, c, dir, 3)
				for _, n := range []string{"tgt", "x"} {
					c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": n,
						"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, n+".qcow2")}})
				}
				startNBD(t, c, dir, "l2")
				c.ok("block-export-add", map[string]any{"type": "nbd", "id": "e1", "node-name": "x", "name": "x"})
				tc.start(c)
				if tc.sigterm {
					d.cmd.Process.Signal(syscall.SIGTERM)
				} else {
					c.send(`{"execute": "quit"}` + "\n")
				}
				o.replies = lifetimeView(append(c.events, readToEOF(c)...))
				o.events = lifetimeView(readToEOF(c2))
				if err := d.waitExit(30 * time.Second); err != nil {
					t.Errorf("%s after quit: %v\n%s", k, err, d.stderr)
				}
			})
		})
	}
}

// parallelScript makes the chain of QEMU's iotest 030 TestParallelOps:
// img-0 (base) ... img-8, layer i writing every ninth 64 KiB cluster from
// the i-th (so that a throttled job has many chunks to copy, whatever
// wakes it meanwhile, and every layer holds data of its own), opened
// as nodes node0 ... node7 (read-only) and drive0 (img-8, the active
// layer).
const parallelImages = 9

func parallelScript() string {
	var b strings.Builder
	for i := range parallelImages {
		if i == 0 {
			b.WriteString("qemu-img create -q -f qcow2 img-0.qcow2 8M\n")
		} else {
			fmt.Fprintf(&b, "qemu-img create -q -f qcow2 -b img-%d.qcow2 -F qcow2 img-%d.qcow2\n", i-1, i)
		}
		b.WriteString("qemu-io -f qcow2")
		for k := i; k < 128; k += parallelImages {
			fmt.Fprintf(&b, " -c 'write -P 0x%x %dk 64k'", i+1, k*64)
		}
		fmt.Fprintf(&b, " img-%d.qcow2 >/dev/null\n", i)
	}
	return b.String()
}

func parallelNode(i int) string {
	if i == parallelImages-1 {
		return "drive0"
	}
	return fmt.Sprintf("node%d", i)
}

func addParallelChain(t *testing.T, c *client, dir string) {
	t.Helper()
	for i := range parallelImages {
		o := map[string]any{"driver": "qcow2", "node-name": parallelNode(i),
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, fmt.Sprintf("img-%d.qcow2", i))}}
		if i > 0 {
			o["backing"] = parallelNode(i - 1)
		} else {
			o["backing"] = nil
		}
		if i < parallelImages-1 {
			o["read-only"] = true
		}
		c.ok("blockdev-add", o)
	}
}

// perJobEvents is jobEvents grouped by job (stable), so that two jobs
// running side by side compare whatever their interleaving; the pause
// and resume of jobs around drains are left out.
func perJobEvents(c *client) []string {
	var ids []string
	by := map[string][]string{}
	for _, ev := range c.events {
		d, _ := ev["data"].(map[string]any)
		id, _ := d["id"].(string)
		if id == "" {
			id, _ = d["device"].(string)
		}
		if ev["event"] == "JOB_STATUS_CHANGE" && (d["status"] == "paused" || d["status"] == "running") {
			continue
		}
		line := (&client{events: []map[string]any{ev}}).jobEvents("len", "offset")
		if len(line) == 0 {
			continue
		}
		if _, ok := by[id]; !ok {
			ids = append(ids, id)
		}
		by[id] = append(by[id], line...)
	}
	slices.Sort(ids)
	var out []string
	for _, id := range ids {
		out = append(out, by[id]...)
	}
	return out
}

// TestOverlappingJobsLikeQSD runs the scenarios of QEMU's iotest 030
// (TestParallelOps) and 245 about jobs whose chains overlap: which
// command a running job refuses and with which words (op blockers, and
// the backing links each job freezes: commit and active commit from
// their filter down to base, which itself can never be frozen; stream
// from the active layer down to its bottom, and while it reopens a
// read-only node down to the node above base), which blockdev-reopen it
// allows, and how every job then ends: replies, events, graph and image
// headers as qemu-storage-daemon's.
func TestOverlappingJobsLikeQSD(t *testing.T) {
	img := func(dir string, i int) string { return filepath.Join(dir, fmt.Sprintf("img-%d.qcow2", i)) }
	type step = func(o *jobOutcome, c *client, dir string)
	unthrottle := func(o *jobOutcome, c *client, ids ...string) {
		for _, id := range ids {
			o.record(c, "block-job-set-speed", map[string]any{"device": id, "speed": 0})
		}
	}
	// reopen reopens node i with the backing given (a node-name or nil)
	// and its other options as they are.
	reopen := func(o *jobOutcome, c *client, dir string, i int, backing any, readOnly bool) {
		o.record(c, "blockdev-reopen", map[string]any{"options": []any{map[string]any{
			"driver": "qcow2", "node-name": parallelNode(i), "read-only": readOnly, "backing": backing,
			"file": map[string]any{"driver": "file", "filename": img(dir, i)}}}})
	}
	for _, tc := range []struct {
		name string
		run  step
	}{
		// A stream blocks the nodes it copies from, its filter and the
		// node it copies into.
		{"030-overlapping-1", func(o *jobOutcome, c *client, dir string) {
			o.start(c, "block-stream", map[string]any{"device": "node4", "job-id": "stream-node4", "base-node": "node1",
				"filter-node-name": "stream-filter", "speed": 1})
			o.record(c, "block-stream", map[string]any{"device": "node5", "job-id": "stream-node5", "base-node": "node2"})
			o.record(c, "block-stream", map[string]any{"device": "node3", "job-id": "stream-node3", "base-node": "node2"})
			o.record(c, "block-stream", map[string]any{"device": "node4", "job-id": "stream-node4-v2"})
			o.record(c, "block-commit", map[string]any{"device": "drive0", "base-node": "node4", "job-id": "commit-node4"})
			o.record(c, "block-commit", map[string]any{"device": "drive0", "base-node": "node1", "top-node": "node3", "job-id": "commit-node1"})
			o.record(c, "block-commit", map[string]any{"device": "drive0", "base-node": "node0", "top-node": "node1", "job-id": "commit-node0"})
			unthrottle(o, c, "stream-node4")
			c.waitJob("stream-node4", "null")
		}},
		// A commit blocks its layers and the active layer; a stream
		// whose chain runs through the commit's filter cannot freeze the
		// link to it.
		{"030-overlapping-2", func(o *jobOutcome, c *client, dir string) {
			o.start(c, "block-commit", map[string]any{"device": "drive0", "top-node": "node5", "base-node": "node3",
				"job-id": "commit-node3", "filter-node-name": "commit-filter", "speed": 1})
			o.record(c, "block-stream", map[string]any{"device": "node3", "job-id": "stream-node3"})
			o.record(c, "block-stream", map[string]any{"device": "node6", "base-node": "node2", "job-id": "stream-node6"})
			o.record(c, "block-stream", map[string]any{"device": "node4", "base-node": "node2", "job-id": "stream-node4"})
			o.record(c, "block-stream", map[string]any{"device": "node6", "base-node": "node4", "job-id": "stream-node6-v2"})
			o.record(c, "block-stream", map[string]any{"device": "drive0", "base-node": "node5", "job-id": "stream-drive0"})
			o.record(c, "block-stream", map[string]any{"device": "node7", "base-node": "node5", "job-id": "stream-node7"})
			o.record(c, "block-stream", map[string]any{"device": "node6", "base-node": "node5", "job-id": "stream-node6-v3"})
			o.record(c, "block-stream", map[string]any{"device": "node7", "base-node": "node4", "job-id": "stream-node7-v2"})
			unthrottle(o, c, "commit-node3")
			c.waitJob("commit-node3", "null")
		}},
		// An active commit blocks every layer down to its base.
		{"030-overlapping-3", func(o *jobOutcome, c *client, dir string) {
			o.start(c, "block-commit", map[string]any{"device": "drive0", "base-node": "node3", "job-id": "commit-drive0",
				"filter-node-name": "mirror-filter", "speed": 1})
			o.record(c, "block-stream", map[string]any{"device": "node5", "base-node": "node3", "job-id": "stream-node6"})
			o.record(c, "block-stream", map[string]any{"device": "node7", "base-node": "node5", "job-id": "stream-node7"})
			unthrottle(o, c, "commit-drive0")
			c.waitJob("commit-drive0", "ready")
			o.record(c, "job-complete", map[string]any{"id": "commit-drive0"})
			c.waitJob("commit-drive0", "null")
		}},
		// The stream's base is the commit's top: its chain would hold
		// the link to the commit's filter.
		{"030-overlapping-4", func(o *jobOutcome, c *client, dir string) {
			o.start(c, "block-commit", map[string]any{"device": "drive0", "top-node": "node2", "base-node": "node0",
				"job-id": "commit", "filter-node-name": "commit-filter", "speed": 1})
			o.record(c, "block-stream", map[string]any{"device": "node4", "base-node": "node2", "job-id": "node4"})
			unthrottle(o, c, "commit")
			c.waitJob("commit", "null")
		}},
		// The stream's base is the commit's filter: the stream holds
		// nothing below its bottom, so both run.
		{"030-overlapping-5", func(o *jobOutcome, c *client, dir string) {
			o.start(c, "block-commit", map[string]any{"device": "drive0", "top-node": "node2", "base-node": "node0",
				"job-id": "commit", "filter-node-name": "commit-filter", "speed": 1})
			o.start(c, "block-stream", map[string]any{"device": "node4", "base-node": "commit-filter", "job-id": "node4", "speed": 1})
			unthrottle(o, c, "node4")
			c.waitJob("node4", "null")
			unthrottle(o, c, "commit")
			c.waitJob("commit", "null")
		}},
		// A stream and an active commit side by side.
		{"030-stream-commit-2", func(o *jobOutcome, c *client, dir string) {
			o.start(c, "block-stream", map[string]any{"device": "node4", "base-node": "node0", "job-id": "node4", "speed": 1})
			o.start(c, "block-commit", map[string]any{"device": "drive0", "base-node": "node5", "job-id": "drive0", "speed": 1})
			unthrottle(o, c, "node4")
			c.waitJob("node4", "null")
			unthrottle(o, c, "drive0")
			c.waitJob("drive0", "ready")
			o.record(c, "job-complete", map[string]any{"id": "drive0"})
			c.waitJob("drive0", "null")
		}},
		// A stream into drive0 down to base node5 freezes drive0 ->
		// node7 -> node6 only: node6 may lose node5 (245's reopen during
		// a stream), drive0 and node7 may not change theirs.
		{"245-reopen-during-stream", func(o *jobOutcome, c *client, dir string) {
			o.start(c, "block-stream", map[string]any{"device": "drive0", "base-node": "node5", "job-id": "stream", "speed": 1})
			reopen := func(i int, backing any) {
				o.record(c, "blockdev-reopen", map[string]any{"options": []any{map[string]any{
					"driver": "qcow2", "node-name": parallelNode(i), "read-only": i < parallelImages-1, "backing": backing,
					"file": map[string]any{"driver": "file", "filename": img(dir, i)}}}})
			}
			reopen(8, nil)
			reopen(7, nil)
			reopen(7, "node5")
			reopen(6, nil)
			unthrottle(o, c, "stream")
			c.waitJob("stream", "null")
		}},
		// The same with a bottom node: the link from the bottom down is
		// free.
		{"reopen-during-stream-bottom", func(o *jobOutcome, c *client, dir string) {
			o.start(c, "block-stream", map[string]any{"device": "node7", "bottom": "node5", "job-id": "stream", "speed": 1})
			reopen := func(i int, backing any) {
				o.record(c, "blockdev-reopen", map[string]any{"options": []any{map[string]any{
					"driver": "qcow2", "node-name": parallelNode(i), "read-only": true, "backing": backing,
					"file": map[string]any{"driver": "file", "filename": img(dir, i)}}}})
			}
			reopen(6, nil)
			reopen(5, nil)
			unthrottle(o, c, "stream")
			c.waitJob("stream", "null")
		}},
		// A stream of an intermediate node: the node above it may be
		// reopened (its link goes to the job's implicit filter), the
		// device itself read-write.
		{"245-reopen-above-stream", func(o *jobOutcome, c *client, dir string) {
			o.start(c, "block-stream", map[string]any{"device": "node7", "base-node": "node4", "job-id": "stream", "speed": 1})
			reopen(o, c, dir, 8, nil, false)
			reopen(o, c, dir, 8, "node7", false)
			reopen(o, c, dir, 7, "node6", false)
			reopen(o, c, dir, 4, nil, true)
			unthrottle(o, c, "stream")
			c.waitJob("stream", "null")
		}},
		// 040-style: reopens around a passive commit with a named
		// filter. (Pointing node6 past the filter is left out: QSD 7.2
		// aborts on it, freeing the filter with its frozen link.)
		{"reopen-during-commit", func(o *jobOutcome, c *client, dir string) {
			o.start(c, "block-commit", map[string]any{"device": "drive0", "top-node": "node5", "base-node": "node3",
				"job-id": "commit", "filter-node-name": "commit-filter", "speed": 1})
			reopen(o, c, dir, 5, nil, true)
			reopen(o, c, dir, 4, "node3", true)
			reopen(o, c, dir, 3, nil, false)
			unthrottle(o, c, "commit")
			c.waitJob("commit", "null")
		}},
		// Reopens around an active commit.
		{"reopen-during-active-commit", func(o *jobOutcome, c *client, dir string) {
			o.start(c, "block-commit", map[string]any{"device": "drive0", "base-node": "node6",
				"job-id": "commit", "filter-node-name": "mirror-filter", "speed": 1})
			reopen(o, c, dir, 8, nil, false)
			reopen(o, c, dir, 7, nil, true)
			reopen(o, c, dir, 6, nil, false)
			unthrottle(o, c, "commit")
			c.waitJob("commit", "ready")
			o.record(c, "job-complete", map[string]any{"id": "commit"})
			c.waitJob("commit", "null")
		}},
		// An external snapshot of the node a stream copies into.
		{"snapshot-during-stream", func(o *jobOutcome, c *client, dir string) {
			o.start(c, "block-stream", map[string]any{"device": "drive0", "base-node": "node5", "job-id": "stream", "speed": 1})
			sh(c.t.(*testing.T), dir, "qemu-img create -q -f qcow2 snap.qcow2 8M\n")
			c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "snap", "backing": nil,
				"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "snap.qcow2")}})
			o.record(c, "blockdev-snapshot", map[string]any{"node": "drive0", "overlay": "snap"})
			o.record(c, "blockdev-snapshot", map[string]any{"node": "node7", "overlay": "snap"})
			unthrottle(o, c, "stream")
			c.waitJob("stream", "null")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
				sh(t, dir, parallelScript())
				d := startDaemon(t, k, dir)
				c := d.connect()
				addParallelChain(t, c, dir)
				tc.run(o, c, dir)
				o.events = perJobEvents(c)
				o.graph = graphView(t, c, dir)
				d.stop()
				for i := range parallelImages {
					p := img(dir, i)
					checkClean(t, p, false)
					o.headers = append(o.headers, fmt.Sprintf("img-%d: %s", i, strings.ReplaceAll(backingOf(t, p), dir, "$DIR")))
				}
			})
		})
	}
}

// TestNoOpStreamLikeQSD streams with nothing to stream: the base is the
// device's own backing node, or the bottom is the device itself. QSD
// accepts it, runs the job with len 0 and rewrites the header with the
// same backing file; the copy-on-read filter it inserts meanwhile holds
// only its own link. On a read-only device too (made writable for the
// job, read-only again after).
func TestNoOpStreamLikeQSD(t *testing.T) {
	for _, tc := range []struct {
		name string
		args map[string]any
	}{
		{"base-node", map[string]any{"device": "l3", "base-node": "l2"}},
		{"bottom", map[string]any{"device": "l3", "bottom": "l3"}},
		{"read-only-device", map[string]any{"device": "l2", "base-node": "l1"}},
		{"backing-file", map[string]any{"device": "l3", "base-node": "l2", "backing-file": "l2.qcow2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			streamLikeQSD(t, tc.args, nil)
		})
	}
}

// TestCopyOnReadBottomLikeQSD adds copy-on-read filters with a bottom
// node by hand: as QEMU's cor_open, the filter freezes the links from
// itself down to the bottom while it exists (not the bottom's own), and a
// bottom that is the filtered node itself is accepted.
func TestCopyOnReadBottomLikeQSD(t *testing.T) {
	compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
		d, c := startLayers(t, k, dir, 4)
		reopen := func(i int, backing any) {
			o.record(c, "blockdev-reopen", map[string]any{"options": []any{map[string]any{
				"driver": "qcow2", "node-name": fmt.Sprintf("l%d", i), "read-only": i < 3, "backing": backing,
				"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, fmt.Sprintf("l%d.qcow2", i))}}}})
		}
		o.record(c, "blockdev-add", map[string]any{"driver": "copy-on-read", "node-name": "cor", "file": "l3", "bottom": "l1"})
		reopen(3, nil)
		reopen(2, nil)
		reopen(1, nil)
		o.record(c, "blockdev-add", map[string]any{"driver": "copy-on-read", "node-name": "cor2", "file": "l2", "bottom": "l1"})
		o.record(c, "blockdev-del", map[string]any{"node-name": "cor"})
		reopen(2, "l0")
		o.record(c, "blockdev-add", map[string]any{"driver": "copy-on-read", "node-name": "cor3", "file": "l3", "bottom": "l3"})
		reopen(3, "l0")
		o.record(c, "blockdev-del", map[string]any{"node-name": "cor3"})
		o.graph = graphView(t, c, dir)
		o.finish(t, d, dir, 4)
	})
}
