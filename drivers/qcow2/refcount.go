package qcow2

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/qbmond/qbmond/blockdev"
)

// rcGet reads entry i of a refcount block (any width from 1 to 64 bits;
// sub-byte entries start at the least significant bit).
func (d *Driver) rcGet(blk []byte, i int64) uint64 {
	switch w := int64(d.rcBits); w {
	case 8:
		return uint64(blk[i])
	case 16:
		return uint64(binary.BigEndian.Uint16(blk[2*i:]))
	case 32:
		return uint64(binary.BigEndian.Uint32(blk[4*i:]))
	case 64:
		return binary.BigEndian.Uint64(blk[8*i:])
	default:
		bit := i * w
		return uint64(blk[bit/8]>>(bit%8)) & (1<<w - 1)
	}
}

// rcSet writes entry i of a refcount block.
func (d *Driver) rcSet(blk []byte, i int64, v uint64) {
	switch w := int64(d.rcBits); w {
	case 8:
		blk[i] = byte(v)
	case 16:
		binary.BigEndian.PutUint16(blk[2*i:], uint16(v))
	case 32:
		binary.BigEndian.PutUint32(blk[4*i:], uint32(v))
	case 64:
		binary.BigEndian.PutUint64(blk[8*i:], v)
	default:
		bit := i * w
		mask := byte(1<<w-1) << (bit % 8)
		blk[bit/8] = blk[bit/8]&^mask | byte(v)<<(bit%8)&mask
	}
}

// rcMax is the largest refcount the width holds.
func (d *Driver) rcMax() uint64 {
	if d.rcBits == 64 {
		return ^uint64(0)
	}
	return 1<<d.rcBits - 1
}

// refBlock returns the refcount block for reftable index ti, nil when it
// is not allocated.
func (d *Driver) refBlock(ctx context.Context, ti int64) ([]byte, int64, error) {
	if ti >= int64(len(d.rt)) {
		return nil, 0, nil
	}
	off := int64(d.rt[ti] & refTableMask)
	if off == 0 {
		return nil, 0, nil
	}
	if off&(d.cs-1) != 0 {
		return nil, 0, d.corruption(ctx, fmt.Sprintf("Refblock offset %s unaligned (reftable index: %s)", cx(uint64(off)), cx(uint64(ti))), -1, -1)
	}
	b, err := d.loadTable(ctx, d.rbc, off)
	return b, off, err
}

// refcount returns the refcount of host cluster c.
func (d *Driver) refcount(ctx context.Context, c int64) (uint64, error) {
	b, _, err := d.refBlock(ctx, c/d.rbn)
	if b == nil || err != nil {
		return 0, err
	}
	return d.rcGet(b, c%d.rbn), nil
}

// addRefcount adds delta to the refcounts of host clusters [c, c+n). Their
// refcount blocks must exist. Clusters dropping to zero become free; with
// discard, their range is discarded in the image file.
func (d *Driver) addRefcount(ctx context.Context, c, n int64, delta int64, discard bool) error {
	for n > 0 {
		i := c % d.rbn
		k := min(n, d.rbn-i)
		d.refblockEvents()
		b, off, err := d.countingBlock(ctx, c)
		if err != nil {
			return err
		}
		// Nothing changes when one count would leave its range (QEMU's
		// update_refcount fails with EINVAL alike).
		for j := range k {
			v := d.rcGet(b, i+j)
			switch {
			case delta < 0 && v < uint64(-delta):
				return fmt.Errorf("Refcount of cluster %s would drop below zero: %w", cx(uint64(c+j)), syscall.EINVAL)
			case delta > 0 && d.rcMax()-v < uint64(delta):
				return fmt.Errorf("Refcount of cluster %s would overflow: %w", cx(uint64(c+j)), syscall.ERANGE)
			}
		}
		var freed []int64
		for j := range k {
			v := uint64(int64(d.rcGet(b, i+j)) + delta)
			d.rcSet(b, i+j, v)
			if v == 0 {
				freed = append(freed, c+j)
				d.l2c.drop((c + j) * d.cs)
				d.freeHint = min(d.freeHint, c+j)
			}
		}
		lo := i * int64(d.rcBits) / 8
		hi := ((i+k)*int64(d.rcBits) + 7) / 8
		d.file.DebugEvent(blockdev.DbgRefblockUpdatePart)
		if err := d.preWrite(ctx, olRefcountBlock, off, d.cs); err != nil {
			return err
		}
		if err := d.file.Write(ctx, off+lo, b[lo:hi], 0); err != nil {
			return err
		}
		if discard {
			for len(freed) > 0 {
				r := 1
				for r < len(freed) && freed[r] == freed[0]+int64(r) {
					r++
				}
				_ = d.file.Discard(ctx, freed[0]*d.cs, int64(r)*d.cs)
				freed = freed[r:]
			}
		}
		c, n = c+k, n-k
	}
	return nil
}

