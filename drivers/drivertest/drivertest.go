// Package drivertest is the conformance suite every block driver runs:
//
//	func TestConformance(t *testing.T) {
//		drivertest.Run(t, drivertest.Config{
//			Options: func(t *testing.T) blockdev.Options { ... },
//			Stores:  true,
//		})
//	}
//
// It opens nodes through a real Graph (blockdev-add semantics, children
// included) and drives them through a root Child, so requests pass the
// node's entry points exactly as an export's would.
package drivertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
)

// Config describes the driver under test.
type Config struct {
	// Options returns blockdev-add options for a fresh node of at least
	// 1 MiB whose content reads as zeroes. The suite sets node-name (and,
	// for some subtests, read-only or discard) itself.
	Options func(t *testing.T) blockdev.Options
	// Stores tells whether written data reads back (false for null).
	Stores bool
}

// RootPerm is what the suite's root user holds.
const RootPerm = blockdev.PermConsistentRead | blockdev.PermWrite | blockdev.PermResize

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
	var n *blockdev.Node
	var c *blockdev.Child
	g.Do(func(lk *blockdev.Locked) error {
		var err error
		n, err = lk.Add(context.Background(), opts)
		if err != nil {
			t.Fatalf("blockdev-add %v: %v", opts, err)
		}
		c, err = lk.AttachRoot(n, "block device 'drivertest'", perm, blockdev.PermAll)
		if err != nil {
			t.Fatalf("attaching the test user: %v", err)
		}
		return nil
	})
	return g, n, c
}

func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*7+i/251)
	}
	return p
}

