// Package blockdev owns the block graph: nodes, the edges between them and
// the permissions they hold, and everything that works on that graph
// without speaking a protocol. Its QMP commands live in blockdev/blockqmp;
// this package imports neither qmp, schema nor qapi (imports_test.go).
//
// Where things are, by file:
//
//   - contract.go: the driver contract, Driver and every optional ability.
//   - graph.go, node.go, options.go, probe.go, create.go, driver.go,
//     ejected.go: the graph, adding and deleting nodes, the driver
//     registry, nodes whose driver stopped serving them.
//   - perm.go, permgraph.go, rootperm.go: permissions and image locks.
//   - io.go, copyrange.go, copyonread.go, observe.go, stats.go,
//     debugevent.go: the I/O entry points (requests, admission, bounce
//     buffers, write observers, what statistics count, blkdebug's events);
//     the node-free mechanisms they use (request tracker, alignment
//     arithmetic, counters) are blockdev/internal/iopath's. The I/O path
//     never takes the graph lock.
//   - chain.go, freeze.go, reopen.go, filter.go, images.go,
//     transaction.go: the chain primitives (drain, op blockers, set-backing,
//     replace, one overlay's backing switch, header rewrite, read-only
//     switch), reopen, filter insertion and removal, chain freezing,
//     opening and creating images for the operations above, transaction
//     actions; the operations composed of them with QEMU's checks
//     (drop-intermediate, change-backing-file, external snapshots, chain
//     walks) are blockdev/chain's.
//   - bitmaps.go, bitmapops.go: dirty bitmaps on nodes as the graph sees
//     them (names, persistence through the driver, the commands' checks
//     and errors, the graph lock); their bits and recording state
//     (recording, busy, shadow, successor) and a node's set of them, which
//     the write path marks, are blockdev/dirty's.
//   - query.go, json.go, qdict.go, events.go: what queries and events
//     report, in QEMU's shapes and order.
//
// Beside it, built on its exported API: blockdev/chain (chain operations
// composed of the primitives) and blockdev/blockcopy (block-copy, the copy
// engine of backup and copy-before-write).
//
// The graph lock is held only through Graph.Do (or WithLock): the
// operations that need it are methods of *Locked or take one, so a call
// without it does not compile (locked_compile_test.go). Its rank among
// qbmond's locks is in package internal/lockorder.
package blockdev
