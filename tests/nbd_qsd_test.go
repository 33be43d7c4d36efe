package tests

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The tests in this file talk raw NBD to QSD and qbmond with malformed and
// edge-case options and requests, and compare what each daemon answers:
// reply types, error values, message text and whether it hangs up.

var nbe = binary.BigEndian

const (
	nbdOptMagic    = 0x49484156454F5054
	nbdRepMagic    = 0x3e889045565a9
	nbdReqMagic    = 0x25609513
	nbdSimpleMagic = 0x67446698
	nbdChunkMagic  = 0x668e33ef
)

// rawNBD is a raw NBD client that writes down everything the server sends.
type rawNBD struct {
	t   *testing.T
	c   net.Conn
	log []string
	// closed is set once the server hung up.
	closed bool
}

// dialRawNBD connects and reads the greeting (written to the log).
func dialRawNBD(t *testing.T, sock string) *rawNBD {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	t.Cleanup(func() { c.Close() })
	r := &rawNBD{t: t, c: c}
	var g [18]byte
	if r.read(g[:]) {
		r.logf("greeting %x flags %#x", g[:16], nbe.Uint16(g[16:]))
	}
	return r
}

func (r *rawNBD) logf(format string, args ...any) {
	r.log = append(r.log, fmt.Sprintf(format, args...))
}

// read fills p; on EOF or reset it logs "closed" and returns false.
func (r *rawNBD) read(p []byte) bool {
	r.t.Helper()
	if r.closed {
		return false
	}
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(r.c, p); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			r.t.Fatalf("no answer from the server (log so far: %q)", r.log)
		}
		r.closed = true
		r.logf("closed")
		return false
	}
	return true
}

func (r *rawNBD) write(p []byte) {
	if r.closed {
		return
	}
	// A server that hung up makes writes fail; the next read logs it.
	r.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	r.c.Write(p)
}

func (r *rawNBD) clientFlags(f uint32) { r.write(nbe.AppendUint32(nil, f)) }

// opt sends an option header with the given length and data (which may be
// shorter or longer than length, to lie about it).
func (r *rawNBD) opt(opt, length uint32, data []byte) {
	p := nbe.AppendUint64(nil, nbdOptMagic)
	p = nbe.AppendUint32(p, opt)
	p = nbe.AppendUint32(p, length)
	r.write(append(p, data...))
}

// optReplies reads option replies up to and including a final one (ack or
// error) and logs them; it returns false if the server hung up.
func (r *rawNBD) optReplies() bool {
	r.t.Helper()
	for {
		var h [20]byte
		if !r.read(h[:]) {
			return false
		}
		if m := nbe.Uint64(h[:]); m != nbdRepMagic {
			r.t.Fatalf("bad option reply magic %#x", m)
		}
		opt, typ, n := nbe.Uint32(h[8:]), nbe.Uint32(h[12:]), nbe.Uint32(h[16:])
		data := make([]byte, n)
		if !r.read(data) {
			return false
		}
		switch {
		case typ&(1<<31) != 0:
			r.logf("opt %d error %#x %q", opt, typ, data)
			return true
		case typ == 3: // NBD_REP_INFO
			r.logf("opt %d info %d %x", opt, nbe.Uint16(data), data[2:])
		case typ == 4: // NBD_REP_META_CONTEXT
			r.logf("opt %d meta-context %d %q", opt, nbe.Uint32(data), data[4:])
		default:
			r.logf("opt %d reply %d %q", opt, typ, data)
		}
		if typ == 1 { // NBD_REP_ACK
			return true
		}
	}
}

// nbdServerStart starts the NBD server on dir/nbd.sock, with the extra
// nbd-server-start arguments, and returns the socket's path.
func nbdServerStart(c *client, dir string, extra map[string]any) string {
	sock := filepath.Join(dir, "nbd.sock")
	args := map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}}
	for k, v := range extra {
		args[k] = v
	}
	c.ok("nbd-server-start", args)
	return sock
}

// appendString appends s after its 32-bit length.
func appendString(p []byte, s string) []byte {
	return append(nbe.AppendUint32(p, uint32(len(s))), s...)
}

