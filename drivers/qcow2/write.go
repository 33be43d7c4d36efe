package qcow2

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"syscall"

	"github.com/qbmond/qbmond/blockdev"
)

// maxRunBytes bounds the buffer of one allocating write.
const maxRunBytes = 4 << 20

// Write writes guest data. Writes that only touch clusters allocated here
// with refcount 1 run under the shared lock; the others allocate under
// the exclusive one.
func (d *Driver) Write(ctx context.Context, off int64, p []byte, flags blockdev.ReqFlags) error {
	if err := d.beforeChange(ctx); err != nil {
		return err
	}
	if flags&blockdev.ReqCompressed != 0 {
		return d.writeCompressed(ctx, off, p)
	}
	d.mu.RLock()
	done, err := d.writeInPlace(ctx, off, p)
	d.mu.RUnlock()
	if done || err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitFlights(off>>d.cb, (off+int64(len(p))+d.cs-1)>>d.cb)
	return d.writeLocked(ctx, off, p)
}

// writeInPlace writes p if every cluster it touches is a normal cluster
// with the COPIED flag; done is false (and nothing written) otherwise.
func (d *Driver) writeInPlace(ctx context.Context, off int64, p []byte) (bool, error) {
	type run struct{ host, n int64 }
	var runs []run
	for o, end := off, off+int64(len(p)); o < end; {
		vc := o >> d.cb
		e, err := d.entry(ctx, vc)
		if err != nil {
			return false, err
		}
		k, host, err := d.classify(ctx, vc, e)
		if err != nil {
			return false, err
		}
		if k != kNormal || e&flagCopied == 0 {
			return false, nil
		}
		in := o & (d.cs - 1)
		n := min(end-o, d.cs-in)
		if l := len(runs); l > 0 && runs[l-1].host+runs[l-1].n == host+in {
			runs[l-1].n += n
		} else {
			runs = append(runs, run{host + in, n})
		}
		o += n
	}
	for _, r := range runs {
		if err := d.preWrite(ctx, 0, r.host, r.n); err != nil {
			return true, err
		}
		d.file.DebugEvent("write_aio") // guest data: blkdebug's write_aio
		if err := d.file.Write(ctx, r.host, p[:r.n], 0); err != nil {
			return true, err
		}
		p = p[r.n:]
	}
	return true, nil
}

// beforeChange readies the image for a request that changes it: the
// auto-clear features cleared after a reopen read-write, and no fatal
// corruption met.
func (d *Driver) beforeChange(ctx context.Context) error {
	if err := d.clearAutoclear(ctx); err != nil {
		return err
	}
	return d.check()
}

// needsAlloc tells whether a write to the cluster with entry e must put
// the data into a new cluster: anything but a normal cluster with the
// COPIED flag. A normal cluster without the flag is copied even when its
// refcount is 1, as QEMU does (the flag is what says the cluster is ours
// alone; qemu-img check repairs a missing one).
func (d *Driver) needsAlloc(ctx context.Context, vc int64, e uint64) (bool, error) {
	k, _, err := d.classify(ctx, vc, e)
	if err != nil {
		return false, err
	}
	return k != kNormal || e&flagCopied == 0, nil
}

// writeTarget makes sure guest cluster vc has an L2 table and tells
// whether a write to it needs new clusters (needsAlloc); e is its entry.
func (d *Driver) writeTarget(ctx context.Context, vc int64) (e uint64, alloc bool, err error) {
	if _, _, err := d.ensureL2(ctx, vc/d.l2n); err != nil {
		return 0, false, err
	}
	if e, err = d.entry(ctx, vc); err != nil {
		return 0, false, err
	}
	if alloc, err = d.needsAlloc(ctx, vc, e); err != nil {
		return 0, false, err
	}
	if !alloc {
		e, _ = d.entry(ctx, vc)
	}
	return e, alloc, nil
}

