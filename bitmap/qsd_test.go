package bitmap

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The tests in this file are differential: qemu-storage-daemon 7.2 is the
// referee. A node with dirty bitmaps of several granularities is exported
// over NBD, qemu-io writes a workload into it, and the sha256 and count QSD
// reports for each bitmap must equal what Bitmap gives after Set of the same
// ranges. Without the tools the tests fail, unless
// QBMOND_ALLOW_MISSING_TOOLS=1.

func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("QBMOND_ALLOW_MISSING_TOOLS") == "1" {
			t.Skipf("%s is not installed", name)
		}
		t.Fatalf("%s is not installed (set QBMOND_ALLOW_MISSING_TOOLS=1 to skip)", name)
	}
	return p
}

// qsd is a running qemu-storage-daemon with a QMP connection and an NBD
// export e0 of node n0.
type qsd struct {
	t   *testing.T
	dir string
	cmd *exec.Cmd
	c   net.Conn
	r   *bufio.Reader
}

// startQSD starts QSD with the given --blockdev specs (one of them naming
// node n0) and exports n0 writable over NBD.
func startQSD(t *testing.T, blockdevs ...string) *qsd {
	t.Helper()
	bin := requireTool(t, "qemu-storage-daemon")
	// Unix socket paths must stay short: not t.TempDir().
	dir, err := os.MkdirTemp("", "bmq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "qmp.sock")
	var args []string
	for _, b := range blockdevs {
		args = append(args, "--blockdev", b)
	}
	args = append(args,
		"--nbd-server", "addr.type=unix,addr.path="+filepath.Join(dir, "nbd.sock"),
		"--export", "nbd,id=e0,node-name=n0,writable=on",
		"--chardev", "socket,path="+sock+",server=on,wait=off,id=m0",
		"--monitor", "chardev=m0")
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	q := &qsd{t: t, dir: dir, cmd: cmd}
	t.Cleanup(q.stop)
	// Wait for the monitor socket: QSD creates it before it serves.
	for i := 0; ; i++ {
		if q.c, err = net.Dial("unix", sock); err == nil {
			break
		}
		if i == 500 {
			t.Fatalf("QSD monitor %s: %v", sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	q.r = bufio.NewReader(q.c)
	if _, err := q.r.ReadBytes('\n'); err != nil { // greeting
		t.Fatal(err)
	}
	q.ok("qmp_capabilities", nil)
	return q
}

func (q *qsd) stop() {
	if q.c != nil {
		q.c.Close()
	}
	q.cmd.Process.Kill()
	q.cmd.Wait()
}

func (q *qsd) uri() string { return "nbd+unix:///n0?socket=" + filepath.Join(q.dir, "nbd.sock") }

// exec sends one command and returns its "return" or its error description.
func (q *qsd) exec(name string, args any) (any, string) {
	q.t.Helper()
	req := map[string]any{"execute": name}
	if args != nil {
		req["arguments"] = args
	}
	line, _ := json.Marshal(req)
	if _, err := q.c.Write(append(line, '\n')); err != nil {
		q.t.Fatal(err)
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			q.t.Fatalf("%s: %v", name, err)
		}
		var reply struct {
			Return any
			Error  *struct{ Desc string }
		}
		d := json.NewDecoder(strings.NewReader(string(line)))
		d.UseNumber()
		if err := d.Decode(&reply); err != nil {
			q.t.Fatalf("%s: %v: %s", name, err, line)
		}
		if reply.Error != nil {
			return nil, reply.Error.Desc
		}
		if reply.Return != nil {
			return reply.Return, ""
		}
		// an event: skip it
	}
}

func (q *qsd) ok(name string, args any) any {
	q.t.Helper()
	ret, e := q.exec(name, args)
	if e != "" {
		q.t.Fatalf("%s: %s", name, e)
	}
	return ret
}

// bitmapState returns QSD's sha256, count and granularity of n0's bitmap.
func (q *qsd) bitmapState(name string) (sha string, count int64, gran uint64) {
	q.t.Helper()
	ret := q.ok("x-debug-block-dirty-bitmap-sha256", map[string]any{"node": "n0", "name": name})
	sha = ret.(map[string]any)["sha256"].(string)
	for _, n := range q.ok("query-named-block-nodes", map[string]any{"flat": true}).([]any) {
		node := n.(map[string]any)
		if node["node-name"] != "n0" {
			continue
		}
		for _, b := range node["dirty-bitmaps"].([]any) {
			bm := b.(map[string]any)
			if bm["name"] == name {
				c, _ := bm["count"].(json.Number).Int64()
				g, _ := bm["granularity"].(json.Number).Int64()
				return sha, c, uint64(g)
			}
		}
	}
	q.t.Fatalf("no bitmap %s on n0", name)
	return
}

// qemuIO runs the commands against the export in one qemu-io process.
func (q *qsd) qemuIO(cmds []string) {
	q.t.Helper()
	bin := requireTool(q.t, "qemu-io")
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command(bin, append(args, q.uri())...).CombinedOutput()
	if err != nil || strings.Contains(string(out), "failed") {
		q.t.Fatalf("qemu-io: %v\n%s", err, out)
	}
}

// ioRange returns the byte range a qemu-io "write [-z] OFF LEN" or
// "discard OFF LEN" command touches.
func ioRange(t *testing.T, cmd string) (off, n int64) {
	f := strings.Fields(cmd)
	off, err1 := strconv.ParseInt(f[len(f)-2], 10, 64)
	n, err2 := strconv.ParseInt(f[len(f)-1], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("bad workload command %q", cmd)
	}
	return off, n
}

// workload returns qemu-io commands for a node of the given size: aligned
// and unaligned writes, writes across granule and word boundaries, the
// first and last bytes, zero writes, and seeded random ranges.
func workload(size int64, seed uint64, extra ...string) []string {
	var cmds []string
	add := func(verb string, off, n int64) {
		if off < 0 || n <= 0 || off >= size {
			return
		}
		n = min(n, size-off)
		cmds = append(cmds, fmt.Sprintf("%s %d %d", verb, off, n))
	}
	add("write", 0, 512)
	add("write", 100001, 3333)
	add("write", 65535, 2)
	add("write", 64*65536-1, 2) // across a word boundary at 64 KiB
	add("write", 63*4096+10, 8192)
	add("write -z", 1<<20, 4096)
	add("write -z", 3<<20+1, 70000)
	add("write", size/2-700, 1400)
	add("write", size-1, 1)
	add("write", size-600, 100)
	rng := rand.New(rand.NewPCG(seed, 5))
	for range 20 {
		off := rng.Int64N(size)
		if rng.IntN(2) == 0 {
			off &^= 511
		}
		add("write", off, 1+rng.Int64N(min(size/8, 1<<20)))
	}
	return append(cmds, extra...)
}

var qsdGranularities = []uint64{512, 4096, 65536, 1 << 20}

func bitmapName(g uint64) string { return fmt.Sprintf("g%d", g) }

// compareWithQSD checks every bitmap against QSD's view of it.
func compareWithQSD(t *testing.T, q *qsd, ours map[string]*Bitmap, what string) {
	t.Helper()
	for name, b := range ours {
		sha, count, gran := q.bitmapState(name)
		if gran != b.Granularity() {
			t.Errorf("%s: %s: QSD granularity %d, ours %d", what, name, gran, b.Granularity())
		}
		if count != b.Count() || sha != b.SHA256() {
			t.Errorf("%s: %s: QSD count %d sha256 %s; ours count %d sha256 %s",
				what, name, count, sha, b.Count(), b.SHA256())
		}
	}
}

// TestQSDDifferential writes the same workload into QSD nodes with bitmaps
// and into our Bitmaps, then compares sha256 and count; then merges across
// granularities and clears, and compares again.
func TestQSDDifferential(t *testing.T) {
	for _, c := range []struct {
		name     string
		size     int64
		blockdev []string
		extra    []string // more qemu-io commands
	}{
		{name: "null-1MiB+512", size: 1<<20 + 512,
			blockdev: []string{"null-co,node-name=n0,size=1049088"}},
		{name: "null-10MiB", size: 10 << 20,
			blockdev: []string{"null-co,node-name=n0,size=10485760"}},
		{name: "null-4GiB", size: 4 << 30,
			blockdev: []string{"null-co,node-name=n0,size=4294967296"},
			extra:    []string{"write 3221225472 1048576", "write 4294966784 512", "write 2147483136 1024"}},
		// A raw file node with discard=unmap: discards dirty the bitmap too.
		{name: "raw-file-5MiB+1536", size: 5<<20 + 1536,
			blockdev: []string{
				"file,node-name=f0,filename=DIR/disk.img,discard=unmap",
				"raw,node-name=n0,file=f0,discard=unmap"},
			extra: []string{"discard 1048576 65536", "discard 4096 4096", "discard 2097152 3000"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			q := startQSDWithImage(t, c.size, c.blockdev...)
			ours := map[string]*Bitmap{}
			for _, g := range qsdGranularities {
				q.ok("block-dirty-bitmap-add", map[string]any{"node": "n0", "name": bitmapName(g), "granularity": g})
				b, err := New(c.size, g)
				if err != nil {
					t.Fatal(err)
				}
				ours[bitmapName(g)] = b
			}
			// No granularity: QEMU's default for a node without clusters.
			q.ok("block-dirty-bitmap-add", map[string]any{"node": "n0", "name": "def"})
			def, _ := New(c.size, DefaultGranularity(0))
			ours["def"] = def
			compareWithQSD(t, q, ours, "empty")

			cmds := workload(c.size, uint64(c.size), c.extra...)
			q.qemuIO(cmds)
			for _, cmd := range cmds {
				off, n := ioRange(t, cmd)
				for _, b := range ours {
					b.Set(off, n)
				}
			}
			compareWithQSD(t, q, ours, "after writes")

			// Merges across granularities, both directions.
			for _, m := range [][2]string{{"g1048576", "g512"}, {"g512", "g65536"}, {"def", "g4096"}} {
				q.ok("block-dirty-bitmap-merge", map[string]any{"node": "n0", "target": m[0], "bitmaps": []any{m[1]}})
				if err := ours[m[0]].Merge(ours[m[1]]); err != nil {
					t.Fatal(err)
				}
			}
			compareWithQSD(t, q, ours, "after merges")

			q.ok("block-dirty-bitmap-clear", map[string]any{"node": "n0", "name": "g4096"})
			ours["g4096"].Clear()
			q.qemuIO([]string{"write 4096 4096", fmt.Sprintf("write %d 1", c.size-1)})
			for _, b := range ours {
				b.Set(4096, 4096)
				b.Set(c.size-1, 1)
			}
			compareWithQSD(t, q, ours, "after clear and writes")
		})
	}
}

// startQSDWithImage creates DIR/disk.img of the given size for specs that
// name it, then starts QSD.
func startQSDWithImage(t *testing.T, size int64, blockdevs ...string) *qsd {
	t.Helper()
	uses := false
	for _, b := range blockdevs {
		uses = uses || strings.Contains(b, "DIR/disk.img")
	}
	if !uses {
		return startQSD(t, blockdevs...)
	}
	dir, err := os.MkdirTemp("", "bmi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	specs := make([]string, len(blockdevs))
	for i, b := range blockdevs {
		specs[i] = strings.ReplaceAll(b, "DIR/disk.img", img)
	}
	return startQSD(t, specs...)
}

// TestQSDMergeSizes checks the merge error of bitmaps of different sizes
// against QSD's.
func TestQSDMergeSizes(t *testing.T) {
	q := startQSD(t, "null-co,node-name=n0,size=1049088", "null-co,node-name=n1,size=2097152")
	q.ok("block-dirty-bitmap-add", map[string]any{"node": "n0", "name": "a"})
	q.ok("block-dirty-bitmap-add", map[string]any{"node": "n1", "name": "b", "granularity": 512})
	_, want := q.exec("block-dirty-bitmap-merge", map[string]any{"node": "n1", "target": "b",
		"bitmaps": []any{map[string]any{"node": "n0", "name": "a"}}})
	a, _ := New(1049088, 65536)
	b, _ := New(2097152, 512)
	err := b.Merge(a)
	if err == nil || err.Error() != want {
		t.Errorf("merge error %v, QSD's %q", err, want)
	}
	_, want = q.exec("block-dirty-bitmap-add", map[string]any{"node": "n0", "name": "c", "granularity": 1000})
	if _, err := New(1049088, 1000); err == nil || err.Error() != want {
		t.Errorf("granularity error %v, QSD's %q", err, want)
	}
}
