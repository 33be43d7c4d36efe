package blockdev_test

import (
	"testing"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/blockqmp"
	"github.com/qbmond/qbmond/drivers/drivertest"
)

// A root user (an export) keeps its node from blockdev-del with QEMU's
// message, and shows in x-debug-query-block-graph as an unnamed
// block-backend with a "root" edge.
func TestRootUser(t *testing.T) {
	g := newGraph(t)
	mustAdd(t, g, blockdev.Options{"driver": "null-co", "node-name": "n0"})
	lk, unlock := drivertest.Lock(g)
	n := lk.Lookup("n0")
	root, err := lk.AttachRoot(n, "block device 'e0'", blockdev.PermConsistentRead|blockdev.PermWrite,
		blockdev.PermConsistentRead|blockdev.PermWrite|blockdev.PermWriteUnchanged)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	wantErr(t, del(g, "n0"), "Node n0 is in use")

	lk, unlock = drivertest.Lock(g)
	gr := blockqmp.QueryBlockGraph(lk)
	unlock()
	var backends int
	for _, x := range gr.Nodes {
		if x.Type == "block-backend" && x.Name == "" {
			backends++
			found := false
			for _, e := range gr.Edges {
				if e.Parent == x.ID && e.Name == "root" && len(e.Perm) == 2 {
					found = true
				}
			}
			if !found {
				t.Errorf("no root edge from the block-backend: %+v", gr.Edges)
			}
		}
	}
	if backends != 1 {
		t.Errorf("%d block-backend nodes, want 1: %+v", backends, gr.Nodes)
	}

	lk, unlock = drivertest.Lock(g)
	lk.DetachRoot(root)
	unlock()
	if err := del(g, "n0"); err != nil {
		t.Fatalf("blockdev-del after the export went: %v", err)
	}
}
