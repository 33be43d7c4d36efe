package tests

// Hardening of the qbm driver against descriptors and directories that a
// hostile or unlucky user prepared (issue 12, section 6). QSD has no QBM
// driver, so there is no referee to compare with: these tests check
// qbmond's own behaviour through the real daemon, the rules being those
// of drivers/qbm (package documentation) and the README's QBM section.

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func qbmhAdd(name, desc string) map[string]any {
	return map[string]any{"driver": "qbm", "node-name": name,
		"file": map[string]any{"driver": "file", "filename": desc}}
}

// qbmhRefused writes each case's descriptor to dir/bad.qbm in turn and
// checks that blockdev-add refuses it with the error it wants.
func qbmhRefused(t *testing.T, c *client, dir string, cases []struct{ desc, want string }) {
	t.Helper()
	for i, tc := range cases {
		p := filepath.Join(dir, "bad.qbm")
		if err := os.WriteFile(p, []byte(tc.desc), 0o644); err != nil {
			t.Fatal(err)
		}
		_, desc := c.fail("blockdev-add", qbmhAdd("b"+string(rune('0'+i)), p))
		if desc != tc.want {
			t.Errorf("case %d: got %q\nwant %q", i, desc, tc.want)
		}
	}
}

// A descriptor opened through a symbolic link, written to, and the daemon
// killed: the real descriptor was marked in use, so the bitmap loads as
// inconsistent (never as a clean bitmap missing the writes), through the
// link and through the real name, and the link is still a link.
func TestQbmDescriptorThroughSymlinkKill(t *testing.T) {
	dir := shortTempDir(t)
	d := startDaemon(t, kindQbmond, dir)
	c := d.connect()
	desc := qbmCreate(t, c, dir, map[string]any{"size": 4<<20 + 1536, "dirty-bitmaps": 1})
	link := filepath.Join(dir, "link.qbm")
	if err := os.Symlink("disk.qbm", link); err != nil {
		t.Fatal(err)
	}
	uri := qbmExport(t, c, dir, link, nil)
	qemuIO(t, uri, bitmapWorkload)
	if bms := nodeBitmaps(t, c, "n0"); len(bms) != 1 || bms[0]["count"] == float64(0) {
		t.Fatalf("bitmaps before the kill: %v", bms)
	}
	d.kill()
	d = startDaemon(t, kindQbmond, dir)
	c = d.connect()
	for i, p := range []string{desc, link} {
		if i == 1 {
			if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
				t.Fatalf("link.qbm is no longer a symbolic link: %v", err)
			}
		}
		node := "r" + string(rune('0'+i))
		c.ok("blockdev-add", qbmhAdd(node, p))
		bms := nodeBitmaps(t, c, node)
		if len(bms) != 1 || bms[0]["name"] != "dirty.0" || bms[0]["inconsistent"] != true {
			t.Fatalf("bitmap after kill -9, opened as %s: %v", p, bms)
		}
		c.ok("blockdev-del", map[string]any{"node-name": node})
	}
}

// A symbolic link planted where the old code put its temporary
// descriptor (DESC.tmp) is not followed: the file it points at keeps its
// contents through every rewrite, and no temporary file is left.
func TestQbmDescriptorTmpLinkNotFollowed(t *testing.T) {
	dir := shortTempDir(t)
	d := startDaemon(t, kindQbmond, dir)
	c := d.connect()
	desc := qbmCreate(t, c, dir, map[string]any{"size": 1 << 20, "dirty-bitmaps": 1})
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, desc+".tmp"); err != nil {
		t.Fatal(err)
	}
	c.ok("blockdev-add", qbmhAdd("n0", desc)) // marks dirty.0 in use
	c.ok("block-dirty-bitmap-add", map[string]any{"node": "n0", "name": "b1", "persistent": true})
	c.ok("block-dirty-bitmap-disable", map[string]any{"node": "n0", "name": "b1"})
	c.ok("block-dirty-bitmap-remove", map[string]any{"node": "n0", "name": "b1"})
	d.stop()
	if b, _ := os.ReadFile(victim); string(b) != "precious data" {
		t.Fatalf("the file behind the planted link changed: %q", b)
	}
	if fi, err := os.Lstat(desc + ".tmp"); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the planted link was replaced: %v", err)
	}
	left, _ := filepath.Glob(desc + ".tmp.*")
	if len(left) != 0 {
		t.Fatalf("temporary descriptors left: %v", left)
	}
	if b, _ := os.ReadFile(desc); !strings.Contains(string(b), `"dirty.0"`) || strings.Contains(string(b), `"b1"`) {
		t.Fatalf("descriptor after the rewrites:\n%s", b)
	}
}

