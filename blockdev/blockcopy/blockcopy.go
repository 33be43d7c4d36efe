// Package blockcopy is block-copy, the copy engine of the backup job and
// the copy-before-write filter: a State copies a source's clusters to a
// target once each, whoever asks first, and keeps the copy bitmap of what
// is still to be copied. It is built on blockdev's exported I/O entry
// points (Child.Read/Write/WriteZeroes, Node.BlockStatusAbove,
// blockdev.CopyRange) and takes no graph lock; the graph knows nothing of
// it.
package blockcopy

import (
	"context"
	"errors"
	"sync"

	"github.com/qbmond/qbmond/bitmap"
	"github.com/qbmond/qbmond/blockdev"
)

// State copies a source node's data to a target node cluster by
// cluster, as QEMU's block-copy does for backup: a copy bitmap says which
// clusters are still to be copied, and a copy clears their bits. The
// copy-before-write filter copies the clusters a guest write is about to
// change, the backup job copies the rest in the background, and the two
// never copy one cluster at the same time: a copy waits for the copies in
// flight of its clusters, and a cluster copied once is not copied again.
//
// What reads as zeroes in the source is written as zeroes (may-unmap) to
// the target; data goes by copy offload where both ends are files, else
// through a buffer.
type State struct {
	src, dst *blockdev.Child
	cluster  int64
	length   int64
	bits     *bitmap.Bitmap

	mu       sync.Mutex
	inflight map[int64]chan struct{} // first cluster of a run in flight -> done
	runs     map[int64]int64         // first cluster -> clusters in the run

	progress func(n int64)
	broken   error // set by Break: the copy is no longer a point in time
	compress bool  // data goes cluster by cluster, compressed, never offloaded
}

// SetCompress has the data written compressed (backup's compress): one
// cluster per write, through a buffer.
func (bc *State) SetCompress() {
	bc.mu.Lock()
	bc.compress = true
	bc.mu.Unlock()
}

// Break marks the copy as broken by err (copy-before-write with
// break-snapshot): Copy fails with err from now on.
func (bc *State) Break(err error) {
	bc.mu.Lock()
	if bc.broken == nil {
		bc.broken = err
	}
	bc.mu.Unlock()
}

// Broken returns the error Break recorded, if any.
func (bc *State) Broken() error {
	bc.mu.Lock()
	defer bc.mu.Unlock()
	return bc.broken
}

// MaxChunk bounds one copy of block-copy (QEMU copies up to 1 MiB at
// a time through a buffer).
const MaxChunk = 1 << 20

// New prepares copies from src to dst in clusters of cluster
// bytes over length bytes; every cluster starts to be copied (callers
// clear what needs none).
func New(src, dst *blockdev.Child, cluster, length int64) (*State, error) {
	bits, err := bitmap.New(length, uint64(cluster))
	if err != nil {
		return nil, err
	}
	bits.Set(0, length)
	return &State{src: src, dst: dst, cluster: cluster, length: length, bits: bits,
		inflight: map[int64]chan struct{}{}, runs: map[int64]int64{}}, nil
}

// ClusterSize returns the copy's cluster size.
func (bc *State) ClusterSize() int64 { return bc.cluster }

// Bitmap returns the copy bitmap (set: still to copy).
func (bc *State) Bitmap() *bitmap.Bitmap { return bc.bits }

// SetProgress has f told of every byte copied (the backup job's
// progress).
func (bc *State) SetProgress(f func(n int64)) {
	bc.mu.Lock()
	bc.progress = f
	bc.mu.Unlock()
}

// SourceError is an error of a copy's source (its target's errors come
// as TargetErrors): the backup job's on-source-error and on-target-error
// tell them apart.
type SourceError struct{ Err error }

func (e *SourceError) Error() string { return e.Err.Error() }
func (e *SourceError) Unwrap() error { return e.Err }

