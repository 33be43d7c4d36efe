package qbm

import (
	"encoding/json"
	"strings"
	"testing"
)

const sample = `{
  "QBM": {
    "version": 1,
    "creator": "qbmond 0.1.0",
    "x-vendor": {"kept": [1, 2.5, "three"]},
    "image": {"file": "disk-data.img", "format": "raw", "x-note": "kept"},
    "bitmaps": {
      "nightly": {"file": "disk-nightly.bitmap", "type": "dirty",
                  "granularity-bytes": 65536, "enabled": false, "in-use": true, "x-extra": 7},
      "allocation": {"file": "disk-allocation.bitmap", "type": "allocation",
                     "granularity-bytes": 4096,
                     "backing": {"file": "base.qcow2", "format": "qcow2", "x-b": true}}
    }
  },
  "comment": "kept too"
}`

func TestParseSample(t *testing.T) {
	d, err := Parse([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	if d.Version != 1 || d.Creator != "qbmond 0.1.0" || d.Image != (FileRef{"disk-data.img", "raw"}) {
		t.Fatalf("header %+v", d)
	}
	if len(d.Bitmaps) != 2 || d.Bitmaps[0].Name != "allocation" || d.Bitmaps[1].Name != "nightly" {
		t.Fatalf("bitmaps %+v", d.Bitmaps)
	}
	a := d.Allocation()
	if a == nil || a.Granularity != 4096 || a.Backing == nil || *a.Backing != (FileRef{"base.qcow2", "qcow2"}) || !a.Enabled {
		t.Fatalf("allocation %+v", a)
	}
	n := d.Bitmap("nightly")
	if n.Enabled || !n.InUse || n.Granularity != 65536 || n.File != "disk-nightly.bitmap" {
		t.Fatalf("nightly %+v", n)
	}
}

// Rewriting keeps every member qbmond does not know, and what it knows.
func TestMarshalRoundTrip(t *testing.T) {
	d, err := Parse([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	out, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	d2, err := Parse(out)
	if err != nil {
		t.Fatalf("reparse: %v\n%s", err, out)
	}
	out2, _ := d2.Marshal()
	if string(out) != string(out2) {
		t.Fatalf("not stable:\n%s\n%s", out, out2)
	}
	var want, got any
	json.Unmarshal([]byte(sample), &want)
	json.Unmarshal(out, &got)
	// The only difference may be defaults made explicit: the allocation
	// entry carries no enabled/in-use, the dirty one both.
	wb, _ := json.Marshal(want)
	gb, _ := json.Marshal(got)
	if string(wb) != string(gb) {
		t.Fatalf("members changed:\nwant %s\n got %s", wb, gb)
	}
}

func TestParseErrors(t *testing.T) {
	entry := func(s string) string {
		return `{"QBM": {"version": 1, "image": {"file": "d.img", "format": "raw"}, "bitmaps": {"b": ` + s + `}}}`
	}
	for _, tc := range []struct{ in, want string }{
		{``, "Empty file"},
		{`  `, "Empty file"},
		{`{`, "Failed to parse json from file: JSON parse error, premature EOI"},
		{`[1]`, "Failed to parse json from file: the top level is not an object"},
		{`{} {}`, "Failed to parse json from file: JSON parse error, more than one value"},
		{`{"qbm": {}}`, `Json doesn't have key "QBM"`},
		{`{"QBM": 1}`, `"QBM" must be an object`},
		{`{"QBM": {}}`, `Key "version" not found in QBM descriptor`},
		{`{"QBM": {"version": 2}}`, "Invalid version of QBM descriptor: 2"},
		{`{"QBM": {"version": "1"}}`, `Invalid version of QBM descriptor: "1"`},
		{`{"QBM": {"version": 1.0}}`, "Invalid version of QBM descriptor: 1.0"},
		{`{"QBM": {"version": 1, "creator": 3, "image": {}}}`, `"creator" must be a string`},
		{`{"QBM": {"version": 1}}`, `Key "image" not found in QBM descriptor`},
		{`{"QBM": {"version": 1, "image": "d.img"}}`, `"image" information invalid`},
		{`{"QBM": {"version": 1, "image": {"format": "raw"}}}`, "Image missing 'file' field"},
		{`{"QBM": {"version": 1, "image": {"file": "d.img"}}}`, "Image missing 'format' field"},
		{`{"QBM": {"version": 1, "image": {"file": 5, "format": "raw"}}}`, "Image 'file' field must be a non-empty string"},
		{`{"QBM": {"version": 1, "image": {"file": "nbd:host:1", "format": "raw"}}}`, `Protocol file names are not supported in QBM descriptors: "nbd:host:1"`},
		{`{"QBM": {"version": 1, "image": {"file": "d.img", "format": "raw"}}}`, `"bitmaps" not found`},
		{`{"QBM": {"version": 1, "image": {"file": "d.img", "format": "raw"}, "bitmaps": []}}`, `"bitmaps" must be an object`},
		{entry(`1`), `"b" is not a dictionary`},
		{entry(`{"type": "dirty", "granularity-bytes": 512}`), `"file" is missing in bitmap "b"`},
		{entry(`{"file": "b.bm", "granularity-bytes": 512}`), `"type" is missing in bitmap "b"`},
		{entry(`{"file": "b.bm", "type": "dirt", "granularity-bytes": 512}`), `"type" of bitmap "b" must be "dirty" or "allocation", not "dirt"`},
		{entry(`{"file": "b.bm", "type": "dirty"}`), `"granularity-bytes" is missing in bitmap "b"`},
		{entry(`{"file": "b.bm", "type": "dirty", "granularity-bytes": "512"}`), `"granularity-bytes" of bitmap "b" must be an integer`},
		{entry(`{"file": "b.bm", "type": "dirty", "granularity-bytes": 1000}`), `"granularity-bytes" must be a power of two`},
		{entry(`{"file": "b.bm", "type": "dirty", "granularity-bytes": 256}`), `"granularity-bytes" too small`},
		{entry(`{"file": "b.bm", "type": "dirty", "granularity-bytes": 4294967296}`), `"granularity-bytes" too big`},
		{entry(`{"file": "b.bm", "type": "dirty", "granularity-bytes": -512}`), `"granularity-bytes" of bitmap "b" must be a positive integer`},
		{entry(`{"file": "b.bm", "type": "dirty", "granularity-bytes": 512, "enabled": "yes"}`), `"enabled" of bitmap "b" must be a boolean`},
		{entry(`{"file": "b.bm", "type": "dirty", "granularity-bytes": 512, "in-use": 1}`), `"in-use" of bitmap "b" must be a boolean`},
		{entry(`{"file": "b.bm", "type": "dirty", "granularity-bytes": 512, "sha256": "ab"}`), `"sha256" of bitmap "b" must be 64 hexadecimal digits`},
		{entry(`{"file": "b.bm", "type": "dirty", "granularity-bytes": 512, "backing": {"file": "x"}}`), `"backing" is only allowed in the allocation bitmap, not in bitmap "b"`},
		{entry(`{"file": "b.bm", "type": "allocation", "granularity-bytes": 512, "backing": {}}`), "Backing file name not specified"},
		{entry(`{"file": "b.bm", "type": "allocation", "granularity-bytes": 512, "backing": "x"}`), `"backing" of bitmap "b" must be an object`},
		{entry(`{"file": "json:{}", "type": "dirty", "granularity-bytes": 512}`), `Protocol file names are not supported in QBM descriptors: "json:{}"`},
		{entry(`{"file": "b.bm", "type": "dirty", "granularity-bytes": 512}`) + " x", "Failed to parse json from file: JSON parse error, invalid keyword 'x'"},
		{`{"QBM": {"version": 1, "image": {"file": "d.img", "format": "raw"}, "bitmaps": {
			"a": {"file": "a", "type": "allocation", "granularity-bytes": 512},
			"b": {"file": "b", "type": "allocation", "granularity-bytes": 512}}}}`, "Multiple allocation bitmaps are not supported"},
	} {
		_, err := Parse([]byte(tc.in))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s:\n got %v\nwant %s", tc.in, err, tc.want)
		}
	}
	if _, err := Parse([]byte(strings.Repeat(" ", MaxDescriptorSize+1))); err == nil || err.Error() != "QBM description file too big." {
		t.Errorf("too big: %v", err)
	}
}

func TestProbe(t *testing.T) {
	for in, want := range map[string]int{
		sample:                           100,
		"\n\t {\"a\": [1], \"QBM\": {}}": 100,
		`{"QBM": 1}`:                     0,
		`{"a": 1}`:                       0,
		`QFI`:                            0,
		``:                               0,
		`[{"QBM": {}}]`:                  0,
	} {
		if got := Probe([]byte(in)); got != want {
			t.Errorf("Probe(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestBitmapFileSize(t *testing.T) {
	for _, tc := range []struct {
		size int64
		g    uint64
		want int64
	}{{0, 512, 0}, {1, 512, 1}, {4096, 512, 1}, {4097, 512, 2}, {1 << 40, 65536, 2 << 20}, {1<<20 + 512, 65536, 3}} {
		if got := BitmapFileSize(tc.size, tc.g); got != tc.want {
			t.Errorf("BitmapFileSize(%d, %d) = %d, want %d", tc.size, tc.g, got, tc.want)
		}
	}
}

// FuzzParse: any input gives a descriptor or an error, never a panic, and
// a descriptor that parses survives Marshal and Parse unchanged.
func FuzzParse(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte(`{"QBM": {"version": 1, "image": {"file": "d", "format": "raw"}, "bitmaps": {}}}`))
	f.Add([]byte(`{"QBM": {"version": 1e400}}`))
	// The strict parser's refusals: duplicate keys and bitmaps, invalid
	// UTF-8, bad bitmap names.
	for _, tc := range strictCases(func(bitmaps string) string {
		return `{"QBM": {"version": 1, "image": {"file": "d.img", "format": "raw"}, "bitmaps": {` + bitmaps + `}}}`
	}, `"b": {"file": "b.bm", "type": "dirty", "granularity-bytes": 512`) {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		Probe(in)
		d, err := Parse(in)
		if err != nil {
			return
		}
		out, err := d.Marshal()
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		d2, err := Parse(out)
		if err != nil {
			t.Fatalf("reparse of %s: %v", out, err)
		}
		out2, err := d2.Marshal()
		if err != nil || string(out2) != string(out) {
			t.Fatalf("unstable: %s\n%s", out, out2)
		}
	})
}

// The parser is QEMU's (as the seed's qobject_from_json): a key given
// twice, a bitmap defined twice and invalid UTF-8 are refused, where a
// lenient parser took the last value ("in-use": true, "in-use": false
// loaded as not in use) or replaced bytes with U+FFFD.
func TestParseStrict(t *testing.T) {
	desc := func(bitmaps string) string {
		return `{"QBM": {"version": 1, "image": {"file": "d.img", "format": "raw"}, "bitmaps": {` + bitmaps + `}}}`
	}
	const b = `"b": {"file": "b.bm", "type": "dirty", "granularity-bytes": 512`
	for _, tc := range strictCases(desc, b) {
		_, err := Parse([]byte(tc.in))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q:\n got %v\nwant %s", tc.in, err, tc.want)
		}
	}
	// The same members once each parse.
	if _, err := Parse([]byte(desc(b + `, "in-use": true}`))); err != nil {
		t.Fatal(err)
	}
}

func strictCases(desc func(string) string, b string) []struct{ in, want string } {
	const dup = "Failed to parse json from file: JSON parse error, duplicate key "
	const utf8 = "Failed to parse json from file: JSON parse error, invalid UTF-8 sequence in string"
	return []struct{ in, want string }{
		{desc(b + `, "in-use": true, "in-use": false}`), dup + `"in-use" in "QBM"."bitmaps"."b"`},
		{desc(b + `, "in-use": false, "in-use": false}`), dup + `"in-use" in "QBM"."bitmaps"."b"`},
		{desc(b + `}, ` + b + `, "in-use": true}`), `Bitmap "b" is defined more than once in the QBM descriptor`},
		{desc(b + `, "x": [{"k": 1}, {"k": 2, "k": 3}]}`), dup + `"k" in "QBM"."bitmaps"."b"."x".[]`},
		{`{"QBM": {"version": 1, "version": 1, "image": {"file": "d.img", "format": "raw"}, "bitmaps": {}}}`, dup + `"version" in "QBM"`},
		{`{"QBM": {}, "QBM": {}}`, dup + `"QBM" at the top level`},
		{desc(`"b": {"file": "b` + "\xff\xfe" + `.bm", "type": "dirty", "granularity-bytes": 512}`),
			`Failed to parse json from file: JSON parse error, stray '"b\xff'`},
		{desc(`"b": {"file": "b` + "\xc3\x28" + `.bm", "type": "dirty", "granularity-bytes": 512}`), utf8},
		{desc(`"b` + "\xc3" + `": {"file": "b.bm", "type": "dirty", "granularity-bytes": 512}`), utf8},
		{desc(`"b": {"file": "b` + "\xed\xa0\x80" + `.bm", "type": "dirty", "granularity-bytes": 512}`), utf8},
		{desc(`"b": {"file": "b\udc00.bm", "type": "dirty", "granularity-bytes": 512}`),
			`Failed to parse json from file: JSON parse error, \udc00 is not a valid Unicode character`},
		{desc(`"": {"file": "b.bm", "type": "dirty", "granularity-bytes": 512}`), "Bitmap name cannot be empty"},
		{desc(`"` + strings.Repeat("n", 1024) + `": {"file": "b.bm", "type": "dirty", "granularity-bytes": 512}`), "Bitmap name is too long"},
	}
}
