package qcow2_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
)

func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			return qcowOpts(mustCreate(t, blockdev.Options{"size": int64(4 << 20)}))
		},
		Stores: true,
	})
}

func TestConformanceSmallClustersWithBacking(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			base := drivertest.Image(t, 4<<20)
			img := mustCreate(t, blockdev.Options{"size": int64(4 << 20), "cluster-size": int64(4096),
				"backing-file": base, "backing-fmt": "raw"})
			return qcowOpts(img)
		},
		Stores: true,
	})
}

func TestConformanceV2(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			return qcowOpts(qemuImgCreate(t, t.TempDir(), "v2.qcow2", "4M", "-o", "compat=0.10,cluster_size=1024"))
		},
		Stores:         true,
		RefusesBitmaps: true,
	})
}

// qemu-io's writes read back through the driver as qemu-img converts them,
// for v3 and v2 images and cluster sizes from 512 bytes to 2 MiB.
func TestReadQemuWritten(t *testing.T) {
	for _, cs := range []string{"512", "4k", "64k", "2M"} {
		for _, compat := range []string{"1.1", "0.10"} {
			t.Run(cs+"/"+compat, func(t *testing.T) {
				img := qemuImgCreate(t, t.TempDir(), "a.qcow2", "5M", "-o", "cluster_size="+cs+",compat="+compat)
				qemuIO(t, img,
					"write -P 0xab 0 64k",
					"write -P 0x11 100000 3000",
					"write -P 0x22 2M 1M",
					"write -z 2200k 64k",
					"write -P 0x33 4194304 1000",
					"discard 2M 4k",
				)
				h := open(t, img, true)
				equalBytes(t, "content", h.readAll(t), rawContent(t, img))
			})
		}
	}
}

// An overlay over a qcow2 base reads unallocated clusters from the base,
// and zeroes past a shorter base's end.
func TestReadBackingChain(t *testing.T) {
	dir := t.TempDir()
	base := qemuImgCreate(t, dir, "base.qcow2", "3M")
	qemuIO(t, base, "write -P 0x44 0 3M")
	top := qemuImgCreate(t, dir, "top.qcow2", "4M", "-b", "base.qcow2", "-F", "qcow2", "-o", "cluster_size=4k")
	qemuIO(t, top, "write -P 0x55 1000 10000", "write -z 1M 64k", "write -P 0x66 3145000 2000")
	h := open(t, top, true)
	equalBytes(t, "chain content", h.readAll(t), rawContent(t, top))

	// Block status: this layer's clusters only.
	ctx := context.Background()
	st, err := h.c.BlockStatus(ctx, 0, 4096)
	if err != nil || st.Flags != blockdev.StatusData|blockdev.StatusAllocated {
		t.Fatalf("written cluster: %+v %v", st, err)
	}
	st, err = h.c.BlockStatus(ctx, 1<<20, 1<<20)
	if err != nil || st.Flags != blockdev.StatusZero|blockdev.StatusAllocated || st.Length != 64<<10 {
		t.Fatalf("zeroed clusters: %+v %v", st, err)
	}
	st, err = h.c.BlockStatus(ctx, 2<<20, 1<<20)
	if err != nil || st.Flags != 0 || st.Length != 3141632-2<<20 { // up to the cluster written at 3145000
		t.Fatalf("unallocated clusters: %+v %v", st, err)
	}
}

// writeOp is one request applied both through the driver and to a raw
// reference file.
type writeOp struct {
	kind   string // write, zero, zero-unmap, discard
	off, n int64
}

var workload = []writeOp{
	{"write", 0, 4096},
	{"write", 70000, 200000},
	{"write", 1 << 20, 1 << 20},
	{"write", 1<<20 + 1000, 10},
	{"zero", 1<<20 + 65536, 131072},
	{"zero-unmap", 1<<20 + 4096*3, 70000},
	{"write", 3<<20 - 100, 200},
	{"discard", 1 << 20, 65536},
	{"write", 1<<20 + 200, 300},
	{"zero", 2<<20 + 7, 100},
	{"write", 4<<20 - 512, 512},
}

