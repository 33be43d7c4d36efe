package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Block jobs (block-commit, block-stream) against qemu-storage-daemon: the
// same chain, the same commands and the same NBD workload on both daemons,
// then the outcomes compared: the job's events, the replies, the graph
// afterwards, the image headers, qemu-img check and the bytes a reader
// sees. The bytes are also compared with a reference that never saw a
// job: a copy of the chain taken before it (with the same guest writes
// applied), since no job may change what the guest reads.

// waitEvent reads until an event for which match holds arrives (events
// read earlier and not yet waited for count) and returns it.
func (c *client) waitEvent(match func(ev map[string]any) bool) map[string]any {
	c.t.Helper()
	for i := c.scanned; ; i++ {
		for i >= len(c.events) {
			v := c.readAny()
			if _, ok := v["event"]; !ok {
				c.t.Fatalf("a reply while waiting for an event: %v", v)
			}
			c.events = append(c.events, v)
		}
		if match(c.events[i]) {
			c.scanned = i + 1
			return c.events[i]
		}
	}
}

// waitJob waits for the JOB_STATUS_CHANGE of job id to status.
func (c *client) waitJob(id, status string) {
	c.t.Helper()
	c.waitEvent(func(ev map[string]any) bool {
		d, _ := ev["data"].(map[string]any)
		return ev["event"] == "JOB_STATUS_CHANGE" && d["id"] == id && d["status"] == status
	})
}