// Run runs the suite.
func Run(t *testing.T, cfg Config) {
	ctx := context.Background()
	open := func(t *testing.T, extra blockdev.Options, perm blockdev.Perm) (*blockdev.Node, *blockdev.Child) {
		o := cfg.Options(t)
		for k, v := range extra {
			o[k] = v
		}
		_, n, c := Open(t, o, perm)
		return n, c
	}

	t.Run("Length", func(t *testing.T) {
		n, c := open(t, nil, RootPerm)
		if l := n.Length(); l < 1<<20 || l%512 != 0 {
			t.Fatalf("length %d: want >= 1 MiB and a multiple of 512", l)
		}
		if c.Length() != n.Length() {
			t.Fatalf("child length %d != node length %d", c.Length(), n.Length())
		}
	})

	t.Run("RoundTrip", func(t *testing.T) {
		_, c := open(t, nil, RootPerm)
		l := c.Length()
		cases := []struct{ off, n int64 }{
			{0, 512}, {0, 1}, {1, 511}, {511, 2}, {512, 4096}, {4095, 4097},
			{65536 + 7, 100000}, {l - 4096, 4096}, {l - 1, 1}, {l - 513, 513},
		}
		for i, tc := range cases {
			p := pattern(int(tc.n), byte(i+1))
			if err := c.Write(ctx, tc.off, p, 0); err != nil {
				t.Fatalf("write %d+%d: %v", tc.off, tc.n, err)
			}
			got := make([]byte, tc.n)
			if err := c.Read(ctx, tc.off, got); err != nil {
				t.Fatalf("read %d+%d: %v", tc.off, tc.n, err)
			}
			if cfg.Stores && !bytes.Equal(got, p) {
				t.Fatalf("read %d+%d after write: data differs", tc.off, tc.n)
			}
		}
		// A FUA write completes like any other.
		if err := c.Write(ctx, 8192, pattern(512, 9), blockdev.ReqFUA); err != nil {
			t.Fatalf("FUA write: %v", err)
		}
		if cfg.Stores {
			// Neighbours of a small write are untouched.
			if err := c.Write(ctx, 20000, bytes.Repeat([]byte{0xaa}, 1024), 0); err != nil {
				t.Fatal(err)
			}
			if err := c.Write(ctx, 20100, []byte{1, 2, 3}, 0); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 1024)
			if err := c.Read(ctx, 20000, got); err != nil {
				t.Fatal(err)
			}
			want := bytes.Repeat([]byte{0xaa}, 1024)
			copy(want[100:], []byte{1, 2, 3})
			if !bytes.Equal(got, want) {
				t.Fatal("a 3-byte write changed its neighbours")
			}
		}
	})

	t.Run("Bounds", func(t *testing.T) {
		_, c := open(t, nil, RootPerm)
		l := c.Length()
		buf := make([]byte, 2)
		for _, off := range []int64{l - 1, l, l + 512, -1} {
			if err := c.Read(ctx, off, buf); !errors.Is(err, blockdev.ErrOutOfRange) {
				t.Errorf("read of 2 bytes at %d (length %d): got %v, want ErrOutOfRange", off, l, err)
			}
			if err := c.Write(ctx, off, buf, 0); !errors.Is(err, blockdev.ErrOutOfRange) {
				t.Errorf("write of 2 bytes at %d: got %v, want ErrOutOfRange", off, err)
			}
		}
		if err := c.WriteZeroes(ctx, l-512, 1024, 0); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("write-zeroes past the end: got %v", err)
		}
		if err := c.Discard(ctx, l, 1); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("discard past the end: got %v", err)
		}
		if _, err := c.BlockStatus(ctx, l-1, 2); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("block-status past the end: got %v", err)
		}
		if err := c.Read(ctx, l, nil); err != nil {
			t.Errorf("empty read at the end: %v", err)
		}
	})

	t.Run("Flush", func(t *testing.T) {
		_, c := open(t, nil, RootPerm)
		if err := c.Write(ctx, 0, pattern(4096, 3), 0); err != nil {
			t.Fatal(err)
		}
		if err := c.Flush(ctx); err != nil {
			t.Fatalf("flush: %v", err)
		}
	})

	for _, unmap := range []bool{false, true} {
		t.Run(fmt.Sprintf("WriteZeroes/unmap=%v", unmap), func(t *testing.T) {
			extra := blockdev.Options{}
			var flags blockdev.ReqFlags
			if unmap {
				extra["discard"] = "unmap"
				flags = blockdev.ReqMayUnmap
			}
			_, c := open(t, extra, RootPerm)
			data := pattern(256<<10, 5)
			if err := c.Write(ctx, 0, data, 0); err != nil {
				t.Fatal(err)
			}
			for _, r := range []struct{ off, n int64 }{{4096, 8192}, {65536 + 3, 70000}, {200000, 1}} {
				if err := c.WriteZeroes(ctx, r.off, r.n, flags); err != nil {
					t.Fatalf("write-zeroes %d+%d: %v", r.off, r.n, err)
				}
				clear(data[r.off : r.off+r.n])
			}
			got := make([]byte, len(data))
			if err := c.Read(ctx, 0, got); err != nil {
				t.Fatal(err)
			}
			if cfg.Stores && !bytes.Equal(got, data) {
				t.Fatal("after write-zeroes the data is not zero where zeroed or not intact elsewhere")
			}
			if !cfg.Stores {
				// Drivers that store nothing must at least zero the range
				// when they say it reads as zeroes.
				checkZeroExtents(ctx, t, c, 0, int64(len(data)))
			}
		})
	}

	t.Run("Discard", func(t *testing.T) {
		_, c := open(t, blockdev.Options{"discard": "unmap"}, RootPerm)
		if err := c.Write(ctx, 0, pattern(1<<20, 8), 0); err != nil {
			t.Fatal(err)
		}
		if err := c.Discard(ctx, 65536, 65536); err != nil {
			t.Fatalf("discard: %v", err)
		}
		if err := c.Discard(ctx, 3, 5); err != nil {
			t.Fatalf("misaligned discard: %v", err)
		}
		// Data outside discarded ranges stays.
		got := make([]byte, 4096)
		if err := c.Read(ctx, 200000, got); err != nil {
			t.Fatal(err)
		}
		if cfg.Stores && !bytes.Equal(got, pattern(1<<20, 8)[200000:204096]) {
			t.Fatal("discard changed data outside its range")
		}
	})

	t.Run("BlockStatus", func(t *testing.T) {
		_, c := open(t, nil, RootPerm)
		if err := c.Write(ctx, 1<<19, pattern(8192, 1), 0); err != nil {
			t.Fatal(err)
		}
		l := c.Length()
		var covered int64
		for off := int64(0); off < l; {
			st, err := c.BlockStatus(ctx, off, l-off)
			if err != nil {
				t.Fatalf("block-status at %d: %v", off, err)
			}
			if st.Length <= 0 || st.Length > l-off {
				t.Fatalf("block-status at %d: length %d out of (0, %d]", off, st.Length, l-off)
			}
			if st.Flags&blockdev.StatusZero != 0 {
				checkZeroExtents(ctx, t, c, off, min(st.Length, 1<<20))
			}
			if cfg.Stores && off <= 1<<19 && off+st.Length > 1<<19 && st.Flags&blockdev.StatusZero != 0 {
				t.Fatalf("written data at %d reported as zero", 1<<19)
			}
			covered += st.Length
			off += st.Length
		}
		if covered != l {
			t.Fatalf("extents cover %d bytes, node has %d", covered, l)
		}
	})

	t.Run("ReadOnly", func(t *testing.T) {
		o := cfg.Options(t)
		o["read-only"] = true
		o["node-name"] = "ro"
		g := blockdev.NewGraph(zerolog.Nop())
		defer g.Close()
		var c *blockdev.Child
		g.Do(func(lk *blockdev.Locked) error {
			n, err := lk.Add(ctx, o)
			if err != nil {
				t.Fatalf("read-only blockdev-add: %v", err)
			}
			if !n.ReadOnly() {
				t.Error("node not read-only")
			}
			_, err = lk.AttachRoot(n, "block device 'w'", blockdev.PermWrite, blockdev.PermAll)
			if err == nil || err.Error() != "Block node is read-only" {
				t.Errorf("attaching a writer to a read-only node: got %v", err)
			}
			c, err = lk.AttachRoot(n, "block device 'r'", blockdev.PermConsistentRead, blockdev.PermAll)
			if err != nil {
				t.Fatal(err)
			}
			return nil
		})
		if err := c.Read(ctx, 0, make([]byte, 512)); err != nil {
			t.Errorf("read from a read-only node: %v", err)
		}
		if err := c.Write(ctx, 0, make([]byte, 512), 0); !errors.Is(err, blockdev.ErrReadOnly) {
			t.Errorf("write to a read-only node: got %v, want ErrReadOnly", err)
		}
	})

	t.Run("Permission", func(t *testing.T) {
		_, c := open(t, nil, blockdev.PermConsistentRead)
		if err := c.Write(ctx, 0, make([]byte, 512), 0); !errors.Is(err, blockdev.ErrPermission) {
			t.Errorf("write without the write permission: got %v, want ErrPermission", err)
		}
		if err := c.WriteZeroes(ctx, 0, 512, 0); !errors.Is(err, blockdev.ErrPermission) {
			t.Errorf("write-zeroes without the write permission: got %v", err)
		}
		if err := c.Read(ctx, 0, make([]byte, 512)); err != nil {
			t.Errorf("read: %v", err)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		_, c := open(t, nil, RootPerm)
		const workers, rounds, chunk = 8, 20, 4096 + 13
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				base := int64(w) * 64 << 10
				for r := range rounds {
					off := base + int64(r%4)*chunk
					p := pattern(chunk, byte(w*31+r))
					if err := c.Write(ctx, off, p, 0); err != nil {
						errs <- err
						return
					}
					got := make([]byte, chunk)
					if err := c.Read(ctx, off, got); err != nil {
						errs <- err
						return
					}
					if cfg.Stores && !bytes.Equal(got, p) {
						errs <- fmt.Errorf("worker %d round %d: read back differs", w, r)
						return
					}
					if _, err := c.BlockStatus(ctx, off, chunk); err != nil {
						errs <- err
						return
					}
				}
				if err := c.Flush(ctx); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

// checkZeroExtents reads [off, off+n) and fails unless it is all zero.
func checkZeroExtents(ctx context.Context, t *testing.T, c *blockdev.Child, off, n int64) {
	t.Helper()
	buf := make([]byte, n)
	for i := range buf {
		buf[i] = 0x5a // a driver that leaves the buffer alone is caught
	}
	if err := c.Read(ctx, off, buf); err != nil {
		t.Fatalf("read %d+%d: %v", off, n, err)
	}
	for i, b := range buf {
		if b != 0 {
			t.Fatalf("range %d+%d is reported zero but byte %d is not", off, n, off+int64(i))
		}
	}
}

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
