// Package qcow2 implements the qcow2 format driver, read-write, versions 2
// and 3, written from QEMU's public specification (docs/interop/qcow2.txt).
//
// Metadata (L1, L2 and refcount tables, the header) is written through:
// every change reaches the image file when the request that made it
// completes, in an order that leaves at worst leaked clusters after a
// crash (refcount increase, then data, then the L2 entry that points at
// it; L2 entry cleared, then refcount decrease). A read-write lock guards
// the metadata: reads and in-place writes of allocated clusters share it,
// anything that changes metadata holds it exclusively.
package qcow2

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qapi"
)

func init() { blockdev.Register("qcow2", format{}) }

// format is what the package registers: it opens qcow2 nodes, recognises
// qcow2 images by content and creates them.
type format struct{}

func (format) New() blockdev.Driver  { return new(Driver) }
func (format) Probe(head []byte) int { return probe(head) }
func (format) Create(ctx context.Context, cc *blockdev.CreateContext) error {
	return create(ctx, cc)
}

// probe recognises the magic number and a version of at least 2, as QEMU.
func probe(head []byte) int {
	if len(head) >= 8 && binary.BigEndian.Uint32(head) == magic && binary.BigEndian.Uint32(head[4:]) >= 2 {
		return 100
	}
	return 0
}

// L1/L2 entry bits.
const (
	flagCopied     = uint64(1) << 63
	flagCompressed = uint64(1) << 62
	flagZero       = uint64(1)
	offsetMask     = uint64(0x00fffffffffffe00)
	refTableMask   = ^uint64(511)
)

// kind classifies a guest cluster.
type kind uint8

const (
	kUnalloc    kind = iota // read from the backing file (or zeroes)
	kZero                   // reads as zeroes (v3 zero flag)
	kNormal                 // data in a host cluster
	kCompressed             // compressed data
)

// CorruptionHandler is told when the driver finds corrupt metadata: msg in
// QEMU's words, the offset and size of the affected range in the image
// file (-1 when unknown), and whether the node now fails every request
// (fatal, with the corrupt bit set in the image; only for writable nodes).
// It is QEMU's BLOCK_IMAGE_CORRUPTED event.
type CorruptionHandler func(msg string, offset, size int64, fatal bool)

// Driver is one qcow2 node.
type Driver struct {
	file    *blockdev.Child
	backing *blockdev.Child
	ro      bool

	mu       sync.RWMutex // metadata: the fields below and the caches' contents
	h        *header
	hdrUsed  int // bytes of the first cluster the header area occupies on disk
	cb       uint
	cs       int64
	l2n      int64 // entries per L2 table
	l1       []uint64
	rt       []uint64 // refcount table
	rcBits   uint
	rbn      int64 // entries per refcount block
	l2c      *tableCache
	rbc      *tableCache
	freeHint int64 // no free cluster below this index
	// Metadata changes not yet in the file (see syncMeta): refcount
	// table and L1 entries, dirty L2 tables in l2c, and references
	// dropped whose refcounts are still to be decreased.
	rtDirty, l1Dirty entryRange
	pendingFree      []pendingFree
	// flights are the allocating writes whose data is being written
	// with d.mu released (WriteFromFile): their guest clusters are not
	// linked yet, and every other change of those clusters waits.
	flights []*allocFlight
	// freeByte is where the next compressed cluster's data may go, in a
	// host cluster compressed data partly fills (0: none); QEMU's
	// free_byte_offset.
	freeByte int64
	lazy     bool
	dirtyUs  bool // we set the dirty bit (lazy refcounts) and clear it on close
	// autoclearPending: reopened read-write with auto-clear features
	// still set; the first write clears them.
	autoclearPending atomic.Bool
	// bm: the persistent dirty bitmaps in the image (bitmaps.go).
	bm bitmapState

	passReq, passOther bool

	// Metadata overlap checks (overlap.go): the structures checked, the
	// L2 tables' and refcount blocks' offsets, the next allocation's use.
	olCheck    olMask
	olL2, olRB sortedOffs
	olNext     olAlloc

	failed     atomic.Bool // fatal corruption: every request fails
	corruptMu  sync.Mutex
	onCorrupt  CorruptionHandler
	warn       func(msg string, err error) // problems QEMU prints to stderr
	reported   bool
	decoderMu  sync.Mutex
	decoders   []*zstdDecoder
	closedOnce bool
}

