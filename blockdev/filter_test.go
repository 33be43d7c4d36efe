package blockdev_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/blockqmp"
	"github.com/qbmond/qbmond/blockdev/chain"
	"github.com/qbmond/qbmond/drivers/drivertest"
	_ "github.com/qbmond/qbmond/drivers/filter"
)

// twoLayers opens base (blocks 0..7 written with 0xb0+i) and active
// over it, and a root user of active; it returns the graph, active and
// the root edge.
func twoLayers(t *testing.T) (*blockdev.Graph, *blockdev.Node, *blockdev.Child) {
	t.Helper()
	g := newGraph(t)
	mustAdd(t, g, layer("base", nil))
	for i := range int64(8) {
		fillBlock(t, g, "base", i, 0xb0+byte(i))
	}
	active, root := openRoot(t, g, layer("active", "base"), rw)
	return g, active, root
}

// A filter inserted above a node takes over its parents and shows the
// node's file name; chains are walked through it, and it counts as a
// layer of allocation depth, as in QEMU. Removed, it gives the parents
// back and closes.
func TestAppendAndRemoveFilter(t *testing.T) {
	g, active, root := twoLayers(t)
	ctx := context.Background()
	fillBlock(t, g, "active", 1, 0xa1)
	var f *blockdev.Node
	if err := locked(g, func(lk *blockdev.Locked) (err error) {
		f, err = lk.AppendFilter(ctx, active, blockdev.Options{"driver": "mirror_top", "backing": "active"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if root.Node() != f {
		t.Fatalf("the root edge is on %s, not on the filter", root.Node().Name())
	}
	lk, unlock := drivertest.Lock(g)
	if f.Filename() != active.Filename() || f.FilterOrCOW() != active || !chain.InChain(lk, f, lk.Lookup("base")) ||
		chain.FindOverlay(lk, f, active) != f || f.SkipFilters() != active {
		t.Errorf("filter %s: file %q (active %q), next %v", f.Name(), f.Filename(), active.Filename(), f.FilterOrCOW())
	}
	info, ierr := blockqmp.BlockDeviceInfo(ctx, lk, f, false)
	if ierr != nil || info.BackingFileDepth != 2 || info.BackingFile != nil || info.Drv != "mirror_top" {
		t.Errorf("filter view %+v (%v)", info, ierr)
	}
	unlock()
	for _, c := range []struct {
		blk   int64
		depth int
	}{{1, 1}, {0, 3}} {
		_, depth, err := f.BlockStatusAbove(ctx, root, c.blk*cowBlock, cowBlock)
		if err != nil || depth != c.depth {
			t.Errorf("block %d: depth %d (%v), want %d", c.blk, depth, err, c.depth)
		}
	}
	p := make([]byte, 2*cowBlock)
	if err := root.Read(ctx, 0, p); err != nil || p[0] != 0xb0 || p[cowBlock] != 0xa1 {
		t.Fatalf("read through the filter: %v %x %x", err, p[0], p[cowBlock])
	}
	if err := locked(g, func(lk *blockdev.Locked) error { return lk.RemoveFilter(ctx, f) }); err != nil {
		t.Fatal(err)
	}
	if root.Node() != active {
		t.Fatalf("the root edge is on %s after the removal", root.Node().Name())
	}
	lk, unlock = drivertest.Lock(g)
	defer func() { unlock() }()
	if lk.Lookup(f.Name()) != nil {
		t.Errorf("the filter %s is still in the graph", f.Name())
	}
}

// Reads through a copy-on-read filter copy what the backing chain holds
// into the node below, as unchanged writes: dirty bitmaps do not count
// them.
func TestCopyOnReadFilter(t *testing.T) {
	g, active, root := twoLayers(t)
	ctx := context.Background()
	lk, unlock := drivertest.Lock(g)
	if _, err := active.AddDirtyBitmap(lk, "b0", blockdev.BitmapOptions{Granularity: 4096}); err != nil {
		t.Fatal(err)
	}
	f, err := lk.AppendFilter(ctx, active, blockdev.Options{"driver": "copy-on-read", "file": "active"})
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	if root.Node() != f {
		t.Fatal("the root edge did not move to the filter")
	}
	p := make([]byte, 3*cowBlock)
	if err := root.Read(ctx, cowBlock, p); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if p[i*cowBlock] != 0xb1+byte(i) {
			t.Fatalf("block %d reads %x", i+1, p[i*cowBlock])
		}
	}
	for blk := range int64(5) {
		st, err := active.BlockStatus(ctx, root, blk*cowBlock, cowBlock)
		if err != nil {
			t.Fatal(err)
		}
		want := blk >= 1 && blk <= 3
		if got := st.Flags&blockdev.StatusAllocated != 0; got != want {
			t.Errorf("block %d allocated in active: %v, want %v", blk, got, want)
		}
	}
	if b := active.DirtyBitmap("b0"); b == nil || b.Bits().Count() != 0 {
		t.Errorf("the copies marked the bitmap: %v", b)
	}
	lk, unlock = drivertest.Lock(g)
	defer func() { unlock() }()
	if err := lk.RemoveFilter(ctx, f); err != nil {
		t.Fatal(err)
	}
}

// Copy-on-read never overwrites a guest write with the older data it
// fetched from below: every block ends with what its writer wrote last,
// however the copies and the writes interleave.
func TestCopyOnReadRacingWrites(t *testing.T) {
	for i := range 3 {
		t.Run(fmt.Sprint(i), copyOnReadRacingWrites)
	}
}

func copyOnReadRacingWrites(t *testing.T) {
	g, active, root := twoLayers(t)
	ctx := context.Background()
	lk, unlock := drivertest.Lock(g)
	f, err := lk.AppendFilter(ctx, active, blockdev.Options{"driver": "copy-on-read", "file": "active"})
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	const blocks = 8
	var wg sync.WaitGroup
	final := make([]byte, blocks)
	for blk := range blocks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 12 {
				v := byte(0x10*round + blk + 1)
				if err := root.Write(ctx, int64(blk)*cowBlock, bytes.Repeat([]byte{v}, cowBlock), 0); err != nil {
					t.Error(err)
					return
				}
				final[blk] = v
			}
		}()
	}
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 7))
			p := make([]byte, 2*cowBlock)
			for range 120 {
				off := int64(rng.IntN(blocks-1)) * cowBlock
				if err := root.Read(ctx, off, p); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	p := make([]byte, cowBlock)
	for blk := range blocks {
		if err := root.Read(ctx, int64(blk)*cowBlock, p); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, bytes.Repeat([]byte{final[blk]}, cowBlock)) {
			t.Errorf("block %d reads %x, its last write was %x", blk, p[0], final[blk])
		}
	}
	lk, unlock = drivertest.Lock(g)
	defer func() { unlock() }()
	if err := lk.RemoveFilter(ctx, f); err != nil {
		t.Fatal(err)
	}
}
