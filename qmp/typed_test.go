package qmp

import (
	"context"
	"strings"
	"testing"

	"github.com/qbmond/qbmond/qapi"
	"github.com/rs/zerolog"
)

// TestRegisterTyped: the handler gets the arguments decoded into the
// command's generated type, optional members left out are nil.
func TestRegisterTyped(t *testing.T) {
	d := NewDispatcher(fakeSchema{"drop-intermediate": false}, zerolog.Nop())
	var got *qapi.DropIntermediateArgs
	RegisterTyped(d, "drop-intermediate", func(_ context.Context, a *qapi.DropIntermediateArgs) (*qapi.Empty, error) {
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
	RegisterTyped(d, "blockdev-del", func(context.Context, *qapi.DropIntermediateArgs) (*qapi.Empty, error) { return nil, nil })
}

// TestRegisterTypedWrongReturn: a handler returning anything but its
// command's generated return type panics at registration, any included.
func TestRegisterTypedWrongReturn(t *testing.T) {
	for name, reg := range map[string]func(*Dispatcher){
		"any": func(d *Dispatcher) {
			RegisterTyped(d, "query-jobs", func(context.Context, *qapi.Empty) (any, error) { return nil, nil })
		},
		"another type": func(d *Dispatcher) {
			RegisterTyped(d, "query-jobs", func(context.Context, *qapi.Empty) ([]qapi.BlockJobInfo, error) { return nil, nil })
		},
		"nothing for a list": func(d *Dispatcher) {
			RegisterTyped(d, "query-jobs", func(context.Context, *qapi.Empty) (*qapi.Empty, error) { return nil, nil })
		},
	} {
		t.Run(name, func(t *testing.T) {
			d := NewDispatcher(fakeSchema{"query-jobs": false}, zerolog.Nop())
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			reg(d)
		})
	}
}

// TestRegisterTypedReturn: a command that returns nothing replies {},
// one that returns a list replies the handler's value.
func TestRegisterTypedReturn(t *testing.T) {
	d := NewDispatcher(fakeSchema{"query-jobs": false, "quit": false}, zerolog.Nop())
	RegisterTyped(d, "quit", func(context.Context, *qapi.Empty) (*qapi.Empty, error) { return nil, nil })
	RegisterTyped(d, "query-jobs", func(context.Context, *qapi.Empty) ([]qapi.JobInfo, error) {
		return []qapi.JobInfo{{ID: "j"}}, nil
	})
	for cmd, want := range map[string]string{"quit": "{}", "query-jobs": `"id": "j"`} {
		res, err := d.Execute(context.Background(), Request{Name: cmd})
		if err != nil {
			t.Fatal(err)
		}
		b, aerr := appendValue(nil, res)
		if aerr != nil || !strings.Contains(string(b), want) || cmd == "quit" && string(b) != want {
			t.Errorf("%s: got %s (%v), want %s", cmd, b, aerr, want)
		}
	}
}
