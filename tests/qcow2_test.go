package tests

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// exportNode starts a daemon of kind k in dir with the node opts (named
// "n0") exported on dir/nbd.sock; it returns the daemon, a QMP client and
// the export's URI.
func exportNode(t *testing.T, k kind, dir string, opts map[string]any, writable, depth bool) (*daemon, *client, string) {
	t.Helper()
	d := startDaemon(t, k, dir)
	c := d.connect()
	opts["node-name"] = "n0"
	c.ok("blockdev-add", opts)
	sock := filepath.Join(dir, "nbd.sock")
	c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	exp := map[string]any{"type": "nbd", "id": "e0", "node-name": "n0", "writable": writable}
	if depth {
		exp["allocation-depth"] = true
	}
	c.ok("block-export-add", exp)
	return d, c, "nbd+unix:///n0?socket=" + sock
}

func qcow2Node(path string) map[string]any {
	return map[string]any{"driver": "qcow2", "file": map[string]any{"driver": "file", "filename": path}}
}

// sh runs a shell script in dir and fails the test on error.
func sh(t *testing.T, dir, script string) string {
	t.Helper()
	requireTool(t, "qemu-img")
	requireTool(t, "qemu-io")
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

func identical(t *testing.T, a, b string, extra ...string) {
	t.Helper()
	args := append([]string{"compare", "-U"}, extra...)
	out := run(t, "qemu-img", append(args, a, b)...)
	if !strings.Contains(out, "Images are identical") {
		t.Fatalf("qemu-img compare %s %s: %s", a, b, out)
	}
}

// checkClean runs qemu-img check and fails on errors, and on leaks unless
// leaksOK. It returns qemu-img's exit code (0 clean, 3 leaks only).
func checkClean(t *testing.T, img string, leaksOK bool) int {
	t.Helper()
	out, err := exec.Command(requireTool(t, "qemu-img"), "check", img).CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	switch {
	case code == 0 && strings.Contains(string(out), "No errors were found on the image."):
	case code == 3 && leaksOK:
	default:
		t.Fatalf("qemu-img check %s: exit %d\n%s", img, code, out)
	}
	return code
}

// A chain made by qemu-img and qemu-io (raw base, v2 qcow2 with small
// clusters, v3 qcow2 with zero clusters and a longer virtual size) reads
// through a qbmond export as qemu-img reads the chain itself, and the
// export's allocation maps equal QSD's.
func TestQcow2ChainReadsLikeQemu(t *testing.T) {
	script := `
qemu-img create -q -f raw base.raw 4M
qemu-io -f raw -c 'write -P 0x11 0 1M' -c 'write -P 0x12 3M 64k' base.raw >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4096 -b base.raw -F raw mid.qcow2 4M
qemu-io -f qcow2 -c 'write -P 0x21 512k 1M' -c 'write -P 0x22 100000 3000' mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 6M
qemu-io -f qcow2 -c 'write -P 0x31 1M 64k' -c 'write -z 2M 128k' -c 'write -P 0x32 5M 4k' -c 'write -P 0x33 65535 2' top.qcow2 >/dev/null
`
	maps := map[kind]string{}
	for _, k := range []kind{kindQSD, kindQbmond} {
		dir := shortTempDir(t)
		sh(t, dir, script)
		d, _, uri := exportNode(t, k, dir, qcow2Node(filepath.Join(dir, "top.qcow2")), false, true)
		if k == kindQbmond {
			identical(t, uri, filepath.Join(dir, "top.qcow2"), "-f", "raw", "-F", "qcow2")
		}
		maps[k] = run(t, "nbdinfo", "--map", uri) + run(t, "nbdinfo", "--map=qemu:allocation-depth", uri)
		d.stop()
	}
	if maps[kindQSD] != maps[kindQbmond] {
		t.Fatalf("maps differ\nQSD:\n%s\nqbmond:\n%s", maps[kindQSD], maps[kindQbmond])
	}
}

// Compressed images from qemu-img convert -c, zlib and zstd, read back
// equal to their source.
func TestQcow2CompressedReads(t *testing.T) {
	for _, ct := range []string{"zlib", "zstd"} {
		t.Run(ct, func(t *testing.T) {
			dir := shortTempDir(t)
			sh(t, dir, fmt.Sprintf(`
qemu-img create -q -f raw src.raw 2M
qemu-io -f raw -c 'write -P 0x41 0 300k' -c 'write -P 0x42 1M 64k' -c 'write -P 0x43 1900k 100k' src.raw >/dev/null
qemu-img convert -c -O qcow2 -o compression_type=%s src.raw comp.qcow2
`, ct))
			_, _, uri := exportNode(t, kindQbmond, dir, qcow2Node(filepath.Join(dir, "comp.qcow2")), false, false)
			identical(t, uri, filepath.Join(dir, "src.raw"), "-f", "raw", "-F", "raw")
		})
	}
}

// qcow2Workload writes and zeroes at aligned and unaligned offsets and
// across cluster boundaries (no discards: the reference file would
// punch holes where the export's node ignores them).
var qcow2Workload = append(slices.Clip(mixedWrites),
	"write -z 3000000 100",
	"write -z 2m 1m",
	"write -P 0x55 4194303 1",
	"read -P 0 1m 4k",
	"flush",
)

// Writes through a qbmond export of a qcow2 image leave an image that
// qemu-img check finds clean and that equals a raw file given the same
// writes; QSD then reads the same bytes from it.
func TestQcow2WritesCheckClean(t *testing.T) {
	for _, tc := range []struct{ name, create string }{
		{"v3", "qemu-img create -q -f qcow2 img.qcow2 4M"},
		{"v2-small-clusters", "qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 img.qcow2 4M"},
		{"big-clusters", "qemu-img create -q -f qcow2 -o cluster_size=2M img.qcow2 4M"},
		{"backing", `qemu-img create -q -f raw base.raw 4M
qemu-io -f raw -c 'write -P 0x77 0 4M' base.raw >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw img.qcow2 4M`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := shortTempDir(t)
			img, ref := filepath.Join(dir, "img.qcow2"), filepath.Join(dir, "ref.raw")
			sh(t, dir, tc.create+"\nqemu-img convert -O raw img.qcow2 ref.raw")
			d, c, uri := exportNode(t, kindQbmond, dir, qcow2Node(img), true, false)
			qemuIO(t, uri, qcow2Workload)
			qemuIO(t, ref, qcow2Workload)
			identical(t, uri, ref, "-f", "raw", "-F", "raw")
			c.cmd("quit", nil)
			if err := d.waitExit(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			checkClean(t, img, false)
			identical(t, img, ref, "-f", "qcow2", "-F", "raw")
			qd, _, quri := exportNode(t, kindQSD, shortTempDir(t), qcow2Node(img), false, false)
			identical(t, quri, ref, "-f", "raw", "-F", "raw")
			qd.stop()
		})
	}
}

// A qbmond killed in the middle of a random write workload leaves an image
// with no corruption (leaks allowed); with lazy refcounts the next
// read-write open repairs the leaks the dirty bit announces.
func TestQcow2KillDuringWrites(t *testing.T) {
	for _, lazy := range []bool{false, true} {
		t.Run(fmt.Sprintf("lazy=%v", lazy), func(t *testing.T) {
			dir := shortTempDir(t)
			img := filepath.Join(dir, "img.qcow2")
			sh(t, dir, fmt.Sprintf("qemu-img create -q -f qcow2 -o cluster_size=4096,lazy_refcounts=%v img.qcow2 16M", map[bool]string{false: "off", true: "on"}[lazy]))
			d, c, uri := exportNode(t, kindQbmond, dir, qcow2Node(img), true, false)
			r := rand.New(rand.NewPCG(1, uint64(len(dir))))
			args := []string{"-f", "raw"}
			for i := 0; i < 400; i++ {
				args = append(args, "-c", fmt.Sprintf("write -P %d %d %d", i%250+1, r.IntN(16<<10)*1024, (r.IntN(16)+1)*4096))
			}
			io := exec.Command(requireTool(t, "qemu-io"), append(args, uri)...)
			if err := io.Start(); err != nil {
				t.Fatal(err)
			}
			// Kill once part of the workload has arrived.
			for i := 0; ; i++ {
				if writes(t, c, "n0") >= 50 || i > 2000 {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			d.kill()
			io.Wait()
			checkClean(t, img, true)
			d2, c2, _ := exportNode(t, kindQbmond, dir, qcow2Node(img), true, false)
			c2.cmd("quit", nil)
			if err := d2.waitExit(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			checkClean(t, img, !lazy)
		})
	}
}

// writes returns the node's completed write operations.
func writes(t *testing.T, c *client, node string) int {
	t.Helper()
	for _, s := range c.ok("query-blockstats", map[string]any{"query-nodes": true}).([]any) {
		m := s.(map[string]any)
		if m["node-name"] == node {
			var n int
			fmt.Sscan(fmt.Sprint(m["stats"].(map[string]any)["wr_operations"]), &n)
			return n
		}
	}
	return 0
}

var actualSize = regexp.MustCompile(`\s*"actual-size": \d+,`)

// runCreate runs blockdev-create and waits for the job to conclude; it
// returns the job's error ("" on success) after dismissing it.
func runCreate(t *testing.T, c *client, id string, opts map[string]any) string {
	t.Helper()
	c.ok("blockdev-create", map[string]any{"job-id": id, "options": opts})
	for i := 0; ; i++ {
		for _, j := range c.ok("query-jobs", nil).([]any) {
			m := j.(map[string]any)
			if m["id"] == id && m["status"] == "concluded" {
				c.ok("job-dismiss", map[string]any{"id": id})
				e, _ := m["error"].(string)
				return e
			}
		}
		if i > 3000 {
			t.Fatalf("job %s did not conclude", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Images made with blockdev-create look to qemu-img exactly like QSD's,
// for several option sets; qbmond's then take writes through an export
// and stay clean.
func TestQcow2CreateLikeQSD(t *testing.T) {
	cases := []map[string]any{
		{"size": 4 << 20},
		{"size": 4 << 20, "version": "v2", "cluster-size": 4096},
		{"size": 4 << 20, "lazy-refcounts": true, "refcount-bits": 8},
		{"size": 6 << 20, "backing-file": "base.raw", "backing-fmt": "raw", "cluster-size": 2 << 20},
		{"size": 4 << 20, "preallocation": "metadata", "compression-type": "zstd"},
	}
	infos := map[kind][]string{}
	for _, k := range []kind{kindQSD, kindQbmond} {
		dir := shortTempDir(t)
		sh(t, dir, "qemu-img create -q -f raw base.raw 4M")
		d := startDaemon(t, k, dir)
		c := d.connect()
		for i, o := range cases {
			img := filepath.Join(dir, fmt.Sprintf("img%d.qcow2", i))
			if e := runCreate(t, c, fmt.Sprintf("f%d", i), map[string]any{"driver": "file", "filename": img, "size": 0}); e != "" {
				t.Fatalf("%s: file create: %s", k, e)
			}
			node := fmt.Sprintf("f%d", i)
			c.ok("blockdev-add", map[string]any{"driver": "file", "node-name": node, "filename": img})
			opts := map[string]any{"driver": "qcow2", "file": node}
			for key, v := range o {
				opts[key] = v
			}
			if e := runCreate(t, c, fmt.Sprintf("q%d", i), opts); e != "" {
				t.Fatalf("%s: qcow2 create %v: %s", k, o, e)
			}
			c.ok("blockdev-del", map[string]any{"node-name": node})
			info := run(t, "qemu-img", "info", "-U", "--output=json", img)
			// actual-size is how much the file system allocated, which
			// depends on write sizes, not on the image.
			info = actualSize.ReplaceAllString(info, "")
			infos[k] = append(infos[k], strings.ReplaceAll(info, dir, "DIR"))
		}
		d.stop()
		if k == kindQbmond {
			img := filepath.Join(dir, "img0.qcow2")
			d2, c2, uri := exportNode(t, k, shortTempDir(t), qcow2Node(img), true, false)
			qemuIO(t, uri, qcow2Workload)
			c2.cmd("quit", nil)
			if err := d2.waitExit(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			checkClean(t, img, false)
		}
	}
	for i := range cases {
		if infos[kindQSD][i] != infos[kindQbmond][i] {
			t.Errorf("qemu-img info after create %v:\nQSD:\n%s\nqbmond:\n%s", cases[i], infos[kindQSD][i], infos[kindQbmond][i])
		}
	}
}
