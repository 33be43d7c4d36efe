package main

// Backup workloads. The source is a 4 GiB qcow2 image holding 1 GiB (1 MiB
// every 4 MiB, as writeData puts it); targets are qcow2 images of the same
// size made by qemu-img and added with blockdev-add.
//
// Full backup: blockdev-backup sync=full of the source into an empty
// target, timed from the command to BLOCK_JOB_COMPLETED, and to the return
// of blockdev-del of the target (closed, so flushed: the copy is durable).
//
// Incremental backup: a transaction adds dirty bitmap b0 to the source and
// starts the full backup; once it is done, qemu-io writes 1024 random
// 64 KiB blocks (64 MiB, no block twice) through an NBD export of the
// source; then blockdev-backup sync=incremental bitmap=b0 into a fresh
// target whose backing node is the full backup, timed from the command to
// BLOCK_JOB_COMPLETED. Three rounds of writes and backup per run, each
// target over the last (the best round counts: one takes about 0.1 s).
//
// Guest write latency: a Go NBD client writes 4 KiB blocks at random
// places in the source's data, one write in flight, and times each: with
// no job running (the baseline), during a full backup without a speed
// limit, and during one limited to -speed (about 4 s for both daemons, as
// both count the 3 GiB of zeroes against the limit). A write that meets a
// cluster not yet copied waits for its copy-before-write copy to the
// target. The write times of all runs are pooled; stderr has more
// percentiles.
//
// The first run of each daemon checks its backups with qemu-img compare.

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"
)

var (
	speedMiB   = flag.Int("speed", 1024, "MiB/s: the speed limit of the rate-limited backup of the latency workload")
	baseWrites = flag.Int("writes", 5000, "writes of the latency baseline")
)

// backupFresh copies the template source into a new directory and creates
// the targets there.
func backupFresh(root, tmpl string) string {
	dir := fresh(root, tmpl)
	sh(dir, fmt.Sprintf("qemu-img create -q -f qcow2 full.qcow2 %[1]d && "+
		"qemu-img create -q -f qcow2 full2.qcow2 %[1]d && "+
		"qemu-img create -q -f qcow2 -u -b full.qcow2 -F qcow2 inc1.qcow2 %[1]d && "+
		"qemu-img create -q -f qcow2 -u -b inc1.qcow2 -F qcow2 inc2.qcow2 %[1]d && "+
		"qemu-img create -q -f qcow2 -u -b inc2.qcow2 -F qcow2 inc3.qcow2 %[1]d", virtualSize))
	return dir
}

// jobDone waits for BLOCK_JOB_COMPLETED and fails if the job failed.
func jobDone(d *daemon) {
	ev := d.wait("BLOCK_JOB_COMPLETED")
	if data, _ := ev["data"].(map[string]any); data["error"] != nil {
		must(fmt.Errorf("%s: job %v failed: %v", d.name, data["device"], data["error"]))
	}
}

// compare fails unless images a and b of dir read the same.
func compare(dir, a, b string) {
	sh(dir, "qemu-img compare -q -f qcow2 -F qcow2 "+a+" "+b)
}

func (d *daemon) exportSrc(dir string) string {
	sock := filepath.Join(dir, "nbd.sock")
	d.call("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	d.call("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "src", "name": "disk", "writable": true})
	return sock
}

// waitNull returns when job id has gone (JOB_STATUS_CHANGE to null), so
// that its nodes are free.
func waitNull(d *daemon, id string) {
	for {
		ev := d.wait("JOB_STATUS_CHANGE")
		if data, _ := ev["data"].(map[string]any); data["id"] == id && data["status"] == "null" {
			return
		}
	}
}