// jobEvents renders the job events received so far, in order: status
// changes as "status S", block job events with their data. Members listed
// in mask are timing-dependent in the scenario and shown as "*".
func (c *client) jobEvents(mask ...string) []string {
	var out []string
	for _, ev := range c.events {
		name, _ := ev["event"].(string)
		d, _ := ev["data"].(map[string]any)
		switch {
		case name == "JOB_STATUS_CHANGE":
			out = append(out, fmt.Sprintf("%s status %v", d["id"], d["status"]))
		case strings.HasPrefix(name, "BLOCK_JOB_"):
			keys := make([]string, 0, len(d))
			for k := range d {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			var b strings.Builder
			b.WriteString(name)
			for _, k := range keys {
				v := fmt.Sprint(d[k])
				for _, m := range mask {
					if m == k {
						v = "*"
					}
				}
				fmt.Fprintf(&b, " %s=%s", k, v)
			}
			out = append(out, b.String())
		}
	}
	return out
}

// graphView is query-named-block-nodes reduced to what a chain change
// shows (the same for both daemons), auto node-names numbered by first
// appearance and the scratch directory as $DIR.
func graphView(t *testing.T, c *client, dir string) []string {
	t.Helper()
	norm := newNormalizer(dir)
	var out []string
	for _, x := range c.ok("query-named-block-nodes", nil).([]any) {
		n := x.(map[string]any)
		img, _ := n["image"].(map[string]any)
		line := fmt.Sprintf("%v drv=%v ro=%v file=%v backing_file=%v depth=%v backing-filename=%v",
			n["node-name"], n["drv"], n["ro"], n["file"], n["backing_file"], n["backing_file_depth"], img["backing-filename"])
		out = append(out, norm.text(line))
	}
	return out
}

// jobOutcome is what a scenario leaves behind on one daemon.
type jobOutcome struct {
	replies []string // errors and non-empty returns, in order
	events  []string
	graph   []string
	headers []string // per image: backing file|format as qemu-img reads it
}

func (o *jobOutcome) String() string {
	var b strings.Builder
	for _, s := range [][]string{o.replies, o.events, o.graph, o.headers} {
		b.WriteString(strings.Join(s, "\n"))
		b.WriteString("\n--\n")
	}
	return b.String()
}

// compareOutcomes fails the test, showing both, unless qbmond's outcome
// is QSD's.
func compareOutcomes(t *testing.T, ours, qsd *jobOutcome) {
	t.Helper()
	sameText(t, "outcome", ours.String(), qsd.String())
}

// compareLikeQSD runs scenario on qbmond, then on QSD, each time with a
// fresh scratch directory and outcome, and compares the two outcomes (the
// directory written as $DIR in the replies).
func compareLikeQSD(t *testing.T, scenario func(k kind, o *jobOutcome, dir string)) {
	t.Helper()
	run := func(k kind) *jobOutcome {
		o := &jobOutcome{}
		defer o.showOnFailure(t, k)
		dir := shortTempDir(t)
		scenario(k, o, dir)
		o.scrub(dir)
		return o
	}
	compareOutcomes(t, run(kindQbmond), run(kindQSD))
}

// record runs a command and notes its reply in the outcome: errors with
// class and description, other returns when not empty.
func (o *jobOutcome) record(c *client, name string, args any) map[string]any {
	c.t.Helper()
	r := c.cmd(name, args)
	if e, ok := r["error"].(map[string]any); ok {
		o.replies = append(o.replies, fmt.Sprintf("%s: %v: %v", name, e["class"], e["desc"]))
	} else if ret := r["return"]; fmt.Sprint(ret) != "map[]" {
		b, _ := json.Marshal(ret)
		o.replies = append(o.replies, fmt.Sprintf("%s: %s", name, b))
	}
	return r
}

// start runs a command that starts a job, notes its reply, and fails the
// test at once if it was refused (rather than wait for events that will
// not come).
func (o *jobOutcome) start(c *client, name string, args any) {
	c.t.Helper()
	if r := o.record(c, name, args); r["error"] != nil {
		c.t.Fatalf("%s %v: %v\n%s", name, args, r["error"], c.d.stderr)
	}
}

// layerScript creates a qcow2 chain l0 (base) ... l{n-1} of 8 MiB, layer i
// holding its own pattern in its own megabyte, an overwrite of a region
// every layer writes, and (in the middle layers) a zeroed range over data
// of the layers below; then copies the chain to ref/.
func layerScript(n int) string {
	var b strings.Builder
	b.WriteString("qemu-img create -q -f qcow2 l0.qcow2 8M\n")
	for i := 1; i < n; i++ {
		fmt.Fprintf(&b, "qemu-img create -q -f qcow2 -b l%d.qcow2 -F qcow2 l%d.qcow2\n", i-1, i)
	}
	for i := range n {
		p := 0x11 * (i + 1)
		fmt.Fprintf(&b, "qemu-io -f qcow2 -c 'write -P 0x%x %dM 768k' -c 'write -P 0x%x 7M %dk' l%d.qcow2 >/dev/null\n",
			p, i, p+1, 64*(n-i), i)
		if i > 0 && i < n-1 {
			fmt.Fprintf(&b, "qemu-io -f qcow2 -c 'write -z %dk 128k' l%d.qcow2 >/dev/null\n", (i-1)*1024+512, i)
		}
	}
	b.WriteString("mkdir ref && cp *.qcow2 ref/\n")
	return b.String()
}

// startLayers makes the n layers of layerScript in dir, starts a daemon of
// kind k there and opens them (addLayers).
func startLayers(t *testing.T, k kind, dir string, n int) (*daemon, *client) {
	t.Helper()
	sh(t, dir, layerScript(n))
	d := startDaemon(t, k, dir)
	c := d.connect()
	addLayers(t, c, dir, n)
	return d, c
}

// streamLikeQSD streams into one of the four layers of layerScript with
// args (job-id s0 added), l3 exported over NBD, and compares the replies,
// events, graph and images with QSD's; the export reads the same all
// along. after, if not nil, checks the scratch directory at the end.
func streamLikeQSD(t *testing.T, args map[string]any, after func(dir string)) {
	t.Helper()
	compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
		d, c := startLayers(t, k, dir, 4)
		uri := startNBD(t, c, dir, "l3")
		a := map[string]any{"job-id": "s0"}
		for k, v := range args {
			a[k] = v
		}
		o.start(c, "block-stream", a)
		c.waitJob("s0", "null")
		o.events = c.jobEvents()
		o.graph = graphView(t, c, dir)
		identical(t, filepath.Join(dir, "ref", "l3.qcow2"), uri, "-f", "qcow2", "-F", "raw")
		o.finish(t, d, dir, 4)
		if after != nil {
			after(dir)
		}
	})
}

