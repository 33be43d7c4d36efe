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
// encoding/json does the encoding; this package reorders its output, since
// no JSON library can be told QEMU's member order.
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

// Get returns member k.
func (o *Object) Get(k string) (any, bool) {
	v, ok := o.vals[k]
	return v, ok
}

// Len is the number of members.
func (o *Object) Len() int { return len(o.keys) }

// Keys returns the members' names in the order they were added.
func (o *Object) Keys() []string { return slices.Clone(o.keys) }

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
func Append(dst []byte, v any) ([]byte, error) {
	raw, err := marshal(v)
	if err != nil {
		return dst, err
	}
	// Fast path: no object with two members or more, nothing to reorder.
	if bytes.IndexByte(raw, ',') < 0 || bytes.IndexByte(raw, '{') < 0 {
		return restyle(dst, raw), nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return appendTokens(dst, dec)
}

// appendTokens prints the next value of dec, reordering objects.
func appendTokens(dst []byte, dec *json.Decoder) ([]byte, error) {
	tok, err := dec.Token()
	if err != nil {
		return dst, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			type member struct {
				key string
				val []byte
			}
			var ms []member
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return dst, err
				}
				k, _ := kt.(string)
				val, err := appendTokens(nil, dec)
				if err != nil {
					return dst, err
				}
				ms = append(ms, member{k, val})
			}
			if _, err := dec.Token(); err != nil { // '}'
				return dst, err
			}
			slices.Reverse(ms)
			slices.SortStableFunc(ms, func(a, b member) int { return int(Bucket(a.key)) - int(Bucket(b.key)) })
			dst = append(dst, '{')
			for i, m := range ms {
				if i > 0 {
					dst = append(dst, ", "...)
				}
				dst = appendString(dst, m.key)
				dst = append(dst, ": "...)
				dst = append(dst, m.val...)
			}
			return append(dst, '}'), nil
		case '[':
			dst = append(dst, '[')
			for i := 0; dec.More(); i++ {
				if i > 0 {
					dst = append(dst, ", "...)
				}
				if dst, err = appendTokens(dst, dec); err != nil {
					return dst, err
				}
			}
			if _, err := dec.Token(); err != nil { // ']'
				return dst, err
			}
			return append(dst, ']'), nil
		}
		return dst, fmt.Errorf("qjson: unexpected %v", t)
	case string:
		return appendString(dst, t), nil
	case json.Number:
		return append(dst, t...), nil
	case bool:
		if t {
			return append(dst, "true"...), nil
		}
		return append(dst, "false"...), nil
	case nil:
		return append(dst, "null"...), nil
	}
	return dst, fmt.Errorf("qjson: unexpected token %T", tok)
}

func appendString(dst []byte, s string) []byte {
	raw, _ := marshal(s)
	return restyle(dst, raw)
}

// restyle rewrites compact encoding/json output in QEMU's style.
func restyle(dst, src []byte) []byte {
	inString := false
	for i := 0; i < len(src); i++ {
		c := src[i]
		if !inString {
			switch c {
			case '"':
				inString = true
				dst = append(dst, c)
			case ':', ',':
				dst = append(dst, c, ' ')
			default:
				dst = append(dst, c)
			}
			continue
		}
		switch {
		case c == '"':
			inString = false
			dst = append(dst, c)
		case c == '\\':
			// encoding/json escapes: keep the short ones, upper-case \u.
			if src[i+1] == 'u' {
				dst = append(dst, '\\', 'u')
				dst = append(dst, bytes.ToUpper(src[i+2:i+6])...)
				i += 5
			} else {
				dst = append(dst, c, src[i+1])
				i++
			}
		case c == 0x7F:
			dst = append(dst, `\u007F`...)
		case c >= 0x80:
			r, n := utf8.DecodeRune(src[i:])
			if r > 0xFFFF {
				r -= 0x10000
				dst = fmt.Appendf(dst, `\u%04X\u%04X`, 0xD800+(r>>10), 0xDC00+(r&0x3FF))
			} else {
				dst = fmt.Appendf(dst, `\u%04X`, r)
			}
			i += n - 1
		default:
			dst = append(dst, c)
		}
	}
	return dst
}
