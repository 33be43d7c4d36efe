package qcow2_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
)

// patch writes big-endian values into a copy of src.
func patch(t *testing.T, src string, edits ...any) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(edits); i += 2 {
		off := edits[i].(int)
		switch v := edits[i+1].(type) {
		case uint32:
			binary.BigEndian.PutUint32(b[off:], v)
		case uint64:
			binary.BigEndian.PutUint64(b[off:], v)
		case byte:
			b[off] = v
		}
	}
	p := filepath.Join(t.TempDir(), "patched.qcow2")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Header refusals in QEMU 7.2's words (checked with qemu-io and
// qemu-storage-daemon on the same patched images).
func TestHeaderErrors(t *testing.T) {
	dir := t.TempDir()
	img := qemuImgCreate(t, dir, "a.qcow2", "10M")
	qemuIO(t, img, "write -P 0xab 0 64k") // L2 table at 0x40000
	cases := []struct {
		name  string
		edits []any
		rw    bool
		want  string
	}{
		{"magic", []any{0, uint32(0x12345678)}, false, "Image is not in qcow2 format"},
		{"version4", []any{4, uint32(4)}, false, "Unsupported qcow2 version 4"},
		{"version1", []any{4, uint32(1)}, false, "Unsupported qcow2 version 1"},
		{"cluster-bits-8", []any{20, uint32(8)}, false, "Unsupported cluster size: 2^8"},
		{"cluster-bits-22", []any{20, uint32(22)}, false, "Unsupported cluster size: 2^22"},
		{"unknown-incompat", []any{72, uint64(1 << 10)}, false, "Unsupported qcow2 feature(s): Unknown incompatible feature: 400"},
		{"extended-l2", []any{72, uint64(1 << 4)}, false, "Unsupported qcow2 feature(s): extended L2 entries"},
		{"data-file", []any{72, uint64(1 << 2)}, false, "Unsupported qcow2 feature(s): external data file"},
		{"crypt3", []any{32, uint32(3)}, false, "Unsupported encryption method 3"},
		{"corrupt-rw", []any{72, uint64(2)}, true, "qcow2: Image is corrupt; cannot be opened read/write"},
		{"refcount-order", []any{96, uint32(7)}, false, "Reference count entry width too large; may not exceed 64 bits"},
		{"header-short", []any{100, uint32(50)}, false, "qcow2 header too short"},
		{"header-long", []any{100, uint32(0x20000)}, false, "qcow2 header exceeds cluster size"},
		{"l1-offset", []any{40, uint64(0x30001)}, false, "Active L1 table offset invalid"},
		{"l1-size", []any{36, uint32(0x7fffffff)}, false, "Active L1 table too large"},
		{"reftable-offset", []any{48, uint64(0x10001)}, false, "Reference count table offset invalid"},
		{"reftable-size", []any{56, uint32(0x1000000)}, false, "Reference count table too large"},
		{"reftable-none", []any{56, uint32(0)}, false, "Image does not contain a reference count table"},
		{"compression-bit", []any{104, byte(1)}, false, "qcow2: Compression type incompatible feature bit must be set"},
		{"compression-nobit", []any{72, uint64(1 << 3)}, false, "qcow2: Compression type incompatible feature bit must not be set"},
		{"snapshot-offset", []any{60, uint32(1), 64, uint64(0x123)}, false, "Snapshot table offset invalid"},
		{"backing-long", []any{8, uint64(0x200), 16, uint32(1024)}, false, "Backing file name too long"},
		{"backing-offset", []any{8, uint64(0x200000), 16, uint32(10)}, false, "Invalid backing file offset"},
		{"too-big", []any{24, uint64(1 << 62)}, false, "Image is too big"},
		{"extension-length", []any{0x74, uint32(0x100000)}, false, "Header extension too large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := patch(t, img, tc.edits...)
			o := qcowOpts(p)
			perm := blockdev.PermConsistentRead
			if !tc.rw {
				o["read-only"] = true
			} else {
				perm = drivertest.RootPerm
			}
			_, err := openOpts(t, o, perm)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	// A corrupt image opens read-only.
	open(t, patch(t, img, 72, uint64(2)), true)
}

// Open options refused or checked as QEMU does.
func TestOpenOptionErrors(t *testing.T) {
	dir := t.TempDir()
	v3 := qemuImgCreate(t, dir, "a.qcow2", "10M")
	v2 := qemuImgCreate(t, dir, "b.qcow2", "10M", "-o", "compat=0.10")
	cases := []struct {
		img  string
		opts blockdev.Options
		want string
	}{
		{v2, blockdev.Options{"lazy-refcounts": true}, "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level"},
		{v3, blockdev.Options{"cache-size": int64(1000), "l2-cache-size": int64(2000)}, "l2-cache-size may not exceed cache-size"},
		{v3, blockdev.Options{"cache-size": int64(100000), "l2-cache-size": int64(2000), "refcount-cache-size": int64(1000)}, "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time"},
		{v3, blockdev.Options{"l2-cache-entry-size": int64(1000)}, "L2 cache entry size must be a power of two between 512 and the cluster size (65536)"},
		{v3, blockdev.Options{"l2-cache-size": int64(-5)}, "Parameter 'l2-cache-size' expects a non-negative number below 2^64"},
		{v3, blockdev.Options{"encrypt": map[string]any{"format": "luks", "key-secret": "s"}}, "No encryption in image header, but options specified format 'luks'"},
		{v3, blockdev.Options{"data-file": "x"}, "qcow2 images with an external data file are not supported"},
	}
	for _, tc := range cases {
		o := qcowOpts(tc.img)
		for k, v := range tc.opts {
			o[k] = v
		}
		_, err := openOpts(t, o, drivertest.RootPerm)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%v: got %v, want %q", tc.opts, err, tc.want)
		}
	}
}

func imgInfo(t *testing.T, img string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "info", "--output=json", img)), &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "filename")
	delete(m, "actual-size")
	return m
}

