package iopath

import (
	"errors"
	"testing"
)

func TestSplit(t *testing.T) {
	for _, c := range []struct {
		align, off, length int64
		want               Span
		aligned            bool
		outerLo, outerHi   int64
	}{
		{1, 100, 50, Span{A: 1, Off: 100, End: 150, Lo: 100, Hi: 150, HeadBlock: 100}, true, 100, 150},
		{512, 1024, 512, Span{A: 512, Off: 1024, End: 1536, Lo: 1024, Hi: 1536, HeadBlock: 1024}, true, 1024, 1536},
		// head and tail around an aligned middle
		{512, 100, 1000, Span{A: 512, Off: 100, End: 1100, Lo: 512, Hi: 1024, HasHead: true, HasTail: true, HeadBlock: 0}, false, 0, 1536},
		// inside one block: the head only
		{512, 100, 10, Span{A: 512, Off: 100, End: 110, Lo: 512, Hi: 0, HasHead: true, HeadBlock: 0}, false, 0, 512},
		{0, 7, 3, Span{A: 1, Off: 7, End: 10, Lo: 7, Hi: 10, HeadBlock: 7}, true, 7, 10},
	} {
		s := Split(c.align, c.off, c.length)
		if s != c.want {
			t.Errorf("Split(%d, %d, %d) = %+v, want %+v", c.align, c.off, c.length, s, c.want)
		}
		if s.Aligned() != c.aligned {
			t.Errorf("Split(%d, %d, %d).Aligned() = %v", c.align, c.off, c.length, s.Aligned())
		}
		if lo, hi := s.Outer(); lo != c.outerLo || hi != c.outerHi {
			t.Errorf("Split(%d, %d, %d).Outer() = %d, %d", c.align, c.off, c.length, lo, hi)
		}
	}
}

func TestCounters(t *testing.T) {
	var c Counters
	if s := c.Load(); s.HasIdle || s.Ops[Read] != 0 {
		t.Fatalf("fresh counters: %+v", s)
	}
	c.Done(Read, 4096, Now(), nil)
	c.Done(Write, 512, Now(), errors.New("x"))
	c.Refused(Unmap)
	c.Wrote(8192)
	c.Wrote(4096)
	c.Discarded(1024, nil)
	c.Discarded(1024, errors.New("x"))
	s := c.Load()
	if s.Ops[Read] != 1 || s.Bytes[Read] != 4096 || s.Failed[Write] != 1 || s.Ops[Write] != 0 ||
		s.Invalid[Unmap] != 1 || s.WrHighest != 8192 || !s.HasIdle ||
		s.DiscardOK != 1 || s.DiscardFailed != 1 || s.DiscardBytesOK != 1024 {
		t.Fatalf("counters: %+v", s)
	}
}
