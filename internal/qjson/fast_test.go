package qjson

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/qbmond/qbmond/qapi"
)

// oddStrings are strings that exercise every escaping rule.
func oddStrings() []string {
	out := []string{"", "plain", "é😀\x01<&>\x7f", "a\u2028b\u2029", "\xff\xfe", "x\xc3", "\ufffd", `"\/`, "\b\f\n\r\t\x00\x1f"}
	var all strings.Builder
	for b := range 256 {
		all.WriteByte(byte(b))
	}
	return append(out, all.String())
}

type embedded struct {
	A string `json:"a"`
	B int    `json:"b,omitempty"`
}

type withEmbedded struct {
	embedded
	C  *bool          `json:"c,omitempty"`
	D  []string       `json:"d"`
	E  map[string]any `json:"e,omitempty"`
	F  float64        `json:"f"`
	G  any            `json:"g"`
	H  []byte         `json:"h,omitempty"`
	I  json.RawMessage
	J  uint8 `json:"-"`
	k  int
	Ok bool `json:"ok,string"`
}

type clash struct {
	Embedded
	A string `json:"a"`
}

// Embedded is embedded's exported twin: its members are promoted.
type Embedded struct {
	A string         `json:"a"`
	M map[string]any `json:"m"`
}

type withExported struct {
	Embedded
	Z int `json:"z"`
}

// TestDirectLikeGeneral: the direct printer prints exactly what
// encoding/json, reordered and restyled, prints.
func TestDirectLikeGeneral(t *testing.T) {
	yes := true
	var values []any
	for _, s := range oddStrings() {
		name, full := s, s
		values = append(values, s, &s, []string{s, s}, map[string]any{s: s},
			qapi.BlockDirtyInfo{Name: &name, Count: 1, Granularity: 65536, Recording: true},
			qapi.ImageInfo{Filename: s, Format: "qcow2", BackingFilename: &full, FormatSpecific: &qapi.ImageInfoSpecific{
				Type: qapi.ImageInfoSpecificKindQcow2, Qcow2: &qapi.ImageInfoSpecificQCow2Wrapper{Data: qapi.ImageInfoSpecificQCow2{
					Compat: "1.1", LazyRefcounts: &yes, Bitmaps: []qapi.Qcow2BitmapInfo{{Name: s, Flags: []qapi.Qcow2BitmapInfoFlags{"auto"}}}}}}})
	}
	dz := int64(0)
	node := "n0"
	chain := &qapi.ImageInfo{Filename: "top", BackingImage: &qapi.ImageInfo{Filename: "mid", DirtyFlag: &yes,
		BackingImage: &qapi.ImageInfo{Filename: "base", ActualSize: &dz}}}
	values = append(values,
		nil, true, 0, -7, uint64(1<<63), 1.5, 1e21, 1e-7, json.Number("12345678901234567890"),
		json.Number(""), json.Number("-0.5e+7"), json.Number("01"), json.Number("1."), json.Number("x"),
		map[string]json.Number{"b": "1", "a": "-2E3"}, map[string]int(nil), map[string]any{},
		map[int]string{2: "b", 10: "a"}, bigMap(), map[qapi.JobStatus]bool{"running": true, "null": false},
		[]any{nil, true, 1, "x", map[string]any{"c": 1, "j": 2, "micro": 3, "minor": 4}},
		qapi.VersionInfo{Qemu: qapi.VersionTriple{Major: 7, Minor: 2, Micro: 22}, Package: "p"},
		&qapi.VersionInfo{},
		[]qapi.BlockDeviceInfo{{File: "f", NodeName: &node, Drv: "qcow2", Image: *chain, BackingFileDepth: 2,
			DetectZeroes: "off", Cache: qapi.BlockdevCacheInfo{Writeback: true}, DirtyBitmaps: []qapi.BlockDirtyInfo{{Count: 3}}},
			{File: "g"}},
		[]qapi.BlockStats{{NodeName: &node, Stats: qapi.BlockDeviceStats{IdleTimeNs: &dz, TimedStats: []qapi.BlockDeviceTimedStats{}},
			DriverSpecific: &qapi.BlockStatsSpecific{Driver: "file", File: &qapi.BlockStatsSpecificFile{DiscardNbOk: 2}},
			Parent:         &qapi.BlockStats{Stats: qapi.BlockDeviceStats{}}}},
		qapi.XDbgBlockGraph{Nodes: []qapi.XDbgBlockGraphNode{{ID: 1, Type: "block-driver", Name: "x"}}, Edges: []qapi.XDbgBlockGraphEdge{}},
		[]qapi.JobInfo{{ID: "j", Type: "commit", Status: "running"}}, []qapi.BlockJobInfo{}, []qapi.BlockInfo(nil),
		qapi.Empty{}, &qapi.Empty{}, struct{}{},
		withEmbedded{embedded: embedded{A: "a"}, D: nil, E: map[string]any{"z": json.Number("1"), "a": []any{}},
			F: 2.5, G: map[string]any{"driver": "file", "filename": "x"}, H: []byte("hi"), I: json.RawMessage(`{"b":1,"a":[2]}`), J: 1, k: 2},
		withEmbedded{embedded: embedded{B: 3}, C: &yes, D: []string{}, G: qapi.VersionTriple{Major: 1}, I: json.RawMessage(`null`)},
		clash{Embedded: Embedded{A: "inner"}, A: "outer"},
		withExported{Embedded: Embedded{A: "a", M: map[string]any{"y": 1, "x": nil}}, Z: 3},
		&Object{keys: []string{"driver", "file"}, vals: map[string]any{"driver": "raw", "file": qapi.BlockdevCacheInfo{Direct: true}}},
		qapi.BlockDirtyBitmapOrStr{External: &qapi.BlockDirtyBitmap{Node: "n", Name: "b"}},
	)
	for _, v := range values {
		want, werr := []byte("null"), error(nil)
		if v != nil {
			want, werr = general(nil, reflect.ValueOf(v))
		}
		got, gerr := Append(nil, v)
		if (werr == nil) != (gerr == nil) || werr == nil && string(got) != string(want) {
			t.Errorf("%#v:\n direct %s (%v)\ngeneral %s (%v)", v, got, gerr, want, werr)
		}
	}
}

