package tests

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// idleConn is one NBD connection that never negotiates.
type idleConn struct {
	c       net.Conn
	greeted time.Duration // when the greeting arrived after the start (-1: never)
	closed  time.Duration // when the server hung up (-1: not seen)
}

// watch reads the greeting, then waits for the server to hang up, noting
// when each happens; the test closing the connection ends it.
func (ic *idleConn) watch(start time.Time, wg *sync.WaitGroup, mu *sync.Mutex) {
	defer wg.Done()
	var g [18]byte
	_, err := io.ReadFull(ic.c, g[:])
	mu.Lock()
	if err == nil {
		ic.greeted = time.Since(start)
	} else if !errors.Is(err, net.ErrClosed) {
		ic.closed = time.Since(start)
	}
	mu.Unlock()
	if err != nil {
		return
	}
	var b [1]byte
	if _, err := ic.c.Read(b[:]); err != nil && !errors.Is(err, net.ErrClosed) {
		mu.Lock()
		ic.closed = time.Since(start)
		mu.Unlock()
	}
}

// bucket rounds a time to what the test compares: at once (0), around
// the 10 s handshake limit (10), or never (-).
func bucket(d time.Duration) string {
	switch {
	case d < 0:
		return "-"
	case d < 4*time.Second:
		return "0"
	case d > 8*time.Second && d < 14*time.Second:
		return "10"
	}
	return fmt.Sprintf("odd(%v)", d.Round(100*time.Millisecond))
}

// nbdServerFor starts a daemon of kind k with one read-only export "e0"
// served on dir/nbd.sock with the given nbd-server-start arguments.
func nbdServerFor(t *testing.T, k kind, extra map[string]any) (*daemon, *client, string) {
	dir := shortTempDir(t)
	d := startDaemon(t, k, dir)
	c := d.connect()
	p := filepath.Join(dir, "a.img")
	if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "n0",
		"file": map[string]any{"driver": "file", "filename": p}})
	sock := nbdServerStart(c, dir, extra)
	c.ok("block-export-add", map[string]any{"type": "nbd", "id": "e0", "name": "e0", "node-name": "n0"})
	return d, c, sock
}

// TestNBDIdleConnectionsLikeQSD opens 300 idle NBD connections to both
// daemons limited to 256 descriptors and compares what happens: the first
// 100 (the default limit) are greeted and dropped when they have not
// negotiated after 10 s, the others wait unaccepted until then, a client
// that negotiated stays, and QMP answers and opens images while the
// server is full.
func TestNBDIdleConnectionsLikeQSD(t *testing.T) {
	const n = 300
	type outcome struct {
		hist    string
		working string
		qmp     string
	}
	out := map[kind]*outcome{}
	var wg sync.WaitGroup
	var fmu sync.Mutex
	var fails []string
	for _, k := range []kind{kindQSD, kindQbmond} {
		d, c, sock := nbdServerFor(t, k, nil)
		lim := unix.Rlimit{Cur: 256, Max: 256}
		if err := unix.Prlimit(d.cmd.Process.Pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
			t.Fatalf("prlimit: %v", err)
		}
		img := filepath.Join(d.dir, "b.img")
		if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		o := &outcome{}
		out[k] = o
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail := func(format string, args ...any) {
				fmu.Lock()
				fails = append(fails, fmt.Sprintf("%s: ", k)+fmt.Sprintf(format, args...))
				fmu.Unlock()
			}
			start := time.Now()
			// The first client negotiates: it must outlive the limit.
			good, err := net.Dial("unix", sock)
			if err != nil {
				fail("dial: %v", err)
				return
			}
			defer good.Close()
			r := &rawNBD{t: t, c: good}
			var g [18]byte
			r.read(g[:])
			r.goExport("e0", false)

			var mu sync.Mutex
			var cw sync.WaitGroup
			conns := make([]*idleConn, 0, n)
			for range n {
				nc, err := net.Dial("unix", sock)
				if err != nil {
					fail("dial: %v", err)
					break
				}
				ic := &idleConn{c: nc, greeted: -1, closed: -1}
				conns = append(conns, ic)
				cw.Add(1)
				go ic.watch(start, &cw, &mu)
			}
			defer func() {
				for _, ic := range conns {
					ic.c.Close()
				}
				cw.Wait()
			}()
			// QMP answers while the NBD server is full.
			time.Sleep(2 * time.Second)
			o.qmp = "ok"
			if v := c.cmd("query-block-exports", nil); v["return"] == nil {
				o.qmp = fmt.Sprint(v)
			}
			if v := c.cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "n1",
				"file": map[string]any{"driver": "file", "filename": img}}); v["return"] == nil {
				o.qmp = fmt.Sprint(v)
			}
			time.Sleep(time.Until(start.Add(13 * time.Second)))
			r.request(0, 3, 1, 0, 0, nil)
			r.reply(0)
			o.working = strings.Join(r.log, "; ")
			mu.Lock()
			hist := map[string]int{}
			for _, ic := range conns {
				hist["greeted "+bucket(ic.greeted)+" closed "+bucket(ic.closed)]++
			}
			mu.Unlock()
			var lines []string
			for k, v := range hist {
				lines = append(lines, fmt.Sprintf("%s: %d", k, v))
			}
			sort.Strings(lines)
			o.hist = strings.Join(lines, ", ")
		}()
	}
	wg.Wait()
	for _, f := range fails {
		t.Error(f)
	}
	q, m := out[kindQSD], out[kindQbmond]
	t.Logf("QSD: %+v", *q)
	t.Logf("qbmond: %+v", *m)
	if *q != *m {
		t.Errorf("outcomes differ\nQSD:    %+v\nqbmond: %+v", *q, *m)
	}
	// The referee itself: QSD caps at 100 (the negotiated client and 99 idle
	// ones), drops the idle ones at 10 s and then greets 99 more.
	if want := "greeted - closed -: 102, greeted 0 closed 10: 99, greeted 10 closed -: 99"; q.hist != want {
		t.Errorf("QSD's connections: %s, want %s", q.hist, want)
	}
}

