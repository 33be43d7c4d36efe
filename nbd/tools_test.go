package nbd

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// tool runs an installed client; a missing tool fails the test.
func tool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is required for this test: %v", name, err)
	}
	out, err := exec.CommandContext(t.Context(), path, args...).CombinedOutput()
	return string(out), err
}

func uri(sock, export string) string { return "nbd+unix:///" + export + "?socket=" + sock }

func TestQemuIO(t *testing.T) {
	m := newMem(8 << 20)
	_, sock := startServer(t, &Export{Name: "disk", Backend: m, Writable: true})
	out, err := tool(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 0 64k",
		"-c", "write -P 0xcd 1000 3000",
		"-c", "write -P 0xef 1048575 4099",
		"-c", "write -z 2M 1M",
		"-c", "write -f -P 0x11 4M 64k", // FUA
		"-c", "discard 6M 64k",
		"-c", "flush",
		"-c", "read -P 0xab 0 1000",
		"-c", "read -P 0xcd 1000 3000",
		"-c", "read -P 0xab 4000 61536",
		"-c", "read -P 0xef 1048575 4099",
		"-c", "read -P 0 2M 1M",
		"-c", "read -P 0x11 4M 64k",
		uri(sock, "disk"))
	if err != nil || strings.Contains(out, "fail") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	check := func(off, n int64, b byte) {
		t.Helper()
		if got := m.snapshot(off, n); !bytes.Equal(got, bytes.Repeat([]byte{b}, int(n))) {
			t.Errorf("backend [%d,+%d) is not %#x", off, n, b)
		}
	}
	check(0, 1000, 0xab)
	check(1000, 3000, 0xcd)
	check(4000, 65536-4000, 0xab)
	check(65536, 1048575-65536, 0)
	check(1048575, 4099, 0xef)
	check(2<<20, 1<<20, 0)
	check(4<<20, 64<<10, 0x11)
	if m.flushes == 0 {
		t.Error("no flush reached the backend")
	}
}

func TestQemuIOReadOnly(t *testing.T) {
	m := newMem(1 << 20)
	_, sock := startServer(t, &Export{Name: "ro", Backend: m})
	out, err := tool(t, "qemu-io", "-f", "raw", "-c", "write -P 0xab 0 4k", uri(sock, "ro"))
	t.Logf("qemu-io on read-only export: %v\n%s", err, out)
	if !strings.Contains(out, "ermission") && !strings.Contains(out, "read-only") && !strings.Contains(out, "read only") {
		t.Fatalf("write to a read-only export did not fail: %v\n%s", err, out)
	}
	if !bytes.Equal(m.snapshot(0, 4096), make([]byte, 4096)) {
		t.Fatal("read-only export was written")
	}
	// Reading works.
	if out, err := tool(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0 0 64k", uri(sock, "ro")); err != nil || strings.Contains(out, "fail") {
		t.Fatalf("read: %v\n%s", err, out)
	}
}

func TestQemuImgCompareAndConvert(t *testing.T) {
	m := newMem(4 << 20)
	ctx := t.Context()
	m.WriteAt(ctx, bytes.Repeat([]byte("qbmond"), 20000), 12345, false)
	m.WriteAt(ctx, bytes.Repeat([]byte{7}, 4096), 3<<20, false)
	_, sock := startServer(t, &Export{Name: "img", Backend: m, Writable: true})
	dir := t.TempDir()
	file := filepath.Join(dir, "copy.raw")
	if out, err := tool(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri(sock, "img"), file); err != nil {
		t.Fatalf("convert: %v\n%s", err, out)
	}
	got, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, m.snapshot(0, 4<<20)) {
		t.Fatal("converted image differs from the export")
	}
	if out, err := tool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", file, uri(sock, "img")); err != nil {
		t.Fatalf("compare: %v\n%s", err, out)
	}
	got[3<<20+10] ^= 1
	if err := os.WriteFile(file, got, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := tool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", file, uri(sock, "img")); err == nil {
		t.Fatalf("compare of different images succeeded:\n%s", out)
	}
	// And back in: convert the file onto the export.
	if out, err := tool(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", file, uri(sock, "img")); err != nil {
		t.Fatalf("convert to export: %v\n%s", err, out)
	}
	if !bytes.Equal(got, m.snapshot(0, 4<<20)) {
		t.Fatal("export differs from the converted file")
	}
}

