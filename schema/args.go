package schema

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"

	"github.com/qbmond/qbmond/qmp"
)

// Args validates the arguments of a command the way QEMU's QObject input
// visitor does, with its messages, and returns them normalised.
//
// args is a JSON value tree (map[string]any, []any, string, json.Number,
// bool, nil); nil means no arguments. Checks run in QEMU's order: members
// in definition order (a union's base members, then its variant's),
// depth first, and unexpected members of an object once all of its
// members were checked. When several members are unexpected the
// alphabetically first is reported (QEMU's choice follows its hash table).
//
// With keyval set, scalars are strings from the command line and are
// converted to the member's type: integers (base 0 like strtoll), sizes
// with k/M/G/T/P/E suffixes, on/off booleans, numbers.
//
// Normalisation rewrites the tree in place: keyval strings become
// json.Number or bool, and negative values given for unsigned members wrap
// to their unsigned value as QEMU stores them. Defaults are not filled in.
func (s *Schema) Args(name string, args any, keyval bool) (any, error) {
	m, err := s.visit(name, args, keyval, reflect.Value{})
	if m == nil {
		return nil, err
	}
	return m, err
}

// Decode validates the arguments of a command as Args does and, in the
// same walk, stores them in dst, a pointer to the command's generated
// arguments type (package qapi, see GoTypes): every check, its order and
// its message are Args', and each value is stored once checked and
// normalised, into the field GoTypes made of its member. A union GoTypes
// leaves as JSON (BlockdevOptions, BlockdevCreateOptions: the drivers
// read them as generic options) is checked, then marshalled into its
// json.RawMessage. dst's fields for members left out stay as they are.
func (s *Schema) Decode(name string, args any, keyval bool, dst any) error {
	rv := reflect.ValueOf(dst)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("schema: Decode of %s needs a non-nil pointer, not %T", name, dst)
	}
	_, err := s.visit(name, args, keyval, rv.Elem())
	return err
}

// visit checks a command's arguments and fills dst when it is valid.
func (s *Schema) visit(name string, args any, keyval bool, dst reflect.Value) (map[string]any, error) {
	c, ok := s.entities[name]
	if !ok || c.event {
		return nil, qmp.NewError(qmp.ClassCommandNotFound, "The command %s has not been found", name)
	}
	var m map[string]any
	switch a := args.(type) {
	case nil:
		if len(c.arg.members) == 0 {
			return nil, nil
		}
		m = map[string]any{}
	case map[string]any:
		m = a
	default:
		return nil, qmp.Errorf("QMP input member 'arguments' must be an object")
	}
	var stack [8]frame
	v := visitor{keyval: keyval, stack: stack[:0]}
	if err := v.object(c.arg, "", false, m, dst); err != nil {
		return nil, err
	}
	return m, nil
}

// frame is one level of the visit: an object or a list, as in QEMU's
// visitor stack; it is what error messages name members by.
type frame struct {
	name  string
	named bool
	list  bool
	index int
}

type visitor struct {
	keyval bool
	stack  []frame
}

// fullName names a member the way QEMU's visitor does in most messages:
// its path from the root, "a.b" for objects and "a[0]" (keyval "a.0") for
// list elements.
func (v *visitor) fullName(name string, named bool) string {
	s := ""
	for i := len(v.stack) - 1; i >= 0; i-- {
		f := v.stack[i]
		if f.list {
			if v.keyval {
				s = "." + strconv.Itoa(f.index) + s
			} else {
				s = "[" + strconv.Itoa(f.index) + "]" + s
			}
		} else {
			n := name
			if !named {
				n = "<anonymous>"
			}
			s = "." + n + s
		}
		name, named = f.name, f.named
	}
	switch {
	case named:
		return name + s
	case strings.HasPrefix(s, "."):
		return s[1:]
	case s == "":
		return "<anonymous>"
	}
	return s
}

// bareName is what QEMU prints where it uses the member's own name only
// (enum values, integer ranges, alternates): list elements have none.
func bareName(name string, named bool) string {
	if named {
		return name
	}
	return "null"
}

