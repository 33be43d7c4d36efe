// Package qbm implements the QBM format: dirty bitmaps, and optionally an
// allocation bitmap with a backing image, kept beside an image of any
// format and described by a JSON descriptor (docs: QBM.md of the project).
//
// Beyond QBM.md, qbmond holds descriptors to these rules (files.go):
//
//   - The descriptor is read with QEMU's JSON parser: a key given twice in
//     one object, a bitmap defined twice and invalid UTF-8 are refused.
//   - A bitmap file must be a regular file inside the descriptor's
//     directory tree: no "..", absolute name or symbolic link leading out
//     of it. It may not be the descriptor, a file of the image or of the
//     backing chain, or another bitmap's file (compared by device and
//     inode). The image and the backing file are opened as QEMU opens a
//     qcow2 backing file: relative to the descriptor, or absolute.
//   - A rewrite replaces the descriptor's real file (symbolic links
//     resolved when the node opens) with a temporary file created
//     exclusively beside it, DESC.tmp.RANDOM, never through a link.
package qbm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/qbmond/qbmond/qmp"
)

// MaxDescriptorSize is the largest descriptor qbmond reads.
const MaxDescriptorSize = 32 << 20

// Bitmap types.
const (
	TypeDirty      = "dirty"
	TypeAllocation = "allocation"
)

// maxBitmapName is QEMU's limit on dirty bitmap names, in bytes.
const maxBitmapName = 1023

// MinGranularity and MaxGranularity bound granularity-bytes.
const (
	MinGranularity = 512
	MaxGranularity = 1 << 31
)

// FileRef names a file and the format driver that reads it (the image, a
// backing image).
type FileRef struct {
	File   string
	Format string
}

// Descriptor is a parsed QBM descriptor. Unknown keys, at every level, are
// kept and written back by Marshal.
type Descriptor struct {
	Version int
	Creator string
	Image   FileRef
	// Bitmaps in name order.
	Bitmaps []*BitmapEntry

	top      map[string]any // members of the top-level object besides "QBM"
	extra    map[string]any // members of "QBM" qbmond does not know
	imgExtra map[string]any // members of "image" besides file and format
}

// BitmapEntry is one member of "bitmaps".
type BitmapEntry struct {
	Name        string
	File        string
	Type        string // TypeDirty or TypeAllocation
	Granularity uint64
	// Backing is the backing image of an allocation bitmap (nil: none).
	Backing *FileRef
	// Enabled: a dirty bitmap records writes (default true).
	Enabled bool
	// InUse: the bitmap was open read-write and not saved since (see
	// Crash safety in QBM.md).
	InUse bool
	// SHA256 of the bitmap file's significant bytes at the last clean
	// close; "" when absent.
	SHA256 string

	extra       map[string]any // unknown members of the entry
	backingXtra map[string]any // unknown members of "backing"
}

// Allocation returns the allocation bitmap entry, or nil.
func (d *Descriptor) Allocation() *BitmapEntry {
	for _, b := range d.Bitmaps {
		if b.Type == TypeAllocation {
			return b
		}
	}
	return nil
}

// Bitmap returns the entry called name, or nil.
func (d *Descriptor) Bitmap(name string) *BitmapEntry {
	for _, b := range d.Bitmaps {
		if b.Name == name {
			return b
		}
	}
	return nil
}

// AddBitmap adds an entry, keeping name order; the name must be new.
func (d *Descriptor) AddBitmap(b *BitmapEntry) {
	d.Bitmaps = append(d.Bitmaps, b)
	sort.Slice(d.Bitmaps, func(i, j int) bool { return d.Bitmaps[i].Name < d.Bitmaps[j].Name })
}

// RemoveBitmap drops the entry called name.
func (d *Descriptor) RemoveBitmap(name string) {
	for i, b := range d.Bitmaps {
		if b.Name == name {
			d.Bitmaps = append(d.Bitmaps[:i], d.Bitmaps[i+1:]...)
			return
		}
	}
}

// Probe scores a file's first bytes: 100 when, after leading whitespace,
// they open a JSON object whose members include a "QBM" object. Only the
// bytes given are looked at, so a descriptor whose "QBM" member comes
// after a long first member is not recognised by content.
func Probe(head []byte) int {
	dec := json.NewDecoder(bytes.NewReader(head))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return 0
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return 0
		}
		if key == "QBM" {
			tok, err := dec.Token()
			if err == nil && tok == json.Delim('{') {
				return 100
			}
			return 0
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return 0
		}
	}
	return 0
}

