//go:build !lockcheck

package lockorder

// Checked reports whether lock order checks are compiled in.
const Checked = false

// Lock locks m.
func (m *Mutex[R]) Lock() { m.mu.Lock() }

// Unlock unlocks m.
func (m *Mutex[R]) Unlock() { m.mu.Unlock() }
