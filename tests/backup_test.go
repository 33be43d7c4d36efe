package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Backups, snapshots and transactions against qemu-storage-daemon: the
// same images, commands and NBD writes on both daemons, the outcomes
// (replies, job events, bitmaps, graph, image headers) compared, and
// every backup judged by qemu-img compare against a point-in-time copy of
// what the guest saw when the backup began. Guest writes land while the
// jobs run (throttled to one chunk, then let go), so copy-before-write is
// what keeps the backups right.

// pointInTime copies what the export at uri reads now into dir/name (raw):
// the reference a backup taken at this moment must equal.
func pointInTime(t *testing.T, uri, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, p)
	return p
}

// sameAs fails the test unless the qcow2 image img (with its backing
// chain) reads as the raw copy ref.
func sameAs(t *testing.T, ref, img string) {
	t.Helper()
	identical(t, ref, img, "-f", "raw", "-F", "qcow2")
}

// addQcow2 adds a qcow2 node over dir/img (created with qemu-img
// beforehand), with the backing chain its header names: a source, or a
// backup target. (An incremental target opened with "backing": null
// works too: see tests/qcow2zero_qsd_test.go.)
func addQcow2(t *testing.T, c *client, dir, name, img string) {
	t.Helper()
	c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": name,
		"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, img)}})
}

// bitmaps adds the state of node's bitmaps to the outcome.
func (o *jobOutcome) bitmaps(t *testing.T, c *client, node string, names ...string) {
	t.Helper()
	o.replies = append(o.replies, strings.Split(strings.TrimSpace(bitmapState(t, c, node, names)), "\n")...)
}

// showOnFailure logs what the scenario had recorded on daemon k when
// the test failed in it.
func (o *jobOutcome) showOnFailure(t *testing.T, k kind) {
	if t.Failed() {
		t.Logf("%s, the outcome so far:\n%s", k, o)
	}
}

// scrub writes the scratch directory as $DIR in the replies (error
// messages name image files).
func (o *jobOutcome) scrub(dir string) {
	for i, r := range o.replies {
		o.replies[i] = strings.ReplaceAll(r, dir, "$DIR")
	}
}

// headerOf notes img's backing file and format, as qemu-img reads them,
// after qemu-img check has found it clean.
func (o *jobOutcome) headerOf(t *testing.T, dir, img string) {
	t.Helper()
	p := filepath.Join(dir, img)
	checkClean(t, p, false)
	o.headers = append(o.headers, img+": "+strings.ReplaceAll(backingOf(t, p), dir, "$DIR"))
}

// backupSource makes src.qcow2 (8 MiB, data in three places, a zeroed
// cluster) and empty qcow2 images for the given targets.
func backupSource(t *testing.T, dir string, targets ...string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("qemu-img create -q -f qcow2 src.qcow2 8M\n")
	b.WriteString("qemu-io -f qcow2 -c 'write -P 0x11 0 3M' -c 'write -P 0x12 5M 1M' -c 'write -z 1M 64k' -c 'write -P 0x13 8322048 4096' src.qcow2 >/dev/null\n")
	for _, tg := range targets {
		fmt.Fprintf(&b, "qemu-img create -q -f qcow2 %s 8M\n", tg)
	}
	sh(t, dir, b.String())
}

// throttledRun lets a job started with speed 1 copy its first chunk, runs
// the guest's writes meanwhile (they meet the copy-before-write filter on
// clusters not yet copied), then lifts the limit and waits for the end.
func throttledRun(t *testing.T, o *jobOutcome, c *client, uri, job string, writes []string) {
	t.Helper()
	qemuIO(t, uri, writes)
	o.record(c, "block-job-set-speed", map[string]any{"device": job, "speed": 0})
	// concluded first: a transaction that failed may have sent a
	// created-then-null pair for a job of the same name.
	c.waitJob(job, "concluded")
	c.waitJob(job, "null")
}

