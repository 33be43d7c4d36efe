// Package keyval parses QEMU's KEY=VALUE,... command line syntax, as used by
// --blockdev, --chardev, --object and friends, into a JSON value tree.
//
// The rules are QEMU 7.2's (util/keyval.c), checked against
// qemu-storage-daemon:
//
//   - "a=1,b=2" gives {"a": "1", "b": "2"}; every scalar is a string, the
//     schema's keyval mode converts it to the member's type later.
//   - ",," in a value stands for one comma.
//   - Dotted keys build nested objects: "file.driver=file" gives
//     {"file": {"driver": "file"}}.
//   - Numeric key fragments after the first build lists: "a.0=x,a.1=y"
//     gives {"a": ["x", "y"]}; indexes may come in any order but must not
//     leave gaps.
//   - When several KEY=VALUE denote the same leaf, the last one wins.
//   - Key fragments are QAPI names (a letter, then letters, digits, '-'
//     and '_'; or a "__RFQDN_" prefix) or decimal indexes, at most 127
//     characters long.
//   - With an implied key, the first element may be a bare value: with
//     implied key "driver", "null-co,size=1" means "driver=null-co,size=1".
//     Such a value cannot contain '=' or ','.
//   - A bare "help" or "?" asks for help; Parse reports ErrHelp.
//
// Errors carry QEMU's messages, e.g. "Invalid parameter 'a..b'",
// "Expected '=' after parameter 'x'", "Parameters 'a.*' used
// inconsistently", "Parameter 'a.0' missing".
package keyval

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// ErrHelp is returned when the string asks for help ("help" or "?").
var ErrHelp = errors.New("Help is not available for this option")

// maxKeyLen bounds a key fragment, as QEMU's 128-byte buffer does.
const maxKeyLen = 127

// maxDepth bounds nesting so that no input can exhaust the stack; QEMU's
// JSON parser has the same limit for QMP input.
const maxDepth = 1024

// Parse parses s. impliedKey, if not empty, is the key of a first element
// given without "key=". The result holds maps, lists ([]any) and strings.
func Parse(s, impliedKey string) (map[string]any, error) {
	root := map[string]any{}
	help := false
	for rest := s; rest != ""; impliedKey = "" {
		var err error
		rest, err = parseOne(root, rest, impliedKey, &help)
		if err != nil {
			return nil, err
		}
	}
	if help {
		return nil, ErrHelp
	}
	if _, err := listify(root, nil); err != nil {
		return nil, err
	}
	return root, nil
}

// helpLen tells whether s starts with a help request, and how long it is.
func helpLen(s string) int {
	switch {
	case strings.HasPrefix(s, "?"):
		return 1
	case strings.HasPrefix(s, "help"):
		return 4
	}
	return 0
}

// parseOne parses one KEY=VALUE (or the implied-key value) at the start of
// params into root and returns what follows it.
func parseOne(root map[string]any, params, impliedKey string, help *bool) (string, error) {
	key := params
	keyLen := strings.IndexAny(params, "=,")
	if keyLen < 0 {
		keyLen = len(params)
	}
	implied := false
	valEnd := 0
	if keyLen > 0 && (keyLen == len(params) || params[keyLen] != '=') {
		if helpLen(params) == keyLen {
			*help = true
			rest := params[keyLen:]
			return strings.TrimPrefix(rest, ","), nil
		}
		if impliedKey != "" {
			key, implied, valEnd = impliedKey, true, keyLen
			keyLen = len(impliedKey)
		}
	}

	// Walk the key's fragments; cur is the object the current one applies to.
	cur := root
	s := 0
	var inCur string
	depth := 0
	for {
		var n int
		if s != 0 {
			n = indexLen(key[s:keyLen])
		}
		if n == 0 {
			n = qapiNameLen(key[s:keyLen])
		}
		if n == 0 || (s+n < keyLen && key[s+n] != '.') {
			return "", fmt.Errorf("Invalid parameter '%s'", key[:keyLen])
		}
		if n > maxKeyLen {
			kind := ""
			if s != 0 || s+n != keyLen {
				kind = " fragment"
			}
			return "", fmt.Errorf("Parameter%s '%s' is too long", kind, key[s:s+n])
		}
		if s != 0 {
			if depth++; depth > maxDepth {
				return "", fmt.Errorf("Parameter '%s' is nested too deeply", key[:keyLen])
			}
			next, err := putObject(cur, inCur, key[:s-1])
			if err != nil {
				return "", err
			}
			cur = next
		}
		inCur = key[s : s+n]
		s += n
		if s >= keyLen || key[s] != '.' {
			break
		}
		s++
	}

	var val strings.Builder
	rest := ""
	if implied {
		val.WriteString(params[:valEnd])
		rest = strings.TrimPrefix(params[valEnd:], ",")
	} else {
		if s >= len(params) || params[s] != '=' {
			return "", fmt.Errorf("Expected '=' after parameter '%s'", key[:s])
		}
		i := s + 1
		for i < len(params) {
			c := params[i]
			if c == ',' {
				i++
				if i >= len(params) || params[i] != ',' {
					break
				}
			}
			val.WriteByte(c)
			i++
		}
		rest = params[i:]
	}
	if old, ok := cur[inCur]; ok {
		if _, isStr := old.(string); !isStr {
			return "", fmt.Errorf("Parameters '%s.*' used inconsistently", key[:keyLen])
		}
	}
	cur[inCur] = val.String()
	return rest, nil
}

