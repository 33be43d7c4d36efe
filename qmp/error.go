package qmp

import (
	"errors"
	"fmt"
)

// Error classes QEMU 7.2 reports. Almost everything is GenericError; the
// others exist for compatibility with old clients that match on them.
const (
	ClassGeneric         = "GenericError"
	ClassCommandNotFound = "CommandNotFound"
	ClassDeviceNotActive = "DeviceNotActive"
	ClassDeviceNotFound  = "DeviceNotFound"
	ClassKVMMissingCap   = "KVMMissingCap"
)

// Error is the one error type of qbmond's command layer: handlers return it
// (or any error, which becomes a GenericError), transports render it. Its
// fields are QMP's "class" and "desc".
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
	// Hint is QEMU's extra advice line ("Is another process using the
	// image [PATH]?"): printed on the command line, never sent over QMP.
	Hint string `json:"-"`
	// badArgs marks an error of the schema's argument check (JSON-RPC
	// answers it as invalid params).
	badArgs bool
}

func (e *Error) Error() string { return e.Desc }

// Errorf returns a GenericError with a formatted description.
func Errorf(format string, a ...any) *Error {
	return &Error{Class: ClassGeneric, Desc: fmt.Sprintf(format, a...)}
}

// NewError returns an error of the given class.
func NewError(class, format string, a ...any) *Error {
	return &Error{Class: class, Desc: fmt.Sprintf(format, a...)}
}

// AsError converts any error into a *Error: a *Error anywhere in the chain is
// returned as it is, anything else becomes a GenericError with its text
// (and the Hint of an error in the chain that has a Hint method).
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	qe := &Error{Class: ClassGeneric, Desc: err.Error()}
	var h interface{ Hint() string }
	if errors.As(err, &h) {
		qe.Hint = h.Hint()
	}
	return qe
}
