package exports

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qapi"
)

// The NBD server's listening socket is made the way QEMU's socket layer
// (util/qemu-sockets.c) makes it, with its error messages and its
// options:
//
//   - unix: the path is unlinked first and bound where it is (no directory
//     is made, the socket's mode follows the umask); abstract names are
//     bound with the address length tight or padded to the whole
//     sun_path, as asked.
//   - inet: the host is resolved (numeric: an address only), restricted
//     to the family ipv4/ipv6 ask for; with "to", the ports from port to
//     "to" are tried in turn. An address in use is "no available port";
//     any other bind failure is reported with its errno. mptcp asks for
//     Multipath TCP (plain TCP where the kernel has none); keep-alive is
//     accepted and, on a listening socket, changes nothing (connections
//     get TCP keep-alive from Go regardless).

// sunPathMax is the size of sockaddr_un's sun_path on Linux.
const sunPathMax = 108

func listenUnixNBD(a *qapi.UnixSocketAddress) (net.Listener, error) {
	path := a.Path
	if qapi.Deref(a.Abstract) {
		return listenAbstractNBD(path, a.Tight == nil || *a.Tight)
	}
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

// listenAbstractNBD binds an abstract unix socket by hand: Go's own
// abstract addresses are always tight, QEMU's need not be.
func listenAbstractNBD(name string, tight bool) (net.Listener, error) {
	if len(name) > sunPathMax-1 {
		return nil, fmt.Errorf("Unix socket path '%s' is too long", name)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("Failed to create Unix socket: %s", blockdev.Strerror(err))
	}
	var sa unix.RawSockaddrUnix
	sa.Family = unix.AF_UNIX
	for i := 0; i < len(name); i++ {
		sa.Path[1+i] = int8(name[i])
	}
	size := uintptr(unsafe.Sizeof(sa))
	if tight {
		size = unsafe.Offsetof(sa.Path) + 1 + uintptr(len(name))
	}
	if _, _, e := unix.Syscall(unix.SYS_BIND, uintptr(fd), uintptr(unsafe.Pointer(&sa)), size); e != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("Failed to bind socket to %s: %s", name, blockdev.Strerror(e))
	}
	if err := unix.Listen(fd, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("Failed to listen on socket: %s", blockdev.Strerror(err))
	}
	f := os.NewFile(uintptr(fd), "nbd-abstract")
	defer f.Close() // FileListener holds its own descriptor
	return net.FileListener(f)
}

// inetFamily is the address family ipv4 and ipv6 ask for ("ip" for any),
// as QEMU's inet_ai_family_from_address.
func inetFamily(a *qapi.InetSocketAddress) string {
	switch {
	case a.IPv6 != nil && *a.IPv6, a.IPv4 != nil && !*a.IPv4:
		return "ip6"
	case a.IPv4 != nil && *a.IPv4, a.IPv6 != nil && !*a.IPv6:
		return "ip4"
	}
	return "ip"
}

func listenInetNBD(a *qapi.InetSocketAddress) (net.Listener, error) {
	resolveErr := func(why string) error {
		return fmt.Errorf("address resolution failed for %s:%s: %s", a.Host, a.Port, why)
	}
	port, err := strconv.Atoi(a.Port)
	if err != nil {
		if port, err = net.LookupPort("tcp", a.Port); err != nil {
			return nil, resolveErr("Servname not supported for ai_socktype")
		}
	}
	family := inetFamily(a)
	var ip net.IP
	if a.Host != "" {
		if ip = net.ParseIP(a.Host); ip == nil {
			if qapi.Deref(a.Numeric) {
				return nil, resolveErr("Name or service not known")
			}
			ips, err := net.DefaultResolver.LookupIP(context.Background(), family, a.Host)
			if err != nil || len(ips) == 0 {
				return nil, resolveErr("Name or service not known")
			}
			ip = ips[0]
		}
		if is4 := ip.To4() != nil; family == "ip4" && !is4 || family == "ip6" && is4 {
			return nil, resolveErr("Address family for hostname not supported")
		}
	}
	network := map[string]string{"ip": "tcp", "ip4": "tcp4", "ip6": "tcp6"}[family]
	var lc net.ListenConfig
	lc.SetMultipathTCP(qapi.Deref(a.MPTCP))
	last := port
	if a.To != nil && int(*a.To) > port && port != 0 {
		last = int(*a.To)
	}
	for p := port; ; p++ {
		host := ""
		if ip != nil {
			host = ip.String()
		}
		l, err := lc.Listen(context.Background(), network, net.JoinHostPort(host, strconv.Itoa(p)))
		if err == nil {
			return l, nil
		}
		if errors.Is(err, syscall.EADDRINUSE) {
			if p < last {
				continue
			}
			return nil, fmt.Errorf("Failed to find an available port: %s", blockdev.Strerror(syscall.EADDRINUSE))
		}
		var se *os.SyscallError
		if errors.As(err, &se) && se.Syscall == "listen" {
			return nil, fmt.Errorf("Failed to listen on socket: %s", blockdev.Strerror(se.Err))
		}
		return nil, fmt.Errorf("Failed to bind socket: %s", blockdev.Strerror(err))
	}
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