// fullBackup returns the best time to BLOCK_JOB_COMPLETED and the best
// time until blockdev-del of the target has returned, which closes it and
// so flushes it to the disk in both daemons (the backup is durable then).
func fullBackup(kind, bin, root, tmpl string) (done, closed time.Duration) {
	done, closed = time.Duration(1<<63-1), time.Duration(1<<63-1)
	for i := range *repeat {
		dir := backupFresh(root, tmpl)
		d := start(kind, bin, dir)
		d.call("blockdev-add", qcow2("src", filepath.Join(dir, "src.qcow2"), nil, false))
		d.call("blockdev-add", qcow2("full", filepath.Join(dir, "full.qcow2"), nil, false))
		t := time.Now()
		d.call("blockdev-backup", map[string]any{"job-id": "j0", "device": "src", "target": "full", "sync": "full"})
		jobDone(d)
		done = min(done, time.Since(t))
		waitNull(d, "j0")
		d.call("blockdev-del", map[string]any{"node-name": "full"})
		closed = min(closed, time.Since(t))
		d.stop()
		if i == 0 {
			compare(dir, "src.qcow2", "full.qcow2")
		}
		os.RemoveAll(dir)
	}
	return done, closed
}

// incRounds is the incremental backups of each run, a chain: inc1 over
// the full backup, inc2 over inc1, ...
const incRounds = 3

func incrementalBackup(kind, bin, root, tmpl string) time.Duration {
	verify := true
	return best(func() time.Duration {
		dir := backupFresh(root, tmpl)
		defer os.RemoveAll(dir)
		d := start(kind, bin, dir)
		d.call("blockdev-add", qcow2("src", filepath.Join(dir, "src.qcow2"), nil, false))
		d.call("blockdev-add", qcow2("full", filepath.Join(dir, "full.qcow2"), nil, false))
		sock := d.exportSrc(dir)
		d.call("transaction", map[string]any{"actions": []any{
			map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": "src", "name": "b0"}},
			map[string]any{"type": "blockdev-backup", "data": map[string]any{"job-id": "j0", "device": "src", "target": "full", "sync": "full"}},
		}})
		jobDone(d)
		el := time.Duration(1<<63 - 1)
		rng := rand.New(rand.NewPCG(3, 4))
		for r := 1; r <= incRounds; r++ {
			// 64 MiB in 1024 distinct 64 KiB blocks anywhere in the 4 GiB.
			args := []string{"-f", "raw"}
			for _, c := range rng.Perm(virtualSize >> 16)[:1024] {
				args = append(args, "-c", fmt.Sprintf("write -q -P 0x%x %d 64k", 0x70+r, int64(c)<<16))
			}
			w := exec.Command("qemu-io", append(args, "nbd+unix:///disk?socket="+sock)...)
			w.Stderr = os.Stderr
			must(w.Run())
			under := "full"
			if r > 1 {
				under = fmt.Sprintf("inc%d", r-1)
			}
			name := fmt.Sprintf("inc%d", r)
			d.call("blockdev-add", qcow2(name, filepath.Join(dir, name+".qcow2"), under, false))
			t := time.Now()
			d.call("blockdev-backup", map[string]any{"job-id": "j" + name, "device": "src", "target": name, "sync": "incremental", "bitmap": "b0"})
			jobDone(d)
			el = min(el, time.Since(t))
		}
		d.stop()
		if verify {
			// inc3 over inc2 over inc1 over full reads as src now.
			compare(dir, "src.qcow2", fmt.Sprintf("inc%d.qcow2", incRounds))
			verify = false
		}
		return el
	})
}

// incFloor times the least any single-threaded copier can spend on one
// incremental round: 1024 scattered 64 KiB blocks read from a sparse 4 GiB
// file and written one after the other into a fresh file in the same
// directory, with plain pread and pwrite and no image format at all. Both
// daemons pay this for the data; the rest of their time is their own.
func incFloor(root string) time.Duration {
	src := filepath.Join(root, "inc-floor-src")
	f, err := os.Create(src)
	must(err)
	defer os.Remove(src)
	defer f.Close()
	must(f.Truncate(virtualSize))
	buf := bytes.Repeat([]byte{0x6b}, 64<<10)
	blocks := rand.New(rand.NewPCG(5, 6)).Perm(virtualSize >> 16)[:1024]
	for _, c := range blocks {
		_, err := f.WriteAt(buf, int64(c)<<16)
		must(err)
	}
	return best(func() time.Duration {
		dst := filepath.Join(root, "inc-floor-dst")
		defer os.Remove(dst)
		out, err := os.Create(dst)
		must(err)
		defer out.Close()
		settle(root)
		t := time.Now()
		for i, c := range blocks {
			_, err := f.ReadAt(buf, int64(c)<<16)
			must(err)
			_, err = out.WriteAt(buf, int64(i)<<16)
			must(err)
		}
		return time.Since(t)
	})
}

