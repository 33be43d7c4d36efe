// Package qjson prints JSON the way QEMU does, for everything qbmond sends
// that a client may compare with QEMU's output byte for byte: QMP replies
// and events, echoed ids, "json:" file names.
//
// QEMU keeps a JSON object in a QDict, a hash table of 512 buckets, and
// walks it bucket by bucket when it prints the object or checks its
// members; inside a bucket the member added last comes first. The order a
// client sees therefore depends on the members' names and on the order
// they were added in: for a reply or event built by QAPI, the order of the
// members in the schema; for a parsed request, the order of the request
// (which a Go map no longer knows: there, names in alphabetical order stand
// in for it). Members are printed with ", " and ": " separators, every
// character outside printable ASCII escaped as \uXXXX with upper-case hex
// (surrogate pairs above the BMP).
//
// No JSON library can be told QEMU's member order. Values made of
// structs, lists, string-keyed maps, strings, booleans and integers (the
// generated qapi types of the replies) are printed directly, each
// struct's members in the QDict order worked out once per type (fast.go);
// anything else is encoded by encoding/json, whose output this package
// then reorders and restyles. Both ways print the same bytes.
package qjson

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"unicode/utf8"
)

// Buckets is the size of QEMU's QDict hash table.
const Buckets = 512

// Bucket is the bucket QEMU's QDict puts key in: the tdb hash of its bytes
// modulo Buckets.
func Bucket(key string) uint32 {
	v := uint32(0x238F13AF) * uint32(len(key))
	for i := 0; i < len(key); i++ {
		v += uint32(key[i]) << (uint(i) * 5 % 24)
	}
	return (1103515243*v + 12345) % Buckets
}

// Order returns keys, given in the order they were added, in the order
// QEMU walks a QDict holding them: by bucket, the last added first within
// a bucket. keys is not modified.
func Order(keys []string) []string {
	out := slices.Clone(keys)
	slices.Reverse(out)
	slices.SortStableFunc(out, func(a, b string) int { return int(Bucket(a)) - int(Bucket(b)) })
	return out
}

// MapOrder returns the keys of m in QEMU's walk order, taking them as
// added in alphabetical order (a map does not remember its order).
func MapOrder[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return Order(keys)
}

// Object is a JSON object that remembers the order its members were added
// in, for values whose QEMU counterpart is built member by member.
type Object struct {
	keys []string
	vals map[string]any
}

// Set adds member k, or replaces its value in place (as qdict_put does).
func (o *Object) Set(k string, v any) {
	if o.vals == nil {
		o.vals = map[string]any{}
	}
	if _, ok := o.vals[k]; !ok {
		o.keys = append(o.keys, k)
	}
	o.vals[k] = v
}

// MarshalJSON encodes the members in the order they were added, which
// Append turns into QEMU's order.
func (o *Object) MarshalJSON() ([]byte, error) {
	b := []byte{'{'}
	for i, k := range o.keys {
		if i > 0 {
			b = append(b, ',')
		}
		kb, err := json.Marshal(k)
		if err != nil {
			return nil, err
		}
		b = append(b, kb...)
		b = append(b, ':')
		vb, err := marshal(o.vals[k])
		if err != nil {
			return nil, err
		}
		b = append(b, vb...)
	}
	return append(b, '}'), nil
}

func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// Append appends v printed as QEMU prints it. Objects take the order of
// encoding/json's output as the order their members were added in:
// struct fields in declaration order (declare them in schema order), map
// keys alphabetically, an *Object's members as added.
//
// Most values are printed directly (see appendDirect); the rest go
// through encoding/json, whose output is then reordered and restyled.
func Append(dst []byte, v any) ([]byte, error) {
	return appendDirect(dst, v)
}

// reorderer rewrites compact JSON with every object's members in QDict
// order. Member values are written in their source order first, then the
// object is rebuilt from a copy in the new order: no allocation per
// member.
type reorderer struct {
	members []member // a stack shared by the nested objects
	keys    []uint64
	tmp     []byte
}

type member struct {
	bucket       uint32
	keyLo, keyHi int // in the object's src
	valLo, valHi int // in dst, relative to the object's start
}