// applyWorkload runs the workload through the driver and onto ref (a raw
// image of the disk's content before it). Discard makes the content
// unpredictable in general, so discarded ranges are read back through the
// driver afterwards and copied into ref.
func applyWorkload(t *testing.T, h *handle, ref []byte) {
	ctx := context.Background()
	for i, op := range workload {
		var err error
		switch op.kind {
		case "write":
			p := pattern(int(op.n), byte(i+1))
			err = h.c.Write(ctx, op.off, p, 0)
			copy(ref[op.off:], p)
		case "zero", "zero-unmap":
			var f blockdev.ReqFlags
			if op.kind == "zero-unmap" {
				f = blockdev.ReqMayUnmap
			}
			err = h.c.WriteZeroes(ctx, op.off, op.n, f)
			clear(ref[op.off : op.off+op.n])
		case "discard":
			err = h.c.Discard(ctx, op.off, op.n)
			if err == nil {
				err = h.c.Read(ctx, op.off, ref[op.off:op.off+op.n])
			}
		}
		if err != nil {
			t.Fatalf("op %d %+v: %v", i, op, err)
		}
	}
	equalBytes(t, "content after the workload", h.readAll(t), ref)
}

// Images the driver writes pass qemu-img check and compare equal to a raw
// file with the same content.
func TestWriteInterop(t *testing.T) {
	cases := []struct {
		name   string
		create func(t *testing.T, dir string) string
	}{
		{"ours-v3", func(t *testing.T, dir string) string {
			return mustCreate(t, blockdev.Options{"size": int64(4 << 20)})
		}},
		{"ours-v2-512", func(t *testing.T, dir string) string {
			return mustCreate(t, blockdev.Options{"size": int64(4 << 20), "version": "v2", "cluster-size": int64(512)})
		}},
		{"ours-refcount1", func(t *testing.T, dir string) string {
			return mustCreate(t, blockdev.Options{"size": int64(4 << 20), "refcount-bits": int64(1), "cluster-size": int64(4096)})
		}},
		{"ours-refcount64", func(t *testing.T, dir string) string {
			return mustCreate(t, blockdev.Options{"size": int64(4 << 20), "refcount-bits": int64(64), "cluster-size": int64(2048)})
		}},
		{"ours-lazy", func(t *testing.T, dir string) string {
			return mustCreate(t, blockdev.Options{"size": int64(4 << 20), "lazy-refcounts": true})
		}},
		{"ours-prealloc", func(t *testing.T, dir string) string {
			return mustCreate(t, blockdev.Options{"size": int64(4 << 20), "preallocation": "metadata", "cluster-size": int64(8192)})
		}},
		{"qemu-v3-2M", func(t *testing.T, dir string) string {
			return qemuImgCreate(t, dir, "a.qcow2", "4M", "-o", "cluster_size=2M")
		}},
		{"qemu-v2", func(t *testing.T, dir string) string {
			return qemuImgCreate(t, dir, "a.qcow2", "4M", "-o", "compat=0.10")
		}},
		{"qemu-written", func(t *testing.T, dir string) string {
			img := qemuImgCreate(t, dir, "a.qcow2", "4M", "-o", "cluster_size=16k")
			qemuIO(t, img, "write -P 0x77 0 4M", "write -z 1M 1M")
			return img
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			img := tc.create(t, dir)
			ref := rawContent(t, img)
			h := open(t, img, false)
			applyWorkload(t, h, ref)
			h.close(t)
			checkClean(t, img)
			compareRaw(t, dir, img, ref)
		})
	}
}

// Copy-on-write: partial writes to clusters of an overlay take the rest of
// the cluster from the backing file.
func TestWriteOverBacking(t *testing.T) {
	for _, compat := range []string{"1.1", "0.10"} {
		t.Run(compat, func(t *testing.T) {
			dir := t.TempDir()
			base := qemuImgCreate(t, dir, "base.qcow2", "4M")
			qemuIO(t, base, "write -P 0x44 0 4M")
			top := qemuImgCreate(t, dir, "top.qcow2", "4M", "-b", base, "-F", "qcow2", "-o", "cluster_size=32k,compat="+compat)
			ref := rawContent(t, top)
			h := open(t, top, false, "discard", "unmap")
			applyWorkload(t, h, ref)
			h.close(t)
			checkClean(t, top)
			compareRaw(t, dir, top, ref)
		})
	}
}