// countingBlock returns the refcount block that counts host cluster c,
// whose absence is corruption.
func (d *Driver) countingBlock(ctx context.Context, c int64) ([]byte, int64, error) {
	b, off, err := d.refBlock(ctx, c/d.rbn)
	if err == nil && b == nil {
		err = d.corruption(ctx, fmt.Sprintf("Refcount block for cluster %s is missing", cx(uint64(c))), -1, -1)
	}
	return b, off, err
}

// freeClusters drops one reference from host clusters [c, c+n), QEMU's
// qcow2_free_clusters: a failure (a count already zero in a corrupt image,
// an I/O error) leaks the clusters, which qemu-img check repairs, and is
// only logged; the request that freed them goes on.
func (d *Driver) freeClusters(ctx context.Context, c, n int64, discard bool) {
	if err := d.addRefcount(ctx, c, n, -1, discard); err != nil && d.warn != nil {
		d.warn("qcow2_free_clusters failed", err)
	}
}

// findFree returns the first run of n free host clusters at or after the
// free hint. Clusters no refcount block covers are free.
func (d *Driver) findFree(ctx context.Context, n int64) (int64, error) {
	c := d.freeHint
	var start, run int64
	first := int64(-1)
	found := func(at int64) {
		if run == 0 {
			start = at
		}
		if first < 0 {
			first = at
		}
	}
	for {
		ti := c / d.rbn
		b, _, err := d.refBlock(ctx, ti)
		if err != nil {
			return 0, err
		}
		if b == nil {
			found(c)
			if ti >= int64(len(d.rt)) {
				d.freeHint = first
				return start, nil
			}
			end := (ti + 1) * d.rbn
			run += end - c
			if run >= n {
				d.freeHint = first
				return start, nil
			}
			c = end
			continue
		}
		for end := (ti + 1) * d.rbn; c < end; c++ {
			if d.rcGet(b, c%d.rbn) != 0 {
				run = 0
				continue
			}
			found(c)
			run++
			if run >= n {
				d.freeHint = first
				return start, nil
			}
		}
	}
}

