package blkdebug

// The blkdebug config file (the config option): QEMU's INI-like format,
// read by its generic config parser. The rules are QEMU's, checked
// against qemu-storage-daemon 7.2, quirks included, because a file that
// QEMU accepts must give the same rules here and a file it refuses must
// fail with its message:
//
//	# a comment (only in the first column)
//	[inject-error]            a section; [inject-error "id"] names it
//	event = "read_aio"        a key and its quoted value
//	errno = "28"
//
// The file is read in pieces of at most 1023 bytes, each ending at a
// newline (a longer line is read as several). A piece that is only a
// newline, or starts with '#', is skipped. One starting with '[' opens a
// section when it scans as `[NAME "ID"` or `[NAME]`. Any other piece
// must scan as `KEY = "VALUE` (whitespace around '=' optional, VALUE up
// to the next quote or the piece's end, newline included), or as a lone
// KEY (which then has the empty value): the scan stops at the first
// mismatch, and what it has converted counts. KEY is the first run of
// non-space characters (at most 63), so `event="x"` is one key named
// `event="x"`. A section's keys are checked when the next section opens
// or the file ends: its name must be a known group, its keys those of the
// group, numbers numbers (C's strtoull with base 0, negative values
// wrapping) and booleans on/yes/true/y or off/no/false/n.

import (
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/internal/qjson"
	"github.com/qbmond/qbmond/keyval"
)

// cfgSection is one section of a config file: its group and its keys in
// the order they were first given (a repeated key keeps its place and
// takes the last value, as QEMU's dictionary does).
type cfgSection struct {
	group string
	keys  []string
	vals  map[string]string
}

func (s *cfgSection) put(k, v string) {
	if _, ok := s.vals[k]; !ok {
		s.keys = append(s.keys, k)
	}
	s.vals[k] = v
}

// The keys each group takes, and their types.
type optType uint8

const (
	optString optType = iota
	optNumber
	optBool
)

var cfgGroups = map[string]map[string]optType{
	"inject-error": {"event": optString, "state": optNumber, "iotype": optString,
		"errno": optNumber, "sector": optNumber, "once": optBool, "immediately": optBool},
	"set-state": {"event": optString, "state": optNumber, "new_state": optNumber},
}

// cfgRule is one rule the config file gives, its values checked.
type cfgRule struct {
	group string
	str   map[string]string
	num   map[string]uint64
	flag  map[string]bool
}

// isSpace is C's isspace in the C locale.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// scanner follows C's sscanf over one piece of the file for the few
// directives the parser uses.
type scanner struct {
	s string
	i int
}

func (sc *scanner) skipSpace() {
	for sc.i < len(sc.s) && isSpace(sc.s[sc.i]) {
		sc.i++
	}
}

// lit matches one literal character.
func (sc *scanner) lit(c byte) bool {
	if sc.i < len(sc.s) && sc.s[sc.i] == c {
		sc.i++
		return true
	}
	return false
}

// word is %Ns: leading space skipped, then 1..max non-space characters.
func (sc *scanner) word(max int) (string, bool) {
	sc.skipSpace()
	return sc.run(max, func(b byte) bool { return !isSpace(b) })
}

// notIn is %N[^c]: 1..max characters other than c.
func (sc *scanner) notIn(max int, c byte) (string, bool) {
	return sc.run(max, func(b byte) bool { return b != c })
}

// run takes 1..max characters for which ok holds.
func (sc *scanner) run(max int, ok func(byte) bool) (string, bool) {
	j := sc.i
	for j < len(sc.s) && j-sc.i < max && ok(sc.s[j]) {
		j++
	}
	if j == sc.i {
		return "", false
	}
	w := sc.s[sc.i:j]
	sc.i = j
	return w, true
}

