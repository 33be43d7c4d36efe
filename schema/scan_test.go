package schema

import (
	"encoding/json"
	"reflect"
	"testing"
)

// TestOrderedObject checks the hand-written object splitter against
// encoding/json: keys with escapes, nested values holding the delimiters
// in strings, scalars before a closing brace, white space everywhere.
func TestOrderedObject(t *testing.T) {
	src := " {\n \"a\" : \"x,}\\\"y\" , \"b\\u0063\\n\":{\"k\":[1,{\"z\":\"]}\"}],\"e\":{}},\"n\":-1.5e3," +
		"\"t\":true,\"f\":false , \"nul\":null,\"l\":[ ],\"\u00e9\":\"\u00e9\"\t}\r\n"
	got, err := orderedObject(json.RawMessage(src))
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]json.RawMessage
	if err := json.Unmarshal([]byte(src), &want); err != nil {
		t.Fatal(err)
	}
	keys := []string{"a", "bc\n", "n", "t", "f", "nul", "l", "\u00e9"}
	if len(got) != len(keys) {
		t.Fatalf("got %d members, want %d: %q", len(got), len(keys), got)
	}
	for i, f := range got {
		if f.key != keys[i] {
			t.Errorf("member %d is %q, want %q", i, f.key, keys[i])
		}
		var g, w any
		if err := json.Unmarshal(f.val, &g); err != nil {
			t.Errorf("%s: value %q: %v", f.key, f.val, err)
		}
		json.Unmarshal(want[f.key], &w)
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%s: value %q, want %q", f.key, f.val, want[f.key])
		}
	}
	for _, tc := range []struct{ src, want string }{
		{``, "EOF"},
		{` [1]`, "expected an object"},
		{`{"a": 1,}`, "invalid JSON object"},
		{`{"a": 1, "a": 2}`, "duplicate key 'a'"},
		{`{"a": 1} {}`, "invalid JSON object"},
	} {
		if _, err := orderedObject(json.RawMessage(tc.src)); err == nil || err.Error() != tc.want {
			t.Errorf("%q: error %v, want %q", tc.src, err, tc.want)
		}
	}
}

// TestDecodeString checks the plain-string shortcut against encoding/json.
func TestDecodeString(t *testing.T) {
	for _, src := range []string{`"abc"`, `""`, `"a\"b"`, `"\u00e9"`, "\"\xff\"", "\"a\tb\"", `"é"`, `1`, `["a"]`, `"a" "b"`} {
		var want string
		got, gerr := decodeString(json.RawMessage(src))
		werr := json.Unmarshal([]byte(src), &want)
		if (gerr == nil) != (werr == nil) || got != want {
			t.Errorf("%q: got %q (%v), encoding/json %q (%v)", src, got, gerr, want, werr)
		}
	}
}

// TestArrayItems checks the array splitter against encoding/json.
func TestArrayItems(t *testing.T) {
	for _, src := range []string{`["a", "b,]"]`, ` [ ] `, `[{"name": "x", "features": ["f"]}, "y" ,1,[2,[3]]]`, `null`} {
		got, err := arrayItems(json.RawMessage(src))
		var want []json.RawMessage
		werr := json.Unmarshal([]byte(src), &want)
		if err != nil || werr != nil || len(got) != len(want) {
			t.Fatalf("%s: got %q (%v), encoding/json %q (%v)", src, got, err, want, werr)
		}
		for i := range got {
			if string(got[i]) != string(want[i]) {
				t.Errorf("%s: item %d is %q, want %q", src, i, got[i], want[i])
			}
		}
	}
	for _, src := range []string{``, `{}`, `["a",]`, `"a"`} {
		if _, err := arrayItems(json.RawMessage(src)); err == nil {
			t.Errorf("%q: no error", src)
		}
	}
}
