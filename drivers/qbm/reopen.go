package qbm

import (
	"context"
	"fmt"

	"github.com/qbmond/qbmond/blockdev"
)

// ReopenPrepare refuses to change the mode of an open QBM node: its bitmap
// files and checksums are set up for the mode it was opened in. The error
// is QEMU's for a driver that cannot reopen.
func (d *Driver) ReopenPrepare(ctx context.Context, rs *blockdev.ReopenState) error {
	if rs.ReadOnly == d.ro {
		return nil
	}
	return fmt.Errorf("Block format 'qbm' used by node '%s' does not support reopening files", d.node.Name())
}

// ReopenCommit has nothing to do: only reopens that keep the mode succeed.
func (d *Driver) ReopenCommit(rs *blockdev.ReopenState) {}

// ReopenAbort has nothing to undo.
func (d *Driver) ReopenAbort(rs *blockdev.ReopenState) {}

var _ blockdev.Reopener = (*Driver)(nil)
