package tests

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// The schema honesty probes of blockdev-mirror and drive-mirror (see
// schema_honesty_test.go): each member tried on a mirror of hr, into ht
// or into a new image, which is cancelled once READY.

func mirrorProbes(p map[string]honestyProbe) {
	for _, cmd := range []string{"blockdev-mirror", "drive-mirror"} {
		for rel, values := range map[string][]any{"job-id": {"$job"}, "replaces": {"hr"}, "speed": {1 << 30},
			"granularity": {65536}, "buf-size": {1 << 20}, "on-source-error": nil, "on-target-error": nil,
			"copy-mode": nil, "auto-finalize": {false, true}, "auto-dismiss": {true, false}} {
			p[cmd+"."+rel] = mirrorProbe(cmd, rel, values...)
		}
	}
	p["blockdev-mirror.filter-node-name"] = mirrorProbe("blockdev-mirror", "filter-node-name", "$filter")
	p["drive-mirror.format"] = mirrorProbe("drive-mirror", "format", "raw", "qcow2")
	p["drive-mirror.node-name"] = mirrorProbe("drive-mirror", "node-name", "$node")
	p["drive-mirror.mode"] = mirrorProbe("drive-mirror", "mode")
	p["drive-mirror.unmap"] = mirrorProbe("drive-mirror", "unmap", true, false)
}

// mirrorProbe tries a member of blockdev-mirror (hr into ht) or
// drive-mirror (hr into a new image), sync full; "$job", "$filter" and
// "$node" stand for this try's names. The job is cancelled once READY
// and waited for.
func mirrorProbe(cmd, rel string, values ...any) honestyProbe {
	return honestyProbe{values: values, try: func(e *honestyEnv, k kind, v any) string {
		n := e.next()
		c := e.c[k]
		id := fmt.Sprintf("hj%d", n)
		args := map[string]any{"job-id": id, "device": "hr", "sync": "full", "auto-dismiss": false}
		if cmd == "blockdev-mirror" {
			args["target"] = "ht"
		} else {
			target := e.file(k, id+".img")
			args["target"] = target
			if rel == "mode" && v == "existing" {
				if err := os.WriteFile(target, make([]byte, 4<<20), 0o644); err != nil {
					e.t.Fatal(err)
				}
			}
			if rel == "replaces" {
				args["node-name"] = fmt.Sprintf("hn%d", n)
			}
		}
		if s, ok := v.(string); ok && strings.HasPrefix(s, "$") {
			v = map[string]string{"$job": id, "$filter": fmt.Sprintf("hf%d", n), "$node": fmt.Sprintf("hn%d", n)}[s]
		}
		setMember(args, rel, v)
		if d := errDesc(c.cmd(cmd, args)); d != "" {
			return d
		}
		return mirrorProbeEnd(e.t, c, id)
	}}
}

// mirrorProbeEnd cancels mirror id once READY, finalizes and dismisses it
// as needed, and returns its error.
func mirrorProbeEnd(t *testing.T, c *client, id string) string {
	t.Helper()
	cancelled := false
	for range 3000 {
		found := false
		for _, j := range c.ok("query-jobs", nil).([]any) {
			m := j.(map[string]any)
			if m["id"] != id {
				continue
			}
			found = true
			switch m["status"] {
			case "ready":
				if !cancelled {
					c.ok("block-job-cancel", map[string]any{"device": id})
					cancelled = true
				}
			case "pending":
				c.ok("job-finalize", map[string]any{"id": id})
			case "concluded":
				c.ok("job-dismiss", map[string]any{"id": id})
				e, _ := m["error"].(string)
				return e
			}
		}
		if !found {
			return ""
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("mirror %s did not end", id)
	return ""
}
