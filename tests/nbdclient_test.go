package tests

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The nbd block driver (qbmond as an NBD client) against qbmond's own NBD
// server, QSD's, and nbdkit (memory, with the error and delay filters),
// each scenario run with QSD as the client too: the same blockdev-add of
// an nbd node, the same qemu-io operations through an export of that
// node, the same data and errors.

// upstream is an NBD server a client daemon's nbd node reads: its socket
// and export name, and how to read its whole content afterwards.
type upstream struct {
	sock, export string
	stop         func()
}

// nbdkitServer runs nbdkit in the foreground on dir/name.sock with args
// (filters, plugin, parameters) until the test ends or stop is called.
func nbdkitServer(t *testing.T, dir, name string, args ...string) upstream {
	t.Helper()
	sock := filepath.Join(dir, name+".sock")
	os.Remove(sock)
	cmd := exec.Command(requireTool(t, "nbdkit"), append([]string{"--foreground", "--exit-with-parent", "-U", sock}, args...)...)
	out := &lockedBuffer{}
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	}
	t.Cleanup(stop)
	waitSocket(t, sock, exited, out)
	return upstream{sock: sock, export: "", stop: stop}
}

func waitSocket(t *testing.T, sock string, exited chan struct{}, out *lockedBuffer) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		select {
		case <-exited:
			t.Fatalf("server on %s exited: %s", sock, out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no server on %s: %s", sock, out)
		}
	}
}

// daemonUpstream starts a daemon of kind k exporting dir/up.img (4 MiB,
// a pattern in its first MiB) writable as "up", with a disabled bitmap b0
// that saw the pattern's writes, on dir/up.sock.
func daemonUpstream(t *testing.T, k kind, dir string) (upstream, *client) {
	t.Helper()
	img := filepath.Join(dir, "up.img")
	run(t, "qemu-img", "create", "-q", "-f", "raw", img, "4M")
	ud := filepath.Join(dir, "upd")
	os.Mkdir(ud, 0o755)
	d := startDaemon(t, k, ud)
	c := d.connect()
	c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "up",
		"file": map[string]any{"driver": "file", "filename": img}})
	sock := filepath.Join(dir, "up.sock")
	c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	c.ok("block-dirty-bitmap-add", map[string]any{"node": "up", "name": "b0"})
	c.ok("block-export-add", map[string]any{"type": "nbd", "id": "w", "node-name": "up", "name": "w", "writable": true})
	qemuIO(t, "nbd+unix:///w?socket="+sock, []string{"write -P 0x5a 64k 128k", "write -P 0x6b 1m 4k"})
	c.ok("block-export-del", map[string]any{"id": "w"})
	waitExportIDGone(t, c, "w")
	c.ok("block-dirty-bitmap-disable", map[string]any{"node": "up", "name": "b0"})
	c.ok("block-export-add", map[string]any{"type": "nbd", "id": "up", "node-name": "up", "writable": true, "bitmaps": []any{"b0"}})
	return upstream{sock: sock, export: "up", stop: d.stop}, c
}

// clientNode adds nbd node "nc" to c, reading up, with extra options,
// and exports it writable as "nc" on dir/c.sock; it returns the export's
// URI.
func clientNode(t *testing.T, c *client, dir string, up upstream, extra map[string]any) string {
	t.Helper()
	o := map[string]any{"driver": "nbd", "node-name": "nc", "export": up.export,
		"server": map[string]any{"type": "unix", "path": up.sock}}
	for k, v := range extra {
		o[k] = v
	}
	c.ok("blockdev-add", o)
	sock := filepath.Join(dir, "c.sock")
	c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	c.ok("block-export-add", map[string]any{"type": "nbd", "id": "nc", "node-name": "nc", "writable": o["read-only"] != true})
	return "nbd+unix:///nc?socket=" + sock
}

// nodeView renders query-named-block-nodes' entry for node, with the
// scenario's paths replaced.
func nodeView(t *testing.T, c *client, node string, repl *strings.Replacer) string {
	t.Helper()
	for _, n := range c.ok("query-named-block-nodes", map[string]any{"flat": true}).([]any) {
		m := n.(map[string]any)
		if m["node-name"] != node {
			continue
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return repl.Replace(string(b))
	}
	t.Fatalf("no node %s", node)
	return ""
}

// imageMap is qemu-img map's JSON of uri, one extent a line.
func imageMap(t *testing.T, uri string) string {
	t.Helper()
	var ext []map[string]any
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "map", "-f", "raw", "--output=json", uri)), &ext); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range ext {
		fmt.Fprintf(&b, "  %.0f+%.0f data=%v zero=%v\n", e["start"], e["length"], e["data"], e["zero"])
	}
	return b.String()
}

