package schema

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sync"
)

// What Decode needs to store checked values into the Go types GoTypes
// generates: a member's field is the one GoTypes names after it (goName),
// found once per Go type and member and remembered.

var rawMessageType = reflect.TypeFor[json.RawMessage]()

// fieldKey names a member (or a union's variant, or an alternate's
// branch) of a Go struct type.
type fieldKey struct {
	t    reflect.Type
	name string
}

// fieldIndex maps a fieldKey to its field's index path ([]int).
var fieldIndex sync.Map

// field returns the field of struct value dst that holds QAPI member
// name. A member without a field means the generated types are not the
// schema's (a test keeps them current).
func field(dst reflect.Value, name string) (reflect.Value, error) {
	k := fieldKey{dst.Type(), name}
	idx, ok := fieldIndex.Load(k)
	if !ok {
		f, found := k.t.FieldByName(goName(name))
		if !found {
			return reflect.Value{}, fmt.Errorf("schema: Go type %s has no field for member '%s': run go generate ./qapi/", k.t, name)
		}
		idx, _ = fieldIndex.LoadOrStore(k, f.Index)
	}
	return dst.FieldByIndex(idx.([]int)), nil
}

// settable returns where a value goes: dst itself, or for a pointer (an
// optional member) a new value dst now points to.
func settable(dst reflect.Value) reflect.Value {
	if dst.Kind() != reflect.Pointer {
		return dst
	}
	p := reflect.New(dst.Type().Elem())
	dst.Set(p)
	return p.Elem()
}

// setRaw stores a checked object as JSON (a union left as JSON).
func setRaw(dst reflect.Value, m map[string]any) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	dst.SetBytes(b)
	return nil
}

// jsonNumbers returns an 'any' value with its numbers as json.Number, as
// encoding/json's UseNumber decodes them.
func jsonNumbers(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = jsonNumbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = jsonNumbers(e)
		}
	case int, int64, uint64, float64:
		b, _ := json.Marshal(x)
		return json.Number(b)
	}
	return v
}

// branchKey is the name of the alternate's branch of type b (GoTypes
// names the branch's field after it).
func (t *typ) branchKey(b *typ) string {
	for i, a := range t.alts {
		if a == b {
			return t.altKeys[i]
		}
	}
	return ""
}
