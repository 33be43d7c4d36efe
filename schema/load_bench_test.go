package schema

import "testing"

// BenchmarkLoad is the embedded schema's load at start-up; its B/op stays
// resident in an idle daemon (no GC cycle runs before the heap reaches
// 4 MB), see scripts/rssperf.sh.
func BenchmarkLoad(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load(); err != nil {
			b.Fatal(err)
		}
	}
}
