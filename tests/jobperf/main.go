// Command jobperf measures block jobs side by side: qemu-storage-daemon
// and qbmond run the same commit on copies of the same qcow2 chain, one
// after the other in one run, and cp of a file as large as the data sets
// the floor. It prints Markdown for docs/PERFORMANCE.md.
//
//	go run ./tests/jobperf -qbmond bin/qbmond          (make perf-jobs)
//
// Passive commit: a 4 GiB chain base <- mid <- top where mid holds 1 GiB
// (1 MiB every 4 MiB); block-commit of mid into base, timed from the
// command to BLOCK_JOB_COMPLETED. Active commit: top holds the 1 GiB and
// is exported over NBD; while the job copies it, qemu-io writes 128 MiB
// of random 64 KiB blocks through the export; the times to READY and,
// after job-complete once the writer is done, to COMPLETED.
//
// Backups (backup.go): full and incremental blockdev-backup of a 4 GiB
// qcow2 image holding 1 GiB, and the latency of guest writes through NBD
// while a backup runs. -run picks workloads, e.g. -run backup,latency.
//
// Mirrors (mirror.go, nbdmirror.go): into a new local qcow2 with
// job-complete (blockcopy), and over NBD into the other daemon's export
// with block-job-cancel at READY (storage migration), each daemon as the
// source against each as the destination (-run nbdmirror).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

var (
	qbmondBin = flag.String("qbmond", "bin/qbmond", "qbmond binary")
	qsdBin    = flag.String("qsd", "qemu-storage-daemon", "qemu-storage-daemon binary")
	repeat    = flag.Int("repeat", 3, "runs per workload; the best is kept")
	dataGiB   = flag.Int("data", 1, "GiB of data to commit")
	where     = flag.String("dir", os.TempDir(), "directory for the images (/dev/shm takes the disk out)")
	workloads = flag.String("run", "commit,backup,incremental,latency", "workloads to run, comma-separated: commit, backup, incremental, latency, mirror, nbdmirror")
)

const virtualSize = 4 << 30

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func sh(dir, script string) {
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	must(cmd.Run())
}

// writeData writes 1 MiB of pattern p every 4 MiB, dataGiB GiB in all,
// into img (qcow2) with qemu-io.
func writeData(dir, img string, p byte) {
	var b strings.Builder
	fmt.Fprintf(&b, "qemu-io -f qcow2")
	n := *dataGiB << 10
	stride := int64(virtualSize) / int64(n)
	for i := range n {
		fmt.Fprintf(&b, " -c 'write -q -P 0x%x %d 1M'", p, int64(i)*stride)
	}
	fmt.Fprintf(&b, " %s >/dev/null", img)
	sh(dir, b.String())
}

type daemon struct {
	name    string
	cmd     *exec.Cmd
	conn    net.Conn
	r       *bufio.Reader
	pending []map[string]any // events read while waiting for replies
}