// putObject makes sure cur[k] is an object and returns it. keySoFar names
// the key up to k in the error.
func putObject(cur map[string]any, k, keySoFar string) (map[string]any, error) {
	old, ok := cur[k]
	if !ok {
		m := map[string]any{}
		cur[k] = m
		return m, nil
	}
	m, isObj := old.(map[string]any)
	if !isObj {
		return nil, fmt.Errorf("Parameters '%s.*' used inconsistently", keySoFar)
	}
	return m, nil
}

// indexLen returns the length of the leading decimal digits of s.
func indexLen(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

// keyIndex converts a key that is all digits to a list index (capped at
// MaxInt32 as QEMU does); -1 if it is not one.
func keyIndex(k string) int {
	if k == "" || indexLen(k) != len(k) {
		return -1
	}
	v, err := strconv.ParseUint(k, 10, 64)
	if err != nil || v > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(v)
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// IDWellFormed is QEMU's rule for the ids a user gives (node names, job
// ids, blkdebug config section ids): a letter, then letters, digits, '-',
// '.' and '_'.
func IDWellFormed(id string) bool {
	if id == "" || !isAlpha(id[0]) {
		return false
	}
	for i := 1; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && c != '-' && c != '.' && c != '_' {
			return false
		}
	}
	return true
}
func isAlnum(c byte) bool { return isAlpha(c) || c >= '0' && c <= '9' }

// qapiNameLen returns the length of the QAPI name at the start of s (0 if
// there is none): an optional downstream prefix "__RFQDN_", then a letter,
// then letters, digits, '-' and '_'.
func qapiNameLen(s string) int {
	p := 0
	if p < len(s) && s[p] == '_' {
		p++
		if p >= len(s) || s[p] != '_' {
			return 0
		}
		p++
		for p < len(s) && (isAlnum(s[p]) || s[p] == '-' || s[p] == '.') {
			p++
		}
		if p >= len(s) || s[p] != '_' {
			return 0
		}
		p++
	}
	if p >= len(s) || !isAlpha(s[p]) {
		return 0
	}
	p++
	for p < len(s) && (isAlnum(s[p]) || s[p] == '-' || s[p] == '_') {
		p++
	}
	return p
}

// listify turns, depth first, every object whose keys are all indexes into
// a list. path is the keys leading to cur.
func listify(cur map[string]any, path []string) (any, error) {
	keys := make([]string, 0, len(cur))
	for k := range cur {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	hasIndex, hasMember := false, false
	for _, k := range keys {
		if keyIndex(k) >= 0 {
			hasIndex = true
		} else {
			hasMember = true
		}
		if m, ok := cur[k].(map[string]any); ok {
			v, err := listify(m, append(path, k))
			if err != nil {
				return nil, err
			}
			cur[k] = v
		}
	}
	prefix := ""
	if len(path) > 0 {
		prefix = strings.Join(path, ".") + "."
	}
	if hasIndex && hasMember {
		return nil, fmt.Errorf("Parameters '%s*' used inconsistently", prefix)
	}
	if !hasIndex {
		return cur, nil
	}
	// Indexes at or beyond len(cur) cannot all be filled; they are left out
	// and the first gap is reported, as in QEMU.
	elt := make([]any, len(cur)+1)
	maxIndex := -1
	for _, k := range keys {
		i := keyIndex(k)
		maxIndex = max(maxIndex, i)
		if i < len(cur) {
			elt[i] = cur[k]
		}
	}
	n := min(len(elt), maxIndex+1)
	for i := range n {
		if elt[i] == nil {
			return nil, fmt.Errorf("Parameter '%s%d' missing", prefix, i)
		}
	}
	return elt[:n], nil
}
