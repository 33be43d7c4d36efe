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
// live in blockdev/blockqmp. A non-test file of package blockdev (under
// any build tag) importing qmp, schema or qapi fails.
func TestNoProtocolImports(t *testing.T) {
	forbidden := map[string]bool{
		"github.com/qbmond/qbmond/qmp":    true,
		"github.com/qbmond/qbmond/schema": true,
		"github.com/qbmond/qbmond/qapi":   true,
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
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
