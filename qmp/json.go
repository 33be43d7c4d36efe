package qmp

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// QMP input is a stream of JSON values with QEMU's extensions: strings may
// be single-quoted, and '\'' is an escape in both kinds of string. The
// reader works in three stages, like QEMU's: a byte-at-a-time lexer cuts
// tokens, a streamer groups tokens into one top-level value by counting
// brackets (and enforces the size, count and depth limits), and a parser
// turns a group into a value tree. After a lexical error the lexer skips to
// a point where a new request can plausibly start, so one bad request does
// not poison the next.

// Limits on one request, as QEMU's (variables so tests can scale them).
var (
	maxTokenSize  = 64 << 20 // bytes in one request
	maxTokenCount = 2 << 20  // tokens in one request
	maxNesting    = 1 << 10  // open brackets and braces
)

type tokKind uint8

const (
	tokLCurly tokKind = iota
	tokRCurly
	tokLSquare
	tokRSquare
	tokColon
	tokComma
	tokInt
	tokFloat
	tokKeyword
	tokString
	tokError
)

type token struct {
	kind tokKind
	text string // the source text (strings with their quotes)
}

// structuralKind returns the token of a one-byte structural character.
func structuralKind(c byte) (tokKind, bool) {
	switch c {
	case '{':
		return tokLCurly, true
	case '}':
		return tokRCurly, true
	case '[':
		return tokLSquare, true
	case ']':
		return tokRSquare, true
	case ':':
		return tokColon, true
	case ',':
		return tokComma, true
	}
	return 0, false
}

var structuralText = [...]string{tokLCurly: "{", tokRCurly: "}", tokLSquare: "[", tokRSquare: "]", tokColon: ":", tokComma: ","}

type lexState uint8

const (
	lxStart lexState = iota
	lxDQ             // in a "string"
	lxDQEscape
	lxSQ // in a 'string'
	lxSQEscape
	lxZero     // after a leading 0
	lxMinus    // after '-'
	lxInt      // in the integer part
	lxDot      // after '.', a digit must follow
	lxFrac     // in the fraction
	lxExp      // after 'e', a sign or digit must follow
	lxExpSign  // after the exponent's sign, a digit must follow
	lxExpDigit // in the exponent
	lxKeyword
	lxRecover // skipping after an error
)

// lexer cuts bytes into tokens and hands them to emit.
type lexer struct {
	state lexState
	buf   []byte
	emit  func(token)
	// strict refuses QEMU's extensions to JSON (single-quoted strings
	// and the \' escape): JSON-RPC input is plain JSON.
	strict bool
}

func (l *lexer) token(k tokKind) {
	l.emit(token{kind: k, text: string(l.buf)})
	l.buf = l.buf[:0]
	if cap(l.buf) > 1<<20 {
		l.buf = nil // do not keep a huge token's memory
	}
	l.state = lxStart
}