type latStats struct {
	median, p99 time.Duration
	n           int
	job         time.Duration // the slowest run's backup time, under the writer
}

// pool is every run's write times and backup times of one workload.
type pool struct {
	l   []time.Duration
	job []time.Duration
}

func (p *pool) stats(kind, name string) latStats {
	l := p.l
	if len(l) == 0 {
		must(fmt.Errorf("%s: %s: no writes timed", kind, name))
	}
	slices.Sort(l)
	q := func(f float64) time.Duration { return l[min(len(l)-1, int(float64(len(l))*f))] }
	fmt.Fprintf(os.Stderr, "jobperf: %s, %s: %d writes; p50 %v p90 %v p99 %v p99.9 %v max %v; jobs %v\n",
		kind, name, len(l), q(.5), q(.9), q(.99), q(.999), l[len(l)-1], p.job)
	s := latStats{median: q(.5), p99: q(.99), n: len(l)}
	for _, j := range p.job {
		s.job = max(s.job, j)
	}
	return s
}

// writer writes 4 KiB blocks at random places in the data writeData put
// there, up to max writes or until stop, and returns each write's time.
func writer(cl *nbdClient, rng *rand.Rand, max int, stop *atomic.Bool) []time.Duration {
	n := *dataGiB << 10
	stride := int64(virtualSize) / int64(n)
	p := make([]byte, 4096)
	for i := range p {
		p[i] = 0x33
	}
	var l []time.Duration
	for len(l) < max && (stop == nil || !stop.Load()) {
		off := int64(rng.IntN(n))*stride + int64(rng.IntN(1<<20/4096))*4096
		t := time.Now()
		must(cl.write(uint64(off), p))
		l = append(l, time.Since(t))
	}
	return l
}

// during times the writer while a full backup of src into target runs
// (speed 0: no limit).
func during(d *daemon, cl *nbdClient, job, target string, speed int64, rng *rand.Rand, p *pool) {
	args := map[string]any{"job-id": job, "device": "src", "target": target, "sync": "full"}
	if speed > 0 {
		args["speed"] = speed
	}
	var stop atomic.Bool
	done := make(chan []time.Duration)
	t := time.Now()
	d.call("blockdev-backup", args)
	go func() { done <- writer(cl, rng, 1<<30, &stop) }()
	jobDone(d)
	p.job = append(p.job, time.Since(t))
	stop.Store(true)
	p.l = append(p.l, <-done...)
}

type latResult struct{ base, full, limited latStats }

// latency runs the latency workload *repeat times and pools the write
// times of all runs: a median and a 99th percentile over a few thousand
// writes of each run, where "best of" would pick a run's luck.
func latency(kind, bin, root, tmpl string) latResult {
	var base, full, limited pool
	for i := range *repeat {
		dir := backupFresh(root, tmpl)
		d := start(kind, bin, dir)
		d.call("blockdev-add", qcow2("src", filepath.Join(dir, "src.qcow2"), nil, false))
		d.call("blockdev-add", qcow2("full", filepath.Join(dir, "full.qcow2"), nil, false))
		d.call("blockdev-add", qcow2("full2", filepath.Join(dir, "full2.qcow2"), nil, false))
		cl, err := nbdDial(d.exportSrc(dir), "disk")
		must(err)
		rng := rand.New(rand.NewPCG(uint64(i), 5))
		writer(cl, rng, 500, nil) // warm up, untimed
		base.l = append(base.l, writer(cl, rng, *baseWrites, nil)...)
		during(d, cl, "j0", "full", 0, rng, &full)
		during(d, cl, "j1", "full2", int64(*speedMiB)<<20, rng, &limited)
		cl.close()
		d.stop()
		os.RemoveAll(dir)
	}
	return latResult{base.stats(kind, "no job"), full.stats(kind, "full backup"), limited.stats(kind, "rate-limited full backup")}
}