// OnCorrupt installs the handler told about corruption found at run time
// (the lead wires it to BLOCK_IMAGE_CORRUPTED). Only the first corruption
// of a node is reported, as QEMU suppresses further events.
func (d *Driver) OnCorrupt(f CorruptionHandler) {
	d.corruptMu.Lock()
	defer d.corruptMu.Unlock()
	d.onCorrupt = f
}

// cx formats like C's "%#x": "0" for zero, "0x..." otherwise.
func cx(v uint64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%#x", v)
}

// corruption reports corrupt metadata and returns the error for the
// request that found it. On a writable node it is fatal: the corrupt bit
// is set in the image and the node fails all further I/O.
func (d *Driver) corruption(ctx context.Context, msg string, off, size int64) error {
	fatal := !d.ro
	d.corruptMu.Lock()
	// After the first event, QEMU reports only a first fatal one.
	first := !d.reported || fatal && !d.failed.Load()
	d.reported = true
	h := d.onCorrupt
	d.corruptMu.Unlock()
	if fatal && !d.failed.Swap(true) {
		// Best effort, like QEMU: the image may be beyond repair anyway.
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], d.h.incompat|incCorrupt)
		if d.h.version >= 3 {
			_ = d.file.Write(ctx, offIncompat, b[:], 0)
			_ = d.file.Flush(ctx)
		}
	}
	if first && h != nil {
		h(msg, off, size, fatal)
	}
	return fmt.Errorf("%s: %w", msg, syscall.EIO)
}

// check fails requests once the node hit fatal corruption: QEMU takes
// the driver away from the node, whose requests then find no medium.
func (d *Driver) check() error {
	if d.failed.Load() {
		return fmt.Errorf("qcow2 image is corrupt: %w", syscall.ENOMEDIUM)
	}
	return nil
}

// readAt reads metadata from the image file, with zeroes past its end (as
// QEMU's file driver returns them).
func (d *Driver) readAt(ctx context.Context, off int64, p []byte) error {
	if off < 0 {
		// A table entry with the top bit set (refcount table entries keep
		// it in their offset): QEMU's block layer refuses the read of a
		// negative offset, and the request fails with EIO.
		return fmt.Errorf("offset is negative: %d: %w", off, syscall.EIO)
	}
	end := d.file.Length()
	if off >= end {
		clear(p)
		return nil
	}
	n := min(int64(len(p)), end-off)
	if err := d.file.Read(ctx, off, p[:n]); err != nil {
		return err
	}
	clear(p[n:])
	return nil
}

// ensureLen grows the image file to at least end bytes.
func (d *Driver) ensureLen(ctx context.Context, end int64) error {
	if d.file.Length() >= end {
		return nil
	}
	return d.file.Truncate(ctx, end, false)
}

// loadTable returns the table at off from cache c, reading it if needed.
func (d *Driver) loadTable(ctx context.Context, c *tableCache, off int64) ([]byte, error) {
	if t := c.get(off); t != nil {
		return t, nil
	}
	t := make([]byte, d.cs)
	if c == d.l2c {
		d.file.DebugEvent(blockdev.DbgL2Load) // an L2 cache miss, as in QEMU
	}
	if err := d.readAt(ctx, off, t); err != nil {
		return nil, err
	}
	return c.put(off, t), nil
}

// l2Table returns the L2 table of L1 index i, nil when none is allocated.
func (d *Driver) l2Table(ctx context.Context, i int64) ([]byte, int64, error) {
	if i >= int64(len(d.l1)) {
		return nil, 0, nil
	}
	off := int64(d.l1[i] & offsetMask)
	if off == 0 {
		return nil, 0, nil
	}
	if off&(d.cs-1) != 0 {
		return nil, 0, d.corruption(ctx, fmt.Sprintf("L2 table offset %s unaligned (L1 index: %s)", cx(uint64(off)), cx(uint64(i))), -1, -1)
	}
	if off+d.cs > d.file.Length() {
		return nil, 0, d.corruption(ctx, fmt.Sprintf("L2 table offset %s beyond the end of the image file (L1 index: %s)", cx(uint64(off)), cx(uint64(i))), -1, -1)
	}
	t, err := d.loadTable(ctx, d.l2c, off)
	return t, off, err
}

