package exports

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/qbmond/qbmond/blockdev"
)

// The NBD server's listening socket is made the way QEMU's socket layer
// (util/qemu-sockets.c) makes it, with its error messages: a unix socket
// path is unlinked first and bound where it is (no directory is created,
// the socket's mode follows the umask); for inet, an address in use is
// "no available port" and any other bind failure is reported with its
// errno.

// sunPathMax is the size of sockaddr_un's sun_path on Linux.
const sunPathMax = 108

func listenUnixNBD(path string) (net.Listener, error) {
	if len(path) > sunPathMax {
		return nil, fmt.Errorf("Unix socket path '%s' is too long", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("Failed to unlink socket %s: %s", path, blockdev.Strerror(err))
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		var se *os.SyscallError
		if errors.As(err, &se) {
			switch se.Syscall {
			case "socket":
				return nil, fmt.Errorf("Failed to create Unix socket: %s", blockdev.Strerror(se.Err))
			case "listen":
				return nil, fmt.Errorf("Failed to listen on socket: %s", blockdev.Strerror(se.Err))
			}
		}
		return nil, fmt.Errorf("Failed to bind socket to %s: %s", path, blockdev.Strerror(err))
	}
	return l, nil
}

func listenInetNBD(host, port string) (net.Listener, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err == nil {
		return l, nil
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return nil, fmt.Errorf("address resolution failed for %s:%s: Name or service not known", host, port)
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("Failed to find an available port: %s", blockdev.Strerror(syscall.EADDRINUSE))
	}
	var se *os.SyscallError
	if errors.As(err, &se) && se.Syscall == "listen" {
		return nil, fmt.Errorf("Failed to listen on socket: %s", blockdev.Strerror(se.Err))
	}
	return nil, fmt.Errorf("Failed to bind socket: %s", blockdev.Strerror(err))
}

// probeVsockNBD makes and binds a vsock socket as QEMU would, so that an
// address QSD cannot listen on fails with QSD's error; qbmond does not
// serve NBD over vsock, so one it could listen on is refused after all.
func probeVsockNBD(cid, port string) error {
	c, err := strconv.ParseUint(cid, 10, 32)
	if err != nil {
		return fmt.Errorf("Failed to parse cid '%s'", cid)
	}
	p, err := strconv.ParseUint(port, 10, 32)
	if err != nil {
		return fmt.Errorf("Failed to parse port '%s'", port)
	}
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("Failed to create socket: %s", blockdev.Strerror(err))
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: uint32(c), Port: uint32(p)}); err != nil {
		return fmt.Errorf("Failed to bind socket: %s", blockdev.Strerror(err))
	}
	return errors.New("socket address type 'vsock' is not supported by qbmond")
}
