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
//   - io.go, track.go, copyrange.go, copyonread.go, observe.go, stats.go,
//     debugevent.go: the I/O path (requests, alignment, serialisation,
//     write observers, statistics, blkdebug's events). It never takes the
//     graph lock.
//   - chain.go, chainops.go, freeze.go, reopen.go, snapshot.go, filter.go,
//     transaction.go: chain operations (drain, op blockers,
//     drop-intermediate, set-backing, replace, reopen, snapshots, filters).
//   - bitmaps.go, bitmapops.go: dirty bitmaps on nodes.
//   - blockcopy.go: block-copy, the copy engine of the jobs.
//   - query.go: node file names as QEMU derives them, and the accessors
//     the query views (in blockqmp) read.
//   - json.go, qdict.go, events.go: what events report, in QEMU's shapes
//     and order.
//
// The graph lock is held only through Graph.Do (or WithLock): the
// operations that need it are methods of *Locked or take one, so a call
// without it does not compile (locked_compile_test.go). Its rank among
// qbmond's locks is in package internal/lockorder.
package blockdev
