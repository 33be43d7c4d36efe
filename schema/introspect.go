package schema

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"

	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

// RegisterCommands registers query-qmp-schema and query-commands on d.
//
// Both describe the commands registered on d at the time of the call, so
// that they always agree with each other and with what d executes; commands
// registered after RegisterCommands are included. query-qmp-schema lists
// those commands, every event of the schema, and the types they reach, in
// QEMU's SchemaInfo form. The rendering is cached until the set of
// registered commands changes. query-qmp-schema is the one command whose
// handler does not return its generated type ([]qapi.SchemaInfo): its
// value is the schema describing itself, rendered once and kept as JSON.
func RegisterCommands(d *qmp.Dispatcher, s *Schema) {
	var (
		mu     sync.Mutex
		key    string
		cached json.RawMessage
	)
	d.Register("query-qmp-schema", func(context.Context, json.RawMessage) (any, error) {
		names := d.Commands()
		k := strings.Join(names, ",")
		mu.Lock()
		defer mu.Unlock()
		if cached == nil || k != key {
			b, err := json.Marshal(s.Introspect(names))
			if err != nil {
				return nil, err
			}
			key, cached = k, b
		}
		return cached, nil
	})
	qmp.RegisterTyped(d, "query-commands", func(context.Context, *qapi.Empty) ([]qapi.CommandInfo, error) {
		names := d.Commands()
		out := make([]qapi.CommandInfo, len(names))
		for i, n := range names {
			out[i].Name = n
		}
		return out, nil
	})
}

// SchemaInfo entries, one type per meta-type, with QEMU's member names.

type infoBuiltin struct {
	Name     string `json:"name"`
	MetaType string `json:"meta-type"`
	JSONType string `json:"json-type"`
}

type infoEnumMember struct {
	Name     string   `json:"name"`
	Features []string `json:"features,omitempty"`
}

type infoEnum struct {
	Name     string           `json:"name"`
	MetaType string           `json:"meta-type"`
	Members  []infoEnumMember `json:"members"`
	Values   []string         `json:"values"`
	Features []string         `json:"features,omitempty"`
}

type infoArray struct {
	Name        string `json:"name"`
	MetaType    string `json:"meta-type"`
	ElementType string `json:"element-type"`
}

type infoMember struct {
	Name     string          `json:"name"`
	Type     string          `json:"type"`
	Default  json.RawMessage `json:"default,omitempty"`
	Features []string        `json:"features,omitempty"`
}

type infoVariant struct {
	Case string `json:"case"`
	Type string `json:"type"`
}

type infoObject struct {
	Name     string        `json:"name"`
	MetaType string        `json:"meta-type"`
	Members  []infoMember  `json:"members"`
	Tag      string        `json:"tag,omitempty"`
	Variants []infoVariant `json:"variants,omitempty"`
	Features []string      `json:"features,omitempty"`
}

type infoAltMember struct {
	Type string `json:"type"`
}

type infoAlternate struct {
	Name     string          `json:"name"`
	MetaType string          `json:"meta-type"`
	Members  []infoAltMember `json:"members"`
	Features []string        `json:"features,omitempty"`
}

type infoCommand struct {
	Name     string   `json:"name"`
	MetaType string   `json:"meta-type"`
	ArgType  string   `json:"arg-type"`
	RetType  string   `json:"ret-type"`
	AllowOOB bool     `json:"allow-oob,omitempty"`
	Features []string `json:"features,omitempty"`
}

type infoEvent struct {
	Name     string   `json:"name"`
	MetaType string   `json:"meta-type"`
	ArgType  string   `json:"arg-type"`
	Features []string `json:"features,omitempty"`
}

var nullDefault = json.RawMessage("null")

// introspector renders SchemaInfo as QEMU's generator does: commands and
// events first, in definition order, then every type they reach in the
// order it was first used. Type names other than builtins are masked as
// numbers given in that order; integer types all show as "int".
type introspector struct {
	s     *Schema
	names map[*typ]string
	used  []*typ
	seen  map[*typ]bool
}

// Introspect returns query-qmp-schema's value for the given commands (those
// not in the schema are ignored) and all events of the schema.
func (s *Schema) Introspect(commands []string) []any {
	want := make(map[string]bool, len(commands))
	for _, c := range commands {
		want[c] = true
	}
	in := &introspector{s: s, names: map[*typ]string{}, seen: map[*typ]bool{}}
	var out []any
	for _, c := range s.order {
		if c.event {
			out = append(out, infoEvent{Name: c.name, MetaType: "event",
				ArgType: in.use(c.arg), Features: c.features})
			continue
		}
		if !want[c.name] {
			continue
		}
		out = append(out, infoCommand{Name: c.name, MetaType: "command",
			ArgType: in.use(c.arg), RetType: in.use(c.ret),
			AllowOOB: c.allowOOB, Features: c.features})
	}
	for i := 0; i < len(in.used); i++ { // in.used grows while we go
		out = append(out, in.render(in.used[i]))
	}
	return out
}

// use queues t for rendering and returns the name it shows under.
func (in *introspector) use(t *typ) string {
	if t.kind == kindInt {
		t = in.s.types["int"]
	} else if t.kind == kindArray && t.elem.kind == kindInt {
		t = in.s.arrayOf(in.s.types["int"])
	}
	if !in.seen[t] {
		in.seen[t] = true
		in.used = append(in.used, t)
	}
	switch {
	case t.builtin:
		return t.name
	case t.kind == kindArray:
		return "[" + in.use(t.elem) + "]"
	}
	n, ok := in.names[t]
	if !ok {
		n = strconv.Itoa(len(in.names))
		in.names[t] = n
	}
	return n
}

func (in *introspector) render(t *typ) any {
	name := in.use(t)
	switch t.kind {
	case kindArray:
		return infoArray{Name: name, MetaType: "array", ElementType: in.use(t.elem)}
	case kindEnum:
		e := infoEnum{Name: name, MetaType: "enum", Features: t.features,
			Members: make([]infoEnumMember, len(t.values)), Values: make([]string, len(t.values))}
		for i, v := range t.values {
			e.Members[i] = infoEnumMember{Name: v.name, Features: v.features}
			e.Values[i] = v.name
		}
		return e
	case kindObject:
		o := infoObject{Name: name, MetaType: "object", Features: t.features,
			Members: make([]infoMember, len(t.members))}
		for i, m := range t.members {
			o.Members[i] = infoMember{Name: m.name, Type: in.use(m.typ), Features: m.features}
			if m.optional {
				o.Members[i].Default = nullDefault
			}
		}
		if t.tag != nil {
			o.Tag = t.tag.name
			for _, v := range t.variants {
				o.Variants = append(o.Variants, infoVariant{Case: v.name, Type: in.use(v.typ)})
			}
		}
		return o
	case kindAlternate:
		a := infoAlternate{Name: name, MetaType: "alternate", Features: t.features}
		for _, b := range t.alts {
			a.Members = append(a.Members, infoAltMember{Type: in.use(b)})
		}
		return a
	}
	return infoBuiltin{Name: name, MetaType: "builtin", JSONType: t.jsonType}
}