// writeLocked writes p at off under the exclusive lock, allocating.
func (d *Driver) writeLocked(ctx context.Context, off int64, p []byte) error {
	for len(p) > 0 {
		if err := d.maybeSync(ctx); err != nil {
			return err
		}
		vc := off >> d.cb
		in := off & (d.cs - 1)
		e, alloc, err := d.writeTarget(ctx, vc)
		if err != nil {
			return err
		}
		if !alloc {
			n := min(int64(len(p)), d.cs-in)
			if err := d.preWrite(ctx, 0, int64(e&offsetMask)+in, n); err != nil {
				return err
			}
			d.file.DebugEvent("write_aio") // guest data: blkdebug's write_aio
			if err := d.file.Write(ctx, int64(e&offsetMask)+in, p[:n], 0); err != nil {
				return err
			}
			p, off = p[n:], off+n
			continue
		}
		// A run of clusters that all need new clusters, inside one L2
		// table and the request.
		old, err := d.allocRun(ctx, vc, e, (off+int64(len(p))-1)>>d.cb)
		if err != nil {
			return err
		}
		m := int64(len(old))
		covered := min(int64(len(p)), m*d.cs-in)
		if err := d.allocWrite(ctx, vc, old, in, p[:covered]); err != nil {
			return err
		}
		p, off = p[covered:], off+covered
	}
	return nil
}

// allocWrite writes data at byte in of guest cluster vc into newly
// allocated clusters for the len(old) clusters from vc (whose entries were
// old), filling partial clusters from their previous content, then points
// the L2 entries at them and drops the old clusters.
func (d *Driver) allocWrite(ctx context.Context, vc int64, old []uint64, in int64, data []byte) error {
	m := int64(len(old))
	d.allocFor(olForData, in, int64(len(data)))
	host, err := d.allocClusters(ctx, m)
	if err != nil {
		return err
	}
	whole := in == 0 && int64(len(data)) == m*d.cs
	gapsZero := false
	if !whole {
		if gapsZero, err = d.gapsReadZero(ctx, vc, old, in, int64(len(data))); err != nil {
			return err
		}
	}
	writeEvents := d.cowEvents(whole, gapsZero)
	var buf []byte
	at := host
	zeroed := false
	if gapsZero {
		if zeroed, err = d.zeroClusters(ctx, host, m); err != nil {
			return err
		}
	}
	switch {
	case whole:
		buf = data
	case zeroed:
		// The new clusters were zeroed whole by the file (an fallocate,
		// not a buffer of zeroes): write the data alone. A small write
		// into a thin image would otherwise write a whole cluster.
		buf, at = data, host+in
	default:
		buf = make([]byte, m*d.cs)
		if in > 0 || (m == 1 && int64(len(data)) < d.cs) {
			if err := d.fillBase(ctx, vc, old[0], buf[:d.cs]); err != nil {
				return err
			}
		}
		if m > 1 && in+int64(len(data)) < m*d.cs {
			if err := d.fillBase(ctx, vc+m-1, old[m-1], buf[(m-1)*d.cs:]); err != nil {
				return err
			}
		}
		copy(buf[in:], data)
	}
	writeEvents()
	if err := d.file.Write(ctx, at, buf, 0); err != nil {
		// The clusters go back, as QEMU's qcow2_alloc_cluster_abort
		// frees them (or leak, when even that fails).
		_ = d.addRefcount(ctx, host/d.cs, m, -1, false)
		return err
	}
	return d.linkNew(ctx, vc, host, old)
}

// allocRun is the run of guest clusters from vc (whose entry is e) up to
// last that all need new clusters, kept inside vc's L2 table and one
// allocation: their current entries, at least e's.
func (d *Driver) allocRun(ctx context.Context, vc int64, e uint64, last int64) ([]uint64, error) {
	old := []uint64{e}
	limit := min(last, (vc/d.l2n+1)*d.l2n-1, vc+max(1, min(maxRunBytes/d.cs, d.maxAlloc()))-1)
	for next := vc + 1; next <= limit; next++ {
		e2, err := d.entry(ctx, next)
		if err != nil {
			return nil, err
		}
		if a, err := d.needsAlloc(ctx, next, e2); err != nil {
			return nil, err
		} else if !a {
			break
		}
		old = append(old, e2)
	}
	return old, nil
}