// Our blockdev-create writes images qemu-img check accepts and qemu-img
// info describes as it describes its own.
func TestCreateLikeQemu(t *testing.T) {
	dir := t.TempDir()
	base := qemuImgCreate(t, dir, "base.qcow2", "10M")
	cases := []struct {
		ours blockdev.Options
		qemu []string
	}{
		{blockdev.Options{"size": int64(10 << 20)}, nil},
		{blockdev.Options{"size": int64(0)}, nil},
		{blockdev.Options{"size": int64(100 << 30)}, nil},
		{blockdev.Options{"size": int64(10 << 20), "version": "v2"}, []string{"-o", "compat=0.10"}},
		{blockdev.Options{"size": int64(10 << 20), "cluster-size": int64(512)}, []string{"-o", "cluster_size=512"}},
		{blockdev.Options{"size": int64(10 << 20), "cluster-size": int64(2 << 20)}, []string{"-o", "cluster_size=2M"}},
		{blockdev.Options{"size": int64(1 << 20), "lazy-refcounts": true}, []string{"-o", "lazy_refcounts=on"}},
		{blockdev.Options{"size": int64(1 << 20), "refcount-bits": int64(1)}, []string{"-o", "refcount_bits=1"}},
		{blockdev.Options{"size": int64(1 << 20), "compression-type": "zstd"}, []string{"-o", "compression_type=zstd"}},
		{blockdev.Options{"size": int64(3 << 20), "preallocation": "metadata"}, []string{"-o", "preallocation=metadata"}},
		{blockdev.Options{"size": int64(10 << 20), "backing-file": base, "backing-fmt": "qcow2"}, []string{"-b", base, "-F", "qcow2"}},
	}
	for i, tc := range cases {
		ours := mustCreate(t, tc.ours)
		size, _, _ := tc.ours.Int("size")
		theirs := qemuImgCreate(t, dir, "q.qcow2", strings.TrimSpace(itoa(size)), tc.qemu...)
		checkClean(t, ours)
		if got, want := imgInfo(t, ours), imgInfo(t, theirs); !reflect.DeepEqual(got, want) {
			t.Errorf("case %d %v:\nours   %v\nqemu's %v", i, tc.ours, got, want)
		}
		if tc.ours["preallocation"] == "metadata" {
			if m := run(t, "qemu-img", "map", "--output=json", ours); !strings.Contains(m, `"data": true`) {
				t.Errorf("metadata preallocation maps no data: %s", m)
			}
		}
		// Opens and works.
		h := open(t, ours, false)
		if h.n.Length() != size {
			t.Errorf("case %d: length %d", i, h.n.Length())
		}
		h.close(t)
	}
}

