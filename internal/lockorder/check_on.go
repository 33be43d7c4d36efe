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
	acquire(id, hold{r, m})
	m.mu.Lock()
	push(id, hold{r, m})
}

// Unlock unlocks m.
func (m *Mutex[R]) Unlock() {
	var r R
	pop(goid(), hold{r, m})
	m.mu.Unlock()
}

// hold is one lock a goroutine holds: its rank and which lock it is.
type hold struct {
	r  Rank
	mu any
}

var (
	heldMu sync.Mutex
	held   = map[uint64][]hold{} // by goroutine, in the order taken
)

func acquire(id uint64, h hold) {
	heldMu.Lock()
	defer heldMu.Unlock()
	for _, o := range held[id] {
		if o.mu == h.mu {
			panic(fmt.Sprintf("lockorder: taking the %s while holding it already", h.r.name()))
		}
		if o.r.rank() > h.r.rank() {
			panic(fmt.Sprintf("lockorder: taking the %s while holding the %s (see package lockorder)", h.r.name(), o.r.name()))
		}
	}
}

func push(id uint64, h hold) {
	heldMu.Lock()
	held[id] = append(held[id], h)
	heldMu.Unlock()
}

// pop forgets goroutine id's hold h or, when that goroutine does not hold
// it (a lock handed to another goroutine to release), whoever's.
func pop(id uint64, h hold) {
	heldMu.Lock()
	defer heldMu.Unlock()
	if drop(id, h) {
		return
	}
	for other := range held {
		if drop(other, h) {
			return
		}
	}
}

func drop(id uint64, h hold) bool {
	hs := held[id]
	for i := len(hs) - 1; i >= 0; i-- {
		if hs[i] == h {
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