// TestNBDOutOfDescriptorsLikeQSD runs both daemons with 64 descriptors and
// no NBD connection limit, and lets idle NBD clients use them all up. QMP
// must keep answering on its open connection; once the clients leave, the
// daemons must accept NBD and QMP clients and open images again (an accept
// that failed for want of descriptors must not end a listener).
func TestNBDOutOfDescriptorsLikeQSD(t *testing.T) {
	const n = 80
	out := map[kind]string{}
	for _, k := range []kind{kindQSD, kindQbmond} {
		d, c, sock := nbdServerFor(t, k, map[string]any{"max-connections": 0})
		lim := unix.Rlimit{Cur: 64, Max: 64}
		if err := unix.Prlimit(d.cmd.Process.Pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
			t.Fatalf("prlimit: %v", err)
		}
		var log []string
		var conns []net.Conn
		greeted := 0
		for range n {
			nc, err := net.Dial("unix", sock)
			if err != nil {
				break // the backlog is full
			}
			conns = append(conns, nc)
			nc.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
			if _, err := io.ReadFull(nc, make([]byte, 18)); err == nil {
				greeted++
			}
		}
		if greeted == 0 || greeted >= len(conns) {
			t.Errorf("%s: %d of %d clients greeted: the descriptors did not run out", k, greeted, len(conns))
		}
		// A second QMP client waits meanwhile (QSD serves one at a time).
		late, err := net.Dial("unix", d.sock)
		if err != nil {
			t.Fatalf("%s: dial QMP: %v", k, err)
		}
		defer late.Close()
		if v := c.cmd("query-block-exports", nil); v["return"] == nil {
			log = append(log, fmt.Sprintf("query-block-exports while full: %v", v))
		}
		for _, nc := range conns {
			nc.Close()
		}
		time.Sleep(500 * time.Millisecond)
		// Descriptors are free again: images open, NBD and QMP accept.
		p := filepath.Join(d.dir, "b.img")
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		if v := c.cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "n1",
			"file": map[string]any{"driver": "file", "filename": p}}); v["return"] == nil {
			log = append(log, fmt.Sprintf("blockdev-add after: %v", v))
		}
		r := dialRawNBD(t, sock)
		r.goExport("e0", false)
		r.aliveTransmission()
		log = append(log, r.log...)
		c.conn.Close()
		lc := &client{t: t, d: d, conn: late, dec: json.NewDecoder(bufio.NewReader(late))}
		if g := lc.readAny(); g["QMP"] == nil {
			log = append(log, fmt.Sprintf("second QMP client: %v", g))
		} else {
			log = append(log, "second QMP client greeted")
		}
		out[k] = strings.Join(log, "\n")
	}
	if out[kindQSD] != out[kindQbmond] {
		t.Errorf("outcomes differ\nQSD:\n%s\n\nqbmond:\n%s", out[kindQSD], out[kindQbmond])
	}
}

// TestNBDMaxConnectionsOneLikeQSD: with max-connections 1 the export does
// not advertise multi-conn, and a second client waits until the first
// leaves.
func TestNBDMaxConnectionsOneLikeQSD(t *testing.T) {
	out := map[kind]string{}
	for _, k := range []kind{kindQSD, kindQbmond} {
		_, _, sock := nbdServerFor(t, k, map[string]any{"max-connections": 1})
		first := dialRawNBD(t, sock)
		first.goExport("e0", false)
		second, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer second.Close()
		second.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err = io.ReadFull(second, make([]byte, 18))
		first.logf("second client greeted at once: %v", err == nil)
		first.request(0, 2, 1, 0, 0, nil) // NBD_CMD_DISC
		second.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadFull(second, make([]byte, 18))
		first.logf("second client greeted after the first left: %v", err == nil)
		out[k] = strings.Join(first.log, "\n")
	}
	if out[kindQSD] != out[kindQbmond] {
		t.Errorf("outcomes differ\nQSD:\n%s\n\nqbmond:\n%s", out[kindQSD], out[kindQbmond])
	}
}
