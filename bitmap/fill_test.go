package bitmap

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

// Fill builds the same bitmap as UnmarshalBits from the same bytes, bits
// past the last granule dropped, and passes fill's error on.
func TestFillLikeUnmarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int64{0, 1, 65536, 65536*64 + 7, 65536 * 1000, 1 << 30} {
		for _, dense := range []bool{false, true} {
			b0, _ := New(size, 65536)
			data := make([]byte, (b0.nbits+7)/8)
			for i := range data {
				if dense || r.IntN(10) == 0 {
					data[i] = byte(r.Uint32())
				}
			}
			want, err := UnmarshalBits(size, 65536, data)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Fill(size, 65536, func(p []byte) error {
				if len(p) != len(data) {
					t.Fatalf("size %d: fill given %d bytes, want %d", size, len(p), len(data))
				}
				copy(p, data)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if got.Count() != want.Count() || got.SHA256() != want.SHA256() || !bytes.Equal(got.MarshalBits(), want.MarshalBits()) {
				t.Fatalf("size %d dense %v: Fill %d bits %s, UnmarshalBits %d bits %s", size, dense, got.Count(), got.SHA256(), want.Count(), want.SHA256())
			}
			if a, b := got.NextDirty(0, size), want.NextDirty(0, size); a != b {
				t.Fatalf("size %d: first dirty byte %d, want %d (summaries)", size, a, b)
			}
		}
	}
	boom := errors.New("boom")
	if _, err := Fill(1<<20, 65536, func([]byte) error { return boom }); err != boom {
		t.Fatalf("fill's error: %v", err)
	}
}
