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
		{"sigterm", func(c *client) {
			c.ok("block-commit", map[string]any{"job-id": "j0", "device": "l2", "top-node": "l1", "speed": 1})
			c.ok("blockdev-backup", map[string]any{"job-id": "j1", "device": "x", "target": "tgt", "sync": "full", "speed": 1})
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runOn := func(k kind) *jobOutcome {
				o := &jobOutcome{}
				dir := shortTempDir(t)
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
				return o
			}
			compareOutcomes(t, runOn(kindQbmond), runOn(kindQSD))
		})
	}
}