// waitGone waits until every job named has gone (status null), in any
// order.
func waitGone(c *client, ids ...string) {
	c.t.Helper()
	gone := func() bool {
		n := 0
		for _, ev := range c.events {
			d, _ := ev["data"].(map[string]any)
			for _, id := range ids {
				if ev["event"] == "JOB_STATUS_CHANGE" && d["id"] == id && d["status"] == "null" {
					n++
				}
			}
		}
		return n == len(ids)
	}
	for !gone() {
		c.waitEvent(func(map[string]any) bool { return true })
	}
}

// TestIncrementalBackupCycleLikeQSD is the incremental backup cycle a
// manager runs: a full backup with a new bitmap in one transaction, guest
// writes, an incremental backup into an overlay of the full one, more
// writes, a second incremental (sync=bitmap this time) into an overlay of
// the first. Writes also land while each backup runs. Each restored chain
// (full, full+inc1, full+inc1+inc2) equals the guest's disk at the moment
// its backup began; the bitmap ends holding only the writes made since.
func TestIncrementalBackupCycleLikeQSD(t *testing.T) {
	compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
		backupSource(t, dir, "full.qcow2")
		d := startDaemon(t, k, dir)
		c := d.connect()
		addQcow2(t, c, dir, "src", "src.qcow2")
		addQcow2(t, c, dir, "tfull", "full.qcow2")
		uri := startNBD(t, c, dir, "src")

		ref0 := pointInTime(t, uri, dir, "ref0.raw")
		o.start(c, "transaction", map[string]any{"actions": []any{
			map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": "src", "name": "b0", "granularity": 65536}},
			map[string]any{"type": "blockdev-backup", "data": map[string]any{"job-id": "full", "device": "src", "target": "tfull", "sync": "full", "speed": 1}},
		}})
		throttledRun(t, o, c, uri, "full", []string{"write -P 0x21 64k 64k", "write -P 0x22 2M 128k", "write -P 0x23 7M 4k"})
		o.bitmaps(t, c, "src", "b0")
		c.ok("blockdev-del", map[string]any{"node-name": "tfull"})
		sameAs(t, ref0, filepath.Join(dir, "full.qcow2"))

		qemuIO(t, uri, []string{"write -P 0x24 6M 64k", "write -z 2560k 64k", "write -P 0x25 100000 5000"})
		sh(t, dir, "qemu-img create -q -f qcow2 -b full.qcow2 -F qcow2 inc1.qcow2")
		addQcow2(t, c, dir, "tinc1", "inc1.qcow2")
		ref1 := pointInTime(t, uri, dir, "ref1.raw")
		o.start(c, "blockdev-backup", map[string]any{"job-id": "inc1", "device": "src", "target": "tinc1",
			"sync": "incremental", "bitmap": "b0", "speed": 1})
		throttledRun(t, o, c, uri, "inc1", []string{"write -P 0x31 64k 4k", "write -P 0x32 7M 64k", "write -P 0x33 4M 64k"})
		o.bitmaps(t, c, "src", "b0")
		c.ok("blockdev-del", map[string]any{"node-name": "tinc1"})
		sameAs(t, ref1, filepath.Join(dir, "inc1.qcow2"))

		qemuIO(t, uri, []string{"write -P 0x41 3M 1M", "write -z 0 64k"})
		sh(t, dir, "qemu-img create -q -f qcow2 -b inc1.qcow2 -F qcow2 inc2.qcow2")
		addQcow2(t, c, dir, "tinc2", "inc2.qcow2")
		ref2 := pointInTime(t, uri, dir, "ref2.raw")
		o.start(c, "blockdev-backup", map[string]any{"job-id": "inc2", "device": "src", "target": "tinc2",
			"sync": "bitmap", "bitmap": "b0", "bitmap-mode": "on-success", "speed": 1})
		throttledRun(t, o, c, uri, "inc2", []string{"write -P 0x51 3M 64k", "write -P 0x52 5M 4k"})
		o.bitmaps(t, c, "src", "b0")
		c.ok("blockdev-del", map[string]any{"node-name": "tinc2"})
		sameAs(t, ref2, filepath.Join(dir, "inc2.qcow2"))

		o.events = c.jobEvents()
		o.graph = graphView(t, c, dir)
		d.stop()
		for _, img := range []string{"src.qcow2", "full.qcow2", "inc1.qcow2", "inc2.qcow2"} {
			o.headerOf(t, dir, img)
		}
		// The point-in-time copies stay right after the daemon is gone.
		sameAs(t, ref2, filepath.Join(dir, "inc2.qcow2"))
	})
}

