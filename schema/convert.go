package schema

import (
	"math"
	"math/bits"
	"strconv"
	"strings"
)

// Conversions of keyval strings, with the syntax QEMU 7.2 accepts on its
// command line (verified against qemu-storage-daemon).

// parseBool accepts QEMU's spellings, case-sensitively.
func parseBool(s string) (bool, bool) {
	switch s {
	case "on", "yes", "true", "y":
		return true, true
	case "off", "no", "false", "n":
		return false, true
	}
	return false, false
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// scanUint reads an unsigned number as strtoull does with the given base
// (0: 0x hex, leading-0 octal, else decimal): leading blanks and a sign are
// allowed. It returns the magnitude, whether a '-' preceded it, where the
// number ended, and whether it overflowed. end == start means no digits.
func scanUint(s string, base int) (mag uint64, neg bool, end int, overflow bool) {
	i := 0
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	if (base == 0 || base == 16) && i+1 < len(s) && s[i] == '0' && (s[i+1] == 'x' || s[i+1] == 'X') &&
		i+2 < len(s) && digitVal(s[i+2]) < 16 {
		base = 16
		i += 2
	} else if base == 0 {
		base = 10
		if i < len(s) && s[i] == '0' {
			base = 8
		}
	}
	start := i
	for i < len(s) {
		d := digitVal(s[i])
		if d >= base {
			break
		}
		hi, lo := bits.Mul64(mag, uint64(base))
		lo, carry := bits.Add64(lo, uint64(d), 0)
		if hi != 0 || carry != 0 {
			overflow = true
		}
		mag = lo
		i++
	}
	if i == start {
		return 0, false, 0, false
	}
	return mag, neg, i, overflow
}

func digitVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'z':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'Z':
		return int(c-'A') + 10
	}
	return 99
}

// parseInt64 is qemu_strtoi64(s, NULL, 0): the whole string must be a
// number that fits int64.
func parseInt64(s string) (int64, bool) {
	mag, neg, end, overflow := scanUint(s, 0)
	if end == 0 || end != len(s) || overflow {
		return 0, false
	}
	if neg {
		if mag > 1<<63 {
			return 0, false
		}
		return -int64(mag), true // -(1<<63) wraps to MinInt64 as wanted
	}
	if mag > math.MaxInt64 {
		return 0, false
	}
	return int64(mag), true
}

// parseUint64 is qemu_strtou64(s, NULL, 0): like strtoull, a leading '-'
// negates (wrapping) rather than failing.
func parseUint64(s string) (uint64, bool) {
	mag, neg, end, overflow := scanUint(s, 0)
	if end == 0 || end != len(s) || overflow {
		return 0, false
	}
	if neg {
		return -mag, true
	}
	return mag, true
}

func suffixMul(c byte) uint64 {
	switch c {
	case 'b', 'B':
		return 1
	case 'k', 'K':
		return 1 << 10
	case 'm', 'M':
		return 1 << 20
	case 'g', 'G':
		return 1 << 30
	case 't', 'T':
		return 1 << 40
	case 'p', 'P':
		return 1 << 50
	case 'e', 'E':
		return 1 << 60
	}
	return 0
}

// parseSize is qemu_strtosz: a decimal integer, optionally with a decimal
// fraction (which then needs a suffix other than B), or a hex integer,
// then an optional suffix B, k, M, G, T, P or E (powers of 1024, any case).
// Negative values, exponents and results of 2^64 or more are rejected.
func parseSize(s string) (uint64, bool) {
	val, neg, end, overflow := scanUint(s, 10)
	if end == 0 || overflow || neg {
		return 0, false
	}
	if strings.ContainsRune(s[:end], '-') {
		return 0, false
	}
	var frac uint64 // 0.64 fixed point
	if val == 0 && end < len(s) && (s[end] == 'x' || s[end] == 'X') {
		var hexOverflow bool
		val, _, end, hexOverflow = scanUint(s, 16)
		if end == 0 || hexOverflow {
			return 0, false
		}
		if end < len(s) && s[end] == '.' {
			return 0, false
		}
	} else if end < len(s) && s[end] == '.' {
		i := end + 1
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == end+1 {
			end = i // "1." or "1.k": no fraction digits
		} else {
			if j := i; j < len(s) && (s[j] == 'e' || s[j] == 'E') {
				j++
				if j < len(s) && (s[j] == '+' || s[j] == '-') {
					j++
				}
				if j < len(s) && s[j] >= '0' && s[j] <= '9' {
					return 0, false // an exponent makes the whole input invalid
				}
			}
			f, err := strconv.ParseFloat("0"+s[end:i], 64)
			if err != nil {
				return 0, false
			}
			if f >= 1 {
				frac = math.MaxUint64
			} else {
				frac = uint64(f * 0x1p64)
			}
			end = i
		}
	}
	mul := uint64(1)
	if end < len(s) {
		if m := suffixMul(s[end]); m != 0 {
			mul = m
			end++
		}
	}
	if end != len(s) {
		return 0, false
	}
	if mul == 1 {
		if frac != 0 {
			return 0, false
		}
		return val, true
	}
	// 64.64 fixed point times mul, rounding half up.
	hi, lo := bits.Mul64(val, mul)
	fhi, flo := bits.Mul64(frac, mul)
	lo, carry := bits.Add64(lo, fhi, 0)
	hi += carry
	lo, carry = bits.Add64(lo, flo>>63, 0)
	hi += carry
	if hi != 0 {
		return 0, false
	}
	return lo, true
}

// parseNumber is qemu_strtod_finite(s, NULL): leading blanks allowed, the
// whole rest must be a finite number.
func parseNumber(s string) (float64, bool) {
	t := strings.TrimLeft(s, " \t\n\v\f\r")
	if t == "" || strings.ContainsRune(t, '_') {
		return 0, false
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, false
	}
	return f, true
}