// Parse reads a descriptor. Its errors name the key and the problem.
func Parse(data []byte) (*Descriptor, error) {
	switch {
	case len(data) > MaxDescriptorSize:
		return nil, errors.New("QBM description file too big.")
	case len(bytes.TrimSpace(data)) == 0:
		return nil, errors.New("Empty file")
	}
	// QEMU's JSON parser, as the seed's qobject_from_json: it refuses
	// duplicate keys (encoding/json would keep the last one, so that
	// "in-use": true, "in-use": false loaded as not in use) and invalid
	// UTF-8 (which encoding/json would turn into U+FFFD).
	parsed, err := parseJSON(data)
	if err != nil {
		if strings.Contains(err.Error(), "duplicate key") {
			if dup := duplicateKey(data); dup != "" {
				return nil, errors.New(dup)
			}
		}
		return nil, fmt.Errorf("Failed to parse json from file: %s", printable(err.Error()))
	}
	top, ok := parsed.(map[string]any)
	if !ok {
		return nil, errors.New("Failed to parse json from file: the top level is not an object")
	}
	rawQBM, ok := top["QBM"]
	if !ok {
		return nil, errors.New(`Json doesn't have key "QBM"`)
	}
	q, ok := rawQBM.(map[string]any)
	if !ok {
		return nil, errors.New(`"QBM" must be an object`)
	}
	d := &Descriptor{top: without(top, "QBM"), extra: without(q, "version", "creator", "image", "bitmaps")}

	v, ok := q["version"]
	if !ok {
		return nil, errors.New(`Key "version" not found in QBM descriptor`)
	}
	if n, ok := v.(json.Number); !ok || n.String() != "1" {
		return nil, fmt.Errorf("Invalid version of QBM descriptor: %s", jsonText(v))
	}
	d.Version = 1
	if c, ok := q["creator"]; ok {
		s, ok := c.(string)
		if !ok {
			return nil, errors.New(`"creator" must be a string`)
		}
		d.Creator = s
	}

	img, ok := q["image"]
	if !ok {
		return nil, errors.New(`Key "image" not found in QBM descriptor`)
	}
	im, ok := img.(map[string]any)
	if !ok {
		return nil, errors.New(`"image" information invalid`)
	}
	if d.Image, err = fileRef(im, "Image", true); err != nil {
		return nil, err
	}
	d.imgExtra = without(im, "file", "format")

	bm, ok := q["bitmaps"]
	if !ok {
		return nil, errors.New(`"bitmaps" not found`)
	}
	bitmaps, ok := bm.(map[string]any)
	if !ok {
		return nil, errors.New(`"bitmaps" must be an object`)
	}
	names := make([]string, 0, len(bitmaps))
	for name := range bitmaps {
		names = append(names, name)
	}
	sort.Strings(names)
	haveAlloc := false
	for _, name := range names {
		e, err := parseEntry(name, bitmaps[name])
		if err != nil {
			return nil, err
		}
		if e.Type == TypeAllocation {
			if haveAlloc {
				return nil, errors.New("Multiple allocation bitmaps are not supported")
			}
			haveAlloc = true
		} else if e.Backing != nil {
			return nil, fmt.Errorf(`"backing" is only allowed in the allocation bitmap, not in bitmap "%s"`, name)
		}
		d.Bitmaps = append(d.Bitmaps, e)
	}
	return d, nil
}

// parseJSON reads exactly one value with QMP's reader (QEMU's parser),
// reporting the first error in the text.
func parseJSON(data []byte) (any, error) {
	dec := qmp.NewDecoder(bytes.NewReader(data))
	v, err := dec.Next()
	if err == io.EOF {
		return nil, errors.New("JSON parse error, premature EOI")
	} else if err != nil {
		return nil, err
	}
	if _, err := dec.Next(); err == io.EOF {
		return v, nil
	} else if qmp.IsParseError(err) {
		return nil, err
	}
	return nil, errors.New("JSON parse error, more than one value")
}

// printable shows the bytes of s that are not UTF-8 as \xNN (the
// parser's errors quote the input).
func printable(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n <= 1 {
			fmt.Fprintf(&b, "\\x%02x", s[i])
			i++
			continue
		}
		b.WriteString(s[i : i+n])
		i += n
	}
	return b.String()
}