func (v *visitor) typeError(name string, named bool, expected string) error {
	return qmp.Errorf("Invalid parameter type for '%s', expected: %s", v.fullName(name, named), expected)
}

// object checks an object value against an object type, and stores it in
// dst when dst is valid.
func (v *visitor) object(t *typ, name string, named bool, m map[string]any, dst reflect.Value) error {
	if dst.IsValid() && dst.Type() == rawMessageType {
		if err := v.object(t, name, named, m, reflect.Value{}); err != nil {
			return err
		}
		return setRaw(dst, m)
	}
	dst = settable(dst)
	v.stack = append(v.stack, frame{name: name, named: named})
	used, err := v.members(t, m, dst)
	if err != nil {
		return err
	}
	if used < len(m) {
		for _, k := range sortedKeys(m) {
			if !t.hasMember(k, m) {
				return qmp.Errorf("Parameter '%s' is unexpected", v.fullName(k, true))
			}
		}
	}
	v.stack = v.stack[:len(v.stack)-1]
	return nil
}

// members checks t's members (and its variant's, for a union) in m and
// returns how many were present. With dst valid (a struct of t's Go
// type), each member is stored in its field.
func (v *visitor) members(t *typ, m map[string]any, dst reflect.Value) (int, error) {
	used := 0
	for _, mem := range t.members {
		val, ok := m[mem.name]
		if !ok {
			if mem.optional {
				continue
			}
			return 0, qmp.Errorf("Parameter '%s' is missing", v.fullName(mem.name, true))
		}
		used++
		var f reflect.Value
		if dst.IsValid() {
			var err error
			if f, err = field(dst, mem.name); err != nil {
				return 0, err
			}
		}
		nv, changed, err := v.value(mem.typ, mem.name, true, val, f)
		if err != nil {
			return 0, err
		}
		if changed {
			m[mem.name] = nv
		}
	}
	if t.tag != nil {
		tv, _ := m[t.tag.name].(string)
		if vt := t.variantMap[tv]; vt != nil {
			var f reflect.Value
			if dst.IsValid() && len(vt.members) > 0 {
				var err error
				if f, err = field(dst, tv); err != nil {
					return 0, err
				}
				f = settable(f)
			}
			n, err := v.members(vt, m, f)
			if err != nil {
				return 0, err
			}
			used += n
		}
	}
	return used, nil
}