// contentSum is the SHA-256 of what uri reads as.
func contentSum(t *testing.T, uri string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "content.raw")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

// clientWorkload are the qemu-io operations each client daemon runs
// through its export of the nbd node: data in and out at aligned and odd
// offsets, write-zeroes with and without unmap, discard, FUA, flush.
var clientWorkload = []string{
	"read -P 0x5a 64k 128k",
	"read -P 0x6b 1m 4k",
	"write -P 0xab 0 64k",
	"write -P 0xcd 100001 3333",
	"write -P 0x11 2m 1m",
	"write -z 2m 4k",
	"write -z -u 2162688 64k",
	"write -f -P 0x22 3m 512",
	"discard 2621440 64k",
	"read -P 0xab 0 64k",
	"read -P 0xcd 100001 3333",
	"read -P 0 2m 4k",
	"read -P 0x11 2101248 60k",
	"read -P 0 2162688 64k",
	"read -P 0x22 3m 512",
	"flush",
}

// diffClients runs scenario with QSD, then qbmond, as the client daemon
// (each in a fresh directory, against upstreams the scenario starts) and
// fails unless the transcripts are the same.
func diffClients(t *testing.T, scenario func(t *testing.T, k kind, dir string) string) {
	t.Helper()
	diffDaemons(t, func(k kind, dir string) string { return scenario(t, k, dir) })
}

// workloadScenario is the common scenario: an nbd node on up, the
// workload (ops, clientWorkload by default) through its export, the node's query view and map, the
// content the upstream ends with (read through upURI).
func workloadScenario(t *testing.T, k kind, dir string, up upstream, upURI string, extra map[string]any, ops ...string) string {
	t.Helper()
	c := startDaemon(t, k, dir).connect()
	uri := clientNode(t, c, dir, up, extra)
	repl := strings.NewReplacer(dir, "$DIR")
	var tr strings.Builder
	fmt.Fprintf(&tr, "node: %s\n", nodeView(t, c, "nc", repl))
	if ops == nil {
		ops = clientWorkload
	}
	for _, l := range qemuIOResults(t, uri, ops...) {
		fmt.Fprintf(&tr, "%s\n", l)
	}
	fmt.Fprintf(&tr, "map through the node:\n%s", imageMap(t, uri))
	c.ok("block-export-del", map[string]any{"id": "nc"})
	waitExportIDGone(t, c, "nc")
	c.ok("blockdev-del", map[string]any{"node-name": "nc"})
	fmt.Fprintf(&tr, "upstream content: %s\n", contentSum(t, upURI))
	return tr.String()
}

