package blockdev

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// probeFormat names the registered format whose Prober best matches the
// file's first bytes, raw when none scores more than 1.
func probeFormat(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("Could not open '%s': %s", path, Strerror(err))
	}
	defer f.Close()
	head := make([]byte, 512)
	n, err := io.ReadFull(f, head)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return "", fmt.Errorf("Could not read image for determining its format: %s", Strerror(err))
	}
	registryMu.RLock()
	defer registryMu.RUnlock()
	best, score := "raw", 1
	for name, r := range registry {
		if r.probe == nil {
			continue
		}
		if s := r.probe.Probe(head[:n]); s > score {
			best, score = name, s
		}
	}
	return best, nil
}

// Strerror renders an error as C's strerror does, capitalised ("No such
// file or directory"), which is how QEMU's messages quote system errors:
// the errno's text when the error wraps one, else the error's own text.
func Strerror(err error) string {
	s := err.Error()
	var errno syscall.Errno
	if errors.As(err, &errno) {
		s = errno.Error()
	}
	if s != "" && s[0] >= 'a' && s[0] <= 'z' {
		s = string(s[0]-'a'+'A') + s[1:]
	}
	return s
}