// linkNew points the L2 entries of the len(old) guest clusters from vc at
// the new host clusters from host, which hold their data now, and drops
// the clusters the old entries referenced.
func (d *Driver) linkNew(ctx context.Context, vc, host int64, old []uint64) error {
	tbl, tblOff, err := d.l2Table(ctx, vc/d.l2n)
	if err != nil {
		return err
	}
	entries := make([]uint64, len(old))
	for i := range entries {
		entries[i] = uint64(host+int64(i)*d.cs) | flagCopied
	}
	if err := d.writeEntries(ctx, tbl, tblOff, vc%d.l2n, entries); err != nil {
		return err
	}
	for _, e := range old {
		if err := d.freeEntry(ctx, e, d.passOther); err != nil {
			return err
		}
	}
	return nil
}

// readsZero tells whether a cluster with entry e reads as zeroes: a zero
// cluster, or an unallocated one with no backing node below.
func (d *Driver) readsZero(ctx context.Context, vc int64, e uint64) (bool, error) {
	k, _, err := d.classify(ctx, vc, e)
	return k == kZero || k == kUnalloc && d.backing == nil, err
}

// gapsReadZero tells whether the guest content a partial write of n bytes
// at byte in of cluster vc keeps around its data (head of the first
// cluster, tail of the last of len(old)) reads as zeroes.
func (d *Driver) gapsReadZero(ctx context.Context, vc int64, old []uint64, in, n int64) (bool, error) {
	m := int64(len(old))
	if in > 0 {
		if z, err := d.readsZero(ctx, vc, old[0]); err != nil || !z {
			return false, err
		}
	}
	if in+n < m*d.cs {
		return d.readsZero(ctx, vc+m-1, old[m-1])
	}
	return true, nil
}

// zeroClusters is QEMU's answer to a partial write into m new clusters at
// host whose surroundings read as zeroes: instead of writing buffers of
// zeroes, it asks the file to zero the clusters whole without falling back
// to buffers. It tells whether that was done; false leaves the clusters to
// the caller.
func (d *Driver) zeroClusters(ctx context.Context, host, m int64) (bool, error) {
	switch err := d.file.WriteZeroes(ctx, host, m*d.cs, blockdev.ReqNoFallback); {
	case err == nil:
		return true, nil
	case errors.Is(err, blockdev.ErrNotSupported):
		return false, nil
	default:
		return false, err
	}
}

// fillBase fills dst with the current guest content of cluster vc, whose
// entry is e: the backing file's data, zeroes, or the old cluster's data.
func (d *Driver) fillBase(ctx context.Context, vc int64, e uint64, dst []byte) error {
	k, host, err := d.classify(ctx, vc, e)
	if err != nil {
		return err
	}
	switch k {
	case kUnalloc:
		return d.readBacking(ctx, vc*d.cs, dst)
	case kZero:
		clear(dst)
	case kCompressed:
		data, err := d.decompress(ctx, e)
		if err != nil {
			return err
		}
		copy(dst, data)
	case kNormal:
		d.file.DebugEvent(blockdev.DbgReadAIO)
		return d.readAt(ctx, host, dst)
	}
	return nil
}

