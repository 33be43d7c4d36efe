package qmp

import "sort"

// QEMU keeps JSON objects in a hash table of 512 buckets and walks it bucket
// by bucket, both when it prints an object and when it checks the members
// of a request. Which of several bad members a request is blamed for, and
// the member order of an echoed id, follow from that order; qbmond
// reproduces it. (Within one bucket QEMU puts the member it saw last
// first; the parsed tree no longer knows the input order, so ties fall back
// to reverse alphabetical order, which is deterministic and rarely needed.)

// QDictBucket is the bucket QEMU's QDict puts key in: the TDB hash modulo
// 512. QEMU walks (prints, checks) objects bucket by bucket.
func QDictBucket(key string) uint32 {
	v := uint32(0x238F13AF) * uint32(len(key))
	for i := 0; i < len(key); i++ {
		v += uint32(key[i]) << (uint(i) * 5 % 24)
	}
	return (1103515243*v + 12345) % 512
}

// qdictOrder returns the keys of m in QEMU's iteration order.
func qdictOrder(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		bi, bj := QDictBucket(keys[i]), QDictBucket(keys[j])
		if bi != bj {
			return bi < bj
		}
		return keys[i] > keys[j]
	})
	return keys
}

// appendTree appends a parsed value (as the QMP parser produces it) the
// way QEMU prints it, objects in QDict order.
func appendTree(b []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case map[string]any:
		b = append(b, '{')
		for i, k := range qdictOrder(v) {
			if i > 0 {
				b = append(b, ", "...)
			}
			b, _ = appendValue(b, k)
			b = append(b, ": "...)
			var err error
			if b, err = appendTree(b, v[k]); err != nil {
				return b, err
			}
		}
		return append(b, '}'), nil
	case []any:
		b = append(b, '[')
		for i, x := range v {
			if i > 0 {
				b = append(b, ", "...)
			}
			var err error
			if b, err = appendTree(b, x); err != nil {
				return b, err
			}
		}
		return append(b, ']'), nil
	}
	return appendValue(b, qemuID(v))
}
