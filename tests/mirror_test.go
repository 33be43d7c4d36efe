package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// blockdev-mirror against qemu-storage-daemon: the 3-layer chain of
// layerScript with its active layer l2 exported over NBD, mirrored into a
// target node while qemu-io writes through the export; the replies, job
// events, graph afterwards, image headers and target allocation compared
// with QSD's, and the bytes judged by qemu-img compare against the
// reference chain that received the same writes.

// mirrorWrites are the guest's writes while a throttled mirror runs:
// data over copied and not yet copied areas, zeroes, an unaligned tail.
var mirrorWrites = []string{"write -P 0xa1 64k 64k", "write -P 0xa2 5M 1M", "write -z 1M 64k",
	"write -z -u 2M 64k", "write -P 0xa3 8384512 4096"}

// mirrorLateWrites land while the mirror is READY.
var mirrorLateWrites = []string{"write -P 0xb1 100000 5000", "write -P 0xb2 3M 128k", "write -P 0xb3 6M 512k"}

// bgWrites runs cmds with qemu-io through the export at uri in the
// background and applies them to the reference chain ref; the returned
// function waits for both and fails the test on an error.
func bgWrites(t *testing.T, uri, ref string, cmds []string) (wait func()) {
	t.Helper()
	requireTool(t, "qemu-io")
	done := make(chan error, 1)
	go func() {
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		out, err := exec.Command("qemu-io", append(args, uri)...).CombinedOutput()
		if err == nil && strings.Contains(string(out), "failed") {
			err = fmt.Errorf("qemu-io: %s", out)
		}
		done <- err
	}()
	return func() {
		t.Helper()
		if err := <-done; err != nil {
			t.Fatalf("qemu-io through the export: %v", err)
		}
		args := []string{"-f", "qcow2"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		run(t, "qemu-io", append(args, ref)...)
	}
}

// mapOf is qemu-img map of a qcow2 image without its backing chain:
// where the target holds data, zeroes or nothing.
func mapOf(t *testing.T, img string) string {
	t.Helper()
	out := run(t, "qemu-img", "map", "--output=json", "-f", "qcow2", img)
	var ents []map[string]any
	if err := json.Unmarshal([]byte(out), &ents); err != nil {
		t.Fatalf("qemu-img map %s: %v\n%s", img, err, out)
	}
	// Extents are merged where only the host offsets split them (they
	// depend on the order the clusters were written in).
	type ext struct {
		start, length float64
		data, zero    any
	}
	var list []ext
	for _, e := range ents {
		if e["depth"] != float64(0) {
			continue
		}
		x := ext{e["start"].(float64), e["length"].(float64), e["data"], e["zero"]}
		if n := len(list); n > 0 && list[n-1].data == x.data && list[n-1].zero == x.zero &&
			list[n-1].start+list[n-1].length == x.start {
			list[n-1].length += x.length
			continue
		}
		list = append(list, x)
	}
	var b strings.Builder
	for _, x := range list {
		fmt.Fprintf(&b, "%.0f+%.0f data=%v zero=%v\n", x.start, x.length, x.data, x.zero)
	}
	return b.String()
}

// contentSum is the SHA-256 of what the qcow2 image img reads.
func imageContentSum(t *testing.T, dir, img string) string {
	t.Helper()
	raw := filepath.Join(dir, "content.raw")
	run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", img, raw)
	return strings.Fields(run(t, "sha256sum", raw))[0]
}

// mirrorChain makes the layers and a target tgt.qcow2 of their size
// (backed by l1.qcow2 when backed), starts a daemon of kind k, opens the
// layers, exports l2 and adds the target as node tgt with opts; it
// returns the daemon, its client and the export's URI.
func mirrorChain(t *testing.T, k kind, dir string, backed bool, opts map[string]any) (*daemon, *client, string) {
	t.Helper()
	d, c := startLayers(t, k, dir, 3)
	if backed {
		sh(t, dir, "qemu-img create -q -f qcow2 -b l1.qcow2 -F qcow2 tgt.qcow2 8M\n")
	} else {
		sh(t, dir, "qemu-img create -q -f qcow2 tgt.qcow2 8M\n")
	}
	uri := startNBD(t, c, dir, "l2")
	o := map[string]any{"driver": "qcow2", "node-name": "tgt",
		"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "tgt.qcow2")}}
	if backed {
		o["backing"] = "l1"
	} else {
		o["backing"] = nil
	}
	for k, v := range opts {
		o[k] = v
	}
	c.ok("blockdev-add", o)
	return d, c, uri
}

// recordJobs notes query-block-jobs without the progress members, which
// depend on timing, nor (for a running job) busy, which depends on whether
// a copy is in flight at that moment.
func (o *jobOutcome) recordJobs(c *client) {
	c.t.Helper()
	r := c.cmd("query-block-jobs", nil)
	list, _ := r["return"].([]any)
	for _, x := range list {
		m := x.(map[string]any)
		delete(m, "len")
		delete(m, "offset")
		if m["status"] == "running" {
			delete(m, "busy")
		}
	}
	b, _ := json.Marshal(r["return"])
	o.replies = append(o.replies, "query-block-jobs: "+string(b))
}

// recordExports notes query-block-exports with automatic node names
// numbered as graphView numbers them.
func (o *jobOutcome) recordExports(c *client, dir string) {
	c.t.Helper()
	b, _ := json.Marshal(c.ok("query-block-exports", nil))
	o.replies = append(o.replies, "query-block-exports: "+newNormalizer(dir).text(string(b)))
}

// TestBlockdevMirrorArgsLikeQSD tries blockdev-mirror's argument checks,
// in QEMU's order, and the refusals while a mirror runs: the same error
// classes and messages as QSD, and a job that fails at its start
// (target of another size) with the same events.
func TestBlockdevMirrorArgsLikeQSD(t *testing.T) {
	compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
		d, c, _ := mirrorChain(t, k, dir, false, nil)
		sh(t, dir, "qemu-img create -q -f qcow2 small.qcow2 4M\n")
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "small",
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "small.qcow2")}})
		for _, a := range []map[string]any{
			{"device": "nope", "target": "tgt", "sync": "full"},
			{"device": "l2", "target": "nope", "sync": "full"},
			{"device": "l1", "target": "tgt", "sync": "full"},
			{"device": "l2", "target": "tgt", "sync": "full"},
			{"job-id": "m0", "device": "l2", "target": "tgt", "sync": "full", "granularity": 256},
			{"job-id": "m0", "device": "l2", "target": "tgt", "sync": "full", "granularity": 128 << 20},
			{"job-id": "m0", "device": "l2", "target": "tgt", "sync": "full", "granularity": 3000},
			{"job-id": "m0", "device": "l2", "target": "tgt", "sync": "incremental"},
			{"job-id": "m0", "device": "l2", "target": "tgt", "sync": "bitmap"},
			{"job-id": "m0", "device": "l2", "target": "tgt", "sync": "full", "buf-size": -1},
			{"job-id": "m0", "device": "l2", "target": "l2", "sync": "full"},
			{"job-id": "m0", "device": "l2", "target": "tgt", "sync": "full", "replaces": "nope"},
			{"job-id": "m0", "device": "l2", "target": "tgt", "sync": "full", "replaces": "small"},
			{"job-id": "m0", "device": "l2", "target": "tgt", "sync": "full", "replaces": "l1"},
			{"job-id": "m0", "device": "l2", "target": "tgt", "sync": "full", "filter-node-name": "tgt"},
			{"job-id": "m0", "device": "l2", "target": "tgt", "sync": "full", "speed": -1},
			{"job-id": "1x", "device": "l2", "target": "tgt", "sync": "full"},
			{"job-id": "m0", "device": "l2", "target": "l0", "sync": "full"},
		} {
			o.record(c, "blockdev-mirror", a)
		}
		// A target of another size fails once the job runs.
		o.record(c, "blockdev-mirror", map[string]any{"job-id": "m0", "device": "l2", "target": "small", "sync": "full"})
		c.waitJob("m0", "null")
		// While a mirror runs: the source and target are taken.
		o.start(c, "blockdev-mirror", map[string]any{"job-id": "m1", "device": "l2", "target": "tgt", "sync": "full",
			"speed": 4096, "filter-node-name": "mt"})
		for _, v := range []struct {
			cmd  string
			args map[string]any
		}{
			{"blockdev-mirror", map[string]any{"job-id": "m2", "device": "l2", "target": "small", "sync": "full"}},
			{"blockdev-mirror", map[string]any{"job-id": "m1", "device": "mt", "target": "small", "sync": "full"}},
			{"blockdev-mirror", map[string]any{"job-id": "m2", "device": "small", "target": "tgt", "sync": "full"}},
			{"blockdev-del", map[string]any{"node-name": "tgt"}},
			{"blockdev-del", map[string]any{"node-name": "mt"}},
			{"job-complete", map[string]any{"id": "m1"}},
			{"block-job-complete", map[string]any{"device": "m1"}},
		} {
			o.record(c, v.cmd, v.args)
		}
		o.recordJobs(c)
		o.record(c, "block-job-cancel", map[string]any{"device": "m1"})
		c.waitJob("m1", "null")
		o.events = c.jobEvents("len", "offset")
		o.graph = graphView(t, c, dir)
		o.finish(t, d, dir, 3)
	})
}

