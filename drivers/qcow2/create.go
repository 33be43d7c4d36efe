package qcow2

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/qbmond/qbmond/blockdev"
)

// createOptions are BlockdevCreateOptionsQcow2, checked.
type createOptions struct {
	size        int64
	version     uint32
	clusterBits uint
	refcountOrd uint32
	lazy        bool
	backingFile string
	backingFmt  string
	prealloc    bool
	zstd        bool
}

func parseCreateOptions(o blockdev.Options) (*createOptions, error) {
	co := &createOptions{version: 3}
	var err error
	var ok bool
	if co.size, ok, err = o.Int("size"); err != nil {
		return nil, err
	} else if !ok {
		return nil, errors.New("Parameter 'size' is missing")
	}
	if co.size < 0 || co.size%512 != 0 {
		return nil, errors.New("Image size must be a multiple of 512 bytes")
	}
	if v, ok, err := o.String("version"); err != nil {
		return nil, err
	} else if ok && v == "v2" {
		co.version = 2
	}
	cs := int64(65536)
	if v, ok, err := o.Int("cluster-size"); err != nil {
		return nil, err
	} else if ok {
		cs = v
	}
	if cs < 1<<minClusterBits || cs > 1<<maxClusterBits || cs&(cs-1) != 0 {
		return nil, errors.New("Cluster size must be a power of two between 512 and 2048k")
	}
	for co.clusterBits = 0; int64(1)<<co.clusterBits < cs; co.clusterBits++ {
	}
	if ext, err := o.Bool("extended-l2", false); err != nil {
		return nil, err
	} else if ext {
		return nil, errors.New("Unsupported qcow2 feature(s): extended L2 entries")
	}
	bits := int64(16)
	if v, ok, err := o.Int("refcount-bits"); err != nil {
		return nil, err
	} else if ok {
		bits = v
	}
	if bits < 1 || bits > 64 || bits&(bits-1) != 0 {
		return nil, errors.New("Refcount width must be a power of two and may not exceed 64 bits")
	}
	if co.version < 3 && bits != 16 {
		return nil, errors.New("Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)")
	}
	for int64(1)<<co.refcountOrd < bits {
		co.refcountOrd++
	}
	if co.backingFile, _, err = o.String("backing-file"); err != nil {
		return nil, err
	}
	if co.backingFmt, _, err = o.String("backing-fmt"); err != nil {
		return nil, err
	}
	if len(co.backingFile) > maxBackingName {
		return nil, errors.New("Backing file name too long")
	}
	prealloc, _, err := o.String("preallocation")
	if err != nil {
		return nil, err
	}
	switch prealloc {
	case "", "off":
	case "metadata":
		co.prealloc = true
	default:
		return nil, fmt.Errorf("Unsupported preallocation mode: %s", prealloc)
	}
	if co.backingFile != "" && co.prealloc {
		return nil, errors.New("Backing file and preallocation can only be used at the same time if extended_l2 is on")
	}
	if co.backingFmt != "" && co.backingFile == "" {
		return nil, errors.New("Backing format cannot be used without backing file")
	}
	if co.lazy, err = o.Bool("lazy-refcounts", false); err != nil {
		return nil, err
	}
	if co.lazy && co.version < 3 {
		return nil, errors.New("Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)")
	}
	raw, err := o.Bool("data-file-raw", false)
	if err != nil {
		return nil, err
	}
	if o.Has("data-file") {
		return nil, errors.New("qcow2 images with an external data file are not supported")
	}
	if raw {
		return nil, errors.New("data-file-raw requires data-file")
	}
	if ct, _, err := o.String("compression-type"); err != nil {
		return nil, err
	} else if ct == "zstd" {
		if co.version < 3 {
			return nil, errors.New("Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)")
		}
		co.zstd = true
	}
	if o.Has("encrypt") {
		return nil, errors.New("Encrypted qcow2 images are not supported")
	}
	return co, nil
}