// allocClusters allocates n contiguous host clusters with refcount 1 and
// returns the offset of the first. The image file grows to cover them.
// n must not exceed maxAlloc: a missing refcount block goes into the first
// cluster of the range it covers, and a run must fit beside it.
func (d *Driver) allocClusters(ctx context.Context, n int64) (int64, error) {
	d.file.DebugEvent(blockdev.DbgClusterAlloc)
	use := d.olNext
	d.olNext = olAlloc{}
	if n > d.maxAlloc() {
		return 0, fmt.Errorf("cannot allocate %d contiguous clusters with %d-bit refcounts: %w", n, d.rcBits, syscall.EFBIG)
	}
	if err := d.markDirty(ctx); err != nil {
		return 0, err
	}
	for {
		start, err := d.findFree(ctx, n)
		if err != nil {
			return 0, err
		}
		if (start+n)*d.cs > 1<<56 {
			return 0, fmt.Errorf("qcow2 image full: %w", syscall.EFBIG)
		}
		changed := false
		for ti := start / d.rbn; ti <= (start+n-1)/d.rbn && !changed; ti++ {
			switch {
			case ti >= int64(len(d.rt)):
				err, changed = d.growRefTable(ctx, ti+1), true
			case d.rt[ti]&refTableMask == 0:
				err, changed = d.newRefBlock(ctx, ti), true
			}
			if err != nil {
				return 0, err
			}
		}
		if changed {
			// Metadata took clusters: look again.
			continue
		}
		if err := d.allocCheck(ctx, use, start*d.cs); err != nil {
			return 0, err
		}
		if err := d.ensureLen(ctx, (start+n)*d.cs); err != nil {
			return 0, err
		}
		if err := d.addRefcount(ctx, start, n, 1, false); err != nil {
			return 0, err
		}
		if start == d.freeHint {
			d.freeHint = start + n
		}
		return start * d.cs, nil
	}
}

// maxAlloc is the largest run allocClusters handles.
func (d *Driver) maxAlloc() int64 { return max(1, d.rbn/2) }

// freeEntry drops the reference an L2 entry held on its host clusters,
// whose entry was just replaced in memory: their refcounts go down in
// syncMeta, once the replacement is stable.
// A missing refcount block is reported now, with the request, as an
// immediate free would.
func (d *Driver) freeEntry(ctx context.Context, e uint64, discard bool) error {
	c, n, discard, ok := d.entryClusters(e, discard)
	if !ok {
		return nil
	}
	d.file.DebugEvent(blockdev.DbgClusterFree)
	for i := c; i < c+n; i++ {
		if _, _, err := d.countingBlock(ctx, i); err != nil {
			return err
		}
	}
	d.pendingFree = append(d.pendingFree, pendingFree{c, n, discard})
	return nil
}

// freeEntryNow drops the reference at once, for callers that made the
// entry's removal stable themselves.
func (d *Driver) freeEntryNow(ctx context.Context, e uint64, discard bool) error {
	if c, n, discard, ok := d.entryClusters(e, discard); ok {
		d.file.DebugEvent(blockdev.DbgClusterFree)
		d.freeClusters(ctx, c, n, discard)
	}
	return nil
}

// entryClusters returns the host clusters an L2 entry references.
func (d *Driver) entryClusters(e uint64, discard bool) (c, n int64, disc, ok bool) {
	if e&flagCompressed != 0 {
		off, size := d.compressedRange(e)
		first, last := off/d.cs, (off+size-1)/d.cs
		return first, last - first + 1, false, true
	}
	host := int64(e & offsetMask)
	if host == 0 {
		return 0, 0, false, false
	}
	return host / d.cs, 1, discard, true
}

// newRefBlock creates the refcount block for reftable index ti. All the
// clusters it covers are free, so it goes at the first of them and counts
// itself.
func (d *Driver) newRefBlock(ctx context.Context, ti int64) error {
	d.file.DebugEvent(blockdev.DbgRefblockAlloc)
	c := ti * d.rbn
	if c == 0 {
		// The header's own refcount is missing.
		return d.corruption(ctx, "Refcount block for the image header is missing", 0, d.cs)
	}
	if err := d.ensureLen(ctx, (c+1)*d.cs); err != nil {
		return err
	}
	b := make([]byte, d.cs)
	d.rcSet(b, 0, 1)
	d.file.DebugEvent(blockdev.DbgRefblockAllocWrite)
	if err := d.preWrite(ctx, olRefcountBlock, c*d.cs, d.cs); err != nil {
		return err
	}
	if err := d.file.Write(ctx, c*d.cs, b, 0); err != nil {
		return err
	}
	// The refcount table entry waits for syncMeta, which writes it once
	// the block is stable (a flush here would write out all data too).
	if int64(d.h.refTableOff)+8*(ti+1) > d.file.Length() {
		return blockdev.ErrOutOfRange // a corrupt table offset fails the request now
	}
	d.file.DebugEvent(blockdev.DbgRefblockAllocHookup)
	d.olTrackRT(d.rt[ti], uint64(c*d.cs))
	d.rt[ti] = uint64(c * d.cs)
	d.rtDirty.add(ti)
	d.rbc.put(c*d.cs, b)
	return nil
}

