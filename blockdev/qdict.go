package blockdev

import (
	"slices"
	"strings"

	"github.com/qbmond/qbmond/internal/qjson"
)

// Where QEMU reports the first option of a node's options that fails a
// check (blockdev-reopen's "Cannot change the option 'X'" and "Option 'X'
// cannot be reset to its default value"), the option named is the first
// in QEMU's walk of the QDict holding them (see package qjson), not the
// first in any order a reader would guess. qdictOrder sorts keys into that
// walk so that the error names the same option as QSD's.

// qdictOrder sorts keys in place into the order QEMU walks a QDict
// holding them. Keys sharing a bucket come newest first in QEMU, which
// depends on how the dictionary was built; they are left in name order
// here (such ties are rare among a node's few options).
func qdictOrder(keys []string) []string {
	slices.SortStableFunc(keys, func(a, b string) int {
		ba, bb := qjson.Bucket(a), qjson.Bucket(b)
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
