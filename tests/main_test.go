// Package tests holds qbmond's integration tests. They build the real
// qbmond binary, spawn it (and qemu-storage-daemon, the referee) and talk to
// them the way users do: raw QMP over sockets, go-qemu, socat, JSON-RPC.
package tests

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// qbmondBin is the binary under test, built once by TestMain (with the race
// detector when the tests run with it, so races in the real daemon fail the
// test run too).
var qbmondBin string

var keepTmp = flag.Bool("keep", false, "keep the build directory (debugging)")

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(mainWithBinary(m))
}

func mainWithBinary(m *testing.M) int {
	if b := os.Getenv("QBMOND_BIN"); b != "" {
		qbmondBin = b
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "qbmond-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if !*keepTmp {
		defer os.RemoveAll(dir)
	}
	qbmondBin = filepath.Join(dir, "qbmond")
	args := []string{"build", "-o", qbmondBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/qbmond/qbmond/cmd/qbmond")
	cmd := exec.Command("go", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "building qbmond: %v\n", err)
		return 1
	}
	return m.Run()
}

// requireTool fails the test when an external program the test needs is
// missing. It never skips: `make test` installs every tool, so a missing one
// is a broken environment, not a reason to pass.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (make test installs it: see Makefile 'deps')", name)
	}
	return p
}
