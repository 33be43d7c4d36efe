package qcow2_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
)

// A fresh 64 MiB image with one data cluster: header, refcount table
// (0x10000), refcount block (0x20000), L1 (0x30000), L2 (0x40000), data.
func overlapImage(t *testing.T) string {
	dir := t.TempDir()
	img := qemuImgCreate(t, dir, "o.qcow2", "64M")
	qemuIO(t, img, "write -P 0x11 0 64k")
	return img
}

// qemuCorruption runs a qemu-io command on img and returns the message
// QEMU marked the image corrupt with ("" for none).
func qemuCorruption(t *testing.T, img, cmd string) string {
	out, _ := exec.Command(tool(t, "qemu-io"), "-f", "qcow2", "-c", cmd, img).CombinedOutput()
	m := regexp.MustCompile(`Marking image as corrupt: (.*); further`).FindSubmatch(out)
	if m == nil {
		return ""
	}
	return string(m[1])
}

func copyFile(t *testing.T, src string) string {
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "copy.qcow2")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func checkOutput(t *testing.T, img string) string {
	out, _ := exec.Command(tool(t, "qemu-img"), "check", img).CombinedOutput()
	return string(out)
}

// The write paths the QMP tests do not reach (compressed writes, copy
// offload in place and into new clusters) refuse to overwrite metadata
// as QEMU does for the same write: same message, and the image left as
// QEMU leaves it.
func TestOverlapWritePaths(t *testing.T) {
	cases := []struct {
		name  string
		edits []any
		qemu  string // the qemu-io command doing the same write
		do    func(h *handle) error
	}{
		{"compressed-into-l1", []any{0x20006, byte(0), 0x20007, byte(0)}, "write -c -P 0x33 1M 64k",
			func(h *handle) error {
				return h.c.Write(context.Background(), 1<<20, pattern(64<<10, 3), blockdev.ReqCompressed)
			}},
		{"copy-in-place-over-l1", []any{0x40000, uint64(1<<63 | 0x30000)}, "write -P 0x33 0 64k",
			func(h *handle) error { return copyFrom(h, 0) }},
		{"copy-alloc-into-l1", []any{0x20006, byte(0), 0x20007, byte(0)}, "write -P 0x33 1M 64k",
			func(h *handle) error { return copyFrom(h, 1<<20) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := patch(t, overlapImage(t), tc.edits...)
			q := copyFile(t, p)
			want := qemuCorruption(t, q, tc.qemu)
			if want == "" {
				t.Fatal("qemu-io did not mark the image corrupt")
			}
			h := open(t, p, false)
			var msgs []string
			h.drv.OnCorrupt(func(msg string, off, size int64, fatal bool) { msgs = append(msgs, msg) })
			if err := tc.do(h); !errors.Is(err, syscall.EIO) {
				t.Fatalf("write: %v", err)
			}
			if err := h.c.Read(context.Background(), 0, make([]byte, 512)); !errors.Is(err, syscall.ENOMEDIUM) {
				t.Fatalf("read after: %v", err)
			}
			h.close(t)
			if len(msgs) != 1 || msgs[0] != want {
				t.Fatalf("corruption %q, QEMU: %q", msgs, want)
			}
			if o, w := checkOutput(t, p), checkOutput(t, q); o != w {
				t.Fatalf("qemu-img check differs\nours:\n%s\nQEMU:\n%s", o, w)
			}
		})
	}
}

// copyFrom writes one cluster at off by copy offload from a file.
func copyFrom(h *handle, off int64) error {
	f, err := os.CreateTemp("", "src")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := f.Write(pattern(64<<10, 3)); err != nil {
		return err
	}
	return h.drv.WriteFromFile(context.Background(), off, 64<<10, int(f.Fd()), 0)
}
