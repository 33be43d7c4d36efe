package tests

import (
	"os/exec"
	"strings"
	"testing"
)

// TestSocatSession types a session into socat as a person would and reads
// what socat prints.
func TestSocatSession(t *testing.T) {
	socat := requireTool(t, "socat")
	d := startDaemon(t, kindQbmond, "")
	in := strings.Join([]string{
		`{ "execute": "qmp_capabilities" }`,
		`{ "execute": "blockdev-add", "arguments": { "driver": "null-co", "node-name": "disk0", "size": 1048576 } }`,
		`{ "execute": "query-named-block-nodes", "arguments": { "flat": true } }`,
		`{ "execute": "blockdev-del", "arguments": { "node-name": "disk0" } }`,
		`{ "execute": "quit" }`,
	}, "\n") + "\n"
	cmd := exec.Command(socat, "-t5", "-", "UNIX-CONNECT:"+d.sock)
	cmd.Stdin = strings.NewReader(in)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("socat: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 6 {
		t.Fatalf("socat printed %d lines:\n%s", len(lines), out)
	}
	checks := []string{
		`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "qbmond `,
		`{"return": {}}`,
		`{"return": {}}`,
		`"node-name": "disk0"`,
		`{"return": {}}`,
		`{"return": {}}`,
	}
	for i, want := range checks {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d: want %s in\n%s", i+1, want, lines[i])
		}
	}
	if err := d.waitExit(10e9); err != nil {
		t.Fatalf("quit: %v", err)
	}
}