func itoa(v int64) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// Create option errors in QEMU 7.2's words (the create job's error in
// query-jobs of qemu-storage-daemon).
func TestCreateErrors(t *testing.T) {
	cases := []struct {
		opts blockdev.Options
		want string
	}{
		{blockdev.Options{"size": int64(1 << 20), "cluster-size": int64(65535)}, "Cluster size must be a power of two between 512 and 2048k"},
		{blockdev.Options{"size": int64(1 << 20), "cluster-size": int64(256)}, "Cluster size must be a power of two between 512 and 2048k"},
		{blockdev.Options{"size": int64(1 << 20), "cluster-size": int64(4 << 20)}, "Cluster size must be a power of two between 512 and 2048k"},
		{blockdev.Options{"size": int64(1<<20 + 1)}, "Image size must be a multiple of 512 bytes"},
		{blockdev.Options{"size": int64(1 << 20), "refcount-bits": int64(3)}, "Refcount width must be a power of two and may not exceed 64 bits"},
		{blockdev.Options{"size": int64(1 << 20), "refcount-bits": int64(128)}, "Refcount width must be a power of two and may not exceed 64 bits"},
		{blockdev.Options{"size": int64(1 << 20), "refcount-bits": int64(8), "version": "v2"}, "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)"},
		{blockdev.Options{"size": int64(1 << 20), "lazy-refcounts": true, "version": "v2"}, "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)"},
		{blockdev.Options{"size": int64(1 << 20), "backing-fmt": "raw"}, "Backing format cannot be used without backing file"},
		{blockdev.Options{"size": int64(1 << 20), "compression-type": "zstd", "version": "v2"}, "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)"},
		{blockdev.Options{"size": int64(1 << 20), "data-file-raw": true}, "data-file-raw requires data-file"},
		{blockdev.Options{"size": int64(1 << 20), "backing-file": "/x", "preallocation": "metadata"}, "Backing file and preallocation can only be used at the same time if extended_l2 is on"},
		{blockdev.Options{"size": int64(1 << 60)}, "Could not resize image: Failed to grow the L1 table: File too large"},
	}
	for _, tc := range cases {
		if _, err := createImage(t, tc.opts); err == nil || err.Error() != tc.want {
			t.Errorf("%v: got %v, want %q", tc.opts, err, tc.want)
		}
	}
}