// growRefTable replaces the refcount table by a larger one covering at
// least min entries. The new table and the refcount blocks for it go into
// the first range no block covers yet (all free): blocks first, each
// covering its own range, then the table.
func (d *Driver) growRefTable(ctx context.Context, minEntries int64) error {
	d.file.DebugEvent(blockdev.DbgReftableGrow)
	old := int64(len(d.rt))
	r := old * d.rbn // first cluster of the fresh region
	var m, tc, entries int64 = 1, 0, 0
	for {
		entries = max(minEntries, old+m, 2*old)
		tc = (entries*8 + d.cs - 1) / d.cs
		entries = tc * d.cs / 8
		if m2 := (m + tc + d.rbn - 1) / d.rbn; m2 > m {
			m = m2
			continue
		}
		break
	}
	if tc*d.cs > maxRefTableBytes {
		return fmt.Errorf("Reference count table too large: %w", syscall.EFBIG)
	}
	used := m + tc
	if err := d.ensureLen(ctx, (r+used)*d.cs); err != nil {
		return err
	}
	d.file.DebugEvent(blockdev.DbgRefblockAllocWriteBlock)
	blocks := make([][]byte, m)
	for j := range m {
		b := make([]byte, d.cs)
		for c := (old + j) * d.rbn; c < min((old+j+1)*d.rbn, r+used); c++ {
			d.rcSet(b, c%d.rbn, 1)
		}
		if err := d.preWrite(ctx, olRefcountBlock, (r+j)*d.cs, d.cs); err != nil {
			return err
		}
		if err := d.file.Write(ctx, (r+j)*d.cs, b, 0); err != nil {
			return err
		}
		blocks[j] = b
	}
	nt := make([]uint64, entries)
	copy(nt, d.rt)
	for j := range m {
		nt[old+j] = uint64((r + j) * d.cs)
	}
	oldOff, oldClusters := int64(d.h.refTableOff), int64(d.h.refTableCluster)
	if err := d.installRefTable(ctx, nt, (r+m)*d.cs, tc); err != nil {
		return err
	}
	for j := range m {
		d.rbc.put((r+j)*d.cs, blocks[j])
	}
	d.file.DebugEvent(blockdev.DbgClusterFree)
	d.freeClusters(ctx, oldOff/d.cs, oldClusters, d.passOther)
	return nil
}

