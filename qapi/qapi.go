// Package qapi holds the Go types of the QAPI schema (schema/qapi/*.json):
// every named type, every command's arguments and the name of the type
// each command returns, generated into types_gen.go by cmd/qapigen. A
// handler registered with qmp.RegisterTyped receives its command's
// arguments validated and decoded into them in one walk
// (schema.Schema.Decode) and returns the command's generated return type,
// so the schema and what a handler reads or answers cannot drift apart:
// types_gen.go is checked in, and a test fails when it differs from what
// the schema generates now. After changing the schema, run go generate.
//
// This file holds what the generated code and its users share.
package qapi

//go:generate go run ../cmd/qapigen -o types_gen.go

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Deref returns *p, or the zero value of T when p is nil (an optional
// member left out).
func Deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}

// qapiKind tells the kind of the JSON value b as the byte the generated
// alternates switch on: 's' string, 'n' number, 'b' boolean, 'o' object,
// 'a' array, 'z' null; 0 when b is empty.
func qapiKind(b []byte) byte {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '"':
			return 's'
		case '{':
			return 'o'
		case '[':
			return 'a'
		case 't', 'f':
			return 'b'
		case 'n':
			return 'z'
		}
		return 'n'
	}
	return 0
}

// unmarshal is json.Unmarshal keeping numbers in 'any' members exact
// (json.Number), as schema.Schema.Decode stores them: unions and alternates
// read their parts with it.
func unmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return dec.Decode(v)
}

func errNoBranch(alternate string, b []byte) error {
	if b == nil {
		return fmt.Errorf("qapi: %s: no branch is set", alternate)
	}
	return fmt.Errorf("qapi: %s: no branch takes %s", alternate, b)
}

// marshal is json.Marshal without HTML escaping: a reply carries '<', '>'
// and '&' as they are, as QEMU prints them (encoding/json would escape
// them inside a MarshalJSON method's output, whatever its caller asked).
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}

// marshalUnion writes a union flat: the members of base, then those of
// variant (nil: none), in one object.
func marshalUnion(base, variant any) ([]byte, error) {
	b, err := marshal(base)
	if err != nil || variant == nil {
		return b, err
	}
	v, err := marshal(variant)
	if err != nil {
		return nil, err
	}
	v = bytes.TrimSpace(v)
	switch {
	case len(v) < 2 || v[0] != '{':
		return nil, fmt.Errorf("qapi: a union's variant is not an object: %s", v)
	case string(v) == "{}":
		return b, nil
	case string(b) == "{}":
		return v, nil
	}
	return append(append(b[:len(b)-1:len(b)-1], ','), v[1:]...), nil
}
