package qcow2_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
)

// bitmapsOf opens img read-only and returns its bitmaps' bits (nil for
// one loaded inconsistent), by name.
func bitmapsOf(t *testing.T, img string) map[string][]byte {
	t.Helper()
	h := open(t, img, true)
	defer h.close(t)
	m := map[string][]byte{}
	for _, b := range h.n.DirtyBitmaps() {
		if b.Inconsistent() {
			m[b.Name()] = nil
		} else {
			m[b.Name()] = b.Bits().MarshalBits()
		}
	}
	return m
}

// inUse lists the bitmaps qemu-img info shows in use, by name.
func inUse(t *testing.T, img string) map[string]bool {
	t.Helper()
	var info struct {
		FormatSpecific struct {
			Data struct {
				Bitmaps []struct {
					Name  string   `json:"name"`
					Flags []string `json:"flags"`
				} `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "info", "--output=json", img)), &info); err != nil {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, b := range info.FormatSpecific.Data.Bitmaps {
		m[b.Name] = false
		for _, f := range b.Flags {
			if f == "in-use" {
				m[b.Name] = true
			}
		}
	}
	return m
}

// TestCrashBitmaps crashes an image with persistent bitmaps before every
// write of the image file from its open read-write (bitmaps marked in
// use) through guest writes, a bitmap added, one removed, to its close
// (bitmaps stored, old clusters freed). Every crashed state passes
// qemu-img check (leaks allowed) and each bitmap in it is either in use
// (inconsistent) or holds exactly the bits it had at open or at close,
// never anything in between.
func TestCrashBitmaps(t *testing.T) {
	const size = 8 << 20
	dir := t.TempDir()
	src := qemuImgCreate(t, dir, "src.qcow2", fmt.Sprint(size), "-o", "cluster_size=4096")
	run(t, "qemu-img", "bitmap", "--add", src, "b0")
	run(t, "qemu-img", "bitmap", "--add", "-g", "512", src, "b1")
	run(t, "qemu-img", "bitmap", "--add", src, "gone")
	qemuIO(t, src, "write 0 64k", "write 3M 4k", "write 7M 1M")
	run(t, "qemu-img", "bitmap", "--disable", src, "b1")
	before := bitmapsOf(t, src)

	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	s := &crashState{cur: append([]byte(nil), b...), base: append([]byte(nil), b...)}
	id := t.Name()
	crashFiles.Store(id, s)
	defer crashFiles.Delete(id)
	h, err := openOpts(t, blockdev.Options{
		"driver": "qcow2", "file": map[string]any{"driver": "crashsim", "id": id},
	}, drivertest.RootPerm)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i, off := range []int64{100 << 10, 2 << 20, 5<<20 + 4096} {
		if err := h.c.Write(ctx, off, pattern(8192, byte(i+1)), 0); err != nil {
			t.Fatal(err)
		}
	}
	err = h.g.Do(func(lk *blockdev.Locked) error {
		if _, err := h.n.AddDirtyBitmap(lk, "new", blockdev.BitmapOptions{Granularity: 4096, Persistent: true}); err != nil {
			return err
		}
		return h.n.RemoveDirtyBitmap(lk, "gone")
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.c.Write(ctx, 6<<20, pattern(4096, 9), 0); err != nil {
		t.Fatal(err)
	}
	h.close(t)
	final := filepath.Join(dir, "final.qcow2")
	s.mu.Lock()
	err = os.WriteFile(final, s.cur, 0o644)
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	checkClean(t, final)
	after := bitmapsOf(t, final)
	if len(after) != 3 || after["new"] == nil || string(after["b0"]) == string(before["b0"]) {
		t.Fatalf("after close: %d bitmaps, b0 changed %v", len(after), string(after["b0"]) != string(before["b0"]))
	}

	rng := rand.New(rand.NewPCG(3, 14))
	for k := 0; k <= s.now(); k++ {
		for draw := range 3 {
			what := fmt.Sprintf("crash before file op %d of %d (draw %d)", k, s.now(), draw)
			img := filepath.Join(dir, "crash.qcow2")
			if err := os.WriteFile(img, s.crashAt(k, rng), 0o644); err != nil {
				t.Fatal(err)
			}
			checkCrashed(t, img, what)
			flags := inUse(t, img)
			got := bitmapsOf(t, img)
			for name, bits := range got {
				if flags[name] != (bits == nil) {
					t.Fatalf("%s: bitmap %s in use on disk %v, loaded inconsistent %v", what, name, flags[name], bits == nil)
				}
				if bits == nil {
					continue
				}
				if string(bits) != string(before[name]) && string(bits) != string(after[name]) {
					t.Fatalf("%s: bitmap %s holds neither its bits at open nor those at close", what, name)
				}
			}
			// "gone" was removed and "new" added meanwhile: either may be
			// there; the others always are.
			if _, ok := got["b0"]; !ok {
				t.Fatalf("%s: b0 lost: %v", what, flags)
			}
			if _, ok := got["b1"]; !ok {
				t.Fatalf("%s: b1 lost: %v", what, flags)
			}
		}
	}
}