// pieces splits the file the way fgets with a 1024-byte buffer reads it.
func pieces(data string) []string {
	var out []string
	for len(data) > 0 {
		n := strings.IndexByte(data, '\n') + 1
		if n == 0 || n > 1023 {
			n = min(len(data), 1023)
		}
		out = append(out, data[:n])
		data = data[n:]
	}
	return out
}

// parseConfig reads the sections of a config file and checks their
// groups and values, failing with QEMU's message.
func parseConfig(data string) ([]cfgRule, error) {
	var (
		rules []cfgRule
		cur   *cfgSection
		group string // QEMU's scan buffer: failed scans leave text in it
		ids   = map[string]bool{}
	)
	for _, line := range pieces(data) {
		// The scans stop at a NUL byte.
		if k := strings.IndexByte(line, 0); k >= 0 {
			line = line[:k]
		}
		if line == "" {
			return nil, errors.New("parse error")
		}
		if line[0] == '\n' || line[0] == '#' {
			continue
		}
		if line[0] == '[' {
			var next *cfgSection
			sc := scanner{s: line, i: 1}
			if g, ok := sc.word(63); ok {
				group = g
				sc.skipSpace()
				if sc.lit('"') {
					if id, ok := sc.notIn(63, '"'); ok {
						next = &cfgSection{vals: map[string]string{"id": id}, keys: []string{"id"}}
					}
				}
			}
			if next == nil {
				sc = scanner{s: line, i: 1}
				if g, ok := sc.notIn(63, ']'); ok {
					group = g
					next = &cfgSection{vals: map[string]string{}}
				}
			}
			if next != nil {
				if cur != nil {
					r, err := checkSection(cur, ids)
					if err != nil {
						return nil, err
					}
					rules = append(rules, r)
				}
				next.group = group
				cur = next
				continue
			}
		}
		sc := scanner{s: line}
		key, ok := sc.word(63)
		if !ok {
			return nil, errors.New("parse error")
		}
		val := ""
		sc.skipSpace()
		if sc.lit('=') {
			sc.skipSpace()
			if sc.lit('"') {
				if v, ok := sc.notIn(1023, '"'); ok {
					val = v
				}
			}
		}
		if cur == nil {
			return nil, errors.New("no group defined")
		}
		cur.put(key, val)
	}
	if cur != nil {
		// QEMU hands the last section over under the scan buffer's
		// name, whatever a failed scan left in it.
		cur.group = group
		r, err := checkSection(cur, ids)
		if err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// checkSection checks one section's group, id and values.
func checkSection(s *cfgSection, ids map[string]bool) (cfgRule, error) {
	desc, ok := cfgGroups[s.group]
	if !ok {
		return cfgRule{}, fmt.Errorf("There is no option group '%s'", s.group)
	}
	if id, ok := s.vals["id"]; ok {
		if !keyval.IDWellFormed(id) {
			return cfgRule{}, errors.New("Parameter 'id' expects an identifier")
		}
		key := s.group + "\x00" + id
		if ids[key] {
			return cfgRule{}, fmt.Errorf("Duplicate ID '%s' for %s", id, s.group)
		}
		ids[key] = true
	}
	r := cfgRule{group: s.group, str: map[string]string{}, num: map[string]uint64{}, flag: map[string]bool{}}
	for _, k := range qjson.Order(s.keys) {
		if k == "id" {
			continue
		}
		v := s.vals[k]
		t, ok := desc[k]
		if !ok {
			return cfgRule{}, fmt.Errorf("Invalid parameter '%s'", k)
		}
		switch t {
		case optString:
			r.str[k] = v
		case optNumber:
			n, err := strtou64(v)
			if err == syscall.ERANGE {
				return cfgRule{}, fmt.Errorf("Value '%s' is too large for parameter '%s'", v, k)
			}
			if err != nil {
				return cfgRule{}, fmt.Errorf("Parameter '%s' expects a number", k)
			}
			r.num[k] = n
		case optBool:
			switch v {
			case "on", "yes", "true", "y":
				r.flag[k] = true
			case "off", "no", "false", "n":
				r.flag[k] = false
			default:
				return cfgRule{}, fmt.Errorf("Parameter '%s' expects 'on' or 'off'", k)
			}
		}
	}
	return r, nil
}

// strtou64 is QEMU's qemu_strtou64 with base 0 and no end pointer: C's
// strtoull (leading space, a sign, 0x for hex, 0 for octal; a negative
// value wraps) over the whole string.
func strtou64(s string) (uint64, error) {
	i := 0
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	base := uint64(10)
	if i+1 < len(s) && s[i] == '0' && (s[i+1] == 'x' || s[i+1] == 'X') && i+2 < len(s) && hexDigit(s[i+2]) < 16 {
		base, i = 16, i+2
	} else if i < len(s) && s[i] == '0' {
		base = 8
	}
	start := i
	var v uint64
	overflow := false
	for i < len(s) {
		d := hexDigit(s[i])
		if d >= base {
			break
		}
		if v > (math.MaxUint64-d)/base {
			overflow = true
		}
		v = v*base + d
		i++
	}
	if i == start || i != len(s) {
		return 0, syscall.EINVAL
	}
	if overflow {
		return math.MaxUint64, syscall.ERANGE
	}
	if neg {
		v = -v
	}
	return v, nil
}

func hexDigit(c byte) uint64 {
	switch {
	case c >= '0' && c <= '9':
		return uint64(c - '0')
	case c >= 'a' && c <= 'z':
		return uint64(c-'a') + 10
	case c >= 'A' && c <= 'Z':
		return uint64(c-'A') + 10
	}
	return 99
}

// eventName checks an event name (QEMU's enum lookup and its message).
func eventName(name string) (string, error) {
	for _, e := range blockdev.DebugEvents {
		if e == name {
			return e, nil
		}
	}
	return "", fmt.Errorf("invalid parameter value: %s", name)
}

// configRules reads the config file at path and turns its sections into
// rules, with QEMU's messages.
func configRules(path string) (inject []*injectRule, sets []stateRule, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var errno syscall.Errno
		if !errors.As(err, &errno) {
			return nil, nil, fmt.Errorf("Could not read blkdebug config file: %v", err)
		}
		if errno == syscall.EISDIR {
			// fopen succeeds on a directory; reading it fails.
			return nil, nil, fmt.Errorf("Cannot read config file: %s", blockdev.Strerror(errno))
		}
		return nil, nil, fmt.Errorf("Could not read blkdebug config file: %s", blockdev.Strerror(errno))
	}
	rules, err := parseConfig(string(data))
	if err != nil {
		return nil, nil, err
	}
	// QEMU adds every inject-error rule, then every set-state rule.
	for _, g := range []string{"inject-error", "set-state"} {
		for _, r := range rules {
			if r.group != g {
				continue
			}
			ev, ok := r.str["event"]
			if !ok {
				return nil, nil, errors.New("Missing event name for rule")
			}
			if ev, err = eventName(ev); err != nil {
				return nil, nil, err
			}
			state := int64(int32(r.num["state"]))
			if g == "set-state" {
				sets = append(sets, stateRule{event: ev, state: state, newState: int64(int32(r.num["new_state"]))})
				continue
			}
			rule := &injectRule{event: ev, state: state, mask: defaultIOMask, any: true, errno: int64(syscall.EIO)}
			if t, ok := r.str["iotype"]; ok {
				i := slices.Index(ioTypeNames[:], t)
				if i < 0 {
					return nil, nil, fmt.Errorf("invalid parameter value: %s", t)
				}
				rule.mask = 1 << i
			}
			if e, ok := r.num["errno"]; ok {
				rule.errno = int64(int32(e))
			}
			if sec, ok := r.num["sector"]; ok {
				rule.setSector(int64(sec))
			}
			rule.once = r.flag["once"]
			inject = append(inject, rule)
		}
	}
	return inject, sets, nil
}
