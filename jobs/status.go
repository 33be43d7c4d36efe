package jobs

import "fmt"

// Status is a job's state, by QAPI's JobStatus names.
type Status int

// The statuses, in QAPI's order (the order of the tables below).
const (
	StatusUndefined Status = iota
	StatusCreated
	StatusRunning
	StatusPaused
	StatusReady
	StatusStandby
	StatusWaiting
	StatusPending
	StatusAborting
	StatusConcluded
	StatusNull
	numStatus
)

var statusNames = [numStatus]string{
	"undefined", "created", "running", "paused", "ready", "standby",
	"waiting", "pending", "aborting", "concluded", "null",
}

// String returns the QAPI name of the status.
func (s Status) String() string {
	if s < 0 || s >= numStatus {
		return fmt.Sprintf("Status(%d)", int(s))
	}
	return statusNames[s]
}

// MarshalText renders the status as its QAPI name.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Verb is an action a client asks of a job, by QAPI's JobVerb names.
type Verb int

// The verbs, in QAPI's order.
const (
	VerbCancel Verb = iota
	VerbPause
	VerbResume
	VerbSetSpeed
	VerbComplete
	VerbDismiss
	VerbFinalize
	numVerb
)

var verbNames = [numVerb]string{"cancel", "pause", "resume", "set-speed", "complete", "dismiss", "finalize"}

// String returns the QAPI name of the verb.
func (v Verb) String() string {
	if v < 0 || v >= numVerb {
		return fmt.Sprintf("Verb(%d)", int(v))
	}
	return verbNames[v]
}

// Allowed status changes, QEMU's transition table: a job in status "from"
// may move to any status whose bit is set in transitions[from].
var transitions = [numStatus]uint16{
	StatusUndefined: bits(StatusCreated),
	StatusCreated:   bits(StatusRunning, StatusAborting, StatusNull),
	StatusRunning:   bits(StatusPaused, StatusReady, StatusWaiting, StatusAborting),
	StatusPaused:    bits(StatusRunning),
	StatusReady:     bits(StatusStandby, StatusWaiting, StatusAborting),
	StatusStandby:   bits(StatusReady),
	StatusWaiting:   bits(StatusPending, StatusAborting),
	StatusPending:   bits(StatusAborting, StatusConcluded),
	StatusAborting:  bits(StatusAborting, StatusConcluded),
	StatusConcluded: bits(StatusNull),
	StatusNull:      0,
}

// verbs says in which statuses each verb is accepted (QEMU's verb table).
var verbs = [numVerb]uint16{
	VerbCancel:   bits(StatusCreated, StatusRunning, StatusPaused, StatusReady, StatusStandby, StatusWaiting, StatusPending),
	VerbPause:    bits(StatusCreated, StatusRunning, StatusPaused, StatusReady, StatusStandby),
	VerbResume:   bits(StatusCreated, StatusRunning, StatusPaused, StatusReady, StatusStandby),
	VerbSetSpeed: bits(StatusCreated, StatusRunning, StatusPaused, StatusReady, StatusStandby),
	VerbComplete: bits(StatusReady),
	VerbDismiss:  bits(StatusConcluded),
	VerbFinalize: bits(StatusPending),
}

func bits(ss ...Status) uint16 {
	var b uint16
	for _, s := range ss {
		b |= 1 << s
	}
	return b
}

// CanTransition tells whether a job may go from one status to another.
func CanTransition(from, to Status) bool {
	return from >= 0 && from < numStatus && to >= 0 && to < numStatus && transitions[from]&(1<<to) != 0
}

// VerbAllowed tells whether a job in status s accepts verb v.
func VerbAllowed(v Verb, s Status) bool {
	return v >= 0 && v < numVerb && s >= 0 && s < numStatus && verbs[v]&(1<<s) != 0
}

// IsCompleted tells whether the body of a job in status s has finished
// (QEMU's "completed": waiting and after).
func (s Status) IsCompleted() bool {
	return s >= StatusWaiting
}

// IsReady tells whether a job in status s has reached READY (ready or
// standby).
func (s Status) IsReady() bool { return s == StatusReady || s == StatusStandby }
