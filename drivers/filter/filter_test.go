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

func TestConformanceCopyOnRead(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			return blockdev.Options{"driver": "copy-on-read", "file": file(t)}
		},
		Stores:      true,
		WritesChild: true,
	})
}

// copy-on-read over a qcow2 overlay of a raw base: reads copy what comes
// from the base into the overlay.
func TestConformanceCopyOnReadChain(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			base := drivertest.Image(t, 4<<20)
			top := drivertest.Image(t, 0)
			g := blockdev.NewGraph(zerolog.Nop())
			defer g.Close()
			if err := g.Create(context.Background(), "qcow2", blockdev.Options{"size": int64(4 << 20),
				"cluster-size": int64(4096), "backing-file": base, "backing-fmt": "raw",
				"file": map[string]any{"driver": "file", "filename": top}}, "job 'test'"); err != nil {
				t.Fatal(err)
			}
			return blockdev.Options{"driver": "copy-on-read",
				"file": map[string]any{"driver": "qcow2", "file": map[string]any{"driver": "file", "filename": top}}}
		},
		Stores:      true,
		WritesChild: true,
	})
}

func TestConformanceCopyBeforeWrite(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			return blockdev.Options{"driver": "copy-before-write", "file": file(t), "target": file(t)}
		},
		Stores:      true,
		WritesChild: true,
	})
}

// mirror_top and commit_top are not in blockdev-add's schema (jobs insert
// them), but the graph opens them from the same options.
func TestConformanceMirrorTop(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			return blockdev.Options{"driver": "mirror_top", "backing": file(t)}
		},
		Stores: true,
	})
}

// commit_top takes no permission on its child: it serves reads only.
func TestConformanceCommitTop(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			return blockdev.Options{"driver": "commit_top", "backing": file(t)}
		},
		Stores:   true,
		ReadOnly: true,
	})
}
