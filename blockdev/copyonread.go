package blockdev

import "context"

// Copy-on-read: a read that also writes into the node the data it got
// from the node's backing chain, so that later reads find it in the node
// itself (QEMU's BDRV_REQ_COPY_ON_READ, which the copy-on-read filter and
// block-stream use). The write leaves the content unchanged, so it needs
// only PermWriteUnchanged and dirty bitmaps do not count it. Guest writes
// must never be overwritten by the old data a copy-on-read fetched: while
// copy-on-read is enabled on a node every modifying request there is
// tracked, and a copy-on-read is a serialising request over its range, so
// it waits for the overlapping writes before it and the overlapping
// writes after it wait for it.

// tracking tells whether modifying requests must enter the tracker.
func (n *Node) tracking() bool { return n.align > 1 || n.corUsers.Load() > 0 }

// EnableCopyOnRead lets copy-on-read requests into n until the returned
// function is called (once). n is drained meanwhile, so that no write in
// flight escapes the tracking. Caller holds the graph lock, also when it
// calls the returned function.
func (lk *Locked) EnableCopyOnRead(n *Node) (disable func()) {
	undrain := lk.Drain(n)
	n.corUsers.Add(1)
	undrain()
	done := false
	return func() {
		if !done {
			done = true
			n.corUsers.Add(-1)
		}
	}
}

// CopyOnRead reads len(p) bytes at off from c's node, like Read, and
// writes into the node the parts that come from the first layers nodes of
// its chain below it (0: the whole chain). c must hold PermWriteUnchanged
// (or PermWrite) and copy-on-read must be enabled on the node
// (EnableCopyOnRead); otherwise it is a plain read. Parts the node cannot
// write without read-modify-write (partial blocks of an O_DIRECT node)
// are only read.
func (c *Child) CopyOnRead(ctx context.Context, off int64, p []byte, layers int) error {
	return c.node.Load().copyOnRead(ctx, c, off, p, layers)
}

func (n *Node) copyOnRead(ctx context.Context, from *Child, off int64, p []byte, layers int) (err error) {
	if n.corUsers.Load() == 0 || from.Perm()&(PermWrite|PermWriteUnchanged) == 0 || n.ReadOnly() {
		return n.Read(ctx, from, off, p)
	}
	r := request{node: n, from: from, op: opRead, offset: off, bytes: int64(len(p))}
	if err := n.begin(&r); err != nil {
		if err == errMoved {
			return from.node.Load().copyOnRead(ctx, from, off, p, layers)
		}
		return err
	}
	defer func() { n.end(&r, err) }()
	if len(p) == 0 {
		return nil
	}
	s := n.span(off, int64(len(p)))
	start, end := s.Outer()
	defer n.trk.Leave(n.trk.Enter(start, end, true))
	for pos := off; pos < off+int64(len(p)); {
		seg := p[pos-off:]
		copyIt := false
		// The node's own status is its driver's (the node is admitted
		// already: its entry points must not be entered again).
		st, err := n.drv.BlockStatus(ctx, pos, int64(len(seg)))
		if err != nil {
			return err
		}
		if st.Length <= 0 || st.Length > int64(len(seg)) {
			st.Length = int64(len(seg))
		}
		if _, proto := n.drv.(ProtocolDriver); !proto && st.Flags&StatusAllocated == 0 {
			if below := n.filterOrCOW(); below != nil && pos < below.Length() {
				bn := below.node.Load()
				bst, depth, err := bn.BlockStatusAbove(ctx, below, pos, min(st.Length, bn.Length()-pos))
				if err != nil {
					return err
				}
				st.Length = bst.Length
				copyIt = depth >= 1 && (layers == 0 || depth <= layers)
			}
		}
		seg = seg[:st.Length]
		if n.align > 1 {
			if err := n.readAligned(ctx, n.span(pos, st.Length), seg); err != nil {
				return err
			}
			copyIt = copyIt && n.span(pos, st.Length).Aligned()
		} else if err := n.drvRead(ctx, pos, seg); err != nil {
			return err
		}
		if copyIt {
			n.debugEvent(DbgCORWrite)
			// Zeroes go in as write-zeroes (without may-unmap), as
			// QEMU's copy-on-read does: a qcow2 v3 node gets zero
			// clusters rather than allocated zero data.
			var err error
			if isZero(seg) {
				err = n.drv.WriteZeroes(ctx, pos, st.Length, 0)
			}
			if !isZero(seg) || err == ErrNotSupported {
				err = n.drvWrite(ctx, pos, seg, ReqWriteUnchanged&n.writeFlags)
			}
			if err != nil {
				return err
			}
			n.stats.Wrote(pos + st.Length)
		}
		pos += st.Length
	}
	return nil
}