func start(name, bin, dir string) *daemon {
	sock := filepath.Join(dir, name+".sock")
	os.Remove(sock)
	cmd := exec.Command(bin, "--chardev", "socket,path="+sock+",server=on,wait=off,id=m0", "--monitor", "chardev=m0")
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	if name == "qbmond" {
		cmd.Args = append(cmd.Args, "--log-level", "warn")
	}
	must(cmd.Start())
	var conn net.Conn
	var err error
	for range 500 {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	must(err)
	d := &daemon{name: name, cmd: cmd, conn: conn, r: bufio.NewReaderSize(conn, 1<<20)}
	d.next()
	d.call("qmp_capabilities", nil)
	return d
}

func (d *daemon) next() map[string]any {
	b, err := d.r.ReadBytes('\n')
	must(err)
	var v map[string]any
	must(json.Unmarshal(b, &v))
	return v
}

// call runs a command, failing on an error reply; events met on the way
// are dropped (the waits below ask for events only after their command).
func (d *daemon) call(name string, args any) {
	req := map[string]any{"execute": name}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	_, err := d.conn.Write(append(b, '\n'))
	must(err)
	for {
		v := d.next()
		if _, ev := v["event"]; ev {
			d.pending = append(d.pending, v)
			continue
		}
		if e, ok := v["error"]; ok {
			must(fmt.Errorf("%s: %s: %v", d.name, name, e))
		}
		return
	}
}

// wait returns when an event called name arrives.
func (d *daemon) wait(name string) map[string]any {
	for len(d.pending) > 0 {
		v := d.pending[0]
		d.pending = d.pending[1:]
		if v["event"] == name {
			return v
		}
	}
	for {
		v := d.next()
		if v["event"] == name {
			return v
		}
	}
}

func (d *daemon) stop() {
	d.call("quit", nil)
	d.cmd.Wait()
}

func qcow2(name, file string, backing any, ro bool) map[string]any {
	return map[string]any{"driver": "qcow2", "node-name": name, "read-only": ro, "backing": backing,
		"file": map[string]any{"driver": "file", "filename": file}}
}

// chain opens base, mid and top of dir in d.
func chain(d *daemon, dir string) {
	d.call("blockdev-add", qcow2("base", filepath.Join(dir, "base.qcow2"), nil, true))
	d.call("blockdev-add", qcow2("mid", filepath.Join(dir, "mid.qcow2"), "base", true))
	d.call("blockdev-add", qcow2("top", filepath.Join(dir, "top.qcow2"), "mid", false))
}

// settle makes every run start alike: it writes and deletes a file of
// twice the data's size, so that the page cache pages the run gets are
// ones the machine has used already (on a virtual machine, memory touched
// for the first time costs a fault in the host, which made first runs
// several times slower than later ones), then syncs so that no writeback
// of an earlier run competes.
func settle(root string) {
	p := filepath.Join(root, "settle")
	f, err := os.Create(p)
	must(err)
	buf := make([]byte, 4<<20)
	for range *dataGiB * 2 << 8 {
		_, err := f.Write(buf)
		must(err)
	}
	must(f.Close())
	must(os.Remove(p))
	syscall.Sync()
}

// fresh copies the template chain into a new directory under root.
func fresh(root, tmpl string) string {
	dir, err := os.MkdirTemp(root, "run-")
	must(err)
	sh(dir, "cp --sparse=always "+tmpl+"/*.qcow2 .")
	settle(root)
	return dir
}

func best(f func() time.Duration) time.Duration {
	b := time.Duration(1<<63 - 1)
	for range *repeat {
		b = min(b, f())
	}
	return b
}

func passive(kind, bin, root, tmpl string) time.Duration {
	return best(func() time.Duration {
		dir := fresh(root, tmpl)
		defer os.RemoveAll(dir)
		d := start(kind, bin, dir)
		defer d.stop()
		chain(d, dir)
		t := time.Now()
		d.call("block-commit", map[string]any{"job-id": "j0", "device": "top", "top-node": "mid", "base-node": "base"})
		ev := d.wait("BLOCK_JOB_COMPLETED")
		el := time.Since(t)
		if data, _ := ev["data"].(map[string]any); data["error"] != nil {
			must(fmt.Errorf("%s: commit failed: %v", kind, data["error"]))
		}
		return el
	})
}

type activeResult struct{ ready, total, writer time.Duration }

func active(kind, bin, root, tmpl string) activeResult {
	var out activeResult
	out.total = time.Duration(1<<63 - 1)
	for range *repeat {
		dir := fresh(root, tmpl)
		d := start(kind, bin, dir)
		chain(d, dir)
		sock := filepath.Join(dir, "nbd.sock")
		d.call("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
		d.call("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top", "name": "disk", "writable": true})
		// The writer: 128 MiB of random 64 KiB blocks.
		rng := rand.New(rand.NewPCG(1, 2))
		args := []string{"-f", "raw"}
		for range 2048 {
			args = append(args, "-c", fmt.Sprintf("write -q -P 0x77 %d 64k", rng.Int64N(virtualSize>>16)<<16))
		}
		args = append(args, "nbd+unix:///disk?socket="+sock)
		t := time.Now()
		d.call("block-commit", map[string]any{"job-id": "j0", "device": "top", "base-node": "base"})
		w := exec.Command("qemu-io", args...)
		w.Stderr = os.Stderr
		must(w.Start())
		d.wait("BLOCK_JOB_READY")
		ready := time.Since(t)
		must(w.Wait())
		writer := time.Since(t)
		d.call("job-complete", map[string]any{"id": "j0"})
		d.wait("BLOCK_JOB_COMPLETED")
		total := time.Since(t)
		d.stop()
		os.RemoveAll(dir)
		if total < out.total {
			out = activeResult{ready: ready, total: total, writer: writer}
		}
	}
	return out
}

var cpSync = new(string)

// cpFloor times cp of a fully written file of the data's size (and, with
// *cpSync set, a sync of the copy, as a commit ends with its base
// flushed).
func cpFloor(root string) time.Duration {
	src := filepath.Join(root, "cp-src")
	f, err := os.Create(src)
	must(err)
	buf := bytes.Repeat([]byte{0x5a}, 1<<20)
	for range *dataGiB << 10 {
		_, err := f.Write(buf)
		must(err)
	}
	must(f.Close())
	defer os.Remove(src)
	return best(func() time.Duration {
		dst := filepath.Join(root, "cp-dst")
		defer os.Remove(dst)
		settle(root)
		t := time.Now()
		sh(root, "cp --reflink=never cp-src cp-dst"+*cpSync)
		return time.Since(t)
	})
}

func main() {
	flag.Parse()
	want := map[string]bool{}
	for _, w := range strings.Split(*workloads, ",") {
		want[strings.TrimSpace(w)] = true
	}
	root, err := os.MkdirTemp(*where, "qbjobperf-")
	must(err)
	defer os.RemoveAll(root)

	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	fmt.Printf("Measured %s on %s, %d CPUs; best of %d; images in %s.\n\n", time.Now().Format("2006-01-02"), cpu, runtime.NumCPU(), *repeat, *where)
	mib := float64(*dataGiB << 10)
	rate := func(d time.Duration) float64 { return mib / d.Seconds() }
	if want["commit"] {
		commit(root, rate)
	}
	if want["mirror"] {
		mirrorTable(root, rate)
	}
	if want["nbdmirror"] {
		nbdMirrorTable(root, rate)
	}
	if want["backup"] || want["incremental"] || want["latency"] {
		tmpl := filepath.Join(root, "backup")
		must(os.Mkdir(tmpl, 0o755))
		sh(tmpl, fmt.Sprintf("qemu-img create -q -f qcow2 src.qcow2 %d", virtualSize))
		writeData(tmpl, "src.qcow2", 0x5a)
		if want["backup"] {
			fq, fqc := fullBackup("qsd", *qsdBin, root, tmpl)
			fb, fbc := fullBackup("qbmond", *qbmondBin, root, tmpl)
			fmt.Printf("| full backup, %d GiB in a 4 GiB qcow2 | to COMPLETED | throughput | qbmond/QSD | target | to target closed (flushed) | throughput | qbmond/QSD |\n", *dataGiB)
			fmt.Printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
			fmt.Printf("| QSD 7.2 | %.2f s | %.0f MiB/s | | | %.2f s | %.0f MiB/s | |\n", fq.Seconds(), rate(fq), fqc.Seconds(), rate(fqc))
			fmt.Printf("| qbmond | %.2f s | %.0f MiB/s | %.2f× | ≥ 1.2× | %.2f s | %.0f MiB/s | %.2f× |\n\n", fb.Seconds(), rate(fb), fq.Seconds()/fb.Seconds(),
				fbc.Seconds(), rate(fbc), fqc.Seconds()/fbc.Seconds())
		}
		if want["incremental"] {
			iq := incrementalBackup("qsd", *qsdBin, root, tmpl)
			ib := incrementalBackup("qbmond", *qbmondBin, root, tmpl)
			fl := incFloor(root)
			r := func(d time.Duration) float64 { return 64 / d.Seconds() }
			fmt.Printf("| incremental backup, 64 MiB in 1024 scattered 64 KiB blocks (best of %d rounds × %d runs) | time | throughput | qbmond/QSD | target |\n| --- | ---: | ---: | ---: | ---: |\n", incRounds, *repeat)
			fmt.Printf("| QSD 7.2 | %.3f s | %.0f MiB/s | | |\n", iq.Seconds(), r(iq))
			fmt.Printf("| qbmond | %.3f s | %.0f MiB/s | %.2f× | ≥ 1.2× |\n", ib.Seconds(), r(ib), iq.Seconds()/ib.Seconds())
			fmt.Printf("| floor: the same blocks by pread and pwrite, no daemon | %.3f s | %.0f MiB/s | %.2f× | |\n\n", fl.Seconds(), r(fl), iq.Seconds()/fl.Seconds())
		}
		if want["latency"] {
			lq := latency("qsd", *qsdBin, root, tmpl)
			lb := latency("qbmond", *qbmondBin, root, tmpl)
			ms := func(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/1e3) }
			fmt.Printf("| 4 KiB NBD writes into the data, one in flight (%d runs pooled) | QSD median | QSD p99 | qbmond median | qbmond p99 | qbmond/QSD median | qbmond/QSD p99 | writes timed (QSD, qbmond) | slowest backup (QSD, qbmond) |\n", *repeat)
			fmt.Printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
			row := func(name string, q, b latStats) {
				job := "—"
				if q.job > 0 {
					job = fmt.Sprintf("%.2f s, %.2f s", q.job.Seconds(), b.job.Seconds())
				}
				fmt.Printf("| %s | %s | %s | %s | %s | %.2f× | %.2f× | %d, %d | %s |\n", name, ms(q.median), ms(q.p99), ms(b.median), ms(b.p99),
					float64(b.median)/float64(q.median), float64(b.p99)/float64(q.p99), q.n, b.n, job)
			}
			row("no job", lq.base, lb.base)
			row("during a full backup", lq.full, lb.full)
			row(fmt.Sprintf("during a full backup at %d MiB/s", *speedMiB), lq.limited, lb.limited)
			fmt.Println()
		}
	}
}

