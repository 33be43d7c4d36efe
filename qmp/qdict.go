package qmp

import "github.com/qbmond/qbmond/internal/qjson"

// QEMU walks a JSON object bucket by bucket (see package qjson) both when
// it prints the object and when it checks the members of a request. Which
// of several bad members a request is blamed for, and the member order of
// an echoed id, follow from that order; qbmond reproduces it. The parsed
// tree no longer knows the input order, so members sharing a bucket are
// taken as sent in alphabetical order.

// qdictOrder returns the keys of m in QEMU's iteration order.
func qdictOrder(m map[string]any) []string { return qjson.MapOrder(m) }

// appendTree appends a parsed value (as the QMP parser produces it) the
// way QEMU prints it, numbers as QEMU reads them (see qemuID).
func appendTree(b []byte, v any) ([]byte, error) {
	return qjson.Append(b, qemuNumbers(v))
}

// qemuNumbers returns a parsed value with its numbers as QEMU keeps them.
func qemuNumbers(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = qemuNumbers(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = qemuNumbers(e)
		}
		return l
	}
	return qemuID(v)
}
