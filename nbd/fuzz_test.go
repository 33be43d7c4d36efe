package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/rs/zerolog"
)

// feed runs one server connection whose client side sends data and then
// hangs up; the server's answers are discarded. It must return: no panic,
// no hang, whatever data holds.
func feed(t *testing.T, data []byte) {
	s := NewServer(zerolog.Nop())
	m := newMem(1 << 16)
	m.WriteAt(t.Context(), []byte("data"), 4096, false)
	if err := s.AddExport(&Export{Name: "m", Backend: m, Writable: true, AllocationDepth: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddExport(&Export{Name: "", Description: "ro", Backend: newMem(512)}); err != nil {
		t.Fatal(err)
	}
	cli, srv := net.Pipe()
	s.serveConn(srv)
	drained := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, cli)
		close(drained)
	}()
	_, _ = cli.Write(data)
	_ = cli.Close()
	<-drained
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func opt(o uint32, data []byte) []byte {
	p := binary.BigEndian.AppendUint64(nil, optMagic)
	p = binary.BigEndian.AppendUint32(p, o)
	p = binary.BigEndian.AppendUint32(p, uint32(len(data)))
	return append(p, data...)
}

func req(typ, flags uint16, handle, off uint64, length uint32, data []byte) []byte {
	p := binary.BigEndian.AppendUint32(nil, requestMagic)
	p = binary.BigEndian.AppendUint16(p, flags)
	p = binary.BigEndian.AppendUint16(p, typ)
	p = binary.BigEndian.AppendUint64(p, handle)
	p = binary.BigEndian.AppendUint64(p, off)
	p = binary.BigEndian.AppendUint32(p, length)
	return append(p, data...)
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// handshakePrefix negotiates structured replies, both metadata contexts and
// NBD_OPT_GO to the writable export.
var handshakePrefix = cat(
	[]byte{0, 0, 0, 3},
	opt(optStructuredReply, nil),
	opt(optSetMetaContext, metaData("m", ctxBaseAllocation, ctxAllocDepth)),
	opt(optGo, nameData("m", 0, 1, 0, infoBlockSize)),
)

func FuzzOptions(f *testing.F) {
	flags := []byte{0, 0, 0, 3}
	f.Add(cat(flags, opt(optList, nil), opt(optAbort, nil)))
	f.Add(cat(flags, opt(optInfo, nameData("m", 0, 2, 0, 1, 0, 2)), opt(optGo, nameData("", 0, 0)), req(cmdRead, 0, 1, 0, 512, nil)))
	f.Add(cat(flags, opt(optStructuredReply, nil), opt(optListMetaContext, metaData("m", "base:", "qemu:")), opt(optSetMetaContext, metaData("m", "base:allocation"))))
	f.Add(cat(flags, opt(optExportName, []byte("m")), req(cmdFlush, 0, 1, 0, 0, nil)))
	f.Add(cat(flags, opt(99, []byte("junk")), opt(optStartTLS, nil), opt(optListMetaContext, []byte{0, 0, 0, 9})))
	f.Add(cat([]byte{0, 0, 0, 1}, opt(optGo, nameData("m", 0, 9)), opt(optSetMetaContext, []byte{255, 255, 255, 255})))
	f.Fuzz(func(t *testing.T, data []byte) { feed(t, data) })
}

func FuzzRequests(f *testing.F) {
	f.Add(req(cmdRead, 0, 1, 0, 8192, nil))
	f.Add(cat(req(cmdWrite, cmdFlagFUA, 1, 100, 4, []byte("abcd")), req(cmdRead, cmdFlagDF, 2, 0, 512, nil), req(cmdDisc, 0, 3, 0, 0, nil)))
	f.Add(cat(req(cmdBlockStatus, cmdFlagReqOne, 1, 0, 65536, nil), req(cmdBlockStatus, 0, 2, 4000, 1000, nil)))
	f.Add(cat(req(cmdWriteZeroes, cmdFlagNoHole|cmdFlagFastZero, 1, 0, 65536, nil), req(cmdTrim, 0, 2, 1, 9000, nil), req(cmdCache, 0, 3, 0, 10, nil)))
	f.Add(cat(req(cmdWrite, 0, 1, 0, 1<<20, []byte("short")), req(77, 0xffff, 2, 1<<63, 1<<31, nil)))
	f.Add(req(cmdWrite, 0, 1, 0, 40<<20, nil))
	f.Fuzz(func(t *testing.T, data []byte) { feed(t, cat(handshakePrefix, data)) })
}

// FuzzClientReply feeds a client, after a regular handshake, whatever
// replies data holds while three requests wait (a read, a block status
// and a flush, cookies 1 to 3 in some order), then hangs up. Every
// request must return: no panic, no hang.
func FuzzClientReply(f *testing.F) {
	status := be.AppendUint32(nil, 7)
	status = be.AppendUint32(status, 512)
	status = be.AppendUint32(status, stateHole)
	for c := uint64(1); c <= 3; c++ {
		var seed []byte
		seed = append(seed, chunkMsgBytes(c, replyFlagDone, replyTypeBlockStatus, status)...)
		seed = append(seed, chunkMsgBytes(c%3+1, replyFlagDone, replyTypeOffsetData, append(be.AppendUint64(nil, 0), make([]byte, 4096)...))...)
		seed = append(seed, simpleHeader(c%2+1, 0)...)
		f.Add(seed)
	}
	f.Add(chunkMsgBytes(1, replyFlagDone, replyTypeError, []byte{0, 0, 0, 5, 0, 2, 'n', 'o'}))
	f.Add(chunkMsgBytes(2, 0, replyTypeOffsetHole, be.AppendUint32(be.AppendUint64(nil, 512), 512)))
	f.Fuzz(func(t *testing.T, data []byte) {
		cli, srv := net.Pipe()
		go func() {
			defer srv.Close()
			if fakeHandshake(srv) != nil {
				return
			}
			go io.Copy(io.Discard, srv)
			srv.Write(data)
		}()
		dialed := false
		c, err := Connect(t.Context(), ClientOptions{MetaContext: ctxBaseAllocation,
			Dial: func(ctx context.Context) (net.Conn, error) {
				if dialed {
					return nil, errors.New("no more connections")
				}
				dialed = true
				return cli, nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for _, req := range []func() error{
			func() error { return c.Read(t.Context(), 0, make([]byte, 4096)) },
			func() error { _, err := c.BlockStatus(t.Context(), 0, 1<<20); return err },
			func() error { return c.Flush(t.Context()) },
		} {
			wg.Add(1)
			go func() { defer wg.Done(); _ = req() }()
		}
		wg.Wait()
		c.Close()
	})
}