// infoData is the payload of NBD_OPT_INFO/GO: a name and info requests.
func infoData(name string, infos ...uint16) []byte {
	p := nbe.AppendUint16(appendString(nil, name), uint16(len(infos)))
	for _, i := range infos {
		p = nbe.AppendUint16(p, i)
	}
	return p
}

// metaData is the payload of NBD_OPT_{LIST,SET}_META_CONTEXT.
func metaData(name string, queries ...string) []byte {
	p := nbe.AppendUint32(appendString(nil, name), uint32(len(queries)))
	for _, q := range queries {
		p = appendString(p, q)
	}
	return p
}

// goExport negotiates (structured replies when asked) and enters
// transmission on the named export.
func (r *rawNBD) goExport(name string, structured bool, meta ...string) {
	r.clientFlags(3)
	if structured {
		r.opt(8, 0, nil)
		r.optReplies()
	}
	if len(meta) > 0 {
		d := metaData(name, meta...)
		r.opt(10, uint32(len(d)), d)
		r.optReplies()
	}
	d := infoData(name)
	r.opt(7, uint32(len(d)), d)
	r.optReplies()
}

// request sends one transmission request with an optional payload.
func (r *rawNBD) request(flags, typ uint16, handle, off uint64, length uint32, payload []byte) {
	p := nbe.AppendUint32(nil, nbdReqMagic)
	p = nbe.AppendUint16(p, flags)
	p = nbe.AppendUint16(p, typ)
	p = nbe.AppendUint64(p, handle)
	p = nbe.AppendUint64(p, off)
	p = nbe.AppendUint32(p, length)
	r.write(append(p, payload...))
}

// reply reads one simple reply or the chunks of one structured reply and
// logs them; dataLen is the payload a successful simple read reply carries.
func (r *rawNBD) reply(dataLen int) {
	r.t.Helper()
	var m [4]byte
	if !r.read(m[:]) {
		return
	}
	switch nbe.Uint32(m[:]) {
	case nbdSimpleMagic:
		var h [12]byte
		if !r.read(h[:]) {
			return
		}
		errno := nbe.Uint32(h[:])
		r.logf("simple handle %d error %d", nbe.Uint64(h[4:]), errno)
		if errno == 0 && dataLen > 0 {
			r.read(make([]byte, dataLen))
		}
	case nbdChunkMagic:
		for {
			var h [16]byte
			if !r.read(h[:]) {
				return
			}
			flags, typ, handle, n := nbe.Uint16(h[:]), nbe.Uint16(h[2:]), nbe.Uint64(h[4:]), nbe.Uint32(h[12:])
			data := make([]byte, n)
			if !r.read(data) {
				return
			}
			switch {
			case typ&(1<<15) != 0 && n >= 6:
				ml := int(nbe.Uint16(data[4:]))
				r.logf("chunk handle %d flags %d type %#x error %d %q rest %x", handle, flags, typ,
					nbe.Uint32(data), data[6:6+ml], data[6+ml:])
			case typ == 1: // offset data: log the offset and length only
				r.logf("chunk handle %d flags %d data at %d, %d bytes", handle, flags, nbe.Uint64(data), n-8)
			default:
				r.logf("chunk handle %d flags %d type %d %x", handle, flags, typ, data)
			}
			if flags&1 != 0 {
				return
			}
			if !r.read(m[:]) {
				return
			}
		}
	default:
		r.t.Fatalf("bad reply magic %x", m)
	}
}

// alive checks whether the server still talks: a flush in transmission,
// an abort in negotiation.
func (r *rawNBD) aliveTransmission() {
	r.request(0, 3, 999, 0, 0, nil)
	r.reply(0)
}

func (r *rawNBD) aliveNegotiation() {
	r.opt(2, 0, nil)
	r.optReplies()
}

