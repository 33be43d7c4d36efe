package jobs

import (
	"strings"
	"testing"

	"github.com/qbmond/qbmond/keyval"
)

// QEMU 7.2's tables, written out by hand as rows of the status initials
// U C R P Y S W D X E N (undefined, created, running, paused, ready,
// standby, waiting, pending, aborting, concluded, null).
var (
	wantTransitions = map[Status]string{
		StatusUndefined: "01000000000",
		StatusCreated:   "00100000101",
		StatusRunning:   "00011010100",
		StatusPaused:    "00100000000",
		StatusReady:     "00000110100",
		StatusStandby:   "00001000000",
		StatusWaiting:   "00000001100",
		StatusPending:   "00000000110",
		StatusAborting:  "00000000110",
		StatusConcluded: "00000000001",
		StatusNull:      "00000000000",
	}
	wantVerbs = map[Verb]string{
		VerbCancel:   "01111111000",
		VerbPause:    "01111100000",
		VerbResume:   "01111100000",
		VerbSetSpeed: "01111100000",
		VerbComplete: "00001000000",
		VerbFinalize: "00000001000",
		VerbDismiss:  "00000000010",
	}
)

func TestTransitionTable(t *testing.T) {
	for from := StatusUndefined; from < numStatus; from++ {
		var got strings.Builder
		for to := StatusUndefined; to < numStatus; to++ {
			if CanTransition(from, to) {
				got.WriteByte('1')
			} else {
				got.WriteByte('0')
			}
		}
		if got.String() != wantTransitions[from] {
			t.Errorf("transitions from %s: got %s, want %s", from, got.String(), wantTransitions[from])
		}
	}
	if CanTransition(-1, StatusCreated) || CanTransition(StatusCreated, numStatus) {
		t.Error("out-of-range statuses accepted")
	}
}

func TestVerbTable(t *testing.T) {
	for v := VerbCancel; v < numVerb; v++ {
		var got strings.Builder
		for s := StatusUndefined; s < numStatus; s++ {
			if VerbAllowed(v, s) {
				got.WriteByte('1')
			} else {
				got.WriteByte('0')
			}
		}
		if got.String() != wantVerbs[v] {
			t.Errorf("verb %s: got %s, want %s", v, got.String(), wantVerbs[v])
		}
	}
	if VerbAllowed(numVerb, StatusRunning) || VerbAllowed(VerbCancel, numStatus) {
		t.Error("out-of-range verb or status accepted")
	}
}

func TestNames(t *testing.T) {
	want := "undefined created running paused ready standby waiting pending aborting concluded null"
	var got []string
	for s := StatusUndefined; s < numStatus; s++ {
		got = append(got, s.String())
	}
	if strings.Join(got, " ") != want {
		t.Errorf("status names: %q", got)
	}
	var verbs []string
	for v := VerbCancel; v < numVerb; v++ {
		verbs = append(verbs, v.String())
	}
	if strings.Join(verbs, " ") != "cancel pause resume set-speed complete dismiss finalize" {
		t.Errorf("verb names: %q", verbs)
	}
	if b, _ := StatusStandby.MarshalText(); string(b) != "standby" {
		t.Errorf("MarshalText: %s", b)
	}
}

func TestValidID(t *testing.T) {
	for id, want := range map[string]bool{
		"a": true, "Job-1.x_y": true, "z9": true,
		"": false, "1a": false, "-a": false, "_a": false, "a b": false, "a/b": false, "é": false, "a#": false,
	} {
		if got := keyval.IDWellFormed(id); got != want {
			t.Errorf("IDWellFormed(%q) = %v, want %v", id, got, want)
		}
	}
}
