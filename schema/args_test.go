package schema

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/qbmond/qbmond/keyval"
	"github.com/qbmond/qbmond/qmp"
)

func mustLoad(tb testing.TB) *Schema {
	tb.Helper()
	s, err := Load()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// decode parses JSON the way the QMP parser hands values over (json.Number).
func decode(tb testing.TB, s string) any {
	tb.Helper()
	if s == "" {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		tb.Fatalf("bad test JSON %s: %v", s, err)
	}
	return v
}

func marshal(tb testing.TB, v any) string {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

// Every message below is what qemu-storage-daemon 7.2 answered to the same
// request.
func TestArgsErrorsJSON(t *testing.T) {
	s := mustLoad(t)
	tests := []struct{ cmd, args, want string }{
		// missing, nested names
		{"blockdev-add", `{"node-name":"a"}`, "Parameter 'driver' is missing"},
		{"blockdev-add", `{}`, "Parameter 'driver' is missing"},
		{"blockdev-add", ``, "Parameter 'driver' is missing"},
		{"blockdev-add", `{"driver":"raw"}`, "Parameter 'file' is missing"},
		{"blockdev-add", `{"driver":"raw","node-name":"a","file":{"driver":"file"}}`, "Parameter 'file.filename' is missing"},
		{"blockdev-add", `{"driver":"raw","file":{}}`, "Parameter 'file.driver' is missing"},
		// types
		{"blockdev-add", `{"driver":5}`, "Invalid parameter type for 'driver', expected: string"},
		{"blockdev-add", `{"driver":null}`, "Invalid parameter type for 'driver', expected: string"},
		{"blockdev-add", `{"driver":"null-co","node-name":null}`, "Invalid parameter type for 'node-name', expected: string"},
		{"blockdev-add", `{"driver":"null-co","node-name":5,"zzz":1}`, "Invalid parameter type for 'node-name', expected: string"},
		{"blockdev-add", `{"driver":"raw","node-name":"a","file":{"driver":"file","filename":5}}`, "Invalid parameter type for 'file.filename', expected: string"},
		{"blockdev-add", `{"driver":"raw","file":{"driver":"raw","file":{"driver":"file","filename":5}}}`, "Invalid parameter type for 'file.file.filename', expected: string"},
		{"blockdev-add", `{"driver":"raw","node-name":"a","file":{"driver":5,"filename":5}}`, "Invalid parameter type for 'file.driver', expected: string"},
		{"blockdev-add", `{"driver":"raw","node-name":"a","file":{"driver":"file","filename":"x","cache":{"direct":1}}}`, "Invalid parameter type for 'file.cache.direct', expected: boolean"},
		{"blockdev-add", `{"driver":"raw","file":{"driver":"raw","file":{"driver":"file","filename":"x","cache":{"direct":"x"}}}}`, "Invalid parameter type for 'file.file.cache.direct', expected: boolean"},
		{"blockdev-add", `{"driver":"raw","node-name":"a","file":{"driver":"file","filename":"x","cache":5}}`, "Invalid parameter type for 'file.cache', expected: object"},
		{"blockdev-add", `{"driver":"null-co","size":"x"}`, "Invalid parameter type for 'size', expected: integer"},
		{"blockdev-add", `{"driver":"null-co","size":1.5}`, "Invalid parameter type for 'size', expected: integer"},
		{"blockdev-add", `{"driver":"null-co","size":1.0}`, "Invalid parameter type for 'size', expected: integer"},
		{"blockdev-add", `{"driver":"null-co","size":1e3}`, "Invalid parameter type for 'size', expected: integer"},
		{"blockdev-add", `{"driver":"null-co","size":9223372036854775808}`, "Invalid parameter type for 'size', expected: integer"},
		{"blockdev-add", `{"driver":"null-co","size":18446744073709551615}`, "Invalid parameter type for 'size', expected: integer"},
		{"blockdev-add", `{"driver":"null-co","size":-9223372036854775809}`, "Invalid parameter type for 'size', expected: integer"},
		{"blockdev-add", `{"driver":"null-co","read-zeroes":null,"size":"x"}`, "Invalid parameter type for 'size', expected: integer"},
		{"blockdev-add", `{"driver":"raw","file":{"driver":"null-co","size":"x","zz":1}}`, "Invalid parameter type for 'file.size', expected: integer"},
		{"blockdev-add", `{"driver":"null-co","latency-ns":"x"}`, "Parameter 'latency-ns' expects uint64"},
		{"blockdev-add", `{"driver":"null-co","latency-ns":"1"}`, "Parameter 'latency-ns' expects uint64"},
		{"blockdev-add", `{"driver":"null-co","latency-ns":1.5}`, "Parameter 'latency-ns' expects uint64"},
		{"blockdev-add", `{"driver":"null-co","latency-ns":18446744073709551616}`, "Parameter 'latency-ns' expects uint64"},
		{"blockdev-add", `{"driver":"null-co","latency-ns":-9223372036854775809}`, "Parameter 'latency-ns' expects uint64"},
		{"blockdev-add", `{"driver":"null-co","read-zeroes":"on"}`, "Invalid parameter type for 'read-zeroes', expected: boolean"},
		{"blockdev-add", `{"driver":"file","filename":"/x","x-check-cache-dropped":"x"}`, "Invalid parameter type for 'x-check-cache-dropped', expected: boolean"},
		{"blockdev-add", `{"driver":"file","filename":"/x","aio-max-batch":99999999999999999999}`, "Invalid parameter type for 'aio-max-batch', expected: integer"},
		{"blockdev-add", `{"driver":"raw","file":"nonexist","size":"x","offset":"y"}`, "Invalid parameter type for 'offset', expected: integer"},
		{"query-named-block-nodes", `{"flat":"x"}`, "Invalid parameter type for 'flat', expected: boolean"},
		{"query-named-block-nodes", `{"flat":null}`, "Invalid parameter type for 'flat', expected: boolean"},
		{"qmp_capabilities", `{"enable":[5]}`, "Invalid parameter type for 'enable[0]', expected: string"},
		{"qmp_capabilities", `{"enable":["oob",5]}`, "Invalid parameter type for 'enable[1]', expected: string"},
		{"qmp_capabilities", `{"enable":"oob"}`, "Invalid parameter type for 'enable', expected: array"},
		// alternates: QEMU names the member alone and the alternate type
		{"blockdev-add", `{"driver":"raw","node-name":"a","file":5}`, "Invalid parameter type for 'file', expected: BlockdevRef"},
		{"blockdev-add", `{"driver":"raw","file":null}`, "Invalid parameter type for 'file', expected: BlockdevRef"},
		{"blockdev-add", `{"driver":"raw","node-name":"a","file":{"driver":"raw","file":5}}`, "Invalid parameter type for 'file', expected: BlockdevRef"},
		// enums and the union discriminator: the member alone, 'null' in lists
		{"blockdev-add", `{"driver":"foo"}`, "Parameter 'driver' does not accept value 'foo'"},
		{"blockdev-add", `{"driver":"raw","node-name":"a","file":{"driver":"foo","filename":5}}`, "Parameter 'driver' does not accept value 'foo'"},
		{"blockdev-add", `{"driver":"raw","node-name":"a","file":{"driver":"file","filename":"x","aio":"bad"}}`, "Parameter 'aio' does not accept value 'bad'"},
		{"blockdev-add", `{"driver":"raw","file":{"driver":"raw","file":{"driver":"file","filename":"x","aio":"x"}}}`, "Parameter 'aio' does not accept value 'x'"},
		{"blockdev-add", `{"driver":"file","filename":"/x","locking":"x"}`, "Parameter 'locking' does not accept value 'x'"},
		{"blockdev-add", `{"driver":"file","filename":"/x","detect-zeroes":"x"}`, "Parameter 'detect-zeroes' does not accept value 'x'"},
		{"blockdev-add", `{"driver":"null-co","discard":"x","size":"x"}`, "Parameter 'discard' does not accept value 'x'"},
		{"blockdev-add", `{"driver":"null-co","size":"x","discard":"x"}`, "Parameter 'discard' does not accept value 'x'"},
		{"qmp_capabilities", `{"enable":["x"]}`, "Parameter 'null' does not accept value 'x'"},
		// unexpected members, checked when their object is done
		{"blockdev-add", `{"driver":"null-co","zzz":1}`, "Parameter 'zzz' is unexpected"},
		{"blockdev-add", `{"driver":"raw","node-name":"a","file":{"driver":"file","filename":"x","bogus":1}}`, "Parameter 'file.bogus' is unexpected"},
		{"blockdev-add", `{"driver":"raw","file":{"driver":"raw","file":{"driver":"file","filename":"x","zz":1}},"yy":2}`, "Parameter 'file.file.zz' is unexpected"},
		{"blockdev-add", `{"driver":"raw","file":{"driver":"raw","file":{"driver":"file","filename":"x"},"zz":1},"yy":2}`, "Parameter 'file.zz' is unexpected"},
		{"blockdev-add", `{"driver":"raw","file":{"driver":"raw","file":{"driver":"file","filename":"x"}},"yy":2}`, "Parameter 'yy' is unexpected"},
		{"blockdev-add", `{"driver":"raw","file":"x","file2":"y","size":5}`, "Parameter 'file2' is unexpected"},
		{"blockdev-add", `{"driver":"raw","file":{"driver":"file","filename":"x"},"cache":{"direct":true,"x":1}}`, "Parameter 'cache.x' is unexpected"},
		{"blockdev-del", `{"node-name":"x","y":1}`, "Parameter 'y' is unexpected"},
		{"query-version", `{"x":1}`, "Parameter 'x' is unexpected"},
		{"x-debug-query-block-graph", `{"x":1}`, "Parameter 'x' is unexpected"},
		{"blockdev-del", `{}`, "Parameter 'node-name' is missing"},
	}
	for _, tc := range tests {
		_, err := s.Args(tc.cmd, decode(t, tc.args), false)
		if err == nil {
			t.Errorf("%s %s: no error, want %q", tc.cmd, tc.args, tc.want)
			continue
		}
		var qe *qmp.Error
		if !errors.As(err, &qe) || qe.Class != qmp.ClassGeneric {
			t.Errorf("%s %s: error %#v is not a GenericError", tc.cmd, tc.args, err)
		}
		if err.Error() != tc.want {
			t.Errorf("%s %s:\n got %q\nwant %q", tc.cmd, tc.args, err, tc.want)
		}
	}
}

// Messages of qemu-storage-daemon 7.2 for --blockdev in keyval syntax.
func TestArgsErrorsKeyval(t *testing.T) {
	s := mustLoad(t)
	tests := []struct{ in, want string }{
		{"", "Parameter 'driver' is missing"},
		{"a-b=1", "Parameter 'driver' is missing"},
		{"driver", "Parameter 'driver' does not accept value 'driver'"},
		{"driver=foo", "Parameter 'driver' does not accept value 'foo'"},
		{"driver=null-co,,node-name=n", "Parameter 'driver' does not accept value 'null-co,node-name=n'"},
		{"driver.x=1", "Parameters 'driver.*' are unexpected"},
		{"driver=null-co,node-name.x=1", "Parameters 'node-name.*' are unexpected"},
		{"driver=null-co,node-name=n,size.x=1", "Parameters 'size.*' are unexpected"},
		{"driver=null-co,node-name=n,read-zeroes=ON", "Parameter 'read-zeroes' expects 'on' or 'off'"},
		{"driver=null-co,node-name=n,read-zeroes=1", "Parameter 'read-zeroes' expects 'on' or 'off'"},
		{"driver=null-co,node-name=n,read-zeroes=", "Parameter 'read-zeroes' expects 'on' or 'off'"},
		{"driver=null-co,node-name=n,read-zeroes=on,read-zeroes=bad", "Parameter 'read-zeroes' expects 'on' or 'off'"},
		{"driver=null-co,node-name=n,cache.direct=x", "Parameter 'cache.direct' expects 'on' or 'off'"},
		{"driver=null-co,node-name=n,size=1k", "Parameter 'size' expects integer"},
		{"driver=null-co,node-name=n,size=x", "Parameter 'size' expects integer"},
		{"driver=null-co,node-name=n,size=1.5", "Parameter 'size' expects integer"},
		{"driver=null-co,node-name=n,size=5 ", "Parameter 'size' expects integer"},
		{"driver=null-co,node-name=n,size=08", "Parameter 'size' expects integer"},
		{"driver=null-co,node-name=n,size=99999999999999999999", "Parameter 'size' expects integer"},
		{"driver=null-co,node-name=n,size=9223372036854775808", "Parameter 'size' expects integer"},
		{"driver=null-co,node-name=n,latency-ns=x", "Parameter 'latency-ns' expects integer"},
		{"driver=null-co,node-name=n,latency-ns=18446744073709551616", "Parameter 'latency-ns' expects integer"},
		{"driver=raw,node-name=n,file.driver=null-co,file.size=x", "Parameter 'file.size' expects integer"},
		{"driver=null-co,node-name=n,cache=1", "Invalid parameter type for 'cache', expected: object"},
		{"driver=raw,node-name=n,file.0=a", "Invalid parameter type for 'file', expected: BlockdevRef"},
		{"driver=raw,file.driver=raw,file.file.0=x", "Invalid parameter type for 'file', expected: BlockdevRef"},
		{"driver=raw,node-name=n,file.driver=file", "Parameter 'file.filename' is missing"},
		{"driver=null-co,node-name=n,discard=bad", "Parameter 'discard' does not accept value 'bad'"},
		{"driver=null-co,node-name=n,read-zeroes=no,discard=x", "Parameter 'discard' does not accept value 'x'"},
		{"driver=null-co,node-name=n,x=1", "Parameter 'x' is unexpected"},
		{"driver=null-co,node-name=n,cache.direct=off,cache.x=1", "Parameter 'cache.x' is unexpected"},
		{"driver=null-co,node-name=n,read-zeroes=n,cache.x.y=1", "Parameter 'cache.x' is unexpected"},
		{"driver=null-co,node-name=n,file.driver=file,cache.direct=on", "Parameter 'file' is unexpected"},
		{"driver=raw,node-name=n,file.driver=null-co,file.x.y=1", "Parameter 'file.x' is unexpected"},
		{"driver=raw,node-name=r,file.driver=null-co,file.size= -5,file.x=1", "Parameter 'file.x' is unexpected"},
		{"driver=null-co,node-name=n,size=-9223372036854775808,y=1", "Parameter 'y' is unexpected"},
		{"driver=null-co,node-name=n,latency-ns=-18446744073709551615,q=1", "Parameter 'q' is unexpected"},
		{"driver=null-co,node-name=n,latency-ns=+5,q=1", "Parameter 'q' is unexpected"},
		{"driver=null-co,node-name=n,read-zeroes=yes,read-only=y,force-share=true,auto-read-only=off,q=1", "Parameter 'q' is unexpected"},
		{"null-co,read-zeroes=no,read-only=n,force-share=false,q=1", "Parameter 'q' is unexpected"},
	}
	for _, tc := range tests {
		tree, err := keyval.Parse(tc.in, "driver")
		if err != nil {
			t.Errorf("keyval %q: %v", tc.in, err)
			continue
		}
		_, err = s.Args("blockdev-add", tree, true)
		if err == nil {
			t.Errorf("keyval %q: no error, want %q", tc.in, tc.want)
			continue
		}
		if err.Error() != tc.want {
			t.Errorf("keyval %q:\n got %q\nwant %q", tc.in, err, tc.want)
		}
	}
}

func TestArgsNormalised(t *testing.T) {
	s := mustLoad(t)
	tests := []struct {
		cmd, in string
		keyval  bool
		want    string
	}{
		{"blockdev-add", "null-co,node-name=n,size=0x10,read-zeroes=yes,latency-ns=-1,cache.direct=off",
			true, `{"cache":{"direct":false},"driver":"null-co","latency-ns":18446744073709551615,"node-name":"n","read-zeroes":true,"size":16}`},
		{"blockdev-add", "driver=raw,node-name=d0,file.driver=file,file.filename=disk,,1.img,offset=010,size= -0x10",
			true, `{"driver":"raw","file":{"driver":"file","filename":"disk,1.img"},"node-name":"d0","offset":8,"size":-16}`},
		{"blockdev-add", "driver=raw,file=base", true, `{"driver":"raw","file":"base"}`},
		{"blockdev-add", `{"driver":"null-co","latency-ns":-1,"size":9223372036854775807}`,
			false, `{"driver":"null-co","latency-ns":18446744073709551615,"size":9223372036854775807}`},
		{"blockdev-add", `{"driver":"raw","file":{"driver":"null-aio","latency-ns":-0}}`,
			false, `{"driver":"raw","file":{"driver":"null-aio","latency-ns":-0}}`},
		{"qmp_capabilities", `{"enable":["oob"]}`, false, `{"enable":["oob"]}`},
		{"query-named-block-nodes", `{"flat":true}`, false, `{"flat":true}`},
	}
	for _, tc := range tests {
		var in any
		if tc.keyval {
			var err error
			if in, err = keyval.Parse(tc.in, "driver"); err != nil {
				t.Fatal(err)
			}
		} else {
			in = decode(t, tc.in)
		}
		out, err := s.Args(tc.cmd, in, tc.keyval)
		if err != nil {
			t.Errorf("%s %s: %v", tc.cmd, tc.in, err)
			continue
		}
		if got := marshal(t, out); got != tc.want {
			t.Errorf("%s %s:\n got %s\nwant %s", tc.cmd, tc.in, got, tc.want)
		}
	}
}

func TestArgsNoArguments(t *testing.T) {
	s := mustLoad(t)
	for _, c := range []string{"query-version", "quit", "query-block", "query-named-block-nodes", "qmp_capabilities"} {
		if _, err := s.Args(c, nil, false); err != nil {
			t.Errorf("%s without arguments: %v", c, err)
		}
		if _, err := s.Args(c, map[string]any{}, false); err != nil {
			t.Errorf("%s with {}: %v", c, err)
		}
	}
	if _, err := s.Args("no-such-command", nil, false); err == nil ||
		qmp.AsError(err).Class != qmp.ClassCommandNotFound {
		t.Errorf("unknown command: %v", err)
	}
	if _, err := s.Args("query-version", []any{}, false); err == nil {
		t.Error("non-object arguments accepted")
	}
}

// Checks of the integer types the current commands do not use yet, with
// QEMU's messages (the narrow types name the member alone).
func TestArgsIntegerTypes(t *testing.T) {
	s := loadTest(t, `
{"struct": "Ints", "data": {"*i8": "int8", "*u8": "uint8", "*i32": "int32",
  "*u32": "uint32", "*sz": "size", "*num": "number", "*n": "null", "*a": "any",
  "*l": ["uint16"], "*alt": "Alt"}}
{"alternate": "Alt", "data": {"n": "number", "s": "str"}}
{"command": "ints", "data": {"x": "Ints"}}
`)
	tests := []struct {
		args   string
		keyval bool
		want   string
	}{
		{`{"x":{"i8":127,"u8":255,"i32":-2147483648,"u32":4294967295,"sz":18446744073709551615}}`, false, ""},
		{`{"x":{"i8":128}}`, false, "Parameter 'i8' expects int8"},
		{`{"x":{"i8":-129}}`, false, "Parameter 'i8' expects int8"},
		{`{"x":{"i8":"1"}}`, false, "Invalid parameter type for 'x.i8', expected: integer"},
		{`{"x":{"u8":256}}`, false, "Parameter 'u8' expects uint8"},
		{`{"x":{"u8":-1}}`, false, "Parameter 'u8' expects uint8"},
		{`{"x":{"u8":"1"}}`, false, "Parameter 'x.u8' expects uint64"},
		{`{"x":{"i32":2147483648}}`, false, "Parameter 'i32' expects int32"},
		{`{"x":{"u32":4294967296}}`, false, "Parameter 'u32' expects uint32"},
		{`{"x":{"sz":"1k"}}`, false, "Parameter 'x.sz' expects uint64"},
		{`{"x":{"num":1.5}}`, false, ""},
		{`{"x":{"num":1}}`, false, ""},
		{`{"x":{"num":"1"}}`, false, "Invalid parameter type for 'x.num', expected: number"},
		{`{"x":{"n":null,"a":{"anything":[1,"x"]}}}`, false, ""},
		{`{"x":{"n":1}}`, false, "Invalid parameter type for 'x.n', expected: null"},
		{`{"x":{"l":[1,2,65536]}}`, false, "Parameter 'null' expects uint16"},
		{`{"x":{"l":[1,"2"]}}`, false, "Parameter 'x.l[1]' expects uint64"},
		{`{"x":{"alt":1.5}}`, false, ""},
		{`{"x":{"alt":"s"}}`, false, ""},
		{`{"x":{"alt":true}}`, false, "Invalid parameter type for 'alt', expected: Alt"},
		{`{"x":{"sz":"1.5k","u32":"0x10","i8":"-0x80","num":" 1e3","l":{"0":"1"}}}`, true, ""},
		{`{"x":{"sz":"1.5"}}`, true, "Parameter 'x.sz' expects size"},
		{`{"x":{"num":"1e999"}}`, true, "Invalid parameter type for 'x.num', expected: number"},
		{`{"x":{"num":"nan"}}`, true, "Invalid parameter type for 'x.num', expected: number"},
		{`{"x":{"l":["1","x"]}}`, true, "Parameter 'x.l.1' expects integer"},
		{`{"x":{"i8":"200"}}`, true, "Parameter 'i8' expects int8"},
		{`{"x":{"alt":"5"}}`, true, ""},
	}
	for _, tc := range tests {
		in := decode(t, tc.args)
		if tc.keyval {
			// Lists arrive from keyval as []any; build one where the test
			// wrote an index object.
			if x, ok := in.(map[string]any)["x"].(map[string]any); ok {
				if l, ok := x["l"].(map[string]any); ok {
					x["l"] = []any{l["0"]}
				}
			}
		}
		_, err := s.Args("ints", in, tc.keyval)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("%s (keyval %v):\n got %q\nwant %q", tc.args, tc.keyval, got, tc.want)
		}
	}
}

func TestArgsKeyvalConvertedTypes(t *testing.T) {
	s := loadTest(t, `
{"struct": "T", "data": {"sz": "size", "num": "number", "b": "bool", "l": ["int"]}}
{"command": "t", "data": "T"}
`)
	in := map[string]any{"sz": "1.5k", "num": "0.25", "b": "off", "l": []any{"1", "-2"}}
	out, err := s.Args("t", in, true)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := marshal(t, out), `{"b":false,"l":[1,-2],"num":0.25,"sz":1536}`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func BenchmarkArgsBlockdevAdd(b *testing.B) {
	s := mustLoad(b)
	const in = `{"driver":"raw","node-name":"d0","read-only":true,"cache":{"direct":false},
		"file":{"driver":"null-co","size":1073741824,"read-zeroes":true}}`
	for b.Loop() {
		if _, err := s.Args("blockdev-add", decode(b, in), false); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkArgsBlockdevAddOnly(b *testing.B) {
	s := mustLoad(b)
	dec := json.NewDecoder(bytes.NewReader([]byte(`{"driver":"null-co","node-name":"n0","size":1073741824}`)))
	dec.UseNumber()
	var in any
	if err := dec.Decode(&in); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Args("blockdev-add", in, false); err != nil {
			b.Fatal(err)
		}
	}
}
