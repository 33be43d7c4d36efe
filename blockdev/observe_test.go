package blockdev_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
)

// TestWriteObserverSeesEveryWrite: each write, write-zeroes and discard
// that is admitted enters and leaves once, with its range, and reads are
// not observed.
func TestWriteObserverSeesEveryWrite(t *testing.T) {
	n, c, _ := memNode(t, blockdev.Options{"discard": "unmap"})
	var mu sync.Mutex
	entered, left := 0, map[[2]int64]int{}
	remove := n.AddWriteObserver(blockdev.WriteObserver{
		Enter: func(context.Context) error { mu.Lock(); entered++; mu.Unlock(); return nil },
		Leave: func(off, length int64) { mu.Lock(); left[[2]int64{off, length}]++; mu.Unlock() },
	})
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			off := int64(i) * 4096
			switch i % 3 {
			case 0:
				_ = c.Write(ctx, off, fill(1000, byte(i)), 0)
			case 1:
				_ = c.WriteZeroes(ctx, off, 1000, 0)
			case 2:
				_ = c.Discard(ctx, off, 1000)
			}
			_ = c.Read(ctx, off, make([]byte, 100))
		})
	}
	wg.Wait()
	remove()
	_ = c.Write(ctx, 0, fill(512, 1), 0)
	if entered != 16 || len(left) != 16 {
		t.Fatalf("entered %d, left %v", entered, left)
	}
	for i := range 16 {
		if left[[2]int64{int64(i) * 4096, 1000}] != 1 {
			t.Fatalf("write %d not seen leaving once: %v", i, left)
		}
	}
}

// TestWriteObserverGateAndMove: an observer that holds writes back, while
// the edge moves to another node, makes the held writes go there.
func TestWriteObserverGateAndMove(t *testing.T) {
	g := newGraph(t)
	mustAdd(t, g, blockdev.Options{"driver": "testmem", "node-name": "a", "size": int64(64 << 10)})
	mustAdd(t, g, blockdev.Options{"driver": "testmem", "node-name": "b", "size": int64(64 << 10)})
	lk, unlock := drivertest.Lock(g)
	a, b := lk.Lookup("a"), lk.Lookup("b")
	c, err := lk.AttachRoot(a, "block device 'test'", rw, blockdev.PermAll)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	waiting := make(chan struct{}, 1)
	remove := a.AddWriteObserver(blockdev.WriteObserver{Enter: func(context.Context) error {
		waiting <- struct{}{}
		<-gate
		return nil
	}})
	defer remove()
	done := make(chan error, 1)
	go func() { done <- c.Write(context.Background(), 0, fill(4096, 7), 0) }()
	<-waiting
	lk, unlock = drivertest.Lock(g)
	err = lk.ReplaceNode(context.Background(), a, b)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	close(gate)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("held write never finished")
	}
	if got := b.Driver().(*memdrv).snapshot()[:4096]; string(got) != string(fill(4096, 7)) {
		t.Fatal("the held write did not reach the node the edge moved to")
	}
	if got := a.Driver().(*memdrv).snapshot()[:4096]; string(got) == string(fill(4096, 7)) {
		t.Fatal("the held write reached the old node")
	}
}