// waitExportIDGone waits until block-export-del's export has left.
func waitExportIDGone(t *testing.T, c *client, id string) {
	t.Helper()
	for range 500 {
		gone := true
		for _, e := range c.ok("query-block-exports", nil).([]any) {
			gone = gone && e.(map[string]any)["id"] != id
		}
		if gone {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("export %s stays", id)
}

// qbmond's and QSD's nbd nodes on an export of qbmond, and on one of QSD.
func TestNBDClientOnDaemonExportsLikeQSD(t *testing.T) {
	for _, server := range []kind{kindQbmond, kindQSD} {
		t.Run("server="+string(server), func(t *testing.T) {
			diffClients(t, func(t *testing.T, k kind, dir string) string {
				up, _ := daemonUpstream(t, server, dir)
				return workloadScenario(t, k, dir, up, "nbd+unix:///up?socket="+up.sock, nil)
			})
		})
	}
}

// Against nbdkit's memory plugin (another server implementation: its own
// block sizes, no bitmaps).
func TestNBDClientOnNbdkitLikeQSD(t *testing.T) {
	diffClients(t, func(t *testing.T, k kind, dir string) string {
		up := nbdkitServer(t, dir, "mem", "memory", "4M")
		qemuIO(t, "nbd+unix:///?socket="+up.sock, []string{"write -P 0x5a 64k 128k", "write -P 0x6b 1m 4k"})
		return workloadScenario(t, k, dir, up, "nbd+unix:///?socket="+up.sock, nil)
	})
}

// Servers that offer less, and say so in the handshake: no structured
// replies (so no block status), no write-zeroes, no NBD_OPT_GO
// (plain newstyle: NBD_OPT_EXPORT_NAME), the oldstyle handshake, a
// minimum block size the client must align its requests to, and a size
// that is not a whole number of sectors.
func TestNBDClientLesserServersLikeQSD(t *testing.T) {
	for name, args := range map[string][]string{
		"no-sr,nozero":     {"--no-sr", "--filter=nozero", "memory", "4M", "zeromode=none"},
		"newstyle-unfixed": {"--mask-handshake=0", "memory", "4M"},
		"oldstyle":         {"-o", "memory", "4M"},
		"size-1000":        {"memory", "1000"},
		"minblock-4k":      {"--filter=blocksize-policy", "memory", "4M", "blocksize-minimum=4096", "blocksize-preferred=65536", "blocksize-maximum=1M", "blocksize-error-policy=error"},
	} {
		t.Run(name, func(t *testing.T) {
			diffClients(t, func(t *testing.T, k kind, dir string) string {
				up := nbdkitServer(t, dir, "mem", args...)
				// (An oldstyle server refuses the writes, a small one
				// has no room for them.)
				exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x5a 64k 128k", "-c", "write -P 0x6b 1m 4k", "nbd+unix:///?socket="+up.sock).Run()
				var ops []string
				if name == "size-1000" {
					// The node is a sector long; the server's last 24
					// bytes are past its end.
					ops = []string{"write -P 7 0 512", "write -P 8 512 512", "write -P 9 512 488",
						"read -P 7 0 512", "read -P 9 512 488", "read 0 1024", "write -z 0 1024", "write -z 0 512", "read -P 0 0 512"}
				}
				return workloadScenario(t, k, dir, up, "nbd+unix:///?socket="+up.sock, nil, ops...)
			})
		})
	}
}

// Errors the server sends (nbdkit's error filter, switched on by files)
// reach qemu-io through the client's export with their errno.
func TestNBDClientServerErrorsLikeQSD(t *testing.T) {
	diffClients(t, func(t *testing.T, k kind, dir string) string {
		up := nbdkitServer(t, dir, "err", "--filter=error", "memory", "4M",
			"error-pread=EIO", "error-pread-rate=100%", "error-pread-file="+filepath.Join(dir, "rfail"),
			"error-pwrite=ENOSPC", "error-pwrite-rate=100%", "error-pwrite-file="+filepath.Join(dir, "wfail"),
			"error-zero=EPERM", "error-zero-rate=100%", "error-zero-file="+filepath.Join(dir, "zfail"),
			"error-trim=EINVAL", "error-trim-rate=100%", "error-trim-file="+filepath.Join(dir, "tfail"),
			"error-extents=ENOMEM", "error-extents-rate=100%", "error-extents-file="+filepath.Join(dir, "efail"))
		c := startDaemon(t, k, dir).connect()
		uri := clientNode(t, c, dir, up, nil)
		var tr strings.Builder
		step := func(trigger string, ops ...string) {
			f := filepath.Join(dir, trigger)
			if trigger != "" {
				if err := os.WriteFile(f, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			fmt.Fprintf(&tr, "with %q:\n", trigger)
			for _, l := range qemuIOResults(t, uri, ops...) {
				fmt.Fprintf(&tr, "  %s\n", l)
			}
			if trigger != "" {
				os.Remove(f)
			}
		}
		step("", "write -P 0x33 0 64k", "read -P 0x33 0 64k")
		step("wfail", "write -P 0x44 0 4k", "read -P 0x33 0 4k")
		step("rfail", "read 0 4k", "write -P 0x55 8k 4k")
		step("zfail", "write -z 64k 64k", "write -z -u 64k 64k")
		step("tfail", "discard 0 64k")
		// Block status is asked of the server only outside the data
		// extent it reported last (QEMU's block-status cache).
		step("efail", "read -P 0x33 0 4k", "read -P 0 1m 4k")
		os.WriteFile(filepath.Join(dir, "efail"), nil, 0o644)
		fmt.Fprintf(&tr, "map with failing extents fails: %v\n", mapFails(t, uri))
		os.Remove(filepath.Join(dir, "efail"))
		step("", "read -P 0x33 0 4k", "read -P 0x55 8k 4k")
		return tr.String()
	})
}

func mapFails(t *testing.T, uri string) bool {
	_, err := exec.Command(requireTool(t, "qemu-img"), "map", "-f", "raw", "--output=json", uri).CombinedOutput()
	return err != nil
}

// Many requests in flight on one connection: nbdkit's delay filter holds
// each read and write 300 ms; sixteen parallel reads and writes through
// the client's export finish together, not one after the other.
func TestNBDClientParallelRequestsLikeQSD(t *testing.T) {
	var took = map[kind]time.Duration{}
	diffClients(t, func(t *testing.T, k kind, dir string) string {
		up := nbdkitServer(t, dir, "slow", "--filter=delay", "memory", "16M", "rdelay=300ms", "wdelay=300ms")
		c := startDaemon(t, k, dir).connect()
		uri := clientNode(t, c, dir, up, nil)
		var ops []string
		for i := range 16 {
			ops = append(ops, fmt.Sprintf("aio_write -P %d %dm 64k", i+1, i))
		}
		ops = append(ops, "aio_flush")
		for i := range 16 {
			ops = append(ops, fmt.Sprintf("aio_read -P %d %dm 64k", i+1, i))
		}
		ops = append(ops, "aio_flush")
		start := time.Now()
		out := qemuIO(t, uri, ops)
		took[k] = time.Since(start)
		var lines []string
		for l := range strings.SplitSeq(out, "\n") {
			if f := strings.Fields(l); len(f) > 0 && (f[0] == "wrote" || f[0] == "read") {
				lines = append(lines, f[0]+" "+f[1])
			}
		}
		slices.Sort(lines)
		return strings.Join(lines, "\n") + "\n"
	})
	// 32 delayed requests one after the other would take 9.6 s.
	t.Logf("32 requests of 300 ms each: QSD %v, qbmond %v", took[kindQSD], took[kindQbmond])
	if took[kindQbmond] > 5*time.Second {
		t.Errorf("qbmond's client took %v: its requests did not overlap", took[kindQbmond])
	}
}

// x-dirty-bitmap: block status of the node is the bitmap's (dirty reads as
// unallocated), seen through the client's export by qemu-img map.
func TestNBDClientDirtyBitmapLikeQSD(t *testing.T) {
	for _, server := range []kind{kindQbmond, kindQSD} {
		t.Run("server="+string(server), func(t *testing.T) {
			diffClients(t, func(t *testing.T, k kind, dir string) string {
				up, _ := daemonUpstream(t, server, dir)
				c := startDaemon(t, k, dir).connect()
				uri := clientNode(t, c, dir, up, map[string]any{"read-only": true, "x-dirty-bitmap": "qemu:dirty-bitmap:b0"})
				return "map: \n" + imageMap(t, uri) + "node: " + nodeView(t, c, "nc", strings.NewReplacer(dir, "$DIR")) + "\n"
			})
		})
	}
}

// blockdev-add's errors: bad options and servers that cannot be reached
// or refuse, word for word.
func TestNBDClientOpenErrorsLikeQSD(t *testing.T) {
	diffClients(t, func(t *testing.T, k kind, dir string) string {
		up, uc := daemonUpstream(t, kindQbmond, dir)
		uc.ok("block-export-add", map[string]any{"type": "nbd", "id": "ro", "node-name": "up", "name": "ro"})
		c := startDaemon(t, k, dir).connect()
		unix := func(path string) map[string]any { return map[string]any{"type": "unix", "path": path} }
		long := strings.Repeat("x", 4097)
		var tr strings.Builder
		for i, o := range []map[string]any{
			{"server": unix(up.sock), "export": "nope"},
			{"server": unix(up.sock)},
			{"server": unix(filepath.Join(dir, "none.sock")), "export": "up"},
			{"server": map[string]any{"type": "inet", "host": "127.0.0.1", "port": "1"}, "export": "up"},
			{"server": map[string]any{"type": "inet", "host": "127.0.0.1", "port": "no-such-service"}, "export": "up"},
			{"server": map[string]any{"type": "vsock", "cid": "x", "port": "1"}},
			{"server": map[string]any{"type": "vsock", "cid": "3", "port": "x"}},
			{"server": map[string]any{"type": "vsock", "cid": "2", "port": "10809"}},
			{"server": map[string]any{"type": "fd", "str": "3"}},
			{"server": unix(up.sock), "export": "up", "tls-creds": "tls0"},
			{"server": unix(up.sock), "export": long},
			{"server": unix(up.sock), "export": "up", "x-dirty-bitmap": long},
			{"server": unix(up.sock), "export": "up", "x-dirty-bitmap": "qemu:dirty-bitmap:zz", "read-only": true},
			{"server": unix(up.sock), "export": "up", "x-dirty-bitmap": "qemu:allocation-depth", "read-only": true},
			{"server": unix(up.sock), "export": "ro"},
			{"server": unix(up.sock), "export": "ro", "auto-read-only": true},
			{"server": unix(up.sock), "export": "up", "tls-hostname": "h", "reconnect-delay": 1, "open-timeout": 1},
			{"server": unix(up.sock), "export": "up", "server.path": "x"},
		} {
			o["driver"], o["node-name"] = "nbd", fmt.Sprintf("e%d", i)
			r := c.cmd("blockdev-add", o)
			res := "ok"
			if e, ok := r["error"].(map[string]any); ok {
				res = e["class"].(string) + ": " + strings.ReplaceAll(e["desc"].(string), dir, "$DIR")
			} else {
				view := nodeView(t, c, o["node-name"].(string), strings.NewReplacer())
				res += fmt.Sprintf(" ro=%v", strings.Contains(view, `"ro":true`))
				c.ok("blockdev-del", map[string]any{"node-name": o["node-name"]})
			}
			fmt.Fprintf(&tr, "%d: %s\n", i, res)
		}
		// A node of a read-only export cannot be made writable.
		c.ok("blockdev-add", map[string]any{"driver": "nbd", "node-name": "r", "read-only": true, "export": "ro", "server": unix(up.sock)})
		_, d := c.fail("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "nbd", "node-name": "r", "export": "ro", "server": unix(up.sock)}}})
		fmt.Fprintf(&tr, "reopen read-write: %s\n", d)
		_, d = c.fail("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "nbd", "node-name": "r", "read-only": true, "export": "ro", "reconnect-delay": 3, "server": unix(up.sock)}}})
		fmt.Fprintf(&tr, "reopen with reconnect-delay: %s\n", d)
		return tr.String()
	})
}

var portRE = regexp.MustCompile(`127\.0\.0\.1:[0-9]+`)

// query-named-block-nodes of nbd nodes over unix and TCP, plain and with
// options that need a json: file name, and of a raw node over one.
func TestNBDClientQueryLikeQSD(t *testing.T) {
	diffClients(t, func(t *testing.T, k kind, dir string) string {
		up, uc := daemonUpstream(t, kindQbmond, dir)
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(l.Addr().String())
		l.Close()
		uc.ok("nbd-server-stop", nil)
		uc.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "inet", "data": map[string]any{"host": "127.0.0.1", "port": port}}})
		uc.ok("block-export-add", map[string]any{"type": "nbd", "id": "up", "node-name": "up", "writable": true})
		c := startDaemon(t, k, dir).connect()
		inet := func(extra map[string]any) map[string]any {
			m := map[string]any{"type": "inet", "host": "127.0.0.1", "port": port}
			for k, v := range extra {
				m[k] = v
			}
			return m
		}
		nodes := []map[string]any{
			{"node-name": "n0", "server": inet(nil), "export": "up"},
			{"node-name": "n1", "server": inet(map[string]any{"ipv4": true}), "export": "up"},
			{"node-name": "n2", "server": inet(map[string]any{"to": 65000, "keep-alive": true}), "export": "up", "reconnect-delay": 2},
			{"node-name": "n3", "server": inet(nil), "export": "up", "read-only": true, "cache": map[string]any{"direct": true}},
		}
		for _, o := range nodes {
			o["driver"] = "nbd"
			c.ok("blockdev-add", o)
		}
		c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "r0", "offset": 512,
			"file": map[string]any{"driver": "nbd", "node-name": "n4", "server": inet(nil), "export": "up"}})
		c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "r1", "file": "n0"})
		repl := strings.NewReplacer(dir, "$DIR", ":"+port, ":$PORT", `\"`+port+`\"`, `\"$PORT\"`)
		var tr strings.Builder
		for _, n := range []string{"n0", "n1", "n2", "n3", "n4", "r0", "r1"} {
			fmt.Fprintf(&tr, "%s\n", nodeView(t, c, n, repl))
		}
		_ = up
		return portRE.ReplaceAllString(tr.String(), "127.0.0.1:$PORT")
	})
}

