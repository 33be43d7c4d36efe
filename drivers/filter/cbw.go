package filter

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/qbmond/qbmond/bitmap"
	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/blockcopy"
)

func init() {
	blockdev.RegisterDriver("copy-before-write", func() blockdev.Driver { return &CBW{} })
}

// CBW is the copy-before-write filter (QEMU's copy-before-write): before a
// write, write-zeroes or discard reaches its file child, the clusters it
// is about to change are copied to the target, if the copy bitmap still
// has them, so that the target keeps the file's content as it was when
// the filter was inserted (a backup's point in time). Reads pass through.
// A backup job inserts one above its source and copies the remaining
// clusters through the same blockcopy.State; users may add one with
// blockdev-add (target, and optionally bitmap: only its dirty clusters
// are copied).
type CBW struct {
	passThrough
	node          *blockdev.Node
	done          *bitmap.Bitmap // clusters a guest write had copied (QEMU's done_bitmap)
	unlist        []func()       // take the anonymous bitmaps off their nodes
	target        *blockdev.Child
	bc            *blockcopy.State
	breakSnapshot bool          // on-cbw-error=break-snapshot
	timeout       time.Duration // cbw-timeout (0: none)
}

// defaultCluster is QEMU's BLOCK_COPY_CLUSTER_SIZE_DEFAULT.
const defaultCluster = 64 << 10

// Open attaches "file" and "target" and sets up the copy.
func (d *CBW) Open(ctx context.Context, oc *blockdev.OpenContext) (err error) {
	d.node = oc.Node()
	if err := d.open(ctx, oc, "file"); err != nil {
		return err
	}
	if d.target, err = oc.OpenChild(ctx, "target", blockdev.RoleData); err != nil {
		return err
	}
	cluster := int64(defaultCluster)
	tn := d.target.Node()
	if di, err := tn.Driver().Info(ctx); err == nil && di.ClusterSize > 0 {
		cluster = max(cluster, di.ClusterSize)
	} else if tn.BackingNode() == nil {
		d.node.Warn(fmt.Sprintf("The target block device doesn't provide information about the block size "+
			"and it doesn't have a backing file. The default block size of %d bytes is used. If the actual block "+
			"size of the target exceeds this default, the backup may be unusable", defaultCluster), nil)
	}
	if d.bc, err = blockcopy.New(d.child, d.target, cluster, d.child.Length()); err != nil {
		return err
	}
	o := oc.Options()
	mode, _, err := o.String("on-cbw-error")
	if err != nil {
		return err
	}
	d.breakSnapshot = mode == "break-snapshot"
	secs, _, err := o.Int("cbw-timeout")
	if err != nil {
		return err
	}
	d.timeout = time.Duration(secs) * time.Second
	defer func() {
		// As QEMU, the copy bitmap shows on the source, the filter's
		// own two (what may be read, what guest writes copied) on the
		// filter, all anonymous.
		if err == nil {
			d.unlist = append(d.unlist, d.child.Node().AddAnonymousBitmap(d.bc.Bitmap(), false))
			d.done, _ = bitmap.New(d.child.Length(), uint64(cluster))
			d.unlist = append(d.unlist, d.node.AddAnonymousBitmap(d.done, false))
			d.unlist = append(d.unlist, d.node.AddAnonymousBitmap(d.bc.Bitmap().Copy(), false))
		}
	}()
	if v, ok := o["bitmap"]; ok {
		ref, _ := v.(map[string]any)
		node, _ := ref["node"].(string)
		name, _ := ref["name"].(string)
		_, b, err := oc.Locked().LookupBitmap(node, name)
		if err != nil {
			return err
		}
		if b.Bits().Granularity() > uint64(cluster) || b.Bits().Size() != d.child.Length() {
			return errors.New("Bitmap granularity and size must match the copy-before-write node's")
		}
		bits := d.bc.Bitmap()
		bits.Clear()
		_ = bits.Merge(b.Bits())
	}
	return nil
}

// Close takes the anonymous bitmaps off.
// ExactFilename is the file child's file name, as QEMU's
// copy-before-write names itself.
func (d *CBW) ExactFilename() string { return d.child.Node().Filename() }

func (d *CBW) Close() error {
	for _, u := range d.unlist {
		u()
	}
	d.unlist = nil
	return nil
}

// BlockCopy is the filter's copy state (the backup job copies through it).
func (d *CBW) BlockCopy() *blockcopy.State { return d.bc }

// copyBefore copies the clusters a write is about to change. A failure
// fails the write, or, with break-snapshot, breaks the copy instead
// (nothing more is copied, and the copy's users learn of the error).
func (d *CBW) copyBefore(ctx context.Context, off, n int64) error {
	if err := d.bc.Broken(); err != nil {
		return nil // the snapshot is broken already: writes go through
	}
	cctx := ctx
	if d.timeout > 0 {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(ctx, d.timeout)
		defer cancel()
	}
	err := d.bc.Copy(cctx, off, n)
	if err == nil {
		d.done.Set(off, n)
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("copy-before-write timed out: %w", syscall.ETIMEDOUT)
	}
	if d.breakSnapshot {
		d.bc.Break(err)
		return nil
	}
	return err
}

// Write copies the clusters it changes first.
func (d *CBW) Write(ctx context.Context, off int64, p []byte, flags blockdev.ReqFlags) error {
	if err := d.copyBefore(ctx, off, int64(len(p))); err != nil {
		return err
	}
	return d.child.Write(ctx, off, p, flags)
}

// WriteZeroes copies the clusters it changes first.
func (d *CBW) WriteZeroes(ctx context.Context, off, n int64, flags blockdev.ReqFlags) error {
	if err := d.copyBefore(ctx, off, n); err != nil {
		return err
	}
	return d.child.WriteZeroes(ctx, off, n, flags)
}

// Discard copies the clusters it changes first.
func (d *CBW) Discard(ctx context.Context, off, n int64) error {
	if err := d.copyBefore(ctx, off, n); err != nil {
		return err
	}
	return d.child.Discard(ctx, off, n)
}

// ChildPerm follows QEMU's cbw_child_perm: the target is written (and
// shared, but for resize); the source is passed through, and once the
// filter has users nobody else may write to it or resize it, and a
// writing user needs it read consistently (for the copies).
func (d *CBW) ChildPerm(c *blockdev.Child, role blockdev.Role, perm, shared blockdev.Perm) (blockdev.Perm, blockdev.Perm) {
	if role&blockdev.RoleFiltered == 0 {
		return blockdev.PermWrite, blockdev.PermAll &^ blockdev.PermResize
	}
	p, s := blockdev.DefaultChildPerm(role, true, perm, shared)
	if len(d.node.Parents()) > 0 {
		if perm&blockdev.PermWrite != 0 {
			p |= blockdev.PermConsistentRead
		}
		s &^= blockdev.PermWrite | blockdev.PermResize
	}
	return p, s
}

// SupportedWriteFlags: the flags go on to the source.
func (d *CBW) SupportedWriteFlags() blockdev.ReqFlags {
	return blockdev.ReqFUA | blockdev.ReqMayUnmap | blockdev.ReqNoFallback
}
