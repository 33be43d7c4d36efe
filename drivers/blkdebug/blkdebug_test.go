package blkdebug_test

import (
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/blkdebug"
	"github.com/qbmond/qbmond/drivers/drivertest"
	_ "github.com/qbmond/qbmond/drivers/file"
)

func opts(t *testing.T, extra blockdev.Options) blockdev.Options {
	o := blockdev.Options{"driver": "blkdebug",
		"image": map[string]any{"driver": "file", "filename": drivertest.Image(t, 4<<20)}}
	for k, v := range extra {
		o[k] = v
	}
	return o
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options { return opts(t, nil) },
		Stores:  true,
	})
}

func TestConformanceAligned(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options { return opts(t, blockdev.Options{"align": int64(4096)}) },
		Stores:  true,
	})
}

// Requests larger than max-transfer are split at its boundaries.
func TestConformanceMaxTransfer(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			return opts(t, blockdev.Options{"align": int64(512), "max-transfer": int64(65536)})
		},
		Stores: true,
	})
}

func rules(rs ...map[string]any) []any {
	out := make([]any, len(rs))
	for i, r := range rs {
		out[i] = r
	}
	return out
}

func open(t *testing.T, extra blockdev.Options) (*blkdebug.Driver, *blockdev.Child) {
	_, n, c := drivertest.Open(t, opts(t, extra), drivertest.RootPerm)
	return n.Driver().(*blkdebug.Driver), c
}

// A once rule fails one read of its sector, after its event, then goes.
func TestReadSectorOnce(t *testing.T) {
	ctx := context.Background()
	d, c := open(t, blockdev.Options{"inject-error": rules(map[string]any{"event": "read_aio", "sector": int64(8), "once": true})})
	buf := make([]byte, 4096)
	if err := c.Read(ctx, 4096, buf); err != nil {
		t.Fatalf("read before the event: %v", err)
	}
	d.DebugEvent("read_aio")
	if err := c.Read(ctx, 0, buf); err != nil {
		t.Fatalf("read not covering sector 8: %v", err)
	}
	if err := c.Read(ctx, 4096, buf); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of sector 8: %v, want EIO", err)
	}
	if err := c.Read(ctx, 4096, buf); err != nil {
		t.Fatalf("second read of sector 8: %v", err)
	}
	d.DebugEvent("read_aio")
	if err := c.Read(ctx, 4096, buf); err != nil {
		t.Fatalf("a once rule came back: %v", err)
	}
}

// Writes fire pwritev on the node itself; without once every write fails,
// and with the default iotype mask reads fail too, as in QSD.
func TestWriteEveryTime(t *testing.T) {
	ctx := context.Background()
	// The graph's closing flush fails too: this test closes it itself.
	g := blockdev.NewGraph(zerolog.Nop())
	defer g.Close()
	lk, unlock := drivertest.Lock(g)
	n, err := lk.Add(ctx, opts(t, blockdev.Options{"node-name": "b", "inject-error": rules(map[string]any{"event": "pwritev"})}))
	if err != nil {
		t.Fatal(err)
	}
	c, err := lk.AttachRoot(n, "block device 'test'", drivertest.RootPerm, blockdev.PermAll)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	if err := c.Read(ctx, 0, buf); err != nil {
		t.Fatalf("read before any write: %v", err)
	}
	for i := range 3 {
		if err := c.Write(ctx, 0, buf, 0); !errors.Is(err, syscall.EIO) {
			t.Fatalf("write %d: %v, want EIO", i, err)
		}
	}
	if err := c.Read(ctx, 0, buf); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read after the rule is active: %v, want EIO", err)
	}
	if err := c.Flush(ctx); !errors.Is(err, syscall.EIO) {
		t.Fatalf("flush: %v, want EIO", err)
	}
	if _, err := c.BlockStatus(ctx, 0, 512); err != nil {
		t.Fatalf("block-status is not in the default mask: %v", err)
	}
}