func commit(root string, rate func(time.Duration) float64) {
	passiveT := filepath.Join(root, "passive")
	activeT := filepath.Join(root, "active")
	for _, d := range []string{passiveT, activeT} {
		must(os.Mkdir(d, 0o755))
		sh(d, fmt.Sprintf("qemu-img create -q -f qcow2 base.qcow2 %d && "+
			"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 && "+
			"qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2", virtualSize))
	}
	writeData(passiveT, "mid.qcow2", 0x5a)
	writeData(activeT, "top.qcow2", 0x5a)

	pq := passive("qsd", *qsdBin, root, passiveT)
	pb := passive("qbmond", *qbmondBin, root, passiveT)
	cp := cpFloor(root)
	*cpSync = " && sync cp-dst"
	cpSynced := cpFloor(root)
	*cpSync = ""
	aq := active("qsd", *qsdBin, root, activeT)
	ab := active("qbmond", *qbmondBin, root, activeT)
	must(os.RemoveAll(passiveT))
	must(os.RemoveAll(activeT))

	fmt.Printf("| passive commit, %d GiB in a 4 GiB qcow2 chain | time | throughput | vs QSD |\n| --- | ---: | ---: | ---: |\n", *dataGiB)
	fmt.Printf("| QSD 7.2 | %.2f s | %.0f MiB/s | 1.00× |\n", pq.Seconds(), rate(pq))
	fmt.Printf("| qbmond | %.2f s | %.0f MiB/s | %.2f× |\n", pb.Seconds(), rate(pb), pq.Seconds()/pb.Seconds())
	fmt.Printf("| cp of a %d GiB file | %.2f s | %.0f MiB/s | %.2f× |\n", *dataGiB, cp.Seconds(), rate(cp), pq.Seconds()/cp.Seconds())
	fmt.Printf("| cp and sync of the copy (the floor: a commit ends with base flushed) | %.2f s | %.0f MiB/s | %.2f× |\n\n",
		cpSynced.Seconds(), rate(cpSynced), pq.Seconds()/cpSynced.Seconds())
	fmt.Printf("| active commit, %d GiB, 128 MiB written meanwhile | to READY | writer done | to COMPLETED |\n| --- | ---: | ---: | ---: |\n", *dataGiB)
	fmt.Printf("| QSD 7.2 | %.2f s | %.2f s | %.2f s |\n", aq.ready.Seconds(), aq.writer.Seconds(), aq.total.Seconds())
	fmt.Printf("| qbmond | %.2f s | %.2f s | %.2f s |\n", ab.ready.Seconds(), ab.writer.Seconds(), ab.total.Seconds())
	fmt.Printf("| qbmond/QSD | %.2f× | %.2f× | %.2f× |\n\n", ab.ready.Seconds()/aq.ready.Seconds(),
		ab.writer.Seconds()/aq.writer.Seconds(), ab.total.Seconds()/aq.total.Seconds())
}
