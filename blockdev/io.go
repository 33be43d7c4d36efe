package blockdev

import "context"

// The I/O entry points. Every request to a node passes one of them: a
// parent's request through its Child, an export's through its root Child.
// Each one brackets the driver call with begin and end, which is where the
// generic request processing lives: today bounds, read-only and permission
// checks and the drain guard; later alignment (read-modify-write), tracked
// requests (serialisation of overlapping writes), before-write hooks (dirty
// bitmaps, copy-before-write) and accounting, all in begin/end.

type opKind uint8

const (
	opRead opKind = iota
	opWrite
	opWriteZeroes
	opDiscard
	opFlush
	opBlockStatus
	opTruncate
)

// request is one request in flight on a node.
type request struct {
	node   *Node
	from   *Child
	op     opKind
	offset int64
	bytes  int64
	flags  ReqFlags
}

// begin admits a request: it takes the node's drain guard and checks the
// request. On error nothing is held.
func (n *Node) begin(r *request) error {
	if r.from == nil || r.from.node != n {
		// A request must come through an edge that points at this node.
		return ErrPermission
	}
	n.io.RLock()
	if err := n.check(r); err != nil {
		n.io.RUnlock()
		return err
	}
	return nil
}

func (n *Node) check(r *request) error {
	if n.closed {
		return ErrClosed
	}
	switch r.op {
	case opFlush, opTruncate:
	default:
		if r.offset < 0 || r.bytes < 0 || r.offset > n.Length()-r.bytes {
			return ErrOutOfRange
		}
	}
	var need Perm
	switch r.op {
	case opWrite, opWriteZeroes:
		need = PermWrite
		if r.flags&ReqWriteUnchanged != 0 {
			need = PermWriteUnchanged
		}
	case opDiscard:
		need = PermWrite
	case opTruncate:
		need = PermResize
	}
	if need == 0 {
		return nil
	}
	if n.ReadOnly() {
		return ErrReadOnly
	}
	held := r.from.Perm()
	if need == PermWriteUnchanged && held&PermWrite != 0 {
		return nil
	}
	if held&need == 0 {
		return ErrPermission
	}
	return nil
}

// end finishes a request admitted by begin.
func (n *Node) end(r *request) { n.io.RUnlock() }

// Read reads len(p) bytes at off into p on behalf of the parent edge from.
func (n *Node) Read(ctx context.Context, from *Child, off int64, p []byte) error {
	r := request{node: n, from: from, op: opRead, offset: off, bytes: int64(len(p))}
	if err := n.begin(&r); err != nil {
		return err
	}
	defer n.end(&r)
	if len(p) == 0 {
		return nil
	}
	return n.drv.Read(ctx, off, p)
}

// Write writes p at off on behalf of from. ReqFUA is passed to drivers that
// honour it and emulated with a flush for the others.
func (n *Node) Write(ctx context.Context, from *Child, off int64, p []byte, flags ReqFlags) error {
	r := request{node: n, from: from, op: opWrite, offset: off, bytes: int64(len(p)), flags: flags}
	if err := n.begin(&r); err != nil {
		return err
	}
	defer n.end(&r)
	if len(p) == 0 {
		return nil
	}
	if err := n.drv.Write(ctx, off, p, flags&n.writeFlags); err != nil {
		return err
	}
	return n.emulateFUA(ctx, flags)
}

func (n *Node) emulateFUA(ctx context.Context, flags ReqFlags) error {
	if flags&ReqFUA == 0 || n.writeFlags&ReqFUA != 0 || n.noFlush {
		return nil
	}
	return n.drv.Flush(ctx)
}

// WriteZeroes makes [off, off+length) read as zeroes on behalf of from.
func (n *Node) WriteZeroes(ctx context.Context, from *Child, off, length int64, flags ReqFlags) error {
	r := request{node: n, from: from, op: opWriteZeroes, offset: off, bytes: length, flags: flags}
	if err := n.begin(&r); err != nil {
		return err
	}
	defer n.end(&r)
	if length == 0 {
		return nil
	}
	if n.discard != "unmap" {
		// QEMU drops MAY_UNMAP unless the node was opened with discard=unmap.
		flags &^= ReqMayUnmap
	}
	if err := n.drv.WriteZeroes(ctx, off, length, flags&^ReqFUA|flags&n.writeFlags); err != nil {
		return err
	}
	return n.emulateFUA(ctx, flags)
}

// Discard discards [off, off+length) on behalf of from. Nodes opened with
// discard=ignore (the default) ignore it, as QEMU does.
func (n *Node) Discard(ctx context.Context, from *Child, off, length int64) error {
	r := request{node: n, from: from, op: opDiscard, offset: off, bytes: length}
	if err := n.begin(&r); err != nil {
		return err
	}
	defer n.end(&r)
	if length == 0 || n.discard != "unmap" {
		return nil
	}
	return n.drv.Discard(ctx, off, length)
}

// Flush makes completed writes stable (nothing with cache.no-flush).
func (n *Node) Flush(ctx context.Context, from *Child) error {
	r := request{node: n, from: from, op: opFlush}
	if err := n.begin(&r); err != nil {
		return err
	}
	defer n.end(&r)
	if n.noFlush {
		return nil
	}
	return n.drv.Flush(ctx)
}

// BlockStatus reports the status of a prefix of [off, off+length).
// Protocol nodes report everything they have as allocated.
func (n *Node) BlockStatus(ctx context.Context, from *Child, off, length int64) (BlockStatus, error) {
	r := request{node: n, from: from, op: opBlockStatus, offset: off, bytes: length}
	if err := n.begin(&r); err != nil {
		return BlockStatus{}, err
	}
	defer n.end(&r)
	if length == 0 {
		return BlockStatus{}, nil
	}
	st, err := n.drv.BlockStatus(ctx, off, length)
	if err != nil {
		return BlockStatus{}, err
	}
	if st.Length <= 0 || st.Length > length {
		st.Length = length
	}
	if _, ok := n.drv.(ProtocolDriver); ok {
		st.Flags |= StatusAllocated
	}
	return st, nil
}

// Truncate resizes the node on behalf of from, which must hold PermResize.
func (n *Node) Truncate(ctx context.Context, from *Child, size int64, exact bool) error {
	t, ok := n.drv.(Truncater)
	if !ok {
		return ErrNotSupported
	}
	r := request{node: n, from: from, op: opTruncate, bytes: size}
	if err := n.begin(&r); err != nil {
		return err
	}
	defer n.end(&r)
	if size < 0 {
		return ErrOutOfRange
	}
	if err := t.Truncate(ctx, size, exact); err != nil {
		return err
	}
	return n.refreshLength(ctx)
}
