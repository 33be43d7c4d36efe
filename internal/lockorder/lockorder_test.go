package lockorder

import (
	"strings"
	"testing"
)

// TestOrder takes the locks in their order and in a wrong one: with the
// lockcheck tag the wrong order panics before it can deadlock; without it
// nothing is checked.
func TestOrder(t *testing.T) {
	var ctl Mutex[JobControl]
	var exp Mutex[Exports]
	var g Mutex[Graph]

	// The right order, twice (the holds are forgotten on Unlock).
	for range 2 {
		ctl.Lock()
		g.Lock()
		g.Unlock()
		ctl.Unlock()
		exp.Lock()
		g.Lock()
		g.Unlock()
		exp.Unlock()
	}

	wrong := func(inner func()) (msg string) {
		defer func() {
			if r := recover(); r != nil {
				msg, _ = r.(string)
			}
		}()
		g.Lock()
		defer g.Unlock()
		inner()
		return ""
	}
	msg := wrong(func() { ctl.Lock(); ctl.Unlock() })
	if !Checked {
		if msg != "" {
			t.Fatalf("unchecked build panicked: %s", msg)
		}
		t.Skip("built without the lockcheck tag: no checks")
	}
	if !strings.Contains(msg, "taking the job control lock while holding the graph lock") {
		t.Fatalf("job control lock under the graph lock: panic %q", msg)
	}
	if msg := wrong(func() { exp.Lock(); exp.Unlock() }); !strings.Contains(msg, "taking the export lock while holding the graph lock") {
		t.Fatalf("export lock under the graph lock: panic %q", msg)
	}
	if msg := wrong(func() { g.Lock() }); !strings.Contains(msg, "taking the graph lock while holding it already") {
		t.Fatalf("graph lock twice: panic %q", msg)
	}
	// Two graph locks nest (a private graph under the daemon's).
	var g2 Mutex[Graph]
	if msg := wrong(func() { g2.Lock(); g2.Unlock() }); msg != "" {
		t.Fatalf("two graph locks: panic %q", msg)
	}
	// The failed attempts left nothing behind.
	ctl.Lock()
	g.Lock()
	g.Unlock()
	ctl.Unlock()

	// Another goroutine's locks do not count.
	g.Lock()
	done := make(chan struct{})
	go func() { ctl.Lock(); ctl.Unlock(); close(done) }()
	<-done
	g.Unlock()
}
