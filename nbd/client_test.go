package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

func unixDialer(sock string) func(ctx context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
}

func connectTo(t testing.TB, sock, export string, o ClientOptions) *Client {
	t.Helper()
	o.Dial, o.Export = unixDialer(sock), export
	c, err := Connect(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestClientRoundTrip(t *testing.T) {
	m := newMem(1 << 20)
	_, sock := startServer(t, &Export{Name: "m", Backend: m, Writable: true})
	c := connectTo(t, sock, "m", ClientOptions{MetaContext: ctxBaseAllocation})
	info := c.Info()
	if info.Size != 1<<20 || !info.Structured || !info.MetaContext || info.ReadOnly() ||
		!info.CanFUA() || !info.CanTrim() || !info.CanFastZero() || !info.CanCache() || info.MinBlock != 1 {
		t.Fatalf("info %+v", info)
	}
	ctx := t.Context()
	data := bytes.Repeat([]byte("qbmond!"), 3000)
	if err := c.Write(ctx, 8192, data, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data)+100)
	if err := c.Read(ctx, 8192-50, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[50:50+len(data)], data) || !bytes.Equal(got[:50], make([]byte, 50)) {
		t.Fatal("read back differs")
	}
	// The first block is a hole; the written blocks are data.
	e, err := c.BlockStatus(ctx, 0, 1<<20)
	if err != nil || e != (Extent{Length: 8192, Hole: true, Zero: true}) {
		t.Fatalf("status at 0: %+v %v", e, err)
	}
	e, err = c.BlockStatus(ctx, 8192, 1<<20-8192)
	if err != nil || e.Hole || e.Zero || e.Length != 24576 {
		t.Fatalf("status at 8192: %+v %v", e, err)
	}
	// Fast zeroing without a hole is refused by this backend (ENOTSUP).
	err = c.WriteZeroes(ctx, 8192, 4096, false, true, false)
	var re *RequestError
	if !errors.As(err, &re) || re.Errno != syscall.ENOTSUP {
		t.Fatalf("fast zero: %v", err)
	}
	if err := c.WriteZeroes(ctx, 8192, 4096, true, false, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Trim(ctx, 12288, 8192, false); err != nil {
		t.Fatal(err)
	}
	if err := c.Cache(ctx, 0, 4096); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.snapshot(8192, 12288), make([]byte, 12288)) {
		t.Fatal("zeroed and trimmed range is not zero")
	}
	// Past the end: the server's error, with its errno.
	if err := c.Read(ctx, 1<<20-10, make([]byte, 20)); !errors.As(err, &re) || re.Errno != syscall.EINVAL ||
		re.Message != "operation past EOF; From: 1048566, Len: 20, Size: 1048576" {
		t.Fatalf("read past the end: %v", err)
	}
}

// Many requests share the connection, answered in any order.
func TestClientConcurrent(t *testing.T) {
	m := newMem(4 << 20)
	_, sock := startServer(t, &Export{Name: "", Backend: m, Writable: true})
	c := connectTo(t, sock, "", ClientOptions{})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte(i + 1)}, 65536)
			off := int64(i) * 65536
			if err := c.Write(t.Context(), off, p, false); err != nil {
				errs <- err
				return
			}
			q := make([]byte, len(p))
			if err := c.Read(t.Context(), off, q); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(p, q) {
				errs <- fmt.Errorf("block %d differs", i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestClientHandshakeErrors(t *testing.T) {
	m := newMem(4096)
	m.readOnly = true
	_, sock := startServer(t, &Export{Name: "ro", Backend: m})
	_, err := Connect(t.Context(), ClientOptions{Dial: unixDialer(sock), Export: "nope"})
	if err == nil || err.Error() != "Requested export not available" {
		t.Errorf("unknown export: %v", err)
	}
	// A dirty bitmap the export does not have: no context.
	c := connectTo(t, sock, "ro", ClientOptions{MetaContext: "qemu:dirty-bitmap:b0"})
	if c.Info().MetaContext || !c.Info().ReadOnly() {
		t.Errorf("info %+v", c.Info())
	}
	// Open timeout: retried until the time is up, then the dial's error.
	start := time.Now()
	_, err = Connect(t.Context(), ClientOptions{Dial: unixDialer(sock + ".none"), OpenTimeout: 1500 * time.Millisecond})
	if !errors.Is(err, syscall.ENOENT) || time.Since(start) < 1400*time.Millisecond {
		t.Errorf("open timeout: %v after %v", err, time.Since(start))
	}
}

// The client reconnects to a server that comes back within the reconnect
// delay: a request made meanwhile waits and succeeds. Without a server
// after the delay, requests fail with EIO.
func TestClientReconnect(t *testing.T) {
	m := newMem(1 << 16)
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	serve := func() (*Server, chan error) {
		s := NewServer(zeroLog())
		if err := s.AddExport(&Export{Name: "m", Backend: m, Writable: true}); err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.Serve(l) }()
		return s, done
	}
	s, done := serve()
	c := connectTo(t, sock, "m", ClientOptions{ReconnectDelay: 4 * time.Second})
	ctx := t.Context()
	if err := c.Write(ctx, 0, []byte("before"), false); err != nil {
		t.Fatal(err)
	}
	s.Close()
	<-done
	// The server is gone: this write waits for the next one.
	res := make(chan error, 1)
	go func() { res <- c.Write(ctx, 100, []byte("during"), false) }()
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-res:
		t.Fatalf("write returned while no server: %v", err)
	default:
	}
	s, done = serve()
	if err := <-res; err != nil {
		t.Fatalf("write across the restart: %v", err)
	}
	if got := m.snapshot(100, 6); string(got) != "during" {
		t.Fatalf("got %q", got)
	}
	s.Close()
	<-done
	start := time.Now()
	err := c.Read(ctx, 0, make([]byte, 6))
	if !errors.Is(err, syscall.EIO) || time.Since(start) < 3*time.Second {
		t.Fatalf("read with no server: %v after %v", err, time.Since(start))
	}
	// After the delay, requests fail at once.
	start = time.Now()
	if err := c.Flush(ctx); !errors.Is(err, syscall.EIO) || time.Since(start) > time.Second {
		t.Fatalf("flush after the delay: %v after %v", err, time.Since(start))
	}
}

