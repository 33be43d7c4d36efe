// Package drivertest is the conformance suite every block driver runs, in
// the style of containerd's snapshots test suite. A driver gets all of it
// with one call in its test file:
//
//	func TestConformance(t *testing.T) {
//		drivertest.Run(t, drivertest.Config{
//			Options: func(t *testing.T) blockdev.Options { ... },
//			Stores:  true,
//		})
//	}
//
// Run runs every named check as a subtest (TestConformance/Reopen, ...).
// Each check gets a fresh temporary directory and a fresh node opened from
// Config.Options through a real Graph (blockdev-add semantics, children
// included), used through a root Child so that requests pass the node's
// entry points exactly as an export's would. A check that exercises an
// optional ability (blockdev.Truncater, blockdev.Reopener,
// blockdev.BitmapStore, a blockdev.PermLocker in the node's tree, ...)
// is skipped, saying why, when the driver does not have it (Truncate also
// when the driver has it but the storage under it cannot be resized);
// the checks that write are skipped when Config says the driver serves
// reads only, Persist when it stores nothing. Nothing else skips a check.
//
// The checks, and what gates them:
//
//	Length, RoundTrip, Bounds        length, reads and writes, requests past the end
//	Boundaries                       write, write-zeroes (with and without may-unmap)
//	                                 and discard at and across sector, page, request
//	                                 alignment, cluster and max-transfer boundaries
//	Flush, WriteZeroes/*, Discard    flush and FUA; zeroing; discard changes nothing
//	                                 but its range, which reads as before or as zero
//	BlockStatus                      extents cover the node; "zero" reads as zeroes
//	Persist                          Config.Stores: data survives close and reopen
//	Truncate                         blockdev.Truncater: grow, shrink if it can
//	ReadOnly, Permission             read-only opens; writes without the permission
//	Reopen, ReopenAbort              blockdev.Reopener: read-only <-> read-write, and
//	                                 a failed reopen leaving the node as it was
//	ImageLocks                       a blockdev.PermLocker in the tree: a second
//	                                 writer of the image is refused until the first closes
//	BitmapStore                      blockdev.BitmapStore: persistent bitmaps reload
//	CloseAfterError                  refused and injected (blkdebug) failures, then a
//	                                 close that releases every fd and goroutine
//	Concurrent                       requests from many goroutines
//
// Checks that write are skipped for a driver that serves reads only
// (Config.ReadOnly). Every check but CloseAfterError, which measures the
// whole process, runs in parallel with the others.
//
// Reads are compared with a model of the content the requests so far must
// have left (all zeroes for a driver that stores nothing), so a check
// notices data that changed outside a request as well as data a request
// failed to change.
package drivertest

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	_ "github.com/qbmond/qbmond/drivers/blkdebug" // CloseAfterError injects errors with it
)

// Config describes the driver under test.
type Config struct {
	// Options returns blockdev-add options for a fresh node of at least
	// 1 MiB whose content reads as zeroes, with its images in a fresh
	// directory of t. The suite sets node-name (and, for some checks,
	// read-only or discard) itself. It is called once per check; a check
	// that opens the same image again reuses the options it returned.
	Options func(t *testing.T) blockdev.Options
	// Stores tells whether written data reads back (false for null).
	Stores bool
	// RefusesBitmaps says the image cannot hold persistent bitmaps
	// although the driver is a blockdev.BitmapStore (qcow2 v2): the
	// BitmapStore check then wants block-dirty-bitmap-add to fail.
	RefusesBitmaps bool
	// ReadOnly says the driver serves reads only (commit_top takes no
	// permission on its child): the node is opened read-only and the
	// checks that write are skipped.
	ReadOnly bool
	// WritesChild says the driver always takes write on a child
	// (copy-on-read for its copies, copy-before-write on its target), so
	// that, as in QEMU, it cannot be opened read-only: the ReadOnly check
	// expects blockdev-add to refuse it.
	WritesChild bool
	// DiscardAlign, when set, is the alignment a discard needs: one that
	// is not aligned may fail with EINVAL, changing nothing, as QEMU's
	// host_device's does (the kernel refuses parts of sectors). Other
	// discards must succeed.
	DiscardAlign int64
}

// RootPerm is what the suite's root user holds.
const RootPerm = blockdev.PermConsistentRead | blockdev.PermWrite | blockdev.PermResize

// env is what a check is given: a fresh directory, the options its node
// was opened with, and the node itself with a root user.
type env struct {
	Config
	// Dir is a fresh directory of the check's own.
	Dir string
	// Opts are the options the node was opened with (node-name
	// included); opening them again opens the same image.
	Opts  blockdev.Options
	Graph *blockdev.Graph
	Node  *blockdev.Node
	// Child is the root user: RootPerm (PermConsistentRead only with
	// Config.ReadOnly), sharing everything.
	Child *blockdev.Child
	// model is the content the node must read as (when Stores).
	model []byte
}

// check is one named conformance check.
type check struct {
	name string
	// extra options for the node (discard, read-only).
	extra blockdev.Options
	// perm of the root user instead of RootPerm.
	perm blockdev.Perm
	// writes: the check writes (skipped with Config.ReadOnly).
	writes bool
	// serial: the check measures the whole process (file descriptors,
	// goroutines) and runs alone, before the others run in parallel.
	serial bool
	// needs returns why the check does not apply to the driver ("" when
	// it does): the optional ability it exercises is missing. It may
	// check what the driver does instead (refuse as QEMU does).
	needs func(t *testing.T, e *env) string
	run   func(t *testing.T, e *env)
}

