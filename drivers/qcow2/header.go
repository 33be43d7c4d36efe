package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// On-disk constants of the qcow2 format (docs/interop/qcow2.txt).
const (
	magic = 0x514649fb // "QFI\xfb"

	v2HeaderLen = 72
	v3HeaderLen = 104 // minimum; QEMU writes 112 (compression type + padding)

	minClusterBits = 9
	maxClusterBits = 21 // QEMU's implementation limit of 2 MiB

	// Incompatible feature bits.
	incDirty       = 1 << 0
	incCorrupt     = 1 << 1
	incDataFile    = 1 << 2
	incCompression = 1 << 3
	incExtendedL2  = 1 << 4
	// incKnown are the incompatible bits this driver implements.
	incKnown = incDirty | incCorrupt | incCompression

	// Compatible feature bits.
	compatLazyRefcounts = 1 << 0

	// Header extension types.
	extEnd        = 0x00000000
	extBackingFmt = 0xe2792aca
	extFeatures   = 0x6803f857

	// QEMU's limits on table sizes.
	maxL1Bytes       = 32 << 20
	maxRefTableBytes = 8 << 20
	maxBackingName   = 1023

	// Offsets of header fields rewritten in place.
	offSize       = 24
	offL1Size     = 36
	offRefTable   = 48
	offIncompat   = 72
	offAutoclear  = 88
	offCompressTy = 104
)

// featureName is one entry of the feature name table extension.
type featureName struct {
	kind uint8 // 0 incompatible, 1 compatible, 2 autoclear
	bit  uint8
	name string
}

// defaultFeatures is the table QEMU 7.2 writes into new v3 images.
var defaultFeatures = []featureName{
	{0, 0, "dirty bit"},
	{0, 1, "corrupt bit"},
	{0, 2, "external data file"},
	{0, 3, "compression type"},
	{0, 4, "extended L2 entries"},
	{1, 0, "lazy refcounts"},
	{2, 0, "bitmaps"},
	{2, 1, "raw external data"},
}

// extension is a header extension this driver does not interpret, kept
// verbatim for header rewrites.
type extension struct {
	typ  uint32
	data []byte
}

// header is the parsed image header with its extensions.
type header struct {
	version         uint32
	backingOff      uint64
	backingSize     uint32
	clusterBits     uint32
	size            uint64
	cryptMethod     uint32
	l1Size          uint32
	l1Off           uint64
	refTableOff     uint64
	refTableCluster uint32
	nbSnapshots     uint32
	snapshotsOff    uint64
	incompat        uint64
	compat          uint64
	autoclear       uint64
	refcountOrder   uint32
	headerLen       uint32
	compressionType uint8
	// extra holds the header bytes past the compression type up to
	// headerLen (padding and fields this driver does not know).
	extra []byte

	backingFile   string
	backingFmt    string
	hasFeatures   bool
	features      []featureName
	unknown       []extension
	extensionsEnd int // end of the extension area as read
	// bitmaps is the bitmaps extension (nil: none, or ignored because
	// the auto-clear bit says a program without bitmap support wrote the
	// image since; bitmapsIgnored then tells it).
	bitmaps        *bitmapExt
	bitmapsIgnored bool
}

func (h *header) clusterSize() int64 { return 1 << h.clusterBits }

