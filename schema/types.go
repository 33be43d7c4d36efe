package schema

// kind is the meta-type of a compiled schema type, with the builtins split
// by the way values of them are checked.
type kind uint8

const (
	kindStr kind = iota + 1
	kindAny
	kindBool
	kindInt // every integer type; intKind tells which
	kindNumber
	kindNull
	kindEnum
	kindArray
	kindObject // struct or union (a union has a tag)
	kindAlternate
)

// intKind tells the integer builtins apart: their range and the way QEMU
// reads them (signed, unsigned or size).
type intKind uint8

const (
	intInt64 intKind = iota
	intInt8
	intInt16
	intInt32
	intUint8
	intUint16
	intUint32
	intUint64
	intSize
)

func (k intKind) unsigned() bool { return k >= intUint8 }

// jsonKind is the kind of a JSON value; alternates pick their branch by it
// (QEMU's QType).
type jsonKind uint8

const (
	jsonString jsonKind = iota
	jsonNumber
	jsonBool
	jsonObject
	jsonArray
	jsonNull
	numJSONKinds
)

// typ is one compiled type. Everything a validation needs is precomputed
// at Load: flattened members with an index by name, enum value sets,
// union variants by case, alternate branches by JSON kind.
type typ struct {
	name     string // QAPI name; arrays are "[elem]"
	kind     kind
	builtin  bool
	implicit bool // q_empty, q_obj_*: no name of its own in the schema files
	intk     intKind
	jsonType string // SchemaInfoBuiltin json-type, builtins only
	features []string
	pos      string // where it was defined, for schema errors

	// enum
	values     []enumValue
	valueIndex map[string]int

	// array
	elem *typ

	// object: members holds the base's members first, then the type's own.
	members     []*member
	memberIndex map[string]*member
	base        *typ    // a struct's named base (GoTypes embeds it)
	tag         *member // unions only
	variants    []variant
	variantMap  map[string]*typ // case → variant type; nil type for empty cases

	// alternate
	alts    []*typ
	altKeys []string // the branches' names, as alts
	altKind [numJSONKinds]*typ

	// resolution state
	raw      *rawDef
	resolved bool
	flatting bool
}

type enumValue struct {
	name     string
	features []string
}

type member struct {
	name     string
	typ      *typ
	optional bool
	features []string
}

type variant struct {
	name string
	typ  *typ
}

// command is one compiled command or event.
type command struct {
	name     string
	arg      *typ // never nil: q_empty when the command takes nothing
	ret      *typ // never nil for commands: q_empty when it returns nothing
	allowOOB bool
	boxed    bool
	event    bool
	features []string
}

// jsonKindOf tells which JSON kind values of t have, for alternate branches.
func (t *typ) jsonKindOf() (jsonKind, bool) {
	switch t.kind {
	case kindStr, kindEnum:
		return jsonString, true
	case kindInt, kindNumber:
		return jsonNumber, true
	case kindBool:
		return jsonBool, true
	case kindObject:
		return jsonObject, true
	case kindArray:
		return jsonArray, true
	case kindNull:
		return jsonNull, true
	}
	return 0, false
}

// hasMember tells whether key names a member of t for a value m whose tag
// (if t is a union) selects the variant to look into.
func (t *typ) hasMember(key string, m map[string]any) bool {
	if _, ok := t.memberIndex[key]; ok {
		return true
	}
	if t.tag == nil {
		return false
	}
	tv, _ := m[t.tag.name].(string)
	if vt := t.variantMap[tv]; vt != nil {
		return vt.hasMember(key, m)
	}
	return false
}