// checks is the suite, in the order Run runs it.
var checks = []check{
	{name: "Length", run: checkLength},
	{name: "RoundTrip", writes: true, run: checkRoundTrip},
	{name: "Boundaries", writes: true, extra: unmap, run: checkBoundaries},
	{name: "Bounds", run: checkBounds},
	{name: "Flush", writes: true, run: checkFlush},
	{name: "WriteZeroes/unmap=false", writes: true, run: checkWriteZeroes(0)},
	{name: "WriteZeroes/unmap=true", writes: true, extra: unmap, run: checkWriteZeroes(blockdev.ReqMayUnmap)},
	{name: "Discard", writes: true, extra: unmap, run: checkDiscard},
	{name: "BlockStatus", run: checkBlockStatus},
	{name: "Persist", writes: true, needs: needsStores, run: checkPersist},
	{name: "Truncate", writes: true, needs: needsDriver[blockdev.Truncater]("blockdev.Truncater"), run: checkTruncate},
	{name: "ReadOnly", run: checkReadOnly},
	{name: "Reopen", writes: true, needs: needsReopener, run: checkReopen},
	{name: "ReopenAbort", writes: true, needs: needsDriver[blockdev.Reopener]("blockdev.Reopener"), run: checkReopenAbort},
	{name: "Permission", writes: true, perm: blockdev.PermConsistentRead, run: checkPermission},
	{name: "ImageLocks", writes: true, needs: needsPermLocker, run: checkImageLocks},
	{name: "BitmapStore", writes: true, needs: needsDriver[blockdev.BitmapStore]("blockdev.BitmapStore"), run: checkBitmapStore},
	{name: "CloseAfterError", serial: true, run: checkCloseAfterError},
	{name: "Concurrent", writes: true, run: checkConcurrent},
}

var unmap = blockdev.Options{"discard": "unmap"}

// Run runs the suite: every check as a subtest, each on a node of its own,
// in parallel but for the serial ones, which run first.
func Run(t *testing.T, cfg Config) {
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			// The image is made before the checks go parallel: making
			// one may run a tool (qemu-img), and a process forked while
			// another check has its image open shares that image's
			// descriptor, and so its lock, until it execs.
			o := cfg.Options(t)
			if !c.serial {
				t.Parallel()
			}
			e := newEnv(t, cfg, c, o)
			if c.writes && cfg.ReadOnly {
				t.Skip(e.Node.DriverName() + " serves reads only (Config.ReadOnly)")
			}
			if c.needs != nil {
				if why := c.needs(t, e); why != "" {
					t.Skip(why)
				}
			}
			c.run(t, e)
		})
	}
}

// newEnv opens the check's node from the options Config.Options gave.
func newEnv(t *testing.T, cfg Config, c check, o blockdev.Options) *env {
	t.Helper()
	e := &env{Config: cfg, Dir: t.TempDir()}
	for k, v := range c.extra {
		o[k] = v
	}
	perm := RootPerm
	if c.perm != 0 {
		perm = c.perm
	}
	if cfg.ReadOnly {
		o["read-only"] = true
		perm = blockdev.PermConsistentRead
	}
	if !o.Has("node-name") {
		o["node-name"] = "test"
	}
	e.Opts = o
	e.Graph, e.Node, e.Child = Open(t, o, perm)
	if cfg.Stores {
		e.model = make([]byte, e.Node.Length())
	}
	return e
}

// needsDriver gates a check on the node's driver implementing I.
func needsDriver[I any](name string) func(t *testing.T, e *env) string {
	return func(_ *testing.T, e *env) string {
		if _, ok := e.Node.Driver().(I); !ok {
			return e.Node.DriverName() + " does not implement " + name
		}
		return ""
	}
}

func needsStores(_ *testing.T, e *env) string {
	if !e.Stores {
		return e.Node.DriverName() + " stores no data (Config.Stores is false)"
	}
	return ""
}

// locked runs f with the graph lock held. Every graph operation of the
// suite that needs the lock goes through here.
func locked(g *blockdev.Graph, f func(lk *blockdev.Locked) error) error {
	return g.Do(f)
}

// Open adds a node to a new graph from opts (node-name "test" unless set)
// and attaches a root user holding perm and sharing everything. The graph
// is closed when the test ends.
func Open(t testing.TB, opts blockdev.Options, perm blockdev.Perm) (*blockdev.Graph, *blockdev.Node, *blockdev.Child) {
	t.Helper()
	g := blockdev.NewGraph(zerolog.Nop())
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Errorf("closing the graph: %v", err)
		}
	})
	opts = opts.Clone()
	if !opts.Has("node-name") {
		opts["node-name"] = "test"
	}
	n, c, err := add(g, opts, perm, blockdev.PermAll)
	if err != nil {
		t.Fatal(err)
	}
	return g, n, c
}

// add adds a node from opts to g and attaches a root user holding perm
// and sharing shared.
func add(g *blockdev.Graph, opts blockdev.Options, perm, shared blockdev.Perm) (n *blockdev.Node, c *blockdev.Child, err error) {
	err = locked(g, func(lk *blockdev.Locked) error {
		if n, err = lk.Add(context.Background(), opts); err != nil {
			return &stepError{"blockdev-add", err}
		}
		if c, err = lk.AttachRoot(n, "block device 'drivertest'", perm, shared); err != nil {
			return &stepError{"attaching the test user", err}
		}
		return nil
	})
	return n, c, err
}

// stepError says which step of opening a node failed.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.step + ": " + e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// Image creates an empty sparse file of size bytes in a temporary
// directory of the test and returns its path.
func Image(t testing.TB, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}
