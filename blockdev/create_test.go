package blockdev_test

import (
	"context"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
)

func init() { blockdev.Register("testcreate", testcreate{}) }

// testcreate opens testfmt nodes and "creates" an image by writing a
// marker at offset 0 of its file.
type testcreate struct{}

func (testcreate) New() blockdev.Driver { return new(testfmt) }

func (testcreate) Create(ctx context.Context, cc *blockdev.CreateContext) error {
	c, err := cc.OpenChild(ctx, "file")
	if err != nil {
		return err
	}
	return c.Write(ctx, 0, []byte("TEST"), 0)
}

func TestCreate(t *testing.T) {
	ctx := context.Background()
	g := newGraph(t)
	if err := add(g, blockdev.Options{"driver": "null-co", "node-name": "target"}); err != nil {
		t.Fatal(err)
	}
	if err := g.Create(ctx, "testcreate", blockdev.Options{"file": "target"}, "job 'j0'"); err != nil {
		t.Fatal(err)
	}
	// An inline file definition is an implicit node that closes afterwards.
	if err := g.Create(ctx, "testcreate", blockdev.Options{"file": map[string]any{"driver": "null-co"}}, "job 'j1'"); err != nil {
		t.Fatal(err)
	}
	if got := names(g); len(got) != 1 || got[0] != "target" {
		t.Fatalf("nodes after create: %v", got)
	}
	// The job's edge is gone: the node can be deleted.
	if err := del(g, "target"); err != nil {
		t.Fatalf("blockdev-del after create: %v", err)
	}
	err := g.Create(ctx, "testcreate", blockdev.Options{"file": "nosuch"}, "job 'j2'")
	if err == nil || err.Error() != "Cannot find device='nosuch' nor node-name='nosuch'" {
		t.Fatalf("missing node: %v", err)
	}
	err = g.Create(ctx, "null-co", blockdev.Options{}, "job 'j3'")
	if err == nil || err.Error() != "Driver does not support blockdev-create" {
		t.Fatalf("driver without create: %v", err)
	}
}
