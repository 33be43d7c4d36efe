// Package filter holds the pass-through filter drivers: copy-on-read,
// which users add with blockdev-add, and commit_top and mirror_top, which
// block jobs insert into a chain while they run (as QEMU does; they are
// not in the QAPI schema's driver list, so blockdev-add refuses them).
// Each has one filtered child and passes its data through; they differ in
// the permissions they take on it and in what their reads do.
package filter

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/qbmond/qbmond/blockdev"
)

func init() {
	blockdev.RegisterDriver("copy-on-read", func() blockdev.Driver { return &COR{} })
	blockdev.RegisterDriver("commit_top", func() blockdev.Driver { return &CommitTop{} })
	blockdev.RegisterDriver("mirror_top", func() blockdev.Driver { return &MirrorTop{} })
}

// passThrough is the part the three share: every request goes to the
// filtered child unchanged.
type passThrough struct {
	child *blockdev.Child
}

func (p *passThrough) open(ctx context.Context, oc *blockdev.OpenContext, name string) error {
	var err error
	p.child, err = oc.OpenChild(ctx, name, blockdev.RoleFiltered|blockdev.RolePrimary)
	return err
}

// IsFilter marks the drivers as filters.
func (p *passThrough) IsFilter() {}

// Close does nothing: the graph detaches the child.
func (p *passThrough) Close() error { return nil }

// Read reads from the child.
func (p *passThrough) Read(ctx context.Context, off int64, b []byte) error {
	return p.child.Read(ctx, off, b)
}

// Write writes to the child.
func (p *passThrough) Write(ctx context.Context, off int64, b []byte, flags blockdev.ReqFlags) error {
	return p.child.Write(ctx, off, b, flags)
}

// WriteZeroes zeroes on the child.
func (p *passThrough) WriteZeroes(ctx context.Context, off, n int64, flags blockdev.ReqFlags) error {
	return p.child.WriteZeroes(ctx, off, n, flags)
}

// Discard discards on the child.
func (p *passThrough) Discard(ctx context.Context, off, n int64) error {
	return p.child.Discard(ctx, off, n)
}

// Flush flushes the child.
func (p *passThrough) Flush(ctx context.Context) error { return p.child.Flush(ctx) }

// BlockStatus is the child's own status (a filter reports what its child
// allocates, as QEMU's filters do).
func (p *passThrough) BlockStatus(ctx context.Context, off, n int64) (blockdev.BlockStatus, error) {
	return p.child.BlockStatus(ctx, off, n)
}

// Length is the child's.
func (p *passThrough) Length(context.Context) (int64, error) { return p.child.Length(), nil }

// Info: a filter has no image information of its own and shows its
// child's, as QEMU's bdrv_co_get_info does for filters.
func (p *passThrough) Info(ctx context.Context) (blockdev.DriverInfo, error) {
	return p.child.Node().Driver().Info(ctx)
}

// SupportedWriteFlags: every flag goes on to the child.
func (p *passThrough) SupportedWriteFlags() blockdev.ReqFlags {
	return blockdev.ReqFUA | blockdev.ReqMayUnmap | blockdev.ReqNoFallback | blockdev.ReqWriteUnchanged
}

// COR is the copy-on-read filter: reads through it copy what its child
// reads from the child's backing chain into the child (down to and
// including the node named by "bottom", the whole chain without it). With
// a bottom, the links from the filter down to the bottom are frozen while
// the filter is open, as QEMU's cor_open does; a bottom that is the child
// itself (a block-stream with nothing to stream) copies nothing.
type COR struct {
	passThrough
	// layers is how many nodes of the child's chain below the child the
	// copies come from (0: all).
	layers  int
	none    bool // bottom is the child: nothing is copied
	disable func()
}

// Open attaches the "file" child and resolves "bottom".
func (d *COR) Open(ctx context.Context, oc *blockdev.OpenContext) error {
	if err := d.open(ctx, oc, "file"); err != nil {
		return err
	}
	if name, ok, err := oc.Options().String("bottom"); err != nil {
		return err
	} else if ok {
		child := d.child.Node()
		layers := 0
		var bottom *blockdev.Node
		for it := child; it != nil; it = it.FilterOrCOW() {
			if it.Name() == name {
				bottom = it
				break
			}
			layers++
		}
		if bottom == nil {
			if oc.Locked().Lookup(name) == nil {
				return fmt.Errorf("Bottom node '%s' not found", name)
			}
			return errors.New("Bottom node is not in the backing chain of the filtered node")
		}
		if err := oc.FreezeChain(bottom); err != nil {
			return err
		}
		d.layers, d.none = layers, layers == 0
	}
	if !d.none {
		d.disable = oc.Locked().EnableCopyOnRead(d.child.Node())
	}
	return nil
}

// Close stops the copying into the child.
func (d *COR) Close() error {
	if d.disable != nil {
		d.disable()
	}
	return nil
}

// Read reads through the child, copying what comes from below it.
func (d *COR) Read(ctx context.Context, off int64, b []byte) error {
	if d.none {
		return d.child.Read(ctx, off, b)
	}
	return d.child.CopyOnRead(ctx, off, b, d.layers)
}

