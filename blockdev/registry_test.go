package blockdev_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
)

// testprobe is a Factory that is a Prober but not a Creator: it recognises
// files starting with "TPRB".
type testprobe struct{}

func (testprobe) New() blockdev.Driver { return new(testfmt) }

func (testprobe) Probe(head []byte) int {
	if strings.HasPrefix(string(head), "TPRB") {
		return 100
	}
	return 0
}

func init() { blockdev.Register("testprobe", testprobe{}) }

// TestRegisterFindsAbilities checks that one registration is enough: the
// registry finds probing and creation on the registered value.
func TestRegisterFindsAbilities(t *testing.T) {
	for name, want := range map[string]bool{"testcreate": true, "testprobe": false, "testfmt": false, "nosuch": false} {
		if got := blockdev.HasCreate(name); got != want {
			t.Errorf("HasCreate(%q) = %v, want %v", name, got, want)
		}
	}
	dir := t.TempDir()
	for content, want := range map[string]string{"TPRB and more": "testprobe", "TEST": "raw", "": "raw"} {
		path := filepath.Join(dir, "img")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if got, err := blockdev.ProbeFormat(path); err != nil || got != want {
			t.Errorf("ProbeFormat(%q) = %q, %v, want %q", content, got, err, want)
		}
	}
	names := strings.Join(blockdev.Drivers(), " ")
	for _, n := range []string{"testcreate", "testprobe", "testfmt"} {
		if !strings.Contains(" "+names+" ", " "+n+" ") {
			t.Errorf("Drivers() = %s, without %s", names, n)
		}
	}
}

func TestRegisterPanics(t *testing.T) {
	for what, f := range map[string]func(){
		"a taken name":  func() { blockdev.Register("testprobe", testprobe{}) },
		"a nil factory": func() { blockdev.Register("testnil", nil) },
		"a nil func":    func() { blockdev.RegisterDriver("testnil", nil) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Register with %s did not panic", what)
				}
			}()
			f()
		}()
	}
}