// TestBlockdevMirrorLikeQSD mirrors the active layer with sync full, top
// (into a target backed by l1, the source's backing node) and none, while
// qemu-io writes through the export: throttled first, then at full speed
// with writes racing the copy, then READY with more writes, then
// job-complete: the export moves to the target, which then holds what the
// guest sees (for sync none: what the guest wrote while the job ran).
func TestBlockdevMirrorLikeQSD(t *testing.T) {
	for _, tc := range []struct{ name, sync, mode string }{
		{"full", "full", "background"},
		{"top", "top", "background"},
		{"none", "none", "background"},
		{"full-write-blocking", "full", "write-blocking"},
		{"top-write-blocking", "top", "write-blocking"},
	} {
		sync := tc.sync
		t.Run(tc.name, func(t *testing.T) {
			compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
				d, c, uri := mirrorChain(t, k, dir, sync == "top", nil)
				ref := filepath.Join(dir, "ref", "l2.qcow2")
				o.start(c, "blockdev-mirror", map[string]any{"job-id": "m0", "device": "l2", "target": "tgt",
					"sync": sync, "speed": 65536, "copy-mode": tc.mode})
				qemuIOWrites(t, uri, ref, mirrorWrites)
				o.record(c, "block-job-set-speed", map[string]any{"device": "m0", "speed": 0})
				wait := bgWrites(t, uri, ref, []string{"write -P 0xc1 0 1M", "write -P 0xc2 4M 2M", "write -z 7M 64k"})
				c.waitJob("m0", "ready")
				wait()
				qemuIOWrites(t, uri, ref, mirrorLateWrites)
				o.recordJobs(c)
				o.record(c, "job-complete", map[string]any{"id": "m0"})
				c.waitJob("m0", "null")
				o.events = c.jobEvents("len", "offset")
				o.record(c, "query-block-exports", nil)
				o.graph = graphView(t, c, dir)
				tgt := filepath.Join(dir, "tgt.qcow2")
				if sync != "none" {
					identical(t, ref, uri, "-f", "qcow2", "-F", "raw")
				}
				o.finish(t, d, dir, 3)
				o.headerOf(t, dir, "tgt.qcow2")
				if sync != "none" {
					identical(t, ref, tgt)
				} else {
					// Only what the guest wrote while the job ran, copied
					// from the source: the same bytes and allocation as
					// QSD's target.
					o.headers = append(o.headers, mapOf(t, tgt), imageContentSum(t, dir, tgt))
				}
			})
		})
	}
}