// duplicateKey finds the first key that appears twice in one object of
// data (which QEMU's parser refused) and describes it with its place; ""
// when there is none or data is not plain JSON.
func duplicateKey(data []byte) string {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	type level struct {
		keys   map[string]bool // nil for an array
		key    string          // the member being read, for objects
		expect bool            // objects: the next token is a key
	}
	var stack []*level
	var path []string
	for {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		var top *level
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.keys != nil && top.expect {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				if len(path) > 0 {
					path = path[:len(path)-1]
				}
				continue
			}
			k, _ := tok.(string)
			if top.keys[k] {
				return describeDuplicate(path[1:], k)
			}
			top.keys[k], top.key, top.expect = true, k, false
			continue
		}
		// A value: of the current object member, or an array element.
		if top != nil && top.keys != nil {
			top.expect = true
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			l := &level{expect: true}
			if tok == json.Delim('{') {
				l.keys = map[string]bool{}
			}
			seg := ""
			if top != nil {
				seg = top.key
				if top.keys == nil {
					seg = "[]"
				}
			}
			stack, path = append(stack, l), append(path, seg)
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
			path = path[:len(path)-1]
		}
	}
}

// describeDuplicate words a duplicate key found at path (the keys leading
// to its object, "[]" for an array element).
func describeDuplicate(path []string, key string) string {
	if len(path) == 2 && path[0] == "QBM" && path[1] == "bitmaps" {
		return fmt.Sprintf("Bitmap \"%s\" is defined more than once in the QBM descriptor", key)
	}
	where := "at the top level"
	if len(path) > 0 {
		quoted := make([]string, len(path))
		for i, p := range path {
			quoted[i] = p
			if p != "[]" {
				quoted[i] = `"` + p + `"`
			}
		}
		where = "in " + strings.Join(quoted, ".")
	}
	return fmt.Sprintf("Failed to parse json from file: JSON parse error, duplicate key \"%s\" %s", key, where)
}

func parseEntry(name string, v any) (*BitmapEntry, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf(`"%s" is not a dictionary`, name)
	}
	e := &BitmapEntry{Name: name, Enabled: true,
		extra: without(m, "file", "type", "granularity-bytes", "backing", "enabled", "in-use", "sha256")}
	var err error
	if e.File, err = stringMember(m, "file", name, true); err != nil {
		return nil, err
	}
	if e.Type, err = stringMember(m, "type", name, true); err != nil {
		return nil, err
	}
	if e.Type != TypeDirty && e.Type != TypeAllocation {
		return nil, fmt.Errorf(`"type" of bitmap "%s" must be "dirty" or "allocation", not "%s"`, name, e.Type)
	}
	if e.Type == TypeDirty && name == "" {
		return nil, errors.New("Bitmap name cannot be empty")
	}
	if e.Type == TypeDirty && len(name) > maxBitmapName {
		return nil, errors.New("Bitmap name is too long")
	}
	g, ok := m["granularity-bytes"]
	if !ok {
		return nil, fmt.Errorf(`"granularity-bytes" is missing in bitmap "%s"`, name)
	}
	gn, ok := g.(json.Number)
	if !ok {
		return nil, fmt.Errorf(`"granularity-bytes" of bitmap "%s" must be an integer`, name)
	}
	gi, err := gn.Int64()
	if err != nil || gi <= 0 {
		return nil, fmt.Errorf(`"granularity-bytes" of bitmap "%s" must be a positive integer`, name)
	}
	if gi&(gi-1) != 0 {
		return nil, errors.New(`"granularity-bytes" must be a power of two`)
	}
	if gi < MinGranularity {
		return nil, errors.New(`"granularity-bytes" too small`)
	}
	if gi > MaxGranularity {
		return nil, errors.New(`"granularity-bytes" too big`)
	}
	e.Granularity = uint64(gi)
	if b, ok := m["backing"]; ok {
		if e.Type != TypeAllocation {
			return nil, fmt.Errorf(`"backing" is only allowed in the allocation bitmap, not in bitmap "%s"`, name)
		}
		bm, ok := b.(map[string]any)
		if !ok {
			return nil, fmt.Errorf(`"backing" of bitmap "%s" must be an object`, name)
		}
		f, ok := bm["file"].(string)
		if !ok || f == "" {
			return nil, errors.New("Backing file name not specified")
		}
		ref := FileRef{File: f}
		if fv, ok := bm["format"]; ok {
			if ref.Format, ok = fv.(string); !ok {
				return nil, fmt.Errorf(`"format" of the backing of bitmap "%s" must be a string`, name)
			}
		}
		if err := checkPath(ref.File); err != nil {
			return nil, err
		}
		e.Backing = &ref
		e.backingXtra = without(bm, "file", "format")
	}
	if e.Enabled, err = boolMember(m, "enabled", name, true); err != nil {
		return nil, err
	}
	if e.InUse, err = boolMember(m, "in-use", name, false); err != nil {
		return nil, err
	}
	if e.SHA256, err = stringMember(m, "sha256", name, false); err != nil {
		return nil, err
	}
	if e.SHA256 != "" && !isHex64(e.SHA256) {
		return nil, fmt.Errorf(`"sha256" of bitmap "%s" must be 64 hexadecimal digits`, name)
	}
	return e, checkPath(e.File)
}

