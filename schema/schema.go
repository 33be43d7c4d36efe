// Package schema is qbmond's QAPI-style schema: the commands, types and
// events qbmond speaks, embedded as QAPI definition files under qapi/.
//
// From the schema come three things: argument validation with QEMU's
// messages (Schema.Args, called by the qmp dispatcher for every command),
// query-qmp-schema in QEMU's SchemaInfo form, and query-commands
// (RegisterCommands).
//
// The files use QAPI's structure with standard JSON: a stream of
// definitions such as
//
//	{"struct": "BlockdevCacheOptions",
//	 "data": {"*direct": "bool", "*no-flush": "bool"}}
//
// where a leading '*' marks an optional member and ["T"] is an array of T.
// Lines whose first non-blank character is '#' are comments. The top file,
// qapi-schema.json, includes the others in the order their commands and
// events are listed by query-qmp-schema. A new driver adds its value to
// BlockdevDriver and its variant to BlockdevOptions in block-core.json; a
// new command adds a "command" definition in its domain's file.
package schema

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"unicode/utf8"
)

//go:embed qapi/*.json
var files embed.FS

// Schema is a loaded, checked schema. It is immutable and safe for
// concurrent use. It implements qmp.Schema.
type Schema struct {
	types    map[string]*typ
	arrays   map[*typ]*typ
	entities map[string]*command // commands and events by name
	order    []*command          // commands and events in definition order
	named    []*typ              // named types in definition order (GoTypes)
	empty    *typ                // q_empty
}

// Load reads and checks the embedded schema.
func Load() (*Schema, error) {
	return load(files, "qapi/qapi-schema.json")
}

// Commands lists the commands the schema defines, in definition order.
func (s *Schema) Commands() []string {
	var names []string
	for _, c := range s.order {
		if !c.event {
			names = append(names, c.name)
		}
	}
	return names
}

// Events lists the events the schema defines, in definition order.
func (s *Schema) Events() []string {
	var names []string
	for _, c := range s.order {
		if c.event {
			names = append(names, c.name)
		}
	}
	return names
}

// HasCommand tells whether the schema defines the command.
func (s *Schema) HasCommand(name string) bool {
	c, ok := s.entities[name]
	return ok && !c.event
}

// AllowOOB tells whether the command may run out of band.
func (s *Schema) AllowOOB(name string) bool {
	c, ok := s.entities[name]
	return ok && !c.event && c.allowOOB
}

// rawDef is one definition as read from a file, before resolution.
type rawDef struct {
	meta   string // include, enum, struct, union, alternate, command, event
	name   string
	fields map[string]json.RawMessage
	pos    string
}

var allowedKeys = map[string][]string{
	"include":   {},
	"enum":      {"data", "features", "prefix"},
	"struct":    {"data", "base", "features"},
	"union":     {"data", "base", "discriminator", "features"},
	"alternate": {"data", "features"},
	"command": {"data", "returns", "boxed", "allow-oob", "features",
		"allow-preconfig", "coroutine", "gen", "success-response"},
	"event": {"data", "boxed", "features"},
}

// stripComments blanks, in place, every line whose first non-blank
// character is '#', keeping line numbers intact for error messages.
func stripComments(b []byte) []byte {
	for rest := b; len(rest) > 0; {
		l := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			l, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		if t := bytes.TrimLeft(l, " \t\r"); len(t) > 0 && t[0] == '#' {
			for i := range l {
				l[i] = ' '
			}
		}
	}
	return b
}

func lineOf(b []byte, off int64) int {
	if off > int64(len(b)) {
		off = int64(len(b))
	}
	return bytes.Count(b[:off], []byte("\n")) + 1
}