// Reconnection: the server goes away and comes back within
// reconnect-delay; a read made meanwhile waits and succeeds. Gone for
// longer than the delay, reads fail with EIO, and work again once the
// server is back.
func TestNBDClientReconnectLikeQSD(t *testing.T) {
	diffClients(t, func(t *testing.T, k kind, dir string) string {
		img := filepath.Join(dir, "up.img")
		run(t, "qemu-img", "create", "-q", "-f", "raw", img, "4M")
		up := nbdkitServer(t, dir, "file", "file", img)
		c := startDaemon(t, k, dir).connect()
		uri := clientNode(t, c, dir, up, map[string]any{"reconnect-delay": 5})
		var tr strings.Builder
		res := func(what string, ops ...string) {
			for _, l := range qemuIOResults(t, uri, ops...) {
				fmt.Fprintf(&tr, "%s: %s\n", what, l)
			}
		}
		res("connected", "write -P 0x77 0 64k")
		up.stop()
		// Reads made while the server is away wait for it.
		during := make(chan []string, 1)
		go func() { during <- qemuIOResults(t, uri, "read -P 0x77 0 64k", "write -P 0x78 64k 4k") }()
		time.Sleep(500 * time.Millisecond)
		up = nbdkitServer(t, dir, "file", "file", img)
		for _, l := range <-during {
			fmt.Fprintf(&tr, "server back within the delay: %s\n", l)
		}
		up.stop()
		start := time.Now()
		res("server gone", "read 0 4k")
		fmt.Fprintf(&tr, "failed after about the delay: %v\n", time.Since(start) > 4*time.Second)
		start = time.Now()
		res("server gone, after the delay", "read 0 4k")
		fmt.Fprintf(&tr, "failed at once: %v\n", time.Since(start) < 2*time.Second)
		up = nbdkitServer(t, dir, "file", "file", img)
		// The client retries every few seconds (1, 2, 4...): wait for it.
		var last string
		for range 40 {
			last = qemuIOResults(t, uri, "read -P 0x78 64k 4k")[0]
			if !strings.Contains(last, "failed") {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		fmt.Fprintf(&tr, "server back: %s\n", last)
		return tr.String()
	})
}

// badServer serves a 1 MiB export of zeroes (said to be data) on
// dir/bad.sock (fixed
// newstyle, structured replies, base:allocation) and answers a read at
// 512 KiB wrongly, as mode says; everything else it answers properly.
func badServer(t *testing.T, dir, mode string) string {
	t.Helper()
	sock := filepath.Join(dir, "bad.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				badServe(c, mode)
			}()
		}
	}()
	return sock
}

