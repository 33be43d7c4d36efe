package file

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/qbmond/qbmond/blockdev"
)

// fdsetPrefix marks a file name that QEMU takes from a file descriptor
// set passed in over the monitor (add-fd) instead of opening a path.
const fdsetPrefix = "/dev/fdset/"

// fdsetOpenError is QEMU's answer (qemu_open) when name is a
// /dev/fdset/N name, ok false otherwise. qbmond, like QSD, has no
// monitor command that passes descriptors, so no set exists: a name
// that does not parse is refused as such, any other fails to dup with
// ENOSYS, QSD's stub. flags are the open flags QEMU would use (printed in
// hex without O_CLOEXEC, which QEMU adds later).
func fdsetOpenError(name string, flags int) (err error, ok bool) {
	id, found := strings.CutPrefix(name, fdsetPrefix)
	if !found {
		return nil, false
	}
	// QEMU parses the set id as strtoll does (leading blanks, a sign,
	// nothing after the digits); -1 is its "does not parse".
	n, perr := strconv.ParseInt(strings.TrimLeft(id, " \t\n\v\f\r"), 10, 64)
	if perr != nil || n == -1 {
		return fmt.Errorf("Could not parse fdset %s", name), true
	}
	return fmt.Errorf("Could not dup FD for %s flags %x: %s", name, flags&^unix.O_CLOEXEC, blockdev.Strerror(unix.ENOSYS)), true
}
