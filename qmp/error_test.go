package qmp

import (
	"encoding/json"
	"fmt"
	"testing"
)

type hinted struct{}

func (hinted) Error() string { return `Failed to get "write" lock` }
func (hinted) Hint() string  { return "Is another process using the image [x]?" }

// A hint travels with the error for the command line and never reaches
// the wire.
func TestAsErrorHint(t *testing.T) {
	e := AsError(fmt.Errorf("wrapped: %w", hinted{}))
	if e.Class != ClassGeneric || e.Desc != `wrapped: Failed to get "write" lock` || e.Hint != "Is another process using the image [x]?" {
		t.Fatalf("%+v", e)
	}
	b, _ := json.Marshal(e)
	if string(b) != `{"class":"GenericError","desc":"wrapped: Failed to get \"write\" lock"}` {
		t.Fatalf("on the wire: %s", b)
	}
}