// parseHeader decodes the first cluster of an image. buf holds at least the
// first cluster's worth of bytes that exist (zero-filled past the file's
// end, as QEMU reads them). fileLen is the image file's length.
func parseHeader(buf []byte) (*header, error) {
	if len(buf) < v3HeaderLen+8 {
		nb := make([]byte, v3HeaderLen+8)
		copy(nb, buf)
		buf = nb
	}
	be := binary.BigEndian
	if be.Uint32(buf[0:]) != magic {
		return nil, errors.New("Image is not in qcow2 format")
	}
	h := &header{
		version:         be.Uint32(buf[4:]),
		backingOff:      be.Uint64(buf[8:]),
		backingSize:     be.Uint32(buf[16:]),
		clusterBits:     be.Uint32(buf[20:]),
		size:            be.Uint64(buf[24:]),
		cryptMethod:     be.Uint32(buf[32:]),
		l1Size:          be.Uint32(buf[36:]),
		l1Off:           be.Uint64(buf[40:]),
		refTableOff:     be.Uint64(buf[48:]),
		refTableCluster: be.Uint32(buf[56:]),
		nbSnapshots:     be.Uint32(buf[60:]),
		snapshotsOff:    be.Uint64(buf[64:]),
	}
	if h.version < 2 || h.version > 3 {
		return nil, fmt.Errorf("Unsupported qcow2 version %d", h.version)
	}
	if h.clusterBits < minClusterBits || h.clusterBits > maxClusterBits {
		return nil, fmt.Errorf("Unsupported cluster size: 2^%d", h.clusterBits)
	}
	cs := h.clusterSize()
	if h.version == 2 {
		h.refcountOrder = 4
		h.headerLen = v2HeaderLen
	} else {
		h.incompat = be.Uint64(buf[72:])
		h.compat = be.Uint64(buf[80:])
		h.autoclear = be.Uint64(buf[88:])
		h.refcountOrder = be.Uint32(buf[96:])
		h.headerLen = be.Uint32(buf[100:])
		if h.headerLen < v3HeaderLen {
			return nil, errors.New("qcow2 header too short")
		}
		if int64(h.headerLen) > cs {
			return nil, errors.New("qcow2 header exceeds cluster size")
		}
	}
	if len(buf) < int(cs) {
		nb := make([]byte, cs)
		copy(nb, buf)
		buf = nb
	}
	buf = buf[:cs]
	if h.headerLen > v3HeaderLen {
		h.compressionType = buf[offCompressTy]
		h.extra = append([]byte(nil), buf[v3HeaderLen+1:h.headerLen]...)
	}
	if h.backingOff > uint64(cs) {
		return nil, errors.New("Invalid backing file offset")
	}

	// Extensions run from the end of the header to the backing file name
	// (or the end of the cluster).
	end := int(cs)
	if h.backingOff != 0 {
		end = int(h.backingOff)
	}
	off := int(h.headerLen)
	for {
		if off+8 > end {
			// No room for an end marker: QEMU stops here too.
			break
		}
		typ, l := be.Uint32(buf[off:]), be.Uint32(buf[off+4:])
		off += 8
		if typ == extEnd {
			break
		}
		if uint64(l) > uint64(end-off) {
			return nil, errors.New("Header extension too large")
		}
		data := buf[off : off+int(l)]
		switch typ {
		case extBackingFmt:
			h.backingFmt = string(data)
		case extFeatures:
			h.hasFeatures = true
			for i := 0; i+48 <= len(data); i += 48 {
				name := data[i+2 : i+48]
				if j := strings.IndexByte(string(name), 0); j >= 0 {
					name = name[:j]
				}
				h.features = append(h.features, featureName{data[i], data[i+1], string(name)})
			}
		case extBitmaps:
			if len(data) != bitmapExtLen {
				return nil, errors.New("bitmaps_ext: Invalid extension length")
			}
			if h.autoclear&autoclearBitmaps == 0 {
				h.bitmapsIgnored = true
				break
			}
			e, err := parseBitmapExt(data, cs)
			if err != nil {
				return nil, err
			}
			h.bitmaps = &e
		default:
			h.unknown = append(h.unknown, extension{typ, append([]byte(nil), data...)})
		}
		off += (int(l) + 7) &^ 7
	}
	h.extensionsEnd = min(off, end)

	if h.backingOff != 0 {
		if h.backingSize > maxBackingName || uint64(h.backingSize) > uint64(cs)-h.backingOff {
			return nil, errors.New("Backing file name too long")
		}
		h.backingFile = string(buf[h.backingOff : h.backingOff+uint64(h.backingSize)])
	}
	return h, nil
}

