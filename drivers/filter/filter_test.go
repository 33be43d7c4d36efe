package filter_test

import (
	"context"
	"testing"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
	_ "github.com/qbmond/qbmond/drivers/file"
	_ "github.com/qbmond/qbmond/drivers/filter"
	_ "github.com/qbmond/qbmond/drivers/qcow2"
	_ "github.com/qbmond/qbmond/drivers/raw"
)

func file(t *testing.T) map[string]any {
	return map[string]any{"driver": "file", "filename": drivertest.Image(t, 4<<20)}
}

// qcow2Chain is a qcow2 overlay of an empty raw base.
func qcow2Chain(t *testing.T) map[string]any {
	base := drivertest.Image(t, 4<<20)
	top := drivertest.Image(t, 0)
	g := blockdev.NewGraph(zerolog.Nop())
	defer g.Close()
	if err := g.Create(context.Background(), "qcow2", blockdev.Options{"size": int64(4 << 20),
		"cluster-size": int64(4096), "backing-file": base, "backing-fmt": "raw",
		"file": map[string]any{"driver": "file", "filename": top}}, "job 'test'"); err != nil {
		t.Fatal(err)
	}
	return map[string]any{"driver": "qcow2", "file": map[string]any{"driver": "file", "filename": top}}
}

// Every filter runs the suite. copy-on-read and copy-before-write always
// write to a child, so they cannot be opened read-only. mirror_top and
// commit_top are not in blockdev-add's schema (jobs insert them), but the
// graph opens them from the same options; commit_top takes no permission
// on its child and serves reads only.
func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name             string
		opts             func(t *testing.T) blockdev.Options
		readOnly, writes bool
	}{
		{"copy-on-read", func(t *testing.T) blockdev.Options {
			return blockdev.Options{"driver": "copy-on-read", "file": file(t)}
		}, false, true},
		// Reads copy what comes from the base into the overlay.
		{"copy-on-read-chain", func(t *testing.T) blockdev.Options {
			return blockdev.Options{"driver": "copy-on-read", "file": qcow2Chain(t)}
		}, false, true},
		{"copy-before-write", func(t *testing.T) blockdev.Options {
			return blockdev.Options{"driver": "copy-before-write", "file": file(t), "target": file(t)}
		}, false, true},
		{"mirror_top", func(t *testing.T) blockdev.Options {
			return blockdev.Options{"driver": "mirror_top", "backing": file(t)}
		}, false, false},
		{"commit_top", func(t *testing.T) blockdev.Options {
			return blockdev.Options{"driver": "commit_top", "backing": file(t)}
		}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			drivertest.Run(t, drivertest.Config{Options: tc.opts, Stores: true, ReadOnly: tc.readOnly, WritesChild: tc.writes})
		})
	}
}
