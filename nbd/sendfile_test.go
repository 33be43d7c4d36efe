package nbd

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
)

// fileMem is a memBackend whose bytes are also in a file, shorter than the
// export (the rest reads as zeroes), offered to the server as a FileReader.
type fileMem struct {
	*memBackend
	f       *os.File
	sent    atomic.Int64 // ReadFile calls that handed out the file
	refuse  atomic.Bool  // ReadFile reports the range is not in a file
	failErr atomic.Bool  // ReadFile fails with EIO
}

func (m *fileMem) ReadFile(ctx context.Context, off, length int64, send func(fd int, fileOff, n int64) error) (bool, error) {
	if m.refuse.Load() {
		return false, nil
	}
	if m.failErr.Load() {
		return true, syscall.EIO
	}
	m.sent.Add(1)
	return true, send(int(m.f.Fd()), off, length)
}

func newFileMem(t *testing.T, size, fileLen int64) *fileMem {
	m := newMem(size)
	pat := make([]byte, 8192)
	for i := range pat {
		pat[i] = byte(i*7 + 1)
	}
	m.WriteAt(t.Context(), pat, 65536, false)
	m.WriteAt(t.Context(), pat, fileLen-4096, false) // straddles the file's end
	clear(m.data[fileLen:])
	p := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(p, m.data[:fileLen], 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &fileMem{memBackend: m, f: f}
}

// Reads served by sendfile carry the same bytes as reads through buffers,
// in simple replies, structured chunks and DF reads, past the file's end
// too; a failing ReadFile gets an error reply and the connection goes on.
func TestSendfileReads(t *testing.T) {
	const size, fileLen = 1 << 20, 200000
	m := newFileMem(t, size, fileLen)
	_, sock := startServer(t, &Export{Name: "f", Backend: m})

	simple := dial(t, sock)
	simple.goExport("f", false)
	for i, r := range [][2]int64{{0, 4096}, {60000, 20000}, {fileLen - 5000, 10000}, {size - 512, 512}} {
		simple.request(cmdRead, 0, uint64(i), uint64(r[0]), uint32(r[1]), nil)
		if h, errno := simple.simpleReply(); h != uint64(i) || errno != 0 {
			t.Fatalf("read %v: handle %d errno %d", r, h, errno)
		}
		got := make([]byte, r[1])
		simple.readFull(got)
		if !bytes.Equal(got, m.snapshot(r[0], r[1])) {
			t.Errorf("simple read %v differs", r)
		}
	}

	cl := dial(t, sock)
	cl.goExport("f", true)
	read := func(handle uint64, flags uint16, off, n int64) []byte {
		t.Helper()
		cl.request(cmdRead, flags, handle, uint64(off), uint32(n), nil)
		buf := bytes.Repeat([]byte{0xff}, int(n))
		for _, c := range cl.replyChunks(handle) {
			switch c.typ {
			case replyTypeOffsetData:
				copy(buf[int64(be.Uint64(c.payload))-off:], c.payload[8:])
			case replyTypeOffsetHole:
				clear(buf[int64(be.Uint64(c.payload))-off:][:be.Uint32(c.payload[8:])])
			default:
				t.Fatalf("read %d+%d: chunk %v", off, n, c)
			}
		}
		return buf
	}
	for i, r := range [][2]int64{{0, 300000}, {60000, 20000}, {fileLen - 5000, 10000}} {
		if !bytes.Equal(read(uint64(10+i), 0, r[0], r[1]), m.snapshot(r[0], r[1])) {
			t.Errorf("structured read %v differs", r)
		}
		if !bytes.Equal(read(uint64(20+i), cmdFlagDF, r[0], r[1]), m.snapshot(r[0], r[1])) {
			t.Errorf("DF read %v differs", r)
		}
	}
	if m.sent.Load() == 0 {
		t.Fatal("the server never used ReadFile")
	}

	// Not in a file: the server falls back to ReadAt.
	m.refuse.Store(true)
	if !bytes.Equal(read(30, 0, 60000, 20000), m.snapshot(60000, 20000)) {
		t.Error("fallback read differs")
	}
	m.refuse.Store(false)
	m.failErr.Store(true)
	cl.request(cmdRead, cmdFlagDF, 31, 0, 4096, nil)
	ch := cl.replyChunks(31)
	if len(ch) != 1 || ch[0].typ != replyTypeError || ch[0].errno != errIO {
		t.Fatalf("failed ReadFile: %v", ch)
	}
	m.failErr.Store(false)
	if !bytes.Equal(read(32, 0, 0, 4096), m.snapshot(0, 4096)) {
		t.Error("read after a failure differs")
	}
}
