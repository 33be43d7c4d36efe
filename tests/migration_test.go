package tests

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Storage migration and blockcopy as a manager drives them, with qbmond
// and QSD on either end. Migration: the destination exports an empty
// image over NBD, the source opens an nbd node on that export and
// mirrors its disk into it while a guest (qemu-io through the source's
// own export) writes, cancels at switch-over once READY, and the two
// images must then be equal. Blockcopy: a mirror into a new local image
// and job-complete, after which the export serves the new image.

// migrateSize is the migrated disk's size (32 MiB).
const migrateSize = 32 << 20

// migrateInitial is what the source disk holds before the migration:
// data at both ends and in the middle, a zeroed cluster.
var migrateInitial = []string{"write -P 0x11 0 4M", "write -P 0x12 10M 2M", "write -z 11M 64k",
	"write -P 0x13 31M 1M"}

// migrateEarly land while the mirror is throttled (before it copied
// them), migrateRacing while it runs at full speed, migrateLate once
// READY, before the switch-over.
var (
	migrateEarly  = []string{"write -P 0xa1 64k 64k", "write -P 0xa2 20M 1M", "write -z 1M 64k", "write -P 0xa3 33553920 512"}
	migrateRacing = []string{"write -P 0xc1 2M 2M", "write -P 0xc2 16M 4M", "write -z 30M 64k", "write -P 0xc3 7M 12345"}
	migrateLate   = []string{"write -P 0xb1 100000 5000", "write -P 0xb2 24M 128k", "write -z -u 12M 256k",
		"write -P 0xb3 33552384 1024"}
)

// migrateProbes are reads that hold on the destination only if the
// guest's writes from every phase reached it.
var migrateProbes = []string{"read -P 0xa2 20M 1M", "read -P 0xc2 16M 4M", "read -P 0xb2 24M 128k",
	"read -P 0xb3 33552384 1024", "read -P 0 12M 256k", "read -P 0x13 31M 1000k"}

// nbdServer starts c's NBD server on dir/nbd.sock and returns the socket.
func nbdServer(t *testing.T, c *client, dir string) string {
	t.Helper()
	sock := filepath.Join(dir, "nbd.sock")
	c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	return sock
}

// addImage opens the qcow2 image path as node name.
func addImage(c *client, name, path string) {
	c.t.Helper()
	c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": name,
		"file": map[string]any{"driver": "file", "filename": path}})
}

// closeExport removes export id and waits until it is gone.
func closeExport(t *testing.T, c *client, id string) {
	t.Helper()
	c.ok("block-export-del", map[string]any{"id": id})
	waitExportIDGone(t, c, id)
}

