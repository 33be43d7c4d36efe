package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/qbmond/qbmond/qapi"
)

// RegisterTyped installs the handler of a command that takes its arguments
// as the command's generated type A (package qapi): the dispatcher
// validates them against the schema, with QEMU's messages, and decodes the
// validated arguments into a new A, which h receives (never nil; zero
// fields for members left out). A must be the type qapi.CommandArgs gives
// for name; anything else panics at registration.
func RegisterTyped[A any](d *Dispatcher, name string, h func(ctx context.Context, a *A) (any, error)) {
	mk := qapi.CommandArgs[name]
	if mk == nil {
		panic("qmp: command " + name + " has no generated arguments type")
	}
	if _, ok := mk().(*A); !ok {
		panic(fmt.Sprintf("qmp: command %s takes %T, not *%T", name, mk(), *new(A)))
	}
	d.Register(name, func(ctx context.Context, raw json.RawMessage) (any, error) {
		a := new(A)
		if err := decodeArgs(raw, a); err != nil {
			return nil, Errorf("%v", err)
		}
		return h(ctx, a)
	})
	d.mu.Lock()
	d.typed[name] = true
	d.mu.Unlock()
}

// Typed tells whether the handler of name was registered with
// RegisterTyped (a test checks that every command taking arguments is).
func (d *Dispatcher) Typed(name string) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.typed[name]
}

// decodeArgs decodes validated arguments into their generated type. The
// schema checked them already, so a failure here (an unknown member
// included) means the generated types are not the schema's.
func decodeArgs(raw json.RawMessage, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // 'any' members keep their numbers exact
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