// BenchmarkAppendNodes prints a query-named-block-nodes reply of 1,000
// nodes in the generated types.
func BenchmarkAppendNodes(b *testing.B) {
	v := make([]qapi.BlockDeviceInfo, 1000)
	for i := range v {
		name, dirty := "node", false
		size := int64(1 << 20)
		v[i] = qapi.BlockDeviceInfo{File: "/tmp/x.qcow2", NodeName: &name, Drv: "qcow2", DetectZeroes: "off",
			Image: qapi.ImageInfo{Filename: "/tmp/x.qcow2", Format: "qcow2", VirtualSize: 1 << 30, DirtyFlag: &dirty, ActualSize: &size},
			Cache: qapi.BlockdevCacheInfo{Writeback: true}}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Append(nil, v); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzDirectLikeGeneral: for strings and numbers of any kind, inside the
// generated reply types, maps and lists, the direct printer prints what
// the general way prints.
func FuzzDirectLikeGeneral(f *testing.F) {
	for _, s := range oddStrings() {
		f.Add(s, int64(-1), true)
	}
	f.Fuzz(func(t *testing.T, s string, n int64, b bool) {
		name := s
		u := uint64(n)
		values := []any{
			qapi.BlockDeviceInfo{File: s, NodeName: &name, Ro: b, BackingFileDepth: n, Image: qapi.ImageInfo{Filename: s,
				ClusterSize: &n, FormatSpecific: &qapi.ImageInfoSpecific{Type: qapi.ImageInfoSpecificKindQcow2,
					Qcow2: &qapi.ImageInfoSpecificQCow2Wrapper{Data: qapi.ImageInfoSpecificQCow2{Compat: s}}}}},
			qapi.XDbgBlockGraphNode{ID: u, Name: s},
			map[string]any{s: n, "x": []any{s, b, nil, json.Number(s)}, s + "y": map[string]string{s: s}},
			[]any{s, n, u, b, json.Number(s)},
		}
		for _, v := range values {
			want, werr := general(nil, reflect.ValueOf(v))
			got, gerr := Append(nil, v)
			if (werr == nil) != (gerr == nil) || werr == nil && string(got) != string(want) {
				t.Fatalf("%#v:\n direct %s (%v)\ngeneral %s (%v)", v, got, gerr, want, werr)
			}
		}
	})
}

// bigMap has more members than the direct printer sorts by insertion.
func bigMap() map[string]any {
	m := map[string]any{}
	for i := range 40 {
		m[strings.Repeat("k", i%7)+string(rune('a'+i))] = i
	}
	return m
}
