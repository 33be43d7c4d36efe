//go:build cpuprofile

package main

import (
	"os"
	"runtime/pprof"
)

// With the cpuprofile build tag (go build -tags cpuprofile ./cmd/qbmond),
// QBMOND_CPUPROFILE names a file for a CPU profile of the whole run (go
// tool pprof), for performance work. Release builds leave the profiler
// out: linked in, it alone made the idle daemon map 0.3 MB more of its
// binary.
func init() {
	profiled = func(run func() int) int {
		path := os.Getenv("QBMOND_CPUPROFILE")
		if path == "" {
			return run()
		}
		f, err := os.Create(path)
		if err != nil {
			return run()
		}
		defer f.Close()
		if pprof.StartCPUProfile(f) != nil {
			return run()
		}
		defer pprof.StopCPUProfile()
		return run()
	}
}
