package blockdev_test

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/qbmond/qbmond/blockdev"
)

// locker is a pass-through node that records the PermLocker calls the
// graph makes and refuses write permission while refuseWrite is set, the
// way a file node refuses when another process holds a lock.
type locker struct {
	testfmt
}

var lockLog struct {
	sync.Mutex
	calls       []string
	refuseWrite bool
	held        blockdev.Perm
}

func init() {
	blockdev.RegisterDriver("testlock", func() blockdev.Driver { return new(locker) })
}

func (l *locker) CheckPerm(perm, shared blockdev.Perm) error {
	lockLog.Lock()
	defer lockLog.Unlock()
	lockLog.calls = append(lockLog.calls, "check")
	if lockLog.refuseWrite && perm&blockdev.PermWrite != 0 {
		return errors.New(`Failed to get "write" lock`)
	}
	return nil
}

func (l *locker) SetPerm(perm, shared blockdev.Perm) {
	lockLog.Lock()
	defer lockLog.Unlock()
	lockLog.calls = append(lockLog.calls, "set")
	lockLog.held = perm
}

func (l *locker) AbortPerm() {
	lockLog.Lock()
	defer lockLog.Unlock()
	lockLog.calls = append(lockLog.calls, "abort")
}

func takeCalls() []string {
	lockLog.Lock()
	defer lockLog.Unlock()
	c := lockLog.calls
	lockLog.calls = nil
	return c
}

func TestPermLocker(t *testing.T) {
	g := newGraph(t)
	if err := add(g, blockdev.Options{"driver": "testlock", "node-name": "l",
		"file": map[string]any{"driver": "null-co"}}); err != nil {
		t.Fatal(err)
	}
	takeCalls()
	lockLog.Lock()
	lockLog.refuseWrite = true
	lockLog.Unlock()
	err := add(g, blockdev.Options{"driver": "testfmt", "node-name": "w", "file": "l"})
	if err == nil || err.Error() != `Failed to get "write" lock` {
		t.Fatalf("writer over a refusing locker: %v", err)
	}
	if c := takeCalls(); !slices.Equal(c, []string{"check"}) {
		t.Fatalf("calls on refusal: %v", c)
	}
	lockLog.Lock()
	lockLog.refuseWrite = false
	lockLog.Unlock()
	if err := add(g, blockdev.Options{"driver": "testfmt", "node-name": "w", "file": "l"}); err != nil {
		t.Fatal(err)
	}
	if c := takeCalls(); !slices.Equal(c, []string{"check", "set"}) {
		t.Fatalf("calls on success: %v", c)
	}
	lockLog.Lock()
	held := lockLog.held
	lockLog.Unlock()
	if held&blockdev.PermWrite == 0 {
		t.Fatalf("write not held after attaching a writer: %v", held.Names())
	}
	if err := del(g, "w"); err != nil {
		t.Fatal(err)
	}
	lockLog.Lock()
	held = lockLog.held
	lockLog.Unlock()
	if held&blockdev.PermWrite != 0 {
		t.Fatalf("write still held after the writer left: %v", held.Names())
	}
}