func badServe(c net.Conn, mode string) {
	const size = 1 << 20
	greet := nbe.AppendUint64(nil, 0x4e42444d41474943)
	greet = nbe.AppendUint64(greet, nbdOptMagic)
	greet = nbe.AppendUint16(greet, 3)
	if _, err := c.Write(greet); err != nil {
		return
	}
	var b [4]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return
	}
	optReply := func(opt, typ uint32, data []byte) {
		p := nbe.AppendUint64(nil, nbdRepMagic)
		p = nbe.AppendUint32(p, opt)
		p = nbe.AppendUint32(p, typ)
		p = nbe.AppendUint32(p, uint32(len(data)))
		c.Write(append(p, data...))
	}
	for done := false; !done; {
		var h [16]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return
		}
		opt := nbe.Uint32(h[8:])
		if _, err := io.CopyN(io.Discard, c, int64(nbe.Uint32(h[12:]))); err != nil {
			return
		}
		switch opt {
		case 10: // SET_META_CONTEXT: the client's only query is base:allocation
			optReply(opt, 4, append(nbe.AppendUint32(nil, 1), "base:allocation"...))
			optReply(opt, 1, nil)
		case 7: // GO
			info := nbe.AppendUint16(nil, 0)
			info = nbe.AppendUint64(info, size)
			info = nbe.AppendUint16(info, 1|4|32|64) // flags, flush, trim, write zeroes
			optReply(opt, 3, info)
			optReply(opt, 1, nil)
			done = true
		default:
			optReply(opt, 1, nil)
		}
	}
	chunk := func(flags, typ uint16, cookie uint64, payload []byte) []byte {
		p := nbe.AppendUint32(nil, nbdChunkMagic)
		p = nbe.AppendUint16(p, flags)
		p = nbe.AppendUint16(p, typ)
		p = nbe.AppendUint64(p, cookie)
		p = nbe.AppendUint32(p, uint32(len(payload)))
		return append(p, payload...)
	}
	for {
		var h [28]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return
		}
		typ, cookie, off, n := nbe.Uint16(h[6:]), nbe.Uint64(h[8:]), nbe.Uint64(h[16:]), nbe.Uint32(h[24:])
		switch typ {
		case 1: // write
			io.CopyN(io.Discard, c, int64(n))
		case 2:
			return
		}
		if typ == 0 && off == 512<<10 {
			switch mode {
			case "truncated reply":
				c.Write(chunk(1, 1, cookie, nil)[:12])
				return
			case "truncated data":
				p := chunk(1, 1, cookie, nil)
				nbe.PutUint32(p[16:], n+8)
				c.Write(append(p, nbe.AppendUint64(nil, off)...))
				return
			case "wrong cookie":
				c.Write(chunk(1, 0, cookie+99, nil))
			case "oversized chunk":
				// (QSD reads the offset before it checks the length.)
				p := chunk(1, 1, cookie, nbe.AppendUint64(nil, off))
				nbe.PutUint32(p[16:], 64<<20)
				c.Write(p)
			case "chunk outside the request":
				c.Write(chunk(1, 2, cookie, nbe.AppendUint32(nbe.AppendUint64(nil, off+4096), n)))
			case "bad magic":
				c.Write(make([]byte, 20))
			case "error with errno 0":
				c.Write(chunk(1, 32769, cookie, make([]byte, 6)))
			}
			continue
		}
		switch typ {
		case 0: // read: all a hole
			c.Write(chunk(1, 2, cookie, nbe.AppendUint32(nbe.AppendUint64(nil, off), n)))
		case 7: // block status: all data (so that reads come)
			p := nbe.AppendUint32(nil, 1)
			p = nbe.AppendUint32(p, n)
			p = nbe.AppendUint32(p, 0)
			c.Write(chunk(1, 5, cookie, p))
		default: // a simple reply: success
			p := nbe.AppendUint32(nil, nbdSimpleMagic)
			p = nbe.AppendUint32(p, 0)
			c.Write(nbe.AppendUint64(p, cookie))
		}
	}
}