func TestIOTypeFilter(t *testing.T) {
	ctx := context.Background()
	d, c := open(t, blockdev.Options{"inject-error": rules(map[string]any{"event": "write_aio", "iotype": "write-zeroes"})})
	d.DebugEvent("write_aio")
	buf := make([]byte, 512)
	if err := c.Write(ctx, 0, buf, 0); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := c.Read(ctx, 0, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := c.WriteZeroes(ctx, 0, 512, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write-zeroes: %v, want EIO", err)
	}
	// pwritev from the write above did not reset the active rules: no
	// rule names it.
	if err := c.WriteZeroes(ctx, 0, 512, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("second write-zeroes: %v, want EIO", err)
	}
}

func TestErrno(t *testing.T) {
	ctx := context.Background()
	_, c := open(t, blockdev.Options{"inject-error": rules(map[string]any{"event": "pwritev", "errno": int64(28), "iotype": "write"})})
	err := c.Write(ctx, 0, make([]byte, 512), 0)
	var errno syscall.Errno
	if !errors.As(err, &errno) || errno != syscall.ENOSPC {
		t.Fatalf("write: %v, want ENOSPC", err)
	}
}

// set-state moves the state machine; rules with a state apply only in it.
func TestStates(t *testing.T) {
	ctx := context.Background()
	d, c := open(t, blockdev.Options{
		"inject-error": rules(map[string]any{"event": "read_aio", "state": int64(2), "iotype": "read"}),
		"set-state":    rules(map[string]any{"event": "flush_to_disk", "state": int64(1), "new_state": int64(2)}),
	})
	buf := make([]byte, 512)
	if d.State() != 1 {
		t.Fatalf("initial state %d", d.State())
	}
	d.DebugEvent("read_aio")
	if err := c.Read(ctx, 0, buf); err != nil {
		t.Fatalf("read in state 1: %v", err)
	}
	d.DebugEvent("flush_to_disk")
	if d.State() != 2 {
		t.Fatalf("state after flush_to_disk %d", d.State())
	}
	d.DebugEvent("read_aio")
	if err := c.Read(ctx, 0, buf); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read in state 2: %v, want EIO", err)
	}
}

func TestOpenErrors(t *testing.T) {
	img := drivertest.Image(t, 1<<20)
	for _, tc := range []struct {
		extra blockdev.Options
		want  string
	}{
		{blockdev.Options{"align": int64(3)}, "Cannot meet constraints with align 3"},
		{blockdev.Options{"align": int64(-1)}, "Parameter 'align' expects a non-negative number below 2^64"},
		{blockdev.Options{"align": int64(4096), "max-transfer": int64(512)}, "Cannot meet constraints with max-transfer 512"},
		{blockdev.Options{"align": int64(512), "max-write-zero": int64(100)}, "Cannot meet constraints with max-write-zero 100"},
		{blockdev.Options{"align": int64(512), "opt-discard": int64(1024), "max-discard": int64(1536)}, "Cannot meet constraints with max-discard 1536"},
		{blockdev.Options{"config": "/nonexistent"}, "Could not read blkdebug config file: No such file or directory"},
	} {
		g := blockdev.NewGraph(zerolog.Nop())
		o := blockdev.Options{"driver": "blkdebug", "node-name": "b", "image": map[string]any{"driver": "file", "filename": img}}
		for k, v := range tc.extra {
			o[k] = v
		}
		lk, unlock := drivertest.Lock(g)
		_, err := lk.Add(context.Background(), o)
		left := lk.Len()
		unlock()
		g.Close()
		if err == nil || err.Error() != tc.want {
			t.Errorf("%v: got %v, want %q", tc.extra, err, tc.want)
		}
		if left != 0 {
			t.Errorf("%v: %d nodes left", tc.extra, left)
		}
	}
}

func TestPermissionsPassThrough(t *testing.T) {
	g, n, _ := drivertest.Open(t, opts(t, nil), blockdev.PermConsistentRead)
	_, unlock := drivertest.Lock(g)
	defer unlock()
	if p := n.Child("image").Perm(); p != blockdev.PermConsistentRead {
		t.Fatalf("image perm with a reader above: %v", p.Names())
	}
}