// readDefs reads file and, recursively, the files it includes.
func readDefs(fsys fs.FS, file string, seen map[string]bool, out *[]*rawDef) error {
	if seen[file] {
		return nil
	}
	seen[file] = true
	b, err := fs.ReadFile(fsys, file)
	if err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	b = stripComments(b)
	dec := json.NewDecoder(bytes.NewReader(b))
	for {
		// Skip blanks so that the position names the definition's line.
		start := dec.InputOffset()
		for start < int64(len(b)) && strings.ContainsRune(" \t\r\n", rune(b[start])) {
			start++
		}
		var fields map[string]json.RawMessage
		err := dec.Decode(&fields)
		if err == io.EOF {
			return nil
		}
		pos := fmt.Sprintf("%s:%d", file, lineOf(b, start))
		if err != nil {
			return fmt.Errorf("schema: %s: %v", pos, err)
		}
		def := &rawDef{fields: fields, pos: pos}
		for meta := range allowedKeys {
			if raw, ok := fields[meta]; ok {
				if def.meta != "" {
					return fmt.Errorf("schema: %s: definition is both %s and %s", pos, def.meta, meta)
				}
				def.meta = meta
				var err error
				if def.name, err = decodeString(raw); err != nil || def.name == "" {
					return fmt.Errorf("schema: %s: %s needs a name", pos, meta)
				}
			}
		}
		if def.meta == "" {
			return fmt.Errorf("schema: %s: unknown definition kind", pos)
		}
		for k := range fields {
			if k != def.meta && !contains(allowedKeys[def.meta], k) {
				return fmt.Errorf("schema: %s: %s %s: unknown key '%s'", pos, def.meta, def.name, k)
			}
		}
		if def.meta == "include" {
			if err := readDefs(fsys, path.Join(path.Dir(file), def.name), seen, out); err != nil {
				return err
			}
			continue
		}
		*out = append(*out, def)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

var builtins = []struct {
	name     string
	kind     kind
	intk     intKind
	jsonType string
}{
	{"str", kindStr, 0, "string"},
	{"any", kindAny, 0, "value"},
	{"bool", kindBool, 0, "boolean"},
	{"int", kindInt, intInt64, "int"},
	{"null", kindNull, 0, "null"},
	{"number", kindNumber, 0, "number"},
	{"int8", kindInt, intInt8, "int"},
	{"int16", kindInt, intInt16, "int"},
	{"int32", kindInt, intInt32, "int"},
	{"int64", kindInt, intInt64, "int"},
	{"uint8", kindInt, intUint8, "int"},
	{"uint16", kindInt, intUint16, "int"},
	{"uint32", kindInt, intUint32, "int"},
	{"uint64", kindInt, intUint64, "int"},
	{"size", kindInt, intSize, "int"},
}

// loader holds the state of one Load.
type loader struct {
	s *Schema
}

func load(fsys fs.FS, root string) (*Schema, error) {
	var defs []*rawDef
	if err := readDefs(fsys, root, map[string]bool{}, &defs); err != nil {
		return nil, err
	}
	// Sized once, as growing leaves garbage that an idle daemon never
	// collects (commands and events leave room for the implicit types).
	s := &Schema{
		types:    make(map[string]*typ, len(builtins)+len(defs)),
		arrays:   map[*typ]*typ{},
		entities: map[string]*command{},
	}
	l := &loader{s: s}
	for _, b := range builtins {
		s.types[b.name] = &typ{name: b.name, kind: b.kind, builtin: true, intk: b.intk,
			jsonType: b.jsonType, resolved: true}
	}
	s.empty = &typ{name: "q_empty", kind: kindObject, implicit: true, resolved: true,
		memberIndex: map[string]*member{}}
	s.types["q_empty"] = s.empty

	// First pass: declare every named type so references may point forward.
	names := make(map[string]string, len(defs)) // name → position of its definition
	for _, d := range defs {
		if prev, dup := names[d.name]; dup {
			return nil, fmt.Errorf("schema: %s: '%s' is already defined at %s", d.pos, d.name, prev)
		}
		if _, isBuiltin := s.types[d.name]; isBuiltin {
			return nil, fmt.Errorf("schema: %s: '%s' is a builtin type", d.pos, d.name)
		}
		names[d.name] = d.pos
		var k kind
		switch d.meta {
		case "enum":
			k = kindEnum
		case "struct", "union":
			k = kindObject
		case "alternate":
			k = kindAlternate
		default:
			continue
		}
		s.types[d.name] = &typ{name: d.name, kind: k, raw: d, pos: d.pos}
		s.named = append(s.named, s.types[d.name])
	}
	// Second pass: resolve the bodies.
	for _, d := range defs {
		var err error
		switch d.meta {
		case "command", "event":
			err = l.entity(d)
		default:
			err = l.resolve(s.types[d.name])
		}
		if err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (l *loader) errorf(pos, format string, a ...any) error {
	return fmt.Errorf("schema: %s: %s", pos, fmt.Sprintf(format, a...))
}

// typeRef resolves a type reference: "Name" or ["Name"].
func (l *loader) typeRef(raw json.RawMessage, pos, what string) (*typ, error) {
	if len(raw) == 0 || raw[0] != '[' { // a list is below
		if name, err := decodeString(raw); err == nil {
			t, ok := l.s.types[name]
			if !ok || name == "q_empty" {
				return nil, l.errorf(pos, "%s uses unknown type '%s'", what, name)
			}
			return t, nil
		}
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil || len(list) != 1 {
		return nil, l.errorf(pos, "%s: a type is \"Name\" or [\"Name\"]", what)
	}
	elem, err := l.typeRef(mustMarshal(list[0]), pos, what)
	if err != nil {
		return nil, err
	}
	return l.s.arrayOf(elem), nil
}

// namedRef is the type a plain "Name" reference names, or nil when the
// reference is anything else (typeRef then resolves it or says what is
// wrong); it spares the common case typeRef's description of the place.
func (l *loader) namedRef(raw json.RawMessage) *typ {
	if !plainString(raw) {
		return nil
	}
	name := raw[1 : len(raw)-1]
	if t := l.s.types[string(name)]; t != nil && string(name) != "q_empty" {
		return t
	}
	return nil
}

func mustMarshal(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func (s *Schema) arrayOf(elem *typ) *typ {
	if a, ok := s.arrays[elem]; ok {
		return a
	}
	a := &typ{name: "[" + elem.name + "]", kind: kindArray, elem: elem, resolved: true}
	s.arrays[elem] = a
	return a
}

type kv struct {
	key string
	val json.RawMessage
}

// orderedObject splits a JSON object into its members, keeping their
// order; the values are slices of raw.
func orderedObject(raw json.RawMessage) ([]kv, error) {
	raw = bytes.TrimLeft(raw, jsonSpace)
	if len(raw) == 0 {
		return nil, io.EOF
	}
	if raw[0] != '{' {
		return nil, errors.New("expected an object")
	}
	if !json.Valid(raw) {
		return nil, errors.New("invalid JSON object")
	}
	out := make([]kv, 0, bytes.Count(raw, []byte{':'})) // at least the members
	rest := raw[1:]
	for {
		rest = bytes.TrimLeft(rest, jsonSpace)
		if rest[0] == '}' {
			return out, nil
		}
		if rest[0] == ',' {
			rest = bytes.TrimLeft(rest[1:], jsonSpace)
		}
		n := jsonValueLen(rest)
		key, err := decodeString(rest[:n])
		if err != nil {
			return nil, err
		}
		for _, f := range out {
			if f.key == key {
				return nil, fmt.Errorf("duplicate key '%s'", key)
			}
		}
		rest = bytes.TrimLeft(rest[n:], jsonSpace)[1:] // the ':'
		rest = bytes.TrimLeft(rest, jsonSpace)
		n = jsonValueLen(rest)
		out = append(out, kv{key, rest[:n:n]})
		rest = rest[n:]
	}
}

// arrayItems splits a JSON array into its elements, slices of raw.
func arrayItems(raw json.RawMessage) ([]json.RawMessage, error) {
	raw = bytes.TrimLeft(raw, jsonSpace)
	if len(raw) == 0 || raw[0] != '[' || !json.Valid(raw) {
		var items []json.RawMessage
		return items, json.Unmarshal(raw, &items) // its error, or null
	}
	out := make([]json.RawMessage, 0, bytes.Count(raw, []byte{','})+1) // at least the items
	for rest := bytes.TrimLeft(raw[1:], jsonSpace); rest[0] != ']'; rest = bytes.TrimLeft(rest, jsonSpace) {
		if rest[0] == ',' {
			rest = bytes.TrimLeft(rest[1:], jsonSpace)
		}
		n := jsonValueLen(rest)
		out = append(out, rest[:n:n])
		rest = rest[n:]
	}
	return out, nil
}

// jsonSpace is the white space JSON allows between tokens.
const jsonSpace = " \t\r\n"

// jsonValueLen is the length of the JSON value at the start of b, which
// must be valid JSON (checked by the caller).
func jsonValueLen(b []byte) int {
	depth, inString := 0, false
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case inString:
			switch c {
			case '\\':
				i++
			case '"':
				inString = false
				if depth == 0 {
					return i + 1
				}
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			if depth == 0 {
				return i // a scalar ends where its container does
			}
			depth--
			if depth == 0 {
				return i + 1
			}
		case depth == 0 && (c == ',' || strings.IndexByte(jsonSpace, c) >= 0):
			return i
		}
	}
	return len(b)
}

// decodeString decodes a JSON string; a plain one is taken as it is,
// without encoding/json's allocations.
func decodeString(raw json.RawMessage) (string, error) {
	if plainString(raw) {
		return string(raw[1 : len(raw)-1]), nil
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}

// plainString tells whether raw is one JSON string without escapes, control
// characters or invalid UTF-8: its text between the quotes is its value.
func plainString(raw []byte) bool {
	n := len(raw)
	if n < 2 || raw[0] != '"' || raw[n-1] != '"' || !utf8.Valid(raw) {
		return false
	}
	for _, c := range raw[1 : n-1] {
		if c < 0x20 || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// features reads a features list: names or {"name": ...} objects.
func (l *loader) features(raw json.RawMessage, pos string) ([]string, error) {
	if raw == nil {
		return nil, nil
	}
	items, err := arrayItems(raw)
	if err != nil {
		return nil, l.errorf(pos, "features must be a list")
	}
	var out []string
	for _, it := range items {
		name, err := decodeString(it)
		if err != nil {
			var obj struct {
				Name string `json:"name"`
			}
			if err := json.Unmarshal(it, &obj); err != nil || obj.Name == "" {
				return nil, l.errorf(pos, "a feature is a name or {\"name\": ...}")
			}
			name = obj.Name
		}
		if contains(out, name) {
			return nil, l.errorf(pos, "duplicate feature '%s'", name)
		}
		out = append(out, name)
	}
	return out, nil
}

// members reads a struct's data: {"name": type, "*optional": type,
// "name": {"type": type, "features": [...]}}.
func (l *loader) members(raw json.RawMessage, pos, owner string) ([]*member, error) {
	fields, err := orderedObject(raw)
	if err != nil {
		return nil, l.errorf(pos, "%s: data: %v", owner, err)
	}
	var out []*member
	for _, f := range fields {
		m := &member{name: f.key}
		if strings.HasPrefix(m.name, "*") {
			m.name, m.optional = m.name[1:], true
		}
		if m.name == "" {
			return nil, l.errorf(pos, "%s: member without a name", owner)
		}
		what := func() string { return fmt.Sprintf("member '%s' of %s", m.name, owner) }
		ref := f.val
		if len(ref) > 0 && ref[0] == '{' {
			var long struct {
				Type     json.RawMessage `json:"type"`
				Features json.RawMessage `json:"features"`
			}
			dec := json.NewDecoder(bytes.NewReader(ref))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&long); err != nil || long.Type == nil {
				return nil, l.errorf(pos, "%s: expected {\"type\": ..., \"features\": [...]}", what())
			}
			ref = long.Type
			if m.features, err = l.features(long.Features, pos); err != nil {
				return nil, err
			}
		}
		if m.typ = l.namedRef(ref); m.typ == nil {
			if m.typ, err = l.typeRef(ref, pos, what()); err != nil {
				return nil, err
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// implicitObject makes the type of inline data ("data": {...}); empty data
// means q_empty, as in QEMU.
func (l *loader) implicitObject(name string, raw json.RawMessage, pos string) (*typ, error) {
	ms, err := l.members(raw, pos, name)
	if err != nil {
		return nil, err
	}
	if len(ms) == 0 {
		return l.s.empty, nil
	}
	if _, dup := l.s.types[name]; dup {
		return nil, l.errorf(pos, "implicit type '%s' clashes with a definition", name)
	}
	t := &typ{name: name, kind: kindObject, implicit: true, pos: pos}
	if err := l.setMembers(t, nil, ms); err != nil {
		return nil, err
	}
	t.resolved = true
	l.s.types[name] = t
	return t, nil
}

// objectRef reads a "data" or "base" that is either a type name or inline
// members.
func (l *loader) objectRef(raw json.RawMessage, implicitName, pos, what string) (*typ, error) {
	if len(raw) > 0 && raw[0] == '{' {
		return l.implicitObject(implicitName, raw, pos)
	}
	t, err := l.typeRef(raw, pos, what)
	if err != nil {
		return nil, err
	}
	if t.kind != kindObject {
		return nil, l.errorf(pos, "%s must be an object type, not '%s'", what, t.name)
	}
	if err := l.resolve(t); err != nil {
		return nil, err
	}
	return t, nil
}

// setMembers flattens base members and own members into t.
func (l *loader) setMembers(t, base *typ, own []*member) error {
	n := len(own)
	if base != nil {
		n += len(base.members)
	}
	t.memberIndex = make(map[string]*member, n)
	if base != nil {
		t.members = append(t.members, base.members...)
	}
	t.members = append(t.members, own...)
	for _, m := range t.members {
		if _, dup := t.memberIndex[m.name]; dup {
			return l.errorf(t.pos, "%s: member '%s' is defined twice (own or inherited)", t.name, m.name)
		}
		t.memberIndex[m.name] = m
	}
	return nil
}

// resolve fills in a named type's body. Object bases are resolved first
// (recursively, with cycle detection); member types need only exist.
func (l *loader) resolve(t *typ) error {
	if t.resolved {
		return nil
	}
	if t.flatting {
		return l.errorf(t.pos, "%s: its base refers back to it", t.name)
	}
	t.flatting = true
	defer func() { t.flatting = false }()
	d := t.raw
	var err error
	if t.features, err = l.features(d.fields["features"], d.pos); err != nil {
		return err
	}
	switch d.meta {
	case "enum":
		err = l.resolveEnum(t, d)
	case "struct":
		err = l.resolveStruct(t, d)
	case "union":
		err = l.resolveUnion(t, d)
	case "alternate":
		err = l.resolveAlternate(t, d)
	}
	if err != nil {
		return err
	}
	t.resolved = true
	return nil
}

func (l *loader) resolveEnum(t *typ, d *rawDef) error {
	items, err := arrayItems(d.fields["data"])
	if err != nil {
		return l.errorf(d.pos, "enum %s: data must be a list", t.name)
	}
	t.valueIndex = make(map[string]int, len(items))
	t.values = make([]enumValue, 0, len(items))
	for _, it := range items {
		var v enumValue
		if v.name, err = decodeString(it); err != nil {
			var obj struct {
				Name     string          `json:"name"`
				Features json.RawMessage `json:"features"`
			}
			if err := json.Unmarshal(it, &obj); err != nil || obj.Name == "" {
				return l.errorf(d.pos, "enum %s: a value is a name or {\"name\": ...}", t.name)
			}
			v.name = obj.Name
			if v.features, err = l.features(obj.Features, d.pos); err != nil {
				return err
			}
		}
		if _, dup := t.valueIndex[v.name]; dup || v.name == "" {
			return l.errorf(d.pos, "enum %s: value '%s' is defined twice or empty", t.name, v.name)
		}
		t.valueIndex[v.name] = len(t.values)
		t.values = append(t.values, v)
	}
	return nil
}

func (l *loader) resolveStruct(t *typ, d *rawDef) error {
	var base *typ
	if raw, ok := d.fields["base"]; ok {
		var err error
		if base, err = l.objectRef(raw, "q_obj_"+t.name+"-base", d.pos, "base of "+t.name); err != nil {
			return err
		}
		if base.tag != nil {
			return l.errorf(d.pos, "struct %s: base '%s' is a union", t.name, base.name)
		}
		if !base.implicit {
			t.base = base
		}
	}
	raw, ok := d.fields["data"]
	if !ok {
		return l.errorf(d.pos, "struct %s needs data", t.name)
	}
	own, err := l.members(raw, d.pos, t.name)
	if err != nil {
		return err
	}
	return l.setMembers(t, base, own)
}

func (l *loader) resolveUnion(t *typ, d *rawDef) error {
	rawBase, ok := d.fields["base"]
	if !ok {
		return l.errorf(d.pos, "union %s needs a base", t.name)
	}
	base, err := l.objectRef(rawBase, "q_obj_"+t.name+"-base", d.pos, "base of "+t.name)
	if err != nil {
		return err
	}
	if err := l.setMembers(t, base, nil); err != nil {
		return err
	}
	disc, err := decodeString(d.fields["discriminator"])
	if err != nil {
		return l.errorf(d.pos, "union %s needs a discriminator", t.name)
	}
	tag := t.memberIndex[disc]
	if tag == nil || tag.optional || tag.typ.kind != kindEnum {
		return l.errorf(d.pos, "union %s: discriminator '%s' must be a mandatory enum member of its base", t.name, disc)
	}
	if err := l.resolve(tag.typ); err != nil {
		return err
	}
	t.tag = tag
	cases, err := orderedObject(d.fields["data"])
	if err != nil {
		return l.errorf(d.pos, "union %s: data: %v", t.name, err)
	}
	t.variantMap = map[string]*typ{}
	for _, c := range cases {
		if _, ok := tag.typ.valueIndex[c.key]; !ok {
			return l.errorf(d.pos, "union %s: case '%s' is not a value of %s", t.name, c.key, tag.typ.name)
		}
		vt := l.namedRef(c.val)
		if vt == nil || vt.kind != kindObject || !vt.resolved {
			var err error
			if vt, err = l.objectRef(c.val, "", d.pos, fmt.Sprintf("variant '%s' of %s", c.key, t.name)); err != nil {
				return err
			}
		}
		if vt.implicit {
			return l.errorf(d.pos, "union %s: variant '%s' must name a type", t.name, c.key)
		}
		for _, m := range vt.members {
			if _, clash := t.memberIndex[m.name]; clash {
				return l.errorf(d.pos, "union %s: member '%s' of variant '%s' clashes with the base", t.name, m.name, c.key)
			}
		}
		t.variants = append(t.variants, variant{c.key, vt})
		t.variantMap[c.key] = vt
	}
	// Cases without a type are empty, as in QEMU (q_empty in introspection).
	for _, v := range tag.typ.values {
		if _, ok := t.variantMap[v.name]; !ok {
			t.variants = append(t.variants, variant{v.name, l.s.empty})
			t.variantMap[v.name] = nil
		}
	}
	return nil
}

func (l *loader) resolveAlternate(t *typ, d *rawDef) error {
	branches, err := orderedObject(d.fields["data"])
	if err != nil || len(branches) == 0 {
		return l.errorf(d.pos, "alternate %s: data must be a non-empty object", t.name)
	}
	for _, b := range branches {
		bt, err := l.typeRef(b.val, d.pos, fmt.Sprintf("branch '%s' of %s", b.key, t.name))
		if err != nil {
			return err
		}
		jk, ok := bt.jsonKindOf()
		if !ok {
			return l.errorf(d.pos, "alternate %s: branch '%s' cannot be of type '%s'", t.name, b.key, bt.name)
		}
		if t.altKind[jk] != nil {
			return l.errorf(d.pos, "alternate %s: branch '%s' cannot be told apart from another", t.name, b.key)
		}
		t.altKind[jk] = bt
		t.alts = append(t.alts, bt)
		t.altKeys = append(t.altKeys, b.key)
	}
	return nil
}

func (l *loader) entity(d *rawDef) error {
	c := &command{name: d.name, event: d.meta == "event"}
	var err error
	if c.features, err = l.features(d.fields["features"], d.pos); err != nil {
		return err
	}
	for _, flag := range []struct {
		key string
		dst *bool
	}{{"boxed", &c.boxed}, {"allow-oob", &c.allowOOB}} {
		if raw, ok := d.fields[flag.key]; ok {
			if err := json.Unmarshal(raw, flag.dst); err != nil {
				return l.errorf(d.pos, "%s %s: %s must be true or false", d.meta, d.name, flag.key)
			}
		}
	}
	c.arg = l.s.empty
	if raw, ok := d.fields["data"]; ok {
		if c.arg, err = l.objectRef(raw, "q_obj_"+d.name+"-arg", d.pos, "data of "+d.name); err != nil {
			return err
		}
		if !c.boxed && c.arg.tag != nil {
			return l.errorf(d.pos, "%s %s: a union as data needs \"boxed\": true", d.meta, d.name)
		}
	} else if c.boxed {
		return l.errorf(d.pos, "%s %s: boxed without data", d.meta, d.name)
	}
	if !c.event {
		c.ret = l.s.empty
		if raw, ok := d.fields["returns"]; ok {
			if c.ret, err = l.typeRef(raw, d.pos, "return type of "+d.name); err != nil {
				return err
			}
		}
	} else if _, ok := d.fields["returns"]; ok {
		return l.errorf(d.pos, "event %s cannot return", d.name)
	}
	l.s.entities[c.name] = c
	l.s.order = append(l.s.order, c)
	return nil
}

// sortedKeys returns m's keys sorted; used only on error paths.
func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