// value appends the JSON value at the start of src to dst and returns how
// much of src it used.
func (r *reorderer) value(dst, src []byte) ([]byte, int) {
	switch src[0] {
	case '{':
		start, base := len(dst), len(r.members)
		dst = append(dst, '{')
		i := 1
		for src[i] != '}' {
			if src[i] == ',' {
				i++
			}
			kl := stringLen(src[i:])
			m := member{bucket: bucketBytes(src[i+1 : i+kl-1]), keyLo: i, keyHi: i + kl}
			i += kl + 1 // the key and ':'
			m.valLo = len(dst) - start
			var n int
			dst, n = r.value(dst, src[i:])
			m.valHi = len(dst) - start
			i += n
			r.members = append(r.members, m)
		}
		ms := r.members[base:]
		// By bucket, the member added last first within a bucket: one
		// integer per member sorts faster than the members.
		last := uint64(len(ms) - 1)
		keys := r.keys[:0]
		for j, m := range ms {
			keys = append(keys, uint64(m.bucket)<<32|(last-uint64(j)))
		}
		slices.Sort(keys)
		r.keys = keys
		r.tmp = append(r.tmp[:0], dst[start:]...)
		dst = append(dst[:start], '{')
		for j, k := range keys {
			m := ms[last-(k&0xFFFFFFFF)]
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, src[m.keyLo:m.keyHi]...)
			dst = append(dst, ':')
			dst = append(dst, r.tmp[m.valLo:m.valHi]...)
		}
		r.members = r.members[:base]
		return append(dst, '}'), i + 1
	case '[':
		dst = append(dst, '[')
		i := 1
		for src[i] != ']' {
			if src[i] == ',' {
				dst = append(dst, ',')
				i++
			}
			var n int
			dst, n = r.value(dst, src[i:])
			i += n
		}
		return append(dst, ']'), i + 1
	}
	n := scalarLen(src)
	return append(dst, src[:n]...), n
}

// bucketBytes is Bucket of a member name as encoding/json writes it
// between its quotes; a name with escapes is decoded first.
func bucketBytes(b []byte) uint32 {
	if bytes.IndexByte(b, '\\') >= 0 {
		var s string
		_ = json.Unmarshal(append(append([]byte{'"'}, b...), '"'), &s)
		return Bucket(s)
	}
	v := uint32(0x238F13AF) * uint32(len(b))
	for i := 0; i < len(b); i++ {
		v += uint32(b[i]) << (uint(i) * 5 % 24)
	}
	return (1103515243*v + 12345) % Buckets
}

// stringLen is the length of the JSON string at the start of src, quotes
// included.
func stringLen(src []byte) int {
	for i := 1; ; i++ {
		switch src[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
}

// scalarLen is the length of the string, number or literal at the start
// of src.
func scalarLen(src []byte) int {
	if src[0] == '"' {
		return stringLen(src)
	}
	for i, c := range src {
		if c == ',' || c == '}' || c == ']' {
			return i
		}
	}
	return len(src)
}

// restyle rewrites compact encoding/json output in QEMU's style, copying
// the runs between the bytes it changes in bulk.
func restyle(dst, src []byte) []byte {
	dst = slices.Grow(dst, len(src)+len(src)/8)
	inString := false
	run := 0 // start of the bytes not copied yet
	for i := 0; i < len(src); i++ {
		c := src[i]
		if !inString {
			switch c {
			case '"':
				inString = true
			case ':', ',':
				dst = append(dst, src[run:i+1]...)
				dst = append(dst, ' ')
				run = i + 1
			}
			continue
		}
		switch {
		case c == '"':
			inString = false
		case c == '\\':
			if src[i+1] == 'u' {
				// encoding/json's \u escapes, in upper-case hex.
				dst = append(dst, src[run:i+2]...)
				dst = append(dst, bytes.ToUpper(src[i+2:i+6])...)
				i += 5
				run = i + 1
			} else {
				i++ // a short escape, kept
			}
		case c == 0x7F:
			dst = append(dst, src[run:i]...)
			dst = append(dst, `\u007F`...)
			run = i + 1
		case c >= 0x80:
			dst = append(dst, src[run:i]...)
			r, n := utf8.DecodeRune(src[i:])
			if r > 0xFFFF {
				r -= 0x10000
				dst = fmt.Appendf(dst, `\u%04X\u%04X`, 0xD800+(r>>10), 0xDC00+(r&0x3FF))
			} else {
				dst = fmt.Appendf(dst, `\u%04X`, r)
			}
			i += n - 1
			run = i + 1
		}
	}
	return append(dst, src[run:]...)
}