// ChildPerm passes consistent read, write and resize through and always
// takes write-unchanged for the copies (QEMU's cor_child_perm).
func (d *COR) ChildPerm(_ *blockdev.Child, _ blockdev.Role, perm, shared blockdev.Perm) (blockdev.Perm, blockdev.Perm) {
	const through = blockdev.PermConsistentRead | blockdev.PermWrite | blockdev.PermResize
	return perm&through | blockdev.PermWriteUnchanged, shared&through | blockdev.PermWriteUnchanged
}

// StrongOptions: bottom changes what reads do.
func (d *COR) StrongOptions() []string { return []string{"bottom"} }

// CommitTop sits above the top of a passive commit: the overlay reads the
// chain through it while the job holds the layers, and it takes no
// permission on them, so the job can forbid consistent reads below it.
type CommitTop struct{ passThrough }

// Open attaches the "backing" child.
func (d *CommitTop) Open(ctx context.Context, oc *blockdev.OpenContext) error {
	return d.open(ctx, oc, "backing")
}

// ChildPerm takes nothing and shares everything.
func (d *CommitTop) ChildPerm(*blockdev.Child, blockdev.Role, blockdev.Perm, blockdev.Perm) (blockdev.Perm, blockdev.Perm) {
	return 0, blockdev.PermAll
}

// ExactFilename is the child's file name.
func (d *CommitTop) ExactFilename() string { return d.child.Node().Filename() }

// MirrorTop sits above the source of an active commit: guest writes pass
// through it to the source (where the job's write observer sees them).
// For a commit it neither takes nor blocks consistent reads of the
// source, which the job forbids on the layers above the base; once the
// job stops (Stop) it takes nothing at all, so the source can be
// replaced.
type MirrorTop struct {
	passThrough
	stopped atomic.Bool
	commit  atomic.Bool
	active  atomic.Pointer[ActiveWriteFunc]
}

// The kinds of request an ActiveWriteFunc sees.
const (
	ActiveWrite = iota
	ActiveZeroes
	ActiveDiscard
)

// ActiveWriteFunc is told of every write, write-zeroes (kind ActiveZeroes)
// and discard once the source has done it (err is its outcome), before
// the request completes: a write-blocking mirror copies it to its target
// there. data is the written buffer (nil but for writes).
type ActiveWriteFunc = func(ctx context.Context, kind int, off, n int64, data []byte, flags blockdev.ReqFlags, err error)

// SetActiveWrite installs fn (nil removes it).
func (d *MirrorTop) SetActiveWrite(fn ActiveWriteFunc) {
	if fn == nil {
		d.active.Store(nil)
		return
	}
	d.active.Store(&fn)
}

func (d *MirrorTop) after(ctx context.Context, kind int, off, n int64, data []byte, flags blockdev.ReqFlags, err error) error {
	if fn := d.active.Load(); fn != nil && !d.stopped.Load() {
		(*fn)(ctx, kind, off, n, data, flags, err)
	}
	return err
}

// Write writes to the source, then tells the active-write hook.
func (d *MirrorTop) Write(ctx context.Context, off int64, b []byte, flags blockdev.ReqFlags) error {
	err := d.child.Write(ctx, off, b, flags)
	return d.after(ctx, ActiveWrite, off, int64(len(b)), b, flags, err)
}

// WriteZeroes zeroes on the source, then tells the active-write hook.
func (d *MirrorTop) WriteZeroes(ctx context.Context, off, n int64, flags blockdev.ReqFlags) error {
	err := d.child.WriteZeroes(ctx, off, n, flags)
	return d.after(ctx, ActiveZeroes, off, n, nil, flags, err)
}

// Discard discards on the source, then tells the active-write hook.
func (d *MirrorTop) Discard(ctx context.Context, off, n int64) error {
	err := d.child.Discard(ctx, off, n)
	return d.after(ctx, ActiveDiscard, off, n, nil, 0, err)
}

// Open attaches the "backing" child.
func (d *MirrorTop) Open(ctx context.Context, oc *blockdev.OpenContext) error {
	return d.open(ctx, oc, "backing")
}

// SetCommit tells the filter it serves an active commit.
func (d *MirrorTop) SetCommit() { d.commit.Store(true) }

// Stop tells the filter its job forwards nothing any more; the caller
// refreshes the node's permissions.
func (d *MirrorTop) Stop() { d.stopped.Store(true) }

// ChildPerm passes the users' permissions through (without consistent
// read, and sharing write, for a commit), or nothing once stopped.
func (d *MirrorTop) ChildPerm(_ *blockdev.Child, role blockdev.Role, perm, shared blockdev.Perm) (blockdev.Perm, blockdev.Perm) {
	if d.stopped.Load() {
		return 0, blockdev.PermAll
	}
	p, s := blockdev.DefaultChildPerm(role, true, perm, shared)
	if d.commit.Load() {
		p &^= blockdev.PermConsistentRead
		s |= blockdev.PermWrite
	}
	return p, s
}

// ExactFilename is the child's file name.
func (d *MirrorTop) ExactFilename() string { return d.child.Node().Filename() }
