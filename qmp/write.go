package qmp

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"

	"github.com/qbmond/qbmond/internal/qjson"
)

// appendValue appends v as JSON the way QEMU writes it (see package
// qjson: QDict member order, ", " and ": " separators, \uXXXX escapes).
func appendValue(dst []byte, v any) ([]byte, error) {
	return qjson.Append(dst, v)
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