// TestBackupFailedIncrementalLikeQSD fails an incremental backup on its
// target (blkdebug: EIO on the first data write) inside a grouped
// transaction with a second, throttled backup, which is cancelled with
// it. The bitmap keeps every bit (the successor merges back), so a retry
// copies everything the failed one should have, and the restored chain
// equals the guest's disk when the retry began.
func TestBackupFailedIncrementalLikeQSD(t *testing.T) {
	compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
		backupSource(t, dir, "full.qcow2", "other.qcow2")
		sh(t, dir, "qemu-img create -q -f qcow2 -b full.qcow2 -F qcow2 bad.qcow2\nqemu-img create -q -f qcow2 -b full.qcow2 -F qcow2 inc.qcow2\ncp src.qcow2 src2.qcow2")
		d := startDaemon(t, k, dir)
		c := d.connect()
		for _, n := range []string{"src", "src2"} {
			addQcow2(t, c, dir, n, n+".qcow2")
		}
		addQcow2(t, c, dir, "tfull", "full.qcow2")
		addQcow2(t, c, dir, "tother", "other.qcow2")
		uri := startNBD(t, c, dir, "src")

		ref0 := pointInTime(t, uri, dir, "ref0.raw")
		o.start(c, "transaction", map[string]any{"actions": []any{
			map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": "src", "name": "b0"}},
			map[string]any{"type": "blockdev-backup", "data": map[string]any{"job-id": "full", "device": "src", "target": "tfull", "sync": "full"}},
		}})
		c.waitJob("full", "null")
		c.ok("blockdev-del", map[string]any{"node-name": "tfull"})
		sameAs(t, ref0, filepath.Join(dir, "full.qcow2"))

		qemuIO(t, uri, []string{"write -P 0x24 6M 64k", "write -z 2560k 64k", "write -P 0x25 100000 5000", "write -P 0x26 7M 1M"})
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "tbad",
			"file": map[string]any{"driver": "blkdebug",
				"image":        map[string]any{"driver": "file", "filename": filepath.Join(dir, "bad.qcow2")},
				"inject-error": []any{map[string]any{"event": "write_aio", "errno": 5}}}})
		o.bitmaps(t, c, "src", "b0")
		o.start(c, "transaction", map[string]any{
			"properties": map[string]any{"completion-mode": "grouped"},
			"actions": []any{
				map[string]any{"type": "blockdev-backup", "data": map[string]any{"job-id": "bad", "device": "src", "target": "tbad",
					"sync": "incremental", "bitmap": "b0"}},
				map[string]any{"type": "blockdev-backup", "data": map[string]any{"job-id": "other", "device": "src2", "target": "tother",
					"sync": "full", "speed": 1}},
			}})
		waitGone(c, "bad", "other")
		o.bitmaps(t, c, "src", "b0")
		o.record(c, "query-block-jobs", nil)

		c.ok("blockdev-del", map[string]any{"node-name": "tbad"})
		addQcow2(t, c, dir, "tinc", "inc.qcow2")
		qemuIO(t, uri, []string{"write -P 0x27 1M 4k"})
		ref1 := pointInTime(t, uri, dir, "ref1.raw")
		o.start(c, "blockdev-backup", map[string]any{"job-id": "retry", "device": "src", "target": "tinc",
			"sync": "incremental", "bitmap": "b0", "speed": 1})
		throttledRun(t, o, c, uri, "retry", []string{"write -P 0x31 6M 4k", "write -P 0x32 0 64k"})
		o.bitmaps(t, c, "src", "b0")
		c.ok("blockdev-del", map[string]any{"node-name": "tinc"})
		sameAs(t, ref1, filepath.Join(dir, "inc.qcow2"))

		// How far the failing job got depends on how many copies QEMU's
		// block-copy had in flight when the first write failed.
		o.events = c.jobEvents("offset")
		o.graph = graphView(t, c, dir)
		d.stop()
		for _, img := range []string{"src.qcow2", "full.qcow2", "inc.qcow2"} {
			o.headerOf(t, dir, img)
		}
	})
}