// entry returns the L2 entry of guest cluster vc (0 when unallocated).
func (d *Driver) entry(ctx context.Context, vc int64) (uint64, error) {
	t, _, err := d.l2Table(ctx, vc/d.l2n)
	if t == nil || err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(t[8*(vc%d.l2n):]), nil
}

// classify decodes an L2 entry of guest cluster vc.
func (d *Driver) classify(ctx context.Context, vc int64, e uint64) (kind, int64, error) {
	if e&flagCompressed != 0 {
		return kCompressed, 0, nil
	}
	host := int64(e & offsetMask)
	if d.h.version >= 3 && e&flagZero != 0 {
		return kZero, host, nil
	}
	if host == 0 {
		return kUnalloc, 0, nil
	}
	if host&(d.cs-1) != 0 {
		l2off := d.l1[vc/d.l2n] & offsetMask
		return 0, 0, d.corruption(ctx, fmt.Sprintf("Cluster allocation offset %s unaligned (L2 offset: %s, L2 index: %s)",
			cx(uint64(host)), cx(l2off), cx(uint64(vc%d.l2n))), -1, -1)
	}
	return kNormal, host, nil
}

// extent finds the run starting at off of at most n bytes whose clusters
// share a kind. With contiguous, normal clusters must also follow each
// other in the image file. It returns the kind, the host offset of off
// (normal clusters), the first cluster's entry and the run length.
func (d *Driver) extent(ctx context.Context, off, n int64, contiguous bool) (kind, int64, uint64, int64, error) {
	vc := off >> d.cb
	in := off & (d.cs - 1)
	e, err := d.entry(ctx, vc)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	k, host, err := d.classify(ctx, vc, e)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	l := min(n, d.cs-in)
	if k == kCompressed {
		return k, 0, e, l, nil
	}
	for l < n {
		next := vc + (in+l)>>d.cb
		if next%d.l2n == 0 {
			// A new L2 table. Whole tables that do not exist are
			// skipped at once when the run is unallocated; otherwise
			// the run ends here, so that one call never walks more
			// than one table (a huge sparse image would take forever).
			t := next / d.l2n
			if k != kUnalloc || t >= int64(len(d.l1)) || d.l1[t]&offsetMask != 0 {
				break
			}
			l += min(n-l, d.l2n*d.cs)
			continue
		}
		e2, err := d.entry(ctx, next)
		if err != nil {
			return 0, 0, 0, 0, err
		}
		k2, h2, err := d.classify(ctx, next, e2)
		if err != nil || k2 != k {
			break
		}
		if contiguous && k == kNormal && h2 != host+(next-vc)*d.cs {
			break
		}
		l += min(n-l, d.cs)
	}
	if k == kNormal {
		host += in
	}
	return k, host, e, l, nil
}

