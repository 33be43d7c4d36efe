// Package iopath holds the mechanisms of blockdev's I/O path that need no
// node: the request tracker that serialises read-modify-write (Tracker),
// the alignment arithmetic (Split, Span) and the accounting counters
// behind query-blockstats (Counters). The entry points that use them —
// Node.Read/Write/WriteZeroes/Discard/Flush/BlockStatus/Truncate and their
// Child forms, admission, bounce buffers, detect-zeroes, copy-on-read,
// write observers — are methods of blockdev's Node and stay there; this
// package must not import blockdev.
//
// Everything here is on the hot path: plain structs and static calls, no
// interfaces, no allocation beyond what a tracked request needs.
package iopath