// fail ends the current token as an error that includes the offending byte
// and starts skipping.
func (l *lexer) fail(c byte) {
	l.buf = append(l.buf, c)
	l.emit(token{kind: tokError, text: string(l.buf)})
	l.buf = l.buf[:0]
	l.state = lxRecover
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// feed processes one byte. Tokens that end only when the next byte is seen
// (numbers, keywords) are emitted and the byte is processed again.
func (l *lexer) feed(c byte) {
	for {
		switch l.state {
		case lxStart:
			if k, ok := structuralKind(c); ok {
				l.emit(token{kind: k, text: structuralText[k]})
				return
			}
			switch {
			case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			case c == '"':
				l.buf, l.state = append(l.buf, c), lxDQ
			case c == '\'' && !l.strict:
				l.buf, l.state = append(l.buf, c), lxSQ
			case c == '0':
				l.buf, l.state = append(l.buf, c), lxZero
			case c >= '1' && c <= '9':
				l.buf, l.state = append(l.buf, c), lxInt
			case c == '-':
				l.buf, l.state = append(l.buf, c), lxMinus
			case c >= 'a' && c <= 'z':
				l.buf, l.state = append(l.buf, c), lxKeyword
			default:
				l.fail(c)
			}
		case lxDQ, lxSQ:
			quote, esc := byte('"'), lxDQEscape
			if l.state == lxSQ {
				quote, esc = '\'', lxSQEscape
			}
			switch {
			case c < 0x20 || c >= 0xFE:
				l.fail(c)
			case c == quote:
				l.buf = append(l.buf, c)
				l.token(tokString)
			case c == '\\':
				l.buf, l.state = append(l.buf, c), esc
			default:
				l.buf = append(l.buf, c)
			}
		case lxDQEscape, lxSQEscape:
			if c < 0x20 || c >= 0xFE || (l.strict && c == '\'') {
				l.fail(c)
			} else {
				l.buf = append(l.buf, c)
				l.state--
			}
		case lxZero:
			switch {
			case c == '.':
				l.buf, l.state = append(l.buf, c), lxDot
			case isDigit(c):
				l.fail(c)
			default:
				l.token(tokInt)
				continue
			}
		case lxMinus:
			switch {
			case c == '0':
				l.buf, l.state = append(l.buf, c), lxZero
			case c >= '1' && c <= '9':
				l.buf, l.state = append(l.buf, c), lxInt
			default:
				l.fail(c)
			}
		case lxInt:
			switch {
			case isDigit(c):
				l.buf = append(l.buf, c)
			case c == '.':
				l.buf, l.state = append(l.buf, c), lxDot
			case c == 'e' || c == 'E':
				l.buf, l.state = append(l.buf, c), lxExp
			default:
				l.token(tokInt)
				continue
			}
		case lxDot:
			if !isDigit(c) {
				l.fail(c)
			} else {
				l.buf, l.state = append(l.buf, c), lxFrac
			}
		case lxFrac:
			switch {
			case isDigit(c):
				l.buf = append(l.buf, c)
			case c == 'e' || c == 'E':
				l.buf, l.state = append(l.buf, c), lxExp
			default:
				l.token(tokFloat)
				continue
			}
		case lxExp:
			switch {
			case c == '+' || c == '-':
				l.buf, l.state = append(l.buf, c), lxExpSign
			case isDigit(c):
				l.buf, l.state = append(l.buf, c), lxExpDigit
			default:
				l.fail(c)
			}
		case lxExpSign:
			if !isDigit(c) {
				l.fail(c)
			} else {
				l.buf, l.state = append(l.buf, c), lxExpDigit
			}
		case lxExpDigit:
			if isDigit(c) {
				l.buf = append(l.buf, c)
			} else {
				l.token(tokFloat)
				continue
			}
		case lxKeyword:
			if c >= 'a' && c <= 'z' {
				l.buf = append(l.buf, c)
			} else {
				l.token(tokKeyword)
				continue
			}
		case lxRecover:
			// Resume, re-reading the byte, at a structural character, a
			// control character other than tab (a line end, typically)
			// or an impossible UTF-8 byte (which is then reported).
			if _, ok := structuralKind(c); ok || (c < 0x20 && c != '\t') || c >= 0xFE {
				l.state = lxStart
				continue
			}
		}
		if len(l.buf) > maxTokenSize {
			// Reported as too large; the huge token's memory is not kept.
			l.emit(token{kind: tokError, text: ""})
			l.buf = nil
			l.state = lxRecover
		}
		return
	}
}

// flush ends a pending number or keyword at the end of the input.
func (l *lexer) flush() {
	switch l.state {
	case lxZero, lxInt:
		l.token(tokInt)
	case lxFrac, lxExpDigit:
		l.token(tokFloat)
	case lxKeyword:
		l.token(tokKeyword)
	}
}

// message is one parsed request or the error that stands for it.
type message struct {
	value any
	err   error
}

// streamer groups tokens into top-level values.
type streamer struct {
	toks            []token
	size            int
	braces, squares int
	out             func(message)
}

func (s *streamer) token(t token) {
	switch t.kind {
	case tokLCurly:
		s.braces++
	case tokRCurly:
		s.braces--
	case tokLSquare:
		s.squares++
	case tokRSquare:
		s.squares--
	}
	s.toks = append(s.toks, t)
	s.size += len(t.text)
	switch {
	case t.kind == tokError && t.text == "":
		s.done(message{err: parseError("JSON token size limit exceeded")})
	case t.kind == tokError:
		s.done(message{err: parseError("JSON parse error, stray '%s'", t.text)})
	case s.braces < 0 || s.squares < 0 || (s.braces == 0 && s.squares == 0):
		p := parser{toks: s.toks}
		v, err := p.value()
		s.done(message{value: v, err: err})
	case s.size > maxTokenSize:
		s.done(message{err: parseError("JSON token size limit exceeded")})
	case len(s.toks) > maxTokenCount:
		s.done(message{err: parseError("JSON token count limit exceeded")})
	case s.braces+s.squares > maxNesting:
		s.done(message{err: parseError("JSON nesting depth limit exceeded")})
	}
}

func (s *streamer) done(m message) {
	clear(s.toks)
	s.toks = s.toks[:0]
	if cap(s.toks) > 1024 {
		s.toks = nil // do not keep a huge request's memory
	}
	s.size, s.braces, s.squares = 0, 0, 0
	s.out(m)
}

func parseError(format string, a ...any) error { return Errorf(format, a...) }

// parser turns the tokens of one top-level value into a value tree.
type parser struct {
	toks []token
	pos  int
}

var errPremature = parseError("JSON parse error, premature EOI")

func (p *parser) next() (token, bool) {
	if p.pos >= len(p.toks) {
		return token{}, false
	}
	t := p.toks[p.pos]
	p.pos++
	return t, true
}

func (p *parser) value() (any, error) {
	t, ok := p.next()
	if !ok {
		return nil, errPremature
	}
	switch t.kind {
	case tokLCurly:
		return p.object()
	case tokLSquare:
		return p.array()
	case tokString:
		return decodeString(t.text)
	case tokInt, tokFloat:
		return json.Number(t.text), nil
	case tokKeyword:
		switch t.text {
		case "true":
			return true, nil
		case "false":
			return false, nil
		case "null":
			return nil, nil
		}
		return nil, parseError("JSON parse error, invalid keyword '%s'", t.text)
	}
	return nil, parseError("JSON parse error, expecting value")
}

func (p *parser) peek() (tokKind, bool) {
	if p.pos >= len(p.toks) {
		return 0, false
	}
	return p.toks[p.pos].kind, true
}

func (p *parser) object() (any, error) {
	m := map[string]any{}
	if k, ok := p.peek(); ok && k == tokRCurly {
		p.pos++
		return m, nil
	}
	for {
		if _, ok := p.peek(); !ok {
			return nil, errPremature
		}
		kv, err := p.value()
		if err != nil {
			return nil, err
		}
		key, ok := kv.(string)
		if !ok {
			return nil, parseError("JSON parse error, key is not a string in object")
		}
		t, ok := p.next()
		if !ok {
			return nil, errPremature
		}
		if t.kind != tokColon {
			return nil, parseError("JSON parse error, missing : in object pair")
		}
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		if _, dup := m[key]; dup {
			return nil, parseError("JSON parse error, duplicate key")
		}
		m[key] = v
		t, ok = p.next()
		if !ok {
			return nil, errPremature
		}
		switch t.kind {
		case tokComma:
		case tokRCurly:
			return m, nil
		default:
			return nil, parseError("JSON parse error, expected separator in dict")
		}
	}
}

func (p *parser) array() (any, error) {
	list := []any{}
	if k, ok := p.peek(); ok && k == tokRSquare {
		p.pos++
		return list, nil
	}
	for {
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		list = append(list, v)
		t, ok := p.next()
		if !ok {
			return nil, errPremature
		}
		switch t.kind {
		case tokComma:
		case tokRSquare:
			return list, nil
		default:
			return nil, parseError("JSON parse error, expected separator in list")
		}
	}
}

// decodeString decodes a quoted token (either quote kind). Like QEMU, it
// takes modified UTF-8 (C0 80 is U+0000) and refuses noncharacters.
func decodeString(s string) (string, error) {
	body := s[1 : len(s)-1]
	if isPlainASCII(body) {
		return body, nil
	}
	var b strings.Builder
	b.Grow(len(body))
	for i := 0; i < len(body); {
		c := body[i]
		if c != '\\' {
			if c < 0x80 {
				b.WriteByte(c)
				i++
				continue
			}
			if c == 0xC0 && i+1 < len(body) && body[i+1] == 0x80 {
				b.WriteByte(0)
				i += 2
				continue
			}
			r, n := utf8.DecodeRuneInString(body[i:])
			if (r == utf8.RuneError && n <= 1) || !validCodepoint(r) {
				return "", parseError("JSON parse error, invalid UTF-8 sequence in string")
			}
			b.WriteString(body[i : i+n])
			i += n
			continue
		}
		if i+1 >= len(body) {
			return "", parseError("JSON parse error, invalid escape sequence in string")
		}
		switch e := body[i+1]; e {
		case '"', '\'', '\\', '/':
			b.WriteByte(e)
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'u':
			r, n, err := decodeUnicode(s, len(s)-len(body)-1+i)
			if err != nil {
				return "", err
			}
			b.WriteRune(r)
			i += n
			continue
		default:
			return "", parseError("JSON parse error, invalid escape sequence in string")
		}
		i += 2
	}
	return b.String(), nil
}

// isPlainASCII tells whether a string body needs no decoding.
func isPlainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 || s[i] == '\\' {
			return false
		}
	}
	return true
}

