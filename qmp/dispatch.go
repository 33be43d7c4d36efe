package qmp

import (
	"context"
	"encoding/json"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Handler runs one command registered with Register (RegisterTyped is
// the rule; Register serves query-qmp-schema and tests). args holds the
// validated arguments object as JSON (never empty: "{}" when the request
// had none): the dispatcher marshals the checked tree for it, a second
// pass typed handlers do not pay. The result is marshalled with
// encoding/json; nil becomes {}.
type Handler func(ctx context.Context, args json.RawMessage) (any, error)

// Schema is what the dispatcher needs of the QAPI schema (package schema
// implements it). Keeping it an interface lets the schema package register
// query-qmp-schema and query-commands against a Dispatcher without a cycle.
type Schema interface {
	// HasCommand tells whether the schema defines the command.
	HasCommand(name string) bool
	// AllowOOB tells whether the command may run out of band.
	AllowOOB(name string) bool
	// Args validates the arguments of a command and returns them normalised
	// (defaults are not filled in). args is a JSON value tree as produced by
	// the QMP parser: map[string]any, []any, string, json.Number, bool, nil;
	// nil means "no arguments". With keyval set, scalars arrive as strings
	// (command line syntax) and are converted to the schema's types. Errors
	// carry QEMU's messages.
	Args(name string, args any, keyval bool) (any, error)
	// Decode checks the arguments as Args does and, in the same walk,
	// stores them into dst, a pointer to the command's generated
	// arguments type (package qapi). Errors are Args'.
	Decode(name string, args any, keyval bool, dst any) error
}

// Request is one command as a transport received it.
type Request struct {
	Name string
	Args any // JSON value tree, nil when absent
	ID   any // echoed by the transport; used here only for logging
	// Keyval marks arguments that came from command-line keyval syntax.
	Keyval bool
	// Origin names the transport ("qmp", "jsonrpc", "cli") for the logs.
	// Failures of command-line requests are logged at debug only: the
	// command line reports them itself and exits.
	Origin string
}

// Event is one QMP event. Data is marshalled with encoding/json.
type Event struct {
	Name string
	Data any
	Time time.Time
}

// Dispatcher runs commands for every transport (QMP sockets, JSON-RPC, the
// command line). It knows nothing of wire formats: a transport decodes a
// request, calls Execute and renders the result or *Error its own way.
type Dispatcher struct {
	schema Schema
	log    zerolog.Logger

	mu       sync.RWMutex
	handlers map[string]handler
	subs     map[*subscriber]struct{}
}

// handler is a registered command: raw (Register) or typed
// (RegisterTyped).
type handler struct {
	raw   Handler
	typed *typedHandler
}

type subscriber struct {
	f func(Event)
}

// NewDispatcher returns a dispatcher that validates against s.
func NewDispatcher(s Schema, log zerolog.Logger) *Dispatcher {
	return &Dispatcher{
		schema:   s,
		log:      log,
		handlers: map[string]handler{},
		subs:     map[*subscriber]struct{}{},
	}
}

// Register installs the handler of a command. The command must be in the
// schema: a handler without a schema entry is a programming error.
func (d *Dispatcher) Register(name string, h Handler) {
	d.register(name, handler{raw: h})
}

func (d *Dispatcher) register(name string, h handler) {
	if !d.schema.HasCommand(name) {
		panic("qmp: command " + name + " is not in the schema")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, dup := d.handlers[name]; dup {
		panic("qmp: command " + name + " registered twice")
	}
	d.handlers[name] = h
}

// Commands lists the registered commands, sorted.
func (d *Dispatcher) Commands() []string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	names := make([]string, 0, len(d.handlers))
	for n := range d.handlers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// HasCommand tells whether a handler is registered for name.
func (d *Dispatcher) HasCommand(name string) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	_, ok := d.handlers[name]
	return ok
}

// AllowOOB tells whether name may be run with exec-oob.
func (d *Dispatcher) AllowOOB(name string) bool {
	return d.HasCommand(name) && d.schema.AllowOOB(name)
}

// Execute validates and runs one command. The result is the value to put in
// "return" (never nil; {} for commands that return nothing).
func (d *Dispatcher) Execute(ctx context.Context, req Request) (any, *Error) {
	start := time.Now()
	res, err := d.execute(ctx, req)
	if err != nil {
		lvl := d.log.Warn()
		if req.Origin == "cli" {
			lvl = d.log.Debug()
		}
		lvl.Str("command", req.Name).Str("origin", req.Origin).Interface("id", req.ID).
			Str("class", err.Class).Str("error", err.Desc).
			Dur("duration", time.Since(start)).Msg("command failed")
		return nil, err
	}
	if e := d.log.Debug(); e.Enabled() {
		e.Str("command", req.Name).Str("origin", req.Origin).Interface("id", req.ID).
			Dur("duration", time.Since(start)).Msg("command done")
	}
	return res, nil
}

var emptyObject = json.RawMessage("{}")

func (d *Dispatcher) execute(ctx context.Context, req Request) (any, *Error) {
	d.mu.RLock()
	h, ok := d.handlers[req.Name]
	d.mu.RUnlock()
	if !ok {
		return nil, NewError(ClassCommandNotFound, "The command %s has not been found", req.Name)
	}
	var (
		res  any
		herr error
	)
	if t := h.typed; t != nil {
		a := t.newArgs()
		if err := d.schema.Decode(req.Name, req.Args, req.Keyval, a); err != nil {
			return nil, badArgs(err)
		}
		res, herr = t.call(ctx, a)
		if t.none {
			res = nil
		}
	} else {
		args, err := d.schema.Args(req.Name, req.Args, req.Keyval)
		if err != nil {
			return nil, badArgs(err)
		}
		raw := emptyObject
		if args != nil {
			b, err := json.Marshal(args)
			if err != nil {
				return nil, Errorf("%v", err)
			}
			raw = b
		}
		res, herr = h.raw(ctx, raw)
	}
	if herr != nil {
		return nil, AsError(herr)
	}
	if res == nil {
		res = struct{}{}
	}
	return res, nil
}

// badArgs marks a validation error as one about the arguments.
func badArgs(err error) *Error {
	e := *AsError(err)
	e.badArgs = true
	return &e
}

// Emit sends an event to every subscriber, synchronously: when Emit
// returns, every subscriber has it. A transport therefore writes an event
// emitted while a command runs before that command's reply, as QEMU does.
// Subscribers must not block (they queue the event and return).
//
// data nil means an event without data: QEMU leaves "data" out then.
func (d *Dispatcher) Emit(name string, data any) {
	ev := Event{Name: name, Data: data, Time: time.Now()}
	d.mu.RLock()
	defer d.mu.RUnlock()
	for s := range d.subs {
		s.f(ev)
	}
	d.log.Debug().Str("event", name).Msg("event")
}

// SubscribeFunc calls f with every event from now on, synchronously from
// Emit, until the returned function is called.
func (d *Dispatcher) SubscribeFunc(f func(Event)) func() {
	s := &subscriber{f: f}
	d.mu.Lock()
	d.subs[s] = struct{}{}
	d.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			d.mu.Lock()
			delete(d.subs, s)
			d.mu.Unlock()
		})
	}
}
