package schema

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/qbmond/qbmond/keyval"
	"github.com/qbmond/qbmond/qapi"
)

// decodeViaJSON is what the dispatcher did before Decode: check with
// Args, marshal the normalised tree, unmarshal it into the generated type
// (numbers in 'any' as json.Number, unknown members refused).
func decodeViaJSON(s *Schema, cmd string, tree any, kv bool) (any, error) {
	dst := qapi.CommandArgs[cmd]()
	out, err := s.Args(cmd, tree, kv)
	if err != nil || out == nil {
		return dst, err
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	dec.DisallowUnknownFields()
	return dst, dec.Decode(dst)
}

// sameDecode checks that Decode gives what decodeViaJSON gives, value and
// error alike, for one argument tree (each gets its own copy: both
// normalise in place).
func sameDecode(t *testing.T, s *Schema, cmd string, js string, tree func() any, kv bool) {
	t.Helper()
	want, werr := decodeViaJSON(s, cmd, tree(), kv)
	got := qapi.CommandArgs[cmd]()
	gerr := s.Decode(cmd, tree(), kv, got)
	if (werr == nil) != (gerr == nil) || werr != nil && werr.Error() != gerr.Error() {
		t.Fatalf("%s %s: error %v, through JSON %v", cmd, js, gerr, werr)
	}
	if werr == nil && !reflect.DeepEqual(got, want) {
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(want)
		t.Fatalf("%s %s:\n decoded %s\nvia JSON %s", cmd, js, gb, wb)
	}
}

func jsonTree(t testing.TB, js string) func() any {
	return func() any {
		dec := json.NewDecoder(strings.NewReader(js))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("bad test JSON %s: %v", js, err)
		}
		return v
	}
}

