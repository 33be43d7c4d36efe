package drivertest

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
)

// The node checks: what the graph does with a node beyond requests
// (persistence, resize, reopen, permissions, locks, bitmaps, close).

// closeGraph closes the check's graph (the test's cleanup closing it again
// does nothing).
func (e *env) closeGraph(t *testing.T) {
	t.Helper()
	if err := e.Graph.Close(); err != nil {
		t.Fatalf("closing the graph: %v", err)
	}
}

// reopenImage closes the check's graph and opens its image again in a
// new one, with a root user holding perm; the model carries over.
func (e *env) reopenImage(t *testing.T, perm blockdev.Perm) {
	t.Helper()
	e.closeGraph(t)
	e.Graph, e.Node, e.Child = Open(t, e.Opts, perm)
}

// checkPersist: what was written, flushed or not, reads back after the
// node is closed and its image opened again.
func checkPersist(t *testing.T, e *env) {
	l := e.Child.Length()
	e.write(t, 0, pattern(8192, 1), 0)
	e.write(t, l/2-7, pattern(70000, 2), blockdev.ReqFUA)
	if err := e.Child.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	e.zero(t, 4096, 512, 0)
	e.write(t, l-4096, pattern(4096, 3), 0) // not flushed: the close flushes
	e.reopenImage(t, RootPerm)
	if e.Node.Length() != l {
		t.Fatalf("length %d after reopening the image, was %d", e.Node.Length(), l)
	}
	e.verifyAll(t, "closing and reopening the image")
	e.checkExtents(t)
}

// checkTruncate grows the node, and shrinks it where the driver can:
// the new space reads as zeroes, the rest keeps its content, and space
// given up and taken back reads as zeroes again.
func checkTruncate(t *testing.T, e *env) {
	c := e.Child
	l := c.Length()
	e.write(t, l-8192, pattern(8192, 1), 0)
	e.write(t, 0, pattern(4096, 2), 0)
	grown := l + 1<<20
	if err := c.Truncate(ctx, grown, false); err != nil {
		// A size fixed by the options (raw's), or by the storage
		// (null-co's, a device's), refuses as QEMU does.
		if !errors.Is(err, blockdev.ErrNotSupported) && !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("growing from %d to %d: %v", l, grown, err)
		}
		if c.Length() != l {
			t.Fatalf("a refused resize changed the length from %d to %d", l, c.Length())
		}
		e.verifyAll(t, "a refused resize")
		t.Skipf("%s implements blockdev.Truncater but this node cannot be resized: %v", e.Node.DriverName(), err)
	}
	if c.Length() != grown {
		t.Fatalf("length %d after growing to %d", c.Length(), grown)
	}
	if e.model != nil {
		e.model = append(e.model, make([]byte, grown-l)...)
	}
	e.verifyAll(t, "growing")
	e.write(t, l-512, pattern(4096, 3), 0) // across the old end
	e.write(t, grown-512, pattern(512, 4), 0)
	e.verify(t, l-8192, grown-l+8192, "writes into the new space")

	if err := c.Truncate(ctx, l, false); err != nil {
		t.Logf("shrinking from %d to %d: %v (the driver cannot shrink)", grown, l, err)
		if c.Length() != grown {
			t.Fatalf("a refused shrink changed the length from %d to %d", grown, c.Length())
		}
		e.verifyAll(t, "a refused shrink")
		return
	}
	if c.Length() != l {
		t.Fatalf("length %d after shrinking to %d", c.Length(), l)
	}
	e.verifyAll(t, "shrinking")
	if err := c.Truncate(ctx, grown, false); err != nil {
		t.Fatalf("growing again: %v", err)
	}
	if e.model != nil {
		clear(e.model[l:])
	}
	e.verifyAll(t, "shrinking and growing again (what was cut off must not come back)")
}