// addLayers opens l0..l{n-1} as nodes named like their files, each backed
// by the one below; the base and middle layers read-only, as a manager
// opens a chain.
func addLayers(t *testing.T, c *client, dir string, n int) {
	t.Helper()
	for i := range n {
		o := map[string]any{"driver": "qcow2", "node-name": fmt.Sprintf("l%d", i),
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, fmt.Sprintf("l%d.qcow2", i))}}
		if i > 0 {
			o["backing"] = fmt.Sprintf("l%d", i-1)
		} else {
			o["backing"] = nil
		}
		if i < n-1 {
			o["read-only"] = true
		}
		c.ok("blockdev-add", o)
	}
}

// startNBD starts the NBD server of a daemon on dir/nbd.sock and exports
// node (writable) under its own name; it returns the export's URI.
func startNBD(t *testing.T, c *client, dir, node string) string {
	t.Helper()
	sock := filepath.Join(dir, "nbd.sock")
	c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	c.ok("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": node, "name": "disk", "writable": true})
	return "nbd+unix:///disk?socket=" + sock
}

// finish stops the daemon and adds the headers of the images to the
// outcome; every image must pass qemu-img check.
func (o *jobOutcome) finish(t *testing.T, d *daemon, dir string, n int) {
	t.Helper()
	d.stop()
	for i := range n {
		img := filepath.Join(dir, fmt.Sprintf("l%d.qcow2", i))
		checkClean(t, img, false)
		o.headers = append(o.headers, fmt.Sprintf("l%d: %s", i, strings.ReplaceAll(backingOf(t, img), dir, "$DIR")))
	}
}

// TestBlockCommitPassiveLikeQSD commits the middle of 3- and 5-layer
// chains into a lower layer (the default base and a given one, with and
// without backing-file), as qemu-storage-daemon does: the same events,
// graph and headers, clean images, and a chain that reads as before.
func TestBlockCommitPassiveLikeQSD(t *testing.T) {
	for _, tc := range []struct {
		name   string
		layers int
		args   map[string]any
	}{
		{"3-layers", 3, map[string]any{"top-node": "l1"}},
		{"5-layers-to-l1", 5, map[string]any{"top-node": "l3", "base-node": "l1"}},
		{"5-layers-backing-file", 5, map[string]any{"top-node": "l2", "base-node": "l0", "backing-file": "l0.qcow2"}},
		{"5-layers-all", 5, map[string]any{"top-node": "l3", "base-node": "l0", "speed": 1 << 30}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
				d, c := startLayers(t, k, dir, tc.layers)
				active := fmt.Sprintf("l%d", tc.layers-1)
				uri := startNBD(t, c, dir, active)
				args := map[string]any{"job-id": "j0", "device": active}
				for k, v := range tc.args {
					args[k] = v
				}
				o.start(c, "block-commit", args)
				c.waitJob("j0", "null")
				o.events = c.jobEvents()
				o.record(c, "query-block-jobs", nil)
				o.graph = graphView(t, c, dir)
				identical(t, filepath.Join(dir, "ref", active+".qcow2"), uri, "-f", "qcow2", "-F", "raw")
				o.finish(t, d, dir, tc.layers)
				identical(t, filepath.Join(dir, "ref", active+".qcow2"), filepath.Join(dir, active+".qcow2"))
			})
		})
	}
}

// TestBlockCommitImplicitChain commits a chain opened from the image
// headers (no node names below the active layer): the committed layers
// close, as QEMU's implicit nodes do.
func TestBlockCommitImplicitChain(t *testing.T) {
	compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
		sh(t, dir, layerScript(4))
		d := startDaemon(t, k, dir)
		c := d.connect()
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top",
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "l3.qcow2")}})
		names := map[string]string{}
		for _, x := range c.ok("query-named-block-nodes", nil).([]any) {
			n := x.(map[string]any)
			if n["drv"] == "qcow2" {
				names[filepath.Base(n["file"].(string))] = n["node-name"].(string)
			}
		}
		uri := startNBD(t, c, dir, "top")
		o.start(c, "block-commit", map[string]any{"job-id": "j0", "device": "top",
			"top-node": names["l2.qcow2"], "base-node": names["l0.qcow2"]})
		c.waitJob("j0", "null")
		o.events = c.jobEvents()
		o.graph = graphView(t, c, dir)
		identical(t, filepath.Join(dir, "ref", "l3.qcow2"), uri, "-f", "qcow2", "-F", "raw")
		o.finish(t, d, dir, 4)
	})
}

