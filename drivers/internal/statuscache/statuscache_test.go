package statuscache

import "testing"

func TestCache(t *testing.T) {
	var c Cache
	if n, _ := c.Lookup(0); n != 0 {
		t.Fatalf("empty cache knows %d bytes", n)
	}
	_, gen := c.Lookup(100)
	c.Fill(gen, 100, 200)
	if n, _ := c.Lookup(150); n != 50 {
		t.Fatalf("lookup in the extent: %d, want 50", n)
	}
	if n, _ := c.Lookup(200); n != 0 {
		t.Fatalf("lookup at the extent's end: %d, want 0", n)
	}
	c.ForgetRange(300, 10) // not overlapping: kept
	if n, _ := c.Lookup(100); n != 100 {
		t.Fatalf("after a disjoint invalidation: %d, want 100", n)
	}
	_, gen = c.Lookup(0)
	c.ForgetRange(199, 1) // overlapping: dropped
	c.Fill(gen, 0, 500)   // stale answer: ignored
	if n, _ := c.Lookup(100); n != 0 {
		t.Fatalf("stale fill or overlapping invalidation kept data: %d", n)
	}
	_, gen = c.Lookup(0)
	c.Fill(gen, 0, 500)
	c.Forget()
	if n, _ := c.Lookup(0); n != 0 {
		t.Fatalf("after Forget: %d", n)
	}
}
