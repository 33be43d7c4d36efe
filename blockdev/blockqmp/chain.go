package blockqmp

import (
	"context"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/chain"
	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

func registerChainCommands(d *qmp.Dispatcher, h handlers) {
	qmp.RegisterTyped(d, "change-backing-file", h.changeBackingFile)
	qmp.RegisterTyped(d, "drop-intermediate", h.dropIntermediate)
}

// changeBackingFile is QEMU's change-backing-file (see
// chain.ChangeBackingFileByName).
func (h handlers) changeBackingFile(ctx context.Context, a *qapi.ChangeBackingFileArgs) (*qapi.Empty, error) {
	return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (*qapi.Empty, error) {
		if err := chain.ChangeBackingFileByName(ctx, lk, a.Device, a.ImageNodeName, a.BackingFile); err != nil {
			return nil, err
		}
		return nil, nil
	})
}

// dropIntermediate is qbmond's drop-intermediate (see
// chain.DropIntermediateByName): device is the active layer,
// top the highest node to drop, base the node that stays below them.
func (h handlers) dropIntermediate(ctx context.Context, a *qapi.DropIntermediateArgs) (*qapi.Empty, error) {
	return blockdev.WithLock(h.g, func(lk *blockdev.Locked) (*qapi.Empty, error) {
		if err := chain.DropIntermediateByName(ctx, lk, a.Device, a.Top, a.Base, qapi.Deref(a.BackingFile)); err != nil {
			return nil, err
		}
		return nil, nil
	})
}
