package bitmap

import (
	"encoding/binary"
	"unsafe"
)

// Fill builds a bitmap of size bytes and the given granularity whose bits
// fill writes in QBM's file layout (see MarshalBits) into the slice it is
// given, of exactly ceil(granules/8) bytes and cleared beforehand; bits past
// the last granule are ignored. It is UnmarshalBits without the copy, for
// loaders that read the bits from a file in pieces (qcow2's bitmap
// clusters).
//
// unsafe: on a little-endian machine the file layout is the bit words'
// memory layout, so fill writes into the new bitmap's words themselves,
// which nothing else can see before Fill returns. Elsewhere the bits go
// through a buffer and UnmarshalBits.
func Fill(size int64, granularity uint64, fill func(bits []byte) error) (*Bitmap, error) {
	b, err := New(size, granularity)
	if err != nil {
		return nil, err
	}
	need := int((b.nbits + 7) / 8)
	if !littleEndian {
		data := make([]byte, need)
		if err := fill(data); err != nil {
			return nil, err
		}
		return UnmarshalBits(size, granularity, data)
	}
	words := b.levels[0]
	view := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), len(words)*8)
	if err := fill(view[:need]); err != nil {
		return nil, err
	}
	if tail := b.nbits & 63; tail != 0 {
		last := &words[b.nbits>>6]
		last.Store(last.Load() & (1<<tail - 1))
	}
	b.recount()
	b.rebuildSummaries()
	return b, nil
}

var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1
