package blockdev

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/qbmond/qbmond/internal/qjson"
)

func decodeJSON(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return dec.Decode(v)
}

// writeQEMUJSON writes v the way QEMU's qobject_to_json does for a file
// name (see package qjson).
func writeQEMUJSON(b *strings.Builder, v any) {
	out, err := qjson.Append(nil, v)
	if err != nil {
		b.WriteString("null")
		return
	}
	b.Write(out)
}
