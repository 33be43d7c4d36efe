// Command qapigen writes the Go types of the embedded QAPI schema (package
// qapi's types_gen.go). It runs through go generate in qapi/.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/qbmond/qbmond/schema"
)

func main() {
	out := flag.String("o", "types_gen.go", "file to write")
	pkg := flag.String("pkg", "qapi", "package name of the generated file")
	flag.Parse()
	if err := run(*out, *pkg); err != nil {
		fmt.Fprintln(os.Stderr, "qapigen:", err)
		os.Exit(1)
	}
}

func run(out, pkg string) error {
	s, err := schema.Load()
	if err != nil {
		return err
	}
	src, err := s.GoTypes(pkg)
	if err != nil {
		return err
	}
	return os.WriteFile(out, src, 0o644)
}
