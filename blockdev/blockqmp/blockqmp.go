// Package blockqmp owns the QMP face of the block graph (package
// blockdev): the handlers of blockdev-add, blockdev-del, blockdev-reopen,
// the node queries (query-named-block-nodes, query-block,
// query-blockstats, x-debug-query-block-graph), the block-dirty-bitmap-*
// commands, change-backing-file, drop-intermediate and the external
// snapshot commands, and the graph's transaction actions
// (PrepareTxAction, which the jobs package's transaction calls). It turns
// the generated argument types of package qapi into the plain Go calls
// blockdev offers, under the graph lock; the graph logic, its checks and
// its error messages stay in blockdev, so that blockdev imports neither
// qmp, schema nor qapi.
package blockqmp

import (
	"context"
	"encoding/json"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

// handlers are the commands of one graph.
type handlers struct{ g *blockdev.Graph }

// RegisterCommands installs the block graph's QMP commands: blockdev-add,
// blockdev-del, query-named-block-nodes, query-block, query-blockstats and
// x-debug-query-block-graph, the bitmap commands, change-backing-file,
// drop-intermediate, blockdev-snapshot(-sync) and blockdev-reopen, and
// sends the graph's events through d. Every handler holds the graph lock.
func RegisterCommands(d *qmp.Dispatcher, g *blockdev.Graph) {
	g.SetEmitter(d.Emit)
	h := handlers{g}
	qmp.RegisterTyped(d, "blockdev-add", h.blockdevAdd)
	qmp.RegisterTyped(d, "blockdev-del", h.blockdevDel)
	qmp.RegisterTyped(d, "query-named-block-nodes", h.queryNamedBlockNodes)
	d.Register("query-block", h.queryBlock)
	d.Register("x-debug-query-block-graph", h.queryBlockGraph)
	qmp.RegisterTyped(d, "query-blockstats", h.queryBlockStats)
	registerBitmapCommands(d, h)
	registerChainCommands(d, h)
	registerSnapshotCommands(d, h)
	registerReopenCommand(d, h)
}

func (h handlers) queryBlockStats(ctx context.Context, a *qapi.QueryBlockstatsArgs) (any, error) {
	return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (any, error) {
		return lk.QueryBlockStats(qapi.Deref(a.QueryNodes)), nil
	})
}

func (h handlers) blockdevAdd(ctx context.Context, a *qapi.BlockdevOptions) (any, error) {
	opts, err := blockdev.DecodeOptions(*a)
	if err != nil {
		return nil, qmp.Errorf("%v", err)
	}
	return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (any, error) {
		if _, err := lk.Add(ctx, opts); err != nil {
			return nil, err
		}
		return struct{}{}, nil
	})
}

func (h handlers) blockdevDel(ctx context.Context, a *qapi.BlockdevDelArgs) (any, error) {
	return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (any, error) {
		if err := lk.Delete(ctx, a.NodeName); err != nil {
			return nil, err
		}
		return struct{}{}, nil
	})
}

func (h handlers) queryNamedBlockNodes(ctx context.Context, a *qapi.QueryNamedBlockNodesArgs) (any, error) {
	return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (any, error) {
		if err := lk.CheckEjected(); err != nil {
			return nil, qmp.Errorf("%v", err)
		}
		return lk.QueryNamedBlockNodes(ctx, qapi.Deref(a.Flat)), nil
	})
}

// query-block lists BlockBackends; qbmond, like qemu-storage-daemon, has no
// named ones, so the answer is always empty.
func (h handlers) queryBlock(ctx context.Context, args json.RawMessage) (any, error) {
	return []struct{}{}, nil
}

func (h handlers) queryBlockGraph(ctx context.Context, args json.RawMessage) (any, error) {
	return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (any, error) {
		return lk.QueryBlockGraph(), nil
	})
}