// Bitmap files that would overwrite something else at close are refused
// by blockdev-add: the image (by name or a hard link), another bitmap's
// file, a file outside the descriptor's directory. The image keeps its
// data (the old code wrote the bitmap over its first bytes at close).
func TestQbmBitmapFileRules(t *testing.T) {
	dir := shortTempDir(t)
	other := shortTempDir(t)
	img := bytes.Repeat([]byte{0xa5}, 1<<20)
	for name, data := range map[string][]byte{
		filepath.Join(dir, "img.raw"):     img,
		filepath.Join(dir, "ok.bitmap"):   make([]byte, 16),
		filepath.Join(other, "x.bitmap"):  make([]byte, 16),
		filepath.Join(dir, "ok2.bitmap"):  make([]byte, 16),
		filepath.Join(dir, "good.bitmap"): make([]byte, 16),
	} {
		if err := os.WriteFile(name, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(dir, "img.raw"), filepath.Join(dir, "img-link.bitmap")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(other, "x.bitmap"), filepath.Join(dir, "out.bitmap")); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, kindQbmond, dir)
	c := d.connect()
	entry := func(file string) string {
		return `{"file": "` + file + `", "type": "dirty", "granularity-bytes": 65536}`
	}
	descr := func(bitmaps string) string {
		return `{"QBM": {"version": 1, "image": {"file": "img.raw", "format": "raw"}, "bitmaps": {` + bitmaps + `}}}`
	}
	outside := func(name string) string {
		return `Bitmap "b" file must be a regular file inside the QBM descriptor's directory ` + dir +
			` (no "..", absolute name or symbolic link leading out of it): ` + name
	}
	cases := []struct{ desc, want string }{
		{descr(`"b": ` + entry("img.raw")), `Bitmap "b" file is also a file of the data image: ` + filepath.Join(dir, "img.raw")},
		{descr(`"b": ` + entry("img-link.bitmap")), `Bitmap "b" file is also a file of the data image: ` + filepath.Join(dir, "img-link.bitmap")},
		{descr(`"a": ` + entry("ok.bitmap") + `, "b": ` + entry("ok.bitmap")), `Bitmap "b" file is also the file of bitmap "a": ` + filepath.Join(dir, "ok.bitmap")},
		{descr(`"b": ` + entry("bad.qbm")), `QBM descriptor names itself as the file of bitmap "b": ` + filepath.Join(dir, "bad.qbm")},
		{descr(`"b": ` + entry("../"+filepath.Base(other)+"/x.bitmap")), outside("../" + filepath.Base(other) + "/x.bitmap")},
		{descr(`"b": ` + entry(filepath.Join(other, "x.bitmap"))), outside(filepath.Join(other, "x.bitmap"))},
		{descr(`"b": ` + entry("out.bitmap")), outside("out.bitmap")},
	}
	qbmhRefused(t, c, dir, cases)
	// Inside the directory, by relative or absolute name: accepted.
	good := filepath.Join(dir, "good.qbm")
	if err := os.WriteFile(good, []byte(descr(`"a": `+entry("ok2.bitmap")+`, "b": `+entry(filepath.Join(dir, "good.bitmap")))), 0o644); err != nil {
		t.Fatal(err)
	}
	c.ok("blockdev-add", qbmhAdd("g0", good))
	c.ok("blockdev-del", map[string]any{"node-name": "g0"})
	d.stop()
	if b, _ := os.ReadFile(filepath.Join(dir, "img.raw")); !bytes.Equal(b, img) {
		t.Fatal("the image changed")
	}
	if b, _ := os.ReadFile(filepath.Join(other, "x.bitmap")); !bytes.Equal(b, make([]byte, 16)) {
		t.Fatal("the file outside the directory changed")
	}
}

// The descriptor parser refuses what a lenient JSON parser took silently:
// a key given twice ("in-use": true then false loaded as not in use), a
// bitmap defined twice, invalid UTF-8.
func TestQbmStrictDescriptor(t *testing.T) {
	dir := shortTempDir(t)
	if err := os.WriteFile(filepath.Join(dir, "img.raw"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "b.bitmap"), make([]byte, 16), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, kindQbmond, dir)
	c := d.connect()
	const b = `"b": {"file": "b.bitmap", "type": "dirty", "granularity-bytes": 65536`
	descr := func(bitmaps string) string {
		return `{"QBM": {"version": 1, "image": {"file": "img.raw", "format": "raw"}, "bitmaps": {` + bitmaps + `}}}`
	}
	cases := []struct{ desc, want string }{
		{descr(b + `, "in-use": true, "in-use": false}`),
			`Failed to parse json from file: JSON parse error, duplicate key "in-use" in "QBM"."bitmaps"."b"`},
		{descr(b + `}, ` + b + `}`), `Bitmap "b" is defined more than once in the QBM descriptor`},
		{descr(`"b": {"file": "b` + "\xc3\x28" + `.bitmap", "type": "dirty", "granularity-bytes": 65536}`),
			"Failed to parse json from file: JSON parse error, invalid UTF-8 sequence in string"},
	}
	qbmhRefused(t, c, dir, cases)
	// Each member once: the bitmap loads, in use, hence inconsistent.
	p := filepath.Join(dir, "good.qbm")
	if err := os.WriteFile(p, []byte(descr(b+`, "in-use": true}`)), 0o644); err != nil {
		t.Fatal(err)
	}
	c.ok("blockdev-add", qbmhAdd("g0", p))
	if bms := nodeBitmaps(t, c, "g0"); len(bms) != 1 || bms[0]["inconsistent"] != true {
		t.Fatalf("bitmap loaded in use: %v", bms)
	}
}
