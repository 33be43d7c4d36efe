// Package blockdev owns the block graph: nodes, the edges between them and
// the permissions they hold, the I/O entry points every request passes,
// and the primitives that change the graph under its lock. It speaks no
// protocol: its QMP commands live in blockdev/blockqmp, and this package
// imports neither qmp, schema nor qapi (imports_test.go).
//
// The graph is split by concern; a change goes where its concern is:
//
//	package                  owns
//	blockdev (here)          the graph, permissions, I/O entry points, chain primitives, reopen
//	blockdev/internal/iopath below: request tracker, alignment arithmetic, I/O counters
//	blockdev/dirty           below: a dirty bitmap's bits and recording state, a node's set of them
//	blockdev/chain           above: drop-intermediate, change-backing-file, external snapshots, chain walks
//	blockdev/blockcopy       above: block-copy, the copy engine of backup and copy-before-write
//	blockdev/blockqmp        above: the QMP commands and transaction actions of the graph
//
// "Below" packages hold mechanisms that need no node; blockdev imports
// them and they cannot import it back. "Above" packages are built on
// blockdev's exported API only. Go keeps the methods of Node and Child
// here, so what needs them stays: the I/O path is split between its entry
// points here and its mechanisms in internal/iopath, and dirty bitmaps
// between DirtyBitmap here (the graph's handle: name, persistence through
// the driver, checks, the lock) and their state in dirty.
//
// Where things are here, by file:
//
//   - contract.go: the driver contract, Driver and every optional ability.
//   - graph.go, node.go, options.go, probe.go, create.go, driver.go,
//     ejected.go, images.go: the graph, adding and deleting nodes, the
//     driver registry, nodes whose driver stopped serving them, images
//     opened or created for the operations built on the graph.
//   - perm.go, permgraph.go, rootperm.go: permissions and image locks.
//   - io.go, copyrange.go, copyonread.go, observe.go, stats.go,
//     debugevent.go: the I/O entry points (admission, bounce buffers and
//     read-modify-write, detect-zeroes, copy offload, copy-on-read, write
//     observers, which requests statistics count, blkdebug's events). The
//     I/O path never takes the graph lock.
//   - chain.go, freeze.go, filter.go: the chain primitives the chain
//     package composes (drain, op blockers, read-only switch, SetBacking,
//     ReplaceNode, SwitchBacking, RewriteBackingFile), chain freezing,
//     filter insertion and removal. They touch edges, drains and
//     permissions directly, so they are the core's.
//   - reopen.go: blockdev-reopen. It stays here: its queue works on every
//     generic option of a node, the inheritance of inline children, the
//     edges it relinks and the drivers' Reopener, all node internals.
//   - bitmaps.go, bitmapops.go, transaction.go: dirty bitmaps on nodes,
//     their lookups by name, and the transaction actions the graph
//     prepares (the bitmap actions, which undo through the bitmaps'
//     shadows).
//   - query.go: node file names as QEMU derives them, and the accessors
//     the query views (in blockqmp) read.
//   - json.go, qdict.go, events.go: what events report, in QEMU's shapes
//     and order.
//
// The graph lock is held only through Graph.Do (or WithLock): the
// operations that need it, here and in the packages above, are methods of
// *Locked or take one, so a call without it does not compile
// (locked_compile_test.go). Its rank among qbmond's locks is in package
// internal/lockorder.
package blockdev