// qemuIOWrites writes through an NBD export and applies the same writes
// to the reference image ref (a qcow2 chain), so that ref stays what the
// guest should read.
func qemuIOWrites(t *testing.T, uri, ref string, cmds []string) {
	t.Helper()
	qemuIO(t, uri, cmds)
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	run(t, "qemu-io", append(args, ref)...)
}

// TestBlockCommitActiveLikeQSD commits the active layer of a 3-layer
// chain into its base while a guest writes through NBD: before READY
// (the job throttled), after READY (mirrored), then job-complete pivots
// the export to the base. The events, graph, headers and bytes match
// qemu-storage-daemon's; the base alone then holds what the guest wrote.
func TestBlockCommitActiveLikeQSD(t *testing.T) {
	for _, base := range []string{"", "l1"} {
		t.Run("base="+base, func(t *testing.T) {
			compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
				d, c := startLayers(t, k, dir, 3)
				uri := startNBD(t, c, dir, "l2")
				ref := filepath.Join(dir, "ref", "l2.qcow2")
				args := map[string]any{"job-id": "j0", "device": "l2", "speed": 65536}
				if base != "" {
					args["base-node"] = base
				}
				o.start(c, "block-commit", args)
				qemuIOWrites(t, uri, ref, []string{"write -P 0xa1 64k 64k", "write -P 0xa2 5M 1M", "write -z 1M 64k",
					"write -z -u 2M 64k", "write -P 0xa3 8384512 4096"})
				o.record(c, "block-job-set-speed", map[string]any{"device": "j0", "speed": 0})
				c.waitJob("j0", "ready")
				qemuIOWrites(t, uri, ref, []string{"write -P 0xb1 100000 5000", "write -P 0xb2 3M 128k"})
				o.record(c, "job-complete", map[string]any{"id": "j0"})
				c.waitJob("j0", "null")
				// Progress depends on when the writes came: compare the
				// events without it.
				o.events = c.jobEvents("len", "offset")
				o.record(c, "query-block-exports", nil)
				o.graph = graphView(t, c, dir)
				identical(t, ref, uri, "-f", "qcow2", "-F", "raw")
				qemuIOWrites(t, uri, ref, []string{"write -P 0xc1 0 4k"})
				o.finish(t, d, dir, 3)
				pivot := "l0.qcow2"
				if base != "" {
					pivot = base + ".qcow2"
				}
				identical(t, ref, filepath.Join(dir, pivot))
			})
		})
	}
}

// TestBlockStreamLikeQSD streams into the active layer of a 4-layer
// chain: everything (no base), down to a base-node, and down to a
// bottom node, with and without a backing-file name.
func TestBlockStreamLikeQSD(t *testing.T) {
	for _, tc := range []struct {
		name string
		args map[string]any
	}{
		{"all", nil},
		{"base-node", map[string]any{"base-node": "l1"}},
		{"bottom", map[string]any{"bottom": "l1"}},
		{"backing-file", map[string]any{"base-node": "l0", "backing-file": "l0.qcow2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := map[string]any{"device": "l3"}
			for k, v := range tc.args {
				args[k] = v
			}
			streamLikeQSD(t, args, func(dir string) {
				identical(t, filepath.Join(dir, "ref", "l3.qcow2"), filepath.Join(dir, "l3.qcow2"))
			})
		})
	}
}

