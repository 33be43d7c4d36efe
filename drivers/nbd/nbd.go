// Package nbd implements the "nbd" protocol driver: a node whose data is
// an export of an NBD server (QEMU's block/nbd.c), reached through the
// client of package nbd over a unix or TCP (or vsock) socket.
//
// Options are QEMU 7.2's BlockdevOptionsNbd: server, export, tls-creds
// and tls-hostname (qbmond has no objects, so any tls-creds is unknown),
// x-dirty-bitmap (block status reads that metadata context instead of
// base:allocation: a dirty area reads as unallocated, as QEMU reports it
// to pull-mode backup clients), reconnect-delay and open-timeout.
package nbd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/internal/statuscache"
	proto "github.com/qbmond/qbmond/nbd"
)

func init() {
	blockdev.RegisterDriver("nbd", func() blockdev.Driver { return new(Driver) })
}

// maxTransfer is QEMU's NBD_MAX_BUFFER_SIZE: the most one read or write
// carries (and write-zeroes, which QEMU splits the same way).
const maxTransfer = 32 << 20

// Driver is one nbd node.
type Driver struct {
	server   blockdev.Options // the SocketAddress
	export   *string          // nil when not given
	client   *proto.Client
	info     proto.ExportInfo
	align    int64
	maxXfer  int64
	filename string

	// bsc remembers the last data extent the server reported, as QEMU
	// does for protocol nodes (its block-status cache): a status asked
	// inside it is answered without a request.
	bsc statuscache.Cache
}

// maxNameLen is the longest string NBD carries.
const maxNameLen = 4096

// Open parses the options in QEMU's order, connects and negotiates.
func (d *Driver) Open(ctx context.Context, oc *blockdev.OpenContext) error {
	o := oc.Options()
	server, err := o.Object("server")
	if err != nil {
		return err
	}
	if server == nil {
		return errors.New("NBD server address missing")
	}
	d.server = server
	typ, _, _ := server.String("type")
	if typ == "fd" {
		// QSD has no monitor to take descriptors from.
		return errors.New("only QEMU supports file descriptor passing")
	}
	if e, ok, err := o.String("export"); err != nil {
		return err
	} else if ok {
		if len(e) > maxNameLen {
			return errors.New("export name too long to send to server")
		}
		d.export = &e
	}
	if id, ok, err := o.String("tls-creds"); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("No TLS credentials with id '%s'", id)
	}
	bitmap, hasBitmap, err := o.String("x-dirty-bitmap")
	if err != nil {
		return err
	}
	if len(bitmap) > maxNameLen {
		return errors.New("x-dirty-bitmap query too long to send to server")
	}
	seconds := func(name string) (time.Duration, error) {
		v, _, err := o.Int(name)
		return time.Duration(uint32(v)) * time.Second, err
	}
	delay, err := seconds("reconnect-delay")
	if err != nil {
		return err
	}
	timeout, err := seconds("open-timeout")
	if err != nil {
		return err
	}
	meta := "base:allocation"
	if hasBitmap {
		meta = bitmap
	}
	export := ""
	if d.export != nil {
		export = *d.export
	}
	d.filename = exactFilename(server, d.export)
	c, err := proto.Connect(ctx, proto.ClientOptions{
		Dial:           func(ctx context.Context) (net.Conn, error) { return dial(ctx, server) },
		Export:         export,
		MetaContext:    meta,
		ReconnectDelay: delay,
		OpenTimeout:    timeout,
		Log:            oc.Log().With().Str("node", oc.Node().Name()).Str("driver", "nbd").Logger(),
	})
	if err != nil {
		return err
	}
	d.client, d.info = c, c.Info()
	fail := func(errno syscall.Errno) error {
		c.Close()
		return fmt.Errorf("Could not open image: %s", blockdev.Strerror(errno))
	}
	if hasBitmap && !d.info.MetaContext {
		return fail(syscall.EINVAL)
	}
	if d.info.ReadOnly() && !oc.ReadOnly() {
		if !oc.AutoReadOnly() {
			return fail(syscall.EACCES)
		}
		oc.SetReadOnly()
	}
	// The request alignment: the server's minimum block size; without
	// one, 1 where a sector would not fit the export or block status
	// must stay exact, else a sector (QEMU's choice for old servers).
	d.align = int64(d.info.MinBlock)
	if d.align == 0 {
		d.align = 512
		if d.info.Size%512 != 0 || d.info.MetaContext {
			d.align = 1
		}
	}
	d.maxXfer = maxTransfer
	if m := int64(d.info.MaxBlock); m > 0 && m < d.maxXfer {
		d.maxXfer = m
	}
	return nil
}

