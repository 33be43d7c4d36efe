package qmp

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A client that reads nothing while many events are emitted loses none of
// them, and the emitter never waits for it.
func TestSlowClientKeepsEvents(t *testing.T) {
	s, d, _ := testServer(t)
	c := dialPipe(t, s)
	c.line()
	c.expect(`{"execute": "qmp_capabilities"}`, `{"return": {}}`)
	const n = 5000
	start := time.Now()
	for i := range n {
		d.Emit("TEST_EVENT", map[string]any{"n": i})
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("emitting to a client that does not read took %v", el)
	}
	for i := range n {
		l := c.line()
		if want := `"data": {"n": ` + itoa(i) + `}}`; !strings.HasSuffix(l, want) {
			t.Fatalf("event %d: %s", i, l)
		}
	}
}

func itoa(i int) string { return string(appendInt(nil, i)) }

// A client more than maxBacklog behind is disconnected, with a warning in
// the log, rather than growing the daemon's memory without end.
func TestFarBehindClientClosed(t *testing.T) {
	old := maxBacklog
	maxBacklog = 64 << 10
	defer func() { maxBacklog = old }()
	_, d, _ := testServer(t)
	var logbuf syncBuffer
	s := NewServer(d, VersionInfo{Major: 7, Minor: 2}, zerolog.New(&logbuf))
	c := dialPipe(t, s)
	c.line()
	c.expect(`{"execute": "qmp_capabilities"}`, `{"return": {}}`)
	for i := range 5000 {
		d.Emit("TEST_EVENT", map[string]any{"n": i})
	}
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c.r)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	lines := strings.Count(string(got), "\n")
	if lines >= 5000 {
		t.Errorf("the client got %d events before being closed", lines)
	}
	if !strings.Contains(logbuf.String(), "QMP client too far behind reading events; closing its connection") {
		t.Errorf("no warning in the log: %s", logbuf.String())
	}
}