func fileRef(m map[string]any, what string, formatRequired bool) (FileRef, error) {
	var r FileRef
	f, ok := m["file"]
	if !ok {
		return r, fmt.Errorf("%s missing 'file' field", what)
	}
	if r.File, ok = f.(string); !ok || r.File == "" {
		return r, fmt.Errorf("%s 'file' field must be a non-empty string", what)
	}
	fm, ok := m["format"]
	if !ok {
		if formatRequired {
			return r, fmt.Errorf("%s missing 'format' field", what)
		}
		return r, checkPath(r.File)
	}
	if r.Format, ok = fm.(string); !ok || r.Format == "" {
		return r, fmt.Errorf("%s 'format' field must be a non-empty string", what)
	}
	return r, checkPath(r.File)
}

// checkPath refuses file names with a protocol prefix.
func checkPath(p string) error {
	if i := strings.IndexByte(p, ':'); i > 0 && !strings.ContainsRune(p[:i], '/') {
		return fmt.Errorf("Protocol file names are not supported in QBM descriptors: \"%s\"", p)
	}
	return nil
}

func stringMember(m map[string]any, key, bitmap string, required bool) (string, error) {
	v, ok := m[key]
	if !ok {
		if required {
			return "", fmt.Errorf(`"%s" is missing in bitmap "%s"`, key, bitmap)
		}
		return "", nil
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf(`"%s" of bitmap "%s" must be a string`, key, bitmap)
	}
	if required && s == "" {
		return "", fmt.Errorf(`"%s" of bitmap "%s" must not be empty`, key, bitmap)
	}
	return s, nil
}

func boolMember(m map[string]any, key, bitmap string, def bool) (bool, error) {
	v, ok := m[key]
	if !ok {
		return def, nil
	}
	b, ok := v.(bool)
	if !ok {
		return false, fmt.Errorf(`"%s" of bitmap "%s" must be a boolean`, key, bitmap)
	}
	return b, nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func without(m map[string]any, keys ...string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	for _, k := range keys {
		delete(out, k)
	}
	return out
}

func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// Marshal renders the descriptor as indented JSON, unknown members kept.
func (d *Descriptor) Marshal() ([]byte, error) {
	q := without(d.extra)
	q["version"] = d.Version
	if d.Creator != "" {
		q["creator"] = d.Creator
	}
	img := without(d.imgExtra)
	img["file"], img["format"] = d.Image.File, d.Image.Format
	q["image"] = img
	bitmaps := map[string]any{}
	for _, b := range d.Bitmaps {
		e := without(b.extra)
		e["file"], e["type"], e["granularity-bytes"] = b.File, b.Type, b.Granularity
		if b.Backing != nil {
			bk := without(b.backingXtra)
			bk["file"] = b.Backing.File
			if b.Backing.Format != "" {
				bk["format"] = b.Backing.Format
			}
			e["backing"] = bk
		}
		if b.Type == TypeDirty {
			e["enabled"], e["in-use"] = b.Enabled, b.InUse
		}
		if b.SHA256 != "" {
			e["sha256"] = b.SHA256
		}
		bitmaps[b.Name] = e
	}
	q["bitmaps"] = bitmaps
	top := without(d.top)
	top["QBM"] = q
	out, err := json.MarshalIndent(top, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// BitmapFileSize is the least size of a bitmap file for an image of size
// bytes: one bit per granule, rounded up to whole bytes.
func BitmapFileSize(size int64, granularity uint64) int64 {
	if size <= 0 {
		return 0
	}
	granules := (uint64(size) + granularity - 1) / granularity
	if granules > math.MaxInt64/8 {
		return math.MaxInt64
	}
	return int64((granules + 7) / 8)
}
