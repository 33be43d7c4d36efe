package qjson

import (
	"bytes"
	"encoding"
	"encoding/json"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// The direct printer: values whose types are made only of structs,
// pointers, slices, interfaces, strings, booleans and integers (the
// generated qapi types of the query replies, most events) are printed
// straight in QEMU's style, a struct's members in QDict order worked out
// once per type, without encoding/json and the reorder and restyle passes.
// Anything else inside them (maps, floats, arrays, byte slices, types
// with their own MarshalJSON or MarshalText, fields with unusual tags) is
// printed the general way, through encoding/json, reordered and
// restyled. Both ways print the same bytes (TestDirectLikeGeneral).

// encoder appends v, printed as QEMU prints it.
type encoder func(dst []byte, v reflect.Value) ([]byte, error)

// encoders caches an encoder per type.
var encoders sync.Map // reflect.Type → encoder

var (
	marshalerType     = reflect.TypeFor[json.Marshaler]()
	textMarshalerType = reflect.TypeFor[encoding.TextMarshaler]()
)

// appendDirect appends v with the direct printer where its type allows.
func appendDirect(dst []byte, v any) ([]byte, error) {
	if v == nil {
		return append(dst, "null"...), nil
	}
	rv := reflect.ValueOf(v)
	return encoderOf(rv.Type())(dst, rv)
}

func encoderOf(t reflect.Type) encoder {
	if e, ok := encoders.Load(t); ok {
		return e.(encoder)
	}
	// A recursive type (ImageInfo's backing-image) meets this stand-in
	// while its own encoder is being built; it waits for the real one.
	var (
		wg   sync.WaitGroup
		real encoder
	)
	wg.Add(1)
	e, loaded := encoders.LoadOrStore(t, encoder(func(dst []byte, v reflect.Value) ([]byte, error) {
		wg.Wait()
		return real(dst, v)
	}))
	if loaded {
		return e.(encoder)
	}
	real = newEncoder(t)
	wg.Done()
	encoders.Store(t, real)
	return real
}

// general prints v the general way: encoding/json, reordered, restyled.
func general(dst []byte, v reflect.Value) ([]byte, error) {
	raw, err := marshal(v.Interface())
	if err != nil {
		return dst, err
	}
	if bytes.IndexByte(raw, '{') >= 0 {
		var r reorderer
		raw, _ = r.value(make([]byte, 0, len(raw)), raw)
	}
	return restyle(dst, raw), nil
}

func newEncoder(t reflect.Type) encoder {
	if t.Implements(marshalerType) || t.Implements(textMarshalerType) ||
		t.Kind() != reflect.Pointer && (reflect.PointerTo(t).Implements(marshalerType) || reflect.PointerTo(t).Implements(textMarshalerType)) {
		return general
	}
	switch t.Kind() {
	case reflect.Bool:
		return func(dst []byte, v reflect.Value) ([]byte, error) {
			return strconv.AppendBool(dst, v.Bool()), nil
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return func(dst []byte, v reflect.Value) ([]byte, error) {
			return strconv.AppendInt(dst, v.Int(), 10), nil
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return func(dst []byte, v reflect.Value) ([]byte, error) {
			return strconv.AppendUint(dst, v.Uint(), 10), nil
		}
	case reflect.String:
		if t == reflect.TypeFor[json.Number]() {
			return func(dst []byte, v reflect.Value) ([]byte, error) {
				n := v.String()
				if n == "" {
					n = "0" // as encoding/json writes it
				}
				if !validNumber(n) {
					return general(dst, v)
				}
				return append(dst, n...), nil
			}
		}
		return func(dst []byte, v reflect.Value) ([]byte, error) {
			return appendQString(dst, v.String()), nil
		}
	case reflect.Pointer:
		enc := encoderOf(t.Elem())
		return func(dst []byte, v reflect.Value) ([]byte, error) {
			if v.IsNil() {
				return append(dst, "null"...), nil
			}
			return enc(dst, v.Elem())
		}
	case reflect.Interface:
		return func(dst []byte, v reflect.Value) ([]byte, error) {
			if v.IsNil() {
				return append(dst, "null"...), nil
			}
			e := v.Elem()
			return encoderOf(e.Type())(dst, e)
		}
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return general // base64, or RawMessage (a Marshaler, above)
		}
		enc := encoderOf(t.Elem())
		return func(dst []byte, v reflect.Value) ([]byte, error) {
			if v.IsNil() {
				return append(dst, "null"...), nil
			}
			dst = append(dst, '[')
			var err error
			for i := range v.Len() {
				if i > 0 {
					dst = append(dst, ", "...)
				}
				if dst, err = enc(dst, v.Index(i)); err != nil {
					return dst, err
				}
			}
			return append(dst, ']'), nil
		}
	case reflect.Map:
		if t.Key().Kind() != reflect.String || t.Key().Implements(textMarshalerType) {
			return general
		}
		enc := encoderOf(t.Elem())
		return func(dst []byte, v reflect.Value) ([]byte, error) {
			if v.IsNil() {
				return append(dst, "null"...), nil
			}
			// Names in alphabetical order stand in for the order the
			// members were added in, as encoding/json writes them; then
			// QDict order: by bucket, the last added first in a bucket.
			type member struct {
				key    string
				bucket uint32
				val    reflect.Value
			}
			ms := make([]member, 0, v.Len())
			for it := v.MapRange(); it.Next(); {
				k := it.Key().String()
				ms = append(ms, member{k, Bucket(k), it.Value()})
			}
			less := func(i, j int) bool {
				if ms[i].bucket != ms[j].bucket {
					return ms[i].bucket < ms[j].bucket
				}
				return ms[i].key > ms[j].key
			}
			if len(ms) > 12 {
				sort.Slice(ms, less)
			} else { // the usual few members: no allocation
				for i := 1; i < len(ms); i++ {
					for j := i; j > 0 && less(j, j-1); j-- {
						ms[j], ms[j-1] = ms[j-1], ms[j]
					}
				}
			}
			dst = append(dst, '{')
			var err error
			for i := range ms {
				if i > 0 {
					dst = append(dst, ", "...)
				}
				dst = appendQString(dst, ms[i].key)
				dst = append(dst, ": "...)
				if dst, err = enc(dst, ms[i].val); err != nil {
					return dst, err
				}
			}
			return append(dst, '}'), nil
		}
	case reflect.Struct:
		if e := structEncoder(t); e != nil {
			return e
		}
	}
	return general
}

// field is a struct member the direct printer writes.
type field struct {
	index     []int
	key       []byte // `"name": `
	omitEmpty bool
	typ       reflect.Type
	enc       encoder
}

// structEncoder prints a struct whose members encoding/json would find
// by the plain rules (exported fields, names from tags, omitempty, "-",
// embedded structs by value, no name clashes), in QDict order; nil for
// any other struct.
func structEncoder(t reflect.Type) encoder {
	var fields []field
	if !collectFields(t, nil, &fields) {
		return nil
	}
	seen := map[string]bool{}
	for _, f := range fields {
		name := string(f.key)
		if seen[name] {
			return nil // a clash encoding/json resolves by depth: leave it to it
		}
		seen[name] = true
	}
	// QAPI adds members in declaration order; QDict walks them by
	// bucket, the last added first within a bucket. The present members
	// keep that order among themselves, so one order serves every value.
	names := make([]string, len(fields))
	byName := make(map[string]field, len(fields))
	for i, f := range fields {
		names[i] = string(f.key)
		byName[names[i]] = f
	}
	sorted := make([]field, len(fields))
	for i, name := range Order(names) {
		f := byName[name]
		f.key = appendQString(nil, name)
		f.key = append(f.key, ": "...)
		f.enc = encoderOf(f.typ)
		sorted[i] = f
	}
	return func(dst []byte, v reflect.Value) ([]byte, error) {
		dst = append(dst, '{')
		first := true
		for i := range sorted {
			f := &sorted[i]
			fv := v.FieldByIndex(f.index)
			if f.omitEmpty && emptyValue(fv) {
				continue
			}
			if !first {
				dst = append(dst, ", "...)
			}
			first = false
			dst = append(dst, f.key...)
			var err error
			if dst, err = f.enc(dst, fv); err != nil {
				return dst, err
			}
		}
		return append(dst, '}'), nil
	}
}

// collectFields lists t's members in encoding/json's order, embedded
// structs' in place; false when t needs encoding/json's fuller rules.
func collectFields(t reflect.Type, index []int, out *[]field) bool {
	for i := range t.NumField() {
		sf := t.Field(i)
		tag, hasTag := sf.Tag.Lookup("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		idx := append(slices.Clone(index), i)
		if sf.Anonymous && name == "" {
			if sf.Type.Kind() != reflect.Struct || !sf.IsExported() {
				// Embedded pointers and non-structs; an unexported
				// struct's values cannot be handed to encoding/json.
				return false
			}
			if !collectFields(sf.Type, idx, out) {
				return false
			}
			continue
		}
		if !sf.IsExported() {
			continue
		}
		omit := false
		for o := range strings.SplitSeq(opts, ",") {
			switch o {
			case "omitempty":
				omit = true
			case "":
			default:
				return false // string, omitzero, ...
			}
		}
		if !hasTag || name == "" {
			name = sf.Name
		}
		if !validKey(name) {
			return false
		}
		*out = append(*out, field{index: idx, key: []byte(name), omitEmpty: omit, typ: sf.Type})
	}
	return true
}

// validKey is a tag name encoding/json takes as it is.
func validKey(s string) bool {
	for _, c := range s {
		if c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			return false
		}
	}
	return s != ""
}

// emptyValue is encoding/json's omitempty test.
func emptyValue(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Array, reflect.Map, reflect.Slice, reflect.String:
		return v.Len() == 0
	case reflect.Bool:
		return !v.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return v.Int() == 0
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return v.Uint() == 0
	case reflect.Float32, reflect.Float64:
		return v.Float() == 0
	case reflect.Interface, reflect.Pointer:
		return v.IsNil()
	}
	return false
}

const upperHex = "0123456789ABCDEF"

// appendQString appends s as a JSON string the way QEMU writes it:
// '"', '\\' and the control characters \b \f \n \r \t escaped short,
// other bytes below 0x20 and 0x7F as \u00XX, everything past ASCII as
// \uXXXX (surrogate pairs above the BMP; invalid UTF-8 as \uFFFD), hex in
// upper case.
func appendQString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c < 0x7F && c != '"' && c != '\\' {
			i++
			continue
		}
		dst = append(dst, s[start:i]...)
		if c < utf8.RuneSelf {
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', upperHex[c>>4], upperHex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r > 0xFFFF {
			r -= 0x10000
			dst = appendU(dst, 0xD800+(r>>10))
			dst = appendU(dst, 0xDC00+(r&0x3FF))
		} else {
			dst = appendU(dst, r) // RuneError for invalid bytes: \uFFFD
		}
		i += n
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func appendU(dst []byte, r rune) []byte {
	return append(dst, '\\', 'u', upperHex[r>>12&0xF], upperHex[r>>8&0xF], upperHex[r>>4&0xF], upperHex[r&0xF])
}

// validNumber tells whether s is a JSON number literal.
func validNumber(s string) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	digits := func() bool {
		j := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return i > j
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case !digits():
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if !digits() {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if !digits() {
			return false
		}
	}
	return i == len(s)
}
