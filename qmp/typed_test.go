package qmp

import (
	"context"
	"testing"

	"github.com/qbmond/qbmond/qapi"
	"github.com/rs/zerolog"
)

// TestRegisterTyped: the handler gets the arguments decoded into the
// command's generated type, optional members left out are nil.
func TestRegisterTyped(t *testing.T) {
	d := NewDispatcher(fakeSchema{"drop-intermediate": false}, zerolog.Nop())
	var got *qapi.DropIntermediateArgs
	RegisterTyped(d, "drop-intermediate", func(_ context.Context, a *qapi.DropIntermediateArgs) (any, error) {
		got = a
		return nil, nil
	})
	args := map[string]any{"device": "d", "top": "t", "base": "b"}
	if _, err := d.Execute(context.Background(), Request{Name: "drop-intermediate", Args: args}); err != nil {
		t.Fatal(err)
	}
	if got == nil || got.Device != "d" || got.Top != "t" || got.Base != "b" || got.BackingFile != nil {
		t.Fatalf("got %+v", got)
	}
	// A member the generated type lacks means type and schema disagree.
	args["extra"] = true
	if _, err := d.Execute(context.Background(), Request{Name: "drop-intermediate", Args: args}); err == nil {
		t.Fatal("an unknown member was decoded")
	}
}

// TestRegisterTypedWrongType: registering a command with another
// command's arguments type panics.
func TestRegisterTypedWrongType(t *testing.T) {
	d := NewDispatcher(fakeSchema{"blockdev-del": false}, zerolog.Nop())
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	RegisterTyped(d, "blockdev-del", func(context.Context, *qapi.DropIntermediateArgs) (any, error) { return nil, nil })
}