// TestBlockJobControlLikeQSD drives throttled jobs through pause, resume,
// set-speed and cancel, and tries every verb where the job's state
// forbids it; auto-finalize and auto-dismiss off leave the job for
// job-finalize and job-dismiss. Replies and event sequences match QSD's,
// and a cancelled commit leaves the chain as it was.
func TestBlockJobControlLikeQSD(t *testing.T) {
	compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
		d, c := startLayers(t, k, dir, 3)
		uri := startNBD(t, c, dir, "l2")
		// A throttled passive commit: the first chunk goes at once, the
		// next waits for the limit.
		o.start(c, "block-commit", map[string]any{"job-id": "j0", "device": "l2", "top-node": "l1",
			"speed": 4096, "auto-finalize": false, "auto-dismiss": false})
		for _, v := range []struct {
			cmd  string
			args map[string]any
		}{
			{"job-complete", map[string]any{"id": "j0"}},
			{"block-job-complete", map[string]any{"device": "j0"}},
			{"job-finalize", map[string]any{"id": "j0"}},
			{"job-dismiss", map[string]any{"id": "j0"}},
			{"job-resume", map[string]any{"id": "j0"}},
			{"block-job-resume", map[string]any{"device": "j0"}},
			{"block-job-set-speed", map[string]any{"device": "j0", "speed": -1}},
			{"block-job-set-speed", map[string]any{"device": "nope", "speed": 1}},
			{"block-job-pause", map[string]any{"device": "nope"}},
			{"blockdev-del", map[string]any{"node-name": "l1"}},
			{"blockdev-del", map[string]any{"node-name": "l0"}},
			{"block-commit", map[string]any{"job-id": "j1", "device": "l2", "top-node": "l1"}},
			{"block-stream", map[string]any{"job-id": "j1", "device": "l2"}},
			{"block-commit", map[string]any{"job-id": "j0", "device": "l2"}},
		} {
			o.record(c, v.cmd, v.args)
		}
		o.record(c, "job-pause", map[string]any{"id": "j0"})
		c.waitJob("j0", "paused")
		o.record(c, "job-pause", map[string]any{"id": "j0"})
		o.record(c, "block-job-cancel", map[string]any{"device": "j0"})
		o.record(c, "query-block-jobs", nil)
		o.record(c, "block-job-resume", map[string]any{"device": "j0"})
		c.waitJob("j0", "running")
		o.record(c, "block-job-set-speed", map[string]any{"device": "j0", "speed": 0})
		c.waitJob("j0", "pending")
		for _, v := range []string{"job-pause", "job-resume", "job-complete", "job-dismiss"} {
			o.record(c, v, map[string]any{"id": "j0"})
		}
		o.record(c, "block-job-set-speed", map[string]any{"device": "j0", "speed": 1})
		o.record(c, "query-jobs", nil)
		o.record(c, "job-finalize", map[string]any{"id": "j0"})
		c.waitJob("j0", "concluded")
		o.record(c, "query-block-jobs", nil)
		o.record(c, "job-finalize", map[string]any{"id": "j0"})
		o.record(c, "job-cancel", map[string]any{"id": "j0"})
		o.record(c, "job-dismiss", map[string]any{"id": "j0"})
		c.waitJob("j0", "null")
		o.record(c, "query-jobs", nil)

		// A second, cancelled commit of the remaining two layers.
		o.record(c, "block-commit", map[string]any{"job-id": "j1", "device": "l2", "top-node": "l2", "speed": 4096})
		o.replies = o.replies[:len(o.replies)-1] // an active commit: shown by its events
		o.record(c, "block-job-cancel", map[string]any{"device": "j1", "force": true})
		c.waitJob("j1", "null")
		o.record(c, "block-commit", map[string]any{"job-id": "j2", "device": "l2", "base-node": "l0", "speed": 4096})
		o.record(c, "job-cancel", map[string]any{"id": "j2"})
		c.waitJob("j2", "null")
		// Where the cancels stopped depends on timing.
		o.events = c.jobEvents("len", "offset")
		o.graph = graphView(t, c, dir)
		identical(t, filepath.Join(dir, "ref", "l2.qcow2"), uri, "-f", "qcow2", "-F", "raw")
		o.finish(t, d, dir, 3)
	})
}