// checkReadOnly closes the node and opens its image read-only: the
// content is there, and neither a writer nor a write is let in.
func checkReadOnly(t *testing.T, e *env) {
	if !e.ReadOnly {
		e.write(t, 4096, pattern(8192, 1), 0)
	}
	e.closeGraph(t)
	o := e.Opts.Clone()
	o["read-only"] = true
	g := blockdev.NewGraph(zerolog.Nop())
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Errorf("closing the read-only graph: %v", err)
		}
	})
	n, c, err := add(g, o, blockdev.PermConsistentRead, blockdev.PermAll)
	if e.WritesChild {
		if err == nil || !strings.HasSuffix(err.Error(), "Block node is read-only") {
			t.Fatalf("opening read-only a driver that writes to its child: got %v, want QEMU's refusal", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("opening read-only: %v", err)
	}
	e.Graph, e.Node, e.Child = g, n, c
	if !n.ReadOnly() {
		t.Error("node not read-only")
	}
	err = locked(g, func(lk *blockdev.Locked) error {
		_, err := lk.AttachRoot(n, "block device 'w'", blockdev.PermWrite, blockdev.PermAll)
		return err
	})
	if err == nil || err.Error() != "Block node is read-only" {
		t.Errorf("attaching a writer to a read-only node: got %v", err)
	}
	e.verifyAll(t, "opening read-only")
	if err := c.Write(ctx, 0, make([]byte, 512), 0); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Errorf("write to a read-only node: got %v, want ErrReadOnly", err)
	}
	if err := c.WriteZeroes(ctx, 0, 512, 0); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Errorf("write-zeroes to a read-only node: got %v, want ErrReadOnly", err)
	}
	e.verifyAll(t, "refused writes")
}

func checkPermission(t *testing.T, e *env) {
	c := e.Child
	if err := c.Write(ctx, 0, make([]byte, 512), 0); !errors.Is(err, blockdev.ErrPermission) {
		t.Errorf("write without the write permission: got %v, want ErrPermission", err)
	}
	if err := c.WriteZeroes(ctx, 0, 512, 0); !errors.Is(err, blockdev.ErrPermission) {
		t.Errorf("write-zeroes without the write permission: got %v", err)
	}
	if err := c.Truncate(ctx, c.Length()+1<<20, false); err == nil {
		t.Errorf("resize without the resize permission succeeded")
	}
	e.verifyAll(t, "refused requests")

	// A user that lets nobody else write keeps other writers out, and
	// lets them in once it goes.
	attach := func(user string, perm, shared blockdev.Perm) (c *blockdev.Child, err error) {
		err = locked(e.Graph, func(lk *blockdev.Locked) error {
			c, err = lk.AttachRoot(e.Node, "block device '"+user+"'", perm, shared)
			return err
		})
		return c, err
	}
	excl, err := attach("excl", RootPerm, exclusiveShared)
	if err != nil {
		t.Fatalf("a writer sharing no write: %v", err)
	}
	if _, err := attach("w", blockdev.PermWrite, blockdev.PermAll); err == nil {
		t.Fatal("a second writer attached next to one sharing no write")
	}
	_ = locked(e.Graph, func(lk *blockdev.Locked) error { lk.DetachRoot(excl); return nil })
	w, err := attach("w", blockdev.PermWrite, blockdev.PermAll)
	if err != nil {
		t.Fatalf("a writer after the exclusive one went: %v", err)
	}
	if err := w.Write(ctx, 0, pattern(512, 1), 0); err != nil {
		t.Fatal(err)
	}
}

// reopenOptions are blockdev-reopen's options for the check's node: the
// ones it was opened with (blockdev-reopen's are complete), with the
// children the driver opened itself (a backing file named in the image)
// named as they are, and read-only as given.
func (e *env) reopenOptions(readOnly bool) []map[string]any {
	o := e.Opts.Clone()
	o["read-only"] = readOnly
	for _, c := range e.Node.Children() {
		if !o.Has(c.Name()) {
			o[c.Name()] = c.Node().Name()
		}
	}
	return []map[string]any{o}
}

func (e *env) reopen(readOnly bool) error {
	return locked(e.Graph, func(lk *blockdev.Locked) error { return lk.Reopen(ctx, e.reopenOptions(readOnly)) })
}

// setUser replaces the root user by one holding perm and sharing shared.
func (e *env) setUser(t *testing.T, perm, shared blockdev.Perm) {
	t.Helper()
	err := locked(e.Graph, func(lk *blockdev.Locked) error {
		lk.DetachRoot(e.Child)
		c, err := lk.AttachRoot(e.Node, "block device 'drivertest'", perm, shared)
		e.Child = c
		return err
	})
	if err != nil {
		t.Fatalf("attaching a user holding %v: %v", perm, err)
	}
}

