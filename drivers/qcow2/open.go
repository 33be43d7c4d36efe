package qcow2

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"

	"github.com/qbmond/qbmond/blockdev"
)

// QEMU's cache defaults.
const (
	defaultL2CacheMax = 32 << 20
	minL2Tables       = 2
	minRefBlocks      = 4
)

// cacheSizes applies QEMU's rules for cache-size, l2-cache-size and
// refcount-cache-size and returns the number of L2 tables and refcount
// blocks to cache.
func cacheSizes(o blockdev.Options, cs int64, diskSize uint64) (int, int, error) {
	get := func(k string) (int64, bool, error) {
		v, ok, err := o.Int(k)
		if err == nil && v < 0 {
			err = fmt.Errorf("Parameter '%s' expects a non-negative number below 2^64", k)
		}
		return v, ok, err
	}
	total, hasTotal, err := get("cache-size")
	if err != nil {
		return 0, 0, err
	}
	l2, hasL2, err := get("l2-cache-size")
	if err != nil {
		return 0, 0, err
	}
	rc, hasRC, err := get("refcount-cache-size")
	if err != nil {
		return 0, 0, err
	}
	entry, hasEntry, err := get("l2-cache-entry-size")
	if err != nil {
		return 0, 0, err
	}
	if hasEntry && (entry < 512 || entry > cs || entry&(entry-1) != 0) {
		return 0, 0, fmt.Errorf("L2 cache entry size must be a power of two between 512 and the cluster size (%d)", cs)
	}
	if v, ok, err := get("cache-clean-interval"); err != nil {
		return 0, 0, err
	} else if ok && v > 0xffffffff {
		return 0, 0, errors.New("Cache clean interval too big")
	}
	// Enough L2 cache to map the whole disk.
	l2Max := int64((diskSize+uint64(cs)-1)/uint64(cs)) * 8
	l2Max = (l2Max + cs - 1) / cs * cs
	switch {
	case hasTotal && hasL2 && hasRC:
		return 0, 0, errors.New("cache-size, l2-cache-size and refcount-cache-size may not be set at the same time")
	case hasTotal && hasL2:
		if l2 > total {
			return 0, 0, errors.New("l2-cache-size may not exceed cache-size")
		}
		rc = total - l2
	case hasTotal && hasRC:
		if rc > total {
			return 0, 0, errors.New("refcount-cache-size may not exceed cache-size")
		}
		l2 = total - rc
	case hasTotal:
		l2 = min(total, l2Max)
		rc = total - l2
	default:
		if !hasL2 {
			l2 = min(l2Max, defaultL2CacheMax)
		}
		if !hasRC {
			rc = minRefBlocks * cs
		}
	}
	return max(int(l2/cs), minL2Tables), max(int(rc/cs), minRefBlocks), nil
}

