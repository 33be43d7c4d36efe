package nbd

import (
	"bytes"
	"errors"
	"io"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestOptions(t *testing.T) {
	m := newMem(1 << 20)
	_, sock := startServer(t,
		&Export{Name: "a", Description: "first", Backend: m, Writable: true, AllocationDepth: true},
		&Export{Name: "b", Backend: newMem(4096)})
	cl := dial(t, sock)

	r := cl.opt(optList, nil)
	var names []string
	for _, x := range r[:len(r)-1] {
		if x.typ != repServer {
			t.Fatalf("list reply type %#x", x.typ)
		}
		n := be.Uint32(x.data)
		names = append(names, string(x.data[4:4+n])+"|"+string(x.data[4+n:]))
	}
	if want := []string{"a|first", "b|"}; !slices.Equal(names, want) || r[len(r)-1].typ != repAck {
		t.Fatalf("list = %q, want %q", names, want)
	}

	cases := []struct {
		name string
		opt  uint32
		data []byte
		want uint32
	}{
		{"list with data", optList, []byte{1}, repErrInvalid},
		{"unknown option", 99, []byte("xyz"), repErrUnsup},
		{"starttls", optStartTLS, nil, repErrPolicy},
		{"info unknown export", optInfo, nameData("zz", 0, 0), repErrUnknown},
		{"info short", optInfo, []byte{0, 0}, repErrInvalid},
		{"info name too long for data", optInfo, append(be.AppendUint32(nil, 100), 0, 0), repErrInvalid},
		{"info bad request count", optInfo, nameData("a", 0, 2, 0, 1), repErrInvalid},
		{"set meta before structured", optSetMetaContext, metaData("a"), repErrInvalid},
		{"structured with data", optStructuredReply, []byte{0}, repErrInvalid},
	}
	for _, c := range cases {
		r := cl.opt(c.opt, c.data)
		if len(r) != 1 || r[0].typ != c.want {
			t.Errorf("%s: replies %+v, want one of type %#x", c.name, r, c.want)
		}
	}

	// INFO reports size, flags, name, description and block sizes.
	r = cl.opt(optInfo, nameData("a", 0, 2, 0, infoName, 0, infoDescription))
	infos := map[uint16][]byte{}
	for _, x := range r[:len(r)-1] {
		infos[be.Uint16(x.data)] = x.data[2:]
	}
	if got := be.Uint64(infos[infoExport]); got != 1<<20 {
		t.Errorf("size %d", got)
	}
	fl := be.Uint16(infos[infoExport][8:])
	if want := uint16(flagHasFlags | flagSendFlush | flagSendFUA | flagSendTrim | flagSendWriteZeroes | flagSendFastZero | flagCanMultiConn | flagSendCache); fl != want {
		t.Errorf("flags %#x, want %#x", fl, want)
	}
	if string(infos[infoName]) != "a" || string(infos[infoDescription]) != "first" {
		t.Errorf("name/description %q %q", infos[infoName], infos[infoDescription])
	}
	if bs := infos[infoBlockSize]; len(bs) != 12 || be.Uint32(bs) != 1 || be.Uint32(bs[4:]) != 4096 || be.Uint32(bs[8:]) != 32<<20 {
		t.Errorf("block sizes % x", bs)
	}

	if r := cl.opt(optStructuredReply, nil); r[0].typ != repAck {
		t.Fatal("structured refused")
	}
	if r := cl.opt(optStructuredReply, nil); r[0].typ != repErrInvalid {
		t.Error("second structured reply accepted")
	}
	listCtx := func(export string, q ...string) []string {
		r := cl.opt(optListMetaContext, metaData(export, q...))
		if r[len(r)-1].typ != repAck {
			t.Fatalf("list meta %q %q: %+v", export, q, r)
		}
		var out []string
		for _, x := range r[:len(r)-1] {
			out = append(out, string(x.data[4:]))
		}
		return out
	}
	for _, c := range []struct {
		export string
		q      []string
		want   []string
	}{
		{"a", nil, []string{ctxBaseAllocation, ctxAllocDepth}},
		{"b", nil, []string{ctxBaseAllocation}},
		{"a", []string{"base:"}, []string{ctxBaseAllocation}},
		{"a", []string{"qemu:"}, []string{ctxAllocDepth}},
		{"b", []string{"qemu:"}, nil},
		{"a", []string{"x-other:foo", "base:nothing"}, nil},
		{"a", []string{"qemu:allocation-depth"}, []string{ctxAllocDepth}},
	} {
		if got := listCtx(c.export, c.q...); !slices.Equal(got, c.want) {
			t.Errorf("list meta %q %q = %q, want %q", c.export, c.q, got, c.want)
		}
	}
	// A bare namespace selects nothing.
	if r := cl.opt(optSetMetaContext, metaData("a", "base:")); len(r) != 1 || r[0].typ != repAck {
		t.Errorf("set base: = %+v", r)
	}
	if r := cl.opt(optSetMetaContext, append(metaData("a", "base:allocation"), 0)); r[0].typ != repErrInvalid {
		t.Errorf("set with trailing garbage = %+v", r)
	}
	// ABORT is acknowledged and the server hangs up.
	if r := cl.opt(optAbort, nil); r[0].typ != repAck {
		t.Errorf("abort = %+v", r)
	}
	cl.expectClosed()
}

func TestExportNameOption(t *testing.T) {
	_, sock := startServer(t, &Export{Name: "x", Backend: newMem(8192)})
	cl := dial(t, sock)
	cl.sendOpt(optExportName, []byte("x"))
	var p [10]byte // no zero padding: NO_ZEROES was negotiated
	cl.readFull(p[:])
	if be.Uint64(p[:]) != 8192 || be.Uint16(p[8:])&flagReadOnly == 0 {
		t.Fatalf("export name reply % x", p)
	}
	cl.request(cmdRead, 0, 7, 0, 16, nil)
	if h, e := cl.simpleReply(); h != 7 || e != 0 {
		t.Fatalf("read reply %d %d", h, e)
	}
	var d [16]byte
	cl.readFull(d[:])

	// An unknown name ends the session.
	cl2 := dial(t, sock)
	cl2.sendOpt(optExportName, []byte("nope"))
	cl2.expectClosed()
}

func TestTransmissionErrors(t *testing.T) {
	rw, ro := newMem(64<<10), newMem(64<<10)
	_, sock := startServer(t,
		&Export{Name: "rw", Backend: rw, Writable: true},
		&Export{Name: "ro", Backend: ro})
	for _, structured := range []bool{false, true} {
		cl := dial(t, sock)
		cl.goExport("rw", structured)
		clro := dial(t, sock)
		if fl, _ := clro.goExport("ro", structured); fl&flagReadOnly == 0 {
			t.Fatal("read-only export without NBD_FLAG_READ_ONLY")
		}
		cases := []struct {
			name  string
			cl    *client
			typ   uint16
			flags uint16
			off   uint64
			n     uint32
			data  []byte
			want  uint32
		}{
			// QEMU refuses every malformed request with EINVAL.
			{"write past end", cl, cmdWrite, 0, 64<<10 - 2, 4, []byte("abcd"), errInval},
			{"write zeroes past end", cl, cmdWriteZeroes, 0, 1 << 40, 1, nil, errInval},
			{"read past end", cl, cmdRead, 0, 64 << 10, 1, nil, errInval},
			{"trim past end", cl, cmdTrim, 0, 1<<64 - 1, 2, nil, errInval},
			{"block status without contexts", cl, cmdBlockStatus, 0, 0, 512, nil, errInval},
			{"unknown command", cl, 42, 0, 0, 0, nil, errInval},
			{"unknown flag", cl, cmdFlush, 1 << 9, 0, 0, nil, errInval},
			{"no-hole on write", cl, cmdWrite, cmdFlagNoHole, 0, 2, []byte("zz"), errInval},
			{"flush with length", cl, cmdFlush, 0, 0, 5, nil, 0},
			{"flush past end", cl, cmdFlush, 0, 64 << 10, 5, nil, errInval},
			{"write read-only", clro, cmdWrite, 0, 0, 4, []byte("abcd"), errInval},
			{"trim read-only", clro, cmdTrim, 0, 0, 4096, nil, errInval},
			{"write zeroes read-only", clro, cmdWriteZeroes, 0, 0, 4096, nil, errInval},
		}
		for i, c := range cases {
			c.cl.request(c.typ, c.flags, uint64(i), c.off, c.n, c.data)
			ch := c.cl.replyChunks(uint64(i))
			last := ch[len(ch)-1]
			if last.errno != c.want {
				t.Errorf("structured=%v %s: errno %d, want %d (%v)", structured, c.name, last.errno, c.want, ch)
			}
			if structured && c.want != 0 && last.magic != structReplyMagic {
				t.Errorf("%s: error as simple reply with structured replies", c.name)
			}
		}
		// The connection still works after all of that.
		cl.request(cmdFlush, 0, 100, 0, 0, nil)
		if ch := cl.replyChunks(100); ch[0].errno != 0 {
			t.Errorf("flush after errors: %v", ch)
		}
	}
	if !bytes.Equal(rw.snapshot(64<<10-4, 4), make([]byte, 4)) || !bytes.Equal(ro.snapshot(0, 4), make([]byte, 4)) {
		t.Error("a refused write changed the data")
	}
}

func TestReadErrorStructured(t *testing.T) {
	m := newMem(1 << 16)
	m.failRead = syscall.EIO
	m.alloc[1] = true // data so that reads reach ReadAt
	_, sock := startServer(t, &Export{Name: "m", Backend: m})
	cl := dial(t, sock)
	cl.goExport("m", true)
	// A read that may be split (no DF) fails with an error chunk...
	cl.request(cmdRead, cmdFlagDF, 1, 0, 1<<14, nil)
	ch := cl.replyChunks(1)
	if last := ch[len(ch)-1]; len(ch) != 1 || last.typ != replyTypeError || last.errno != errIO ||
		string(last.payload[6:]) != "reading from file failed" {
		t.Fatalf("chunks %v", ch)
	}
	// ...while a split read whose data fails ends the connection after the
	// chunks before the failure, as QEMU does.
	cl.request(cmdRead, 0, 2, 0, 1<<14, nil)
	var hdr [20]byte
	cl.readFull(hdr[:])
	if typ := be.Uint16(hdr[6:]); typ != replyTypeOffsetHole {
		t.Fatalf("first chunk type %d, want a hole", typ)
	}
	cl.readFull(make([]byte, be.Uint32(hdr[16:])))
	cl.expectClosed()
}

func TestStructuredReadAndBlockStatus(t *testing.T) {
	m := newMem(1 << 20)
	pat := bytes.Repeat([]byte{0x5a}, 8192)
	m.WriteAt(t.Context(), pat, 65536, false)
	_, sock := startServer(t, &Export{Name: "m", Backend: m, AllocationDepth: true})
	cl := dial(t, sock)
	fl, _ := cl.goExport("m", true, ctxBaseAllocation, ctxAllocDepth)
	if fl&flagSendDF == 0 {
		t.Fatal("no NBD_FLAG_SEND_DF with structured replies")
	}

	// A read across hole, data, hole: assemble the chunks.
	assemble := func(ch []chunkMsg, off, n uint64) ([]byte, []uint16) {
		buf := bytes.Repeat([]byte{0xff}, int(n))
		var types []uint16
		for _, c := range ch {
			types = append(types, c.typ)
			switch c.typ {
			case replyTypeOffsetData:
				copy(buf[be.Uint64(c.payload)-off:], c.payload[8:])
			case replyTypeOffsetHole:
				clear(buf[be.Uint64(c.payload)-off:][:be.Uint32(c.payload[8:])])
			case replyTypeNone:
			default:
				t.Fatalf("chunk %v", c)
			}
		}
		return buf, types
	}
	want := m.snapshot(60000, 20000)
	cl.request(cmdRead, 0, 1, 60000, 20000, nil)
	got, types := assemble(cl.replyChunks(1), 60000, 20000)
	if !bytes.Equal(got, want) {
		t.Error("read data differs")
	}
	if !slices.Equal(types, []uint16{replyTypeOffsetHole, replyTypeOffsetData, replyTypeOffsetHole}) {
		t.Errorf("chunk types %v", types)
	}
	// With DF, one data chunk.
	cl.request(cmdRead, cmdFlagDF, 2, 60000, 20000, nil)
	got, types = assemble(cl.replyChunks(2), 60000, 20000)
	if !bytes.Equal(got, want) || !slices.Equal(types, []uint16{replyTypeOffsetData}) {
		t.Errorf("DF read: types %v, equal %v", types, bytes.Equal(got, want))
	}

	// Block status: one chunk per context.
	cl.request(cmdBlockStatus, 0, 3, 0, 1<<20, nil)
	ch := cl.replyChunks(3)
	got2 := map[uint32][]uint32{}
	for _, c := range ch {
		if c.typ != replyTypeBlockStatus {
			t.Fatalf("chunk %v", c)
		}
		var d []uint32
		for p := c.payload[4:]; len(p) > 0; p = p[4:] {
			d = append(d, be.Uint32(p))
		}
		got2[be.Uint32(c.payload)] = d
	}
	if want := []uint32{65536, 3, 8192, 0, 1<<20 - 65536 - 8192, 3}; !slices.Equal(got2[idBaseAllocation], want) {
		t.Errorf("base:allocation %v, want %v", got2[idBaseAllocation], want)
	}
	if want := []uint32{65536, 0, 8192, 1, 1<<20 - 65536 - 8192, 0}; !slices.Equal(got2[idAllocDepth], want) {
		t.Errorf("allocation depth %v, want %v", got2[idAllocDepth], want)
	}
	cl.request(cmdBlockStatus, cmdFlagReqOne, 4, 4096, 100, nil)
	for _, c := range cl.replyChunks(4) {
		if len(c.payload) != 12 || be.Uint32(c.payload[4:]) != 100 {
			t.Errorf("REQ_ONE chunk payload % x", c.payload)
		}
	}
}

func TestOutOfOrderReplies(t *testing.T) {
	m := newMem(1 << 20)
	m.gate, m.gateOff = make(chan struct{}), 0
	_, sock := startServer(t, &Export{Name: "m", Backend: m, Writable: true})
	cl := dial(t, sock)
	cl.goExport("m", false)
	cl.request(cmdRead, 0, 1, 0, 512, nil) // blocks in the backend
	cl.request(cmdWrite, 0, 2, 8192, 4, []byte("wxyz"))
	cl.request(cmdRead, 0, 3, 8192, 4, nil)
	// Handle 2 must be answered before the read of handle 1 is released;
	// handle 3 may race with it.
	seen := map[uint64]bool{}
	for !seen[2] {
		h, e := cl.simpleReply()
		if e != 0 || h == 1 {
			t.Fatalf("reply %d errno %d while handle 1 is blocked", h, e)
		}
		if h == 3 {
			var d [4]byte
			cl.readFull(d[:])
		}
		seen[h] = true
	}
	close(m.gate)
	for !seen[1] || !seen[3] {
		h, e := cl.simpleReply()
		if e != 0 {
			t.Fatalf("handle %d errno %d", h, e)
		}
		n := map[uint64]int{1: 512, 3: 4}[h]
		cl.readFull(make([]byte, n))
		seen[h] = true
	}
}

func TestManyRequestsInFlight(t *testing.T) {
	m := newMem(4 << 20)
	_, sock := startServer(t, &Export{Name: "m", Backend: m, Writable: true})
	cl := dial(t, sock)
	cl.goExport("m", true)
	const n = 200
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range n {
			cl.request(cmdWrite, cmdFlagFUA, uint64(i), uint64(i)*8192, 8192, bytes.Repeat([]byte{byte(i)}, 8192))
		}
	})
	seen := map[uint64]bool{}
	for range n {
		c := cl.anyReply()
		if c.errno != 0 || seen[c.handle] {
			t.Fatalf("reply %v", c)
		}
		seen[c.handle] = true
	}
	wg.Wait()
	for i := range n {
		if !bytes.Equal(m.snapshot(int64(i)*8192, 8192), bytes.Repeat([]byte{byte(i)}, 8192)) {
			t.Fatalf("block %d wrong", i)
		}
	}
}