// fakeServer negotiates like a real server (structured replies,
// base:allocation with id 7, size 1 MiB) and then lets script answer the
// client's requests on the raw connection.
func fakeServer(t testing.TB, script func(nc net.Conn, br io.Reader)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				if fakeHandshake(nc) == nil {
					script(nc, nc)
				}
			}()
		}
	}()
	return sock
}

func fakeHandshake(nc net.Conn) error {
	p := be.AppendUint64(nil, nbdMagic)
	p = be.AppendUint64(p, optMagic)
	p = be.AppendUint16(p, flagFixedNewstyle|flagNoZeroes)
	if _, err := nc.Write(p); err != nil {
		return err
	}
	var b [4]byte
	if _, err := io.ReadFull(nc, b[:]); err != nil {
		return err
	}
	for {
		var h [16]byte
		if _, err := io.ReadFull(nc, h[:]); err != nil {
			return err
		}
		opt := be.Uint32(h[8:])
		data := make([]byte, be.Uint32(h[12:]))
		if _, err := io.ReadFull(nc, data); err != nil {
			return err
		}
		reply := func(typ uint32, d []byte) {
			p := be.AppendUint64(nil, repMagic)
			p = be.AppendUint32(p, opt)
			p = be.AppendUint32(p, typ)
			p = be.AppendUint32(p, uint32(len(d)))
			nc.Write(append(p, d...))
		}
		switch opt {
		case optSetMetaContext:
			reply(repMetaContext, append(be.AppendUint32(nil, 7), ctxBaseAllocation...))
			reply(repAck, nil)
		case optGo:
			d := be.AppendUint16(nil, infoExport)
			d = be.AppendUint64(d, 1<<20)
			d = be.AppendUint16(d, flagHasFlags|flagSendFlush|flagSendWriteZeroes|flagSendTrim)
			reply(repInfo, d)
			reply(repAck, nil)
			return nil
		default:
			reply(repAck, nil)
		}
	}
}

// readRequest reads one request header (and a write's payload).
func readRequest(br io.Reader) (typ uint16, cookie, off uint64, length uint32, err error) {
	var h [28]byte
	if _, err = io.ReadFull(br, h[:]); err != nil {
		return
	}
	typ, cookie, off, length = be.Uint16(h[6:]), be.Uint64(h[8:]), be.Uint64(h[16:]), be.Uint32(h[24:])
	if typ == cmdWrite {
		_, err = io.CopyN(io.Discard, br, int64(length))
	}
	return
}

func chunkMsgBytes(cookie uint64, flags, typ uint16, payload []byte) []byte {
	return append(chunkHeader(cookie, flags, typ, len(payload)), payload...)
}