// blkdebugChain opens l0..l2 with a blkdebug filter between the base l0
// and its file carrying rules; it returns the export URI.
func blkdebugChain(t *testing.T, c *client, dir string, rules map[string]any) string {
	t.Helper()
	bd := map[string]any{"driver": "blkdebug", "image": map[string]any{"driver": "file", "filename": filepath.Join(dir, "l0.raw")}}
	for k, v := range rules {
		bd[k] = v
	}
	c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "l0", "file": bd})
	for i := 1; i < 3; i++ {
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": fmt.Sprintf("l%d", i),
			"backing": fmt.Sprintf("l%d", i-1), "read-only": i < 2,
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, fmt.Sprintf("l%d.qcow2", i))}})
	}
	return startNBD(t, c, dir, "l2")
}

// blkdebugScript is a raw base under two qcow2 layers; the middle one
// holds 2 MiB of data in four places, so a commit writes several chunks.
const blkdebugScript = `
qemu-img create -q -f raw l0.raw 8M
qemu-io -f raw -c 'write -P 0x11 0 8M' l0.raw >/dev/null
qemu-img create -q -f qcow2 -b l0.raw -F raw l1.qcow2
qemu-img create -q -f qcow2 -b l1.qcow2 -F qcow2 l2.qcow2
qemu-io -f qcow2 -c 'write -P 0x22 0 512k' -c 'write -P 0x23 2M 512k' -c 'write -P 0x24 4M 512k' -c 'write -P 0x25 6M 512k' l1.qcow2 >/dev/null
qemu-io -f qcow2 -c 'write -P 0x33 1M 64k' l2.qcow2 >/dev/null
mkdir ref && cp l0.raw *.qcow2 ref/
`

// TestBlockCommitErrorsLikeQSD fails the base's second data write
// during a passive commit (blkdebug, EIO): with on-error=report the job
// completes with the error and the chain reads as before; with stop it
// pauses with io-status failed until job-resume, then finishes.
func TestBlockCommitErrorsLikeQSD(t *testing.T) {
	for _, policy := range []string{"report", "stop"} {
		t.Run(policy, func(t *testing.T) {
			compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
				sh(t, dir, blkdebugScript)
				d := startDaemon(t, k, dir)
				c := d.connect()
				// The first data write turns state 1 into 2; the second
				// fails, once.
				uri := blkdebugChain(t, c, dir, map[string]any{
					"inject-error": []any{map[string]any{"event": "write_aio", "state": 2, "errno": 5, "once": true}},
					"set-state":    []any{map[string]any{"event": "write_aio", "state": 1, "new_state": 2}},
				})
				o.start(c, "block-commit", map[string]any{"job-id": "j0", "device": "l2", "top-node": "l1", "on-error": policy})
				if policy == "stop" {
					c.waitJob("j0", "paused")
					o.record(c, "query-block-jobs", nil)
					o.record(c, "job-resume", map[string]any{"id": "j0"})
				}
				c.waitJob("j0", "null")
				o.events = c.jobEvents()
				o.graph = graphView(t, c, dir)
				identical(t, filepath.Join(dir, "ref", "l2.qcow2"), uri, "-f", "qcow2", "-F", "raw")
				d.stop()
				for _, img := range []string{"l1.qcow2", "l2.qcow2"} {
					checkClean(t, filepath.Join(dir, img), false)
					o.headers = append(o.headers, img+": "+strings.ReplaceAll(backingOf(t, filepath.Join(dir, img)), dir, "$DIR"))
				}
				identical(t, filepath.Join(dir, "ref", "l2.qcow2"), filepath.Join(dir, "l2.qcow2"))
			})
		})
	}
}