// TestBackupFleecingLikeQSD is image fleecing: a sync=none backup into a
// qcow2 overlay of the running disk, the overlay exported read-only over
// NBD. While the guest goes on writing, the fleecing export reads what
// the disk held when the job started; the disk reads the new data.
func TestBackupFleecingLikeQSD(t *testing.T) {
	compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
		backupSource(t, dir)
		sh(t, dir, "qemu-img create -q -f qcow2 -b src.qcow2 -F qcow2 fleece.qcow2")
		d := startDaemon(t, k, dir)
		c := d.connect()
		addQcow2(t, c, dir, "src", "src.qcow2")
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "fl", "backing": "src",
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "fleece.qcow2")}})
		uri := startNBD(t, c, dir, "src")
		ref := pointInTime(t, uri, dir, "ref.raw")
		o.start(c, "blockdev-backup", map[string]any{"job-id": "fleece", "device": "src", "target": "fl", "sync": "none"})
		o.record(c, "block-export-add", map[string]any{"type": "nbd", "id": "e1", "node-name": "fl", "name": "fleece"})
		fleece := "nbd+unix:///fleece?socket=" + filepath.Join(dir, "nbd.sock")

		qemuIO(t, uri, []string{"write -P 0x21 0 64k", "write -P 0x22 2M 1M", "write -z 5M 64k", "write -P 0x23 7M 64k"})
		identical(t, ref, fleece, "-f", "raw", "-F", "raw")
		qemuIO(t, uri, []string{"write -P 0x24 64k 4k", "write -P 0x25 2M 64k", "write -P 0x26 4M 1M"})
		identical(t, ref, fleece, "-f", "raw", "-F", "raw")
		now := pointInTime(t, uri, dir, "now.raw")
		qemuIO(t, now, []string{"read -P 0x24 64k 4k", "read -P 0x26 4M 1M"})

		o.record(c, "block-export-del", map[string]any{"id": "e1"})
		c.waitEvent(func(ev map[string]any) bool { return ev["event"] == "BLOCK_EXPORT_DELETED" })
		o.record(c, "block-job-cancel", map[string]any{"device": "fleece"})
		c.waitJob("fleece", "null")
		o.events = c.jobEvents("len", "offset")
		o.graph = graphView(t, c, dir)
		identical(t, now, uri, "-f", "raw", "-F", "raw")
		d.stop()
		o.headerOf(t, dir, "src.qcow2")
		sameAs(t, now, filepath.Join(dir, "src.qcow2"))
	})
}