// The format-specific info and dirty flag match qemu-img info.
func TestFormatSpecific(t *testing.T) {
	dir := t.TempDir()
	for _, o := range [][]string{nil, {"-o", "compat=0.10"}, {"-o", "lazy_refcounts=on,refcount_bits=8,compression_type=zstd"}} {
		img := qemuImgCreate(t, dir, "a.qcow2", "1M", o...)
		h := open(t, img, true)
		fs, err := h.drv.FormatSpecific(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		got, _ := json.Marshal(fs)
		var gotM, info map[string]any
		json.Unmarshal(got, &gotM)
		json.Unmarshal([]byte(run(t, "qemu-img", "info", "-U", "--output=json", img)), &info)
		if !reflect.DeepEqual(gotM, info["format-specific"]) {
			t.Errorf("%v: ours %v, qemu's %v", o, gotM, info["format-specific"])
		}
		di, _ := h.drv.Info(context.Background())
		if di.ClusterSize != 65536 || di.Dirty {
			t.Errorf("info %+v", di)
		}
		h.close(t)
	}
}

// A dirty image with lazy refcounts left by a crashed qemu-io (leaked
// refcounts) is repaired by a read-write open.
func TestDirtyRepair(t *testing.T) {
	dir := t.TempDir()
	img := qemuImgCreate(t, dir, "a.qcow2", "4M", "-o", "lazy_refcounts=on,cluster_size=4k")
	cmd := exec.Command(tool(t, "qemu-io"), "-f", "qcow2", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x6b 2M 100k", "-c", "abort", img)
	cmd.Run() // aborts by design
	if out, err := exec.Command(tool(t, "qemu-img"), "check", img).CombinedOutput(); err == nil {
		t.Fatalf("the crashed image checks clean, nothing to repair:\n%s", out)
	}
	want := rawContent(t, img)
	// Read-only: no repair, but data reads.
	h := open(t, img, true)
	if di, _ := h.drv.Info(context.Background()); !di.Dirty {
		t.Fatal("dirty flag not reported")
	}
	equalBytes(t, "dirty image read-only", h.readAll(t), want)
	h.close(t)
	h = open(t, img, false)
	if di, _ := h.drv.Info(context.Background()); di.Dirty {
		t.Fatal("still dirty after a read-write open")
	}
	if err := h.c.Write(context.Background(), 3<<20, pattern(200000, 1), 0); err != nil {
		t.Fatal(err)
	}
	copy(want[3<<20:], pattern(200000, 1))
	h.close(t)
	checkClean(t, img)
	equalBytes(t, "after repair", rawContent(t, img), want)
}

// Writes with lazy refcounts set the dirty bit until a clean close.
func TestLazyDirtyBit(t *testing.T) {
	img := mustCreate(t, blockdev.Options{"size": int64(1 << 20), "lazy-refcounts": true})
	h := open(t, img, false)
	if err := h.c.Write(context.Background(), 0, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(img)
	if binary.BigEndian.Uint64(b[72:])&1 == 0 {
		t.Fatal("dirty bit not set while writing with lazy refcounts")
	}
	h.close(t)
	b, _ = os.ReadFile(img)
	if binary.BigEndian.Uint64(b[72:])&1 != 0 {
		t.Fatal("dirty bit still set after close")
	}
	checkClean(t, img)
}

// Corrupt metadata found at run time: the request fails with EIO, the
// handler hears QEMU's message once, a writable image gets the corrupt bit
// and fails every further request.
func TestCorruptionAtRunTime(t *testing.T) {
	dir := t.TempDir()
	img := qemuImgCreate(t, dir, "a.qcow2", "10M")
	qemuIO(t, img, "write -P 0xab 0 64k")
	cases := []struct {
		name  string
		edits []any
		msg   string
	}{
		{"l2-unaligned", []any{0x30000, uint64(1<<63 | 0x12200)}, "L2 table offset 0x12200 unaligned (L1 index: 0)"},
		{"cluster-unaligned", []any{0x40000, uint64(1<<63 | 0x50200)}, "Cluster allocation offset 0x50200 unaligned (L2 offset: 0x40000, L2 index: 0)"},
		{"l2-past-eof", []any{0x30000, uint64(1<<63 | 0x1000000)}, "L2 table offset 0x1000000 beyond the end of the image file (L1 index: 0)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := patch(t, img, tc.edits...)
			for _, ro := range []bool{true, false} {
				h := open(t, p, ro)
				var msgs []string
				var fatal bool
				h.drv.OnCorrupt(func(msg string, off, size int64, f bool) { msgs = append(msgs, msg); fatal = f })
				err := h.c.Read(context.Background(), 0, make([]byte, 512))
				if !errors.Is(err, syscall.EIO) {
					t.Fatalf("read-only=%v: read: %v", ro, err)
				}
				h.c.Read(context.Background(), 0, make([]byte, 512))
				if len(msgs) != 1 || msgs[0] != tc.msg || fatal == ro {
					t.Fatalf("read-only=%v: handler got %q fatal=%v", ro, msgs, fatal)
				}
				// Other clusters of the L2 table still read when
				// read-only; when writable every request fails.
				err = h.c.Read(context.Background(), 8<<20, make([]byte, 512))
				if tc.name == "cluster-unaligned" && ro != (err == nil) || !ro && err == nil {
					t.Fatalf("read-only=%v: read elsewhere: %v", ro, err)
				}
				h.close(t)
			}
			_, err := openOpts(t, qcowOpts(p), drivertest.RootPerm)
			if err == nil || err.Error() != "qcow2: Image is corrupt; cannot be opened read/write" {
				t.Fatalf("reopen: %v", err)
			}
			out, _ := exec.Command(tool(t, "qemu-img"), "info", "--output=json", p).CombinedOutput()
			if !strings.Contains(string(out), `"corrupt": true`) {
				t.Fatalf("qemu-img does not see the corrupt bit:\n%s", out)
			}
		})
	}
}

// Freeing a cluster whose refcount is already zero (two L2 entries share
// it in a corrupt image) is no corruption event in QEMU: qcow2_free_clusters
// prints its failure and the cluster leaks. qemu-io on the same image is
// the referee: afterwards both images check with the same leak and no
// corrupt bit, and the node goes on serving requests.
func TestFreeBelowZeroLeaks(t *testing.T) {
	dir := t.TempDir()
	img := qemuImgCreate(t, dir, "a.qcow2", "10M")
	qemuIO(t, img, "write -P 1 0 64k", "write -P 2 64k 64k")
	// Guest cluster 1 maps to guest cluster 0's host cluster.
	p := patch(t, img, 0x40008, uint64(1<<63|0x50000))
	ref := patch(t, p)
	out := run(t, "qemu-io", "-f", "qcow2", "-c", "discard 0 128k", ref)
	if !strings.Contains(out, "qcow2_free_clusters failed: Invalid argument") {
		t.Fatalf("qemu-io did not fail the second free:\n%s", out)
	}
	h := open(t, p, false, "discard", "unmap")
	var msgs []string
	h.drv.OnCorrupt(func(msg string, off, size int64, f bool) { msgs = append(msgs, msg) })
	ctx := context.Background()
	if err := h.c.Discard(ctx, 0, 128<<10); err != nil {
		t.Fatalf("discard: %v", err)
	}
	if err := h.c.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if err := h.c.Write(ctx, 1<<20, bytes.Repeat([]byte{3}, 4096), 0); err != nil {
		t.Fatalf("write after the failed free: %v", err)
	}
	h.close(t)
	if len(msgs) != 0 {
		t.Fatalf("corruption reported: %q", msgs)
	}
	qemuIO(t, ref, "write -P 3 1M 4k")
	checks := map[string]string{}
	for name, f := range map[string]string{"qemu-io": ref, "qbmond": p} {
		out, _ := exec.Command(tool(t, "qemu-img"), "check", "--output=json", f).Output()
		var r map[string]any
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("%s: qemu-img check: %v\n%s", name, err, out)
		}
		checks[name] = fmt.Sprint(r["leaks"], r["corruptions"], r["check-errors"])
		info, _ := exec.Command(tool(t, "qemu-img"), "info", "--output=json", f).CombinedOutput()
		if strings.Contains(string(info), `"corrupt": true`) {
			t.Fatalf("%s: image marked corrupt", name)
		}
	}
	if checks["qemu-io"] != checks["qbmond"] || checks["qbmond"] != "1 <nil> 0" {
		out1, _ := exec.Command("qemu-img", "check", p).CombinedOutput()
		out2, _ := exec.Command("qemu-img", "check", ref).CombinedOutput()
		t.Fatalf("qemu-img check (leaks, corruptions, errors): %v\n%s\n%s", checks, out1, out2)
	}
	equalBytes(t, "content", rawContent(t, p), rawContent(t, ref))
}

// make-empty drops everything: the overlay reads its backing file again
// and checks clean.
func TestMakeEmpty(t *testing.T) {
	dir := t.TempDir()
	base := qemuImgCreate(t, dir, "base.qcow2", "4M")
	qemuIO(t, base, "write -P 0x44 0 4M")
	top := qemuImgCreate(t, dir, "top.qcow2", "4M", "-b", base, "-F", "qcow2", "-o", "cluster_size=4k")
	qemuIO(t, top, "write -P 0x55 0 1M", "write -z 2M 1M", "write -P 0x66 3M 5000")
	h := open(t, top, false)
	if err := h.drv.MakeEmpty(context.Background()); err != nil {
		t.Fatal(err)
	}
	equalBytes(t, "after make-empty", h.readAll(t), rawContent(t, base))
	st, err := h.c.BlockStatus(context.Background(), 0, 4<<20)
	if err != nil || st.Flags&blockdev.StatusAllocated != 0 || st.Length != 4<<20 {
		t.Fatalf("status after make-empty: %+v %v", st, err)
	}
	h.close(t)
	checkClean(t, top)
	if m := run(t, "qemu-img", "map", "--output=json", top); strings.Contains(m, `"depth": 0`) {
		t.Fatalf("clusters still allocated in the overlay: %s", m)
	}
}

// change-backing-file rewrites the name and format; unknown header
// extensions survive the rewrite.
func TestChangeBackingFile(t *testing.T) {
	dir := t.TempDir()
	base := qemuImgCreate(t, dir, "base.qcow2", "4M")
	qemuIO(t, base, "write -P 0x44 0 4M")
	other := filepath.Join(dir, "other.raw")
	os.WriteFile(other, make([]byte, 4<<20), 0o600)
	top := qemuImgCreate(t, dir, "top.qcow2", "4M", "-b", base, "-F", "qcow2")
	// Add an unknown extension before the end marker (after the
	// backing-format extension and the feature table).
	b, _ := os.ReadFile(top)
	off := 112
	for binary.BigEndian.Uint32(b[off:]) != 0 {
		off += 8 + (int(binary.BigEndian.Uint32(b[off+4:]))+7)&^7
	}
	unknown := []byte{0x12, 0x34, 0x56, 0x78, 0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o', 0, 0, 0}
	nameOff := binary.BigEndian.Uint64(b[8:])
	name := append([]byte(nil), b[nameOff:nameOff+uint64(binary.BigEndian.Uint32(b[16:]))]...)
	copy(b[off:], unknown)
	binary.BigEndian.PutUint64(b[off+16:], 0)
	newNameOff := off + 24
	copy(b[newNameOff:], name)
	binary.BigEndian.PutUint64(b[8:], uint64(newNameOff))
	os.WriteFile(top, b, 0o600)

	h := open(t, top, false)
	if err := h.drv.ChangeBackingFile(context.Background(), "other.raw", "raw"); err != nil {
		t.Fatal(err)
	}
	if n, f := h.drv.BackingFileName(); n != "other.raw" || f != "raw" {
		t.Fatalf("backing file name %q %q", n, f)
	}
	h.close(t)
	info := imgInfo(t, top)
	if info["backing-filename"] != "other.raw" || info["backing-filename-format"] != "raw" {
		t.Fatalf("qemu-img info: %v", info)
	}
	b, _ = os.ReadFile(top)
	if !strings.Contains(string(b[:4096]), "\x12\x34\x56\x78\x00\x00\x00\x05hello") {
		t.Fatal("unknown header extension lost")
	}
	checkClean(t, top)
	equalBytes(t, "over the new backing file", rawContent(t, top), make([]byte, 4<<20))
}

// Growing truncate extends the L1 table (in place or moved) and keeps the
// data; shrinking is refused.
func TestTruncateGrow(t *testing.T) {
	img := mustCreate(t, blockdev.Options{"size": int64(1 << 20), "cluster-size": int64(512)})
	h := open(t, img, false)
	ctx := context.Background()
	p := pattern(100000, 7)
	if err := h.c.Write(ctx, 500000, p, 0); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int64{2 << 20, 64 << 20} { // the second moves the L1 table
		if err := h.c.Truncate(ctx, size, true); err != nil {
			t.Fatalf("truncate to %d: %v", size, err)
		}
		if h.n.Length() != size {
			t.Fatalf("length %d", h.n.Length())
		}
	}
	if err := h.c.Write(ctx, 60<<20, p, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.c.Truncate(ctx, 1<<20, true); !errors.Is(err, blockdev.ErrNotSupported) {
		t.Fatalf("shrink: %v", err)
	}
	h.close(t)
	checkClean(t, img)
	got := rawContent(t, img)
	if len(got) != 64<<20 {
		t.Fatalf("qemu sees %d bytes", len(got))
	}
	equalBytes(t, "old data", got[500000:600000], p)
	equalBytes(t, "new data", got[60<<20:60<<20+100000], p)
}

// l2-cache-size bounds the number of cached L2 tables; reads still work.
func TestL2CacheSize(t *testing.T) {
	img := mustCreate(t, blockdev.Options{"size": int64(8 << 20), "cluster-size": int64(4096)})
	h := open(t, img, false, "l2-cache-size", int64(8192))
	ctx := context.Background()
	// 4 KiB clusters: one L2 table maps 2 MiB; touch all four.
	want := make([]byte, 8<<20)
	for off := int64(0); off < 8<<20; off += 1 << 20 {
		p := pattern(4096, byte(off>>20))
		if err := h.c.Write(ctx, off+100, p, 0); err != nil {
			t.Fatal(err)
		}
		copy(want[off+100:], p)
	}
	equalBytes(t, "with a small L2 cache", h.readAll(t), want)
	if n := h.drv.CachedL2Tables(); n != 2 {
		t.Fatalf("%d L2 tables cached, want 2", n)
	}
}
