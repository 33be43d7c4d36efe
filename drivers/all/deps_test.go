package all_test

import (
	"go/build"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/qbmond/qbmond"

// forbidden are the packages no driver may depend on, directly or through
// another package of the module: the dependency points the other way
// (jobs drive the block layer, and give a driver's create function what it
// needs through blockdev).
var forbidden = []string{module + "/jobs"}

// TestDriversDoNotImportJobs walks every package under drivers/, its tests
// included, and the module's packages they import in turn.
func TestDriversDoNotImportJobs(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	// path of an imported module package -> the driver package that
	// brought it in, for the message.
	via := map[string]string{}
	var queue []string
	err = filepath.WalkDir(filepath.Join(root, "drivers"), func(dir string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		if d.Name() == "testdata" {
			return filepath.SkipDir
		}
		p, err := build.ImportDir(dir, 0)
		if _, none := err.(*build.NoGoError); none {
			return nil
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, dir)
		self := module + "/" + filepath.ToSlash(rel)
		for _, imps := range [][]string{p.Imports, p.TestImports, p.XTestImports} {
			for _, imp := range imps {
				if _, seen := via[imp]; !seen && strings.HasPrefix(imp, module+"/") {
					via[imp] = self
					queue = append(queue, imp)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(via) == 0 {
		t.Fatal("found no imports under drivers/: the walk is broken")
	}
	for len(queue) > 0 {
		imp := queue[0]
		queue = queue[1:]
		p, err := build.ImportDir(filepath.Join(root, filepath.FromSlash(strings.TrimPrefix(imp, module+"/"))), 0)
		if err != nil {
			t.Fatalf("%s: %v", imp, err)
		}
		for _, next := range p.Imports {
			if _, seen := via[next]; !seen && strings.HasPrefix(next, module+"/") {
				via[next] = via[imp]
				queue = append(queue, next)
			}
		}
	}
	for _, f := range forbidden {
		if by, ok := via[f]; ok {
			t.Errorf("%s depends on %s; drivers must reach what they need through blockdev", by, f)
		}
	}
}