func TestBadClientsOnlyHurtThemselves(t *testing.T) {
	m := newMem(1 << 20)
	_, sock := startServer(t, &Export{Name: "m", Backend: m, Writable: true})
	good := dial(t, sock)
	good.goExport("m", true)

	// A write larger than 32 MiB is refused, and the connection ends
	// before its payload is read.
	bad := dial(t, sock)
	bad.goExport("m", true)
	bad.request(cmdWrite, 0, 1, 0, 64<<20, nil)
	if ch := bad.replyChunks(1); ch[0].errno != errInval {
		t.Errorf("64 MiB write: %v", ch)
	}
	bad.expectClosed()

	// A write past the end is refused with EINVAL, as QEMU does.
	bad2 := dial(t, sock)
	bad2.goExport("m", true)
	bad2.request(cmdWrite, 0, 1, 0, 2<<20, make([]byte, 2<<20))
	if ch := bad2.replyChunks(1); ch[0].errno != errInval {
		t.Errorf("2 MiB write on 1 MiB export: %v", ch)
	}

	// Garbage instead of a request, and a client vanishing mid-payload.
	bad3 := dial(t, sock)
	bad3.goExport("m", false)
	bad3.write([]byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"))
	bad3.expectClosed()
	bad4 := dial(t, sock)
	bad4.goExport("m", false)
	bad4.request(cmdWrite, 0, 1, 0, 4096, []byte("short"))
	bad4.c.Close()
	// Garbage in the handshake.
	bad5 := dial(t, sock)
	bad5.write(bytes.Repeat([]byte{0xee}, 64))
	bad5.expectClosed()

	good.request(cmdWrite, 0, 9, 0, 3, []byte("abc"))
	if c := good.anyReply(); c.handle != 9 || c.errno != 0 {
		t.Fatalf("write reply %v", c)
	}
	good.request(cmdRead, 0, 10, 0, 3, nil)
	ch := good.replyChunks(10)
	if len(ch) != 1 || string(ch[0].payload[8:]) != "abc" {
		t.Fatalf("read reply %v", ch)
	}
}

func TestRemoveExport(t *testing.T) {
	s, sock := startServer(t, &Export{Name: "m", Backend: newMem(4096)}, &Export{Name: "idle", Backend: newMem(4096)})
	deleted := make(chan string, 4)
	s.OnExportDeleted = func(name string) { deleted <- name }

	if err := s.RemoveExport("idle", false); err != nil {
		t.Fatal(err)
	}
	if got := <-deleted; got != "idle" {
		t.Fatalf("deleted %q", got)
	}
	if err := s.RemoveExport("idle", false); !errors.Is(err, ErrNoExport) {
		t.Fatalf("second removal: %v", err)
	}

	cl := dial(t, sock)
	cl.goExport("m", false)
	if n := s.Clients("m"); n != 1 {
		t.Fatalf("clients %d", n)
	}
	if err := s.RemoveExport("m", false); !errors.Is(err, ErrExportInUse) {
		t.Fatalf("safe removal with a client: %v", err)
	}
	// Still served to new clients.
	dial(t, sock).goExport("m", false)
	if err := s.RemoveExport("m", true); err != nil {
		t.Fatal(err)
	}
	cl.expectClosed()
	if got := <-deleted; got != "m" {
		t.Fatalf("deleted %q", got)
	}
	if names := s.ExportNames(); len(names) != 0 {
		t.Fatalf("exports left: %q", names)
	}
	cl2 := dial(t, sock)
	if r := cl2.opt(optGo, nameData("m", 0, 0)); r[0].typ != repErrUnknown {
		t.Fatalf("GO on removed export: %+v", r)
	}
	if err := s.AddExport(&Export{Name: "m", Backend: newMem(4096)}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddExport(&Export{Name: "m", Backend: newMem(4096)}); !errors.Is(err, ErrExportExists) {
		t.Fatalf("duplicate: %v", err)
	}
}

func TestMaxConnections(t *testing.T) {
	s := NewServer(zeroLog())
	s.MaxConnections = 1
	if err := s.AddExport(&Export{Name: "m", Backend: newMem(4096)}); err != nil {
		t.Fatal(err)
	}
	_, sock := serveOn(t, s)
	first := dial(t, sock)
	first.goExport("m", false)
	conn, err := dialRaw(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// At the limit the server does not accept: the second client waits.
	conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := conn.Read(make([]byte, 18)); err == nil {
		t.Fatalf("second client got %d bytes of greeting", n)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("second client: %v, want to be kept waiting", err)
	}
	// Once the first leaves, it is served.
	first.request(cmdDisc, 0, 0, 0, 0, nil)
	first.expectClosed()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(conn, make([]byte, 18)); err != nil {
		t.Fatalf("second client after the first left: %v", err)
	}
}

// A client that does not finish negotiating within HandshakeTimeout is
// dropped; one that did stays.
func TestHandshakeTimeout(t *testing.T) {
	s := NewServer(zeroLog())
	s.HandshakeTimeout = 200 * time.Millisecond
	if err := s.AddExport(&Export{Name: "m", Backend: newMem(4096)}); err != nil {
		t.Fatal(err)
	}
	_, sock := serveOn(t, s)
	good := dial(t, sock)
	good.goExport("m", false)
	idle := dial(t, sock)
	start := time.Now()
	idle.expectClosed()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("idle client dropped after %v", d)
	}
	time.Sleep(300 * time.Millisecond)
	good.request(cmdFlush, 0, 1, 0, 0, nil)
	if ch := good.replyChunks(1); ch[0].errno != 0 {
		t.Fatalf("flush after the handshake limit: %v", ch)
	}
}

// Serve on a server closed before it started returns nil and closes the
// listener: a daemon that fails at start closes its NBD server at once.
func TestServeAfterClose(t *testing.T) {
	s := NewServer(zeroLog())
	s.Close()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l); err != nil {
		t.Fatalf("Serve after Close: %v", err)
	}
	if _, err := l.Accept(); err == nil {
		t.Fatal("listener still open")
	}
}