// TestBlockdevMirrorCopiesLikeQSD mirrors without guest writes, so that
// the progress is exact: sync full into a plain target (every granule
// copied, zeroes written as zeroes) and into one opened with
// discard=unmap (zeroed first, then only what the chain allocates), sync
// top, and a granularity and buffer of their own. The events with their
// len and offset, and the target's allocation, match QSD's.
func TestBlockdevMirrorCopiesLikeQSD(t *testing.T) {
	for _, tc := range []struct {
		name   string
		backed bool
		opts   map[string]any
		args   map[string]any
	}{
		{"full", false, nil, map[string]any{"sync": "full"}},
		{"full-unmap", false, map[string]any{"discard": "unmap"}, map[string]any{"sync": "full"}},
		{"top", true, nil, map[string]any{"sync": "top"}},
		{"granularity", false, nil, map[string]any{"sync": "full", "granularity": 4096, "buf-size": 65536}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
				d, c, uri := mirrorChain(t, k, dir, tc.backed, tc.opts)
				args := map[string]any{"job-id": "m0", "device": "l2", "target": "tgt"}
				for k, v := range tc.args {
					args[k] = v
				}
				o.start(c, "blockdev-mirror", args)
				c.waitJob("m0", "ready")
				o.record(c, "query-block-jobs", nil)
				o.record(c, "block-job-cancel", map[string]any{"device": "m0"})
				c.waitJob("m0", "null")
				o.events = c.jobEvents()
				o.graph = graphView(t, c, dir)
				identical(t, filepath.Join(dir, "ref", "l2.qcow2"), uri, "-f", "qcow2", "-F", "raw")
				o.finish(t, d, dir, 3)
				o.headerOf(t, dir, "tgt.qcow2")
				o.headers = append(o.headers, mapOf(t, filepath.Join(dir, "tgt.qcow2")))
				identical(t, filepath.Join(dir, "ref", "l2.qcow2"), filepath.Join(dir, "tgt.qcow2"))
			})
		})
	}
}