// Servers that break the protocol on one read: that read fails, nothing
// hangs or crashes, and what the node does next (a server that broke the
// protocol is not connected to again) is what QSD's does.
func TestNBDClientBadServersLikeQSD(t *testing.T) {
	for _, mode := range []string{"truncated reply", "truncated data", "wrong cookie", "oversized chunk",
		"chunk outside the request", "bad magic", "error with errno 0"} {
		t.Run(mode, func(t *testing.T) {
			diffClients(t, func(t *testing.T, k kind, dir string) string {
				sock := badServer(t, dir, mode)
				d := startDaemon(t, k, dir)
				c := d.connect()
				uri := clientNode(t, c, dir, upstream{sock: sock, export: "x"}, nil)
				var tr strings.Builder
				for _, l := range qemuIOResults(t, uri, "read -P 0 0 4k", "write -P 1 8k 4k") {
					fmt.Fprintf(&tr, "%s\n", l)
				}
				done := make(chan []string, 1)
				go func() { done <- qemuIOResults(t, uri, "read 512k 4k") }()
				select {
				case r := <-done:
					fmt.Fprintf(&tr, "%s\n", r[0])
				case <-time.After(20 * time.Second):
					t.Fatalf("%s: the read hangs", k)
				}
				if !strings.HasPrefix(mode, "truncated") {
					// (After a lost connection, the client connects again
					// in its own time.)
					for _, l := range qemuIOResults(t, uri, "read 0 4k") {
						fmt.Fprintf(&tr, "then %s\n", l)
					}
				}
				c.ok("query-named-block-nodes", nil)
				return tr.String()
			})
		})
	}
}

