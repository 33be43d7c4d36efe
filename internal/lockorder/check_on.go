//go:build lockcheck

package lockorder

import (
	"bytes"
	"fmt"
	"runtime"
	"strconv"
	"sync"
)

// Checked reports whether lock order checks are compiled in.
const Checked = true

// Lock checks that the calling goroutine holds no lock ranked after R,
// then locks m.
func (m *Mutex[R]) Lock() {
	var r R
	id := goid()
	acquire(id, r)
	m.mu.Lock()
	push(id, r)
}

// Unlock unlocks m.
func (m *Mutex[R]) Unlock() {
	var r R
	pop(goid(), r)
	m.mu.Unlock()
}

var (
	heldMu sync.Mutex
	held   = map[uint64][]Rank{} // by goroutine, in the order taken
)

func acquire(id uint64, r Rank) {
	heldMu.Lock()
	defer heldMu.Unlock()
	for _, h := range held[id] {
		if h.rank() > r.rank() {
			panic(fmt.Sprintf("lockorder: taking the %s while holding the %s (see package lockorder)", r.name(), h.name()))
		}
	}
}

func push(id uint64, r Rank) {
	heldMu.Lock()
	held[id] = append(held[id], r)
	heldMu.Unlock()
}

// pop forgets the most recent hold of a lock of rank r by goroutine id,
// or, when that goroutine holds none (a lock handed to another goroutine
// to release), by any goroutine.
func pop(id uint64, r Rank) {
	heldMu.Lock()
	defer heldMu.Unlock()
	if drop(id, r) {
		return
	}
	for other := range held {
		if drop(other, r) {
			return
		}
	}
}

func drop(id uint64, r Rank) bool {
	hs := held[id]
	for i := len(hs) - 1; i >= 0; i-- {
		if hs[i] == r {
			hs = append(hs[:i], hs[i+1:]...)
			if len(hs) == 0 {
				delete(held, id)
			} else {
				held[id] = hs
			}
			return true
		}
	}
	return false
}

// goid returns the calling goroutine's id, read from its stack header
// ("goroutine 12 [running]:"); slow, and only built for tests.
func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		panic("lockorder: cannot read the goroutine id")
	}
	return id
}