// nbdPeers starts QSD and qbmond, each with a writable export "rw" (with a
// description) and a read-only export "ro" of two 1 MiB raw images, and
// returns their NBD socket paths.
func nbdPeers(t *testing.T, extra map[string]any) map[kind]string {
	socks := map[kind]string{}
	for _, k := range []kind{kindQSD, kindQbmond} {
		dir := shortTempDir(t)
		d := startDaemon(t, k, dir)
		c := d.connect()
		for i, name := range []string{"a.img", "b.img"} {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": fmt.Sprintf("n%d", i),
				"file": map[string]any{"driver": "file", "filename": p}})
		}
		sock := nbdServerStart(c, dir, extra)
		c.ok("block-export-add", map[string]any{"type": "nbd", "id": "rw", "name": "rw", "node-name": "n0", "writable": true,
			"description": "the disk"})
		c.ok("block-export-add", map[string]any{"type": "nbd", "id": "ro", "name": "ro", "node-name": "n1"})
		// "bad" fails every read with EIO and every write with ENOSPC.
		p := filepath.Join(dir, "c.img")
		if err := os.WriteFile(p, bytes.Repeat([]byte{0x5a}, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "n2", "file": map[string]any{
			"driver": "blkdebug", "image": map[string]any{"driver": "file", "filename": p},
			"inject-error": []any{
				map[string]any{"event": "read_aio", "errno": 5},
				map[string]any{"event": "write_aio", "errno": 28},
			}}})
		c.ok("block-export-add", map[string]any{"type": "nbd", "id": "bad", "name": "bad", "node-name": "n2",
			"writable": true})
		// "odd" is a file whose size is not a multiple of 512.
		p = filepath.Join(dir, "d.img")
		if err := os.WriteFile(p, bytes.Repeat([]byte{1}, 1000), 0o600); err != nil {
			t.Fatal(err)
		}
		c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "n3",
			"file": map[string]any{"driver": "file", "filename": p}})
		c.ok("block-export-add", map[string]any{"type": "nbd", "id": "odd", "name": "odd", "node-name": "n3"})
		// "aligned" wants 4 KiB-aligned requests.
		p = filepath.Join(dir, "e.img")
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		c.ok("blockdev-add", map[string]any{"driver": "blkdebug", "node-name": "n4", "align": 4096,
			"image": map[string]any{"driver": "file", "filename": p}})
		c.ok("block-export-add", map[string]any{"type": "nbd", "id": "aligned", "name": "aligned", "node-name": "n4"})
		// "bm" offers allocation depth and two bitmaps.
		c.ok("block-dirty-bitmap-add", map[string]any{"node": "n1", "name": "b1", "disabled": true})
		c.ok("block-dirty-bitmap-add", map[string]any{"node": "n1", "name": "b0", "disabled": true})
		c.ok("block-export-add", map[string]any{"type": "nbd", "id": "bm", "name": "bm", "node-name": "n1",
			"allocation-depth": true, "bitmaps": []any{"b1", "b0"}})
		socks[k] = sock
	}
	return socks
}

