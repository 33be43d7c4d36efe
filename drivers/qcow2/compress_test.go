package qcow2_test

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
)

// Compressed writes (backup's compress): clusters that compress well are
// packed several to a host cluster, some running on into the next one;
// data that does not compress is written as it is; the short last cluster
// of an odd-sized image is accepted; an allocated cluster or a partial
// cluster is refused. QEMU reads the image back (qemu-io, qemu-img
// compare against a raw copy of the same writes) and checks it clean.
func TestCompressedWrites(t *testing.T) {
	for _, ct := range []string{"zlib", "zstd"} {
		t.Run(ct, func(t *testing.T) {
			dir := t.TempDir()
			const size = 4<<20 + 4096 // a short last cluster
			img := qemuImgCreate(t, dir, "c.qcow2", "4100k", "-o", "compression_type="+ct)
			h := open(t, img, false)
			ctx := context.Background()
			want := make([]byte, size)
			put := func(off int64, p []byte) {
				t.Helper()
				if err := h.c.Write(ctx, off, p, blockdev.ReqCompressed); err != nil {
					t.Fatalf("compressed write at %d: %v", off, err)
				}
				copy(want[off:], p)
			}
			const cs = 64 << 10
			// Text-like clusters compress to a few KiB each: several share
			// a host cluster, and some run over into the next.
			for i := int64(0); i < 40; i++ {
				p := []byte(strings.Repeat("qbmond compressed cluster "+string(rune('A'+i%26))+" ", cs/28+1))[:cs]
				rand.Read(p[:2000]) // some entropy, so that sizes vary
				put(i*cs, p)
			}
			noise := make([]byte, cs)
			rand.Read(noise)
			put(50*cs, noise) // does not compress: a normal cluster
			put(64*cs, pattern(4096, 7))
			if err := h.c.Write(ctx, 0, make([]byte, cs), blockdev.ReqCompressed); !errors.Is(err, syscall.EIO) {
				t.Errorf("compressed write over an allocated cluster: %v, want EIO", err)
			}
			if err := h.c.Write(ctx, 60*cs, make([]byte, 512), blockdev.ReqCompressed); err == nil {
				t.Errorf("a partial compressed cluster was accepted")
			}
			equalBytes(t, "read back", h.readAll(t), want)
			h.close(t)
			checkClean(t, img)
			if out := compareRaw(t, dir, img, want); !strings.Contains(out, "identical") {
				t.Fatalf("qemu-img compare: %s", out)
			}
			out := run(t, "qemu-img", "check", img)
			if !strings.Contains(out, "compressed clusters") {
				t.Fatalf("qemu-img check shows no compressed clusters: %s", out)
			}
		})
	}
}