// Bad servers: each answers the first request wrongly. The request fails
// (EINVAL for a broken protocol, EIO for a lost connection), the client
// does not hang or crash, and later requests fail with EIO.
func TestClientBadServers(t *testing.T) {
	for name, tc := range map[string]struct {
		answer func(cookie, off uint64, length uint32) []byte
		want   syscall.Errno
	}{
		"truncated reply": {func(c, o uint64, l uint32) []byte {
			return chunkHeader(c, replyFlagDone, replyTypeOffsetData, int(l)+8)[:10]
		}, syscall.EIO},
		"truncated data": {func(c, o uint64, l uint32) []byte {
			return append(chunkHeader(c, replyFlagDone, replyTypeOffsetData, int(l)+8), be.AppendUint64(nil, o)...)
		}, syscall.EIO},
		"wrong cookie": {func(c, o uint64, l uint32) []byte { return chunkMsgBytes(c+1000, replyFlagDone, replyTypeNone, nil) }, syscall.EINVAL},
		"oversized chunk": {func(c, o uint64, l uint32) []byte {
			return chunkHeader(c, replyFlagDone, replyTypeOffsetData, int(l)+9+1<<20)
		}, syscall.EINVAL},
		"oversized error": {func(c, o uint64, l uint32) []byte { return chunkHeader(c, replyFlagDone, replyTypeError, 1<<30) }, syscall.EINVAL},
		"chunk outside": {func(c, o uint64, l uint32) []byte {
			return chunkMsgBytes(c, replyFlagDone, replyTypeOffsetHole, be.AppendUint32(be.AppendUint64(nil, o+1), l))
		}, syscall.EINVAL},
		"bad magic":       {func(c, o uint64, l uint32) []byte { return make([]byte, 16) }, syscall.EINVAL},
		"simple for read": {func(c, o uint64, l uint32) []byte { return simpleHeader(c, 0) }, syscall.EINVAL},
		"error zero": {func(c, o uint64, l uint32) []byte {
			return chunkMsgBytes(c, replyFlagDone, replyTypeError, make([]byte, 6))
		}, syscall.EINVAL},
		"unknown type": {func(c, o uint64, l uint32) []byte { return chunkMsgBytes(c, replyFlagDone, 42, nil) }, syscall.EINVAL},
		"hang up":      {func(c, o uint64, l uint32) []byte { return nil }, syscall.EIO},
		"error message": {func(c, o uint64, l uint32) []byte {
			return chunkMsgBytes(c, replyFlagDone, replyTypeError, []byte{0, 0, 0, 28, 0, 3, 'n', 'o', '!'})
		}, syscall.ENOSPC},
	} {
		t.Run(name, func(t *testing.T) {
			sock := fakeServer(t, func(nc net.Conn, br io.Reader) {
				_, cookie, off, length, err := readRequest(br)
				if err != nil {
					return
				}
				nc.Write(tc.answer(cookie, off, length))
			})
			c := connectTo(t, sock, "", ClientOptions{})
			done := make(chan error, 1)
			go func() { done <- c.Read(t.Context(), 4096, make([]byte, 4096)) }()
			select {
			case err := <-done:
				if !errors.Is(err, tc.want) {
					t.Fatalf("read: %v, want %v", err, tc.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("read hangs")
			}
			if tc.want != syscall.EINVAL {
				// The connection was lost, or is intact: the client
				// may have connected again already.
				return
			}
			if err := c.Flush(t.Context()); !errors.Is(err, syscall.EIO) {
				t.Fatalf("flush after: %v", err)
			}
		})
	}
}

// Replies come back in any order and in several chunks.
func TestClientOutOfOrderChunks(t *testing.T) {
	sock := fakeServer(t, func(nc net.Conn, br io.Reader) {
		_, c1, o1, l1, err := readRequest(br)
		if err != nil {
			return
		}
		_, c2, _, _, err := readRequest(br)
		if err != nil {
			return
		}
		// The block status first, then the read in two chunks.
		st := be.AppendUint32(nil, 7)
		st = be.AppendUint32(st, 512)
		st = be.AppendUint32(st, stateHole|stateZero)
		st = be.AppendUint32(st, 512)
		st = be.AppendUint32(st, 0)
		nc.Write(chunkMsgBytes(c2, replyFlagDone, replyTypeBlockStatus, st))
		half := l1 / 2
		d := be.AppendUint64(nil, o1)
		nc.Write(chunkMsgBytes(c1, 0, replyTypeOffsetData, append(d, bytes.Repeat([]byte{'x'}, int(half))...)))
		nc.Write(chunkMsgBytes(c1, replyFlagDone, replyTypeOffsetHole, be.AppendUint32(be.AppendUint64(nil, o1+uint64(half)), l1-half)))
	})
	c := connectTo(t, sock, "", ClientOptions{MetaContext: ctxBaseAllocation})
	buf := bytes.Repeat([]byte{'?'}, 1000)
	rd := make(chan error, 1)
	go func() { rd <- c.Read(t.Context(), 0, buf) }()
	time.Sleep(50 * time.Millisecond) // the read goes first
	e, err := c.BlockStatus(t.Context(), 0, 4096)
	if err != nil || e != (Extent{Length: 512, Hole: true, Zero: true}) {
		t.Fatalf("status %+v %v", e, err)
	}
	if err := <-rd; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, append(bytes.Repeat([]byte{'x'}, 500), make([]byte, 500)...)) {
		t.Fatalf("read %q", buf)
	}
}

// A server that accepts and never answers the handshake: the open gives up
// at open-timeout.
func TestClientOpenTimeoutSilentServer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "silent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	start := time.Now()
	_, err = Connect(t.Context(), ClientOptions{Dial: unixDialer(sock), OpenTimeout: time.Second})
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("open: %v after %v", err, time.Since(start))
	}
}
