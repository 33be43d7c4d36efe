package tests

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// More persistent qcow2 bitmap flows against qemu-storage-daemon: the
// bitmaps marked in use at a reopen read-write, merges across the nodes
// of a chain, qemu-img bitmap on a closed image, NBD export of a stored
// bitmap.

// diffDaemons runs scenario in QSD then in qbmond, each in a fresh
// directory, and fails unless the transcripts are the same.
func diffDaemons(t *testing.T, scenario func(k kind, dir string) string) {
	t.Helper()
	var res []string
	for _, k := range []kind{kindQSD, kindQbmond} {
		res = append(res, scenario(k, shortTempDir(t)))
	}
	if res[0] != res[1] {
		t.Fatalf("qbmond:\n%s\nQSD:\n%s", res[1], res[0])
	}
	t.Logf("both:\n%s", res[0])
}

// A node opened read-only and reopened read-write has its bitmaps in use
// on disk right after the reopen, before any write or bitmap command (and
// again after a round trip read-only and back); its close stores them.
func TestQcow2BitmapsInUseAtReopenRW(t *testing.T) {
	src := qcow2BitmapImage(t, shortTempDir(t))
	diffDaemons(t, func(k kind, dir string) string {
		img := filepath.Join(dir, "img.qcow2")
		copyFile(t, src, img)
		d := startDaemon(t, k, dir)
		c := d.connect()
		var tr strings.Builder
		c.ok("blockdev-add", map[string]any{"driver": "file", "node-name": "f0", "filename": img})
		opts := map[string]any{"driver": "qcow2", "node-name": "n0", "file": "f0", "read-only": true}
		c.ok("blockdev-add", opts)
		fmt.Fprintf(&tr, "opened read-only: %s\n", imageBitmaps(t, img))
		for i := range 2 {
			opts["read-only"] = false
			c.ok("blockdev-reopen", map[string]any{"options": []any{opts}})
			fmt.Fprintf(&tr, "%d: right after reopen read-write: %s\n", i, imageBitmaps(t, img))
			fmt.Fprintf(&tr, "%d: read-write:\n%s", i, qcow2Bitmaps(t, c, "n0"))
			opts["read-only"] = true
			c.ok("blockdev-reopen", map[string]any{"options": []any{opts}})
			fmt.Fprintf(&tr, "%d: after reopen read-only: %s\n", i, imageBitmaps(t, img))
		}
		// The file node given inline with the format node reopens with it.
		c.ok("blockdev-del", map[string]any{"node-name": "n0"})
		c.ok("blockdev-del", map[string]any{"node-name": "f0"})
		o := qcow2Node(img)
		o["node-name"], o["read-only"] = "n1", true
		c.ok("blockdev-add", o)
		o["read-only"] = false
		c.ok("blockdev-reopen", map[string]any{"options": []any{o}})
		fmt.Fprintf(&tr, "inline file, after reopen read-write: %s\n", imageBitmaps(t, img))
		c.ok("blockdev-del", map[string]any{"node-name": "n1"})
		fmt.Fprintf(&tr, "after close: %s\n", imageBitmaps(t, img))
		checkClean(t, img, false)
		d.stop()
		return tr.String()
	})
}