// dial connects to a SocketAddress with QEMU's messages.
func dial(ctx context.Context, s blockdev.Options) (net.Conn, error) {
	typ, _, _ := s.String("type")
	switch typ {
	case "unix":
		path, _, _ := s.String("path")
		addr := path
		if abstract, _ := s.Bool("abstract", false); abstract {
			addr = "@" + path
		}
		var dl net.Dialer
		c, err := dl.DialContext(ctx, "unix", addr)
		if err != nil {
			return nil, fmt.Errorf("Failed to connect to '%s': %s", path, blockdev.Strerror(err))
		}
		return c, nil
	case "inet":
		return dialInet(ctx, s)
	case "vsock":
		return dialVsock(s)
	}
	return nil, fmt.Errorf("unsupported socket address type '%s'", typ)
}

// dialInet connects to host:port, trying each address the host resolves
// to. As QSD's client does, numeric, ipv4 and ipv6 do not restrict what is
// tried, and to is for servers only.
func dialInet(ctx context.Context, s blockdev.Options) (net.Conn, error) {
	host, _, _ := s.String("host")
	port, _, _ := s.String("port")
	keepAlive, err := s.Bool("keep-alive", false)
	if err != nil {
		return nil, err
	}
	mptcp, err := s.Bool("mptcp", false)
	if err != nil {
		return nil, err
	}
	resolveErr := func(msg string) error {
		return fmt.Errorf("address resolution failed for %s:%s: %s", host, port, msg)
	}
	p, err := net.DefaultResolver.LookupPort(ctx, "tcp", port)
	if err != nil {
		return nil, resolveErr("Servname not supported for ai_socktype")
	}
	var ips []net.IP
	if ip := net.ParseIP(host); ip != nil {
		ips = []net.IP{ip}
	} else {
		addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		if err != nil {
			var de *net.DNSError
			if errors.As(err, &de) && de.IsTemporary {
				return nil, resolveErr("Temporary failure in name resolution")
			}
			return nil, resolveErr("Name or service not known")
		}
		for _, a := range addrs {
			ips = append(ips, a.IP)
		}
	}
	var last error = syscall.ECONNREFUSED
	for _, ip := range ips {
		dl := net.Dialer{KeepAlive: -1}
		if keepAlive {
			dl.KeepAlive = 0
		}
		dl.SetMultipathTCP(mptcp)
		c, err := dl.DialContext(ctx, "tcp", net.JoinHostPort(ip.String(), strconv.Itoa(p)))
		if err == nil {
			return c, nil
		}
		last = err
	}
	return nil, fmt.Errorf("Failed to connect to '%s:%s': %s", host, port, blockdev.Strerror(last))
}

func dialVsock(s blockdev.Options) (net.Conn, error) {
	cidS, _, _ := s.String("cid")
	portS, _, _ := s.String("port")
	cid, err := strconv.ParseUint(cidS, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("Failed to parse cid '%s'", cidS)
	}
	port, err := strconv.ParseUint(portS, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("Failed to parse port '%s'", portS)
	}
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		if err = unix.Connect(fd, &unix.SockaddrVM{CID: uint32(cid), Port: uint32(port)}); err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("Failed to connect to '%s:%s': %s", cidS, portS, blockdev.Strerror(err))
	}
	f := os.NewFile(uintptr(fd), "vsock")
	defer f.Close()
	return net.FileConn(f)
}