// featureText names the feature bits of one kind as QEMU's "Unsupported
// qcow2 feature(s)" message does: from the image's table, else the
// defaults, else "Unknown incompatible feature: <hex>".
func (h *header) featureText(kind uint8, bits uint64) string {
	var parts []string
	for bit := range 64 {
		if bits&(1<<bit) == 0 {
			continue
		}
		name := ""
		for _, tab := range [][]featureName{h.features, defaultFeatures} {
			for _, f := range tab {
				if f.kind == kind && int(f.bit) == bit {
					name = f.name
					break
				}
			}
			if name != "" {
				break
			}
		}
		if name == "" {
			kinds := [...]string{"incompatible", "compatible", "autoclear"}
			name = fmt.Sprintf("Unknown %s feature: %x", kinds[kind], uint64(1)<<bit)
		}
		parts = append(parts, name)
	}
	return strings.Join(parts, ", ")
}

// encode serialises the header, its extensions and the backing file name
// into a buffer no longer than the cluster size. It updates backingOff and
// backingSize.
func (h *header) encode() ([]byte, error) {
	be := binary.BigEndian
	hl := int(h.headerLen)
	if h.version == 2 {
		hl = v2HeaderLen
	}
	buf := make([]byte, hl, 1024)
	be.PutUint32(buf[0:], magic)
	be.PutUint32(buf[4:], h.version)
	be.PutUint32(buf[20:], h.clusterBits)
	be.PutUint64(buf[24:], h.size)
	be.PutUint32(buf[32:], h.cryptMethod)
	be.PutUint32(buf[36:], h.l1Size)
	be.PutUint64(buf[40:], h.l1Off)
	be.PutUint64(buf[48:], h.refTableOff)
	be.PutUint32(buf[56:], h.refTableCluster)
	be.PutUint32(buf[60:], h.nbSnapshots)
	be.PutUint64(buf[64:], h.snapshotsOff)
	if h.version >= 3 {
		be.PutUint64(buf[72:], h.incompat)
		be.PutUint64(buf[80:], h.compat)
		be.PutUint64(buf[88:], h.autoclear)
		be.PutUint32(buf[96:], h.refcountOrder)
		be.PutUint32(buf[100:], h.headerLen)
		if hl > v3HeaderLen {
			buf[offCompressTy] = h.compressionType
			copy(buf[v3HeaderLen+1:], h.extra)
		}
	}
	addExt := func(typ uint32, data []byte) {
		var hd [8]byte
		be.PutUint32(hd[0:], typ)
		be.PutUint32(hd[4:], uint32(len(data)))
		buf = append(buf, hd[:]...)
		buf = append(buf, data...)
		for len(buf)%8 != 0 {
			buf = append(buf, 0)
		}
	}
	if h.backingFmt != "" {
		addExt(extBackingFmt, []byte(h.backingFmt))
	}
	if h.hasFeatures {
		tab := make([]byte, 48*len(h.features))
		for i, f := range h.features {
			tab[48*i] = f.kind
			tab[48*i+1] = f.bit
			copy(tab[48*i+2:48*i+48], f.name)
		}
		addExt(extFeatures, tab)
	}
	if h.bitmaps != nil {
		addExt(extBitmaps, h.bitmaps.encode())
	}
	for _, e := range h.unknown {
		addExt(e.typ, e.data)
	}
	addExt(extEnd, nil)
	h.backingOff, h.backingSize = 0, 0
	if h.backingFile != "" {
		h.backingOff = uint64(len(buf))
		h.backingSize = uint32(len(h.backingFile))
		buf = append(buf, h.backingFile...)
	}
	be.PutUint64(buf[8:], h.backingOff)
	be.PutUint32(buf[16:], h.backingSize)
	if int64(len(buf)) > h.clusterSize() {
		return nil, errors.New("Header too large for the first cluster")
	}
	return buf, nil
}
