package tests

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// exportDisk starts a daemon of kind k with a raw node d0 over dir/disk.img
// and an NBD export of it on dir/nbd.sock; it returns the export's URI.
func exportDisk(t *testing.T, k kind, dir string, writable bool) (*daemon, *client, string) {
	t.Helper()
	d := startDaemon(t, k, dir)
	c := d.connect()
	c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "d0",
		"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "disk.img")}})
	sock := filepath.Join(dir, "nbd.sock")
	c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	c.ok("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "d0", "writable": writable})
	return d, c, "nbd+unix:///d0?socket=" + sock
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(requireTool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func sparseImage(t *testing.T, dir string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

// qemuIOWorkload writes patterns at aligned and unaligned offsets,
// zeroes and discards, then reads everything back with pattern checks.
var qemuIOWorkload = []string{
	"write -P 0xab 0 64k",
	"write -P 0xcd 100001 3333",
	"write -P 0x11 1m 1m",
	"write -z 1m 4k",
	"write -P 0x22 3m 512",
	"discard 1536k 64k",
	"read -P 0xab 0 64k",
	"read -P 0xcd 100001 3333",
	"read -P 0 1m 4k",
	"read -P 0x11 1052672 512k",
	"read -P 0x22 3m 512",
	"flush",
}

func qemuIO(t *testing.T, uri string, cmds []string, extra ...string) string {
	args := append([]string{"-f", "raw"}, extra...)
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := run(t, "qemu-io", append(args, uri)...)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed:") {
		t.Fatalf("qemu-io: %s", out)
	}
	return out
}

// TestNBDQemuIO writes and reads through an export with qemu-io, then
// compares the export with the file behind it using qemu-img.
func TestNBDQemuIO(t *testing.T) {
	dir := shortTempDir(t)
	img := sparseImage(t, dir, 4<<20)
	_, c, uri := exportDisk(t, kindQbmond, dir, true)
	qemuIO(t, uri, qemuIOWorkload)
	out := run(t, "qemu-img", "compare", "-U", "-f", "raw", "-F", "raw", uri, img)
	if !strings.Contains(out, "Images are identical") {
		t.Fatalf("qemu-img compare: %s", out)
	}
	// The export's I/O is counted (QSD leaves it at zero; see blockstats).
	stats := c.ok("query-blockstats", map[string]any{"query-nodes": true}).([]any)
	var found bool
	for _, s := range stats {
		m := s.(map[string]any)
		if m["node-name"] == "d0" {
			st := m["stats"].(map[string]any)
			found = true
			if st["wr_operations"] == "0" || st["rd_operations"] == "0" || st["wr_highest_offset"] == "0" {
				t.Errorf("export I/O not counted: %v", st)
			}
		}
	}
	if !found {
		t.Errorf("no stats for d0: %v", stats)
	}
}

// TestNBDMapLikeQSD runs the same qemu-io workload through a QSD export and
// a qbmond export of identical sparse files, then compares nbdinfo --map:
// the allocation must be the same, so no request wrote more than asked.
func TestNBDMapLikeQSD(t *testing.T) {
	maps := map[kind]string{}
	for _, k := range []kind{kindQSD, kindQbmond} {
		dir := shortTempDir(t)
		sparseImage(t, dir, 4<<20)
		d, _, uri := exportDisk(t, k, dir, true)
		qemuIO(t, uri, qemuIOWorkload)
		maps[k] = run(t, "nbdinfo", "--map", uri)
		d.stop()
	}
	if maps[kindQSD] != maps[kindQbmond] {
		t.Fatalf("nbdinfo --map differs\nQSD:\n%s\nqbmond:\n%s", maps[kindQSD], maps[kindQbmond])
	}
	if !strings.Contains(maps[kindQbmond], "hole") || !strings.Contains(maps[kindQbmond], "data") {
		t.Fatalf("map shows no holes or no data:\n%s", maps[kindQbmond])
	}
}

// TestNBDCopy moves 32 MiB in and out of an export with nbdcopy and checks
// the bytes (the 512 MiB runs are in the benchmarks).
func TestNBDCopy(t *testing.T) {
	dir := shortTempDir(t)
	sparseImage(t, dir, 32<<20)
	_, _, uri := exportDisk(t, kindQbmond, dir, true)
	src := make([]byte, 32<<20)
	rand.Read(src[:8<<20])
	copy(src[20<<20:], src[:4<<20])
	in := filepath.Join(dir, "in.raw")
	if err := os.WriteFile(in, src, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "nbdcopy", in, uri)
	outFile := filepath.Join(dir, "out.raw")
	run(t, "nbdcopy", "--connections=4", uri, outFile)
	got, err := os.ReadFile(outFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, src) {
		t.Fatal("bytes copied out differ from the bytes copied in")
	}
	info := run(t, "nbdinfo", uri)
	if !strings.Contains(info, "export-size: 33554432") || !strings.Contains(info, "can_multi_conn: true") {
		t.Errorf("nbdinfo: %s", info)
	}
}

// TestNBDReadOnly checks that a read-only export refuses writes with EPERM
// and still serves reads.
func TestNBDReadOnly(t *testing.T) {
	dir := shortTempDir(t)
	sparseImage(t, dir, 1<<20)
	_, _, uri := exportDisk(t, kindQbmond, dir, false)
	out, _ := exec.Command(requireTool(t, "qemu-io"), "-f", "raw", "-c", "write -P 1 0 4k", uri).CombinedOutput()
	if !strings.Contains(string(out), "Operation not permitted") && !strings.Contains(string(out), "Permission denied") {
		t.Fatalf("write to a read-only export: %s", out)
	}
	qemuIO(t, uri, []string{"read -P 0 0 64k"}, "-r")
	info := run(t, "nbdinfo", uri)
	if !strings.Contains(info, "is_read_only: true") || !strings.Contains(info, "can_multi_conn: true") {
		t.Errorf("nbdinfo: %s", info)
	}
}
