package null_test

import (
	"context"
	"testing"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
	_ "github.com/qbmond/qbmond/drivers/null"
)

func TestConformance(t *testing.T) {
	for _, drv := range []string{"null-co", "null-aio"} {
		t.Run(drv, func(t *testing.T) {
			drivertest.Run(t, drivertest.Config{
				Options: func(t *testing.T) blockdev.Options {
					return blockdev.Options{"driver": drv, "read-zeroes": true, "size": int64(4 << 20)}
				},
			})
		})
	}
}

func TestLatency(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			return blockdev.Options{"driver": "null-co", "read-zeroes": true, "latency-ns": int64(1000)}
		},
	})
}

func TestDefaults(t *testing.T) {
	_, n, c := drivertest.Open(t, blockdev.Options{"driver": "null-co"}, drivertest.RootPerm)
	if n.Length() != 1<<30 {
		t.Errorf("default size %d, want 1 GiB", n.Length())
	}
	if n.Filename() != "null-co://" {
		t.Errorf("filename %q, want null-co://", n.Filename())
	}
	// Without read-zeroes the buffer is left alone, as in QEMU.
	buf := []byte{7, 7}
	if err := c.Read(context.Background(), 0, buf); err != nil || buf[0] != 7 {
		t.Errorf("read without read-zeroes: %v %v", buf, err)
	}
	st, err := c.BlockStatus(context.Background(), 0, 4096)
	if err != nil || st.Flags != blockdev.StatusAllocated || st.Length != 4096 {
		t.Errorf("block-status without read-zeroes: %+v %v", st, err)
	}
}

func TestSizeRounding(t *testing.T) {
	// QSD 7.2: size 1000 shows virtual-size 1024 and a json: file name.
	_, n, _ := drivertest.Open(t, blockdev.Options{"driver": "null-co", "size": int64(1000)}, 0)
	if n.Length() != 1024 {
		t.Errorf("length %d, want 1024", n.Length())
	}
	if want := `json:{"driver": "null-co", "size": 1000}`; n.Filename() != want {
		t.Errorf("filename %s, want %s", n.Filename(), want)
	}
}

func TestBadOptions(t *testing.T) {
	g := blockdev.NewGraph(zerolog.Nop())
	defer g.Close()
	lk, unlock := drivertest.Lock(g)
	defer unlock()
	for _, o := range []blockdev.Options{
		{"driver": "null-co", "node-name": "a", "size": int64(-1)},
		{"driver": "null-co", "node-name": "a", "latency-ns": int64(-1)},
		{"driver": "null-co", "node-name": "a", "size": "x"},
	} {
		if _, err := lk.Add(context.Background(), o); err == nil {
			t.Errorf("%v: no error", o)
		}
	}
	if lk.Len() != 0 {
		t.Errorf("%d nodes left after failures", lk.Len())
	}
}