// value checks one value; it returns a replacement when normalisation
// changed it. With dst valid, the checked value is stored in it.
func (v *visitor) value(t *typ, name string, named bool, val any, dst reflect.Value) (any, bool, error) {
	switch t.kind {
	case kindAny:
		if dst.IsValid() && val != nil {
			dst.Set(reflect.ValueOf(jsonNumbers(val)))
		}
		return val, false, nil
	case kindStr, kindEnum:
		s, ok := val.(string)
		if !ok {
			if v.keyval {
				_, err := v.keyvalString(name, named, val)
				return nil, false, err
			}
			return nil, false, v.typeError(name, named, "string")
		}
		if t.kind == kindEnum {
			if _, ok := t.valueIndex[s]; !ok {
				return nil, false, qmp.Errorf("Parameter '%s' does not accept value '%s'", bareName(name, named), s)
			}
		}
		if dst.IsValid() {
			settable(dst).SetString(s)
		}
		return val, false, nil
	case kindBool:
		if v.keyval {
			s, err := v.keyvalString(name, named, val)
			if err != nil {
				return nil, false, err
			}
			b, ok := parseBool(s)
			if !ok {
				return nil, false, qmp.Errorf("Parameter '%s' expects 'on' or 'off'", v.fullName(name, named))
			}
			if dst.IsValid() {
				settable(dst).SetBool(b)
			}
			return b, true, nil
		}
		b, ok := val.(bool)
		if !ok {
			return nil, false, v.typeError(name, named, "boolean")
		}
		if dst.IsValid() {
			settable(dst).SetBool(b)
		}
		return val, false, nil
	case kindInt:
		return v.integer(t.intk, name, named, val, dst)
	case kindNumber:
		if v.keyval {
			s, err := v.keyvalString(name, named, val)
			if err != nil {
				return nil, false, err
			}
			f, ok := parseNumber(s)
			if !ok {
				return nil, false, v.typeError(name, named, "number")
			}
			if dst.IsValid() {
				settable(dst).SetFloat(f)
			}
			return json.Number(strconv.FormatFloat(f, 'g', -1, 64)), true, nil
		}
		var f float64
		switch x := val.(type) {
		case json.Number:
			f, _ = strconv.ParseFloat(string(x), 64)
		case float64:
			f = x
		case int:
			f = float64(x)
		case int64:
			f = float64(x)
		case uint64:
			f = float64(x)
		default:
			return nil, false, v.typeError(name, named, "number")
		}
		if dst.IsValid() {
			settable(dst).SetFloat(f)
		}
		return val, false, nil
	case kindNull:
		if val != nil {
			return nil, false, v.typeError(name, named, "null")
		}
		if dst.IsValid() {
			dst.SetBool(true) // an alternate's null branch
		}
		return nil, false, nil
	case kindArray:
		list, ok := val.([]any)
		if !ok {
			return nil, false, v.typeError(name, named, "array")
		}
		var elems reflect.Value
		if dst.IsValid() {
			elems = reflect.MakeSlice(dst.Type(), len(list), len(list))
			dst.Set(elems)
		}
		v.stack = append(v.stack, frame{name: name, named: named, list: true})
		top := len(v.stack) - 1
		for i, e := range list {
			v.stack[top].index = i
			var ed reflect.Value
			if elems.IsValid() {
				ed = elems.Index(i)
			}
			ne, changed, err := v.value(t.elem, "", false, e, ed)
			if err != nil {
				return nil, false, err
			}
			if changed {
				list[i] = ne
			}
		}
		v.stack = v.stack[:top]
		return val, false, nil
	case kindObject:
		m, ok := val.(map[string]any)
		if !ok {
			return nil, false, v.typeError(name, named, "object")
		}
		return val, false, v.object(t, name, named, m, dst)
	case kindAlternate:
		var branch *typ
		switch val.(type) {
		case map[string]any:
			branch = t.altKind[jsonObject]
		case []any:
			branch = t.altKind[jsonArray]
		case string:
			branch = t.altKind[jsonString]
		case bool:
			branch = t.altKind[jsonBool]
		case nil:
			branch = t.altKind[jsonNull]
		case json.Number, float64, int, int64, uint64:
			branch = t.altKind[jsonNumber]
		}
		if branch == nil {
			return nil, false, qmp.Errorf("Invalid parameter type for '%s', expected: %s", bareName(name, named), t.name)
		}
		if dst.IsValid() {
			var err error
			if dst, err = field(settable(dst), t.branchKey(branch)); err != nil {
				return nil, false, err
			}
		}
		return v.value(branch, name, named, val, dst)
	}
	return nil, false, qmp.Errorf("Internal error: parameter %s invalid", v.fullName(name, named))
}

// keyvalString fetches a keyval scalar; objects and lists where a scalar
// belongs mean that keys went too deep.
func (v *visitor) keyvalString(name string, named bool, val any) (string, error) {
	switch x := val.(type) {
	case string:
		return x, nil
	case map[string]any, []any:
		return "", qmp.Errorf("Parameters '%s.*' are unexpected", v.fullName(name, named))
	}
	return "", qmp.Errorf("Internal error: parameter %s invalid", v.fullName(name, named))
}

var intLimits = [...]struct {
	name     string
	min, max int64
	umax     uint64
}{
	intInt8:   {"int8", math.MinInt8, math.MaxInt8, 0},
	intInt16:  {"int16", math.MinInt16, math.MaxInt16, 0},
	intInt32:  {"int32", math.MinInt32, math.MaxInt32, 0},
	intUint8:  {"uint8", 0, 0, math.MaxUint8},
	intUint16: {"uint16", 0, 0, math.MaxUint16},
	intUint32: {"uint32", 0, 0, math.MaxUint32},
}

