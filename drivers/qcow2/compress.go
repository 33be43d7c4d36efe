package qcow2

import (
	"bytes"
	"compress/flate"
	"context"
	"fmt"
	"io"
	"syscall"

	"github.com/klauspost/compress/zstd"
)

// compressedRange decodes a compressed cluster descriptor: the offset of
// the compressed data in the image file and its length (whole 512-byte
// sectors from the one holding the offset, minus the offset into it).
func (d *Driver) compressedRange(e uint64) (int64, int64) {
	x := 62 - (d.cb - 8)
	off := int64(e & (1<<x - 1))
	sectors := int64(e>>x&(1<<(d.cb-8)-1)) + 1
	return off, sectors*512 - off&511
}

type zstdDecoder = zstd.Decoder

// decompress returns the guest data of a compressed cluster.
func (d *Driver) decompress(ctx context.Context, e uint64) ([]byte, error) {
	off, size := d.compressedRange(e)
	in := make([]byte, size)
	if err := d.readAt(ctx, off, in); err != nil {
		return nil, err
	}
	out := make([]byte, d.cs)
	var err error
	if d.h.compressionType == 1 {
		err = d.unzstd(in, out)
	} else {
		r := flate.NewReader(bytes.NewReader(in))
		_, err = io.ReadFull(r, out)
		r.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("Could not decompress cluster at offset %s: %v: %w", cx(uint64(off)), err, syscall.EIO)
	}
	return out, nil
}

// unzstd decodes one zstd frame into out (a cluster), reusing decoders.
func (d *Driver) unzstd(in, out []byte) error {
	d.decoderMu.Lock()
	var dec *zstd.Decoder
	if n := len(d.decoders); n > 0 {
		dec, d.decoders = d.decoders[n-1], d.decoders[:n-1]
	}
	d.decoderMu.Unlock()
	var err error
	if dec == nil {
		dec, err = zstd.NewReader(bytes.NewReader(in), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(len(out))*2+1<<20))
	} else {
		err = dec.Reset(bytes.NewReader(in))
	}
	if err != nil {
		return err
	}
	_, err = io.ReadFull(dec, out)
	d.decoderMu.Lock()
	d.decoders = append(d.decoders, dec)
	d.decoderMu.Unlock()
	return err
}

// closeDecoders releases pooled zstd decoders.
func (d *Driver) closeDecoders() {
	d.decoderMu.Lock()
	defer d.decoderMu.Unlock()
	for _, dec := range d.decoders {
		dec.Close()
	}
	d.decoders = nil
}
