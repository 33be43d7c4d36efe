package qmp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Listen opens a listener for "unix:PATH" or "tcp:HOST:PORT". A unix
// socket is created with mode 0600 whatever the umask (its directory, when
// missing, with 0700); a stale socket file left by a dead process is
// replaced, a live one is an error. Closing the listener removes the
// socket file. A tcp listener has no authentication at all.
func Listen(addr string) (net.Listener, error) {
	kind, rest, ok := strings.Cut(addr, ":")
	if !ok || rest == "" {
		return nil, fmt.Errorf("invalid address '%s': expected unix:PATH or tcp:HOST:PORT", addr)
	}
	switch kind {
	case "unix":
		return listenUnix(rest)
	case "tcp":
		if _, _, err := net.SplitHostPort(rest); err != nil {
			return nil, fmt.Errorf("invalid address '%s': %v", addr, err)
		}
		return net.Listen("tcp", rest)
	}
	return nil, fmt.Errorf("invalid address '%s': expected unix:PATH or tcp:HOST:PORT", addr)
}

func listenUnix(path string) (net.Listener, error) {
	if len(path) > maxUnixPath {
		return nil, fmt.Errorf("listen unix %s: path longer than %d bytes", path, maxUnixPath)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	// The socket is bound in a private directory (mode 0700) next to its
	// final path, given mode 0600 there, and renamed into place: it never
	// exists where others can reach it with any other mode. (Changing the
	// umask around bind would change it for every thread of the process.)
	tmp, err := os.MkdirTemp(dir, ".qbmond-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	bound := filepath.Join(tmp, "s")
	bindAt := bound
	if len(bindAt) > maxUnixPath {
		// The final path fits but the temporary one does not: reach the
		// private directory through a short /proc/self/fd path.
		d, err := os.Open(tmp)
		if err != nil {
			return nil, err
		}
		defer d.Close()
		bindAt = fmt.Sprintf("/proc/self/fd/%d/s", d.Fd())
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: bindAt, Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(bound, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	if err := os.Rename(bound, path); err != nil {
		l.Close()
		return nil, err
	}
	return &unixListener{UnixListener: l, path: path}, nil
}

// maxUnixPath is the longest path a unix socket address holds.
const maxUnixPath = 107

// unixListener is a listener on a socket renamed into place: its address
// is the final path, and closing it removes that path.
type unixListener struct {
	*net.UnixListener
	path string
}

func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	if !errors.Is(err, net.ErrClosed) {
		os.Remove(l.path)
	}
	return err
}
