package jobs

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/chain"
	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

// What the chain jobs (commit, stream) share: walking a backing chain as
// QEMU 7.2 does, through the filters a chain may hold, and copying.

// registerChainJobs installs block-commit and block-stream.
func (m *Manager) registerChainJobs(d *qmp.Dispatcher, g *blockdev.Graph) {
	qmp.RegisterTyped(d, "block-commit", func(ctx context.Context, a *qapi.BlockCommitArgs) (*qapi.Empty, error) {
		return nil, m.blockCommit(ctx, g, a)
	})
	qmp.RegisterTyped(d, "block-stream", func(ctx context.Context, a *qapi.BlockStreamArgs) (*qapi.Empty, error) {
		return nil, m.blockStream(ctx, g, a)
	})
}

func manualFlags(autoFinalize, autoDismiss *bool) (manualFinalize, manualDismiss bool) {
	return autoFinalize != nil && !*autoFinalize, autoDismiss != nil && !*autoDismiss
}

// chainContains tells whether n is top or lies below it in top's chain,
// filters included (QEMU's bdrv_chain_contains).
func chainContains(lk *blockdev.Locked, top, n *blockdev.Node) bool {
	return chain.InChain(lk, top, n)
}

// chainNext is the next node of n's backing chain that is not a filter
// (QEMU's bdrv_backing_chain_next).
func chainNext(n *blockdev.Node) *blockdev.Node {
	if b := n.SkipFilters().BackingNode(); b != nil {
		return b.SkipFilters()
	}
	return nil
}

// findOverlay returns the node of active's chain (filters skipped) whose
// next node is n, or the last node when n is nil (QEMU 7.2's
// bdrv_find_overlay; with nil it is bdrv_find_base).
func findOverlay(active, n *blockdev.Node) *blockdev.Node {
	if n != nil {
		n = n.SkipFilters()
	}
	for it := active.SkipFilters(); it != nil; {
		next := chainNext(it)
		if next == n {
			return it
		}
		it = next
	}
	return nil
}

// findBase returns the bottom of top's chain, top itself when it has no
// backing node (QEMU's bdrv_find_base).
func findBase(top *blockdev.Node) *blockdev.Node { return findOverlay(top, nil) }

// findBackingImage finds the node below active whose image is called
// name, either as its overlay's header names it or by its filename
// (QEMU's bdrv_find_backing_image).
func findBackingImage(active *blockdev.Node, name string) *blockdev.Node {
	for it := active.SkipFilters(); it != nil; it = chainNext(it) {
		b := chainNext(it)
		if b == nil {
			return nil
		}
		if bf, ok := it.Driver().(blockdev.BackingFiler); ok {
			if hdr, _ := bf.BackingFile(); hdr != "" {
				if hdr == name {
					return b
				}
				if !filepath.IsAbs(hdr) && filepath.Join(filepath.Dir(it.Filename()), hdr) == filepath.Clean(name) {
					return b
				}
			}
		}
		if b.Filename() == name || filepath.Clean(b.Filename()) == filepath.Clean(name) {
			return b
		}
	}
	return nil
}

// layersBetween counts the nodes from top down to, not including, base
// (filters too): the allocation depths BlockStatusAbove reports for them.
func layersBetween(top, base *blockdev.Node) int {
	n := 0
	for it := top; it != nil && it != base; it = it.FilterOrCOW() {
		n++
	}
	return n
}

// lookupNode is QEMU's bdrv_lookup_bs for a node given by node-name (a
// storage daemon has no devices).
func lookupNode(lk *blockdev.Locked, node string) (*blockdev.Node, error) {
	if n := lk.Lookup(node); n != nil {
		return n, nil
	}
	return nil, fmt.Errorf("Cannot find device='' nor node-name='%s'", node)
}

// chunkSize is the size of one iteration of commit and stream, QEMU's
// COMMIT_BUFFER_SIZE and STREAM_CHUNK: progress moves, errors are
// reported and the speed limit is applied per chunk.
const chunkSize = 512 << 10

// ioError turns an I/O error into QEMU's job error: strerror of its errno.
func ioError(err error) error {
	return errors.New(blockdev.Strerror(err))
}