// A passive block-commit makes its read-only base read-write for the job
// and read-only again at its end: the base's bitmaps are in use on disk
// while the job runs (QEMU marks them at that reopen) and stored with the
// committed data marked at the end.
func TestQcow2BitmapsInUseDuringCommit(t *testing.T) {
	diffDaemons(t, func(k kind, dir string) string {
		sh(t, dir, `qemu-img create -q -f qcow2 base.qcow2 16M
qemu-img bitmap --add base.qcow2 c1
qemu-img bitmap --add --disable base.qcow2 c0
qemu-io -f qcow2 -c 'write -P 0x11 0 1M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
qemu-io -f qcow2 -c 'write -P 0x22 4M 3M' -c 'write -P 0x23 15M 64k' mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2`)
		var tr strings.Builder
		d := startDaemon(t, k, dir)
		c := d.connect()
		file := func(img string) any { return map[string]any{"driver": "file", "filename": filepath.Join(dir, img)} }
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "base", "read-only": true, "file": file("base.qcow2")})
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "mid", "read-only": true, "backing": "base", "file": file("mid.qcow2")})
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "backing": "mid", "file": file("top.qcow2")})
		base := filepath.Join(dir, "base.qcow2")
		fmt.Fprintf(&tr, "before: %s\n", imageBitmaps(t, base))
		c.ok("block-commit", map[string]any{"job-id": "cm", "device": "top", "top-node": "mid", "base-node": "base", "speed": 1})
		fmt.Fprintf(&tr, "while committing: %s\n", imageBitmaps(t, base))
		c.ok("block-job-set-speed", map[string]any{"device": "cm", "speed": 0})
		c.waitJob("cm", "null")
		fmt.Fprintf(&tr, "after the job: %s\n%s", imageBitmaps(t, base), qcow2Bitmaps(t, c, "base"))
		d.stop()
		fmt.Fprintf(&tr, "at exit: %s\n", imageBitmaps(t, base))
		checkClean(t, base, false)
		return tr.String()
	})
}

// block-dirty-bitmap-merge across the nodes of a qcow2 chain: persistent
// sources on the backing node (read-only), targets on the active one,
// alone and in a transaction; counts and sha256 are QSD's, a merge into
// the read-only backing node is refused with QSD's words, and the images
// store what QSD stores (reloaded in QSD, the bitmaps are the same).
func TestQcow2BitmapMergeAcrossChain(t *testing.T) {
	var images []string
	diffDaemons(t, func(k kind, dir string) string {
		sh(t, dir, `qemu-img create -q -f qcow2 base.qcow2 64M
qemu-img bitmap --add base.qcow2 s0
qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x12 20M 64k' base.qcow2 >/dev/null
qemu-img bitmap --add -g 4096 base.qcow2 s1
qemu-io -f qcow2 -c 'write -P 0x13 40M 12k' base.qcow2 >/dev/null
qemu-img bitmap --disable base.qcow2 s1
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-img bitmap --add top.qcow2 t0
qemu-io -f qcow2 -c 'write -P 0x21 8M 64k' top.qcow2 >/dev/null`)
		var tr strings.Builder
		d := startDaemon(t, k, dir)
		c := d.connect()
		addQcow2(t, c, dir, "top", "top.qcow2")
		var base string
		for _, n := range c.ok("query-named-block-nodes", map[string]any{"flat": true}).([]any) {
			m := n.(map[string]any)
			if m["drv"] == "qcow2" && m["node-name"] != "top" {
				base = m["node-name"].(string)
			}
		}
		uri := startNBD(t, c, dir, "top")
		qemuIO(t, uri, []string{"write -P 0x31 30M 128k", "write -P 0x32 63M 4k"})
		src := func(name string) any { return map[string]any{"node": base, "name": name} }
		c.ok("block-dirty-bitmap-add", map[string]any{"node": "top", "name": "m0", "persistent": true, "granularity": 16384})
		c.ok("block-dirty-bitmap-merge", map[string]any{"node": "top", "target": "m0", "bitmaps": []any{src("s0"), "t0"}})
		fmt.Fprintf(&tr, "merge into base: %s\n", reply(c, "block-dirty-bitmap-merge", map[string]any{"node": base, "target": "s0", "bitmaps": []any{map[string]any{"node": "top", "name": "t0"}}}))
		act := func(typ string, data map[string]any) any { return map[string]any{"type": typ, "data": data} }
		c.ok("transaction", map[string]any{"actions": []any{
			act("block-dirty-bitmap-add", map[string]any{"node": "top", "name": "m1", "persistent": true, "disabled": true}),
			act("block-dirty-bitmap-merge", map[string]any{"node": "top", "target": "m1", "bitmaps": []any{src("s1"), src("s0")}}),
			act("block-dirty-bitmap-clear", map[string]any{"node": "top", "name": "t0"}),
			act("block-dirty-bitmap-merge", map[string]any{"node": "top", "target": "t0", "bitmaps": []any{src("s1")}}),
		}})
		// A transaction that fails leaves the targets as they were.
		r := c.cmd("transaction", map[string]any{"actions": []any{
			act("block-dirty-bitmap-merge", map[string]any{"node": "top", "target": "m0", "bitmaps": []any{src("s1")}}),
			act("block-dirty-bitmap-merge", map[string]any{"node": "top", "target": "m1", "bitmaps": []any{src("nosuch")}}),
		}})
		fmt.Fprintf(&tr, "failed transaction: %v\n", r["error"])
		qemuIO(t, uri, []string{"write -P 0x33 50M 64k"})
		fmt.Fprintf(&tr, "top:\n%sbase:\n%s", qcow2Bitmaps(t, c, "top"), qcow2Bitmaps(t, c, base))
		d.stop()
		for _, img := range []string{"base", "top"} {
			p := filepath.Join(dir, img+".qcow2")
			fmt.Fprintf(&tr, "%s on disk: %s\n", img, imageBitmaps(t, p))
			checkClean(t, p, false)
		}
		images = append(images, filepath.Join(dir, "top.qcow2"))
		return tr.String()
	})
	// Both daemons' images, reloaded in QSD, hold the same bitmaps.
	var res []string
	for _, img := range images {
		d := startDaemon(t, kindQSD, "")
		c := d.connect()
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "read-only": true,
			"file": map[string]any{"driver": "file", "filename": img}})
		res = append(res, qcow2Bitmaps(t, c, "top"))
		d.stop()
	}
	if res[0] != res[1] {
		t.Fatalf("qbmond's image in QSD:\n%s\nQSD's:\n%s", res[1], res[0])
	}
}

