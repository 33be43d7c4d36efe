package blockdev

// Debug events (QAPI's BlkdebugEvent) are points in a request's path that
// a blkdebug node can react to. As in QEMU, an event is raised on a node:
// the generic I/O path raises pwritev, pwritev_zero, pwritev_done and the
// pwritev_rmw_* events on the node a write goes to, and flush_to_os and
// flush_to_disk on the primary child of the node being flushed; a format
// driver raises its own events (l2_load, cluster_alloc, write_aio, ...)
// on its file child with Child.DebugEvent. Only nodes whose driver is a
// DebugEventer listen; for every other node raising an event costs a nil
// check.

// The debug events, by their QAPI names.
const (
	DbgL1Update                = "l1_update"
	DbgL1GrowAllocTable        = "l1_grow_alloc_table"
	DbgL1GrowWriteTable        = "l1_grow_write_table"
	DbgL1GrowActivateTable     = "l1_grow_activate_table"
	DbgL2Load                  = "l2_load"
	DbgL2Update                = "l2_update"
	DbgL2UpdateCompressed      = "l2_update_compressed"
	DbgL2AllocCOWRead          = "l2_alloc_cow_read"
	DbgL2AllocWrite            = "l2_alloc_write"
	DbgReadAIO                 = "read_aio"
	DbgReadBackingAIO          = "read_backing_aio"
	DbgReadCompressed          = "read_compressed"
	DbgWriteAIO                = "write_aio"
	DbgWriteCompressed         = "write_compressed"
	DbgVMStateLoad             = "vmstate_load"
	DbgVMStateSave             = "vmstate_save"
	DbgCOWRead                 = "cow_read"
	DbgCOWWrite                = "cow_write"
	DbgReftableLoad            = "reftable_load"
	DbgReftableGrow            = "reftable_grow"
	DbgReftableUpdate          = "reftable_update"
	DbgRefblockLoad            = "refblock_load"
	DbgRefblockUpdate          = "refblock_update"
	DbgRefblockUpdatePart      = "refblock_update_part"
	DbgRefblockAlloc           = "refblock_alloc"
	DbgRefblockAllocHookup     = "refblock_alloc_hookup"
	DbgRefblockAllocWrite      = "refblock_alloc_write"
	DbgRefblockAllocWriteBlock = "refblock_alloc_write_blocks"
	DbgRefblockAllocWriteTable = "refblock_alloc_write_table"
	DbgRefblockAllocSwitch     = "refblock_alloc_switch_table"
	DbgClusterAlloc            = "cluster_alloc"
	DbgClusterAllocBytes       = "cluster_alloc_bytes"
	DbgClusterFree             = "cluster_free"
	DbgFlushToOS               = "flush_to_os"
	DbgFlushToDisk             = "flush_to_disk"
	DbgPwritevRMWHead          = "pwritev_rmw_head"
	DbgPwritevRMWAfterHead     = "pwritev_rmw_after_head"
	DbgPwritevRMWTail          = "pwritev_rmw_tail"
	DbgPwritevRMWAfterTail     = "pwritev_rmw_after_tail"
	DbgPwritev                 = "pwritev"
	DbgPwritevZero             = "pwritev_zero"
	DbgPwritevDone             = "pwritev_done"
	DbgEmptyImagePrepare       = "empty_image_prepare"
	DbgL1ShrinkWriteTable      = "l1_shrink_write_table"
	DbgL1ShrinkFreeL2Clusters  = "l1_shrink_free_l2_clusters"
	DbgCORWrite                = "cor_write"
	DbgClusterAllocSpace       = "cluster_alloc_space"
	DbgNone                    = "none"
)

// DebugEvents lists the debug events in QAPI's order.
var DebugEvents = []string{
	DbgL1Update, DbgL1GrowAllocTable, DbgL1GrowWriteTable, DbgL1GrowActivateTable,
	DbgL2Load, DbgL2Update, DbgL2UpdateCompressed, DbgL2AllocCOWRead, DbgL2AllocWrite,
	DbgReadAIO, DbgReadBackingAIO, DbgReadCompressed, DbgWriteAIO, DbgWriteCompressed,
	DbgVMStateLoad, DbgVMStateSave, DbgCOWRead, DbgCOWWrite,
	DbgReftableLoad, DbgReftableGrow, DbgReftableUpdate,
	DbgRefblockLoad, DbgRefblockUpdate, DbgRefblockUpdatePart, DbgRefblockAlloc,
	DbgRefblockAllocHookup, DbgRefblockAllocWrite, DbgRefblockAllocWriteBlock,
	DbgRefblockAllocWriteTable, DbgRefblockAllocSwitch,
	DbgClusterAlloc, DbgClusterAllocBytes, DbgClusterFree,
	DbgFlushToOS, DbgFlushToDisk,
	DbgPwritevRMWHead, DbgPwritevRMWAfterHead, DbgPwritevRMWTail, DbgPwritevRMWAfterTail,
	DbgPwritev, DbgPwritevZero, DbgPwritevDone,
	DbgEmptyImagePrepare, DbgL1ShrinkWriteTable, DbgL1ShrinkFreeL2Clusters,
	DbgCORWrite, DbgClusterAllocSpace, DbgNone,
}

// debugEvent raises event on the node itself (the generic I/O path's
// events, QEMU's bdrv_debug_event).
func (n *Node) debugEvent(event string) {
	if n.dbg != nil {
		n.dbg.DebugEvent(event)
	}
}

// DebugEvent raises event on the child node, as QEMU's BLKDBG_EVENT does
// on a BdrvChild: a format driver calls it on its file child where QEMU's
// driver raises the event.
func (c *Child) DebugEvent(event string) {
	if n := c.node.Load(); n.dbg != nil {
		n.dbg.DebugEvent(event)
	}
}