// rebuildRefcounts recomputes every refcount from the metadata that
// references clusters (header, L1 and L2 tables, data clusters) and writes
// a new refcount structure past the end of the file: a dirty image's
// refcounts cannot be trusted.
func (d *Driver) rebuildRefcounts(ctx context.Context) error {
	fileClusters := (d.file.Length() + d.cs - 1) / d.cs
	counts := make([]uint64, fileClusters)
	ref := func(off, size int64) error {
		if off < 0 || size <= 0 || off+size > fileClusters*d.cs {
			return errors.New("a cluster reference points past the end of the image file")
		}
		for c := off / d.cs; c <= (off+size-1)/d.cs; c++ {
			counts[c]++
		}
		return nil
	}
	if err := ref(0, d.cs); err != nil {
		return err
	}
	if len(d.l1) > 0 {
		if err := ref(int64(d.h.l1Off), int64(len(d.l1))*8); err != nil {
			return err
		}
	}
	for i, l1e := range d.l1 {
		off := int64(l1e & offsetMask)
		if off == 0 {
			continue
		}
		if off&(d.cs-1) != 0 {
			return fmt.Errorf("L2 table offset %s unaligned (L1 index: %s)", cx(uint64(off)), cx(uint64(i)))
		}
		if err := ref(off, d.cs); err != nil {
			return err
		}
		t := make([]byte, d.cs)
		if err := d.readAt(ctx, off, t); err != nil {
			return err
		}
		for j := int64(0); j < d.l2n; j++ {
			e := binary.BigEndian.Uint64(t[8*j:])
			if e&flagCompressed != 0 {
				co, cl := d.compressedRange(e)
				if err := ref(co, cl); err != nil {
					return err
				}
				continue
			}
			if host := int64(e & offsetMask); host != 0 {
				if host&(d.cs-1) != 0 {
					return fmt.Errorf("Cluster allocation offset %s unaligned", cx(uint64(host)))
				}
				if err := ref(host, d.cs); err != nil {
					return err
				}
			}
		}
	}
	if err := d.bitmapRefs(ctx, ref); err != nil {
		return err
	}
	// New structure at the end: m blocks then a table of tc clusters.
	e := fileClusters
	var m, tc int64 = 1, 1
	for {
		total := e + m + tc
		m2 := (total + d.rbn - 1) / d.rbn
		tc2 := (m2*8 + d.cs - 1) / d.cs
		if m2 == m && tc2 == tc {
			break
		}
		m, tc = m2, tc2
	}
	if tc*d.cs > maxRefTableBytes {
		return errors.New("Reference count table too large")
	}
	counts = append(counts, make([]uint64, m+tc)...)
	for c := e; c < e+m+tc; c++ {
		counts[c] = 1
	}
	if err := d.ensureLen(ctx, (e+m+tc)*d.cs); err != nil {
		return err
	}
	nt := make([]uint64, tc*d.cs/8)
	d.rbc.clear()
	for j := range m {
		b := make([]byte, d.cs)
		for i := range d.rbn {
			c := j*d.rbn + i
			if c >= int64(len(counts)) {
				break
			}
			if counts[c] > d.rcMax() {
				return fmt.Errorf("Refcount of cluster %s would overflow", cx(uint64(c)))
			}
			d.rcSet(b, i, counts[c])
		}
		if err := d.file.Write(ctx, (e+j)*d.cs, b, 0); err != nil {
			return err
		}
		nt[j] = uint64((e + j) * d.cs)
	}
	if err := d.installRefTable(ctx, nt, (e+m)*d.cs, tc); err != nil {
		return err
	}
	d.freeHint = 0
	return nil
}

// installRefTable writes the refcount table nt (tc clusters) at tOff,
// makes it durable, then points the header at it and makes that durable,
// so that a crash leaves either the old table or the new one in force.
func (d *Driver) installRefTable(ctx context.Context, nt []uint64, tOff, tc int64) error {
	tb := make([]byte, tc*d.cs)
	for i, v := range nt {
		binary.BigEndian.PutUint64(tb[8*i:], v)
	}
	d.file.DebugEvent(blockdev.DbgRefblockAllocWriteTable)
	if err := d.file.Write(ctx, tOff, tb, 0); err != nil {
		return err
	}
	if err := d.file.Flush(ctx); err != nil {
		return err
	}
	var hb [12]byte
	binary.BigEndian.PutUint64(hb[0:], uint64(tOff))
	binary.BigEndian.PutUint32(hb[8:], uint32(tc))
	d.file.DebugEvent(blockdev.DbgRefblockAllocSwitch)
	if err := d.file.Write(ctx, offRefTable, hb[:], 0); err != nil {
		return err
	}
	if err := d.file.Flush(ctx); err != nil {
		return err
	}
	d.rtDirty = entryRange{} // the new table holds every entry
	d.h.refTableOff, d.h.refTableCluster = uint64(tOff), uint32(tc)
	d.rt = nt
	d.olRebuild()
	return nil
}