// Bitmaps a daemon stored, changed by qemu-img bitmap on the closed image
// (merge from the image itself and from another one, remove, enable,
// disable), load in the same daemon again as in QSD: same flags, counts
// and sha256, and qemu-img check is clean.
func TestQcow2BitmapsQemuImgAfterDaemon(t *testing.T) {
	diffDaemons(t, func(k kind, dir string) string {
		sh(t, dir, `qemu-img create -q -f qcow2 img.qcow2 32M
qemu-img bitmap --add img.qcow2 old
qemu-io -f qcow2 -c 'write -P 0x11 1M 64k' img.qcow2 >/dev/null
qemu-img create -q -f qcow2 other.qcow2 32M
qemu-img bitmap --add -g 4096 other.qcow2 o0
qemu-io -f qcow2 -c 'write -P 0x12 10M 8k' -c 'write -P 0x13 31M 1M' other.qcow2 >/dev/null`)
		img := filepath.Join(dir, "img.qcow2")
		var tr strings.Builder
		d := startDaemon(t, k, dir)
		c := d.connect()
		addQcow2(t, c, dir, "n0", "img.qcow2")
		c.ok("block-dirty-bitmap-add", map[string]any{"node": "n0", "name": "a", "persistent": true})
		c.ok("block-dirty-bitmap-add", map[string]any{"node": "n0", "name": "b", "persistent": true, "granularity": 8192})
		c.ok("block-dirty-bitmap-add", map[string]any{"node": "n0", "name": "c", "persistent": true, "disabled": true})
		uri := startNBD(t, c, dir, "n0")
		qemuIO(t, uri, []string{"write -P 0x21 0 64k", "write -P 0x22 5M 3M", "write -P 0x23 20M 4k"})
		c.ok("block-dirty-bitmap-disable", map[string]any{"node": "n0", "name": "b"})
		qemuIO(t, uri, []string{"write -P 0x24 12M 64k"})
		c.ok("block-dirty-bitmap-merge", map[string]any{"node": "n0", "target": "c", "bitmaps": []any{"old"}})
		d.stop()
		fmt.Fprintf(&tr, "stored: %s\n", imageBitmaps(t, img))
		checkClean(t, img, false)
		sh(t, dir, `qemu-img bitmap --merge a img.qcow2 c
qemu-img bitmap --merge o0 -b other.qcow2 -F qcow2 img.qcow2 b
qemu-img bitmap --remove img.qcow2 old
qemu-img bitmap --enable img.qcow2 b
qemu-img bitmap --disable img.qcow2 a
qemu-img bitmap --add --disable -g 1M img.qcow2 d
qemu-img bitmap --merge b img.qcow2 d`)
		fmt.Fprintf(&tr, "after qemu-img: %s\n", imageBitmaps(t, img))
		checkClean(t, img, false)
		d = startDaemon(t, k, dir)
		c = d.connect()
		addQcow2(t, c, dir, "n0", "img.qcow2")
		fmt.Fprintf(&tr, "reloaded:\n%s", qcow2Bitmaps(t, c, "n0"))
		uri = startNBD(t, c, dir, "n0")
		qemuIO(t, uri, []string{"write -P 0x25 25M 64k"})
		fmt.Fprintf(&tr, "after a write:\n%s", qcow2Bitmaps(t, c, "n0"))
		d.stop()
		fmt.Fprintf(&tr, "stored again: %s\n", imageBitmaps(t, img))
		checkClean(t, img, false)
		return tr.String()
	})
}

