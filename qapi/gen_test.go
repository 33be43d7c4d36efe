package qapi_test

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"

	"github.com/qbmond/qbmond/internal/qjson"
	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/schema"
)

// TestGeneratedIsCurrent fails when types_gen.go is not what the schema
// generates now: run go generate ./qapi/.
func TestGeneratedIsCurrent(t *testing.T) {
	s, err := schema.Load()
	if err != nil {
		t.Fatal(err)
	}
	want, err := s.GoTypes("qapi")
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("types_gen.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("types_gen.go is stale: run go generate ./qapi/")
	}
	for _, c := range s.Commands() {
		if qapi.CommandArgs[c] == nil {
			t.Errorf("command %s has no arguments type", c)
		}
		if qapi.CommandReturns[c] == "" {
			t.Errorf("command %s has no return type", c)
		}
	}
	if len(qapi.CommandArgs) != len(s.Commands()) {
		t.Errorf("CommandArgs has %d commands, the schema %d", len(qapi.CommandArgs), len(s.Commands()))
	}
}

// TestAlternate decodes and encodes each branch of an alternate.
func TestAlternate(t *testing.T) {
	for _, in := range []string{`"node0"`, `{"driver":"null-co"}`, `null`} {
		var r qapi.BlockdevRefOrNull
		if err := json.Unmarshal([]byte(in), &r); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		out, err := json.Marshal(r)
		if err != nil || string(out) != in {
			t.Errorf("%s: got %s, %v", in, out, err)
		}
	}
	var r qapi.BlockdevRefOrNull
	if err := json.Unmarshal([]byte(`1`), &r); err == nil {
		t.Error("a number decoded as BlockdevRefOrNull")
	}
}

// TestUnion decodes a union flat, base and variant, and writes it back.
func TestUnion(t *testing.T) {
	in := `{"type":"block-dirty-bitmap-add","data":{"node":"n","name":"b","granularity":65536}}`
	var u qapi.TransactionAction
	if err := json.Unmarshal([]byte(in), &u); err != nil {
		t.Fatal(err)
	}
	if u.Type != qapi.TransactionActionKindBlockDirtyBitmapAdd || u.BlockDirtyBitmapAdd == nil ||
		u.BlockDirtyBitmapAdd.Data.Name != "b" || *u.BlockDirtyBitmapAdd.Data.Granularity != 65536 || u.Abort != nil {
		t.Fatalf("got %+v", u)
	}
	out, err := json.Marshal(u)
	if err != nil || string(out) != in {
		t.Errorf("got %s, %v", out, err)
	}
	in = `{"type":"fd","data":{"str":"3"}}`
	var a qapi.SocketAddressLegacy
	if err := json.Unmarshal([]byte(in), &a); err != nil || a.Fd == nil || a.Fd.Data.Str != "3" {
		t.Fatalf("got %+v, %v", a, err)
	}
}

// TestUnionNoHTMLEscape: printed as replies are, a union's and an
// alternate's members keep '<', '>' and '&' as they are, as QEMU prints
// them.
func TestUnionNoHTMLEscape(t *testing.T) {
	u := qapi.ImageInfoSpecific{Type: qapi.ImageInfoSpecificKindQcow2, Qcow2: &qapi.ImageInfoSpecificQCow2Wrapper{
		Data: qapi.ImageInfoSpecificQCow2{Compat: "1.1", Bitmaps: []qapi.Qcow2BitmapInfo{{Name: "<a&b>", Flags: []qapi.Qcow2BitmapInfoFlags{}}}}}}
	out, err := qjson.Append(nil, u)
	if err != nil || !bytes.Contains(out, []byte(`"name": "<a&b>"`)) {
		t.Fatalf("got %s, %v", out, err)
	}
	a := qapi.BlockDirtyBitmapOrStr{Local: new(string)}
	*a.Local = "x<y"
	if out, err := qjson.Append(nil, []any{a}); err != nil || string(out) != `["x<y"]` {
		t.Fatalf("alternate: got %s, %v", out, err)
	}
}
