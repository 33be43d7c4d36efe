package nbd

import (
	"context"
	"sync"
	"syscall"
)

// memBackend is a sparse in-memory Backend with 4 KiB allocation blocks.
type memBackend struct {
	mu        sync.Mutex
	data      []byte
	alloc     []bool // per block
	readOnly  bool
	multiConn bool
	flushes   int
	// failRead makes ReadAt fail with this errno when nonzero.
	failRead syscall.Errno
	// gate, when set, makes reads at offset gateOff wait until it is closed.
	gate    chan struct{}
	gateOff int64
}

const memBlock = 4096

func newMem(size int64) *memBackend {
	return &memBackend{data: make([]byte, size), alloc: make([]bool, (size+memBlock-1)/memBlock), multiConn: true}
}

func (m *memBackend) Size() int64    { return int64(len(m.data)) }
func (m *memBackend) ReadOnly() bool { return m.readOnly }

func (m *memBackend) ReadAt(ctx context.Context, p []byte, off int64) error {
	if m.gate != nil && off == m.gateOff {
		select {
		case <-m.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failRead != 0 {
		return m.failRead
	}
	copy(p, m.data[off:])
	return nil
}

func (m *memBackend) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data[off:], p)
	for b := off / memBlock; b*memBlock < off+int64(len(p)); b++ {
		m.alloc[b] = true
	}
	return nil
}

// punch zeroes [off, off+length) and deallocates the blocks it covers fully.
func (m *memBackend) punch(off, length int64, dealloc bool) {
	clear(m.data[off : off+length])
	for b := off / memBlock; b*memBlock < off+length; b++ {
		if dealloc && b*memBlock >= off && (b+1)*memBlock <= off+length {
			m.alloc[b] = false
		} else {
			m.alloc[b] = true
		}
	}
}

func (m *memBackend) WriteZeroes(_ context.Context, off, length int64, mayTrim, fastZero bool) error {
	if fastZero && !mayTrim {
		return syscall.ENOTSUP
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.punch(off, length, mayTrim)
	return nil
}

func (m *memBackend) Trim(_ context.Context, off, length int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	// Only whole blocks are discarded.
	start := (off + memBlock - 1) / memBlock * memBlock
	end := (off + length) / memBlock * memBlock
	if end > start {
		m.punch(start, end-start, true)
	}
	return nil
}

func (m *memBackend) Flush(context.Context) error {
	m.mu.Lock()
	m.flushes++
	m.mu.Unlock()
	return nil
}

func (m *memBackend) Cache(context.Context, int64, int64) error { return nil }

func (m *memBackend) BlockStatus(_ context.Context, off, length int64) (Extent, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := off / memBlock
	a := m.alloc[b]
	end := (b + 1) * memBlock
	for end < off+length && m.alloc[end/memBlock] == a {
		end += memBlock
	}
	return Extent{Length: min(end, off+length) - off, Hole: !a, Zero: !a}, nil
}

func (m *memBackend) AllocationDepth(ctx context.Context, off, length int64) (uint32, int64, error) {
	e, err := m.BlockStatus(ctx, off, length)
	if e.Hole {
		return 0, e.Length, err
	}
	return 1, e.Length, err
}

func (m *memBackend) BlockSizes() (uint32, uint32, uint32) { return 1, 4096, 32 << 20 }
func (m *memBackend) CanMultiConn() bool                   { return m.multiConn }

func (m *memBackend) snapshot(off, n int64) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data[off:off+n]...)
}