// TestBlockJobBitmapsLikeQSD: a dirty bitmap on the active layer counts
// the guest's writes through a stream, a passive commit and an active
// commit (not the job's own copying), as in QSD.
func TestBlockJobBitmapsLikeQSD(t *testing.T) {
	for _, job := range []string{"block-stream", "block-commit", "active-commit"} {
		t.Run(job, func(t *testing.T) {
			compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
				d, c := startLayers(t, k, dir, 3)
				c.ok("block-dirty-bitmap-add", map[string]any{"node": "l2", "name": "b0", "granularity": 65536})
				uri := startNBD(t, c, dir, "l2")
				ref := filepath.Join(dir, "ref", "l2.qcow2")
				args := map[string]any{"job-id": "j0", "device": "l2", "speed": 65536}
				cmd := job
				switch job {
				case "block-commit":
					args["top-node"] = "l1"
				case "active-commit":
					cmd = "block-commit"
				}
				o.start(c, cmd, args)
				qemuIOWrites(t, uri, ref, []string{"write -P 0xa1 64k 64k", "write -P 0xa2 5M 1M", "write -z 1M 64k"})
				o.record(c, "block-job-set-speed", map[string]any{"device": "j0", "speed": 0})
				if job == "active-commit" {
					// The bitmap stays on l2, which is no longer what
					// the export uses once the job has pivoted.
					c.waitJob("j0", "ready")
					qemuIOWrites(t, uri, ref, []string{"write -P 0xa3 2M 4k"})
					o.record(c, "job-complete", map[string]any{"id": "j0"})
				}
				c.waitJob("j0", "null")
				qemuIOWrites(t, uri, ref, []string{"write -P 0xb1 100000 5000"})
				o.events = c.jobEvents("len", "offset")
				o.replies = append(o.replies, strings.Split(strings.TrimSpace(bitmapState(t, c, "l2", []string{"b0"})), "\n")...)
				identical(t, ref, uri, "-f", "qcow2", "-F", "raw")
				o.finish(t, d, dir, 3)
			})
		})
	}
}

