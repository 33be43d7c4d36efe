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
// socket is created with mode 0600 (its directory, when missing, with
// 0700); a stale socket file left by a dead process is replaced, a live one
// is an error. Closing the listener removes the socket file.
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
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
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
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