// TestBlockdevMirrorControlLikeQSD: a cancel before READY (CANCELLED,
// the graph as before), pause and resume with set-speed, and a cancel
// after READY (COMPLETED, no pivot, the target a consistent copy).
func TestBlockdevMirrorControlLikeQSD(t *testing.T) {
	compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
		d, c, uri := mirrorChain(t, k, dir, false, nil)
		ref := filepath.Join(dir, "ref", "l2.qcow2")
		o.start(c, "blockdev-mirror", map[string]any{"job-id": "m0", "device": "l2", "target": "tgt",
			"sync": "full", "speed": 4096, "auto-dismiss": false})
		o.record(c, "block-job-cancel", map[string]any{"device": "m0"})
		c.waitJob("m0", "concluded")
		o.recordJobs(c)
		o.record(c, "job-dismiss", map[string]any{"id": "m0"})
		c.waitJob("m0", "null")
		o.graph = append(o.graph, graphView(t, c, dir)...)

		o.start(c, "blockdev-mirror", map[string]any{"job-id": "m1", "device": "l2", "target": "tgt",
			"sync": "full", "speed": 4096, "filter-node-name": "mt"})
		o.record(c, "block-job-pause", map[string]any{"device": "m1"})
		c.waitJob("m1", "paused")
		o.recordJobs(c)
		o.record(c, "block-job-cancel", map[string]any{"device": "m1"})
		o.record(c, "block-job-set-speed", map[string]any{"device": "m1", "speed": 8192})
		qemuIOWrites(t, uri, ref, mirrorWrites)
		o.record(c, "block-job-resume", map[string]any{"device": "m1"})
		c.waitJob("m1", "running")
		o.record(c, "block-job-set-speed", map[string]any{"device": "m1", "speed": 0})
		c.waitJob("m1", "ready")
		qemuIOWrites(t, uri, ref, mirrorLateWrites)
		o.record(c, "job-pause", map[string]any{"id": "m1"})
		c.waitJob("m1", "standby")
		o.recordJobs(c)
		o.record(c, "job-resume", map[string]any{"id": "m1"})
		c.waitJob("m1", "ready")
		o.record(c, "block-job-cancel", map[string]any{"device": "m1"})
		c.waitJob("m1", "null")
		o.events = c.jobEvents("len", "offset")
		o.graph = append(o.graph, graphView(t, c, dir)...)
		identical(t, ref, uri, "-f", "qcow2", "-F", "raw")
		o.finish(t, d, dir, 3)
		o.headerOf(t, dir, "tgt.qcow2")
		identical(t, ref, filepath.Join(dir, "tgt.qcow2"))
	})
}

