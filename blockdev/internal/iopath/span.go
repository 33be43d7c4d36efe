package iopath

// Span is a request [Off, End) split at an alignment A: an optional
// partial head block, an aligned middle [Lo, Hi) and an optional partial
// tail block. When the range lies inside one block, that block is the head
// and there is no middle or tail.
type Span struct {
	A                int64 // alignment
	Off, End         int64 // the request
	Lo, Hi           int64 // aligned middle (empty when Lo >= Hi)
	HasHead, HasTail bool
	HeadBlock        int64 // start of the head block
}

// Split splits [off, off+length) at align (below 1: no alignment).
func Split(align, off, length int64) Span {
	a := align
	if a < 1 {
		a = 1
	}
	s := Span{A: a, Off: off, End: off + length}
	s.Lo = (off + a - 1) / a * a
	s.Hi = s.End / a * a
	s.HasHead = off < s.Lo || s.Lo > s.Hi
	s.HeadBlock = off / a * a
	s.HasTail = s.Hi < s.End && s.Hi >= s.Lo
	return s
}

// Aligned reports whether the request needs no read-modify-write.
func (s Span) Aligned() bool { return !s.HasHead && !s.HasTail }

// Outer is the aligned range the request touches.
func (s Span) Outer() (start, end int64) {
	return s.HeadBlock, (s.End + s.A - 1) / s.A * s.A
}

// HeadEnd is where the head block's part of the request ends.
func (s Span) HeadEnd() int64 { return min(s.HeadBlock+s.A, s.End) }
