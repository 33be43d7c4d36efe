package blockdev_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
)

// notDriverAbilities are the package's interfaces that are not part of the
// driver contract: what a node's users implement.
var notDriverAbilities = map[string]bool{
	"DrainNotifier": true, // a block job on an edge
	"TxAction":      true, // a prepared transaction action
}

// TestContractInOneFile keeps the driver contract in contract.go: every
// interface of the package that a driver may implement is declared there
// with a doc comment, and the Driver doc names each of them.
func TestContractInOneFile(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var driverDoc string
	abilities := map[string]bool{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, spec := range gd.Specs {
				ts := spec.(*ast.TypeSpec)
				if _, ok := ts.Type.(*ast.InterfaceType); !ok || !ts.Name.IsExported() || notDriverAbilities[ts.Name.Name] {
					continue
				}
				if name != "contract.go" {
					t.Errorf("%s: interface %s is declared outside contract.go (a driver ability belongs there; anything else goes in notDriverAbilities)", name, ts.Name.Name)
					continue
				}
				doc := gd.Doc
				if ts.Doc != nil {
					doc = ts.Doc
				}
				if doc == nil || !strings.HasPrefix(doc.Text(), ts.Name.Name+" ") {
					t.Errorf("contract.go: %s has no doc comment saying what it is", ts.Name.Name)
				}
				if ts.Name.Name == "Driver" {
					driverDoc = doc.Text()
					continue
				}
				abilities[ts.Name.Name] = true
			}
		}
	}
	if driverDoc == "" {
		t.Fatal("contract.go does not declare Driver")
	}
	listed := map[string]bool{}
	for _, w := range strings.FieldsFunc(driverDoc, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) }) {
		listed[w] = true
	}
	for name := range abilities {
		if !listed[name] {
			t.Errorf("the Driver doc does not list %s", name)
		}
	}
}
