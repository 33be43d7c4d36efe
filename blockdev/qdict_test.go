package blockdev

import (
	"slices"
	"testing"

	"github.com/qbmond/qbmond/internal/qjson"
)

// The buckets are QEMU's QDict ones; the transcript reopen-wording.txt
// checks against QSD that errors name options in this order.
func TestQdictOrder(t *testing.T) {
	for key, want := range map[string]uint32{
		"backing.driver": 85, "backing.node-name": 96, "node-name": 212, "driver": 239,
		"locking": 52, "filename": 313, "aio": 403, "backing.backing.file.node-name": 18,
	} {
		if got := qjson.Bucket(key); got != want {
			t.Errorf("bucket of %q = %d, want %d", key, got, want)
		}
	}
	got := qdictOrder([]string{"aio", "driver", "filename", "locking"})
	if want := []string{"locking", "driver", "filename", "aio"}; !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
}