// Read reads guest data.
func (d *Driver) Read(ctx context.Context, off int64, p []byte) error {
	if err := d.check(); err != nil {
		return err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.readLocked(ctx, off, p)
}

func (d *Driver) readLocked(ctx context.Context, off int64, p []byte) error {
	for len(p) > 0 {
		k, host, e, n, err := d.extent(ctx, off, int64(len(p)), true)
		if err != nil {
			return err
		}
		switch k {
		case kUnalloc:
			err = d.readBacking(ctx, off, p[:n])
		case kZero:
			clear(p[:n])
		case kNormal:
			d.file.DebugEvent("read_aio")
			err = d.file.Read(ctx, host, p[:n])
		case kCompressed:
			var data []byte
			if data, err = d.decompress(ctx, e); err == nil {
				copy(p[:n], data[off&(d.cs-1):])
			}
		}
		if err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// readBacking reads guest data of unallocated clusters: from the backing
// node where it has data, zeroes past its end or without one.
func (d *Driver) readBacking(ctx context.Context, off int64, p []byte) error {
	if d.backing == nil {
		clear(p)
		return nil
	}
	d.file.DebugEvent(blockdev.DbgReadBackingAIO)
	bl := d.backing.Length()
	n := max(0, min(int64(len(p)), bl-off))
	if n > 0 {
		if err := d.backing.Read(ctx, off, p[:n]); err != nil {
			return err
		}
	}
	clear(p[n:])
	return nil
}

// BlockStatus reports the status of this layer: clusters allocated here
// are Allocated (with Data or Zero); unallocated ones are not, and read as
// zeroes only when there is no backing node.
func (d *Driver) BlockStatus(ctx context.Context, off, n int64) (blockdev.BlockStatus, error) {
	if err := d.check(); err != nil {
		return blockdev.BlockStatus{}, err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	k, _, _, l, err := d.extent(ctx, off, n, false)
	if err != nil {
		return blockdev.BlockStatus{}, err
	}
	var f blockdev.StatusFlags
	switch k {
	case kUnalloc:
		if d.backing == nil {
			f = blockdev.StatusZero
		}
	case kZero:
		f = blockdev.StatusZero | blockdev.StatusAllocated
	default:
		f = blockdev.StatusData | blockdev.StatusAllocated
	}
	return blockdev.BlockStatus{Flags: f, Length: l}, nil
}

// Length is the virtual disk size.
func (d *Driver) Length(ctx context.Context) (int64, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.sectorSize(), nil
}

// sectorSize is the disk size in whole sectors: QEMU takes a header size
// that is not a multiple of 512 as rounded down (the tail is not part of
// the disk).
func (d *Driver) sectorSize() int64 {
	return int64(d.h.size) &^ 511
}

// Flush writes back the metadata held in memory (syncMeta) and flushes
// the image file. It
// works on a corrupt node too, so that closing it succeeds.
func (d *Driver) Flush(ctx context.Context) error {
	d.mu.Lock()
	err := d.syncMeta(ctx)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	return d.file.Flush(ctx)
}

// Info reports the cluster size and the dirty bit.
func (d *Driver) Info(ctx context.Context) (blockdev.DriverInfo, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return blockdev.DriverInfo{ClusterSize: d.cs, Dirty: d.h.incompat&incDirty != 0}, nil
}

// FormatSpecific returns the qcow2 part of ImageInfo, a
// *qapi.ImageInfoSpecific (see blockdev.FormatInfoer).
func (d *Driver) FormatSpecific(ctx context.Context) (any, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	s := qapi.ImageInfoSpecificQCow2{Compat: "0.10", CompressionType: qapi.Qcow2CompressionTypeZlib,
		RefcountBits: 1 << d.h.refcountOrder}
	if d.h.compressionType == 1 {
		s.CompressionType = qapi.Qcow2CompressionTypeZstd
	}
	if d.h.version >= 3 {
		lazy := d.h.compat&compatLazyRefcounts != 0
		corrupt := d.h.incompat&incCorrupt != 0 || d.failed.Load()
		ext := false
		s.Compat, s.LazyRefcounts, s.Corrupt, s.ExtendedL2 = "1.1", &lazy, &corrupt, &ext
	}
	s.Bitmaps = d.bitmapInfo()
	return &qapi.ImageInfoSpecific{Type: qapi.ImageInfoSpecificKindQcow2,
		Qcow2: &qapi.ImageInfoSpecificQCow2Wrapper{Data: s}}, nil
}

// BackingFileName returns the backing file name and format the image
// header records ("" when none), as QEMU's backing-filename and
// backing-filename-format show them.
func (d *Driver) BackingFileName() (filename, format string) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.h.backingFile, d.h.backingFmt
}

// BackingFile reports the header's backing file for the query views
// (blockdev.BackingFiler).
func (d *Driver) BackingFile() (filename, format string) { return d.BackingFileName() }

// allocFlight is an allocating write of guest clusters [start, end)
// whose data is in flight; done is closed when it has been linked (or
// given up).
type allocFlight struct {
	start, end int64
	done       chan struct{}
}

// waitFlights waits (d.mu held exclusively, released meanwhile) until no
// allocating write of guest clusters in [start, end) is in flight. The
// caller reads the mapping after it.
func (d *Driver) waitFlights(start, end int64) {
	for {
		var f *allocFlight
		for _, x := range d.flights {
			if x.start < end && start < x.end {
				f = x
				break
			}
		}
		if f == nil {
			return
		}
		d.mu.Unlock()
		<-f.done
		d.mu.Lock()
	}
}

// waitAllFlights waits for every allocating write in flight (d.mu held).
func (d *Driver) waitAllFlights() { d.waitFlights(0, math.MaxInt64) }

// Close writes back what is left of the metadata (the node was flushed
// before, so normally nothing) and clears the dirty bit lazy refcounts
// set, after a flush.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitAllFlights()
	if d.closedOnce {
		return nil
	}
	d.closedOnce = true
	d.closeDecoders()
	if d.ro || d.failed.Load() {
		return nil
	}
	ctx := context.Background()
	stored, err := d.storeBitmaps(ctx)
	if err != nil && d.warn != nil {
		d.warn(fmt.Sprintf("Lost persistent bitmaps during inactivation of node '%s'", d.bm.node.Name()), err)
	}
	wrote := d.metaDirty() || stored
	if err := d.syncMeta(ctx); err != nil {
		return err
	}
	if !d.dirtyUs && !wrote {
		return nil
	}
	if err := d.file.Flush(ctx); err != nil {
		return err
	}
	if !d.dirtyUs {
		return nil
	}
	return d.setIncompat(ctx, d.h.incompat&^incDirty)
}

// setIncompat writes the incompatible feature field and flushes.
func (d *Driver) setIncompat(ctx context.Context, v uint64) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	if err := d.file.Write(ctx, offIncompat, b[:], 0); err != nil {
		return err
	}
	d.h.incompat = v
	return d.file.Flush(ctx)
}

// markDirty sets the dirty bit before the first metadata change when lazy
// refcounts are in use.
func (d *Driver) markDirty(ctx context.Context) error {
	if !d.lazy || d.dirtyUs || d.h.version < 3 {
		return nil
	}
	if d.h.incompat&incDirty == 0 {
		if err := d.setIncompat(ctx, d.h.incompat|incDirty); err != nil {
			return err
		}
	}
	d.dirtyUs = true
	return nil
}

// writeHeader rewrites the header area of the first cluster.
func (d *Driver) writeHeader(ctx context.Context) error {
	buf, err := d.h.encode()
	if err != nil {
		return err
	}
	n := len(buf)
	if d.hdrUsed > n {
		buf = append(buf, make([]byte, d.hdrUsed-n)...)
	}
	if err := d.file.Write(ctx, 0, buf, 0); err != nil {
		return err
	}
	d.hdrUsed = n
	return d.file.Flush(ctx)
}

// writeEntries sets entries of the L2 table at tblOff from index i (tbl
// is the caller's copy of it), in the cache: the table goes dirty and
// reaches the file with the next syncMeta.
func (d *Driver) writeEntries(ctx context.Context, tbl []byte, tblOff int64, i int64, entries []uint64) error {
	// A table past the end of the image file (corrupt metadata) fails
	// the request now, as writing it through would.
	if tblOff+8*(i+int64(len(entries))) > d.file.Length() {
		return blockdev.ErrOutOfRange
	}
	if err := d.preWrite(ctx, olActiveL2, tblOff, d.cs); err != nil {
		return err
	}
	t := d.l2c.change(tblOff, tbl, int(8*i), int(8*(i+int64(len(entries)))))
	for j, e := range entries {
		binary.BigEndian.PutUint64(t[8*(i+int64(j)):], e)
		binary.BigEndian.PutUint64(tbl[8*(i+int64(j)):], e)
	}
	return nil
}

// entryRange is the run [lo, hi) of a table's entries changed in memory
// only (none while hi is 0).
type entryRange struct{ lo, hi int64 }

func (r *entryRange) empty() bool { return r.hi == 0 }

// add takes entry i into the range.
func (r *entryRange) add(i int64) {
	if r.hi == 0 {
		r.lo, r.hi = i, i+1
	} else {
		r.lo, r.hi = min(r.lo, i), max(r.hi, i+1)
	}
}

// writeRange writes the entries r covers of the table tbl, which is at
// off in the image file, and empties r.
func (d *Driver) writeRange(ctx context.Context, r *entryRange, tbl []uint64, off int64) error {
	if r.empty() {
		return nil
	}
	b := make([]byte, 8*(r.hi-r.lo))
	for i := r.lo; i < r.hi; i++ {
		binary.BigEndian.PutUint64(b[8*(i-r.lo):], tbl[i])
	}
	if err := d.file.Write(ctx, off+8*r.lo, b, 0); err != nil {
		return err
	}
	*r = entryRange{}
	return nil
}

// pendingFree is a reference dropped from the L2 tables in memory: the
// refcounts of host clusters [c, c+n) go down once that change is stable.
type pendingFree struct {
	c, n    int64
	discard bool
}

// maxPendingFrees bounds the frees that wait for a syncMeta.
const maxPendingFrees = 4096

// syncMeta writes the metadata changes held in memory to the image file
// in the order that keeps the file consistent whatever part of the
// unflushed writes a crash loses (QEMU's qcow2 caches with their
// dependencies, and its ordering of refcount updates):
//
//  1. A flush makes the refcounts of newly allocated clusters stable
//     (they were written through as the clusters were allocated),
//     together with the data and any new L2 table written into them,
//     before anything points at them. New refcount blocks are stable
//     then too; the refcount table entries for them are written next,
//     and flushed, before any L2 entry counts on them.
//  2. The dirty L2 tables and L1 entries are written.
//  3. If references were dropped, a flush makes that stable, and only
//     then do the refcounts of the clusters they held go down, so that
//     no cluster is reused while a stable table still points at it.
//
// A crash thus leaves at worst leaked clusters. Callers hold d.mu
// exclusively; the last writes are left for the caller's flush.
func (d *Driver) syncMeta(ctx context.Context) error {
	tables := d.l2c.dirtyTables()
	if len(tables) == 0 && d.l1Dirty.empty() && d.rtDirty.empty() && len(d.pendingFree) == 0 {
		return nil
	}
	if d.failed.Load() {
		// Fatal corruption: nothing more is written (QEMU stops using
		// the image alike), and the flush itself is not refused.
		return nil
	}
	if len(tables) > 0 || !d.l1Dirty.empty() || !d.rtDirty.empty() {
		if err := d.file.Flush(ctx); err != nil {
			return err
		}
		if !d.rtDirty.empty() {
			if err := d.writeRange(ctx, &d.rtDirty, d.rt, int64(d.h.refTableOff)); err != nil {
				return err
			}
			if err := d.file.Flush(ctx); err != nil {
				return err
			}
		}
		for _, t := range tables {
			d.file.DebugEvent(blockdev.DbgL2Update)
			if err := d.file.Write(ctx, t.off+int64(t.lo), t.data[t.lo:t.hi], 0); err != nil {
				return err
			}
			d.l2c.cleaned(t)
		}
		if err := d.writeRange(ctx, &d.l1Dirty, d.l1, int64(d.h.l1Off)); err != nil {
			return err
		}
	}
	if len(d.pendingFree) > 0 {
		if err := d.file.Flush(ctx); err != nil {
			return err
		}
		frees := d.pendingFree
		d.pendingFree = nil
		for _, f := range frees {
			d.freeClusters(ctx, f.c, f.n, f.discard)
		}
	}
	return nil
}

// metaDirty tells whether metadata changes wait for syncMeta (for Close;
// syncMeta looks at the dirty tables itself).
func (d *Driver) metaDirty() bool {
	return len(d.l2c.dirtyTables()) > 0 || !d.l1Dirty.empty() || !d.rtDirty.empty() || len(d.pendingFree) > 0
}

// maybeSync runs syncMeta when the L2 cache is over its size because
// only dirty tables were left to evict (QEMU's qcow2 writes its cache
// back when it needs a slot), or when many frees wait (d.mu held
// exclusively).
func (d *Driver) maybeSync(ctx context.Context) error {
	if d.l2c.len() > d.l2c.max || len(d.pendingFree) >= maxPendingFrees {
		return d.syncMeta(ctx)
	}
	return nil
}

// errNoSnapshots refuses writes to images with internal snapshots.
var errNoSnapshots = errors.New("qcow2 images with internal snapshots can only be opened read-only")
