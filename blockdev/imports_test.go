package blockdev_test

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The core graph package knows nothing of the monitor: its QMP handlers
// live in blockdev/blockqmp. A non-test file of package blockdev, or of
// the packages split from it (chain, blockcopy, dirty, internal/iopath),
// under any build tag, importing qmp, schema or qapi fails. (That dirty
// and internal/iopath, which blockdev imports, do not import blockdev
// back the compiler checks: it would be a cycle.)
func TestNoProtocolImports(t *testing.T) {
	forbidden := map[string]bool{
		"github.com/qbmond/qbmond/qmp":    true,
		"github.com/qbmond/qbmond/schema": true,
		"github.com/qbmond/qbmond/qapi":   true,
	}
	var files []string
	for _, dir := range []string{".", "chain", "blockcopy", "dirty", "internal/iopath"} {
		m, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		if len(m) == 0 {
			t.Fatalf("no source files in %s", dir)
		}
		files = append(files, m...)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, imp := range f.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				t.Fatal(err)
			}
			if forbidden[path] || strings.HasPrefix(path, "github.com/qbmond/qbmond/qmp/") ||
				strings.HasPrefix(path, "github.com/qbmond/qbmond/schema/") {
				t.Errorf("%s imports %s: protocol glue belongs in blockdev/blockqmp", name, path)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no source files found")
	}
}
