package blockdev_test

import (
	"encoding/json"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGraphLockByType shows that the graph lock cannot be taken, or
// forgotten, outside Graph.Do: a package that calls g.Lock, or an
// operation that needs the lock without the *Locked Do hands out, does
// not compile. Each snippet is added to the module as a package of its
// own through a build overlay (nothing is written into the tree) and
// built with the go command; the first one, the right way, must build.
func TestGraphLockByType(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	gobin, err := osexec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	dir, err := filepath.Abs("locksnippet_overlay")
	if err != nil {
		t.Fatal(err)
	}
	const header = "package locksnippet\n\nimport (\n\t\"context\"\n\n\t\"github.com/qbmond/qbmond/blockdev\"\n\t\"github.com/qbmond/qbmond/blockdev/chain\"\n)\n\nvar _, _ = context.Background, chain.InChain\n\n"
	cases := []struct {
		name, body, want string // want "" : it compiles
	}{
		{"Do", `func f(g *blockdev.Graph) error {
	return g.Do(func(lk *blockdev.Locked) error {
		_, err := lk.Add(context.Background(), blockdev.Options{"driver": "null-co", "node-name": "n"})
		return err
	})
}`, ""},
		{"Lock", `func f(g *blockdev.Graph) { g.Lock(); defer g.Unlock() }`,
			"g.Lock undefined"},
		{"AddWithoutLock", `func f(g *blockdev.Graph) { g.Add(context.Background(), nil) }`,
			"g.Add undefined"},
		{"LookupWithoutLock", `func f(g *blockdev.Graph) *blockdev.Node { return g.Lookup("n") }`,
			"g.Lookup undefined"},
		{"BitmapWithoutLock", `func f(n *blockdev.Node) { n.AddDirtyBitmap("b", blockdev.BitmapOptions{}) }`,
			"not enough arguments in call to n.AddDirtyBitmap"},
		{"ChainOpUnderLock", `func f(g *blockdev.Graph, a, t, b *blockdev.Node) error {
	return g.Do(func(lk *blockdev.Locked) error { return chain.DropIntermediate(context.Background(), lk, a, t, b, "") })
}`, ""},
		{"ChainOpWithoutLock", `func f(a, t, b *blockdev.Node) error { return chain.DropIntermediate(context.Background(), a, t, b, "") }`,
			"not enough arguments in call to chain.DropIntermediate"},
		{"BitmapStateWithoutLock", `func f(b *blockdev.DirtyBitmap) { b.st.Abdicate() }`,
			"b.st undefined"},
		{"ForgedLocked", `func f(g *blockdev.Graph) blockdev.Locked { return blockdev.Locked{g: g} }`,
			"cannot refer to unexported field g"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tmp := t.TempDir()
			src := filepath.Join(tmp, "snippet.go")
			if err := os.WriteFile(src, []byte(header+c.body+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			ov, _ := json.Marshal(map[string]any{"Replace": map[string]string{
				filepath.Join(dir, c.name, "snippet.go"): src,
			}})
			ovFile := filepath.Join(tmp, "overlay.json")
			if err := os.WriteFile(ovFile, ov, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := osexec.Command(gobin, "build", "-overlay", ovFile, "./"+filepath.Base(dir)+"/"+c.name)
			cmd.Dir = filepath.Dir(dir)
			out, err := cmd.CombinedOutput()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("the right way does not build: %v\n%s", err, out)
			case c.want != "" && err == nil:
				t.Fatalf("built, want a compile error %q", c.want)
			case c.want != "" && !strings.Contains(string(out), c.want):
				t.Fatalf("compile error %q, want %q", out, c.want)
			}
		})
	}
}
