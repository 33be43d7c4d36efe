// Package statuscache is the one-extent block-status cache that protocol
// drivers keep, the idea of QEMU's per-node cache: a range known to hold
// data stays data until the node zeroes, discards or shrinks part of it.
// A plain write can only turn a hole into data, which the cache never
// claims to know about, so writes leave it alone.
//
// A lookup returns a generation; a fill with the answer of the (slow)
// status query made after the lookup is dropped when an invalidation
// happened in between, since that answer may predate it.
package statuscache

import "sync"

// Cache is the cached data extent. The zero value is empty and ready.
type Cache struct {
	mu         sync.Mutex
	gen        uint64 // bumped by every invalidation
	start, end int64  // the cached data extent; empty when start == end
}

// Lookup reports how many bytes from off are known to be data (0: not
// known) and the generation a later Fill must match.
func (c *Cache) Lookup(off int64) (int64, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if off >= c.start && off < c.end {
		return c.end - off, c.gen
	}
	return 0, c.gen
}

// Fill records [start, end) as data unless an invalidation happened since
// the Lookup that returned gen.
func (c *Cache) Fill(gen uint64, start, end int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen == gen {
		c.start, c.end = start, end
	}
}

// Forget drops the cached extent. Call it when a request that may have
// turned data anywhere into holes completes (or the file changed under
// the node).
func (c *Cache) Forget() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.start, c.end = 0, 0
}

// ForgetRange is Forget for a request on [off, off+n): the extent is
// dropped only if it overlaps, though every status asked meanwhile is
// (the generation moves on either way).
func (c *Cache) ForgetRange(off, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if off < c.end && c.start < off+n {
		c.start, c.end = 0, 0
	}
}
