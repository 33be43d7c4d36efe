package schema

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/qbmond/qbmond/keyval"
)

// FuzzArgs feeds random JSON trees and keyval strings to Args: it must
// never panic, and what it accepts must be accepted again once normalised
// (keyval results as JSON values, which is how handlers receive them).
// Decode must give what Args, marshalling and unmarshalling give, errors
// included.
func FuzzArgs(f *testing.F) {
	s := mustLoad(f)
	commands := s.Commands()
	for _, seed := range []struct{ js, kv string }{
		{`{"driver":"raw","node-name":"d0","file":{"driver":"file","filename":"x","cache":{"direct":true}}}`,
			"driver=raw,node-name=d0,file.driver=file,file.filename=x"},
		{`{"driver":"null-co","size":1024,"latency-ns":-1,"read-zeroes":true}`,
			"null-co,size=0x400,latency-ns=-1,read-zeroes=on"},
		{`{"driver":"raw","file":"base","offset":512,"size":1e3}`, "driver=raw,file=base,offset=512"},
		{`{"driver":"raw","file":{"driver":"raw","file":{"driver":"null-aio"}}}`, "raw,file.driver=raw,file.file.driver=null-aio"},
		{`{"driver":"file","filename":"f","aio":"native","locking":"off","x-check-cache-dropped":false}`,
			"file,filename=f,aio=io_uring,locking=auto,drop-cache=off"},
		{`{"enable":["oob"]}`, "enable.0=oob"},
		{`{"flat":true}`, "flat=on"},
		{`{"driver":"raw","file":5,"zz":[1,{"a":null}]}`, "driver=raw,file.0=x,file.1=y"},
	} {
		f.Add(uint8(3), seed.js, seed.kv)
	}
	f.Add(uint8(5), `{"enable":[5]}`, "enable.0=x")
	f.Fuzz(func(t *testing.T, which uint8, js, kv string) {
		cmd := "blockdev-add"
		if which%4 == 0 {
			cmd = commands[int(which/4)%len(commands)]
		}
		dec := json.NewDecoder(strings.NewReader(js))
		dec.UseNumber()
		var tree any
		if dec.Decode(&tree) == nil {
			if out, err := s.Args(cmd, tree, false); err == nil {
				if _, err := s.Args(cmd, reparse(t, out), false); err != nil {
					t.Fatalf("normalised %s no longer valid: %v", js, err)
				}
			}
			sameDecode(t, s, cmd, js, jsonTree(t, js), false)
		}
		if m, err := keyval.Parse(kv, "driver"); err == nil {
			if out, err := s.Args(cmd, m, true); err == nil {
				if _, err := s.Args(cmd, reparse(t, out), false); err != nil {
					t.Fatalf("keyval %q normalised to %v, which is rejected: %v", kv, out, err)
				}
			}
			sameDecode(t, s, cmd, kv, func() any { m, _ := keyval.Parse(kv, "driver"); return m }, true)
		}
	})
}

// reparse round-trips a value through JSON, as the dispatcher does.
func reparse(t *testing.T, v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("normalised value does not marshal: %v", err)
	}
	if string(b) == "null" {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.UseNumber()
	var out any
	if err := dec.Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}
