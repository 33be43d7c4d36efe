package qcow2

import (
	"bytes"
	"compress/flate"
	"context"
	"fmt"
	"io"
	"sync"
	"syscall"

	kflate "github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"

	"github.com/qbmond/qbmond/blockdev"
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
	d.file.DebugEvent(blockdev.DbgReadCompressed)
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

// WritesCompressed: a write with ReqCompressed stores whole clusters
// compressed, as QEMU's qcow2_co_pwritev_compressed does.
func (d *Driver) WritesCompressed() {}

// SupportedWriteFlags: ReqCompressed reaches the driver; the node emulates
// FUA with a flush.
func (d *Driver) SupportedWriteFlags() blockdev.ReqFlags { return blockdev.ReqCompressed }

// zlibWindow is the window QEMU's qcow2 inflates compressed clusters with
// (2^12 bytes): a stream may not refer further back than that.
const zlibWindow = 4096

var zstdEncoder = sync.OnceValues(func() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
})

// compressCluster compresses a cluster with the image's compression type;
// ok is false when the result would not be smaller than a cluster (QEMU
// then writes the cluster as it is).
func (d *Driver) compressCluster(in []byte) (out []byte, ok bool, err error) {
	if d.h.compressionType == 1 {
		enc, err := zstdEncoder()
		if err != nil {
			return nil, false, err
		}
		out = enc.EncodeAll(in, nil)
	} else {
		var b bytes.Buffer
		w, err := kflate.NewWriterWindow(&b, zlibWindow)
		if err != nil {
			return nil, false, err
		}
		if _, err := w.Write(in); err != nil {
			return nil, false, err
		}
		if err := w.Close(); err != nil {
			return nil, false, err
		}
		out = b.Bytes()
	}
	return out, int64(len(out)) < d.cs, nil
}

// writeCompressed writes whole clusters (the image's last one may be
// short) compressed into clusters not allocated before.
func (d *Driver) writeCompressed(ctx context.Context, off int64, p []byte) error {
	if err := d.beforeChange(ctx); err != nil {
		return err
	}
	if off&(d.cs-1) != 0 {
		return fmt.Errorf("compressed write at %d: not cluster-aligned: %w", off, syscall.EINVAL)
	}
	for len(p) > 0 {
		n := min(int64(len(p)), d.cs)
		if n < d.cs && off+n != d.virtualSize() {
			return fmt.Errorf("compressed write of %d bytes at %d: not a whole cluster: %w", n, off, syscall.EINVAL)
		}
		if err := d.writeOneCompressed(ctx, off, p[:n]); err != nil {
			return err
		}
		off, p = off+n, p[n:]
	}
	return nil
}

func (d *Driver) writeOneCompressed(ctx context.Context, off int64, data []byte) error {
	in := data
	if int64(len(in)) < d.cs { // the image's short last cluster: padded
		in = make([]byte, d.cs)
		copy(in, data)
	}
	out, ok, err := d.compressCluster(in)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	vc := off >> d.cb
	d.waitFlights(vc, vc+1)
	if err := d.maybeSync(ctx); err != nil {
		return err
	}
	if !ok {
		return d.writeLocked(ctx, off, data)
	}
	if _, _, err := d.ensureL2(ctx, vc/d.l2n); err != nil {
		return err
	}
	e, err := d.entry(ctx, vc)
	if err != nil {
		return err
	}
	if e&(offsetMask|flagCompressed) != 0 {
		// Compression cannot overwrite anything (QEMU fails alike).
		return fmt.Errorf("compressed write over an allocated cluster at %d: %w", off, syscall.EIO)
	}
	host, err := d.allocBytes(ctx, int64(len(out)))
	if err != nil {
		return err
	}
	d.file.DebugEvent(blockdev.DbgL2UpdateCompressed)
	if err := d.preWrite(ctx, 0, host, int64(len(out))); err != nil {
		return err
	}
	d.file.DebugEvent("write_compressed")
	if err := d.file.Write(ctx, host, out, 0); err != nil {
		return err
	}
	x := 62 - (d.cb - 8)
	sectors := (host+int64(len(out))-1)>>9 - host>>9 + 1
	ne := flagCompressed | uint64(sectors-1)<<x | uint64(host)
	tbl, tblOff, err := d.l2Table(ctx, vc/d.l2n)
	if err != nil {
		return err
	}
	return d.writeEntries(ctx, tbl, tblOff, vc%d.l2n, []uint64{ne})
}

// allocBytes finds size bytes (at most a cluster) for compressed data:
// after the previous compressed cluster's data when they fit there (or
// run on into the next host cluster, when that is the one allocated
// next), else in a new cluster. Every host cluster the bytes touch
// counts one more reference (QEMU's qcow2_alloc_bytes).
func (d *Driver) allocBytes(ctx context.Context, size int64) (int64, error) {
	d.file.DebugEvent(blockdev.DbgClusterAllocBytes)
	off := d.freeByte
	if off != 0 {
		rc, err := d.refcount(ctx, off/d.cs)
		if err != nil {
			return 0, err
		}
		if rc == 0 || rc >= d.rcMax() {
			off = 0 // freed meanwhile, or no reference left to count
		}
	}
	free := d.cs - off&(d.cs-1)
	switch {
	case off != 0 && free >= size:
		if err := d.addRefcount(ctx, off/d.cs, 1, 1, false); err != nil {
			return 0, err
		}
	default:
		d.allocFor(olForData, 0, size)     // checked before it is counted
		nc, err := d.allocClusters(ctx, 1) // counts its reference
		if err != nil {
			return 0, err
		}
		if off != 0 && (off|(d.cs-1))+1 == nc {
			// Runs on from the partly used cluster into the new one.
			if err := d.addRefcount(ctx, off/d.cs, 1, 1, false); err != nil {
				return 0, err
			}
		} else {
			off = nc
		}
	}
	d.freeByte = off + size
	if d.freeByte&(d.cs-1) == 0 {
		d.freeByte = 0
	}
	return off, nil
}