// TestBlockdevMirrorReplacesLikeQSD mirrors a copy-on-read filter over
// l2 with replaces=l2: at job-complete the target takes l2's place below
// the filter, which stays exported.
func TestBlockdevMirrorReplacesLikeQSD(t *testing.T) {
	compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
		sh(t, dir, layerScript(3)+"qemu-img create -q -f qcow2 tgt.qcow2 8M\n")
		d := startDaemon(t, k, dir)
		c := d.connect()
		addLayers(t, c, dir, 3)
		c.ok("blockdev-add", map[string]any{"driver": "copy-on-read", "node-name": "cor", "file": "l2"})
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "tgt", "backing": nil,
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "tgt.qcow2")}})
		uri := startNBD(t, c, dir, "cor")
		ref := filepath.Join(dir, "ref", "l2.qcow2")
		o.record(c, "blockdev-mirror", map[string]any{"job-id": "m0", "device": "l2", "target": "tgt", "sync": "full"})
		o.start(c, "blockdev-mirror", map[string]any{"job-id": "m0", "device": "cor", "target": "tgt",
			"sync": "full", "replaces": "l2"})
		qemuIOWrites(t, uri, ref, mirrorWrites)
		c.waitJob("m0", "ready")
		qemuIOWrites(t, uri, ref, mirrorLateWrites)
		o.record(c, "blockdev-del", map[string]any{"node-name": "l2"})
		o.record(c, "job-complete", map[string]any{"id": "m0"})
		c.waitJob("m0", "null")
		o.events = c.jobEvents("len", "offset")
		o.record(c, "query-block-exports", nil)
		o.graph = graphView(t, c, dir)
		identical(t, ref, uri, "-f", "qcow2", "-F", "raw")
		o.finish(t, d, dir, 3)
		o.headerOf(t, dir, "tgt.qcow2")
		identical(t, ref, filepath.Join(dir, "tgt.qcow2"))
	})
}

// TestDriveMirrorLikeQSD runs drive-mirror as blockdev-mirror's scenario
// does, the target made by the daemon: a new image of the source's format
// (sync full), one backed by the source's backing file (top) or by the
// source itself (none), raw by format, and an existing image whose
// header's backing chain is opened when the job ends (mode existing, here
// cancelled after READY, so without pivot). The created images' headers,
// the graph and the events match QSD's.
func TestDriveMirrorLikeQSD(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     map[string]any
		img      string
		complete bool
	}{
		{"full", map[string]any{"sync": "full"}, "tgt.qcow2", true},
		{"top", map[string]any{"sync": "top", "node-name": "tgt"}, "tgt.qcow2", true},
		{"none", map[string]any{"sync": "none"}, "tgt.qcow2", true},
		{"raw", map[string]any{"sync": "full", "format": "raw", "unmap": false}, "tgt.raw", true},
		{"existing", map[string]any{"sync": "top", "mode": "existing", "node-name": "tgt"}, "tgt.qcow2", false},
		{"existing-absolute", map[string]any{"sync": "top", "mode": "existing", "format": "qcow2"}, "tgt.qcow2", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
				d, c := startLayers(t, k, dir, 3)
				switch tc.name {
				case "existing":
					sh(t, dir, "qemu-img create -q -f qcow2 -b l1.qcow2 -F qcow2 tgt.qcow2 8M\n")
				case "existing-absolute":
					sh(t, dir, "qemu-img create -q -f qcow2 -b \"$PWD/l1.qcow2\" -F qcow2 tgt.qcow2 8M\n")
				}
				uri := startNBD(t, c, dir, "l2")
				ref := filepath.Join(dir, "ref", "l2.qcow2")
				img := filepath.Join(dir, tc.img)
				args := map[string]any{"job-id": "m0", "device": "l2", "target": img, "speed": 65536}
				for k, v := range tc.args {
					args[k] = v
				}
				o.start(c, "drive-mirror", args)
				qemuIOWrites(t, uri, ref, mirrorWrites)
				o.graph = append(o.graph, graphView(t, c, dir)...)
				o.record(c, "block-job-set-speed", map[string]any{"device": "m0", "speed": 0})
				c.waitJob("m0", "ready")
				qemuIOWrites(t, uri, ref, mirrorLateWrites)
				if tc.complete {
					o.record(c, "job-complete", map[string]any{"id": "m0"})
				} else {
					o.record(c, "block-job-cancel", map[string]any{"device": "m0"})
				}
				c.waitJob("m0", "null")
				o.events = c.jobEvents("len", "offset")
				o.recordExports(c, dir)
				o.graph = append(o.graph, "--")
				o.graph = append(o.graph, graphView(t, c, dir)...)
				identical(t, ref, uri, "-f", "qcow2", "-F", "raw")
				o.finish(t, d, dir, 3)
				if tc.img == "tgt.raw" {
					identical(t, ref, img, "-f", "qcow2", "-F", "raw")
					return
				}
				o.headerOf(t, dir, tc.img)
				identical(t, ref, img)
			})
		})
	}
}