// NBD export of persistent bitmaps loaded from the image and of one
// added persistent: nbdinfo --map=qemu:dirty-bitmap:NAME is QSD's, before
// and after guest writes through the export, and the refusals (a
// recording bitmap on a read-only export, an inconsistent one) are QSD's.
func TestQcow2PersistentBitmapNBDMap(t *testing.T) {
	src := qcow2BitmapImage(t, shortTempDir(t))
	diffDaemons(t, func(k kind, dir string) string {
		img := filepath.Join(dir, "img.qcow2")
		copyFile(t, src, img)
		var tr strings.Builder
		d := startDaemon(t, k, dir)
		c := d.connect()
		addQcow2(t, c, dir, "n0", "img.qcow2")
		c.ok("block-dirty-bitmap-add", map[string]any{"node": "n0", "name": "p0", "persistent": true, "granularity": 4096})
		sock := filepath.Join(dir, "nbd.sock")
		c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
		names := []string{"b0", "b1", "b2", "b3", "p0"}
		var bms []any
		for _, n := range names {
			bms = append(bms, n)
		}
		fmt.Fprintf(&tr, "read-only export of a recording bitmap: %s\n", reply(c, "block-export-add", map[string]any{"type": "nbd", "id": "ro", "node-name": "n0", "name": "ro", "bitmaps": []any{"b0"}}))
		c.ok("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "n0", "name": "disk", "writable": true, "bitmaps": bms})
		uri := "nbd+unix:///disk?socket=" + sock
		maps := func(what string) {
			for _, n := range names {
				fmt.Fprintf(&tr, "%s %s:\n%s", what, n, run(t, "nbdinfo", "--map=qemu:dirty-bitmap:"+n, uri))
			}
		}
		maps("loaded")
		qemuIO(t, uri, []string{"write -P 0x41 128k 4k", "write -P 0x42 301M 700k", "write -z 800M 64k", "discard 1000M 64k", "write -P 0x43 1073741312 512"})
		maps("after writes")
		c.ok("block-export-del", map[string]any{"id": "e0"})
		c.waitEvent(func(ev map[string]any) bool { return ev["event"] == "BLOCK_EXPORT_DELETED" })
		c.ok("blockdev-del", map[string]any{"node-name": "n0"})
		fmt.Fprintf(&tr, "stored: %s\n", imageBitmaps(t, img))
		checkClean(t, img, false)
		// Reopened, the stored bitmaps export the same map, read-only
		// too when they are disabled.
		addQcow2(t, c, dir, "n1", "img.qcow2")
		c.ok("block-dirty-bitmap-disable", map[string]any{"node": "n1", "name": "p0"})
		c.ok("block-export-add", map[string]any{"type": "nbd", "id": "e1", "node-name": "n1", "name": "again", "bitmaps": []any{"p0", "b3"}})
		for _, n := range []string{"p0", "b3"} {
			fmt.Fprintf(&tr, "reloaded %s:\n%s", n, run(t, "nbdinfo", "--map=qemu:dirty-bitmap:"+n, "nbd+unix:///again?socket="+sock))
		}
		d.kill()
		// Killed: the bitmaps are in use, inconsistent at the next open.
		d = startDaemon(t, k, dir)
		c = d.connect()
		addQcow2(t, c, dir, "n2", "img.qcow2")
		c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
		fmt.Fprintf(&tr, "export of an inconsistent bitmap: %s\n", reply(c, "block-export-add", map[string]any{"type": "nbd", "id": "e2", "node-name": "n2", "writable": true, "bitmaps": []any{"b0"}}))
		d.stop()
		return tr.String()
	})
}

// BenchmarkQcow2GuestWriteBitmaps is guest write throughput through an
// NBD export of a qcow2 node (qemu-img bench: 4 KiB writes, queue depth
// 16, over 256 MiB already allocated) with four recording persistent
// bitmaps in the image against none, in qbmond and, for reference, QSD.
// The target is a cost under 5%:
//
//	go test -run NONE -bench Qcow2GuestWriteBitmaps -count 3 ./tests/
func BenchmarkQcow2GuestWriteBitmaps(b *testing.B) {
	const (
		reqs = 20000
		size = 4096
	)
	for _, k := range []kind{kindQbmond, kindQSD} {
		for _, nb := range []int{0, 4} {
			b.Run(fmt.Sprintf("%s/bitmaps=%d", k, nb), func(b *testing.B) {
				dir := shortTempDir(b)
				img := filepath.Join(dir, "img.qcow2")
				cmds := [][]string{
					{"qemu-img", "create", "-q", "-f", "qcow2", img, "1G"},
					{"qemu-io", "-f", "qcow2", "-c", "write 0 256M", img},
				}
				for i, g := range []string{"65536", "65536", "4096", "512"}[:nb] {
					cmds = append(cmds, []string{"qemu-img", "bitmap", "--add", "-g", g, img, fmt.Sprintf("b%d", i)})
				}
				for _, cmd := range cmds {
					if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
						b.Fatalf("%v: %v\n%s", cmd, err, out)
					}
				}
				d := startDaemon(b, k, dir)
				c := d.connect()
				o := qcow2Node(img)
				o["node-name"] = "n0"
				c.ok("blockdev-add", o)
				sock := filepath.Join(dir, "nbd.sock")
				c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
				c.ok("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "n0", "name": "disk", "writable": true})
				uri := "nbd+unix:///disk?socket=" + sock
				b.SetBytes(reqs * size)
				b.ResetTimer()
				for range b.N {
					cmd := exec.Command("qemu-img", "bench", "-w", "-f", "raw", "-c", fmt.Sprint(reqs), "-d", "16",
						"-s", fmt.Sprint(size), "-S", "12288", uri)
					if out, err := cmd.CombinedOutput(); err != nil {
						b.Fatalf("qemu-img bench: %v\n%s", err, out)
					}
				}
				b.StopTimer()
				if nb > 0 {
					r := c.ok("x-debug-block-dirty-bitmap-sha256", map[string]any{"node": "n0", "name": "b3"}).(map[string]any)
					if r["sha256"] == "" {
						b.Fatal("no sha256")
					}
				}
				d.stop()
			})
		}
	}
}
