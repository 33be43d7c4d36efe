package blockdev

import (
	"context"
	"encoding/json"

	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

// RegisterCommands installs the block graph's QMP commands: blockdev-add,
// blockdev-del, query-named-block-nodes, query-block, query-blockstats and
// x-debug-query-block-graph, the bitmap commands, change-backing-file and
// drop-intermediate. Every handler holds the graph lock.
func RegisterCommands(d *qmp.Dispatcher, g *Graph) {
	emit := d.Emit
	g.emit.Store(&emit)
	qmp.RegisterTyped(d, "blockdev-add", g.qmpBlockdevAdd)
	qmp.RegisterTyped(d, "blockdev-del", g.qmpBlockdevDel)
	qmp.RegisterTyped(d, "query-named-block-nodes", g.qmpQueryNamedBlockNodes)
	d.Register("query-block", g.qmpQueryBlock)
	d.Register("x-debug-query-block-graph", g.qmpQueryBlockGraph)
	qmp.RegisterTyped(d, "query-blockstats", g.qmpQueryBlockStats)
	registerBitmapCommands(d, g)
	registerChainCommands(d, g)
	registerSnapshotCommands(d, g)
	registerReopenCommand(d, g)
}

func (g *Graph) qmpQueryBlockStats(ctx context.Context, a *qapi.QueryBlockstatsArgs) (any, error) {
	return WithLock(g, func(lk *Locked) (any, error) {
		return lk.QueryBlockStats(qapi.Deref(a.QueryNodes)), nil
	})
}

func (g *Graph) qmpBlockdevAdd(ctx context.Context, a *qapi.BlockdevOptions) (any, error) {
	opts, err := DecodeOptions(*a)
	if err != nil {
		return nil, qmp.Errorf("%v", err)
	}
	return WithLock(g, func(lk *Locked) (any, error) {
		if _, err := lk.Add(ctx, opts); err != nil {
			return nil, err
		}
		return struct{}{}, nil
	})
}

func (g *Graph) qmpBlockdevDel(ctx context.Context, a *qapi.BlockdevDelArgs) (any, error) {
	return WithLock(g, func(lk *Locked) (any, error) {
		if err := lk.Delete(ctx, a.NodeName); err != nil {
			return nil, err
		}
		return struct{}{}, nil
	})
}

func (g *Graph) qmpQueryNamedBlockNodes(ctx context.Context, a *qapi.QueryNamedBlockNodesArgs) (any, error) {
	return WithLock(g, func(lk *Locked) (any, error) {
		if err := lk.checkEjected(); err != nil {
			return nil, err
		}
		return lk.QueryNamedBlockNodes(ctx, qapi.Deref(a.Flat)), nil
	})
}

// query-block lists BlockBackends; qbmond, like qemu-storage-daemon, has no
// named ones, so the answer is always empty.
func (g *Graph) qmpQueryBlock(ctx context.Context, args json.RawMessage) (any, error) {
	return []struct{}{}, nil
}

func (g *Graph) qmpQueryBlockGraph(ctx context.Context, args json.RawMessage) (any, error) {
	return WithLock(g, func(lk *Locked) (any, error) {
		return lk.QueryBlockGraph(), nil
	})
}
