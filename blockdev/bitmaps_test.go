package blockdev_test

import (
	"context"
	"sync"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
)

// Bitmaps record writes that run concurrently with bitmap commands, and
// the commands check busy, merge sizes and names as QEMU does.
func TestDirtyBitmapsUnderIO(t *testing.T) {
	ctx := context.Background()
	g := newGraph(t)
	mustAdd(t, g, blockdev.Options{"driver": "testmem", "node-name": "m", "size": int64(1 << 20), "align": int64(1)})
	mustAdd(t, g, blockdev.Options{"driver": "testmem", "node-name": "other", "size": int64(2 << 20), "align": int64(1)})
	lk, unlock := drivertest.Lock(g)
	n := lk.Lookup("m")
	a, err := n.AddDirtyBitmap(lk, "a", blockdev.BitmapOptions{Granularity: 4096})
	if err != nil {
		unlock()
		t.Fatal(err)
	}
	b, _ := n.AddDirtyBitmap(lk, "b", blockdev.BitmapOptions{Granularity: 512, Disabled: true})
	o, _ := lk.Lookup("other").AddDirtyBitmap(lk, "o", blockdev.BitmapOptions{})
	c, err := lk.AttachRoot(n, "test", blockdev.PermConsistentRead|blockdev.PermWrite, blockdev.PermAll)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			buf := make([]byte, 1000)
			for i := 0; i < 200; i++ {
				if err := c.Write(ctx, int64((w*200+i)*1000%(1<<20-1000)), buf[:1+i%999], 0); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	for i := 0; i < 50; i++ {
		_, unlock := drivertest.Lock(g)
		if err := b.MergeInto(lk, []*blockdev.DirtyBitmap{a}); err != nil {
			t.Error(err)
		}
		if i%10 == 0 {
			b.Clear(lk)
		}
		unlock()
	}
	wg.Wait()
	if a.Bits().Count() == 0 {
		t.Fatal("writes not recorded")
	}
	if b.Bits().Count() != 0 && !b.Recording() {
		// b does not record; it only holds what merges put there.
		if b.Bits().Count() > a.Bits().Count()*8 {
			t.Errorf("b holds more than a could give: %d vs %d", b.Bits().Count(), a.Bits().Count())
		}
	}
	lk, unlock = drivertest.Lock(g)
	defer func() { unlock() }()
	if err := b.MergeInto(lk, []*blockdev.DirtyBitmap{o}); err == nil ||
		err.Error() != "Bitmaps are of different sizes (destination size is 1048576, source size is 2097152) and can't be merged" {
		t.Errorf("merge of different sizes: %v", err)
	}
	a.Acquire()
	if err := n.RemoveDirtyBitmap(lk, "a"); err == nil || err.Error() != "Bitmap 'a' is currently in use by another operation and cannot be used" {
		t.Errorf("remove of a busy bitmap: %v", err)
	}
	if err := a.Clear(lk); err == nil {
		t.Error("clear of a busy bitmap")
	}
	a.Release()
	if err := n.RemoveDirtyBitmap(lk, "a"); err != nil {
		t.Error(err)
	}
	if _, err := n.AddDirtyBitmap(lk, "a", blockdev.BitmapOptions{Persistent: true}); err == nil ||
		err.Error() != "Can't store persistent bitmaps to m: Operation not supported" {
		t.Errorf("persistent on testmem: %v", err)
	}
	lk.DetachRoot(c)
}