// storageMigration migrates a 32 MiB qcow2 disk from a daemon of kind
// src to one of kind dst and checks the outcome: both images clean, the
// destination equal to the source and to a reference that received the
// guest's writes, and holding the writes of every phase. It returns the
// source's side of the transcript: the job's events and the graph while
// READY and after the switch-over.
func storageMigration(t *testing.T, src, dst kind) string {
	t.Helper()
	sdir, ddir := shortTempDir(t), shortTempDir(t)
	srcImg, dstImg := filepath.Join(sdir, "src.qcow2"), filepath.Join(ddir, "dst.qcow2")
	ref := filepath.Join(sdir, "ref.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", srcImg, fmt.Sprint(migrateSize))
	args := []string{"-f", "qcow2"}
	for _, c := range migrateInitial {
		args = append(args, "-c", c)
	}
	run(t, "qemu-io", append(args, srcImg)...)
	run(t, "cp", srcImg, ref)
	// The destination: an empty image of the source's size, exported
	// writable.
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", dstImg, fmt.Sprint(migrateSize))
	dd := startDaemon(t, dst, ddir)
	dc := dd.connect()
	addImage(dc, "dst", dstImg)
	dsock := nbdServer(t, dc, ddir)
	dc.ok("block-export-add", map[string]any{"type": "nbd", "id": "dst", "node-name": "dst", "writable": true})

	// The source: its disk exported to the guest, an nbd node on the
	// destination's export.
	sd := startDaemon(t, src, sdir)
	sc := sd.connect()
	addImage(sc, "src", srcImg)
	ssock := nbdServer(t, sc, sdir)
	sc.ok("block-export-add", map[string]any{"type": "nbd", "id": "src", "node-name": "src", "writable": true})
	uri := "nbd+unix:///src?socket=" + ssock
	sc.ok("blockdev-add", map[string]any{"driver": "nbd", "node-name": "tgt", "export": "dst",
		"server": map[string]any{"type": "unix", "path": dsock}})

	norm := strings.NewReplacer(ddir, "$DST")
	var tr strings.Builder
	if r := sc.cmd("blockdev-mirror", map[string]any{"job-id": "m0", "device": "src", "target": "tgt",
		"sync": "full", "speed": 1 << 20}); r["error"] != nil {
		t.Fatalf("%s: blockdev-mirror: %v\n%s", src, r["error"], sd.stderr)
	}
	qemuIOWrites(t, uri, ref, migrateEarly)
	stillCopying(t, sc, "m0")
	sc.ok("block-job-set-speed", map[string]any{"device": "m0", "speed": 0})
	wait := bgWrites(t, uri, ref, migrateRacing)
	sc.waitJob("m0", "ready")
	wait()
	qemuIOWrites(t, uri, ref, migrateLate)
	fmt.Fprintf(&tr, "graph while ready:\n%s\n", norm.Replace(strings.Join(graphView(t, sc, sdir), "\n")))
	// The guest is stopped: switch over.
	sc.ok("block-job-cancel", map[string]any{"device": "m0"})
	sc.waitJob("m0", "null")
	fmt.Fprintf(&tr, "events:\n%s\n", strings.Join(sc.jobEvents("len", "offset"), "\n"))
	for _, ev := range sc.events {
		if d, _ := ev["data"].(map[string]any); ev["event"] == "BLOCK_JOB_COMPLETED" {
			fmt.Fprintf(&tr, "completed with offset = len: %v\n", fmt.Sprint(d["offset"]) == fmt.Sprint(d["len"]))
		}
	}
	fmt.Fprintf(&tr, "graph after:\n%s\n", norm.Replace(strings.Join(graphView(t, sc, sdir), "\n")))
	sc.ok("blockdev-del", map[string]any{"node-name": "tgt"})
	closeExport(t, sc, "src")
	sc.ok("blockdev-del", map[string]any{"node-name": "src"})
	sd.stop()
	closeExport(t, dc, "dst")
	dc.ok("blockdev-del", map[string]any{"node-name": "dst"})
	dd.stop()

	checkClean(t, srcImg, false)
	checkClean(t, dstImg, false)
	identical(t, ref, srcImg)
	identical(t, srcImg, dstImg)
	probe(t, dstImg, migrateProbes)
	return tr.String()
}

// probe runs the pattern reads cmds on the qcow2 image img and fails
// the test unless each finds its pattern.
func probe(t *testing.T, img string, cmds []string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := run(t, "qemu-io", append(args, img)...)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed:") {
		t.Fatalf("qemu-io %s: %s", img, out)
	}
}

// stillCopying fails the test unless job id is running, not yet READY,
// with data left to copy: the guest's writes so far raced the copy.
func stillCopying(t *testing.T, c *client, id string) {
	t.Helper()
	for _, x := range c.ok("query-block-jobs", nil).([]any) {
		j := x.(map[string]any)
		if j["device"] != id {
			continue
		}
		if j["status"] != "running" || j["ready"] != false || fmt.Sprint(j["offset"]) == fmt.Sprint(j["len"]) {
			t.Fatalf("job %s is no longer copying: %v", id, j)
		}
		return
	}
	t.Fatalf("no job %s", id)
}

// jobEventsOf is jobEvents (len and offset masked) of job id only.
func jobEventsOf(c *client, id string) []string {
	var out []string
	for _, e := range c.jobEvents("len", "offset") {
		if strings.HasPrefix(e, id+" ") || strings.Contains(e, " device="+id+" ") {
			out = append(out, e)
		}
	}
	return out
}