// qbmLayers makes base.qcow2 <- mid.qbm <- top.qbm (qbm with allocation
// bitmaps, each layer with its own data, written through NBD while it
// was the active layer) and opens them as base, mid and top; it returns
// the URI of an export of top and a raw copy of what it reads.
func qbmLayers(t *testing.T, c *client, dir string) (uri, ref string) {
	t.Helper()
	sh(t, dir, `
qemu-img create -q -f qcow2 base.qcow2 8M
qemu-io -f qcow2 -c 'write -P 0x11 0 8M' -c 'write -z 6M 64k' base.qcow2 >/dev/null
`)
	sock := filepath.Join(dir, "nbd.sock")
	c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	for _, l := range []struct{ name, backing, fmt string }{{"mid", "base.qcow2", "qcow2"}, {"top", "mid.qbm", "qbm"}} {
		desc := filepath.Join(dir, l.name+".qbm")
		if err := os.WriteFile(desc, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if e := runCreate(t, c, "c-"+l.name, map[string]any{"driver": "qbm", "size": 8 << 20,
			"file":         map[string]any{"driver": "file", "filename": desc},
			"backing-file": l.backing, "backing-fmt": l.fmt, "granularity": 65536}); e != "" {
			t.Fatalf("blockdev-create %s: %s", l.name, e)
		}
		c.ok("blockdev-add", map[string]any{"driver": "qbm", "node-name": "w", "file": map[string]any{"driver": "file", "filename": desc}})
		c.ok("block-export-add", map[string]any{"type": "nbd", "id": "w", "node-name": "w", "writable": true})
		p := 0x22
		if l.name == "top" {
			p = 0x33
		}
		qemuIO(t, "nbd+unix:///w?socket="+sock, []string{
			fmt.Sprintf("write -P 0x%x %dM 1M", p, p/0x11),
			fmt.Sprintf("write -P 0x%x 7M %dk", p, 64*(p/0x11)),
			fmt.Sprintf("write -z %dM 64k", p/0x11+2),
		})
		c.ok("block-export-del", map[string]any{"id": "w"})
		lockWaitNoExports(t, c)
		c.ok("blockdev-del", map[string]any{"node-name": "w"})
	}
	c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "base", "read-only": true,
		"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "base.qcow2")}})
	c.ok("blockdev-add", map[string]any{"driver": "qbm", "node-name": "mid", "read-only": true, "backing": "base",
		"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "mid.qbm")}})
	c.ok("blockdev-add", map[string]any{"driver": "qbm", "node-name": "top", "backing": "mid",
		"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "top.qbm")}})
	c.ok("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top", "name": "disk", "writable": true})
	uri = "nbd+unix:///disk?socket=" + sock
	ref = filepath.Join(dir, "ref.raw")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, ref)
	return uri, ref
}

// qbmBacking returns the backing entry of a qbm descriptor's allocation
// bitmap ("" for none).
func qbmBacking(t *testing.T, desc string) string {
	t.Helper()
	b, err := os.ReadFile(desc)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		QBM struct {
			Bitmaps map[string]struct {
				Type    string `json:"type"`
				Backing *struct {
					File, Format string
				} `json:"backing"`
			} `json:"bitmaps"`
		} `json:"QBM"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v\n%s", desc, err, b)
	}
	for _, e := range d.QBM.Bitmaps {
		if e.Type == "allocation" && e.Backing != nil {
			return e.Backing.File + "|" + e.Backing.Format
		}
	}
	return ""
}

// TestQbmChainJobs: commit (passive and active) and stream work on
// chains of qbm images with allocation bitmaps as on qcow2 chains (QSD
// has no qbm, so the referee is what the chain read before the job): the
// guest reads the same, the descriptors name the new backing files, and
// the qcow2 base checks clean.
func TestQbmChainJobs(t *testing.T) {
	for _, tc := range []struct {
		name, cmd string
		args      map[string]any
		pivot     string // the node the export ends on
		backing   map[string]string
	}{
		// The headers name the new backing file by its node's file name,
		// as QEMU writes them ($DIR is the test's directory).
		{"passive-commit", "block-commit", map[string]any{"top-node": "mid", "base-node": "base"}, "top",
			map[string]string{"top.qbm": "$DIR/base.qcow2|qcow2"}},
		{"active-commit", "block-commit", map[string]any{"base-node": "mid"}, "mid",
			map[string]string{"top.qbm": "mid.qbm|qbm", "mid.qbm": "base.qcow2|qcow2"}},
		{"stream", "block-stream", map[string]any{"base-node": "base"}, "top",
			map[string]string{"top.qbm": "$DIR/base.qcow2|qcow2", "mid.qbm": "base.qcow2|qcow2"}},
		{"stream-all", "block-stream", nil, "top",
			map[string]string{"top.qbm": "", "mid.qbm": "base.qcow2|qcow2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := shortTempDir(t)
			d := startDaemon(t, kindQbmond, dir)
			c := d.connect()
			uri, ref := qbmLayers(t, c, dir)
			args := map[string]any{"job-id": "j0", "device": "top"}
			for k, v := range tc.args {
				args[k] = v
			}
			if r := c.cmd(tc.cmd, args); r["error"] != nil {
				t.Fatalf("%s: %v", tc.cmd, r["error"])
			}
			if tc.name == "active-commit" {
				qemuIO(t, uri, []string{"write -P 0x44 5M 64k"})
				run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x44 5M 64k", ref)
				c.waitJob("j0", "ready")
				c.ok("job-complete", map[string]any{"id": "j0"})
			}
			c.waitJob("j0", "null")
			for _, ev := range c.jobEvents() {
				if strings.Contains(ev, "error=") {
					t.Fatalf("the job failed: %s", ev)
				}
			}
			exp := c.ok("query-block-exports", nil).([]any)
			if n := exp[0].(map[string]any)["node-name"]; n != tc.pivot {
				t.Errorf("the export is on %v, want %s", n, tc.pivot)
			}
			identical(t, ref, uri, "-f", "raw", "-F", "raw")
			d.stop()
			for desc, want := range tc.backing {
				if got := strings.ReplaceAll(qbmBacking(t, filepath.Join(dir, desc)), dir, "$DIR"); got != want {
					t.Errorf("%s's backing: %q, want %q", desc, got, want)
				}
			}
			checkClean(t, filepath.Join(dir, "base.qcow2"), false)
		})
	}
}
