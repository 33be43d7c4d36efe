package blockdev

import (
	"context"
	"fmt"

	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

func registerChainCommands(d *qmp.Dispatcher, g *Graph) {
	qmp.RegisterTyped(d, "change-backing-file", g.qmpChangeBackingFile)
	qmp.RegisterTyped(d, "drop-intermediate", g.qmpDropIntermediate)
}

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

// qmpChangeBackingFile is QEMU's change-backing-file: checks in QEMU's
// order, then the image is reopened read-write if need be, its header
// rewritten (with the image's own format as the backing format, as QEMU
// writes it) and the image reopened read-only again.
func (g *Graph) qmpChangeBackingFile(ctx context.Context, a *qapi.ChangeBackingFileArgs) (any, error) {
	return WithLock(g, func(lk *Locked) (any, error) {
		bs, err := lk.lookupBS(a.Device, a.Device)
		if err != nil {
			return nil, err
		}
		if !bs.IsRoot(lk) {
			return nil, fmt.Errorf("Need a root block node")
		}
		image, err := lk.lookupBS("", a.ImageNodeName)
		if err != nil {
			return nil, err
		}
		if image.BackingNode() == nil {
			return nil, fmt.Errorf("not allowing backing file change on an image without a backing file")
		}
		if err := bs.Blocker(lk); err != nil {
			return nil, err
		}
		if !InChain(lk, bs, image) {
			return nil, fmt.Errorf("'%s' and image file are not in the same chain", a.Device)
		}
		ro := image.ReadOnly()
		if ro {
			if err := lk.SetReadOnly(ctx, image, false); err != nil {
				return nil, err
			}
		}
		err = image.changeBacking(ctx, a.BackingFile, image.drvName)
		if err != nil {
			err = fmt.Errorf("Could not change backing file to '%s': %s", a.BackingFile, Strerror(err))
		}
		if ro {
			if rerr := lk.SetReadOnly(ctx, image, true); rerr != nil && err == nil {
				err = rerr
			}
		}
		if err != nil {
			return nil, err
		}
		return struct{}{}, nil
	})
}

// qmpDropIntermediate is qbmond's drop-intermediate (see DropIntermediate):
// device is the active layer, top the highest node to drop, base the node
// that stays below them.
func (g *Graph) qmpDropIntermediate(ctx context.Context, a *qapi.DropIntermediateArgs) (any, error) {
	return WithLock(g, func(lk *Locked) (any, error) {
		active, err := lk.lookupBS(a.Device, a.Device)
		if err != nil {
			return nil, err
		}
		top, err := lk.lookupBS("", a.Top)
		if err != nil {
			return nil, err
		}
		base, err := lk.lookupBS("", a.Base)
		if err != nil {
			return nil, err
		}
		if err := checkDrop(lk, active, top, base); err != nil {
			return nil, err
		}
		if err := CheckDropUsers(lk, active, top, base); err != nil {
			return nil, err
		}
		if err := lk.DropIntermediate(ctx, active, top, base, qapi.Deref(a.BackingFile)); err != nil {
			return nil, err
		}
		return struct{}{}, nil
	})
}