// Storage migration's destination side, read back: QSD mirrors a disk
// into an export of qbmond (QSD's nbd node as the mirror's target), with
// guest writes during the copy; qbmond reads the result back through an
// nbd node of its own on that export, and it equals the source.
func TestNBDClientReadsBackQSDMirror(t *testing.T) {
	const size = 16 << 20
	qdir, bdir := shortTempDir(t), shortTempDir(t)
	target := filepath.Join(bdir, "target.img")
	run(t, "qemu-img", "create", "-q", "-f", "raw", target, fmt.Sprint(size))
	src := filepath.Join(qdir, "src.img")
	run(t, "qemu-img", "create", "-q", "-f", "raw", src, fmt.Sprint(size))
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x31 0 3m", "-c", "write -P 0x32 9m 1m", src)

	b := startDaemon(t, kindQbmond, bdir).connect()
	b.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "t",
		"file": map[string]any{"driver": "file", "filename": target}})
	bsock := filepath.Join(bdir, "nbd.sock")
	b.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": bsock}}})
	b.ok("block-export-add", map[string]any{"type": "nbd", "id": "t", "node-name": "t", "writable": true})

	q := startDaemon(t, kindQSD, qdir).connect()
	q.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "src",
		"file": map[string]any{"driver": "file", "filename": src}})
	qsock := filepath.Join(qdir, "nbd.sock")
	q.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": qsock}}})
	q.ok("block-export-add", map[string]any{"type": "nbd", "id": "src", "node-name": "src", "writable": true})
	q.ok("blockdev-add", map[string]any{"driver": "nbd", "node-name": "dst", "export": "t",
		"server": map[string]any{"type": "unix", "path": bsock}})
	q.ok("blockdev-mirror", map[string]any{"job-id": "m0", "device": "src", "target": "dst", "sync": "full"})
	qemuIO(t, "nbd+unix:///src?socket="+qsock, []string{"write -P 0x33 1m 64k", "write -P 0x34 12m 2m"})
	q.waitEvent(func(ev map[string]any) bool { return ev["event"] == "BLOCK_JOB_READY" })
	qemuIO(t, "nbd+unix:///src?socket="+qsock, []string{"write -P 0x35 5m 512k", "write -z 9m 64k"})
	q.ok("block-job-cancel", map[string]any{"device": "m0"})
	q.waitEvent(func(ev map[string]any) bool { return ev["event"] == "BLOCK_JOB_COMPLETED" })
	q.ok("blockdev-del", map[string]any{"node-name": "dst"})
	want := contentSum(t, "nbd+unix:///src?socket="+qsock)

	// qbmond reads the copy through an nbd node on its own export.
	b.ok("blockdev-add", map[string]any{"driver": "nbd", "node-name": "back", "export": "t", "read-only": true,
		"server": map[string]any{"type": "unix", "path": bsock}})
	b.ok("block-export-add", map[string]any{"type": "nbd", "id": "back", "node-name": "back"})
	if got := contentSum(t, "nbd+unix:///back?socket="+bsock); got != want {
		t.Fatalf("read back through the nbd node: %s, the source: %s", got, want)
	}
}

