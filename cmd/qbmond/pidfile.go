package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// pidFile is a locked pid file. As QSD's --pidfile, the file is created
// with mode 0600, write-locked for as long as the daemon runs (a second
// daemon given the same file refuses to start), and removed at exit.
//
// The lock is an open-file-description lock: it conflicts with the POSIX
// lock QEMU takes (lockf), and, unlike a POSIX lock, it is not dropped when
// some other descriptor of the same file is closed in this process.
type pidFile struct {
	path string
	f    *os.File
}

// writePIDFile creates (or reuses) path, locks it and writes our pid.
// Errors read as QEMU's ("Cannot lock pid file: Resource temporarily
// unavailable").
func writePIDFile(path string) (*pidFile, error) {
	for {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("Cannot open pid file: %s", strerror(err))
		}
		var locked syscall.Stat_t
		if err := syscall.Fstat(int(f.Fd()), &locked); err != nil {
			f.Close()
			return nil, fmt.Errorf("Cannot stat file: %s", strerror(err))
		}
		fl := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
		if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &fl); err != nil {
			f.Close()
			return nil, fmt.Errorf("Cannot lock pid file: %s", strerror(err))
		}
		// The file we locked must still be the one at path: a daemon
		// exiting between our open and our lock removes it.
		var now syscall.Stat_t
		if err := syscall.Stat(path, &now); err != nil || now.Ino != locked.Ino || now.Dev != locked.Dev {
			f.Close()
			continue
		}
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, fmt.Errorf("Failed to truncate pid file: %s", strerror(err))
		}
		if _, err := fmt.Fprintf(f, "%d\n", os.Getpid()); err != nil {
			f.Close()
			return nil, fmt.Errorf("Failed to write pid file: %s", strerror(err))
		}
		return &pidFile{path: path, f: f}, nil
	}
}

// remove deletes the file while it is still locked, then unlocks it.
func (p *pidFile) remove() {
	os.Remove(p.path)
	p.f.Close()
}

// strerror renders an errno as the C library does ("Resource temporarily
// unavailable"); Go spells it in lower case.
func strerror(err error) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err.Error()
	}
	s := errno.Error()
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
