package blockdev

import (
	"context"
	"errors"
	"fmt"

	"github.com/qbmond/qbmond/blockdev/internal/iopath"
)

// The I/O entry points. Every request to a node passes one of them: a
// parent's request through its Child, an export's through its root Child.
// Each one brackets the driver call with begin and end, which is where the
// generic request processing lives. The node-free mechanisms (the
// tracker, the alignment arithmetic, the counters) are package
// blockdev/internal/iopath's; the entry points, which need the node, are
// here:
//
//   - begin: the drain guard (a node never closes under a request), bounds,
//     read-only and permission checks; refused requests count as invalid.
//   - alignment: on a node whose driver wants aligned requests (Aligner,
//     O_DIRECT files), reads are widened to whole blocks through bounce
//     buffers and partial blocks of writes and write-zeroes are written by
//     read-modify-write, so the driver only ever sees aligned offsets and
//     lengths (buffers are not aligned in memory).
//   - tracked requests: on such a node writes, write-zeroes and discards
//     are tracked; read-modify-write requests are serialising (see
//     iopath.Tracker), so concurrent unaligned writes never lose data.
//   - detect-zeroes: an all-zero write becomes write-zeroes (may-unmap with
//     detect-zeroes=unmap).
//   - end: accounting (query-blockstats, iopath.Counters) and the drain
//     guard.

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
	ctx    context.Context // for write observers; may be nil for other ops
	op     opKind
	offset int64
	bytes  int64
	flags  ReqFlags
	start  int64 // iopath.Now() at begin, for counted requests
	// abandoned: the request did nothing after all (ReadFile found no
	// file range) and is not counted.
	abandoned bool
	// observed: the write observers that saw the request enter.
	observed []*observerEntry
}

// errMoved tells an entry point that its request's edge now points at
// another node, which serves the request instead.
var errMoved = errors.New("edge moved to another node")

