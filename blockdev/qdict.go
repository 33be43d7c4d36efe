package blockdev

import (
	"slices"
	"strings"
)

// QEMU keeps a node's options in a QDict, a hash table of 512 buckets,
// and walks it bucket by bucket. Where QEMU reports the first option of a
// dictionary that fails a check (blockdev-reopen's "Cannot change the
// option 'X'" and "Option 'X' cannot be reset to its default value"), the
// option named is the first in that walk, not the first in any order a
// reader would guess. qdictOrder sorts keys into that walk so that the
// error names the same option as QSD's.

const qdictBuckets = 512

// qdictBucket is the bucket QEMU's QDict puts key in: the tdb hash (from
// gdbm, by way of tdb) of the key's bytes, modulo the bucket count.
func qdictBucket(key string) uint32 {
	h := uint32(0x238F13AF) * uint32(len(key))
	for i := 0; i < len(key); i++ {
		h += uint32(key[i]) << (uint(i*5) % 24)
	}
	return (1103515243*h + 12345) % qdictBuckets
}

// qdictOrder sorts keys in place into the order QEMU walks a QDict
// holding them. Keys sharing a bucket come newest first in QEMU, which
// depends on how the dictionary was built; they are left in name order
// here (such ties are rare among a node's few options).
func qdictOrder(keys []string) []string {
	slices.SortStableFunc(keys, func(a, b string) int {
		ba, bb := qdictBucket(a), qdictBucket(b)
		switch {
		case ba < bb:
			return -1
		case ba > bb:
			return 1
		}
		return strings.Compare(a, b)
	})
	return keys
}