// TestDriveMirrorArgsLikeQSD tries drive-mirror's own checks: the
// replaces without node-name, unknown formats, a missing existing image,
// a node-name taken, and which of them leave an image file behind.
func TestDriveMirrorArgsLikeQSD(t *testing.T) {
	compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
		d, c := startLayers(t, k, dir, 3)
		tgt := func(n string) string { return filepath.Join(dir, n) }
		for _, a := range []map[string]any{
			{"job-id": "m0", "device": "nope", "target": tgt("a.qcow2"), "sync": "full"},
			{"job-id": "m0", "device": "l1", "target": tgt("a.qcow2"), "sync": "full"},
			{"job-id": "m0", "device": "l2", "target": tgt("b.qcow2"), "sync": "full", "replaces": "l2"},
			{"job-id": "m0", "device": "l2", "target": tgt("c.img"), "sync": "full", "format": "nope"},
			{"job-id": "m0", "device": "l2", "target": tgt("d.qcow2"), "sync": "full", "mode": "existing"},
			{"job-id": "m0", "device": "l2", "target": tgt("e.qcow2"), "sync": "full", "node-name": "l0"},
			{"job-id": "m0", "device": "l2", "target": tgt("f.qcow2"), "sync": "full", "granularity": 1000},
			{"job-id": "m0", "device": "l2", "target": tgt("g.qcow2"), "sync": "incremental"},
			{"job-id": "m0", "device": "l2", "target": tgt("h.qcow2"), "sync": "full", "replaces": "l1",
				"node-name": "n1"},
			{"device": "l2", "target": tgt("i.qcow2"), "sync": "full"},
		} {
			o.record(c, "drive-mirror", a)
		}
		o.graph = graphView(t, c, dir)
		o.finish(t, d, dir, 3)
		for _, n := range []string{"a.qcow2", "b.qcow2", "c.img", "d.qcow2", "e.qcow2", "f.qcow2", "g.qcow2", "h.qcow2", "i.qcow2"} {
			_, err := os.Stat(tgt(n))
			o.headers = append(o.headers, fmt.Sprintf("%s exists: %v", n, err == nil))
		}
	})
}

