package tests

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestSlowClientGetsEveryEventQSD: a QMP client that stops reading while
// thousands of events are produced (by another client running many short
// backup jobs) gets every one of them, in order, once it reads again. QSD
// keeps them all; qbmond used to drop what did not fit a 1024-line queue.
func TestSlowClientGetsEveryEventQSD(t *testing.T) {
	jobs := 800
	qsd := slowClientScenario(t, kindQSD, jobs)
	ours := slowClientScenario(t, kindQbmond, jobs)
	sameText(t, "events", ours, qsd)
}

func slowClientScenario(t *testing.T, k kind, jobs int) string {
	dir := shortTempDir(t)
	slowSock := filepath.Join(dir, "slow.sock")
	d := startDaemon(t, k, dir,
		"--chardev", "socket,path="+slowSock+",server=on,wait=off,id=mon1",
		"--monitor", "chardev=mon1")
	busy := d.connect()
	slow := dialNegotiate(t, "unix", slowSock)
	// From here the slow client reads nothing until every job is gone.
	want := shortBackups(busy, jobs)
	var got []string
	for len(got) < len(want) {
		slow.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		var v map[string]any
		if err := slow.dec.Decode(&v); err != nil {
			t.Errorf("%s: the slow client got %d of %d events, then: %v", k, len(got), len(want), err)
			break
		}
		got = append(got, renderEvents([]map[string]any{v})...)
	}
	same := len(got) == len(want)
	for i := 0; same && i < len(got); i++ {
		same = got[i] == want[i]
	}
	if !same && len(got) == len(want) {
		t.Errorf("%s: the slow client got the events in another order or form", k)
	}
	counts := map[string]int{}
	for _, e := range want {
		name, _, _ := strings.Cut(e, " ")
		counts[name]++
	}
	names := make([]string, 0, len(counts))
	for n := range counts {
		names = append(names, fmt.Sprintf("%s×%d", n, counts[n]))
	}
	sort.Strings(names)
	return fmt.Sprintf("busy client %d events (%s); slow client %d, identical: %v", len(want), strings.Join(names, " "), len(got), same)
}

// shortBackups runs jobs full backups between two null nodes one after
// the other, each to its end, and returns the events busy got, rendered.
func shortBackups(busy *client, jobs int) []string {
	busy.ok("blockdev-add", map[string]any{"driver": "null-co", "node-name": "src", "size": 1 << 20})
	busy.ok("blockdev-add", map[string]any{"driver": "null-co", "node-name": "tgt", "size": 1 << 20})
	for i := range jobs {
		id := fmt.Sprintf("j%d", i)
		busy.ok("blockdev-backup", map[string]any{"job-id": id, "device": "src", "target": "tgt", "sync": "full"})
		busy.waitJob(id, "null")
	}
	return renderEvents(busy.events)
}

// renderEvents renders events without their timestamps.
func renderEvents(evs []map[string]any) []string {
	var out []string
	for _, ev := range evs {
		data, _ := json.Marshal(ev["data"])
		out = append(out, fmt.Sprintf("%v %s", ev["event"], data))
	}
	return out
}

// TestSlowJSONRPCClientGetsEveryEvent: the same for a JSON-RPC client
// (qbmond only): every event arrives as a notification, in order.
func TestSlowJSONRPCClientGetsEveryEvent(t *testing.T) {
	dir := shortTempDir(t)
	rpcSock := filepath.Join(dir, "rpc.sock")
	d := startDaemon(t, kindQbmond, dir, "--jsonrpc", "unix:"+rpcSock)
	slow := dialRPC(t, rpcSock)
	busy := d.connect()
	want := shortBackups(busy, 800)
	var got []string
	for len(got) < len(want) {
		slow.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := slow.r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("the slow client got %d of %d events, then: %v", len(got), len(want), err)
		}
		var n struct {
			Method string
			Params map[string]any
		}
		if err := json.Unmarshal(line, &n); err != nil || n.Method != "event" {
			t.Fatalf("not an event notification: %s", line)
		}
		got = append(got, renderEvents([]map[string]any{n.Params})...)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("event %d: got %s, want %s", i, got[i], want[i])
		}
	}
}
