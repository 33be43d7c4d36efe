package qmp_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
	"github.com/qbmond/qbmond/schema"
)

// BenchmarkExecuteTyped measures the dispatcher's part of a command with
// arguments against the real schema: validating the parsed arguments and
// decoding them into the generated type, for a flat struct, a union
// inside a list (transaction) and a union kept as JSON (blockdev-add).
func BenchmarkExecuteTyped(b *testing.B) {
	s, err := schema.Load()
	if err != nil {
		b.Fatal(err)
	}
	d := qmp.NewDispatcher(s, zerolog.Nop())
	qmp.RegisterTyped(d, "block-dirty-bitmap-add", func(context.Context, *qapi.BlockDirtyBitmapAdd) (*qapi.Empty, error) { return nil, nil })
	qmp.RegisterTyped(d, "transaction", func(context.Context, *qapi.TransactionArgs) (*qapi.Empty, error) { return nil, nil })
	qmp.RegisterTyped(d, "blockdev-add", func(context.Context, *qapi.BlockdevOptions) (*qapi.Empty, error) { return nil, nil })
	for _, c := range []struct{ name, cmd, args string }{
		{"struct", "block-dirty-bitmap-add", `{"node": "disk", "name": "b0", "granularity": 65536, "persistent": true}`},
		{"transaction", "transaction", `{"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "disk", "name": "b1"}},
			{"type": "block-dirty-bitmap-clear", "data": {"node": "disk", "name": "b0"}}]}`},
		{"blockdev-add", "blockdev-add", `{"driver": "qcow2", "node-name": "disk", "discard": "unmap",
			"file": {"driver": "file", "filename": "/tmp/disk.qcow2", "aio": "threads"}}`},
	} {
		b.Run(c.name, func(b *testing.B) {
			dec := json.NewDecoder(strings.NewReader(c.args))
			dec.UseNumber()
			var args any
			if err := dec.Decode(&args); err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := d.Execute(ctx, qmp.Request{Name: c.cmd, Args: args}); err != nil {
					b.Fatal(err.Desc)
				}
			}
		})
	}
}
