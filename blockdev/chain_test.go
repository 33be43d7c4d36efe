package blockdev_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/chain"
	"github.com/qbmond/qbmond/drivers/drivertest"
)

// chaincow is testcow with a header that can be rewritten (BackingChanger,
// failing on request with x-fail-change) and a backing link the graph can
// change (BackingUpdater).
type chaincow struct {
	testcow
	failChange bool
	changes    int
}

func init() {
	blockdev.RegisterDriver("chaincow", func() blockdev.Driver { return &chaincow{testcow: testcow{alloc: map[int64]bool{}}} })
}

func (d *chaincow) Open(ctx context.Context, oc *blockdev.OpenContext) error {
	d.failChange, _ = oc.Options().Bool("x-fail-change", false)
	return d.testcow.Open(ctx, oc)
}

func (d *chaincow) ChangeBackingFile(ctx context.Context, name, format string) error {
	if d.failChange {
		return errInjected
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.name, d.format = name, format
	d.changes++
	return nil
}

func (d *chaincow) SetBackingChild(c *blockdev.Child) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.backing = c
}

func (d *chaincow) header() (string, string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.name, d.format
}

// layer is the blockdev-add options of a chaincow node over a testmem
// file; backing is a node name, an inline definition or nil.
func layer(name string, backing any, extra ...any) blockdev.Options {
	o := blockdev.Options{"driver": "chaincow",
		"file": map[string]any{"driver": "testmem", "size": 64 << 10, "align": 1}}
	if name != "" {
		o["node-name"] = name
	}
	if backing != nil {
		o["backing"] = backing
	}
	for i := 0; i+1 < len(extra); i += 2 {
		o[extra[i].(string)] = extra[i+1]
	}
	return o
}

// fillBlock writes one 4 KiB block of pattern b at block blk through a root
// edge of node.
func fillBlock(t *testing.T, g *blockdev.Graph, node string, blk int64, b byte) {
	t.Helper()
	lk, unlock := drivertest.Lock(g)
	c, err := lk.AttachRoot(lk.Lookup(node), "test", blockdev.PermConsistentRead|blockdev.PermWrite, blockdev.PermAll)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Write(context.Background(), blk*cowBlock, bytes.Repeat([]byte{b}, cowBlock), 0); err != nil {
		t.Fatal(err)
	}
	lk, unlock = drivertest.Lock(g)
	lk.DetachRoot(c)
	unlock()
}

func chainNames(g *blockdev.Graph) []string {
	lk, unlock := drivertest.Lock(g)
	defer func() { unlock() }()
	var out []string
	for n := lk.Lookup("active"); n != nil; n = n.BackingNode() {
		out = append(out, n.Name())
	}
	return out
}

// locked runs f under the graph lock.
func locked(g *blockdev.Graph, f func(lk *blockdev.Locked) error) error {
	return g.Do(f)
}