// validCodepoint refuses what QEMU refuses in strings: surrogates, code
// points past U+10FFFF and the noncharacters (U+FDD0..U+FDEF and every
// code point ending in FFFE or FFFF).
func validCodepoint(r rune) bool {
	switch {
	case r < 0 || r > 0x10FFFF:
		return false
	case r >= 0xD800 && r < 0xE000:
		return false
	case r >= 0xFDD0 && r <= 0xFDEF:
		return false
	case r&0xFFFE == 0xFFFE:
		return false
	}
	return true
}

// decodeUnicode decodes \uXXXX (and a following low surrogate) at s[at:],
// returning the rune and how many bytes it used. The error quotes the
// escape (both escapes of a pair) as QEMU does.
func decodeUnicode(s string, at int) (rune, int, error) {
	bad := func(n int) (rune, int, error) {
		end := min(at+n, len(s))
		return 0, 0, parseError("JSON parse error, %s is not a valid Unicode character", s[at:end])
	}
	hex4 := func(i int) (rune, bool) {
		if i+6 > len(s) || s[i] != '\\' || s[i+1] != 'u' {
			return 0, false
		}
		v, err := strconv.ParseUint(s[i+2:i+6], 16, 16)
		return rune(v), err == nil
	}
	r, ok := hex4(at)
	if !ok {
		return bad(6)
	}
	switch {
	case r >= 0xD800 && r < 0xDC00:
		lo, ok := hex4(at + 6)
		if !ok || lo < 0xDC00 || lo >= 0xE000 {
			return bad(6)
		}
		r = 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00)
		if !validCodepoint(r) {
			return bad(12)
		}
		return r, 12, nil
	case !validCodepoint(r):
		return bad(6)
	}
	return r, 6, nil
}