// needsReopener: a driver that cannot reopen refuses blockdev-reopen with
// QEMU's message and stays as it was; the check then skips.
func needsReopener(t *testing.T, e *env) string {
	if _, ok := e.Node.Driver().(blockdev.Reopener); ok {
		return ""
	}
	want := fmt.Sprintf("Block format '%s' used by node '%s' does not support reopening files", e.Node.DriverName(), e.Node.Name())
	if err := e.reopen(true); err == nil || err.Error() != want {
		t.Fatalf("blockdev-reopen of %s: got %v, want %q", e.Node.DriverName(), err, want)
	}
	if e.Node.ReadOnly() {
		t.Fatal("a refused reopen made the node read-only")
	}
	return e.Node.DriverName() + " does not implement blockdev.Reopener (and refuses blockdev-reopen as QEMU does)"
}

// checkReopen reopens the node read-only and read-write again
// (blockdev-reopen): the content stays, a read-only node takes no writer,
// a read-write one does again.
func checkReopen(t *testing.T, e *env) {
	e.write(t, 4096, pattern(65536, 1), 0)
	e.setUser(t, blockdev.PermConsistentRead, blockdev.PermAll)
	if err := e.reopen(true); err != nil {
		t.Fatalf("reopening read-only: %v", err)
	}
	if !e.Node.ReadOnly() {
		t.Fatal("not read-only after reopening read-only")
	}
	e.verifyAll(t, "reopening read-only")
	err := locked(e.Graph, func(lk *blockdev.Locked) error {
		_, err := lk.AttachRoot(e.Node, "block device 'w'", blockdev.PermWrite, blockdev.PermAll)
		return err
	})
	if err == nil {
		t.Fatal("a writer attached to a node reopened read-only")
	}
	if err := e.reopen(false); err != nil {
		t.Fatalf("reopening read-write: %v", err)
	}
	if e.Node.ReadOnly() {
		t.Fatal("read-only after reopening read-write")
	}
	e.setUser(t, RootPerm, blockdev.PermAll)
	e.write(t, 65536, pattern(8192, 2), 0)
	e.verifyAll(t, "reopening read-write and writing")
	if err := e.Child.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// checkReopenAbort: a reopen that fails after the driver prepared it (a
// writer holds the node, so it cannot become read-only) leaves the node
// as it was: read-write, written through, same options and content.
func checkReopenAbort(t *testing.T, e *env) {
	e.write(t, 0, pattern(65536, 1), 0)
	opts, filename, length := e.Node.Options(), e.Node.Filename(), e.Node.Length()
	err := e.reopen(true)
	if err == nil {
		t.Fatal("reopening read-only succeeded under a writer")
	}
	t.Logf("reopening read-only under a writer: %v", err)
	if e.Node.ReadOnly() {
		t.Fatal("read-only after an aborted reopen")
	}
	if e.Node.Length() != length || e.Node.Filename() != filename {
		t.Fatalf("after an aborted reopen: length %d, filename %q; were %d, %q", e.Node.Length(), e.Node.Filename(), length, filename)
	}
	if o := e.Node.Options(); !reflect.DeepEqual(o, opts) {
		t.Fatalf("options after an aborted reopen: %v, were %v", o, opts)
	}
	e.verifyAll(t, "an aborted reopen")
	e.write(t, 32768, pattern(65536, 2), 0)
	e.verifyAll(t, "writing after an aborted reopen")
	if err := e.Child.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// And a reopen that can succeed still does.
	e.setUser(t, blockdev.PermConsistentRead, blockdev.PermAll)
	if err := e.reopen(true); err != nil {
		t.Fatalf("reopening read-only after an aborted reopen: %v", err)
	}
	e.verifyAll(t, "reopening read-only after an aborted reopen")
}

// needsPermLocker: image locks are the business of a node in the tree
// that holds permissions outside the process (file).
func needsPermLocker(_ *testing.T, e *env) string {
	var walk func(n *blockdev.Node) bool
	walk = func(n *blockdev.Node) bool {
		if _, ok := n.Driver().(blockdev.PermLocker); ok {
			return true
		}
		return slices.ContainsFunc(n.Children(), func(c *blockdev.Child) bool { return walk(c.Node()) })
	}
	if !walk(e.Node) {
		return "no node under " + e.Node.DriverName() + " implements blockdev.PermLocker"
	}
	return ""
}

// A writer that does not let others write, as a guest device without
// share-rw.
const exclusiveShared = blockdev.PermAll &^ (blockdev.PermWrite | blockdev.PermResize)

// checkImageLocks: while the node has a writer that shares no writing, a
// second open of the same image wanting write (another graph: another
// process, as far as image locks go) is refused, as QEMU's locking
// refuses it; once the first graph closes, the second open succeeds.
func checkImageLocks(t *testing.T, e *env) {
	e.setUser(t, RootPerm, exclusiveShared)
	e.write(t, 0, pattern(4096, 1), 0)
	g2 := blockdev.NewGraph(zerolog.Nop())
	t.Cleanup(func() { _ = g2.Close() })
	_, _, err := add(g2, e.Opts, RootPerm, exclusiveShared)
	if err == nil {
		t.Fatal("a second writer opened the image while the first holds it")
	}
	if !strings.Contains(err.Error(), "lock") {
		t.Errorf("second writer refused with %q: want QEMU's lock error", err)
	}
	if err := g2.Close(); err != nil {
		t.Fatalf("closing the graph of the refused open: %v", err)
	}
	// The refusal left the first user as it was.
	e.write(t, 4096, pattern(4096, 2), 0)
	e.verify(t, 0, 16384, "a refused second open")

	e.closeGraph(t)
	e.Graph, e.Node, e.Child = nil, nil, nil
	g3 := blockdev.NewGraph(zerolog.Nop())
	defer func() {
		if err := g3.Close(); err != nil {
			t.Errorf("closing: %v", err)
		}
	}()
	n, c, err := add(g3, e.Opts, RootPerm, exclusiveShared)
	if err != nil {
		t.Fatalf("a writer after the first one closed: %v", err)
	}
	e.Node, e.Child = n, c
	e.verify(t, 0, 16384, "reopening after the lock was released")
}

// checkBitmapStore: a persistent bitmap records writes, is found again
// with the same bits when the image is opened again, and is gone once
// removed.
func checkBitmapStore(t *testing.T, e *env) {
	const name = "drivertest"
	var b *blockdev.DirtyBitmap
	err := locked(e.Graph, func(lk *blockdev.Locked) error {
		var err error
		b, err = e.Node.AddDirtyBitmap(lk, name, blockdev.BitmapOptions{Granularity: 65536, Persistent: true})
		return err
	})
	if e.RefusesBitmaps {
		if err == nil {
			t.Fatal("adding a persistent bitmap to an image that cannot hold one succeeded")
		}
		return
	}
	if err != nil {
		t.Fatalf("adding a persistent bitmap: %v", err)
	}
	if !b.Persistent() || !b.Recording() {
		t.Fatalf("new bitmap: persistent %v, recording %v", b.Persistent(), b.Recording())
	}
	e.write(t, 65536+7, pattern(100, 1), 0)
	e.zero(t, 5*65536, 65536*2, 0)
	if got := b.Bits().Count(); got != 3*65536 {
		t.Fatalf("bitmap counts %d dirty bytes after dirtying 3 granules", got)
	}
	want := b.Bits().MarshalBits()

	e.reopenImage(t, RootPerm)
	b = e.Node.DirtyBitmap(name)
	if b == nil {
		t.Fatal("the persistent bitmap is gone after reopening the image")
	}
	if !b.Persistent() || !b.Recording() || b.Inconsistent() {
		t.Fatalf("reloaded bitmap: persistent %v, recording %v, inconsistent %v", b.Persistent(), b.Recording(), b.Inconsistent())
	}
	if b.Bits().Granularity() != 65536 || string(b.Bits().MarshalBits()) != string(want) {
		t.Fatalf("reloaded bitmap: granularity %d, %d dirty bytes; want the bits saved", b.Bits().Granularity(), b.Bits().Count())
	}
	e.verifyAll(t, "reopening the image")
	if _, ok := e.Node.Driver().(blockdev.BitmapRecorder); ok {
		// The driver stores whether the bitmap records too.
		if err := locked(e.Graph, func(lk *blockdev.Locked) error { return b.SetRecording(false) }); err != nil {
			t.Fatalf("disabling the bitmap: %v", err)
		}
		e.reopenImage(t, RootPerm)
		if b = e.Node.DirtyBitmap(name); b == nil || b.Recording() {
			t.Fatalf("a disabled persistent bitmap after reopening the image: %v", b)
		}
	}
	err = locked(e.Graph, func(lk *blockdev.Locked) error { return e.Node.RemoveDirtyBitmap(lk, name) })
	if err != nil {
		t.Fatalf("removing the bitmap: %v", err)
	}
	e.reopenImage(t, RootPerm)
	if e.Node.DirtyBitmap(name) != nil {
		t.Fatal("a removed persistent bitmap came back")
	}
}

// checkCloseAfterError: requests that fail, in the node's entry points and
// in the storage under the driver (blkdebug above each of its children),
// leave a node that closes cleanly, releasing every file descriptor and
// goroutine it had.
func checkCloseAfterError(t *testing.T, e *env) {
	e.closeGraph(t)
	fds, goroutines := countFDs(t), runtime.NumGoroutine()

	// Requests the node refuses.
	g, n, c := Open(t, e.Opts, blockdev.PermConsistentRead)
	if err := c.Read(ctx, n.Length()-1, make([]byte, 2)); err == nil {
		t.Error("a read past the end succeeded")
	}
	if err := c.Write(ctx, 0, make([]byte, 512), 0); err == nil {
		t.Error("a write without permission succeeded")
	}
	checkClosed(t, g, fds, goroutines)

	// Requests that fail under the driver.
	perm := RootPerm
	if e.ReadOnly {
		perm = blockdev.PermConsistentRead
	}
	g, n, c = Open(t, e.Opts, perm)
	if len(n.Children()) == 0 {
		t.Logf("%s has no child to inject errors under", n.DriverName())
		checkClosed(t, g, fds, goroutines)
		return
	}
	injectErrors(t, g, n)
	failed := 0
	note := func(err error) {
		if err != nil {
			failed++
		}
	}
	note(c.Read(ctx, 0, make([]byte, 65536)))
	if !e.ReadOnly {
		note(c.Write(ctx, 65536, pattern(65536, 1), 0))
		note(c.WriteZeroes(ctx, 0, 65536, 0))
		note(c.Flush(ctx))
	}
	t.Logf("%d requests failed with the injected errors", failed)
	checkClosed(t, g, fds, goroutines)
}

// injectErrors puts a blkdebug node above each child of n, failing the
// next read, write, write-zeroes and flush that reach it.
func injectErrors(t *testing.T, g *blockdev.Graph, n *blockdev.Node) {
	t.Helper()
	var rules []any
	for _, io := range []string{"read", "write", "write-zeroes", "flush"} {
		rules = append(rules, map[string]any{"event": injectEvent, "iotype": io, "once": true,
			"errno": int64(injectErrno)})
	}
	var debug []blockdev.DebugEventer
	err := locked(g, func(lk *blockdev.Locked) error {
		for i, x := range n.Children() {
			f, err := lk.AppendFilter(ctx, x.Node(), blockdev.Options{"driver": "blkdebug",
				"node-name": fmt.Sprintf("drivertest-inject%d", i), "image": x.Node().Name(), "inject-error": rules})
			if err != nil {
				return fmt.Errorf("putting blkdebug above %s: %w", x.Name(), err)
			}
			debug = append(debug, f.Driver().(blockdev.DebugEventer))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range debug {
		d.DebugEvent(injectEvent) // arms the rules
	}
}

// The injected errors: an errno nothing else produces, once each, after
// an event no driver raises.
const (
	injectEvent = "none"
	injectErrno = syscall.EREMOTEIO
)

// checkClosed closes g and checks that it released what it held. An
// injected error a request did not meet may fail the closing flush;
// nothing else may fail the close.
func checkClosed(t *testing.T, g *blockdev.Graph, fds, goroutines int) {
	t.Helper()
	if err := g.Close(); err != nil && !errors.Is(err, injectErrno) {
		t.Errorf("closing after failed requests: %v", err)
	}
	checkReleased(t, fds, goroutines)
}

// countFDs counts the process's open file descriptors.
func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("counting file descriptors: %v", err)
	}
	return len(ents)
}

// checkReleased fails unless the file descriptors and goroutines are back
// to what they were (goroutines get a moment to finish).
func checkReleased(t *testing.T, fds, goroutines int) {
	t.Helper()
	if n := countFDs(t); n > fds {
		t.Errorf("%d file descriptors open after the close, %d before the open", n, fds)
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > goroutines {
		t.Errorf("%d goroutines after the close, %d before the open", n, goroutines)
	}
}
