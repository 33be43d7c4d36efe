// Package acceptretry tells an accept failure that passes from a broken
// listener, and paces the retries: the QMP and NBD listeners both keep
// serving when the process runs out of descriptors for a while (idle NBD
// clients holding them all, say) instead of ending or spinning.
package acceptretry

import (
	"errors"
	"syscall"
	"time"
)

// Temporary tells whether an accept failure passes: no descriptor, buffer
// or memory free at the moment, or a client gone before it was accepted.
func Temporary(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.EINTR, syscall.EAGAIN} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Next is the wait before the next try after one that waited prev (0 the
// first time): 5 ms, doubling up to limit.
func Next(prev, limit time.Duration) time.Duration {
	return min(max(2*prev, 5*time.Millisecond), limit)
}
