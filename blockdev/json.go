package blockdev

import (
	"bytes"
	"encoding/json"
	"sort"
	"strings"

	"github.com/qbmond/qbmond/qmp"
)

func decodeJSON(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return dec.Decode(v)
}

// writeQEMUJSON writes v the way QEMU's qobject_to_json does for a file
// name: ", " and ": " separators and QDict member order (by bucket, see
// qmp.QDictBucket).
func writeQEMUJSON(b *strings.Builder, v any) {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			bi, bj := qmp.QDictBucket(keys[i]), qmp.QDictBucket(keys[j])
			if bi != bj {
				return bi < bj
			}
			return keys[i] < keys[j]
		})
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteString(", ")
			}
			writeQEMUJSON(b, k)
			b.WriteString(": ")
			writeQEMUJSON(b, x[k])
		}
		b.WriteByte('}')
	case Options:
		writeQEMUJSON(b, map[string]any(x))
	case []any:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			writeQEMUJSON(b, e)
		}
		b.WriteByte(']')
	default:
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(x); err != nil {
			b.WriteString("null")
			return
		}
		b.Write(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
	}
}