// exactFilename is QEMU's pseudo file name for an NBD node, "" where
// only a json: name can describe it.
func exactFilename(s blockdev.Options, export *string) string {
	typ, _, _ := s.String("type")
	var name string
	switch typ {
	case "unix":
		path, _, _ := s.String("path")
		if export != nil {
			name = "nbd+unix:///" + *export + "?socket=" + path
		} else {
			name = "nbd+unix://?socket=" + path
		}
	case "inet":
		if s.Has("ipv4") || s.Has("ipv6") || s.Has("to") {
			return ""
		}
		host, _, _ := s.String("host")
		port, _, _ := s.String("port")
		name = "nbd://" + host + ":" + port
		if export != nil {
			name += "/" + *export
		}
	default:
		return ""
	}
	if len(name) >= 4096 {
		return "" // does not fit QEMU's exact_filename
	}
	return name
}

// Close disconnects.
func (d *Driver) Close() error { return d.client.Close() }

// Read reads p at off; the part past the export's end (the node is
// rounded up to whole sectors) reads as zeroes.
func (d *Driver) Read(ctx context.Context, off int64, p []byte) error {
	if off >= d.info.Size {
		clear(p)
		return nil
	}
	if tail := off + int64(len(p)) - d.info.Size; tail > 0 {
		clear(p[int64(len(p))-tail:])
		p = p[:int64(len(p))-tail]
	}
	return d.client.Read(ctx, off, p)
}

// Write writes p at off, with FUA when asked (emulated with a flush when
// the server does not take it).
func (d *Driver) Write(ctx context.Context, off int64, p []byte, flags blockdev.ReqFlags) error {
	fua := flags&blockdev.ReqFUA != 0
	if err := d.client.Write(ctx, off, p, fua && d.info.CanFUA()); err != nil {
		return err
	}
	return d.emulateFUA(ctx, fua)
}

func (d *Driver) emulateFUA(ctx context.Context, fua bool) error {
	if fua && !d.info.CanFUA() {
		return d.Flush(ctx)
	}
	return nil
}

// SupportedWriteFlags: FUA (sent to the server, or emulated).
func (d *Driver) SupportedWriteFlags() blockdev.ReqFlags { return blockdev.ReqFUA }

