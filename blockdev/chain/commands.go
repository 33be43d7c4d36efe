package chain

import (
	"context"
	"fmt"

	"github.com/qbmond/qbmond/blockdev"
)

// The checks and changes of the change-backing-file and drop-intermediate
// commands, by name and with QEMU's errors (the commands themselves are
// package blockqmp's).

// ChangeBackingFileByName is QEMU's change-backing-file, by names: device
// is the chain's root node, imageNodeName the image whose header names
// backingFile from now on. Checks in QEMU's order, then the image is
// reopened read-write if need be, its header rewritten (with the image's
// own format as the backing format, as QEMU writes it) and the image
// reopened read-only again.
func ChangeBackingFileByName(ctx context.Context, lk *blockdev.Locked, device, imageNodeName, backingFile string) error {
	bs, err := lk.LookupBS(device, device)
	if err != nil {
		return err
	}
	if !bs.IsRoot(lk) {
		return fmt.Errorf("Need a root block node")
	}
	image, err := lk.LookupBS("", imageNodeName)
	if err != nil {
		return err
	}
	if image.BackingNode() == nil {
		return fmt.Errorf("not allowing backing file change on an image without a backing file")
	}
	if err := bs.Blocker(lk); err != nil {
		return err
	}
	if !InChain(lk, bs, image) {
		return fmt.Errorf("'%s' and image file are not in the same chain", device)
	}
	return writable(ctx, lk, image, func() error {
		if err := lk.RewriteBackingFile(ctx, image, backingFile, image.DriverName()); err != nil {
			return fmt.Errorf("Could not change backing file to '%s': %s", backingFile, blockdev.Strerror(err))
		}
		return nil
	}, nil)
}

// DropIntermediateByName is qbmond's drop-intermediate (see
// DropIntermediate) by node names, checked as the command checks them:
// device is the active layer, top the highest node to drop, base the node
// that stays below them.
func DropIntermediateByName(ctx context.Context, lk *blockdev.Locked, device, top, base, backingFile string) error {
	activeN, err := lk.LookupBS(device, device)
	if err != nil {
		return err
	}
	topN, err := lk.LookupBS("", top)
	if err != nil {
		return err
	}
	baseN, err := lk.LookupBS("", base)
	if err != nil {
		return err
	}
	if err := checkDrop(lk, activeN, topN, baseN); err != nil {
		return err
	}
	if err := CheckDropUsers(lk, activeN, topN, baseN); err != nil {
		return err
	}
	return DropIntermediate(ctx, lk, activeN, topN, baseN, backingFile)
}