// Copy copies the clusters of [off, off+n) that are still to be copied,
// up to MaxChunk at a time. Clusters being copied by someone else are
// waited for. On an error the clusters of the failed copy stay to be
// copied.
func (bc *State) Copy(ctx context.Context, off, n int64) error {
	if err := bc.Broken(); err != nil {
		return err
	}
	start := off / bc.cluster * bc.cluster
	end := min((off+n+bc.cluster-1)/bc.cluster*bc.cluster, bc.length)
	for pos := start; pos < end; {
		d := bc.bits.NextDirty(pos, end-pos)
		if d < 0 {
			return nil
		}
		d = d / bc.cluster * bc.cluster
		runStart, runLen, wait := bc.claim(d, end)
		if wait != nil {
			select {
			case <-wait:
			case <-ctx.Done():
				return ctx.Err()
			}
			pos = d
			continue
		}
		err := bc.copyRun(ctx, runStart, runLen)
		bc.release(runStart, err == nil)
		if err != nil {
			return err
		}
		pos = runStart + runLen
	}
	return nil
}

// claim reserves the run of clusters to copy from d (dirty, not in
// flight, up to MaxChunk and end), or returns a channel to wait on
// when the cluster at d is in flight already.
func (bc *State) claim(d, end int64) (int64, int64, chan struct{}) {
	bc.mu.Lock()
	defer bc.mu.Unlock()
	if ch := bc.flightOf(d); ch != nil {
		return 0, 0, ch
	}
	if !bc.bits.Get(d) {
		return d, 0, nil // copied meanwhile
	}
	l := bc.cluster
	for d+l < end && l < MaxChunk && bc.bits.Get(d+l) && bc.flightOf(d+l) == nil {
		l += bc.cluster
	}
	l = min(l, bc.length-d)
	bc.inflight[d] = make(chan struct{})
	bc.runs[d] = l
	return d, l, nil
}

// flightOf returns the done channel of the copy in flight that covers
// the cluster at off, if any. bc.mu held.
func (bc *State) flightOf(off int64) chan struct{} {
	for s, ch := range bc.inflight {
		if off >= s && off < s+bc.runs[s] {
			return ch
		}
	}
	return nil
}

func (bc *State) release(start int64, done bool) {
	bc.mu.Lock()
	l := bc.runs[start]
	if done && l > 0 {
		bc.bits.Reset(start, l)
	}
	ch := bc.inflight[start]
	delete(bc.inflight, start)
	delete(bc.runs, start)
	progress := bc.progress
	bc.mu.Unlock()
	if ch != nil {
		close(ch)
	}
	if done && l > 0 && progress != nil {
		progress(l)
	}
}

// copyRun copies [off, off+n) of the source to the target.
func (bc *State) copyRun(ctx context.Context, off, n int64) error {
	if n == 0 {
		return nil
	}
	var buf []byte
	for end := off + n; off < end; {
		st, _, err := bc.src.Node().BlockStatusAbove(ctx, bc.src, off, end-off)
		if err != nil {
			return &SourceError{err}
		}
		k := min(max(st.Length, 1), end-off)
		if st.Flags&blockdev.StatusZero != 0 && st.Flags&blockdev.StatusData == 0 {
			if err := bc.dst.WriteZeroes(ctx, off, k, blockdev.ReqMayUnmap); err != nil {
				return &blockdev.TargetError{Err: err}
			}
		} else if bc.compress {
			if buf == nil {
				buf = make([]byte, n)
			}
			p := buf[:k]
			if err := bc.src.Read(ctx, off, p); err != nil {
				return &SourceError{err}
			}
			for i := int64(0); i < k; i += bc.cluster {
				if err := bc.dst.Write(ctx, off+i, p[i:min(k, i+bc.cluster)], blockdev.ReqCompressed); err != nil {
					return &blockdev.TargetError{Err: err}
				}
			}
		} else {
			ok, err := blockdev.CopyRange(ctx, bc.src, off, bc.dst, off, k)
			if err != nil {
				var te *blockdev.TargetError
				if errors.As(err, &te) {
					return err
				}
				return &SourceError{err}
			}
			if !ok {
				if buf == nil {
					buf = make([]byte, n)
				}
				p := buf[:k]
				if err := bc.src.Read(ctx, off, p); err != nil {
					return &SourceError{err}
				}
				if err := bc.dst.Write(ctx, off, p, 0); err != nil {
					return &blockdev.TargetError{Err: err}
				}
			}
		}
		off += k
	}
	return nil
}

// Dirty returns the bytes still to be copied.
func (bc *State) Dirty() int64 { return bc.bits.Count() }