func TestDropIntermediateNamed(t *testing.T) {
	g := newGraph(t)
	ctx := context.Background()
	mustAdd(t, g, layer("base", nil))
	mustAdd(t, g, layer("mid", "base"))
	mustAdd(t, g, layer("top", "mid"))
	mustAdd(t, g, layer("active", "top"))
	if got := chainNames(g); !slices.Equal(got, []string{"active", "top", "mid", "base"}) {
		t.Fatalf("chain %v", got)
	}
	var base, active *blockdev.Node
	err := locked(g, func(lk *blockdev.Locked) error {
		active, base = lk.Lookup("active"), lk.Lookup("base")
		if o := chain.FindOverlay(lk, active, lk.Lookup("mid")); o == nil || o.Name() != "top" {
			t.Errorf("overlay of mid: %v", o)
		}
		if o := chain.FindOverlay(lk, active, active); o != nil {
			t.Errorf("overlay of active: %v", o.Name())
		}
		return chain.DropIntermediate(ctx, lk, active, lk.Lookup("top"), base, "")
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := chainNames(g); !slices.Equal(got, []string{"active", "base"}) {
		t.Fatalf("chain after drop %v", got)
	}
	name, format := active.Driver().(*chaincow).header()
	if name != base.Filename() || format != "chaincow" {
		t.Errorf("header names %q %q, want %q chaincow", name, format, base.Filename())
	}
	// blockdev-add'ed layers stay, with their own links, until deleted.
	if err := locked(g, func(lk *blockdev.Locked) error {
		if b := lk.Lookup("top").BackingNode(); b == nil || b.Name() != "mid" {
			t.Errorf("top's backing: %v", b)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wantErr(t, del(g, "mid"), "Node 'mid' is busy: node is used as backing hd of 'top'")
	if err := del(g, "top"); err != nil {
		t.Fatal(err)
	}
	if err := del(g, "mid"); err != nil {
		t.Fatal(err)
	}
	// An explicit backing file name goes to the header as given.
	mustAdd(t, g, layer("m2", "base"))
	if err := locked(g, func(lk *blockdev.Locked) error {
		if err := lk.SetBacking(ctx, active, lk.Lookup("m2")); err != nil {
			return err
		}
		return chain.DropIntermediate(ctx, lk, active, lk.Lookup("m2"), base, "rel/base.img")
	}); err != nil {
		t.Fatal(err)
	}
	if name, _ := active.Driver().(*chaincow).header(); name != "rel/base.img" {
		t.Errorf("header names %q", name)
	}
}

func TestDropIntermediateImplicitCloses(t *testing.T) {
	g := newGraph(t)
	mustAdd(t, g, layer("base", nil))
	mustAdd(t, g, layer("active", layer("", layer("", "base"))))
	before := len(names(g))
	if before != 8 { // 4 layers and their files
		t.Fatalf("nodes %v", names(g))
	}
	err := locked(g, func(lk *blockdev.Locked) error {
		active := lk.Lookup("active")
		return chain.DropIntermediate(context.Background(), lk, active, active.BackingNode(), lk.Lookup("base"), "")
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := names(g); len(got) != 4 {
		t.Errorf("nodes after dropping two implicit layers: %v", got)
	}
	if got := chainNames(g); !slices.Equal(got, []string{"active", "base"}) {
		t.Fatalf("chain after drop %v", got)
	}
}

func TestDropIntermediateErrorsChangeNothing(t *testing.T) {
	g := newGraph(t)
	ctx := context.Background()
	mustAdd(t, g, layer("base", nil))
	mustAdd(t, g, layer("mid", "base"))
	mustAdd(t, g, layer("top", "mid"))
	mustAdd(t, g, layer("active", "top", "x-fail-change", true))
	mustAdd(t, g, layer("other", nil))
	drop := func(top, base string) error {
		return locked(g, func(lk *blockdev.Locked) error {
			a, tp, b := lk.Lookup("active"), lk.Lookup(top), lk.Lookup(base)
			if err := chain.CheckDropUsers(lk, a, tp, b); err != nil {
				return err
			}
			return chain.DropIntermediate(ctx, lk, a, tp, b, "")
		})
	}
	wantErr(t, drop("active", "base"), "Top image file active is the active layer")
	wantErr(t, drop("other", "base"), "'other' is not in this backing file chain")
	wantErr(t, drop("mid", "top"), "'top' is not in this backing file chain")
	wantErr(t, drop("mid", "mid"), "'mid' is not in this backing file chain")
	wantErr(t, drop("top", "base"), "Could not update backing file link: Injected failure")

	// Another user of an intermediate node.
	mustAdd(t, g, layer("user", "mid"))
	wantErr(t, drop("top", "base"), "Node 'mid' is busy: node is used as backing hd of 'user'")
	if err := del(g, "user"); err != nil {
		t.Fatal(err)
	}
	// A blocked node.
	var remove func()
	locked(g, func(lk *blockdev.Locked) error {
		remove = lk.Lookup("top").AddBlocker(lk, errors.New("block device is in use by block job: commit"))
		return nil
	})
	wantErr(t, drop("top", "base"), "Node 'top' is busy: block device is in use by block job: commit")
	wantErr(t, del(g, "top"), "Node 'top' is busy: block device is in use by block job: commit")
	locked(g, func(lk *blockdev.Locked) error { remove(); remove(); return lk.Lookup("top").Blocker(lk) })

	if got := chainNames(g); !slices.Equal(got, []string{"active", "top", "mid", "base"}) {
		t.Fatalf("chain after failures %v", got)
	}
	locked(g, func(lk *blockdev.Locked) error {
		if n := len(lk.Lookup("base").Parents()); n != 1 {
			t.Errorf("base has %d parents, want 1", n)
		}
		if n := len(lk.Lookup("top").Parents()); n != 1 {
			t.Errorf("top has %d parents, want 1", n)
		}
		return nil
	})
	lk, unlock := drivertest.Lock(g)
	c := lk.Lookup("active")
	unlock()
	if c.Driver().(*chaincow).changes != 0 {
		t.Error("header changed")
	}
}

func TestSetBackingAndCycles(t *testing.T) {
	g := newGraph(t)
	ctx := context.Background()
	mustAdd(t, g, layer("base", nil))
	mustAdd(t, g, layer("active", "base"))
	mustAdd(t, g, blockdev.Options{"driver": "raw", "node-name": "r", "file": map[string]any{"driver": "testmem", "size": 4096}})
	locked(g, func(lk *blockdev.Locked) error {
		a, b := lk.Lookup("active"), lk.Lookup("base")
		wantErr(t, lk.SetBacking(ctx, b, a), "Making 'active' a backing child of 'base' would create a cycle")
		wantErr(t, lk.SetBacking(ctx, lk.Lookup("r"), b), "Driver 'raw' of node 'r' does not support backing files")
		if err := lk.SetBacking(ctx, a, nil); err != nil {
			t.Fatal(err)
		}
		if a.BackingNode() != nil || len(b.Parents()) != 0 {
			t.Error("backing link left")
		}
		if err := lk.SetBacking(ctx, a, b); err != nil {
			t.Fatal(err)
		}
		if a.BackingNode() != b {
			t.Error("backing link not set")
		}
		return nil
	})
}

func TestBlockers(t *testing.T) {
	g := newGraph(t)
	mustAdd(t, g, layer("n", nil))
	lk, unlock := drivertest.Lock(g)
	n := lk.Lookup("n")
	r1 := n.AddBlocker(lk, errors.New("first"))
	r2 := n.AddBlocker(lk, errors.New("second"))
	wantErr(t, n.Blocker(lk), "Node 'n' is busy: second")
	r2()
	wantErr(t, n.Blocker(lk), "Node 'n' is busy: first")
	r1()
	if n.Blocker(lk) != nil {
		t.Error("still blocked")
	}
	unlock()
}

// Reads through the active layer return the same data while its backing
// node is switched between two layers with identical contents and the
// layers are dropped and re-added, under concurrent I/O.
func TestChainChangesUnderIO(t *testing.T) {
	g := newGraph(t)
	ctx := context.Background()
	mustAdd(t, g, layer("base", nil))
	mustAdd(t, g, layer("copy", nil))
	mustAdd(t, g, layer("active", "base"))
	for blk := range int64(16) {
		fillBlock(t, g, "base", blk, byte(blk+1))
		fillBlock(t, g, "copy", blk, byte(blk+1))
	}
	lk, unlock := drivertest.Lock(g)
	root, err := lk.AttachRoot(lk.Lookup("active"), "block device 'io'", blockdev.PermConsistentRead|blockdev.PermWrite, blockdev.PermAll)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		wg.Go(func() {
			buf := make([]byte, cowBlock)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				blk := int64((w + i) % 16)
				if err := root.Read(ctx, blk*cowBlock, buf); err != nil {
					t.Error(err)
					return
				}
				if buf[0] != byte(blk+1) || buf[cowBlock-1] != byte(blk+1) {
					t.Errorf("block %d reads %d", blk, buf[0])
					return
				}
			}
		})
	}
	for i := range 100 {
		err := locked(g, func(lk *blockdev.Locked) error {
			a := lk.Lookup("active")
			from, to := "base", "copy"
			if i%2 == 1 {
				from, to = to, from
			}
			switch i % 3 {
			case 0:
				return lk.SetBacking(ctx, a, lk.Lookup(to))
			case 1:
				// to above from, then drop to.
				if err := lk.SetBacking(ctx, lk.Lookup(to), lk.Lookup(from)); err != nil {
					return err
				}
				if err := lk.SetBacking(ctx, a, lk.Lookup(to)); err != nil {
					return err
				}
				if err := chain.DropIntermediate(ctx, lk, a, lk.Lookup(to), lk.Lookup(from), ""); err != nil {
					return err
				}
				return lk.SetBacking(ctx, lk.Lookup(to), nil)
			default:
				undrain := lk.Drain(a, lk.Lookup(from))
				undrain2 := lk.Drain(lk.Lookup(from), a) // overlapping
				undrain()
				undrain2()
				undrain2()
				return nil
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}

// A drain that adds a parent of a node drained already does not deadlock
// with requests in flight from the parent into the child.
func TestDrainOverlapParentAfterChild(t *testing.T) {
	g := newGraph(t)
	ctx := context.Background()
	mustAdd(t, g, layer("base", nil))
	mustAdd(t, g, layer("active", "base"))
	lk, unlock := drivertest.Lock(g)
	root, _ := lk.AttachRoot(lk.Lookup("active"), "block device 'io'", blockdev.PermConsistentRead, blockdev.PermAll)
	unlock()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			buf := make([]byte, cowBlock)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := root.Read(ctx, 0, buf); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			lk, unlock := drivertest.Lock(g)
			u1 := lk.Drain(lk.Lookup("base"))
			u2 := lk.Drain(lk.Lookup("active"), lk.Lookup("base"))
			u2()
			u1()
			unlock()
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("drain deadlocked")
	}
	close(stop)
	wg.Wait()
}

func TestReplaceNode(t *testing.T) {
	g := newGraph(t)
	ctx := context.Background()
	mustAdd(t, g, layer("base", nil))
	mustAdd(t, g, layer("top", "base"))
	fillBlock(t, g, "base", 0, 0xbb)
	fillBlock(t, g, "top", 0, 0x77)
	lk, unlock := drivertest.Lock(g)
	r1, _ := lk.AttachRoot(lk.Lookup("top"), "export 'a'", blockdev.PermConsistentRead, blockdev.PermAll)
	r2, _ := lk.AttachRoot(lk.Lookup("top"), "export 'b'", blockdev.PermConsistentRead, blockdev.PermAll)
	unlock()
	buf := make([]byte, 512)
	if err := r1.Read(ctx, 0, buf); err != nil || buf[0] != 0x77 {
		t.Fatalf("before: %v %x", err, buf[0])
	}
	// A conflict leaves everything as it was.
	lk, unlock = drivertest.Lock(g)
	x, err := lk.AttachRoot(lk.Lookup("base"), "block device 'x'", 0, blockdev.PermConsistentRead|blockdev.PermWriteUnchanged|blockdev.PermResize|blockdev.PermWrite)
	if err != nil {
		t.Fatal(err)
	}
	lk.DetachRoot(x)
	x, err = lk.AttachRoot(lk.Lookup("base"), "block device 'x'", 0, blockdev.PermAll)
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	lk, unlock = drivertest.Lock(g)
	err = lk.ReplaceNode(ctx, lk.Lookup("top"), lk.Lookup("base"), r2)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := r1.Read(ctx, 0, buf); err != nil || buf[0] != 0xbb {
		t.Errorf("moved edge reads %v %x", err, buf[0])
	}
	if err := r2.Read(ctx, 0, buf); err != nil || buf[0] != 0x77 {
		t.Errorf("kept edge reads %v %x", err, buf[0])
	}
	lk, unlock = drivertest.Lock(g)
	if r1.Node().Name() != "base" || r2.Node().Name() != "top" {
		t.Errorf("edges on %s %s", r1.Node().Name(), r2.Node().Name())
	}
	// Moving a writer onto a node whose user shares no write fails.
	lk.DetachRoot(x)
	w, _ := lk.AttachRoot(lk.Lookup("top"), "export 'w'", blockdev.PermConsistentRead|blockdev.PermWrite, blockdev.PermAll)
	x, _ = lk.AttachRoot(lk.Lookup("base"), "block device 'x'", 0, blockdev.PermAll&^blockdev.PermWrite)
	err = lk.ReplaceNode(ctx, lk.Lookup("top"), lk.Lookup("base"))
	unlock()
	if err == nil {
		t.Fatal("conflicting replace succeeded")
	}
	lk, unlock = drivertest.Lock(g)
	if w.Node().Name() != "top" || r2.Node().Name() != "top" || len(lk.Lookup("top").Parents()) != 2 {
		t.Error("failed replace changed edges")
	}
	unlock()
}

func TestSetReadOnlyReopensFile(t *testing.T) {
	g := newGraph(t)
	ctx := context.Background()
	img := drivertest.Image(t, 1<<20)
	mustAdd(t, g, blockdev.Options{"driver": "raw", "node-name": "disk", "read-only": true,
		"file": map[string]any{"driver": "file", "filename": img}})
	lk, unlock := drivertest.Lock(g)
	defer func() { unlock() }()
	disk := lk.Lookup("disk")
	file := disk.Children()[0].Node()
	if !file.ReadOnly() {
		t.Fatal("file child not read-only")
	}
	if err := lk.SetReadOnly(ctx, disk, false); err != nil {
		t.Fatal(err)
	}
	if disk.ReadOnly() || file.ReadOnly() {
		t.Fatal("still read-only")
	}
	w, err := lk.AttachRoot(disk, "block device 'w'", blockdev.PermConsistentRead|blockdev.PermWrite, blockdev.PermAll)
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	werr := w.Write(ctx, 0, bytes.Repeat([]byte{0x5a}, 512), 0)
	lk, unlock = drivertest.Lock(g)
	if werr != nil {
		t.Fatal(werr)
	}
	wantErr(t, lk.SetReadOnly(ctx, disk, true), "Read-only block node 'disk' cannot support read-write users")
	if disk.ReadOnly() || file.ReadOnly() {
		t.Fatal("failed reopen changed the mode")
	}
	lk.DetachRoot(w)
	if err := lk.SetReadOnly(ctx, disk, true); err != nil {
		t.Fatal(err)
	}
	if !disk.ReadOnly() || !file.ReadOnly() {
		t.Fatal("not read-only")
	}
	// A separately added file node does not inherit the mode.
	mustAddLocked := func(o blockdev.Options) {
		if _, err := lk.Add(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	mustAddLocked(blockdev.Options{"driver": "file", "node-name": "f2", "filename": img, "read-only": true})
	mustAddLocked(blockdev.Options{"driver": "testcow", "node-name": "d2", "file": "f2", "read-only": true})
	wantErr(t, lk.SetReadOnly(ctx, lk.Lookup("d2"), false), "Block node is read-only")
	if !lk.Lookup("d2").ReadOnly() {
		t.Error("failed reopen changed the mode")
	}
}

// After a reopen the image locks are held through the new descriptor:
// another user of the file (here a second graph, as another process
// would be) cannot take the write permission the node holds, and can once
// the node went back to read-only.
func TestSetReadOnlyKeepsImageLocks(t *testing.T) {
	ctx := context.Background()
	img := drivertest.Image(t, 1<<20)
	g := newGraph(t)
	mustAdd(t, g, blockdev.Options{"driver": "raw", "node-name": "disk", "read-only": true,
		"file": map[string]any{"driver": "file", "filename": img}})
	other := newGraph(t)
	mustAdd(t, other, blockdev.Options{"driver": "raw", "node-name": "o",
		"file": map[string]any{"driver": "file", "filename": img}})
	tryWrite := func() error {
		return other.Do(func(lk *blockdev.Locked) error {
			c, err := lk.AttachRoot(lk.Lookup("o"), "block device 'o'", blockdev.PermConsistentRead|blockdev.PermWrite, blockdev.PermAll)
			if err == nil {
				lk.DetachRoot(c)
			}
			return err
		})
	}
	lk, unlock := drivertest.Lock(g)
	if err := lk.SetReadOnly(ctx, lk.Lookup("disk"), false); err != nil {
		t.Fatal(err)
	}
	w, err := lk.AttachRoot(lk.Lookup("disk"), "block device 'w'", blockdev.PermConsistentRead|blockdev.PermWrite, blockdev.PermConsistentRead)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	wantErr(t, tryWrite(), `Failed to get "write" lock`)
	lk, unlock = drivertest.Lock(g)
	lk.DetachRoot(w)
	err = lk.SetReadOnly(ctx, lk.Lookup("disk"), true)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := tryWrite(); err != nil {
		t.Fatal(err)
	}
}
