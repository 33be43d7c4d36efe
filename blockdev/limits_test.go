package blockdev_test

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
)

// limitdrv is memdrv with a transfer limit (option max-transfer) that
// records the largest read and write it was given.
type limitdrv struct {
	memdrv
	limit             int64
	maxRead, maxWrite atomic.Int64
}

func init() {
	blockdev.RegisterDriver("testlimit", func() blockdev.Driver { return new(limitdrv) })
}

func (d *limitdrv) Open(ctx context.Context, oc *blockdev.OpenContext) error {
	o := oc.Options()
	d.limit, _, _ = o.Int("max-transfer")
	delete(o, "max-transfer")
	return d.memdrv.Open(ctx, oc)
}

func (d *limitdrv) MaxTransfer() int64 { return d.limit }

func record(m *atomic.Int64, n int64) {
	for {
		old := m.Load()
		if n <= old || m.CompareAndSwap(old, n) {
			return
		}
	}
}

func (d *limitdrv) Read(ctx context.Context, off int64, p []byte) error {
	record(&d.maxRead, int64(len(p)))
	return d.memdrv.Read(ctx, off, p)
}

func (d *limitdrv) Write(ctx context.Context, off int64, p []byte, f blockdev.ReqFlags) error {
	record(&d.maxWrite, int64(len(p)))
	return d.memdrv.Write(ctx, off, p, f)
}

// A node whose driver has a transfer limit gets no larger request, and a
// filter above it inherits the limit (QEMU's bdrv_refresh_limits), so that
// requests are split there already; the data is unchanged by the split.
func TestTransferLimitSplitsAndIsInherited(t *testing.T) {
	g := newGraph(t)
	ctx := context.Background()
	mustAdd(t, g, blockdev.Options{"driver": "testlimit", "node-name": "lim", "size": int64(256 << 10),
		"align": int64(512), "max-transfer": int64(4096)})
	top, root := openRoot(t, g, blockdev.Options{"driver": "copy-on-read", "node-name": "cor", "file": "lim"}, rw)
	lk, unlock := drivertest.Lock(g)
	lim := lk.Lookup("lim")
	unlock()
	if lim.MaxTransfer() != 4096 || top.MaxTransfer() != 4096 {
		t.Fatalf("limits: node %d, filter %d; want 4096 for both", lim.MaxTransfer(), top.MaxTransfer())
	}
	d := lim.Driver().(*limitdrv)
	data := fill(20000, 3)
	if err := top.Write(ctx, root, 1000, data, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := top.Read(ctx, root, 1000, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read back other data than was written")
	}
	if r, w := d.maxRead.Load(), d.maxWrite.Load(); r > 4096 || w > 4096 || r == 0 || w == 0 {
		t.Fatalf("largest driver read %d, write %d; want at most 4096", r, w)
	}
	if d.misal.Load() != 0 {
		t.Fatalf("%d misaligned driver requests", d.misal.Load())
	}
}