// mapLines runs nbdinfo --map and returns "offset length type" triples.
func mapLines(t *testing.T, args ...string) []string {
	t.Helper()
	out, err := tool(t, "nbdinfo", args...)
	if err != nil {
		t.Fatalf("nbdinfo %q: %v\n%s", args, err, out)
	}
	var lines []string
	for l := range strings.Lines(out) {
		f := strings.Fields(l)
		if len(f) >= 3 {
			lines = append(lines, strings.Join(f[:3], " "))
		}
	}
	return lines
}

func TestNbdinfo(t *testing.T) {
	m := newMem(2 << 20)
	ctx := t.Context()
	m.WriteAt(ctx, bytes.Repeat([]byte{1}, 65536), 65536, false)
	m.WriteAt(ctx, []byte{2}, 1<<20, false)
	_, sock := startServer(t,
		&Export{Name: "sparse", Description: "a sparse disk", Backend: m, Writable: true, AllocationDepth: true},
		&Export{Name: "other", Backend: newMem(4096)})

	want := []string{"0 65536 3", "65536 65536 0", "131072 917504 3", "1048576 4096 0", "1052672 1044480 3"}
	if got := mapLines(t, "--map", uri(sock, "sparse")); !slices.Equal(got, want) {
		t.Errorf("map = %q, want %q", got, want)
	}
	want = []string{"0 65536 0", "65536 65536 1", "131072 917504 0", "1048576 4096 1", "1052672 1044480 0"}
	if got := mapLines(t, "--map=qemu:allocation-depth", uri(sock, "sparse")); !slices.Equal(got, want) {
		t.Errorf("allocation depth map = %q, want %q", got, want)
	}

	out, err := tool(t, "nbdinfo", "--list", "--json", "nbd+unix://?socket="+sock)
	if err != nil {
		t.Fatalf("nbdinfo --list: %v\n%s", err, out)
	}
	var list struct {
		Exports []struct {
			Name        string `json:"export-name"`
			Description string `json:"description"`
			Size        int64  `json:"export-size"`
			ReadOnly    bool   `json:"is_read_only"`
			MultiConn   bool   `json:"can_multi_conn"`
			Contexts    []string
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(list.Exports) != 2 {
		t.Fatalf("exports %+v", list.Exports)
	}
	e := list.Exports[0]
	if e.Name != "sparse" || e.Description != "a sparse disk" || e.Size != 2<<20 || e.ReadOnly || !e.MultiConn {
		t.Errorf("first export %+v", e)
	}
	if o := list.Exports[1]; o.Name != "other" || !o.ReadOnly || o.Size != 4096 {
		t.Errorf("second export %+v", o)
	}

	out, err = tool(t, "nbdinfo", "--json", uri(sock, "sparse"))
	if err != nil {
		t.Fatalf("nbdinfo: %v\n%s", err, out)
	}
	for _, s := range []string{`"base:allocation"`, `"qemu:allocation-depth"`, `"block_size_preferred": 4096`, `"can_fast_zero": true`, `"can_cache": true`, `"can_df": true`} {
		if !strings.Contains(out, s) {
			t.Errorf("nbdinfo output lacks %s:\n%s", s, out)
		}
	}
	// An unknown export is an error.
	if out, err := tool(t, "nbdinfo", uri(sock, "nope")); err == nil {
		t.Errorf("nbdinfo of an unknown export succeeded:\n%s", out)
	}
}