// TestStorageMigration migrates a disk with QSD on both ends (the
// reference), then qbmond to QSD, QSD to qbmond and qbmond to qbmond:
// each destination ends equal to its source, and the source's job events
// and graph are QSD's.
func TestStorageMigration(t *testing.T) {
	want := storageMigration(t, kindQSD, kindQSD)
	t.Logf("QSD to QSD:\n%s", want)
	for _, p := range []struct{ src, dst kind }{
		{kindQbmond, kindQSD}, {kindQSD, kindQbmond}, {kindQbmond, kindQbmond},
	} {
		t.Run(fmt.Sprintf("%s-to-%s", p.src, p.dst), func(t *testing.T) {
			got := storageMigration(t, p.src, p.dst)
			sameText(t, "source's transcript", got, want)
		})
	}
}

// TestMigrationBlockcopyLikeQSD is a blockcopy: the exported disk is
// mirrored into a new qcow2 image made by blockdev-create while the
// guest writes, then job-complete pivots. The export serves the new
// image: writes after the pivot land there and the old image keeps what
// it held at the pivot. Replies, events, graph and exports as QSD's.
func TestMigrationBlockcopyLikeQSD(t *testing.T) {
	compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
		srcImg, newImg := filepath.Join(dir, "src.qcow2"), filepath.Join(dir, "new.qcow2")
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", srcImg, fmt.Sprint(migrateSize))
		args := []string{"-f", "qcow2"}
		for _, c := range migrateInitial {
			args = append(args, "-c", c)
		}
		run(t, "qemu-io", append(args, srcImg)...)
		ref := filepath.Join(dir, "ref.qcow2")
		run(t, "cp", srcImg, ref)
		d := startDaemon(t, k, dir)
		c := d.connect()
		addImage(c, "src", srcImg)
		uri := startNBD(t, c, dir, "src")
		if e := runCreate(t, c, "c0", map[string]any{"driver": "file", "filename": newImg, "size": 0}); e != "" {
			t.Fatalf("blockdev-create file: %s", e)
		}
		c.ok("blockdev-add", map[string]any{"driver": "file", "node-name": "new-file", "filename": newImg})
		if e := runCreate(t, c, "c1", map[string]any{"driver": "qcow2", "file": "new-file", "size": migrateSize}); e != "" {
			t.Fatalf("blockdev-create qcow2: %s", e)
		}
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "new", "file": "new-file"})
		o.start(c, "blockdev-mirror", map[string]any{"job-id": "m0", "device": "src", "target": "new",
			"sync": "full", "speed": 1 << 20})
		qemuIOWrites(t, uri, ref, migrateEarly)
		stillCopying(t, c, "m0")
		o.record(c, "block-job-set-speed", map[string]any{"device": "m0", "speed": 0})
		wait := bgWrites(t, uri, ref, migrateRacing)
		c.waitJob("m0", "ready")
		wait()
		qemuIOWrites(t, uri, ref, migrateLate)
		o.recordJobs(c)
		o.record(c, "job-complete", map[string]any{"id": "m0"})
		c.waitJob("m0", "null")
		o.events = jobEventsOf(c, "m0")
		o.recordExports(c, dir)
		o.graph = graphView(t, c, dir)
		// The old image as it was at the pivot.
		old := filepath.Join(dir, "old.qcow2")
		run(t, "cp", ref, old)
		after := []string{"write -P 0xe1 0 1M", "write -P 0xe2 31M 1M", "write -z 10M 64k"}
		qemuIOWrites(t, uri, ref, after)
		identical(t, ref, uri, "-f", "qcow2", "-F", "raw")
		closeExport(t, c, "e0")
		o.record(c, "blockdev-del", map[string]any{"node-name": "src"})
		o.record(c, "blockdev-del", map[string]any{"node-name": "new"})
		o.record(c, "blockdev-del", map[string]any{"node-name": "new-file"})
		d.stop()
		o.headerOf(t, dir, "src.qcow2")
		o.headerOf(t, dir, "new.qcow2")
		identical(t, ref, newImg)
		identical(t, old, srcImg)
		// The writes after the pivot changed what the guest reads.
		if err := exec.Command("qemu-img", "compare", "-q", old, newImg).Run(); err == nil {
			t.Fatalf("the writes after the pivot did not change the disk")
		}
	})
}
