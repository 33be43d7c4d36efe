package dirty

import (
	"slices"
	"testing"

	"github.com/qbmond/qbmond/bitmap"
)

func newBits(t *testing.T) *bitmap.Bitmap {
	t.Helper()
	b, err := bitmap.New(1<<20, 65536)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func names(s *Set[string]) []string {
	var out []string
	for _, e := range s.Load() {
		out = append(out, e.H)
	}
	return out
}

// The set lists newest first; Mark reaches recording bitmaps and their
// shadows only; Move puts a bitmap where another is.
func TestSetMarkAndOrder(t *testing.T) {
	var s Set[string]
	a, b, c := New(newBits(t), true), New(newBits(t), false), New(newBits(t), true)
	s.Insert(a, "a")
	s.Insert(b, "b")
	s.Insert(c, "c")
	if got := names(&s); !slices.Equal(got, []string{"c", "b", "a"}) {
		t.Fatalf("order %v", got)
	}
	shadow, own := a.StartShadow()
	if !own {
		t.Fatal("first shadow not own")
	}
	if again, own := a.StartShadow(); own || again != shadow {
		t.Fatal("second StartShadow started another shadow")
	}
	s.Mark(0, 4096)
	if a.Bits().Count() != 65536 || b.Bits().Count() != 0 || c.Bits().Count() != 65536 || shadow.Count() != 65536 {
		t.Fatalf("marks: a %d b %d c %d shadow %d", a.Bits().Count(), b.Bits().Count(), c.Bits().Count(), shadow.Count())
	}
	a.StopShadow()
	s.Mark(1<<19, 1)
	if shadow.Count() != 65536 {
		t.Fatal("a stopped shadow was marked")
	}
	s.Move(a, c)
	if got := names(&s); !slices.Equal(got, []string{"a", "c", "b"}) {
		t.Fatalf("after Move %v", got)
	}
	s.Remove(c)
	if got := names(&s); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("after Remove %v", got)
	}
	s.Resize(2 << 20)
	if a.Bits().Size() != 2<<20 {
		t.Fatalf("Resize: size %d", a.Bits().Size())
	}
}

// A frozen bitmap records nothing itself; its successor does. Abdicate
// keeps only what the successor recorded, Reclaim everything.
func TestFreeze(t *testing.T) {
	for _, abdicate := range []bool{true, false} {
		var s Set[string]
		b := New(newBits(t), true)
		s.Insert(b, "b")
		s.Mark(0, 1)
		succ, err := b.NewSuccessor()
		if err != nil {
			t.Fatal(err)
		}
		s.Insert(succ, "")
		b.Freeze(succ)
		if !b.Busy() || !b.Recording() || b.Successor() != succ {
			t.Fatal("frozen bitmap: not busy, not recording through its successor, or no successor")
		}
		s.Mark(1<<19, 1)
		var got *Bitmap
		if abdicate {
			got = b.Abdicate()
		} else {
			got = b.Reclaim()
		}
		if got != succ {
			t.Fatal("the successor was not returned")
		}
		b.Thaw()
		b.Release()
		want := int64(2 * 65536)
		if abdicate {
			want = 65536
		}
		if b.Bits().Count() != want || b.Busy() || !b.Recording() || b.Successor() != nil {
			t.Fatalf("abdicate %v: count %d busy %v recording %v", abdicate, b.Bits().Count(), b.Busy(), b.Recording())
		}
	}
}