// Open reads and checks the header, loads the L1 and refcount tables,
// opens the backing chain and, for a writable node, repairs a dirty image.
func (d *Driver) Open(ctx context.Context, oc *blockdev.OpenContext) error {
	o := oc.Options()
	if o.Has("data-file") {
		return errors.New("qcow2 images with an external data file are not supported")
	}
	file, err := oc.OpenChild(ctx, "file", blockdev.RoleImage)
	if err != nil {
		return err
	}
	d.file, d.ro = file, oc.ReadOnly()

	// The header fits in the first cluster; read 64 KiB, then the rest of
	// a larger cluster.
	buf := make([]byte, min(file.Length(), 1<<16))
	if err := file.Read(ctx, 0, buf); err != nil {
		return fmt.Errorf("Could not read qcow2 header: %w", err)
	}
	if len(buf) >= 24 && binary.BigEndian.Uint32(buf) == magic {
		if cb := binary.BigEndian.Uint32(buf[20:]); cb > 16 && cb <= maxClusterBits {
			buf = make([]byte, min(file.Length(), 1<<cb))
			if err := file.Read(ctx, 0, buf); err != nil {
				return fmt.Errorf("Could not read qcow2 header: %w", err)
			}
		}
	}
	h, err := parseHeader(buf)
	if err != nil {
		return err
	}
	if h.refcountOrder > 6 {
		return errors.New("Reference count entry width too large; may not exceed 64 bits")
	}
	if bad := h.incompat &^ incKnown; bad != 0 {
		return fmt.Errorf("Unsupported qcow2 feature(s): %s", h.featureText(0, bad))
	}
	if h.incompat&incCorrupt != 0 && !d.ro {
		return errors.New("qcow2: Image is corrupt; cannot be opened read/write")
	}
	switch {
	case h.compressionType > 1:
		return fmt.Errorf("qcow2: unknown compression type: %d", h.compressionType)
	case h.compressionType != 0 && h.incompat&incCompression == 0:
		return errors.New("qcow2: Compression type incompatible feature bit must be set")
	case h.compressionType == 0 && h.incompat&incCompression != 0:
		return errors.New("qcow2: Compression type incompatible feature bit must not be set")
	}
	if enc, err := o.Object("encrypt"); err != nil {
		return err
	} else if enc != nil && h.cryptMethod == 0 {
		f, _, _ := enc.String("format")
		return fmt.Errorf("No encryption in image header, but options specified format '%s'", f)
	}
	if h.cryptMethod != 0 {
		return fmt.Errorf("Unsupported encryption method %d", h.cryptMethod)
	}

	d.h = h
	d.cb = uint(h.clusterBits)
	d.cs = h.clusterSize()
	d.l2n = d.cs / 8
	d.rcBits = 1 << h.refcountOrder
	d.rbn = d.cs * 8 / int64(d.rcBits)
	d.hdrUsed = h.extensionsEnd
	if h.backingOff != 0 {
		d.hdrUsed = int(h.backingOff) + int(h.backingSize)
	}

	if h.refTableCluster == 0 {
		return errors.New("Image does not contain a reference count table")
	}
	if int64(h.refTableCluster)*d.cs > maxRefTableBytes {
		return errors.New("Reference count table too large")
	}
	if h.refTableOff&uint64(d.cs-1) != 0 || h.refTableOff > 1<<56 {
		return errors.New("Reference count table offset invalid")
	}
	if h.nbSnapshots > 0 && (h.snapshotsOff&uint64(d.cs-1) != 0 || h.snapshotsOff > 1<<56) {
		return errors.New("Snapshot table offset invalid")
	}
	// QEMU refuses a size whose L1 index does not fit in an int; a
	// size that fits but exceeds the L1 table is "too small" below.
	need, ok := l1Needed(h.size, d.cs)
	if !ok || need > math.MaxInt32 {
		return errors.New("Image is too big")
	}
	if int64(h.l1Size)*8 > maxL1Bytes {
		return errors.New("Active L1 table too large")
	}
	if int64(h.l1Size) < need {
		return errors.New("L1 table is too small")
	}
	if h.l1Size > 0 && (h.l1Off&uint64(d.cs-1) != 0 || h.l1Off > 1<<56) {
		return errors.New("Active L1 table offset invalid")
	}
	if h.nbSnapshots > 0 && !d.ro {
		return errNoSnapshots
	}

	lazy := h.compat&compatLazyRefcounts != 0
	if d.lazy, err = o.Bool("lazy-refcounts", lazy); err != nil {
		return err
	}
	if d.lazy && h.version < 3 {
		return errors.New("Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level")
	}
	if d.passReq, err = o.Bool("pass-discard-request", true); err != nil {
		return err
	}
	if d.passOther, err = o.Bool("pass-discard-other", false); err != nil {
		return err
	}
	if d.olCheck, err = parseOverlapCheck(o); err != nil {
		return err
	}
	nl2, nrb, err := cacheSizes(o, d.cs, h.size)
	if err != nil {
		return err
	}
	d.l2c, d.rbc = newTableCache(nl2), newTableCache(nrb)

	l1buf := make([]byte, int64(h.l1Size)*8)
	if err := d.readAt(ctx, int64(h.l1Off), l1buf); err != nil {
		return fmt.Errorf("Could not read L1 table: %s", blockdev.Strerror(err))
	}
	d.l1 = make([]uint64, h.l1Size)
	for i := range d.l1 {
		d.l1[i] = binary.BigEndian.Uint64(l1buf[8*i:])
	}
	rtbuf := make([]byte, int64(h.refTableCluster)*d.cs)
	d.file.DebugEvent(blockdev.DbgReftableLoad)
	if err := d.readAt(ctx, int64(h.refTableOff), rtbuf); err != nil {
		return fmt.Errorf("Could not initialize refcount handling: %s", blockdev.Strerror(err))
	}
	d.rt = make([]uint64, len(rtbuf)/8)
	for i := range d.rt {
		d.rt[i] = binary.BigEndian.Uint64(rtbuf[8*i:])
	}
	d.olRebuild()
	if err := d.readBitmapDir(ctx); err != nil {
		return err
	}

	if ctx, err = d.enterChain(ctx); err != nil {
		return err
	}
	if d.backing, err = oc.OpenBacking(ctx, h.backingFile, h.backingFmt); err != nil {
		return err
	}
	// Corruption found at run time becomes BLOCK_IMAGE_CORRUPTED.
	d.OnCorrupt(oc.Node().ReportCorruption)
	d.warn = oc.Node().Warn
	if h.bitmapsIgnored {
		msg := "a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent"
		if h.version < 3 {
			msg = "This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent"
		}
		d.warn(msg+". Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.", nil)
	}
	if err := d.loadBitmaps(ctx, oc); err != nil {
		return err
	}

	if d.ro {
		return nil
	}
	if h.incompat&incDirty != 0 {
		if err := d.rebuildRefcounts(ctx); err != nil {
			return fmt.Errorf("Could not repair dirty image: %w", err)
		}
		if err := d.setIncompat(ctx, h.incompat&^incDirty); err != nil {
			return err
		}
	}
	if h.autoclear&^d.autoclearKept() != 0 {
		// Auto-clear features this driver does not maintain must be
		// cleared before writing.
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], h.autoclear&d.autoclearKept())
		if err := file.Write(ctx, offAutoclear, b[:], 0); err != nil {
			return err
		}
		h.autoclear &= d.autoclearKept()
	}
	return d.markBitmapsInUse(ctx)
}

// l1Needed is the number of L1 entries a disk of size bytes needs; ok is
// false when the size overflows.
func l1Needed(size uint64, cs int64) (int64, bool) {
	if size > 1<<62 {
		return 0, false
	}
	perL1 := uint64(cs) * uint64(cs/8)
	return int64((size + perL1 - 1) / perL1), true
}

type openingKey struct{}

// enterChain refuses to open an image that is already being opened
// further up the current backing chain (a backing loop, which image
// locking catches only when the top is writable), and returns ctx with
// this image added to the chain. Images are told apart by device and
// inode; one whose file is not a local file is not checked.
func (d *Driver) enterChain(ctx context.Context) (context.Context, error) {
	path := d.file.Node().Filename()
	if path == "" || strings.HasPrefix(path, "json:") {
		return ctx, nil
	}
	self, err := os.Stat(path)
	if err != nil {
		return ctx, nil
	}
	above, _ := ctx.Value(openingKey{}).([]os.FileInfo)
	for _, fi := range above {
		if os.SameFile(fi, self) {
			return ctx, fmt.Errorf("qcow2 backing loop: %s is part of its own backing chain", path)
		}
	}
	return context.WithValue(ctx, openingKey{}, append(append([]os.FileInfo(nil), above...), self)), nil
}
