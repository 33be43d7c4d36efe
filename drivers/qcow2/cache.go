package qcow2

import (
	"container/list"
	"sync"
)

// tableCache keeps recently used metadata tables (L2 tables, refcount
// blocks), one cluster each, keyed by their offset in the image file. It
// is write-through: whoever changes a cached table under the driver's
// exclusive lock writes the change to the file at once, so entries are
// never dirty and can be dropped at any time. Its own mutex lets readers
// holding the driver's shared lock load tables concurrently.
type tableCache struct {
	mu  sync.Mutex
	max int
	m   map[int64]*list.Element
	lru list.List // of *cached, most recent first
}

type cached struct {
	off  int64
	data []byte
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
	c.m[off] = c.lru.PushFront(&cached{off, data})
	for c.lru.Len() > c.max {
		last := c.lru.Back()
		c.lru.Remove(last)
		delete(c.m, last.Value.(*cached).off)
	}
	return data
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

// clear forgets every table.
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
// used beyond it.
func (c *tableCache) resize(max int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.max = max
	for c.lru.Len() > c.max {
		last := c.lru.Back()
		c.lru.Remove(last)
		delete(c.m, last.Value.(*cached).off)
	}
}