// create is blockdev-create for qcow2: it writes an empty image (the
// layout QEMU uses: header, refcount table, refcount blocks, L1 table and,
// with preallocation=metadata, L2 tables and data clusters) into the file
// node, which it truncates first.
func create(ctx context.Context, cc *blockdev.CreateContext) error {
	co, err := parseCreateOptions(cc.Options())
	if err != nil {
		return err
	}
	if co.size > blockdev.MaxLength {
		// QEMU creates the image empty, then resizes it, which the
		// block layer's length limit refuses.
		return fmt.Errorf("Could not resize image: offset(%d) exceeds maximum(%d)", co.size, int64(blockdev.MaxLength))
	}
	cs := int64(1) << co.clusterBits
	l1n, ok := l1Needed(uint64(co.size), cs)
	if !ok || l1n*8 > maxL1Bytes {
		return errors.New("Could not resize image: Failed to grow the L1 table: File too large")
	}
	l1c := (l1n*8 + cs - 1) / cs
	var nL2, nData int64
	if co.prealloc {
		nL2, nData = l1n, (co.size+cs-1)/cs
	}
	d := &Driver{rcBits: 1 << co.refcountOrd, cs: cs}
	d.rbn = cs * 8 / int64(d.rcBits)
	fixed := 1 + l1c + nL2 + nData
	var nb, tc int64 = 1, 1
	for {
		nb2 := (fixed + tc + nb + d.rbn - 1) / d.rbn
		tc2 := max(1, (nb2*8+cs-1)/cs)
		if nb2 == nb && tc2 == tc {
			break
		}
		nb, tc = nb2, tc2
	}
	if tc*cs > maxRefTableBytes {
		return errors.New("Could not resize image: Reference count table too large")
	}
	total := fixed + tc + nb
	rtOff := cs
	rbOff := rtOff + tc*cs
	l1Off := rbOff + nb*cs
	l2Off := l1Off + l1c*cs
	dataOff := l2Off + nL2*cs

	h := &header{
		version:         co.version,
		clusterBits:     uint32(co.clusterBits),
		size:            uint64(co.size),
		l1Size:          uint32(l1n),
		refTableOff:     uint64(rtOff),
		refTableCluster: uint32(tc),
		refcountOrder:   co.refcountOrd,
		headerLen:       v2HeaderLen,
		backingFile:     co.backingFile,
		backingFmt:      co.backingFmt,
	}
	if l1n > 0 {
		h.l1Off = uint64(l1Off)
	}
	if co.version >= 3 {
		h.headerLen = v3HeaderLen + 8
		h.extra = make([]byte, 7)
		if co.lazy {
			h.compat |= compatLazyRefcounts
		}
		if co.zstd {
			h.incompat |= incCompression
			h.compressionType = 1
		}
		// The feature name table, when it fits beside the rest.
		h.hasFeatures, h.features = true, defaultFeatures
		if b, err := h.encode(); err != nil || int64(len(b)) >= cs {
			h.hasFeatures, h.features = false, nil
		}
	}
	hdr, err := h.encode()
	if err != nil {
		return err
	}

	c, err := cc.OpenChild(ctx, "file")
	if err != nil {
		return err
	}
	// Like QSD, blockdev-create replies once the target is open; the
	// image is written in the background.
	blockdev.Background(ctx)
	if err := c.Truncate(ctx, 0, false); err != nil {
		return fmt.Errorf("Could not resize image: %w", err)
	}
	length := l1Off + l1n*8
	switch {
	case co.prealloc:
		length = total * cs
	case l1n == 0:
		length = l1Off
	}
	if err := c.Truncate(ctx, length, false); err != nil {
		return fmt.Errorf("Could not resize image: %w", err)
	}

	rt := make([]byte, tc*cs)
	for i := range nb {
		binary.BigEndian.PutUint64(rt[8*i:], uint64(rbOff+i*cs))
	}
	rb := make([]byte, nb*cs)
	for cl := range total {
		d.rcSet(rb[cl/d.rbn*cs:], cl%d.rbn, 1)
	}
	writes := []struct {
		off  int64
		data []byte
	}{{rtOff, rt}, {rbOff, rb}}
	if co.prealloc {
		l1 := make([]byte, l1n*8)
		l2 := make([]byte, nL2*cs)
		for i := range nL2 {
			binary.BigEndian.PutUint64(l1[8*i:], uint64(l2Off+i*cs)|flagCopied)
		}
		for i := range nData {
			binary.BigEndian.PutUint64(l2[8*i:], uint64(dataOff+i*cs)|flagCopied)
		}
		writes = append(writes, struct {
			off  int64
			data []byte
		}{l1Off, l1}, struct {
			off  int64
			data []byte
		}{l2Off, l2})
	}
	for _, w := range writes {
		if err := c.Write(ctx, w.off, w.data, 0); err != nil {
			return fmt.Errorf("Could not write qcow2 header: %w", err)
		}
	}
	// The header last: until it is there the file is no qcow2 image.
	if err := c.Write(ctx, 0, hdr, 0); err != nil {
		return fmt.Errorf("Could not write qcow2 header: %w", err)
	}
	return c.Flush(ctx)
}