// Decoder reads QMP requests from a stream.
type Decoder struct {
	r     io.Reader
	buf   []byte
	lex   lexer
	st    streamer
	queue []message
	eof   bool
}

// NewDecoder returns a decoder reading r.
func NewDecoder(r io.Reader) *Decoder {
	d := &Decoder{r: r, buf: make([]byte, 64<<10)}
	d.st.out = func(m message) { d.queue = append(d.queue, m) }
	d.lex.emit = d.st.token
	return d
}

// NewStrictDecoder returns a decoder of plain JSON (no single-quoted
// strings, no \' escape) with the same limits and checks as NewDecoder's:
// size, token count and nesting limits, duplicate keys and invalid UTF-8
// refused.
func NewStrictDecoder(r io.Reader) *Decoder {
	d := &Decoder{r: r, buf: make([]byte, 64<<10)}
	d.lex.strict = true
	d.st.out = func(m message) { d.queue = append(d.queue, m) }
	d.lex.emit = d.st.token
	return d
}

// Next returns the next value, or the parse error (a *Error) that stands
// for a malformed one; io.EOF (or the read error) when the input ends.
func (d *Decoder) Next() (any, error) {
	for len(d.queue) == 0 {
		if d.eof {
			return nil, io.EOF
		}
		n, err := d.r.Read(d.buf)
		for _, c := range d.buf[:n] {
			d.lex.feed(c)
		}
		if err != nil {
			d.lex.flush()
			d.eof = true
			if !errors.Is(err, io.EOF) && len(d.queue) == 0 {
				return nil, err
			}
		}
	}
	m := d.queue[0]
	d.queue[0] = message{}
	d.queue = d.queue[1:]
	if len(d.queue) == 0 {
		d.queue = d.queue[:0:0]
	}
	if m.err != nil {
		return nil, &parseErr{m.err}
	}
	return m.value, nil
}

// parseErr marks an error as bad input (the stream goes on) rather than a
// failed read.
type parseErr struct{ err error }

func (e *parseErr) Error() string { return e.err.Error() }
func (e *parseErr) Unwrap() error { return e.err }

// IsParseError tells whether an error from Decoder.Next is about malformed
// input, after which the decoder can go on.
func IsParseError(err error) bool {
	var p *parseErr
	return errors.As(err, &p)
}

// ParseJSON parses exactly one JSON value (QEMU's dialect) from data.
func ParseJSON(data []byte) (any, error) {
	var msgs []message
	var st streamer
	st.out = func(m message) { msgs = append(msgs, m) }
	lx := lexer{emit: st.token}
	for _, c := range data {
		lx.feed(c)
	}
	lx.flush()
	if len(msgs) == 0 || len(st.toks) > 0 {
		return nil, parseError("JSON parse error, premature EOI")
	}
	if len(msgs) > 1 {
		return nil, fmt.Errorf("JSON parse error, more than one value")
	}
	return msgs[0].value, msgs[0].err
}
