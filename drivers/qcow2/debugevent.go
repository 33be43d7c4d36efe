package qcow2

import (
	"github.com/qbmond/qbmond/blockdev"
)

// The debug events qcow2 raises on its file child (for a blkdebug node
// there) are QEMU's, at the matching points of this driver's own paths:
// the event sites in the other files are one-line calls; the two that
// need a decision live here.

// refblockEvents are raised for each refcount block a refcount update
// touches: QEMU looks the block up through its allocating path
// (refblock_alloc) and loads it from there (refblock_load).
func (d *Driver) refblockEvents() {
	d.file.DebugEvent(blockdev.DbgRefblockAlloc)
	d.file.DebugEvent(blockdev.DbgRefblockLoad)
}

// cowEvents raises what QEMU raises before it copies the untouched parts
// of newly allocated clusters, and returns what raises the events of the
// write that follows. A write covering whole clusters has no copy:
// write_aio. When the parts to copy read as zeroes, QEMU zeroes the
// clusters instead of copying (cluster_alloc_space) and writes the guest
// data alone (write_aio). Otherwise it reads them (cow_read, then the
// reads of the old data), writes the guest data (write_aio) and then the
// copied parts (cow_write); qbmond writes all in one, after both events.
func (d *Driver) cowEvents(whole, zero bool) (write func()) {
	dataOnly := func() { d.file.DebugEvent(blockdev.DbgWriteAIO) }
	if whole {
		return dataOnly
	}
	if zero {
		d.file.DebugEvent(blockdev.DbgClusterAllocSpace)
		return dataOnly
	}
	d.file.DebugEvent(blockdev.DbgCOWRead)
	return func() {
		d.file.DebugEvent(blockdev.DbgWriteAIO)
		d.file.DebugEvent(blockdev.DbgCOWWrite)
	}
}