// WriteZeroes sends NBD_CMD_WRITE_ZEROES: without ReqMayUnmap with
// NBD_CMD_FLAG_NO_HOLE, with ReqNoFallback with NBD_CMD_FLAG_FAST_ZERO
// (refused when the server cannot zero fast, as QEMU does). A server
// without write-zeroes gets zero buffers, unless ReqNoFallback.
func (d *Driver) WriteZeroes(ctx context.Context, off, n int64, flags blockdev.ReqFlags) error {
	defer d.bsc.ForgetRange(off, n)
	noFallback := flags&blockdev.ReqNoFallback != 0
	fua := flags&blockdev.ReqFUA != 0
	if !d.info.CanWriteZeroes() || noFallback && !d.info.CanFastZero() {
		if noFallback {
			return blockdev.ErrNotSupported
		}
		zero := make([]byte, min(n, d.maxXfer))
		for n > 0 {
			k := min(n, int64(len(zero)))
			if err := d.client.Write(ctx, off, zero[:k], fua && d.info.CanFUA()); err != nil {
				return err
			}
			off, n = off+k, n-k
		}
		return d.emulateFUA(ctx, fua)
	}
	for n > 0 {
		k := min(n, d.maxXfer)
		err := d.client.WriteZeroes(ctx, off, k, flags&blockdev.ReqMayUnmap != 0, noFallback, fua && d.info.CanFUA())
		if err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return d.emulateFUA(ctx, fua)
}

// Discard sends NBD_CMD_TRIM when the server takes it.
func (d *Driver) Discard(ctx context.Context, off, n int64) error {
	defer d.bsc.ForgetRange(off, n)
	if !d.info.CanTrim() {
		return nil
	}
	return d.client.Trim(ctx, off, n, false)
}

// Flush sends NBD_CMD_FLUSH when the server takes it.
func (d *Driver) Flush(ctx context.Context) error {
	if !d.info.CanFlush() {
		return nil
	}
	return d.client.Flush(ctx)
}

// BlockStatus asks the server for the status of a prefix of the range;
// past the export's end (in the node's last sector) the node reads as
// zeroes.
func (d *Driver) BlockStatus(ctx context.Context, off, n int64) (blockdev.BlockStatus, error) {
	if off >= d.info.Size {
		return blockdev.BlockStatus{Flags: blockdev.StatusZero, Length: n}, nil
	}
	cached, gen := d.bsc.Lookup(off)
	if cached > 0 {
		return blockdev.BlockStatus{Flags: blockdev.StatusData, Length: min(cached, n)}, nil
	}
	e, err := d.client.BlockStatus(ctx, off, min(n, d.info.Size-off))
	if err != nil {
		return blockdev.BlockStatus{}, err
	}
	var st blockdev.BlockStatus
	st.Length = e.Length
	if !e.Hole {
		st.Flags |= blockdev.StatusData
	}
	if e.Zero {
		st.Flags |= blockdev.StatusZero
	}
	if st.Flags == blockdev.StatusData {
		d.bsc.Fill(gen, off, off+e.Length)
	}
	return st, nil
}

// Length is the export's size.
func (d *Driver) Length(ctx context.Context) (int64, error) { return d.info.Size, nil }

// Info: an NBD node has no driver information.
func (d *Driver) Info(ctx context.Context) (blockdev.DriverInfo, error) {
	return blockdev.DriverInfo{}, blockdev.ErrNotSupported
}

// Protocol marks nbd as a protocol driver.
func (d *Driver) Protocol() {}

// ExactFilename is nbd+unix:///EXPORT?socket=PATH or
// nbd://HOST:PORT/EXPORT, or "" for a json: name.
func (d *Driver) ExactFilename() string { return d.filename }

// StrongOptions: the server and export decide what the node is. The
// server's members are listed one by one, in the order that prints them
// as QSD does (port before host).
func (d *Driver) StrongOptions() []string {
	return []string{"server.type", "server.path", "server.abstract", "server.tight",
		"server.host", "server.port", "server.numeric", "server.to", "server.ipv4", "server.ipv6",
		"server.keep-alive", "server.mptcp", "server.cid", "server.str",
		"export", "tls-creds", "tls-hostname"}
}

// RequestAlignment is the server's minimum block size (see Open).
func (d *Driver) RequestAlignment() int64 { return d.align }

// MaxTransfer is the server's maximum block size, at most 32 MiB.
func (d *Driver) MaxTransfer() int64 { return d.maxXfer }

// Truncate cannot change an export's size: only a no-op succeeds.
func (d *Driver) Truncate(ctx context.Context, size int64, exact bool) error {
	switch {
	case size != d.info.Size && exact:
		return &sizeError{"Cannot resize NBD nodes", syscall.ENOTSUP}
	case size > d.info.Size:
		return &sizeError{"Cannot grow NBD nodes", syscall.EINVAL}
	}
	return nil
}

// sizeError is a refused resize: QEMU's message, and its errno.
type sizeError struct {
	msg   string
	errno syscall.Errno
}

func (e *sizeError) Error() string { return e.msg }
func (e *sizeError) Unwrap() error { return e.errno }

// ReopenPrepare refuses to make a node of a read-only export writable.
func (d *Driver) ReopenPrepare(ctx context.Context, rs *blockdev.ReopenState) error {
	if !rs.ReadOnly && d.info.ReadOnly() {
		return errors.New("Can't reopen read-only NBD mount as read/write")
	}
	return nil
}

// ReopenCommit has nothing to change.
func (d *Driver) ReopenCommit(rs *blockdev.ReopenState) {}

// ReopenAbort has nothing to undo.
func (d *Driver) ReopenAbort(rs *blockdev.ReopenState) {}
