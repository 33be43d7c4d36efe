package blockdev

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// Options are a node's options as a JSON value tree: the validated
// blockdev-add arguments (map[string]any, []any, string, json.Number, bool,
// nil). The typed getters accept the forms the QMP and command-line paths
// produce (json.Number, Go numbers, and strings for keyval input) and
// report a missing or mistyped member as an error in QEMU's words.
type Options map[string]any

// DecodeOptions decodes a JSON object into Options, keeping numbers as
// json.Number.
func DecodeOptions(raw []byte) (Options, error) {
	var m map[string]any
	if err := decodeJSON(raw, &m); err != nil {
		return nil, err
	}
	return Options(m), nil
}

// Has tells whether key is present.
func (o Options) Has(key string) bool { _, ok := o[key]; return ok }

// String returns a string member; ok is false when absent.
func (o Options) String(key string) (s string, ok bool, err error) {
	v, ok := o[key]
	if !ok {
		return "", false, nil
	}
	s, isStr := v.(string)
	if !isStr {
		return "", true, fmt.Errorf("Invalid parameter type for '%s', expected: string", key)
	}
	return s, true, nil
}

// Bool returns a boolean member, def when absent.
func (o Options) Bool(key string, def bool) (bool, error) {
	v, ok := o[key]
	if !ok {
		return def, nil
	}
	switch b := v.(type) {
	case bool:
		return b, nil
	case string:
		switch b {
		case "on", "true", "yes":
			return true, nil
		case "off", "false", "no":
			return false, nil
		}
	}
	return false, fmt.Errorf("Invalid parameter type for '%s', expected: boolean", key)
}

// Int returns an integer member; ok is false when absent.
func (o Options) Int(key string) (n int64, ok bool, err error) {
	v, ok := o[key]
	if !ok {
		return 0, false, nil
	}
	bad := fmt.Errorf("Invalid parameter type for '%s', expected: integer", key)
	switch x := v.(type) {
	case json.Number:
		n, err := strconv.ParseInt(string(x), 10, 64)
		if err != nil {
			// QAPI's unsigned members hold up to 2^64-1; QEMU's drivers
			// read them into signed integers, so large values wrap.
			u, uerr := strconv.ParseUint(string(x), 10, 64)
			if uerr != nil {
				return 0, true, bad
			}
			return int64(u), true, nil
		}
		return n, true, nil
	case string:
		n, err := strconv.ParseInt(x, 0, 64)
		if err != nil {
			return 0, true, bad
		}
		return n, true, nil
	case int:
		return int64(x), true, nil
	case int64:
		return x, true, nil
	case uint64:
		if x > math.MaxInt64 {
			return 0, true, bad
		}
		return int64(x), true, nil
	case float64:
		if x != math.Trunc(x) || math.Abs(x) > 1<<53 {
			return 0, true, bad
		}
		return int64(x), true, nil
	}
	return 0, true, bad
}

// Object returns a nested object member, nil when absent.
func (o Options) Object(key string) (Options, error) {
	v, ok := o[key]
	if !ok {
		return nil, nil
	}
	m, isMap := v.(map[string]any)
	if !isMap {
		if om, isOpts := v.(Options); isOpts {
			return om, nil
		}
		return nil, fmt.Errorf("Invalid parameter type for '%s', expected: object", key)
	}
	return Options(m), nil
}

// Clone copies the top level of o.
func (o Options) Clone() Options {
	c := make(Options, len(o))
	for k, v := range o {
		c[k] = v
	}
	return c
}