// TestNBDEdgeCasesLikeQSD sends each malformed or edge-case option and
// request to both daemons and compares the transcripts.
func TestNBDEdgeCasesLikeQSD(t *testing.T) {
	socks := nbdPeers(t, nil)
	long := strings.Repeat("x", 100)
	cases := []struct {
		name string
		run  func(r *rawNBD)
	}{
		{"unknown option", func(r *rawNBD) {
			r.clientFlags(3)
			r.opt(9999, 3, []byte("abc"))
			r.optReplies()
			r.aliveNegotiation()
		}},
		{"list with data", func(r *rawNBD) {
			r.clientFlags(3)
			r.opt(3, 5, []byte("hello"))
			r.optReplies()
			r.opt(3, 0, nil)
			r.optReplies()
		}},
		{"go with inconsistent lengths", func(r *rawNBD) {
			r.clientFlags(3)
			d := nbe.AppendUint32(nil, 10)
			r.opt(7, uint32(len(d)+2), append(d, "rw"...))
			r.optReplies()
			r.aliveNegotiation()
		}},
		{"info with trailing data", func(r *rawNBD) {
			r.clientFlags(3)
			d := append(infoData("rw"), 0, 0)
			r.opt(6, uint32(len(d)), d)
			r.optReplies()
			r.aliveNegotiation()
		}},
		{"info name too long", func(r *rawNBD) {
			r.clientFlags(3)
			d := nbe.AppendUint32(nil, 4097)
			d = append(d, make([]byte, 4097+2)...)
			r.opt(6, uint32(len(d)), d)
			r.optReplies()
			r.aliveNegotiation()
		}},
		{"info name with NUL", func(r *rawNBD) {
			r.clientFlags(3)
			d := infoData("r\x00w")
			r.opt(6, uint32(len(d)), d)
			r.optReplies()
			r.aliveNegotiation()
		}},
		{"info unknown long name", func(r *rawNBD) {
			r.clientFlags(3)
			d := infoData(long)
			r.opt(6, uint32(len(d)), d)
			r.optReplies()
		}},
		{"info order", func(r *rawNBD) {
			r.clientFlags(3)
			d := infoData("rw", 3, 2, 1, 0)
			r.opt(6, uint32(len(d)), d)
			r.optReplies()
			d = infoData("ro", 1)
			r.opt(6, uint32(len(d)), d)
			r.optReplies()
			d = infoData("rw")
			r.opt(7, uint32(len(d)), d)
			r.optReplies()
		}},
		{"option longer than 64 KiB", func(r *rawNBD) {
			r.clientFlags(3)
			r.opt(3, 100000, make([]byte, 100000))
			r.optReplies()
			r.aliveNegotiation()
		}},
		{"option longer than 32 MiB", func(r *rawNBD) {
			r.clientFlags(3)
			r.opt(3, 32<<20+1, nil)
			r.optReplies()
		}},
		{"structured reply twice", func(r *rawNBD) {
			r.clientFlags(3)
			r.opt(8, 0, nil)
			r.optReplies()
			r.opt(8, 0, nil)
			r.optReplies()
			r.opt(8, 1, []byte{0})
			r.optReplies()
		}},
		{"starttls", func(r *rawNBD) {
			r.clientFlags(3)
			r.opt(5, 0, nil)
			r.optReplies()
			r.opt(5, 2, []byte{1, 2})
			r.optReplies()
		}},
		{"meta context without structured replies", func(r *rawNBD) {
			r.clientFlags(3)
			d := metaData("rw", "base:allocation")
			r.opt(9, uint32(len(d)), d)
			r.optReplies()
			r.opt(10, uint32(len(d)), d)
			r.optReplies()
		}},
		{"meta context unknown export", func(r *rawNBD) {
			r.clientFlags(3)
			r.opt(8, 0, nil)
			r.optReplies()
			d := metaData(long, "base:allocation")
			r.opt(10, uint32(len(d)), d)
			r.optReplies()
		}},
		{"not fixed newstyle: list", func(r *rawNBD) {
			r.clientFlags(0)
			r.opt(3, 0, nil)
			r.optReplies()
		}},
		{"not fixed newstyle: go", func(r *rawNBD) {
			r.clientFlags(2)
			d := infoData("rw")
			r.opt(7, uint32(len(d)), d)
			r.optReplies()
		}},
		{"not fixed newstyle: export name", func(r *rawNBD) {
			r.clientFlags(2)
			r.opt(1, 2, []byte("rw"))
			var p [10]byte
			if r.read(p[:]) {
				r.logf("export size %d flags %#x", nbe.Uint64(p[:]), nbe.Uint16(p[8:]))
			}
			r.aliveTransmission()
		}},
		{"unknown client flags", func(r *rawNBD) {
			r.clientFlags(1 << 5)
			r.opt(3, 0, nil)
			r.optReplies()
		}},
	}
	// Transmission cases run with simple and with structured replies.
	type tcase struct {
		name string
		run  func(r *rawNBD)
	}
	tcases := []tcase{
		{"read past EOF", func(r *rawNBD) {
			r.request(0, 0, 1, 1<<20-512, 1024, nil)
			r.reply(1024)
			r.request(0, 0, 2, 2<<20, 0, nil)
			r.reply(0)
		}},
		{"write past EOF", func(r *rawNBD) {
			r.request(0, 1, 1, 1<<20-512, 1024, make([]byte, 1024))
			r.reply(0)
			r.aliveTransmission()
		}},
		{"write zeroes past EOF", func(r *rawNBD) {
			r.request(0, 6, 1, 1<<20, 1, nil)
			r.reply(0)
		}},
		{"trim past EOF", func(r *rawNBD) {
			r.request(0, 4, 1, 1<<20, 512, nil)
			r.reply(0)
		}},
		{"cache past EOF", func(r *rawNBD) {
			r.request(0, 5, 1, 1<<20, 512, nil)
			r.reply(0)
		}},
		{"read larger than 32 MiB", func(r *rawNBD) {
			r.request(0, 0, 1, 0, 32<<20+1, nil)
			r.reply(0)
			r.aliveTransmission()
		}},
		{"cache larger than 32 MiB", func(r *rawNBD) {
			r.request(0, 5, 1, 0, 32<<20+1, nil)
			r.reply(0)
			r.aliveTransmission()
		}},
		{"write larger than 32 MiB", func(r *rawNBD) {
			r.request(0, 1, 1, 0, 32<<20+1, nil)
			r.reply(0)
			r.aliveTransmission()
		}},
		{"read with unknown flag", func(r *rawNBD) {
			r.request(0x80, 0, 1, 0, 512, nil)
			r.reply(512)
		}},
		{"read with df flag", func(r *rawNBD) {
			r.request(4, 0, 1, 0, 512, nil)
			r.reply(512)
		}},
		{"write zeroes with req-one flag", func(r *rawNBD) {
			r.request(8, 6, 1, 0, 512, nil)
			r.reply(0)
		}},
		{"flush with offset and length", func(r *rawNBD) {
			r.request(0, 3, 1, 4096, 512, nil)
			r.reply(0)
			r.request(0, 3, 2, 2<<20, 512, nil)
			r.reply(0)
			r.request(1, 3, 3, 0, 0, nil)
			r.reply(0)
		}},
		{"unknown command", func(r *rawNBD) {
			r.request(0, 99, 1, 0, 512, nil)
			r.reply(0)
			r.request(0, 99, 2, 2<<20, 512, nil)
			r.reply(0)
		}},
		{"block status not negotiated", func(r *rawNBD) {
			r.request(0, 7, 1, 0, 512, nil)
			r.reply(0)
		}},
		{"empty read", func(r *rawNBD) {
			r.request(0, 0, 1, 0, 0, nil)
			r.reply(0)
		}},
		{"bad request magic", func(r *rawNBD) {
			r.write(make([]byte, 28))
			r.reply(0)
		}},
	}
	rocases := []tcase{
		{"write to read-only", func(r *rawNBD) {
			r.request(0, 1, 1, 0, 512, make([]byte, 512))
			r.reply(0)
			r.aliveTransmission()
		}},
		{"write past EOF to read-only", func(r *rawNBD) {
			r.request(0, 1, 1, 2<<20, 512, make([]byte, 512))
			r.reply(0)
		}},
		{"trim and write zeroes on read-only", func(r *rawNBD) {
			r.request(0, 4, 1, 0, 512, nil)
			r.reply(0)
			r.request(0, 6, 2, 0, 512, nil)
			r.reply(0)
		}},
	}
	for _, structured := range []bool{false, true} {
		mode := " (simple)"
		if structured {
			mode = " (structured)"
		}
		for _, tc := range tcases {
			cases = append(cases, struct {
				name string
				run  func(r *rawNBD)
			}{tc.name + mode, func(r *rawNBD) { r.goExport("rw", structured); tc.run(r) }})
		}
		for _, tc := range rocases {
			cases = append(cases, struct {
				name string
				run  func(r *rawNBD)
			}{tc.name + mode, func(r *rawNBD) { r.goExport("ro", structured); tc.run(r) }})
		}
	}
	cases = append(cases, struct {
		name string
		run  func(r *rawNBD)
	}{"block status of an empty range", func(r *rawNBD) {
		r.goExport("rw", true, "base:allocation")
		r.request(0, 7, 1, 0, 0, nil)
		r.reply(0)
		r.request(0, 7, 2, 2<<20, 512, nil)
		r.reply(0)
	}})
	// Whether the connection survives is checked at the end of each case;
	// no request follows a failure here, as blkdebug's rules would decide
	// its fate.
	badcases := []tcase{
		{"failing read", func(r *rawNBD) {
			r.request(0, 0, 1, 4096, 512, nil)
			r.reply(512)
		}},
		{"failing read with df", func(r *rawNBD) {
			r.request(4, 0, 1, 4096, 512, nil)
			r.reply(512)
		}},
		{"failing write", func(r *rawNBD) {
			r.request(0, 1, 1, 4096, 512, make([]byte, 512))
			r.reply(0)
			r.request(1, 1, 2, 4096, 512, make([]byte, 512))
			r.reply(0)
		}},
	}
	for _, structured := range []bool{false, true} {
		for _, tc := range badcases {
			if tc.name == "failing read with df" && !structured {
				continue
			}
			cases = append(cases, struct {
				name string
				run  func(r *rawNBD)
			}{fmt.Sprintf("%s (structured %v)", tc.name, structured), func(r *rawNBD) { r.goExport("bad", structured); tc.run(r) }})
		}
	}
	metaCases := [][]string{
		{},
		{"base:"},
		{"qemu:"},
		{"qemu:dirty-bitmap:"},
		{"qemu:dirty-bitmap:b0", "base:allocation", "qemu:dirty-bitmap:b1"},
		{"qemu:allocation-depth", "qemu:nosuch", "other:thing", "qemu:dirty-bitmap:zz"},
		{"base:allocation", "base:allocation"},
		{strings.Repeat("q", 5000)},
	}
	for _, qs := range metaCases {
		cases = append(cases, struct {
			name string
			run  func(r *rawNBD)
		}{fmt.Sprintf("meta contexts %.40q", qs), func(r *rawNBD) {
			r.clientFlags(3)
			r.opt(8, 0, nil)
			r.optReplies()
			d := metaData("bm", qs...)
			r.opt(9, uint32(len(d)), d)
			r.optReplies()
			r.opt(10, uint32(len(d)), d)
			r.optReplies()
			d = infoData("bm")
			r.opt(7, uint32(len(d)), d)
			r.optReplies()
			r.request(0, 7, 1, 0, 1<<20, nil)
			r.reply(0)
		}})
	}
	for _, opt := range []uint32{6, 7} {
		for _, infos := range [][]uint16{nil, {3}} {
			cases = append(cases, struct {
				name string
				run  func(r *rawNBD)
			}{fmt.Sprintf("aligned export opt %d infos %v", opt, infos), func(r *rawNBD) {
				r.clientFlags(3)
				d := infoData("aligned", infos...)
				r.opt(opt, uint32(len(d)), d)
				r.optReplies()
				if opt == 7 {
					r.request(0, 0, 1, 512, 1<<20-512, nil)
					r.reply(1<<20 - 512)
				}
			}})
		}
	}
	cases = append(cases, struct {
		name string
		run  func(r *rawNBD)
	}{"odd size", func(r *rawNBD) {
		r.goExport("odd", true)
		r.request(0, 0, 1, 512, 512, nil)
		r.reply(0)
		r.request(0, 0, 2, 1000, 24, nil)
		r.reply(0)
	}})
	cases = append(cases, struct {
		name string
		run  func(r *rawNBD)
	}{"meta context of another export", func(r *rawNBD) {
		r.clientFlags(3)
		r.opt(8, 0, nil)
		r.optReplies()
		d := metaData("rw", "base:allocation")
		r.opt(10, uint32(len(d)), d)
		r.optReplies()
		d = infoData("bm")
		r.opt(7, uint32(len(d)), d)
		r.optReplies()
		r.request(0, 7, 1, 0, 1<<20, nil)
		r.reply(0)
	}})
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			compareRawNBD(t, socks, tc.run)
		})
	}
}

// compareRawNBD runs the same raw NBD conversation against QSD's and
// qbmond's servers and fails when their transcripts differ; whether the
// server hangs up after the last step is part of what is compared.
func compareRawNBD(t *testing.T, socks map[kind]string, run func(*rawNBD)) string {
	t.Helper()
	logs := map[kind][]string{}
	for _, k := range []kind{kindQSD, kindQbmond} {
		r := dialRawNBD(t, socks[k])
		run(r)
		if !r.closed {
			r.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			var b [1]byte
			if _, err := r.c.Read(b[:]); err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					r.logf("closed")
				}
			} else {
				r.logf("unexpected byte %x", b)
			}
		}
		logs[k] = r.log
		r.c.Close()
	}
	q, o := strings.Join(logs[kindQSD], "\n"), strings.Join(logs[kindQbmond], "\n")
	if q != o {
		t.Errorf("transcripts differ\nQSD:\n%s\n\nqbmond:\n%s", q, o)
	}
	return q
}
