// Command perf runs the same QMP workloads against qemu-storage-daemon and
// qbmond, one after the other in one run, with the same client, and prints
// the times and ratios as Markdown for docs/PERFORMANCE.md.
//
//	go run ./tests/perf -qbmond bin/qbmond
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

var (
	qbmondBin = flag.String("qbmond", "bin/qbmond", "qbmond binary")
	qsdBin    = flag.String("qsd", "qemu-storage-daemon", "qemu-storage-daemon binary")
	rounds    = flag.Int("n", 2000, "round trips per query workload")
	adds      = flag.Int("adds", 1000, "blockdev-add count")
	repeat    = flag.Int("repeat", 3, "runs per workload; the best is kept")
)

type daemon struct {
	name string
	cmd  *exec.Cmd
	conn net.Conn
	r    *bufio.Reader
}

func start(name, bin, dir string) (*daemon, error) {
	sock := filepath.Join(dir, name+".sock")
	cmd := exec.Command(bin, "--chardev", "socket,path="+sock+",server=on,wait=off,id=m0", "--monitor", "chardev=m0")
	cmd.Stderr = os.Stderr
	if name == "qbmond" {
		cmd.Args = append(cmd.Args, "--log-level", "warn")
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var conn net.Conn
	var err error
	for i := 0; i < 500; i++ {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		cmd.Process.Kill()
		return nil, err
	}
	d := &daemon{name: name, cmd: cmd, conn: conn, r: bufio.NewReaderSize(conn, 1<<20)}
	d.line()
	d.call(`{"execute":"qmp_capabilities"}`)
	return d, nil
}

func (d *daemon) line() []byte {
	b, err := d.r.ReadBytes('\n')
	if err != nil {
		panic(fmt.Sprintf("%s: %v", d.name, err))
	}
	return b
}

// call sends one request and waits for its reply.
func (d *daemon) call(req string) []byte {
	if _, err := d.conn.Write([]byte(req + "\n")); err != nil {
		panic(err)
	}
	for {
		b := d.line()
		if !bytes.HasPrefix(b, []byte(`{"event"`)) && !bytes.HasPrefix(b, []byte(`{"timestamp"`)) {
			if bytes.Contains(b, []byte(`"error"`)) {
				panic(fmt.Sprintf("%s: %s -> %s", d.name, req, b))
			}
			return b
		}
	}
}

func (d *daemon) rssKiB() int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			var n int
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(l, "VmRSS:")), "%d", &n)
			return n
		}
	}
	return -1
}

func (d *daemon) stop() {
	d.conn.Close()
	d.cmd.Process.Signal(os.Interrupt)
	d.cmd.Wait()
}

type result struct {
	workload string
	qsd, qbm time.Duration
	note     string
}

func timeIt(f func()) time.Duration {
	best := time.Duration(1<<63 - 1)
	for i := 0; i < *repeat; i++ {
		t := time.Now()
		f()
		if d := time.Since(t); d < best {
			best = d
		}
	}
	return best
}

