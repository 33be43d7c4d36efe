package qcow2_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
	_ "github.com/qbmond/qbmond/drivers/file"
	"github.com/qbmond/qbmond/drivers/qcow2"
	_ "github.com/qbmond/qbmond/drivers/raw"
)

// tool finds an external referee; a missing one fails the test unless
// QBMOND_ALLOW_MISSING_TOOLS=1.
func tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("QBMOND_ALLOW_MISSING_TOOLS") == "1" {
			t.Skipf("%s not installed", name)
		}
		t.Fatalf("%s not installed (set QBMOND_ALLOW_MISSING_TOOLS=1 to skip): %v", name, err)
	}
	return p
}

// run runs a command and returns its combined output, failing on error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(tool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// compareRaw has qemu-img compare the qcow2 image img with content, put
// in dir/ref.raw; a difference fails the test. It returns what qemu-img
// printed.
func compareRaw(t testing.TB, dir, img string, content []byte) string {
	t.Helper()
	ref := filepath.Join(dir, "ref.raw")
	if err := os.WriteFile(ref, content, 0o600); err != nil {
		t.Fatal(err)
	}
	return run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", img, ref)
}

// qemuImgCreate makes an image with qemu-img create -f qcow2.
func qemuImgCreate(t testing.TB, dir, name string, size string, opts ...string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	args := append([]string{"create", "-q", "-f", "qcow2"}, opts...)
	run(t, "qemu-img", append(args, p, size)...)
	return p
}

// qemuIO runs qemu-io commands on a qcow2 image.
func qemuIO(t testing.TB, img string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := run(t, "qemu-io", append(args, img)...)
	if strings.Contains(out, "failed") {
		t.Fatalf("qemu-io: %s", out)
	}
}

// checkClean runs qemu-img check and fails on errors or leaks.
func checkClean(t testing.TB, img string) {
	t.Helper()
	out, err := exec.Command(tool(t, "qemu-img"), "check", "-f", "qcow2", "--output=json", img).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img check %s: %v\n%s", img, err, out)
	}
	var r map[string]any
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("qemu-img check output: %v\n%s", err, out)
	}
	for _, k := range []string{"leaks", "corruptions", "check-errors", "leaks-fixed", "corruptions-fixed"} {
		if v, ok := r[k]; ok && v != float64(0) {
			t.Fatalf("qemu-img check %s: %s = %v\n%s", img, k, v, out)
		}
	}
}

// rawContent converts an image to raw with qemu-img and returns the bytes.
func rawContent(t testing.TB, img string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "content.raw")
	run(t, "qemu-img", "convert", "-O", "raw", img, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// handle is an open qcow2 node in its own graph.
type handle struct {
	g   *blockdev.Graph
	n   *blockdev.Node
	c   *blockdev.Child
	drv *qcow2.Driver
}

func (h *handle) close(t testing.TB) {
	if h.g == nil {
		return
	}
	t.Helper()
	if err := h.g.Close(); err != nil {
		t.Fatalf("closing: %v", err)
	}
	h.g = nil
}

// openOpts opens a node from options; the graph closes at the end of the
// test unless closed before.
func openOpts(t testing.TB, o blockdev.Options, perm blockdev.Perm) (*handle, error) {
	t.Helper()
	g := blockdev.NewGraph(zerolog.Nop())
	if !o.Has("node-name") {
		o["node-name"] = "q"
	}
	lk, unlock := drivertest.Lock(g)
	n, err := lk.Add(context.Background(), o)
	if err != nil {
		unlock()
		g.Close()
		return nil, err
	}
	c, err := lk.AttachRoot(n, "block device 'test'", perm, blockdev.PermAll)
	unlock()
	if err != nil {
		g.Close()
		return nil, err
	}
	h := &handle{g: g, n: n, c: c}
	h.drv, _ = n.Driver().(*qcow2.Driver)
	t.Cleanup(func() { h.close(t) })
	return h, nil
}

func qcowOpts(img string) blockdev.Options {
	return blockdev.Options{"driver": "qcow2", "file": map[string]any{"driver": "file", "filename": img}}
}

// open opens img read-write (or read-only) and fails the test on error.
func open(t testing.TB, img string, ro bool, extra ...any) *handle {
	t.Helper()
	o := qcowOpts(img)
	perm := drivertest.RootPerm
	if ro {
		o["read-only"] = true
		perm = blockdev.PermConsistentRead
	}
	for i := 0; i+1 < len(extra); i += 2 {
		o[extra[i].(string)] = extra[i+1]
	}
	h, err := openOpts(t, o, perm)
	if err != nil {
		t.Fatalf("open %s: %v", img, err)
	}
	return h
}

// readAll reads the whole disk through the driver.
func (h *handle) readAll(t testing.TB) []byte {
	t.Helper()
	b := make([]byte, h.n.Length())
	if err := h.c.Read(context.Background(), 0, b); err != nil {
		t.Fatalf("read: %v", err)
	}
	return b
}

// createImage runs our blockdev-create into a new file and returns its path.
func createImage(t testing.TB, opts blockdev.Options) (string, error) {
	t.Helper()
	p := drivertest.Image(t, 0)
	g := blockdev.NewGraph(zerolog.Nop())
	defer g.Close()
	o := opts.Clone()
	o["file"] = map[string]any{"driver": "file", "filename": p}
	return p, g.Create(context.Background(), "qcow2", o, "job 'test'")
}

func mustCreate(t testing.TB, opts blockdev.Options) string {
	t.Helper()
	p, err := createImage(t, opts)
	if err != nil {
		t.Fatalf("create %v: %v", opts, err)
	}
	return p
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

func equalBytes(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := firstDiff(got, want)
		t.Fatalf("%s: differs at byte %d (len %d vs %d)", what, i, len(got), len(want))
	}
}

// pattern is deterministic test data.
func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*13+i/509)
	}
	return p
}