// TestSnapshotRunningExportLikeQSD takes external snapshots of a disk a
// guest writes through NBD: blockdev-snapshot-sync (a new qcow2 image),
// then blockdev-snapshot onto an overlay added by the manager. The
// export follows the active layer; each frozen layer keeps what the guest
// had written when it was frozen; bad requests change nothing.
func TestSnapshotRunningExportLikeQSD(t *testing.T) {
	compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
		backupSource(t, dir)
		sh(t, dir, "qemu-img create -q -f qcow2 -u -b ov1.qcow2 -F qcow2 ov2.qcow2 8M")
		d := startDaemon(t, k, dir)
		c := d.connect()
		addQcow2(t, c, dir, "src", "src.qcow2")
		uri := startNBD(t, c, dir, "src")
		qemuIO(t, uri, []string{"write -P 0x21 0 64k", "write -P 0x22 4M 64k"})
		ref0 := pointInTime(t, uri, dir, "ref0.raw")

		ov1 := filepath.Join(dir, "ov1.qcow2")
		for _, bad := range []map[string]any{
			{"node-name": "nope", "snapshot-file": ov1, "snapshot-node-name": "ov1"},
			{"node-name": "src", "snapshot-file": ov1, "snapshot-node-name": "src"},
			{"node-name": "src", "snapshot-file": ov1, "snapshot-node-name": "ov1", "format": "nosuch"},
			{"node-name": "src", "snapshot-file": ov1, "snapshot-node-name": "ov1", "mode": "existing"},
			{"device": "src", "node-name": "src", "snapshot-file": ov1},
		} {
			o.record(c, "blockdev-snapshot-sync", bad)
		}
		o.record(c, "blockdev-snapshot-sync", map[string]any{"node-name": "src", "snapshot-file": ov1, "snapshot-node-name": "ov1", "format": "qcow2"})
		o.record(c, "query-block-exports", nil)
		qemuIO(t, uri, []string{"write -P 0x31 64k 64k", "write -P 0x32 4M 4k", "write -z 5M 64k"})
		ref1 := pointInTime(t, uri, dir, "ref1.raw")

		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "ov2", "backing": nil,
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "ov2.qcow2")}})
		o.record(c, "blockdev-snapshot", map[string]any{"node": "ov1", "overlay": "src"})
		o.record(c, "blockdev-snapshot", map[string]any{"node": "src", "overlay": "ov2"})
		o.record(c, "blockdev-snapshot", map[string]any{"node": "ov1", "overlay": "ov2"})
		o.record(c, "blockdev-snapshot", map[string]any{"node": "ov2", "overlay": "ov1"})
		o.record(c, "query-block-exports", nil)
		qemuIO(t, uri, []string{"write -P 0x41 7M 64k", "write -P 0x42 0 4k"})
		ref2 := pointInTime(t, uri, dir, "ref2.raw")
		o.graph = graphView(t, c, dir)
		d.stop()
		for _, img := range []string{"src.qcow2", "ov1.qcow2", "ov2.qcow2"} {
			o.headerOf(t, dir, img)
		}
		sameAs(t, ref0, filepath.Join(dir, "src.qcow2"))
		sameAs(t, ref1, ov1)
		sameAs(t, ref2, filepath.Join(dir, "ov2.qcow2"))
	})
}