// ensureL2 returns the L2 table for L1 index i, allocating an empty one.
func (d *Driver) ensureL2(ctx context.Context, i int64) ([]byte, int64, error) {
	if i >= int64(len(d.l1)) {
		return nil, 0, fmt.Errorf("L1 index %d beyond the L1 table: %w", i, syscall.EIO)
	}
	tbl, off, err := d.l2Table(ctx, i)
	if err != nil {
		return nil, 0, err
	}
	if tbl != nil && d.l1[i]&flagCopied != 0 {
		return tbl, off, nil
	}
	// A new table: empty, or a copy of a table without the COPIED flag
	// (QEMU copies such a table whatever its refcount, and frees the old
	// one once the L1 entry points at the copy).
	old := tbl
	d.allocFor(olForL2, 0, d.cs)
	off, err = d.allocClusters(ctx, 1)
	if err != nil {
		return nil, 0, err
	}
	// Checked once counted, as QEMU writes the refcount before the table.
	if err := d.preWrite(ctx, olActiveL2, off, d.cs); err != nil {
		return nil, 0, err
	}
	tbl = make([]byte, d.cs)
	d.file.DebugEvent(blockdev.DbgL2AllocWrite)
	d.file.DebugEvent(blockdev.DbgL2Update)
	copy(tbl, old)
	if err := d.file.Write(ctx, off, tbl, 0); err != nil {
		return nil, 0, err
	}
	tbl = d.l2c.put(off, tbl)
	oldEntry := d.l1[i]
	if err := d.setL1(ctx, i, uint64(off)|flagCopied); err != nil {
		return nil, 0, err
	}
	if old != nil {
		// The copy and the L1 entry made stable, the old table goes
		// at once, as in QEMU (the next allocation may reuse it).
		if err := d.syncMeta(ctx); err != nil {
			return nil, 0, err
		}
		if err := d.file.Flush(ctx); err != nil {
			return nil, 0, err
		}
		if err := d.freeEntryNow(ctx, oldEntry&offsetMask, d.passOther); err != nil {
			return nil, 0, err
		}
	}
	return tbl, off, nil
}

// setL1 sets L1 entry i; it reaches the file with the next syncMeta.
func (d *Driver) setL1(ctx context.Context, i int64, e uint64) error {
	if int64(d.h.l1Off)+8*(i+1) > d.file.Length() {
		return blockdev.ErrOutOfRange // a corrupt L1 offset fails the request now
	}
	d.file.DebugEvent(blockdev.DbgL1Update)
	if err := d.preWrite(ctx, olActiveL1, int64(d.h.l1Off)+8*i, 8); err != nil {
		return err
	}
	d.olTrackL1(d.l1[i], e)
	d.l1[i] = e
	d.l1Dirty.add(i)
	return nil
}

// setEntry replaces the L2 entry of guest cluster vc (whose L2 table
// exists) and drops what the old entry held.
func (d *Driver) setEntry(ctx context.Context, vc int64, old, e uint64, discard bool) error {
	if old == e {
		return nil
	}
	if err := d.markDirty(ctx); err != nil {
		return err
	}
	tbl, tblOff, err := d.ensureL2(ctx, vc/d.l2n)
	if err != nil {
		return err
	}
	if err := d.writeEntries(ctx, tbl, tblOff, vc%d.l2n, []uint64{e}); err != nil {
		return err
	}
	if old&offsetMask != 0 && (e&offsetMask) != (old&offsetMask) || old&flagCompressed != 0 {
		return d.freeEntry(ctx, old, discard)
	}
	return nil
}

// chainZero tells whether [off, off+n) of the unallocated cluster it lies
// in reads as zeroes through the backing chain by block status (data that
// happens to be zero does not count), as QEMU checks the rest of a cluster
// before it zeroes the whole of it for a partial request.
func (d *Driver) chainZero(ctx context.Context, off, n int64) (bool, error) {
	if d.backing == nil {
		return true, nil
	}
	if bl := d.backing.Length(); off+n > bl {
		n = max(0, bl-off)
	}
	for n > 0 {
		st, _, err := d.backing.Node().BlockStatusAbove(ctx, d.backing, off, n)
		if err != nil {
			return false, err
		}
		if st.Flags&blockdev.StatusZero == 0 || st.Length <= 0 {
			return false, nil
		}
		off += min(st.Length, n)
		n -= min(st.Length, n)
	}
	return true, nil
}

// hasBackingFile tells whether the image is a layer over a backing file:
// a backing node is attached, or the header names a backing file (the
// node was opened with "backing": null, as a backup target overlay is).
func (d *Driver) hasBackingFile() bool {
	return d.backing != nil || d.h.backingFile != ""
}