// TestMirrorErrorPoliciesLikeQSD fails one read of the source or one
// write to the target (blkdebug, EIO or ENOSPC, once) during a
// blockdev-mirror with each on-source-error / on-target-error policy:
// report ends the job with the error, ignore goes on (the range is copied
// again), stop and enospc-on-ENOSPC pause the job with io-status failed
// or nospace until job-resume. BLOCK_JOB_ERROR, the job's states and the
// target's content match QSD's.
func TestMirrorErrorPoliciesLikeQSD(t *testing.T) {
	for _, tc := range []struct {
		name, side, policy string
		errno              int
	}{
		{"target-stop-eio", "target", "stop", 5},
		{"target-report-eio", "target", "report", 5},
		{"target-ignore-eio", "target", "ignore", 5},
		{"target-enospc-enospc", "target", "enospc", 28},
		{"target-enospc-eio", "target", "enospc", 5},
		{"source-stop-eio", "source", "stop", 5},
		{"source-report-eio", "source", "report", 5},
		{"source-ignore-eio", "source", "ignore", 5},
		{"source-auto-eio", "source", "auto", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
				backupSource(t, dir, "tgt.qcow2")
				d := startDaemon(t, k, dir)
				c := d.connect()
				event := "read_aio"
				if tc.side == "target" {
					event = "write_aio"
				}
				src := map[string]any{"driver": "file", "filename": filepath.Join(dir, "src.qcow2")}
				tgt := map[string]any{"driver": "file", "filename": filepath.Join(dir, "tgt.qcow2")}
				bd := map[string]any{"driver": "blkdebug",
					"inject-error": []any{map[string]any{"event": event, "errno": tc.errno, "once": true}}}
				if tc.side == "source" {
					bd["image"], src = src, bd
				} else {
					bd["image"], tgt = tgt, bd
				}
				c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "src", "file": src})
				c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "tgt", "file": tgt})
				startNBD(t, c, dir, "src")
				ref := filepath.Join(dir, "ref.raw")
				run(t, "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", filepath.Join(dir, "src.qcow2"), ref)
				args := map[string]any{"job-id": "m0", "device": "src", "target": "tgt", "sync": "full"}
				args["on-"+tc.side+"-error"] = tc.policy
				o.start(c, "blockdev-mirror", args)
				stops := tc.policy == "stop" || (tc.policy == "enospc" && tc.errno == 28)
				fails := !stops && tc.policy != "ignore"
				switch {
				case stops:
					c.waitEvent(func(ev map[string]any) bool { return ev["event"] == "BLOCK_JOB_ERROR" })
					c.waitJob("m0", "paused")
					o.recordJobs(c)
					o.record(c, "job-resume", map[string]any{"id": "m0"})
					c.waitJob("m0", "ready")
					o.record(c, "block-job-cancel", map[string]any{"device": "m0"})
				case !fails:
					c.waitJob("m0", "ready")
					o.record(c, "block-job-cancel", map[string]any{"device": "m0"})
				}
				c.waitJob("m0", "null")
				o.events = c.jobEvents("len", "offset")
				o.graph = graphView(t, c, dir)
				d.stop()
				o.headerOf(t, dir, "src.qcow2")
				// A failed cluster allocation may leak the cluster: as
				// in QSD's image, or not.
				o.headers = append(o.headers, fmt.Sprintf("tgt.qcow2: check %d",
					checkClean(t, filepath.Join(dir, "tgt.qcow2"), true)))
				if !fails {
					sameAs(t, ref, filepath.Join(dir, "tgt.qcow2"))
				}
			})
		})
	}
}

// TestMirrorWriteBlockingLikeQSD: once a write-blocking mirror is READY,
// guest writes reach the target before they complete, even with the job
// paused (STANDBY): the whole granules they cover, not the partial ones
// at their ends, which stay for the background copy. A forced cancel
// then leaves exactly that in the target; the progress counts the
// granules copied actively. All as in QSD.
func TestMirrorWriteBlockingLikeQSD(t *testing.T) {
	for _, mode := range []string{"write-blocking", "background"} {
		t.Run(mode, func(t *testing.T) {
			compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
				d, c, uri := mirrorChain(t, k, dir, false, nil)
				o.start(c, "blockdev-mirror", map[string]any{"job-id": "m0", "device": "l2", "target": "tgt",
					"sync": "full", "copy-mode": mode})
				c.waitJob("m0", "ready")
				o.record(c, "job-pause", map[string]any{"id": "m0"})
				c.waitJob("m0", "standby")
				qemuIO(t, uri, []string{"write -P 0xd1 1M 128k", "write -P 0xd2 100000 5000",
					"write -P 0xd3 3080192 200000", "write -z 4M 64k", "write -z 6000000 70000"})
				o.record(c, "query-block-jobs", nil)
				o.record(c, "block-job-cancel", map[string]any{"device": "m0", "force": true})
				c.waitJob("m0", "null")
				o.events = c.jobEvents()
				o.graph = graphView(t, c, dir)
				o.finish(t, d, dir, 3)
				o.headerOf(t, dir, "tgt.qcow2")
				tgt := filepath.Join(dir, "tgt.qcow2")
				o.headers = append(o.headers, mapOf(t, tgt), imageContentSum(t, dir, tgt))
			})
		})
	}
}