// TestBackupTransactionLikeQSD runs a transaction of a bitmap add, an
// external snapshot and a backup of the frozen layer: all or nothing.
// With an abort action (or a failing action) at the end nothing happens:
// no bitmap, no job, the graph as before. Without it the backup is the
// disk at the snapshot and the bitmap counts the writes after it.
func TestBackupTransactionLikeQSD(t *testing.T) {
	compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
		backupSource(t, dir, "bk.qcow2")
		d := startDaemon(t, k, dir)
		c := d.connect()
		addQcow2(t, c, dir, "src", "src.qcow2")
		addQcow2(t, c, dir, "tbk", "bk.qcow2")
		uri := startNBD(t, c, dir, "src")
		qemuIO(t, uri, []string{"write -P 0x21 0 64k"})
		ov := filepath.Join(dir, "ov.qcow2")
		actions := []any{
			map[string]any{"type": "blockdev-snapshot-sync", "data": map[string]any{"node-name": "src", "snapshot-file": ov,
				"snapshot-node-name": "ov", "format": "qcow2"}},
			map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": "ov", "name": "b0"}},
			map[string]any{"type": "blockdev-backup", "data": map[string]any{"job-id": "bk", "device": "src", "target": "tbk", "sync": "full", "speed": 1}},
		}
		before := graphView(t, c, dir)
		for _, last := range []any{
			map[string]any{"type": "abort", "data": map[string]any{}},
			map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": "ov", "name": "b0"}},
			map[string]any{"type": "blockdev-backup", "data": map[string]any{"job-id": "bk", "device": "src", "target": "nope", "sync": "full"}},
		} {
			o.record(c, "transaction", map[string]any{"actions": append(append([]any{}, actions...), last)})
			if after := graphView(t, c, dir); strings.Join(after, "\n") != strings.Join(before, "\n") {
				t.Errorf("%s: a failed transaction changed the graph:\n%s", k, strings.Join(after, "\n"))
			}
			o.record(c, "query-block-jobs", nil)
			o.record(c, "query-block", nil)
		}
		// The failed transactions' snapshot-sync may have created the
		// image; it is overwritten here, as QEMU does.
		ref := pointInTime(t, uri, dir, "ref.raw")
		c.scanned = len(c.events) // the failed transactions' job events are past
		o.start(c, "transaction", map[string]any{"actions": actions})
		throttledRun(t, o, c, uri, "bk", []string{"write -P 0x31 64k 64k", "write -P 0x32 3M 64k"})
		o.bitmaps(t, c, "ov", "b0")
		c.ok("blockdev-del", map[string]any{"node-name": "tbk"})
		sameAs(t, ref, filepath.Join(dir, "bk.qcow2"))
		o.events = c.jobEvents()
		o.graph = graphView(t, c, dir)
		now := pointInTime(t, uri, dir, "now.raw")
		d.stop()
		for _, img := range []string{"src.qcow2", "ov.qcow2", "bk.qcow2"} {
			o.headerOf(t, dir, img)
		}
		sameAs(t, ref, filepath.Join(dir, "src.qcow2"))
		sameAs(t, now, ov)
		if _, err := os.Stat(ov); err != nil {
			t.Fatal(err)
		}
	})
}

// TestBackupErrorPoliciesLikeQSD fails one write to the target (EIO or
// ENOSPC, blkdebug) or one read of the source under each error policy:
// stop and enospc pause the job with io-status failed or nospace until
// job-resume, which retries; report fails the job. A backup that goes on
// after its error is still the disk as it was when the job began.
func TestBackupErrorPoliciesLikeQSD(t *testing.T) {
	for _, tc := range []struct {
		name, side, policy string
		errno              int
	}{
		{"target-stop-eio", "target", "stop", 5},
		{"target-enospc-enospc", "target", "enospc", 28},
		{"target-enospc-eio", "target", "enospc", 5},
		{"source-stop-eio", "source", "stop", 5},
		{"source-report-eio", "source", "report", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
				backupSource(t, dir, "bk.qcow2")
				d := startDaemon(t, k, dir)
				c := d.connect()
				rules := map[string]any{
					"inject-error": []any{map[string]any{"event": "read_aio", "errno": tc.errno, "once": true}},
				}
				if tc.side == "target" {
					rules["inject-error"] = []any{map[string]any{"event": "write_aio", "errno": tc.errno, "once": true}}
				}
				src := map[string]any{"driver": "file", "filename": filepath.Join(dir, "src.qcow2")}
				tgt := map[string]any{"driver": "file", "filename": filepath.Join(dir, "bk.qcow2")}
				bd := func(img map[string]any) map[string]any {
					m := map[string]any{"driver": "blkdebug", "image": img}
					for k, v := range rules {
						m[k] = v
					}
					return m
				}
				if tc.side == "source" {
					src = bd(src)
				} else {
					tgt = bd(tgt)
				}
				c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "src", "file": src})
				c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "tbk", "file": tgt})
				startNBD(t, c, dir, "src")
				// From the image, not the export: the source's fault
				// fires once, for the job.
				ref := filepath.Join(dir, "ref.raw")
				run(t, "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", filepath.Join(dir, "src.qcow2"), ref)
				c.scanned = len(c.events)
				args := map[string]any{"job-id": "bk", "device": "src", "target": "tbk", "sync": "full"}
				args["on-"+tc.side+"-error"] = tc.policy
				o.start(c, "blockdev-backup", args)
				stops := tc.policy == "stop" || (tc.policy == "enospc" && tc.errno == 28)
				if stops {
					c.waitEvent(func(ev map[string]any) bool { return ev["event"] == "BLOCK_JOB_ERROR" })
					c.waitJob("bk", "paused")
					o.record(c, "query-block-jobs", nil)
					// QEMU's other copies in flight go on meanwhile.
					last := len(o.replies) - 1
					o.replies[last] = regexp.MustCompile(`"offset":\d+`).ReplaceAllString(o.replies[last], `"offset":*`)
					o.record(c, "job-resume", map[string]any{"id": "bk"})
				}
				c.waitJob("bk", "null")
				// How far a failed job got depends on the copies in
				// flight (QEMU runs several at once).
				mask := []string{}
				if !stops {
					mask = append(mask, "offset")
				}
				o.events = c.jobEvents(mask...)
				o.graph = graphView(t, c, dir)
				c.ok("blockdev-del", map[string]any{"node-name": "tbk"})
				if stops {
					sameAs(t, ref, filepath.Join(dir, "bk.qcow2"))
				}
				d.stop()
				o.headerOf(t, dir, "src.qcow2")
			})
		})
	}
}