// open-timeout: blockdev-add keeps trying to connect for that long. A
// server that is not there by then fails the open with the connection's
// error; one that comes up meanwhile is used.
func TestNBDClientOpenTimeoutLikeQSD(t *testing.T) {
	diffClients(t, func(t *testing.T, k kind, dir string) string {
		c := startDaemon(t, k, dir).connect()
		sock := filepath.Join(dir, "late.sock")
		var tr strings.Builder
		start := time.Now()
		_, d := c.fail("blockdev-add", map[string]any{"driver": "nbd", "node-name": "n0", "open-timeout": 2,
			"server": map[string]any{"type": "unix", "path": sock}})
		fmt.Fprintf(&tr, "no server: %s (after the timeout: %v)\n", strings.ReplaceAll(d, dir, "$DIR"), time.Since(start) > 1500*time.Millisecond)
		// The server comes up a second after blockdev-add starts.
		cmd := exec.Command(requireTool(t, "nbdkit"), "--foreground", "--exit-with-parent", "-U", sock, "memory", "1M")
		t.Cleanup(func() {
			if cmd.Process != nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
		})
		started := make(chan error, 1)
		go func() {
			time.Sleep(time.Second)
			started <- cmd.Start()
		}()
		r := c.cmd("blockdev-add", map[string]any{"driver": "nbd", "node-name": "n1", "open-timeout": 10,
			"server": map[string]any{"type": "unix", "path": sock}})
		if err := <-started; err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&tr, "server a second late: %v\n", r)
		return tr.String()
	})
}
