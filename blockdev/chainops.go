package blockdev

import (
	"context"
	"fmt"
)

// The checks and changes of change-backing-file and drop-intermediate,
// by name and with QEMU's errors (the commands themselves are package
// blockqmp's).

// lookupBS finds a node as QEMU's bdrv_lookup_bs does with a device name
// and a node-name (qbmond has no named block backends, so only the node
// name can match).
func (lk *Locked) lookupBS(device, node string) (*Node, error) {
	name := node
	if name == "" {
		name = device
	}
	if n := lk.Lookup(name); n != nil {
		return n, nil
	}
	return nil, fmt.Errorf("Cannot find device='%s' nor node-name='%s'", device, node)
}

// ChangeBackingFileByName is QEMU's change-backing-file, by names: device
// is the chain's root node, imageNodeName the image whose header names
// backingFile from now on. Checks in QEMU's order, then the image is reopened read-write if need be, its header
// rewritten (with the image's own format as the backing format, as QEMU
// writes it) and the image reopened read-only again.
func (lk *Locked) ChangeBackingFileByName(ctx context.Context, device, imageNodeName, backingFile string) error {
	bs, err := lk.lookupBS(device, device)
	if err != nil {
		return err
	}
	if !bs.IsRoot(lk) {
		return fmt.Errorf("Need a root block node")
	}
	image, err := lk.lookupBS("", imageNodeName)
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
	ro := image.ReadOnly()
	if ro {
		if err := lk.SetReadOnly(ctx, image, false); err != nil {
			return err
		}
	}
	err = image.changeBacking(ctx, backingFile, image.drvName)
	if err != nil {
		err = fmt.Errorf("Could not change backing file to '%s': %s", backingFile, Strerror(err))
	}
	if ro {
		if rerr := lk.SetReadOnly(ctx, image, true); rerr != nil && err == nil {
			err = rerr
		}
	}
	return err
}

// DropIntermediateByName is qbmond's drop-intermediate (see
// DropIntermediate) by node names, checked as the command checks them:
// device is the active layer, top the highest node to drop, base the node
// that stays below them.
func (lk *Locked) DropIntermediateByName(ctx context.Context, device, top, base, backingFile string) error {
	activeN, err := lk.lookupBS(device, device)
	if err != nil {
		return err
	}
	topN, err := lk.lookupBS("", top)
	if err != nil {
		return err
	}
	baseN, err := lk.lookupBS("", base)
	if err != nil {
		return err
	}
	if err := checkDrop(lk, activeN, topN, baseN); err != nil {
		return err
	}
	if err := CheckDropUsers(lk, activeN, topN, baseN); err != nil {
		return err
	}
	return lk.DropIntermediate(ctx, activeN, topN, baseN, backingFile)
}
