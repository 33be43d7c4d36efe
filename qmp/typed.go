package qmp

import (
	"context"
	"fmt"

	"github.com/qbmond/qbmond/qapi"
)

// RegisterTyped installs the handler of a command that takes its arguments
// as the command's generated type A and returns its generated return type
// R (package qapi): the dispatcher validates the arguments against the
// schema, with QEMU's messages, and decodes them into a new A in the same
// walk (Schema.Decode), which h receives (never nil; zero fields for
// members left out). What h returns is the reply's "return" value: R is a pointer to the returned struct, a
// slice for a list (return an empty slice, not nil, for an empty list),
// and *qapi.Empty for a command that returns nothing (h returns nil, the
// reply is {}). A must be the type qapi.CommandArgs gives for name and R
// the type qapi.CommandReturns names; anything else (any included) panics
// at registration, so the schema and the handlers cannot drift apart.
func RegisterTyped[A, R any](d *Dispatcher, name string, h func(ctx context.Context, a *A) (R, error)) {
	// The generic part stays this small: it is compiled once per command.
	d.registerTyped(name, new(A), new(R), func(ctx context.Context, a any) (any, error) {
		return h(ctx, a.(*A))
	})
}

// typedHandler is a command registered with RegisterTyped.
type typedHandler struct {
	newArgs func() any // a new value of the arguments' type
	call    func(context.Context, any) (any, error)
	none    bool // the command returns nothing: the reply is {}
}

// registerTyped checks a typed handler's types against the generated
// tables (args is a new A, ret a new R) and installs it.
func (d *Dispatcher) registerTyped(name string, args, ret any, call func(context.Context, any) (any, error)) {
	mk := qapi.CommandArgs[name]
	if mk == nil {
		panic("qmp: command " + name + " has no generated arguments type")
	}
	if want, got := fmt.Sprintf("%T", mk()), fmt.Sprintf("%T", args); got != want {
		panic(fmt.Sprintf("qmp: command %s takes %s, not %s", name, want, got))
	}
	want, got := qapi.CommandReturns[name], fmt.Sprintf("%T", ret)[1:]
	if got != want {
		panic(fmt.Sprintf("qmp: command %s returns %s, not %s", name, want, got))
	}
	d.register(name, handler{typed: &typedHandler{newArgs: mk, call: call, none: want == "*qapi.Empty"}})
}

// Typed tells whether the handler of name was registered with
// RegisterTyped (a test checks that every command is).
func (d *Dispatcher) Typed(name string) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.handlers[name].typed != nil
}