func main() {
	flag.Parse()
	dir, err := os.MkdirTemp("", "qbmond-perf-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	bins := map[string]string{"qsd": *qsdBin, "qbmond": *qbmondBin}
	var results []result
	measure := func(name string, setup func(d *daemon), work func(d *daemon)) {
		r := result{workload: name}
		for _, k := range []string{"qsd", "qbmond"} {
			d, err := start(k, bins[k], dir)
			if err != nil {
				panic(err)
			}
			if setup != nil {
				setup(d)
			}
			t := timeIt(func() { work(d) })
			if k == "qsd" {
				r.qsd = t
			} else {
				r.qbm = t
			}
			d.stop()
		}
		results = append(results, r)
	}
	addNulls := func(n int, prefix string) func(d *daemon) {
		return func(d *daemon) {
			for i := 0; i < n; i++ {
				d.call(fmt.Sprintf(`{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"%s%d"}}`, prefix, i))
			}
		}
	}
	queries := func(req string) func(d *daemon) {
		return func(d *daemon) {
			for i := 0; i < *rounds; i++ {
				d.call(req)
			}
		}
	}
	measure(fmt.Sprintf("query-version × %d", *rounds), nil, queries(`{"execute":"query-version"}`))
	measure(fmt.Sprintf("query-named-block-nodes (3 nodes) × %d", *rounds), addNulls(3, "n"),
		queries(`{"execute":"query-named-block-nodes"}`))
	measure(fmt.Sprintf("query-named-block-nodes (1,000 nodes) × %d", *rounds/20), addNulls(1000, "n"),
		func(d *daemon) {
			for i := 0; i < *rounds/20; i++ {
				d.call(`{"execute":"query-named-block-nodes"}`)
			}
		})

	// Dirty bitmaps of 16 Mibit (1 TiB at 64 KiB), one in 64 of their bits set, in 16 runs
	// through NBD write-zeroes requests (qemu-io) on a null-co node.
	bitmaps := func(d *daemon) {
		sock := filepath.Join(dir, d.name+"-nbd.sock")
		d.call(`{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"b0","size":1099511627776}}`)
		for _, n := range []string{"a", "b", "c"} {
			d.call(`{"execute":"block-dirty-bitmap-add","arguments":{"node":"b0","name":"` + n + `","granularity":65536}}`)
		}
		d.call(`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"` + sock + `"}}}}`)
		d.call(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"b0","writable":true}}`)
		var args []string
		for off := int64(0); off < 1<<40; off += 64 << 30 {
			// 1 GiB of every 64 GiB: sixteen runs of set bits.
			args = append(args, "-c", fmt.Sprintf("write -z %d %d", off, int64(1<<30)))
		}
		args = append(args, "-f", "raw", "nbd+unix:///b0?socket="+sock)
		if out, err := exec.Command("qemu-io", args...).CombinedOutput(); err != nil {
			panic(fmt.Sprintf("%s: qemu-io: %v\n%s", d.name, err, out))
		}
		d.call(`{"execute":"block-dirty-bitmap-disable","arguments":{"node":"b0","name":"a"}}`)
	}
	measure("x-debug-block-dirty-bitmap-sha256, 16 Mibit × 20", bitmaps, func(d *daemon) {
		for i := 0; i < 20; i++ {
			d.call(`{"execute":"x-debug-block-dirty-bitmap-sha256","arguments":{"node":"b0","name":"a"}}`)
		}
	})
	measure("block-dirty-bitmap-merge, 16 Mibit × 20", bitmaps, func(d *daemon) {
		for i := 0; i < 20; i++ {
			d.call(`{"execute":"block-dirty-bitmap-merge","arguments":{"node":"b0","target":"c","bitmaps":["a"]}}`)
		}
	})

	// blockdev-add: each run adds fresh names; RSS after all of them.
	r := result{workload: fmt.Sprintf("blockdev-add null-co × %d", *adds)}
	for _, k := range []string{"qsd", "qbmond"} {
		d, err := start(k, bins[k], dir)
		if err != nil {
			panic(err)
		}
		run := 0
		t := timeIt(func() { addNulls(*adds, fmt.Sprintf("r%d_", run))(d); run++ })
		rss := d.rssKiB()
		if k == "qsd" {
			r.qsd = t
			r.note = fmt.Sprintf("RSS after %d nodes: QSD %d KiB", run**adds, rss)
		} else {
			r.qbm = t
			r.note += fmt.Sprintf(", qbmond %d KiB", rss)
		}
		d.stop()
	}
	results = append(results, r)

	fmt.Printf("Measured %s on %s, %d CPUs (%s), Go %s; best of %d runs.\n\n",
		time.Now().Format("2006-01-02"), cpuModel(), runtime.NumCPU(), hostKernel(), runtime.Version(), *repeat)
	fmt.Println("| workload | QSD 7.2 | qbmond | qbmond/QSD time | notes |")
	fmt.Println("| --- | ---: | ---: | ---: | --- |")
	for _, r := range results {
		fmt.Printf("| %s | %v | %v | %.2f× | %s |\n", r.workload, r.qsd.Round(time.Microsecond),
			r.qbm.Round(time.Microsecond), float64(r.qbm)/float64(r.qsd), r.note)
	}
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			if i := strings.Index(l, ":"); i >= 0 {
				return strings.TrimSpace(l[i+1:])
			}
		}
	}
	return runtime.GOARCH
}

func hostKernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return "Linux " + strings.TrimSpace(string(b))
}