// WriteZeroes makes a range read as zeroes. QEMU's rules:
//   - v3: every whole cluster gets the zero flag, whatever it held and
//     whether or not anything is below (an unallocated cluster of an
//     overlay must hide its backing file once the chain is opened); its
//     host cluster is kept unless the request may unmap (or it held
//     compressed data, which is always dropped).
//   - v2 has no zero flag: without a backing file, allocated clusters are
//     deallocated (whatever the flags) and unallocated ones left alone;
//     with one, zeroes are written.
//   - A partial cluster is zeroed as a whole cluster (by the rules above)
//     when it is unallocated or zero and the rest of it reads as zeroes
//     through the chain; otherwise zeroes are written into it.
//
// One deliberate difference: QEMU 7.2 decides v2's case by the backing
// node alone, so a v2 overlay opened with "backing": null (an incremental
// backup target) is left unallocated where the guest wrote zeroes, and
// the restored chain reads the older backup's data there. qbmond also
// counts a backing file named in the header and writes the zeroes.
func (d *Driver) WriteZeroes(ctx context.Context, off, n int64, flags blockdev.ReqFlags) error {
	if err := d.beforeChange(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitFlights(off>>d.cb, (off+n+d.cs-1)>>d.cb)
	unmap := flags&blockdev.ReqMayUnmap != 0
	end := off + n
	size := d.sectorSize()
	// action returns how the part [o, ce) of cluster vc is zeroed: by a
	// new entry ne for the whole cluster (skip when nothing changes), or
	// by writing zeroes (explicit).
	action := func(vc, o, ce int64) (e, ne uint64, skip, explicit bool, err error) {
		if e, err = d.entry(ctx, vc); err != nil {
			return
		}
		k, host, err := d.classify(ctx, vc, e)
		if err != nil {
			return e, e, false, false, err
		}
		cstart, cend := vc*d.cs, min((vc+1)*d.cs, size)
		if o != cstart || ce < cend {
			if k != kUnalloc && k != kZero {
				return e, e, false, true, nil
			}
			if k == kUnalloc {
				z, err := d.chainZero(ctx, cstart, o-cstart)
				if err == nil && z {
					z, err = d.chainZero(ctx, ce, cend-ce)
				}
				if err != nil || !z {
					return e, e, false, err == nil, err
				}
			}
		}
		if d.h.version < 3 {
			switch {
			case d.hasBackingFile():
				return e, e, false, true, nil
			case k == kUnalloc:
				return e, e, true, false, nil
			}
			return e, 0, false, false, nil
		}
		ne = e | flagZero
		if k == kCompressed || unmap && (k == kNormal || k == kZero && host != 0) {
			ne = flagZero
		}
		return e, ne, ne == e, false, nil
	}
	if flags&blockdev.ReqNoFallback != 0 {
		for o := off; o < end; {
			vc := o >> d.cb
			ce := min(end, (vc+1)*d.cs)
			_, _, _, explicit, err := action(vc, o, ce)
			if err != nil {
				return err
			}
			if explicit {
				return blockdev.ErrNotSupported
			}
			o = ce
		}
	}
	var zeroes []byte
	for o := off; o < end; {
		if err := d.maybeSync(ctx); err != nil {
			return err
		}
		vc := o >> d.cb
		ce := min(end, (vc+1)*d.cs)
		e, ne, skip, explicit, err := action(vc, o, ce)
		switch {
		case err != nil:
			return err
		case skip:
		case explicit:
			if zeroes == nil {
				zeroes = make([]byte, d.cs)
			}
			if err := d.writeLocked(ctx, o, zeroes[:ce-o]); err != nil {
				return err
			}
		default:
			if err := d.setEntry(ctx, vc, e, ne, d.passReq); err != nil {
				return err
			}
		}
		o = ce
	}
	return nil
}

// Discard drops whole clusters of the range. As QEMU: on v3 images an
// allocated cluster (or any, when a backing node is attached) becomes a
// zero cluster; on v2 images without a backing node allocated clusters
// are deallocated; on v2 images with one discard does nothing (there is
// no zero flag, and deallocating would expose the backing file's data).
// Partial clusters are ignored.
func (d *Driver) Discard(ctx context.Context, off, n int64) error {
	if err := d.beforeChange(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.h.version < 3 && d.backing != nil {
		return nil
	}
	d.waitFlights(off>>d.cb, (off+n+d.cs-1)>>d.cb)
	size := d.sectorSize()
	first := (off + d.cs - 1) >> d.cb
	last := (off + n) >> d.cb // exclusive
	if off+n == size && size&(d.cs-1) != 0 {
		last = (size + d.cs - 1) >> d.cb
	}
	for vc := first; vc < last; vc++ {
		if err := d.maybeSync(ctx); err != nil {
			return err
		}
		e, err := d.entry(ctx, vc)
		if err != nil {
			return err
		}
		k, host, err := d.classify(ctx, vc, e)
		if err != nil {
			return err
		}
		allocated := k == kNormal || k == kCompressed || k == kZero && host != 0
		if d.backing == nil && !allocated {
			continue
		}
		var ne uint64
		if d.h.version >= 3 {
			ne = flagZero
		}
		if err := d.setEntry(ctx, vc, e, ne, d.passReq); err != nil {
			return err
		}
	}
	return nil
}

// Truncate grows the disk (shrinking is not supported).
func (d *Driver) Truncate(ctx context.Context, size int64, exact bool) error {
	if err := d.clearAutoclear(ctx); err != nil {
		return err
	}
	if err := d.resizeBitmapsCheck(); err != nil {
		return err
	}
	old := d.virtualSize()
	if err := d.grow(ctx, size); err != nil {
		return err
	}
	// The grown area reads as zeroes even over a longer backing node,
	// whose data must not show through (as QEMU does since 5.1).
	if d.backing != nil && size > old {
		if end := min(size, d.backing.Length()); end > old {
			return d.WriteZeroes(ctx, old, end-old, 0)
		}
	}
	return nil
}

func (d *Driver) virtualSize() int64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.sectorSize()
}

// grow sets the virtual size, growing the L1 table as needed.
func (d *Driver) grow(ctx context.Context, size int64) error {
	if err := d.check(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitAllFlights()
	if size%512 != 0 {
		return errors.New("The new size must be a multiple of 512")
	}
	if size < int64(d.h.size) {
		return fmt.Errorf("qcow2 images cannot be shrunk: %w", blockdev.ErrNotSupported)
	}
	need, ok := l1Needed(uint64(size), d.cs)
	if !ok || need*8 > maxL1Bytes {
		return fmt.Errorf("Failed to grow the L1 table: %w", syscall.EFBIG)
	}
	if need > int64(len(d.l1)) {
		if err := d.growL1(ctx, need); err != nil {
			return fmt.Errorf("Failed to grow the L1 table: %w", err)
		}
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(size))
	if err := d.file.Write(ctx, offSize, b[:], 0); err != nil {
		return err
	}
	d.h.size = uint64(size)
	return d.file.Flush(ctx)
}

// growL1 makes the L1 table hold need entries, in place when its clusters
// have room, else in new clusters.
func (d *Driver) growL1(ctx context.Context, need int64) error {
	if err := d.markDirty(ctx); err != nil {
		return err
	}
	// The table is copied or extended in the file: it must hold every
	// entry first.
	if err := d.syncMeta(ctx); err != nil {
		return err
	}
	d.file.DebugEvent(blockdev.DbgL1GrowAllocTable)
	have := int64(len(d.l1))
	oldClusters := (have*8 + d.cs - 1) / d.cs
	newClusters := (need*8 + d.cs - 1) / d.cs
	var hb [12]byte
	if d.h.l1Off != 0 && newClusters <= oldClusters {
		if err := d.ensureLen(ctx, int64(d.h.l1Off)+need*8); err != nil {
			return err
		}
		d.file.DebugEvent(blockdev.DbgL1GrowWriteTable)
		if err := d.preWrite(ctx, olActiveL1, int64(d.h.l1Off)+have*8, (need-have)*8); err != nil {
			return err
		}
		if err := d.file.Write(ctx, int64(d.h.l1Off)+have*8, make([]byte, (need-have)*8), 0); err != nil {
			return err
		}
		if err := d.file.Flush(ctx); err != nil {
			return err
		}
		binary.BigEndian.PutUint32(hb[:], uint32(need))
		d.file.DebugEvent(blockdev.DbgL1GrowActivateTable)
		if err := d.file.Write(ctx, offL1Size, hb[:4], 0); err != nil {
			return err
		}
	} else {
		d.allocFor(olForL1, 0, need*8)
		off, err := d.allocClusters(ctx, newClusters)
		if err != nil {
			return err
		}
		tb := make([]byte, newClusters*d.cs)
		for i, e := range d.l1 {
			binary.BigEndian.PutUint64(tb[8*i:], e)
		}
		d.file.DebugEvent(blockdev.DbgL1GrowWriteTable)
		if err := d.file.Write(ctx, off, tb, 0); err != nil {
			return err
		}
		if err := d.file.Flush(ctx); err != nil {
			return err
		}
		binary.BigEndian.PutUint32(hb[0:], uint32(need))
		binary.BigEndian.PutUint64(hb[4:], uint64(off))
		d.file.DebugEvent(blockdev.DbgL1GrowActivateTable)
		if err := d.file.Write(ctx, offL1Size, hb[:], 0); err != nil {
			return err
		}
		if err := d.file.Flush(ctx); err != nil {
			return err
		}
		if d.h.l1Off != 0 && oldClusters > 0 {
			d.file.DebugEvent(blockdev.DbgClusterFree)
			d.freeClusters(ctx, int64(d.h.l1Off)/d.cs, oldClusters, d.passOther)
		}
		d.h.l1Off = uint64(off)
	}
	d.l1 = append(d.l1, make([]uint64, need-have)...)
	d.h.l1Size = uint32(need)
	return nil
}

// MakeEmpty drops every cluster mapping of the image, which then reads
// from its backing file everywhere (block-commit's make-empty). The L1
// table is cleared first, so a crash midway only leaks clusters.
func (d *Driver) MakeEmpty(ctx context.Context) error {
	if err := d.check(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitAllFlights()
	if d.ro {
		return blockdev.ErrReadOnly
	}
	if err := d.markDirty(ctx); err != nil {
		return err
	}
	// The L2 tables are read back from the file below.
	if err := d.syncMeta(ctx); err != nil {
		return err
	}
	old := append([]uint64(nil), d.l1...)
	if len(old) > 0 {
		if err := d.file.Write(ctx, int64(d.h.l1Off), make([]byte, 8*len(old)), 0); err != nil {
			return err
		}
		if err := d.file.Flush(ctx); err != nil {
			return err
		}
	}
	clear(d.l1)
	d.olRebuild()
	for _, l1e := range old {
		off := int64(l1e & offsetMask)
		if off == 0 {
			continue
		}
		t := make([]byte, d.cs)
		if off&(d.cs-1) == 0 {
			if err := d.readAt(ctx, off, t); err != nil {
				return err
			}
		}
		for j := int64(0); j < d.l2n; j++ {
			if err := d.freeEntryNow(ctx, binary.BigEndian.Uint64(t[8*j:]), d.passOther); err != nil {
				return err
			}
		}
		d.freeClusters(ctx, off/d.cs, 1, d.passOther)
	}
	d.l2c.clear()
	return d.file.Flush(ctx)
}

// ChangeBackingFile rewrites the backing file name and format in the
// header ("" removes them).
func (d *Driver) ChangeBackingFile(ctx context.Context, filename, format string) error {
	if err := d.check(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitAllFlights()
	if len(filename) > maxBackingName {
		return errors.New("Backing file name too long")
	}
	if filename == "" {
		format = ""
	}
	oldName, oldFmt := d.h.backingFile, d.h.backingFmt
	d.h.backingFile, d.h.backingFmt = filename, format
	if err := d.writeHeader(ctx); err != nil {
		d.h.backingFile, d.h.backingFmt = oldName, oldFmt
		return err
	}
	return nil
}

// FileRange maps guest bytes that one host-contiguous run of normal
// clusters holds to the image file's bytes, for sendfile and copy
// offload; anything else (unallocated, zero, compressed clusters, a run
// that is not contiguous) is not mapped.
func (d *Driver) FileRange(off, n int64) (int, int64, bool) {
	if d.check() != nil || n <= 0 {
		return 0, 0, false
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	k, host, _, l, err := d.extent(context.Background(), off, n, true)
	if err != nil || k != kNormal || l < n {
		return 0, 0, false
	}
	return d.file.FileRange(host, n)
}

// WriteFromFile writes whole clusters of guest data from a file range
// (copy offload): the clusters are allocated (or found in place) as for
// Write, the data goes to the image file by its own WriteFromFile (or
// through a buffer if it declines), then the L2 entries are set. Partial
// clusters, and an image file that cannot take a file range at all, are
// declined.
func (d *Driver) WriteFromFile(ctx context.Context, off, n int64, fd int, fileOff int64) error {
	if off%d.cs != 0 || n%d.cs != 0 {
		return blockdev.ErrNotSupported
	}
	if _, ok := d.file.Node().Driver().(blockdev.FileWriter); !ok {
		return blockdev.ErrNotSupported // declined before any debug event
	}
	if err := d.beforeChange(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitFlights(off>>d.cb, (off+n)>>d.cb)
	for n > 0 {
		if err := d.maybeSync(ctx); err != nil {
			return err
		}
		vc := off >> d.cb
		e, alloc, err := d.writeTarget(ctx, vc)
		if err != nil {
			return err
		}
		if !alloc {
			if err := d.preWrite(ctx, 0, int64(e&offsetMask), d.cs); err != nil {
				return err
			}
			if err := d.copyToHost(ctx, int64(e&offsetMask), d.cs, fd, fileOff); err != nil {
				return err
			}
			off, n, fileOff = off+d.cs, n-d.cs, fileOff+d.cs
			continue
		}
		old, err := d.allocRun(ctx, vc, e, (off+n-1)>>d.cb)
		if err != nil {
			return err
		}
		m := int64(len(old))
		d.allocFor(olForData, 0, m*d.cs)
		host, err := d.allocClusters(ctx, m)
		if err != nil {
			return err
		}
		// The data goes in without the lock, as QEMU's qcow2 writes
		// data with its lock dropped: other requests (a guest write's
		// copy-before-write, other copies) go on meanwhile; changes of
		// these guest clusters wait for the link.
		f := &allocFlight{start: vc, end: vc + m, done: make(chan struct{})}
		d.flights = append(d.flights, f)
		d.mu.Unlock()
		err = d.copyToHost(ctx, host, m*d.cs, fd, fileOff)
		d.mu.Lock()
		d.flights = slices.DeleteFunc(d.flights, func(x *allocFlight) bool { return x == f })
		close(f.done)
		if err != nil {
			// The clusters go back (or leak, as QEMU's may, when even
			// that fails: qemu-img check repairs leaks).
			_ = d.addRefcount(ctx, host/d.cs, m, -1, false)
			return err
		}
		if err := d.linkNew(ctx, vc, host, old); err != nil {
			return err
		}
		off, n, fileOff = off+m*d.cs, n-m*d.cs, fileOff+m*d.cs
	}
	return nil
}

// copyToHost puts n bytes of fd at fileOff into the image file at host:
// by the file's copy offload, or through a buffer when it declines.
func (d *Driver) copyToHost(ctx context.Context, host, n int64, fd int, fileOff int64) error {
	d.file.DebugEvent("write_aio") // guest data: blkdebug's write_aio
	err := d.file.WriteFromFile(ctx, host, n, fd, fileOff)
	if !errors.Is(err, blockdev.ErrNotSupported) {
		return err
	}
	buf := make([]byte, n)
	for got := 0; got < len(buf); {
		k, err := syscall.Pread(fd, buf[got:], fileOff+int64(got))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if k == 0 {
			break // zeroes past the end
		}
		got += k
	}
	return d.file.Write(ctx, host, buf, 0)
}
