package qmp

import (
	"context"

	"github.com/qbmond/qbmond/qapi"
)

// VersionInfo is what the greeting and query-version report: the QEMU
// version whose dialect is spoken, and the package that speaks it.
type VersionInfo struct {
	Major, Minor, Micro int
	Package             string
}

// reply is query-version's return value.
func (v VersionInfo) reply() *qapi.VersionInfo {
	return &qapi.VersionInfo{
		Qemu:    qapi.VersionTriple{Major: int64(v.Major), Minor: int64(v.Minor), Micro: int64(v.Micro)},
		Package: v.Package,
	}
}

// negotiator is what a QMP session puts in a command's context so that
// qmp_capabilities can act on it.
type negotiator interface {
	negotiate(enable []string) *Error
}

type negotiatorKey struct{}

// afterReplyKey carries a function that a transport runs once the reply to
// the current command has been written (quit uses it).
type afterReplyKey struct{}

// AfterReply registers f to run after the reply to the command running in
// ctx has been sent; without a transport that supports it, f runs at once.
func AfterReply(ctx context.Context, f func()) {
	if set, ok := ctx.Value(afterReplyKey{}).(func(func())); ok {
		set(f)
		return
	}
	f()
}

// WhenReplied registers f to run after the reply to the command running
// in ctx has been sent, when a transport runs such work; without one, f
// never runs. For waits that only matter to a client that reads replies
// and events in order.
func WhenReplied(ctx context.Context, f func()) {
	if set, ok := ctx.Value(afterReplyKey{}).(func(func())); ok {
		set(f)
	}
}

// RegisterCore registers the commands every QMP server has:
// qmp_capabilities, query-version and quit (which calls quit after its
// reply is on its way).
func RegisterCore(d *Dispatcher, v VersionInfo, quit func()) {
	RegisterCoreStop(d, v, nil, quit)
}

// RegisterCoreStop is RegisterCore whose quit first runs stop (when not
// nil) before it replies: QSD ends its exports and jobs while its monitors
// still deliver events, and only then sends the reply to quit, so that
// the reply is the last thing the quitting client reads.
func RegisterCoreStop(d *Dispatcher, v VersionInfo, stop, quit func()) {
	RegisterTyped(d, "qmp_capabilities", func(ctx context.Context, a *qapi.QmpCapabilitiesArgs) (*qapi.Empty, error) {
		if n, ok := ctx.Value(negotiatorKey{}).(negotiator); ok {
			enable := make([]string, len(a.Enable))
			for i, c := range a.Enable {
				enable[i] = string(c)
			}
			if err := n.negotiate(enable); err != nil {
				return nil, err
			}
		}
		return nil, nil
	})
	RegisterTyped(d, "query-version", func(context.Context, *qapi.Empty) (*qapi.VersionInfo, error) {
		return v.reply(), nil
	})
	RegisterTyped(d, "quit", func(ctx context.Context, _ *qapi.Empty) (*qapi.Empty, error) {
		if stop != nil {
			stop()
		}
		AfterReply(ctx, quit)
		return nil, nil
	})
}
