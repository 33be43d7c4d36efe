package qmp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// appendValue appends v as JSON the way QEMU writes it: ", " and ": "
// separators, every character outside printable ASCII escaped as \uXXXX
// with upper-case hex (surrogate pairs above the BMP), and floating-point
// numbers with 17 significant digits.
func appendValue(dst []byte, v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return dst, err
	}
	return restyle(dst, bytes.TrimRight(buf.Bytes(), "\n")), nil
}

// restyle rewrites compact encoding/json output in QEMU's style.
func restyle(dst, src []byte) []byte {
	inString := false
	for i := 0; i < len(src); i++ {
		c := src[i]
		if !inString {
			switch c {
			case '"':
				inString = true
				dst = append(dst, c)
			case ':', ',':
				dst = append(dst, c, ' ')
			default:
				dst = append(dst, c)
			}
			continue
		}
		switch {
		case c == '"':
			inString = false
			dst = append(dst, c)
		case c == '\\':
			// encoding/json escapes: keep the short ones, upper-case \u.
			if src[i+1] == 'u' {
				dst = append(dst, '\\', 'u')
				dst = append(dst, bytes.ToUpper(src[i+2:i+6])...)
				i += 5
			} else {
				dst = append(dst, c, src[i+1])
				i++
			}
		case c == 0x7F:
			dst = append(dst, `\u007F`...)
		case c >= 0x80:
			r, n := utf8.DecodeRune(src[i:])
			if r > 0xFFFF {
				r -= 0x10000
				dst = fmt.Appendf(dst, `\u%04X\u%04X`, 0xD800+(r>>10), 0xDC00+(r&0x3FF))
			} else {
				dst = fmt.Appendf(dst, `\u%04X`, r)
			}
			i += n - 1
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// qemuID returns an echoed id the way QEMU prints it: numbers that are not
// integers in the 64-bit ranges are doubles, printed with 17 digits.
func qemuID(id any) any {
	n, ok := id.(json.Number)
	if !ok {
		return id
	}
	s := string(n)
	if !strings.ContainsAny(s, ".eE") {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return json.Number(strconv.FormatInt(i, 10)) // -0 is 0
		}
		if _, err := strconv.ParseUint(s, 10, 64); err == nil {
			return n
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if (err != nil && f == 0) || math.IsInf(f, 0) {
		// Out of a double's range QEMU prints "inf", which is not JSON;
		// the literal as it was sent is.
		return n
	}
	return json.Number(strconv.FormatFloat(f, 'g', 17, 64))
}