// Compressed clusters from qemu-img convert -c read back equal, with zlib
// and zstd, and can be overwritten partially.
func TestCompressed(t *testing.T) {
	for _, ct := range []string{"zlib", "zstd"} {
		for _, cs := range []string{"4k", "64k"} {
			t.Run(ct+"/"+cs, func(t *testing.T) {
				dir := t.TempDir()
				src := filepath.Join(dir, "src.raw")
				content := make([]byte, 3<<20)
				for i := range content {
					content[i] = byte(i / 1000) // compressible
				}
				copy(content[1<<20:], pattern(100000, 9)) // less so
				if err := os.WriteFile(src, content, 0o600); err != nil {
					t.Fatal(err)
				}
				img := filepath.Join(dir, "c.qcow2")
				run(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type="+ct+",cluster_size="+cs, src, img)
				h := open(t, img, false)
				equalBytes(t, "compressed content", h.readAll(t), content)
				p := pattern(5000, 3)
				if err := h.c.Write(context.Background(), 10000, p, 0); err != nil {
					t.Fatal(err)
				}
				copy(content[10000:], p)
				equalBytes(t, "after overwrite", h.readAll(t), content)
				h.close(t)
				checkClean(t, img)
				equalBytes(t, "qemu's view", rawContent(t, img), content)
			})
		}
	}
}

// Growing needs new refcount blocks and a larger refcount table: with
// 512-byte clusters one block covers 128 KiB and the first table 8 MiB.
func TestRefcountGrowth(t *testing.T) {
	img := mustCreate(t, blockdev.Options{"size": int64(24 << 20), "cluster-size": int64(512)})
	h := open(t, img, false)
	ctx := context.Background()
	data := pattern(1<<20, 5)
	for off := int64(0); off < 24<<20; off += 1 << 20 {
		if err := h.c.Write(ctx, off, data, 0); err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
	}
	h.close(t)
	checkClean(t, img)
	got := rawContent(t, img)
	for off := 0; off < 24<<20; off += 1 << 20 {
		equalBytes(t, fmt.Sprintf("MiB at %d", off), got[off:off+1<<20], data)
	}
}

// A backing file named without a format is probed (qcow2 by its magic).
func TestBackingProbed(t *testing.T) {
	dir := t.TempDir()
	base := qemuImgCreate(t, dir, "base.qcow2", "2M")
	qemuIO(t, base, "write -P 0x21 0 2M")
	top := mustCreate(t, blockdev.Options{"size": int64(2 << 20), "backing-file": base})
	h := open(t, top, true)
	if got := h.n.Child("backing"); got == nil || got.Node().DriverName() != "qcow2" {
		t.Fatalf("backing node: %v", got)
	}
	equalBytes(t, "through a probed backing file", h.readAll(t), rawContent(t, base))
}

// Block status over a huge empty image skips missing L2 tables whole and
// still reports one extent for the lot; with an allocated cluster the run
// ends at its L2 table's boundary at the latest.
func TestBlockStatusHugeSparse(t *testing.T) {
	ctx := context.Background()
	img := mustCreate(t, blockdev.Options{"size": int64(16 << 40)})
	h := open(t, img, false)
	defer h.close(t)
	st, err := h.c.BlockStatus(ctx, 0, h.n.Length())
	if err != nil || st.Length != 16<<40 || st.Flags&blockdev.StatusAllocated != 0 {
		t.Fatalf("empty 16 TiB: %+v %v", st, err)
	}
	if err := h.c.Write(ctx, 8<<40, pattern(4096, 1), 0); err != nil {
		t.Fatal(err)
	}
	st, err = h.c.BlockStatus(ctx, 0, h.n.Length())
	if err != nil || st.Length != 8<<40 {
		t.Fatalf("before the written cluster: %+v %v", st, err)
	}
	st, err = h.c.BlockStatus(ctx, 8<<40, h.n.Length()-8<<40)
	if err != nil || st.Flags&blockdev.StatusData == 0 || st.Length != 65536 {
		t.Fatalf("the written cluster: %+v %v", st, err)
	}
}

// Growing an image over a longer backing node leaves the new area reading
// as zeroes, not as the backing node's data.
func TestGrowOverLongerBacking(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, bytes.Repeat([]byte{0x77}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	img := mustCreate(t, blockdev.Options{"size": int64(256 << 10), "backing-file": base, "backing-fmt": "raw"})
	h := open(t, img, false)
	defer h.close(t)
	if err := h.c.Truncate(ctx, 768<<10, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 768<<10)
	if err := h.c.Read(ctx, 0, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:256<<10], bytes.Repeat([]byte{0x77}, 256<<10)) {
		t.Fatal("the old area no longer reads the backing data")
	}
	if !bytes.Equal(got[256<<10:], make([]byte, 512<<10)) {
		t.Fatal("the grown area shows the backing data")
	}
}

// Copy offload (blockdev.CopyRange) from one qcow2 image to another, the
// way commit and mirror copy: allocated source clusters go by
// copy_file_range into new or existing destination clusters; what
// cannot go that way (zero and unallocated source clusters, partial
// destination clusters) is declined and copied through a buffer. The
// result equals the source for qemu-img and checks clean.
func TestCopyOffload(t *testing.T) {
	for _, dstCluster := range []string{"64k", "4k", "256k"} {
		t.Run(dstCluster, func(t *testing.T) {
			dir := t.TempDir()
			src := qemuImgCreate(t, dir, "src.qcow2", "4M")
			qemuIO(t, src, "write -P 0x11 0 1M", "write -P 0x22 1536k 256k", "write -z 2M 64k",
				"write -P 0x33 3M 100k")
			dst := qemuImgCreate(t, dir, "dst.qcow2", "4M", "-o", "cluster_size="+dstCluster)
			// Some destination clusters exist already: written in place.
			qemuIO(t, dst, "write -P 0x99 512k 256k", "write -P 0x98 3M 64k")
			s := open(t, src, true)
			d := open(t, dst, false)
			ctx := context.Background()
			offloaded := 0
			buf := make([]byte, 512<<10)
			for off := int64(0); off < 4<<20; off += int64(len(buf)) {
				ok, err := blockdev.CopyRange(ctx, s.c, off, d.c, off, int64(len(buf)))
				if err != nil {
					t.Fatalf("CopyRange at %d: %v", off, err)
				}
				if ok {
					offloaded++
					continue
				}
				if err := s.c.Read(ctx, off, buf); err != nil {
					t.Fatal(err)
				}
				if err := d.c.Write(ctx, off, buf, 0); err != nil {
					t.Fatal(err)
				}
			}
			if offloaded < 2 {
				t.Errorf("only %d of 8 chunks went by copy offload", offloaded)
			}
			s.close(t)
			d.close(t)
			checkClean(t, dst)
			run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", src, dst)
		})
	}
}

// A partial write into a new cluster writes its data alone only when the
// cluster is fresh (past the image file's old end, so it reads as zeroes):
// a cluster freed by a discard and handed out again still holds its old
// bytes, and the rest of it must read as zeroes all the same. Over a
// backing file the rest comes from the backing file, fresh or not.
func TestPartialWriteIntoFreshAndReusedClusters(t *testing.T) {
	ctx := context.Background()
	for _, compat := range []string{"1.1", "0.10"} {
		t.Run(compat, func(t *testing.T) {
			dir := t.TempDir()
			img := qemuImgCreate(t, dir, "a.qcow2", "1M", "-o", "cluster_size=4k,compat="+compat)
			h := open(t, img, false, "discard", "unmap", "pass-discard-request", false)
			ref := make([]byte, 1<<20)
			do := func(off int64, n int, seed byte) {
				t.Helper()
				p := pattern(n, seed)
				if err := h.c.Write(ctx, off, p, 0); err != nil {
					t.Fatal(err)
				}
				copy(ref[off:], p)
			}
			do(0, 64<<10, 1) // sixteen full clusters
			if err := h.c.Discard(ctx, 0, 64<<10); err != nil {
				t.Fatal(err)
			}
			// The freed clusters are handed out again once the drop
			// is stable: after two flushes.
			for range 2 {
				if err := h.c.Flush(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if err := h.c.Read(ctx, 0, ref[:64<<10]); err != nil {
				t.Fatal(err)
			}
			// Partial writes that can take the freed host clusters and
			// partial writes into fresh ones, head, middle and tail.
			for i := int64(0); i < 24; i++ {
				do(128<<10+i*8<<10+(i%3)*1536, 512+int(i%4)*700, byte(i+10))
			}
			equalBytes(t, "content", h.readAll(t), ref)
			h.close(t)
			checkClean(t, img)
			compareRaw(t, dir, img, ref)
		})
	}
}
