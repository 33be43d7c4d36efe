// Package blockqmp owns the QMP face of the block graph (package
// blockdev): the handlers of blockdev-add, blockdev-del, blockdev-reopen,
// the node queries (query-named-block-nodes, query-block,
// query-blockstats, x-debug-query-block-graph), the block-dirty-bitmap-*
// commands, change-backing-file, drop-intermediate and the external
// snapshot commands, the graph's transaction actions (PrepareTxAction,
// which the jobs package's transaction calls), and the query views
// (query.go: the nodes in the schema's generated types). It turns
// the generated argument types of package qapi into the plain Go calls
// blockdev offers, under the graph lock; the graph logic, its checks and
// its error messages stay in blockdev, so that blockdev imports neither
// qmp, schema nor qapi.
package blockqmp

import (
	"context"

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
	qmp.RegisterTyped(d, "query-block", h.queryBlock)
	qmp.RegisterTyped(d, "x-debug-query-block-graph", h.queryBlockGraph)
	qmp.RegisterTyped(d, "query-blockstats", h.queryBlockStats)
	registerBitmapCommands(d, h)
	registerChainCommands(d, h)
	registerSnapshotCommands(d, h)
	registerReopenCommand(d, h)
}

func (h handlers) queryBlockStats(ctx context.Context, a *qapi.QueryBlockstatsArgs) ([]qapi.BlockStats, error) {
	return blockdev.WithLock(h.g, func(lk *blockdev.Locked) ([]qapi.BlockStats, error) {
		return QueryBlockStats(lk, qapi.Deref(a.QueryNodes))
	})
}

func (h handlers) blockdevAdd(ctx context.Context, a *qapi.BlockdevOptions) (*qapi.Empty, error) {
	opts, err := blockdev.DecodeOptions(*a)
	if err != nil {
		return nil, qmp.Errorf("%v", err)
	}
	return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (*qapi.Empty, error) {
		if _, err := lk.Add(ctx, opts); err != nil {
			return nil, err
		}
		return nil, nil
	})
}

func (h handlers) blockdevDel(ctx context.Context, a *qapi.BlockdevDelArgs) (*qapi.Empty, error) {
	return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (*qapi.Empty, error) {
		if err := lk.Delete(ctx, a.NodeName); err != nil {
			return nil, err
		}
		return nil, nil
	})
}

func (h handlers) queryNamedBlockNodes(ctx context.Context, a *qapi.QueryNamedBlockNodesArgs) ([]qapi.BlockDeviceInfo, error) {
	return blockdev.WithLock(h.g, func(lk *blockdev.Locked) ([]qapi.BlockDeviceInfo, error) {
		if err := lk.CheckEjected(); err != nil {
			return nil, qmp.Errorf("%v", err)
		}
		return QueryNamedBlockNodes(ctx, lk, qapi.Deref(a.Flat))
	})
}

// query-block lists BlockBackends; qbmond, like qemu-storage-daemon, has no
// named ones, so the answer is always empty.
func (h handlers) queryBlock(context.Context, *qapi.Empty) ([]qapi.BlockInfo, error) {
	return []qapi.BlockInfo{}, nil
}

func (h handlers) queryBlockGraph(context.Context, *qapi.Empty) (*qapi.XDbgBlockGraph, error) {
	return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (*qapi.XDbgBlockGraph, error) {
		return QueryBlockGraph(lk), nil
	})
}
