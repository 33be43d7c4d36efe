package qmp

import (
	"encoding/json"
	"io"
	"reflect"
	"strings"
	"testing"
)

// messages decodes a whole input and renders each message: the value as
// compact JSON, or "error: DESC".
func messages(t *testing.T, in string) []string {
	t.Helper()
	d := NewDecoder(strings.NewReader(in))
	var out []string
	for {
		v, err := d.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			if !IsParseError(err) {
				t.Fatalf("read error: %v", err)
			}
			out = append(out, "error: "+err.Error())
			continue
		}
		b, _ := json.Marshal(v)
		out = append(out, string(b))
	}
}

func TestDecoderStream(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"two on a line", `{"a": 1} {"b": 2}`, []string{`{"a":1}`, `{"b":2}`}},
		{"no newline at all", `{"a":1}{"b":[true,false,null]}`, []string{`{"a":1}`, `{"b":[true,false,null]}`}},
		{"over lines", "{\n\"a\"\n:\n[1,\n2]}\n", []string{`{"a":[1,2]}`}},
		{"single quotes", `{'a': 'it\'s "quoted"'}`, []string{`{"a":"it's \"quoted\""}`}},
		{"escapes", `["\u00e9\ud83d\ude00\n\t\/\\"]`, []string{`["é😀\n\t/\\"]`}},
		{"numbers", `[0, -1, 1.5, 2e3, -0.5E-2, 18446744073709551616]`, []string{`[0,-1,1.5,2e3,-0.5E-2,18446744073709551616]`}},
		{"scalars at top level", "1 \"s\" true\n", []string{`1`, `"s"`, `true`}},
		{"empty containers", `{"a": {}, "b": []}`, []string{`{"a":{},"b":[]}`}},

		{"expecting value", "{\"execute\": }\n{\"a\": 1}", []string{"error: JSON parse error, expecting value", `{"a":1}`}},
		{"stray close", "}\n{\"a\": 1}", []string{"error: JSON parse error, expecting value", `{"a":1}`}},
		{"duplicate key", `{"a": 1, "a": 2}`, []string{"error: JSON parse error, duplicate key"}},
		{"bad keyword", `{"a": tru}`, []string{"error: JSON parse error, invalid keyword 'tru'"}},
		{"missing colon", `{"a" 1}`, []string{"error: JSON parse error, missing : in object pair"}},
		{"key not a string", `{1: 2}`, []string{"error: JSON parse error, key is not a string in object"}},
		{"list separator", `[1 2]`, []string{"error: JSON parse error, expected separator in list"}},
		{"dict separator", `{"a": 1 "b": 2}`, []string{"error: JSON parse error, expected separator in dict"}},
		{"bad escape", `{"a": "\x"}`, []string{"error: JSON parse error, invalid escape sequence in string"}},
		{"short unicode", `{"a": "\u12"}`, []string{`error: JSON parse error, \u12" is not a valid Unicode character`}},
		{"lone surrogate", `{"a": "\ud800"}`, []string{`error: JSON parse error, \ud800 is not a valid Unicode character`}},
		{"bad UTF-8", "{\"a\": \"\xc3\"}", []string{"error: JSON parse error, invalid UTF-8 sequence in string"}},
		// A lexical error skips to the next bracket or line end.
		{"stray char", "@\n{\"a\": 1}", []string{"error: JSON parse error, stray '@'", `{"a":1}`}},
		{"stray in object", "{\"execute\": @foo}\n{\"a\": 1}", []string{
			"error: JSON parse error, stray '@'", "error: JSON parse error, expecting value", `{"a":1}`}},
		{"leading zero", `{"a": 01}`, []string{"error: JSON parse error, stray '01'", "error: JSON parse error, expecting value"}},
		{"bad minus", "{\"a\": -}\n[]", []string{"error: JSON parse error, stray '-}'", `[]`}},
		{"control in string", "{\"a\": \"\x01\"}\n[]", []string{"error: JSON parse error, stray '\"\x01'", "error: JSON parse error, expecting value", `[]`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := messages(t, tc.in)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("input %q\ngot  %q\nwant %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestDecoderLimits(t *testing.T) {
	defer func(s, c, n int) { maxTokenSize, maxTokenCount, maxNesting = s, c, n }(maxTokenSize, maxTokenCount, maxNesting)
	maxTokenSize, maxTokenCount, maxNesting = 1000, 100, 10

	deep := strings.Repeat("[", 11) + strings.Repeat("]", 11)
	got := messages(t, deep+"\n{\"ok\": 1}")
	if got[0] != "error: JSON nesting depth limit exceeded" || got[len(got)-1] != `{"ok":1}` {
		t.Errorf("nesting: %q", got)
	}
	many := "[" + strings.Repeat("1,", 60) + "1]"
	got = messages(t, many+"\n{\"ok\": 1}")
	if got[0] != "error: JSON token count limit exceeded" || got[len(got)-1] != `{"ok":1}` {
		t.Errorf("count: %q", got)
	}
	big := `{"a": "` + strings.Repeat("x", 2000) + `"}`
	got = messages(t, big+"\n{\"ok\": 1}")
	if got[0] != "error: JSON token size limit exceeded" || got[len(got)-1] != `{"ok":1}` {
		t.Errorf("size: %q", got)
	}
	// Within the limits all is well.
	if got := messages(t, strings.Repeat("[", 10)+strings.Repeat("]", 10)); len(got) != 1 || strings.HasPrefix(got[0], "error") {
		t.Errorf("depth 10: %q", got)
	}
}

func TestParseJSON(t *testing.T) {
	v, err := ParseJSON([]byte(`{'driver': 'null-co', "size": 1024}`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"driver": "null-co", "size": json.Number("1024")}
	if !reflect.DeepEqual(v, want) {
		t.Errorf("got %#v", v)
	}
	for _, bad := range []string{``, `{"a": 1`, `{"a": 1} {"b": 2}`, `{"a": @}`} {
		if _, err := ParseJSON([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	// A number or keyword that ends the input ends with it.
	if v, err := ParseJSON([]byte(`42`)); err != nil || v != json.Number("42") {
		t.Errorf("42: %v %v", v, err)
	}
}

func TestQEMUStyle(t *testing.T) {
	b, err := appendValue(nil, map[string]any{"a": []any{1, "é😀\x01<&>\x7f"}, "b": map[string]any{}})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"a": [1, "\u00E9\uD83D\uDE00\u0001<&>\u007F"], "b": {}}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
	for in, want := range map[string]string{"1.5e3": "1500", "18446744073709551616": "1.8446744073709552e+19",
		"-9223372036854775809": "-9.2233720368547758e+18", "7": "7", "18446744073709551615": "18446744073709551615"} {
		if got := qemuID(json.Number(in)); got != json.Number(want) {
			t.Errorf("id %s: got %v, want %s", in, got, want)
		}
	}
}

func FuzzParseJSON(f *testing.F) {
	for _, s := range []string{`{"execute": "query-version"}`, `{'a': ['\'', 1.5e3, null]}`, `[[[[]]]]`,
		"{\"a\": \"\\ud83d\\ude00\"}", `{"a" 1}`, "\xff{", `-0.0e+1`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		v, err := ParseJSON(in)
		if err != nil {
			return
		}
		// Whatever parses must print and parse back to the same value.
		b, err := appendValue(nil, v)
		if err != nil {
			t.Fatalf("cannot print %#v: %v", v, err)
		}
		v2, err := ParseJSON(b)
		if err != nil {
			t.Fatalf("printed %q does not parse: %v", b, err)
		}
		if !reflect.DeepEqual(v, v2) {
			t.Fatalf("round trip: %#v != %#v", v, v2)
		}
	})
}