// integer checks an integer member: QEMU reads signed types as int64 and
// unsigned ones as uint64 (negative values wrap), then checks the range of
// the narrower types.
func (v *visitor) integer(k intKind, name string, named bool, val any, dst reflect.Value) (any, bool, error) {
	var (
		i       int64
		u       uint64
		changed bool
	)
	if v.keyval {
		s, err := v.keyvalString(name, named, val)
		if err != nil {
			return nil, false, err
		}
		var ok bool
		switch {
		case k == intSize:
			if u, ok = parseSize(s); !ok {
				return nil, false, qmp.Errorf("Parameter '%s' expects size", v.fullName(name, named))
			}
		case k.unsigned():
			u, ok = parseUint64(s)
		default:
			i, ok = parseInt64(s)
		}
		if !ok {
			return nil, false, qmp.Errorf("Parameter '%s' expects integer", v.fullName(name, named))
		}
		changed = true
	} else if k.unsigned() || k == intSize {
		var ok bool
		if u, changed, ok = jsonUint(val); !ok {
			return nil, false, qmp.Errorf("Parameter '%s' expects uint64", v.fullName(name, named))
		}
	} else {
		var ok bool
		if i, ok = jsonInt(val); !ok {
			return nil, false, v.typeError(name, named, "integer")
		}
	}
	switch k {
	case intInt8, intInt16, intInt32:
		if lim := intLimits[k]; i < lim.min || i > lim.max {
			return nil, false, qmp.Errorf("Parameter '%s' expects %s", bareName(name, named), lim.name)
		}
	case intUint8, intUint16, intUint32:
		if lim := intLimits[k]; u > lim.umax {
			return nil, false, qmp.Errorf("Parameter '%s' expects %s", bareName(name, named), lim.name)
		}
	}
	if dst.IsValid() {
		if k.unsigned() || k == intSize {
			settable(dst).SetUint(u)
		} else {
			settable(dst).SetInt(i)
		}
	}
	if !changed {
		return val, false, nil
	}
	if k.unsigned() || k == intSize {
		return json.Number(strconv.FormatUint(u, 10)), true, nil
	}
	return json.Number(strconv.FormatInt(i, 10)), true, nil
}

// numberClass sorts a JSON number literal the way QEMU's JSON parser does:
// integers that fit int64, else non-negative integers that fit uint64,
// else doubles (anything with a fraction or exponent, too).
func numberClass(s string) (i int64, u uint64, class int) {
	if strings.ContainsAny(s, ".eE") {
		return 0, 0, classFloat
	}
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return i, 0, classInt
	}
	if !strings.HasPrefix(s, "-") {
		if u, err := strconv.ParseUint(s, 10, 64); err == nil {
			return 0, u, classUint
		}
	}
	return 0, 0, classFloat
}

const (
	classInt = iota
	classUint
	classFloat
)

// jsonInt is qnum_get_try_int.
func jsonInt(val any) (int64, bool) {
	switch x := val.(type) {
	case json.Number:
		i, _, class := numberClass(string(x))
		return i, class == classInt
	case int:
		return int64(x), true
	case int64:
		return x, true
	case uint64:
		return int64(x), x <= math.MaxInt64
	}
	return 0, false
}

// jsonUint is QEMU's uint64 input: unsigned values, or signed ones
// wrapped. changed reports that the value had to be rewritten.
func jsonUint(val any) (u uint64, changed, ok bool) {
	switch x := val.(type) {
	case json.Number:
		i, u, class := numberClass(string(x))
		switch class {
		case classUint:
			return u, false, true
		case classInt:
			return uint64(i), i < 0, true
		}
	case int:
		return uint64(x), x < 0, true
	case int64:
		return uint64(x), x < 0, true
	case uint64:
		return x, false, true
	}
	return 0, false, false
}
