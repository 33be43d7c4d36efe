package qmp_test

import (
	"testing"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/blockqmp"
	"github.com/qbmond/qbmond/exports"
	"github.com/qbmond/qbmond/jobs"
	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
	"github.com/qbmond/qbmond/schema"
)

// TestEveryCommandTyped: with every package's commands registered as the
// daemon registers them, each command has a typed handler, so what a
// handler reads and returns are the schema's generated types
// (RegisterTyped panics on any other). The one exception is
// query-qmp-schema, the schema describing itself, kept as rendered JSON.
func TestEveryCommandTyped(t *testing.T) {
	s, err := schema.Load()
	if err != nil {
		t.Fatal(err)
	}
	d := qmp.NewDispatcher(s, zerolog.Nop())
	qmp.RegisterCore(d, qmp.VersionInfo{Major: 7, Minor: 2}, func() {})
	schema.RegisterCommands(d, s)
	g := blockdev.NewGraph(zerolog.Nop())
	blockqmp.RegisterCommands(d, g)
	exports.New(g, d, zerolog.Nop()).RegisterCommands()
	jobs.New(d, zerolog.Nop()).RegisterCommands(d, g)
	untyped := map[string]bool{"query-qmp-schema": true}
	for _, c := range d.Commands() {
		if !d.Typed(c) && !untyped[c] {
			t.Errorf("%s: its handler is not registered with qmp.RegisterTyped", c)
		}
	}
	if len(d.Commands()) != len(qapi.CommandReturns) {
		t.Errorf("%d commands registered, the schema has %d", len(d.Commands()), len(qapi.CommandReturns))
	}
}
