package qcow2

import (
	"cmp"
	"container/list"
	"slices"
	"sync"
)

// tableCache keeps recently used metadata tables (L2 tables, refcount
// blocks), one cluster each, keyed by their offset in the image file.
// Refcount blocks are written through: whoever changes one writes the
// change to the file at once. L2 tables are written back: a change marks
// the table dirty, and the driver writes dirty tables out only after the
// refcounts they depend on are stable (Driver.syncMeta). Eviction passes
// over dirty tables, so the cache may hold more than max of them until
// the next write-back. Its own mutex lets readers holding the driver's
// shared lock load tables concurrently; tables change, and go dirty or
// clean, only under the driver's exclusive lock.
type tableCache struct {
	mu  sync.Mutex
	max int
	m   map[int64]*list.Element
	lru list.List // of *cached, most recent first
}

type cached struct {
	off  int64
	data []byte
	// dirty bytes [lo, hi) of data differ from the file (hi 0: clean).
	lo, hi int
}

func newTableCache(max int) *tableCache {
	return &tableCache{max: max, m: make(map[int64]*list.Element)}
}

// get returns the cached table at off, or nil.
func (c *tableCache) get(off int64) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.m[off]; e != nil {
		c.lru.MoveToFront(e)
		return e.Value.(*cached).data
	}
	return nil
}

// put caches data for off and returns the cached table, which is an
// existing one when another reader loaded it first.
func (c *tableCache) put(off int64, data []byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.m[off]; e != nil {
		c.lru.MoveToFront(e)
		return e.Value.(*cached).data
	}
	c.m[off] = c.lru.PushFront(&cached{off: off, data: data})
	c.evict()
	return data
}

// evict drops the least recently used clean tables beyond max.
func (c *tableCache) evict() {
	for e := c.lru.Back(); e != nil && c.lru.Len() > c.max; {
		prev := e.Prev()
		if t := e.Value.(*cached); t.hi == 0 {
			c.lru.Remove(e)
			delete(c.m, t.off)
		}
		e = prev
	}
}

// change returns the cached table at off for a change of its bytes
// [lo, hi), which the caller makes at once, and marks them dirty. A table
// no longer cached (evicted while clean since the caller read it) is
// cached again from data, which then still equals the file.
func (c *tableCache) change(off int64, data []byte, lo, hi int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[off]
	if e == nil {
		e = c.lru.PushFront(&cached{off: off, data: data})
		c.m[off] = e
	}
	t := e.Value.(*cached)
	if t.hi == 0 {
		t.lo, t.hi = lo, hi
	} else {
		t.lo, t.hi = min(t.lo, lo), max(t.hi, hi)
	}
	return t.data
}

// dirtyTables returns the dirty tables, in file order.
func (c *tableCache) dirtyTables() []*cached {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ts []*cached
	for e := c.lru.Front(); e != nil; e = e.Next() {
		if t := e.Value.(*cached); t.hi != 0 {
			ts = append(ts, t)
		}
	}
	slices.SortFunc(ts, func(a, b *cached) int { return cmp.Compare(a.off, b.off) })
	return ts
}

// cleaned records that t's dirty bytes are in the file.
func (c *tableCache) cleaned(t *cached) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t.lo, t.hi = 0, 0
	c.evict()
}

// drop forgets the table at off.
func (c *tableCache) drop(off int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.m[off]; e != nil {
		c.lru.Remove(e)
		delete(c.m, off)
	}
}

// clear forgets every table, dirty ones included: the caller wrote them
// back or no longer needs them.
func (c *tableCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = make(map[int64]*list.Element)
	c.lru.Init()
}

// len returns the number of cached tables.
func (c *tableCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// resize changes the number of tables kept, dropping the least recently
// used clean ones beyond it.
func (c *tableCache) resize(max int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.max = max
	c.evict()
}