// TestBackupCompressLikeQSD backs up into a qcow2 target with compress
// (zlib and zstd): the target holds compressed clusters, packed as
// QEMU packs them, checks clean and reads as the disk did; a raw target
// refuses compression.
func TestBackupCompressLikeQSD(t *testing.T) {
	for _, ct := range []string{"zlib", "zstd"} {
		t.Run(ct, func(t *testing.T) { backupCompress(t, ct) })
	}
}

func backupCompress(t *testing.T, ct string) {
	compareLikeQSD(t, func(k kind, o *jobOutcome, dir string) {
		backupSource(t, dir)
		sh(t, dir, "qemu-img create -q -f raw bk.raw 8M\nqemu-img create -q -f qcow2 -o compression_type="+ct+" bk.qcow2 8M")
		d := startDaemon(t, k, dir)
		c := d.connect()
		addQcow2(t, c, dir, "src", "src.qcow2")
		addQcow2(t, c, dir, "tbk", "bk.qcow2")
		c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "traw",
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "bk.raw")}})
		uri := startNBD(t, c, dir, "src")
		ref := pointInTime(t, uri, dir, "ref.raw")
		o.record(c, "blockdev-backup", map[string]any{"job-id": "r", "device": "src", "target": "traw", "sync": "full", "compress": true})
		c.scanned = len(c.events)
		o.start(c, "blockdev-backup", map[string]any{"job-id": "bk", "device": "src", "target": "tbk", "sync": "full", "compress": true})
		c.waitJob("bk", "null")
		o.events = c.jobEvents()
		c.ok("blockdev-del", map[string]any{"node-name": "tbk"})
		d.stop()
		sameAs(t, ref, filepath.Join(dir, "bk.qcow2"))
		out := run(t, "qemu-img", "check", filepath.Join(dir, "bk.qcow2"))
		if !strings.Contains(out, "No errors were found") {
			t.Fatalf("qemu-img check: %s", out)
		}
		// The statistics line: allocated, fragmented and compressed shares.
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "compressed clusters") {
				o.headers = append(o.headers, l)
			}
		}
		st, err := os.Stat(filepath.Join(dir, "bk.qcow2"))
		if err != nil {
			t.Fatal(err)
		}
		// 65 clusters of 64 KiB compress to about 100 bytes each: packed
		// into shared host clusters the image stays small (QEMU's ends
		// in a partial cluster, qbmond's in a whole one).
		if st.Size() > 512<<10 {
			t.Errorf("%s: the compressed image takes %d KiB", k, st.Size()>>10)
		}
	})
}