// begin admits a request: it takes the node's drain guard and checks the
// request. On error nothing is held.
func (n *Node) begin(r *request) error {
	if r.from == nil {
		// A request must come through an edge.
		return ErrPermission
	}
	if r.from.node.Load() != n {
		// The edge points elsewhere (it moved, or the caller kept
		// an old node): the node it points at serves the request.
		return errMoved
	}
	switch r.op {
	case opWrite, opWriteZeroes, opDiscard:
		if err := n.enterObservers(r.ctx, r); err != nil {
			return err
		}
	}
	n.io.RLock()
	if r.from.node.Load() != n {
		// The edge moved to another node (ReplaceNode, SetBacking)
		// while the request waited for the drain to end.
		n.leaveObservers(r)
		n.io.RUnlock()
		return errMoved
	}
	if err := n.check(r); err != nil {
		n.leaveObservers(r)
		n.io.RUnlock()
		if r.counted() {
			n.stats.Refused(acctOf(r.op))
		}
		return err
	}
	if r.counted() {
		r.start = iopath.Now()
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

// end finishes a request admitted by begin, counting its outcome.
func (n *Node) end(r *request, err error) {
	if !r.abandoned && r.counted() {
		n.stats.Done(acctOf(r.op), r.bytes, r.start, err)
	}
	switch r.op {
	case opWrite, opWriteZeroes, opTruncate:
		n.writeGen.Add(1)
	}
	n.leaveObservers(r)
	n.io.RUnlock()
}

// span splits [off, off+length) at the node's alignment (see iopath.Span).
func (n *Node) span(off, length int64) iopath.Span { return iopath.Split(n.align, off, length) }

// Read reads len(p) bytes at off into p on behalf of the parent edge from.
func (n *Node) Read(ctx context.Context, from *Child, off int64, p []byte) (err error) {
	r := request{node: n, from: from, op: opRead, offset: off, bytes: int64(len(p))}
	if err := n.begin(&r); err != nil {
		if err == errMoved {
			return from.node.Load().Read(ctx, from, off, p)
		}
		return err
	}
	defer func() { n.end(&r, err) }()
	if len(p) == 0 {
		return nil
	}
	if n.align <= 1 {
		return n.drvRead(ctx, off, p)
	}
	return n.readAligned(ctx, n.span(off, int64(len(p))), p)
}

// chunk is the largest piece of a request the node passes to its driver
// at once: its transfer limit rounded down to its alignment (0: no limit).
func (n *Node) chunk() int64 {
	m := n.maxTransfer.Load()
	if m <= 0 {
		return 0
	}
	a := max(n.align, 1)
	return max(m/a*a, a)
}

// drvRead reads through the driver in pieces no larger than the node's
// transfer limit, one after the other, stopping at the first error (QEMU
// fragments a request that way in bdrv_aligned_preadv).
func (n *Node) drvRead(ctx context.Context, off int64, p []byte) error {
	if m := n.chunk(); m > 0 {
		for int64(len(p)) > m {
			if err := n.drv.Read(ctx, off, p[:m]); err != nil {
				return err
			}
			off, p = off+m, p[m:]
		}
	}
	return n.drv.Read(ctx, off, p)
}

// drvWrite is drvRead for writes (QEMU's bdrv_aligned_pwritev). The flags
// go with every piece: they hold only what the driver honours itself, and
// an emulated FUA is one flush after the last piece.
func (n *Node) drvWrite(ctx context.Context, off int64, p []byte, flags ReqFlags) error {
	if m := n.chunk(); m > 0 {
		for int64(len(p)) > m {
			if err := n.drv.Write(ctx, off, p[:m], flags); err != nil {
				return err
			}
			off, p = off+m, p[m:]
		}
	}
	return n.drv.Write(ctx, off, p, flags)
}

// FileSink receives the data of a read as a range of an open file
// descriptor: n bytes at fileOff. The descriptor is valid only during the
// call; bytes past the file's end read as zeroes.
type FileSink func(fd int, fileOff, n int64) error

// ReadFile reads [off, off+length) by handing sink the file range that
// holds those bytes, when the node (and the nodes below it) map them to a
// file unchanged. It reports false, having done and counted nothing, when
// they do not; the caller then uses Read. The request is admitted and
// counted like a Read, and the node cannot close while sink runs.
func (n *Node) ReadFile(ctx context.Context, from *Child, off, length int64, sink FileSink) (ok bool, err error) {
	r := request{node: n, from: from, op: opRead, offset: off, bytes: length}
	if err := n.begin(&r); err != nil {
		if err == errMoved {
			return from.node.Load().ReadFile(ctx, from, off, length, sink)
		}
		return true, err
	}
	defer func() { n.end(&r, err) }()
	fd, foff, mapped := n.fileRange(off, length)
	if !mapped {
		r.abandoned = true
		return false, nil
	}
	if length == 0 {
		return true, nil
	}
	return true, sink(fd, foff, length)
}

// fileRange maps a range of the node to a file range (see FileMapper).
// Nodes that align requests are not mapped: their reads go through bounce
// blocks.
func (n *Node) fileRange(off, length int64) (int, int64, bool) {
	m, ok := n.drv.(FileMapper)
	if !ok || n.align > 1 || n.chunk() > 0 {
		return 0, 0, false
	}
	return m.FileRange(off, length)
}

// readAligned reads through bounce blocks for the partial head and tail
// and straight into p for the aligned middle.
func (n *Node) readAligned(ctx context.Context, s iopath.Span, p []byte) error {
	if s.Aligned() {
		return n.drvRead(ctx, s.Off, p)
	}
	var block []byte
	if s.HasHead {
		block = make([]byte, s.A)
		if err := n.drv.Read(ctx, s.HeadBlock, block); err != nil {
			return err
		}
		copy(p, block[s.Off-s.HeadBlock:s.HeadEnd()-s.HeadBlock])
	}
	if s.Lo < s.Hi {
		if err := n.drvRead(ctx, s.Lo, p[s.Lo-s.Off:s.Hi-s.Off]); err != nil {
			return err
		}
	}
	if s.HasTail {
		if block == nil {
			block = make([]byte, s.A)
		}
		if err := n.drv.Read(ctx, s.Hi, block); err != nil {
			return err
		}
		copy(p[s.Hi-s.Off:], block[:s.End-s.Hi])
	}
	return nil
}

// Write writes p at off on behalf of from. ReqFUA is passed to drivers that
// honour it and emulated with a flush for the others.
func (n *Node) Write(ctx context.Context, from *Child, off int64, p []byte, flags ReqFlags) (err error) {
	r := request{node: n, from: from, op: opWrite, offset: off, bytes: int64(len(p)), flags: flags, ctx: ctx}
	if err := n.begin(&r); err != nil {
		if err == errMoved {
			return from.node.Load().Write(ctx, from, off, p, flags)
		}
		return err
	}
	defer func() { n.end(&r, err) }()
	if len(p) == 0 {
		return nil
	}
	// Marked once the request is over, failed or not (a failed write may
	// have changed part of the range). A write that leaves the content
	// unchanged (block-stream pulling data up, QEMU's copy-on-read) is
	// not a change bitmaps record.
	if flags&ReqWriteUnchanged == 0 {
		defer n.markDirty(off, int64(len(p)))
	}
	if n.detectZeroes != "off" && flags&ReqWriteUnchanged == 0 && isZero(p) {
		zf := flags & ReqFUA
		if n.detectZeroes == "unmap" {
			zf |= ReqMayUnmap
		}
		return n.writeZeroes(ctx, off, int64(len(p)), zf)
	}
	s := n.span(off, int64(len(p)))
	start, end := s.Outer()
	if n.tracking() {
		defer n.trk.Leave(n.trk.Enter(start, end, !s.Aligned()))
	}
	wf := flags & n.writeFlags
	if s.Aligned() {
		n.debugEvent(DbgPwritev)
		err = n.drvWrite(ctx, off, p, wf)
		n.debugEvent(DbgPwritevDone)
	} else {
		// As in QEMU, the padded request is one write (pwritev ...
		// pwritev_done) after the partial blocks were read.
		var head, tail []byte
		if head, tail, err = n.padRead(ctx, s); err == nil {
			n.debugEvent(DbgPwritev)
			err = n.writePads(ctx, s, wf, head, tail, func(dst []byte, at int64) { copy(dst, p[at-off:]) })
			if err == nil && s.Lo < s.Hi {
				err = n.drvWrite(ctx, s.Lo, p[s.Lo-off:s.Hi-off], wf)
			}
			n.debugEvent(DbgPwritevDone)
		}
	}
	n.stats.Wrote(end)
	if err != nil {
		return err
	}
	return n.emulateFUA(ctx, flags)
}

// padRead reads the blocks holding the partial head and tail of s (nil
// for a side that is aligned), raising QEMU's pwritev_rmw_* events around
// the reads. The caller holds a serialising tracked request over them.
func (n *Node) padRead(ctx context.Context, s iopath.Span) (head, tail []byte, err error) {
	headPart, tailPart := s.Off%s.A != 0, s.End%s.A != 0
	if s.HasHead {
		// The head block; when the request lies inside one block it is
		// the tail block too, read once.
		if headPart {
			n.debugEvent(DbgPwritevRMWHead)
		}
		single := !s.HasTail && s.HeadEnd() == s.End
		if single && tailPart {
			n.debugEvent(DbgPwritevRMWTail)
		}
		head = make([]byte, s.A)
		if err := n.drv.Read(ctx, s.HeadBlock, head); err != nil {
			return nil, nil, err
		}
		if headPart {
			n.debugEvent(DbgPwritevRMWAfterHead)
		}
		if single && tailPart {
			n.debugEvent(DbgPwritevRMWAfterTail)
		}
	}
	if s.HasTail {
		n.debugEvent(DbgPwritevRMWTail)
		tail = make([]byte, s.A)
		if err := n.drv.Read(ctx, s.Hi, tail); err != nil {
			return nil, nil, err
		}
		n.debugEvent(DbgPwritevRMWAfterTail)
	}
	return head, tail, nil
}

// writePads writes back the head and tail blocks padRead read, with fill
// putting the request's part in (dst is the part of the block the
// request covers, at its offset at).
func (n *Node) writePads(ctx context.Context, s iopath.Span, flags ReqFlags, head, tail []byte, fill func(dst []byte, at int64)) error {
	if head != nil {
		fill(head[s.Off-s.HeadBlock:s.HeadEnd()-s.HeadBlock], s.Off)
		if err := n.drv.Write(ctx, s.HeadBlock, head, flags); err != nil {
			return err
		}
	}
	if tail != nil {
		fill(tail[:s.End-s.Hi], s.Hi)
		if err := n.drv.Write(ctx, s.Hi, tail, flags); err != nil {
			return err
		}
	}
	return nil
}

// isZero tells whether p holds only zero bytes.
func isZero(p []byte) bool {
	for len(p) >= 8 {
		if p[0]|p[1]|p[2]|p[3]|p[4]|p[5]|p[6]|p[7] != 0 {
			return false
		}
		p = p[8:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

func (n *Node) emulateFUA(ctx context.Context, flags ReqFlags) error {
	if flags&ReqFUA == 0 || n.writeFlags&ReqFUA != 0 || n.noFlush {
		return nil
	}
	// A whole flush of the node, as QEMU's emulation does (the write is
	// not yet counted in writeGen, as in QEMU).
	return n.flush(ctx)
}

// WriteZeroes makes [off, off+length) read as zeroes on behalf of from.
func (n *Node) WriteZeroes(ctx context.Context, from *Child, off, length int64, flags ReqFlags) (err error) {
	r := request{node: n, from: from, op: opWriteZeroes, offset: off, bytes: length, flags: flags, ctx: ctx}
	if err := n.begin(&r); err != nil {
		if err == errMoved {
			return from.node.Load().WriteZeroes(ctx, from, off, length, flags)
		}
		return err
	}
	defer func() { n.end(&r, err) }()
	if length == 0 {
		return nil
	}
	defer n.markDirty(off, length)
	if from != nil && from.parent != nil && n.discard != "unmap" {
		// QEMU drops MAY_UNMAP from a parent node's request (a format
		// on its file, copy-before-write on its target) unless this
		// node was opened with discard=unmap; a request from a root
		// (an export, a mirror's target) keeps it, as through a
		// BlockBackend.
		flags &^= ReqMayUnmap
	}
	return n.writeZeroes(ctx, off, length, flags)
}

// writeZeroes is WriteZeroes after admission (also used by detect-zeroes).
func (n *Node) writeZeroes(ctx context.Context, off, length int64, flags ReqFlags) error {
	s := n.span(off, length)
	if !s.Aligned() && flags&ReqNoFallback != 0 {
		// The partial blocks could only be zeroed by writing buffers.
		return ErrNotSupported
	}
	start, end := s.Outer()
	if n.tracking() {
		defer n.trk.Leave(n.trk.Enter(start, end, !s.Aligned()))
	}
	zf := flags&^ReqFUA | flags&n.writeFlags
	var err error
	if s.Aligned() {
		n.debugEvent(DbgPwritevZero)
		err = n.drv.WriteZeroes(ctx, off, length, zf)
		n.debugEvent(DbgPwritevDone)
	} else {
		// As in QEMU: the partial blocks are read, then written as
		// ordinary writes around the zeroed middle.
		var head, tail []byte
		if head, tail, err = n.padRead(ctx, s); err == nil {
			wf := flags & n.writeFlags
			zero := func(dst []byte, _ int64) { clear(dst) }
			if head != nil {
				n.debugEvent(DbgPwritev)
				err = n.writePads(ctx, s, wf, head, nil, zero)
				n.debugEvent(DbgPwritevDone)
			}
			if err == nil && s.Lo < s.Hi {
				n.debugEvent(DbgPwritevZero)
				err = n.drv.WriteZeroes(ctx, s.Lo, s.Hi-s.Lo, zf)
				n.debugEvent(DbgPwritevDone)
			}
			if err == nil && tail != nil {
				n.debugEvent(DbgPwritev)
				err = n.writePads(ctx, s, wf, nil, tail, zero)
				n.debugEvent(DbgPwritevDone)
			}
		}
	}
	n.stats.Wrote(end)
	if err != nil {
		return err
	}
	return n.emulateFUA(ctx, flags)
}

// Discard discards [off, off+length) on behalf of from. Nodes opened with
// discard=ignore (the default) ignore it, as QEMU does. Discards are not
// widened to the alignment: they are advisory and passed on as asked.
func (n *Node) Discard(ctx context.Context, from *Child, off, length int64) (err error) {
	r := request{node: n, from: from, op: opDiscard, offset: off, bytes: length, ctx: ctx}
	if err := n.begin(&r); err != nil {
		if err == errMoved {
			return from.node.Load().Discard(ctx, from, off, length)
		}
		return err
	}
	defer func() { n.end(&r, err) }()
	if n.ejected() {
		return errEjected // before discard=ignore, as QEMU checks
	}
	if length == 0 || n.discard != "unmap" {
		return nil
	}
	defer n.markDirty(off, length)
	defer n.writeGen.Add(1)
	if n.tracking() {
		s := n.span(off, length)
		start, end := s.Outer()
		defer n.trk.Leave(n.trk.Enter(start, end, false))
	}
	err = n.drv.Discard(ctx, off, length)
	n.stats.Discarded(length, err)
	return err
}

// Flush makes completed writes stable (nothing with cache.no-flush).
func (n *Node) Flush(ctx context.Context, from *Child) (err error) {
	r := request{node: n, from: from, op: opFlush}
	if err := n.begin(&r); err != nil {
		if err == errMoved {
			return from.node.Load().Flush(ctx, from)
		}
		return err
	}
	defer func() { n.end(&r, err) }()
	return n.flush(ctx)
}

// flush is Flush after admission (also used to emulate FUA).
func (n *Node) flush(ctx context.Context) (err error) {
	// QEMU raises flush_to_os on the primary child of a writable node
	// before it writes back what the driver caches, and flush_to_disk
	// before the flush to stable storage, which it skips with
	// cache.no-flush and when nothing was written since the last flush.
	gen := n.writeGen.Load()
	if !n.ReadOnly() {
		if c := n.primaryChild(); c != nil && c.node.Load().dbg != nil {
			c.DebugEvent(DbgFlushToOS)
			if !n.noFlush && n.flushedGen.Load() != gen {
				c.DebugEvent(DbgFlushToDisk)
			}
		}
	}
	if n.noFlush {
		return nil
	}
	if err = n.drv.Flush(ctx); err == nil {
		n.flushedGen.Store(gen)
	}
	return err
}

// BlockStatus reports the status of a prefix of [off, off+length).
// Protocol nodes report everything they have as allocated.
func (n *Node) BlockStatus(ctx context.Context, from *Child, off, length int64) (st BlockStatus, err error) {
	r := request{node: n, from: from, op: opBlockStatus, offset: off, bytes: length}
	if err := n.begin(&r); err != nil {
		if err == errMoved {
			return from.node.Load().BlockStatus(ctx, from, off, length)
		}
		return BlockStatus{}, err
	}
	defer func() { n.end(&r, err) }()
	if length == 0 {
		return BlockStatus{}, nil
	}
	st, err = n.drv.BlockStatus(ctx, off, length)
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

// BlockStatusAbove reports the status of a prefix of [off, off+length)
// through the backing chain, as an export shows it: where n has not
// allocated the range itself, the status of its backing node counts, and
// where no layer has it (or past the end of a shorter backing node) the
// range reads as zeroes. depth is 1 when n allocated the prefix, 2 when
// its backing node did, and so on, 0 when no layer did
// (qemu:allocation-depth); past the end of a shorter backing node the
// zeroes count as that node's, as in QEMU.
func (n *Node) BlockStatusAbove(ctx context.Context, from *Child, off, length int64) (BlockStatus, int, error) {
	st, err := n.BlockStatus(ctx, from, off, length)
	if err != nil || length == 0 || st.Flags&StatusAllocated != 0 {
		return st, 1, err
	}
	b := n.backingForIO()
	if b == nil {
		return BlockStatus{Flags: StatusZero, Length: st.Length}, 0, nil
	}
	bl := b.node.Load().Length()
	if off >= bl {
		// Past the end of a shorter backing node: the zeroes read there
		// count as allocated in that node, as QEMU reports the depth.
		return BlockStatus{Flags: StatusZero, Length: st.Length}, 2, nil
	}
	bst, depth, err := b.node.Load().BlockStatusAbove(ctx, b, off, min(st.Length, bl-off))
	if err != nil {
		return BlockStatus{}, 0, err
	}
	bst.Flags &^= StatusAllocated
	if depth > 0 {
		depth++
	}
	return bst, depth, nil
}

// backingForIO returns the edge n's chain continues with (a filter's
// filtered child, else the backing child) for a request path. Edges of an
// open node change only in graph operations that drain the node first, so
// reading them under the node's I/O guard is safe.
func (n *Node) backingForIO() *Child {
	n.io.RLock()
	defer n.io.RUnlock()
	return n.filterOrCOW()
}

// Truncate resizes the node on behalf of from, which must hold PermResize.
func (n *Node) Truncate(ctx context.Context, from *Child, size int64, exact bool) (err error) {
	t, ok := n.drv.(Truncater)
	if !ok {
		return ErrNotSupported
	}
	r := request{node: n, from: from, op: opTruncate, bytes: size}
	if err := n.begin(&r); err != nil {
		if err == errMoved {
			return from.node.Load().Truncate(ctx, from, size, exact)
		}
		return err
	}
	defer func() { n.end(&r, err) }()
	if size < 0 {
		return ErrOutOfRange
	}
	if size > MaxLength {
		return fmt.Errorf("offset(%d) exceeds maximum(%d)", size, int64(MaxLength))
	}
	if err := t.Truncate(ctx, size, exact); err != nil {
		return err
	}
	err = n.refreshLength(ctx)
	n.resizeBitmaps()
	return err
}