// TestDecodeLikeJSON: one walk that checks and stores gives exactly what
// checking, marshalling and unmarshalling gave, for arguments that
// exercise every kind of member: optional scalars, sized and wrapped
// integers, enums, lists, nested structs, embedded bases, unions (flat
// and wrapped), alternates (each branch), unions kept as JSON; and gives
// the same errors.
func TestDecodeLikeJSON(t *testing.T) {
	s := mustLoad(t)
	for _, c := range []struct{ cmd, js string }{
		{"query-version", `{}`},
		{"query-named-block-nodes", `{"flat": true}`},
		{"qmp_capabilities", `{"enable": ["oob"]}`},
		{"qmp_capabilities", `{"enable": []}`},
		{"block-dirty-bitmap-add", `{"node": "n", "name": "b", "granularity": 65536, "persistent": false, "disabled": true}`},
		{"block-dirty-bitmap-add", `{"node": "n", "name": "b<&>\u00e9"}`},
		{"block-dirty-bitmap-merge", `{"node": "n", "target": "t", "bitmaps": ["a", {"node": "m", "name": "b"}]}`},
		{"block-job-set-speed", `{"device": "j", "speed": -1}`},
		{"block-job-set-speed", `{"device": "j", "speed": 9223372036854775807}`},
		{"block-commit", `{"device": "d", "job-id": "j", "top-node": "t", "base-node": "b", "speed": 0,
			"on-error": "stop", "auto-finalize": false, "auto-dismiss": true, "backing-file": "x", "filter-node-name": "f"}`},
		{"block-stream", `{"device": "d", "base": "b", "bottom": "x", "on-error": "enospc"}`},
		{"blockdev-add", `{"driver": "qcow2", "node-name": "q", "discard": "unmap",
			"file": {"driver": "file", "filename": "/tmp/<x>&y", "aio": "threads"}, "backing": null}`},
		{"blockdev-add", `{"driver": "raw", "file": "f", "offset": 512, "size": 1024}`},
		{"blockdev-reopen", `{"options": [{"driver": "raw", "node-name": "a", "file": "f"}, {"driver": "null-co", "node-name": "n"}]}`},
		{"blockdev-create", `{"job-id": "c", "options": {"driver": "file", "filename": "/tmp/x", "size": 1048576}}`},
		{"nbd-server-start", `{"addr": {"type": "inet", "data": {"host": "localhost", "port": "10809", "ipv4": true, "to": 10900}}, "max-connections": 4}`},
		{"nbd-server-start", `{"addr": {"type": "unix", "data": {"path": "/tmp/s"}}}`},
		{"nbd-server-start", `{"addr": {"type": "fd", "data": {"str": "3"}}}`},
		{"block-export-add", `{"type": "nbd", "id": "e", "node-name": "n", "writable": true, "name": "x",
			"description": "d", "bitmaps": ["b", {"node": "n", "name": "c"}], "allocation-depth": true}`},
		{"block-export-del", `{"id": "e", "mode": "hard"}`},
		{"nbd-server-add", `{"device": "n", "name": "x", "writable": false, "bitmap": "b"}`},
		{"drive-backup", `{"device": "d", "target": "/tmp/t", "sync": "full", "format": "qcow2", "mode": "existing",
			"job-id": "j", "bitmap": "b", "bitmap-mode": "on-success", "compress": false, "on-source-error": "report"}`},
		{"blockdev-backup", `{"device": "d", "target": "t", "sync": "incremental", "bitmap": "b",
			"x-perf": {"use-copy-range": true, "max-workers": 8, "max-chunk": 65536}}`},
		{"blockdev-snapshot-sync", `{"node-name": "n", "snapshot-file": "/tmp/s", "snapshot-node-name": "s", "format": "qcow2"}`},
		{"transaction", `{"actions": [{"type": "abort", "data": {}},
			{"type": "block-dirty-bitmap-add", "data": {"node": "n", "name": "b", "granularity": 512}},
			{"type": "block-dirty-bitmap-merge", "data": {"node": "n", "target": "b", "bitmaps": ["c"]}},
			{"type": "blockdev-snapshot", "data": {"node": "n", "overlay": "o"}},
			{"type": "blockdev-backup", "data": {"device": "d", "target": "t", "sync": "full"}}],
			"properties": {"completion-mode": "grouped"}}`},
		// Errors: the same message, whichever way.
		{"block-dirty-bitmap-add", `{"node": "n"}`},
		{"block-dirty-bitmap-add", `{"node": "n", "name": "b", "granularity": 4294967296}`},
		{"block-dirty-bitmap-merge", `{"node": "n", "target": "t", "bitmaps": [1]}`},
		{"transaction", `{"actions": [{"type": "nope", "data": {}}]}`},
		{"nbd-server-start", `{"addr": {"type": "inet", "data": {"host": "h", "port": "1", "to": 70000}}}`},
		{"blockdev-add", `{"driver": "raw", "file": 5}`},
		{"query-version", `{"x": 1}`},
		{"query-version", `[]`},
	} {
		sameDecode(t, s, c.cmd, c.js, jsonTree(t, c.js), false)
	}
	for _, c := range []struct{ cmd, kv, implied string }{
		{"blockdev-add", "driver=qcow2,node-name=q,file.driver=file,file.filename=/tmp/x,cache.direct=on", "driver"},
		{"nbd-server-start", "addr.type=inet,addr.data.host=localhost,addr.data.port=10809,max-connections=0x10", ""},
		{"block-export-add", "type=nbd,id=e,node-name=n,writable=on,bitmaps.0=b", "type"},
		{"block-dirty-bitmap-add", "node=n,name=b,granularity=64k", ""},
		{"block-job-set-speed", "device=j,speed=-1", ""},
		{"block-job-set-speed", "device=j,speed=x", ""},
		{"qmp_capabilities", "enable.0=oob", ""},
	} {
		m, err := keyval.Parse(c.kv, c.implied)
		if err != nil {
			t.Fatalf("%s: %v", c.kv, err)
		}
		js, _ := json.Marshal(m)
		sameDecode(t, s, c.cmd, c.kv, jsonTree(t, string(js)), true)
	}
}
