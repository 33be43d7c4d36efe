package nbd_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
	_ "github.com/qbmond/qbmond/drivers/nbd"
	proto "github.com/qbmond/qbmond/nbd"
)

// mem is an in-memory export: sparse by 4 KiB blocks, one dirty bitmap
// (the blocks written since it was made).
type mem struct {
	mu       sync.Mutex
	data     []byte
	alloc    []bool
	dirty    []bool
	readOnly bool
	// What the last requests asked for: a write's FUA, write-zeroes'
	// may-trim (no NO_HOLE flag) and fast-zero, the flushes.
	fua               bool
	mayTrim, fastZero bool
	flushes           int
}

const blk = 4096

func newMem(size int64) *mem {
	n := (size + blk - 1) / blk
	return &mem{data: make([]byte, size), alloc: make([]bool, n), dirty: make([]bool, n)}
}

func (m *mem) Size() int64    { return int64(len(m.data)) }
func (m *mem) ReadOnly() bool { return m.readOnly }
func (m *mem) ReadAt(_ context.Context, p []byte, off int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(p, m.data[off:])
	return nil
}
func (m *mem) mark(off, n int64, alloc bool) {
	for b := off / blk; b*blk < off+n; b++ {
		m.alloc[b] = alloc || !(b*blk >= off && (b+1)*blk <= off+n)
		m.dirty[b] = true
	}
}
func (m *mem) WriteAt(_ context.Context, p []byte, off int64, fua bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fua = fua
	copy(m.data[off:], p)
	m.mark(off, int64(len(p)), true)
	return nil
}
func (m *mem) WriteZeroes(_ context.Context, off, n int64, mayTrim, fastZero bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mayTrim, m.fastZero = mayTrim, fastZero
	clear(m.data[off : off+n])
	m.mark(off, n, !mayTrim)
	return nil
}
func (m *mem) Trim(ctx context.Context, off, n int64) error {
	return m.WriteZeroes(ctx, off, n, true, false)
}
func (m *mem) Flush(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushes++
	return nil
}
func (m *mem) Cache(context.Context, int64, int64) error { return nil }
func (m *mem) run(v []bool, off, n int64) (bool, int64) {
	b := off / blk
	end := (b + 1) * blk
	for end < off+n && v[end/blk] == v[b] {
		end += blk
	}
	return v[b], min(end, off+n) - off
}
func (m *mem) BlockStatus(_ context.Context, off, n int64) (proto.Extent, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, l := m.run(m.alloc, off, n)
	return proto.Extent{Length: l, Hole: !a, Zero: !a}, nil
}
func (m *mem) DirtyStatus(_ context.Context, _ int, off, n int64) (bool, int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, l := m.run(m.dirty, off, n)
	return d, l, nil
}
func (m *mem) AllocationDepth(context.Context, int64, int64) (uint32, int64, error) {
	return 0, 0, syscall.ENOTSUP
}
func (m *mem) BlockSizes() (uint32, uint32, uint32) { return 1, 4096, 32 << 20 }
func (m *mem) CanMultiConn() bool                   { return true }

// serve serves backend as export "m" (with bitmap "b0") on a fresh unix
// socket until the test ends.
func serve(t testing.TB, b proto.Backend, writable bool) string {
	t.Helper()
	s := proto.NewServer(zerolog.Nop())
	if err := s.AddExport(&proto.Export{Name: "m", Backend: b, Writable: writable, Bitmaps: []string{"b0"}}); err != nil {
		t.Fatal(err)
	}
	dir, err := mkdirShort(t)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Serve(l); close(done) }()
	t.Cleanup(func() { s.Close(); <-done })
	return sock
}

func mkdirShort(t testing.TB) (string, error) {
	// Socket paths must stay under 108 bytes.
	d := t.TempDir()
	if len(d) < 80 {
		return d, nil
	}
	return "/tmp", nil
}

func nodeOpts(sock string) blockdev.Options {
	return blockdev.Options{"driver": "nbd", "export": "m",
		"server": map[string]any{"type": "unix", "path": sock}}
}

// The conformance suite counts the process's file descriptors around a
// close: its servers run in child processes (this test binary run again
// with serverEnv set), whose side of a connection closes in its own time.
const serverEnv = "QBMOND_NBD_TEST_SERVER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(serverEnv); spec != "" {
		os.Exit(serveChild(spec))
	}
	os.Exit(m.Run())
}

// serveChild serves a 4 MiB memory export "m" on network!address!addrFile
// (writing the address it got to addrFile) until killed.
func serveChild(spec string) int {
	parts := strings.SplitN(spec, "!", 3)
	if len(parts) != 3 {
		return 2
	}
	network, address, addrFile := parts[0], parts[1], parts[2]
	l, err := net.Listen(network, address)
	if err != nil {
		return 1
	}
	if err := os.WriteFile(addrFile+".tmp", []byte(l.Addr().String()), 0o600); err != nil {
		return 1
	}
	if err := os.Rename(addrFile+".tmp", addrFile); err != nil {
		return 1
	}
	s := proto.NewServer(zerolog.Nop())
	if err := s.AddExport(&proto.Export{Name: "m", Backend: newMem(4 << 20), Writable: true, Bitmaps: []string{"b0"}}); err != nil {
		return 1
	}
	s.Serve(l)
	return 0
}

// childServer starts a server process and returns the address it listens on.
func childServer(t *testing.T, network string) string {
	t.Helper()
	dir, err := mkdirShort(t)
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(dir, "nbd.sock")
	}
	addrFile := filepath.Join(t.TempDir(), "addr")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), serverEnv+"="+network+"!"+addr+"!"+addrFile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if b, err := os.ReadFile(addrFile); err == nil {
			return string(b)
		}
	}
	t.Fatal("the server process did not start")
	return ""
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options { return nodeOpts(childServer(t, "unix")) },
		Stores:  true,
	})
}

// The same over TCP.
func TestConformanceTCP(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			host, port, _ := net.SplitHostPort(childServer(t, "tcp"))
			return blockdev.Options{"driver": "nbd", "export": "m", "server": map[string]any{"type": "inet", "host": host, "port": port}}
		},
		Stores: true,
	})
}

func add(t *testing.T, o blockdev.Options) (*blockdev.Node, error) {
	g := blockdev.NewGraph(zerolog.Nop())
	t.Cleanup(func() { g.Close() })
	lk, unlock := drivertest.Lock(g)
	defer unlock()
	if !o.Has("node-name") {
		o["node-name"] = "n"
	}
	return lk.Add(t.Context(), o)
}

// Option errors and failed connections, with QSD 7.2's messages.
func TestOpenErrors(t *testing.T) {
	ro := newMem(1 << 20)
	ro.readOnly = true
	sock := serve(t, ro, false)
	long := strings.Repeat("x", 4097)
	for _, tc := range []struct {
		opts blockdev.Options
		want string
	}{
		{blockdev.Options{"driver": "nbd", "export": "nope", "server": map[string]any{"type": "unix", "path": sock}}, "Requested export not available"},
		{blockdev.Options{"driver": "nbd", "server": map[string]any{"type": "unix", "path": sock}}, "Requested export not available"},
		{blockdev.Options{"driver": "nbd", "export": "m", "server": map[string]any{"type": "unix", "path": sock + "x"}}, "Failed to connect to '" + sock + "x': No such file or directory"},
		{blockdev.Options{"driver": "nbd", "export": "m", "server": map[string]any{"type": "inet", "host": "127.0.0.1", "port": "1"}}, "Failed to connect to '127.0.0.1:1': Connection refused"},
		{blockdev.Options{"driver": "nbd", "export": "m", "server": map[string]any{"type": "unix", "path": sock}, "tls-creds": "t0"}, "No TLS credentials with id 't0'"},
		{blockdev.Options{"driver": "nbd", "server": map[string]any{"type": "fd", "str": "3"}}, "only QEMU supports file descriptor passing"},
		{blockdev.Options{"driver": "nbd", "export": long, "server": map[string]any{"type": "unix", "path": sock}}, "export name too long to send to server"},
		{blockdev.Options{"driver": "nbd", "export": "m", "x-dirty-bitmap": long, "server": map[string]any{"type": "unix", "path": sock}}, "x-dirty-bitmap query too long to send to server"},
		{blockdev.Options{"driver": "nbd", "export": "m", "x-dirty-bitmap": "qemu:dirty-bitmap:zz", "read-only": true, "server": map[string]any{"type": "unix", "path": sock}}, "Could not open image: Invalid argument"},
		{blockdev.Options{"driver": "nbd", "export": "m", "server": map[string]any{"type": "unix", "path": sock}}, "Could not open image: Permission denied"},
	} {
		_, err := add(t, tc.opts)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%v: %v, want %q", tc.opts, err, tc.want)
		}
	}
	// auto-read-only makes the node read-only instead.
	o := nodeOpts(sock)
	o["auto-read-only"] = true
	n, err := add(t, o)
	if err != nil || !n.ReadOnly() {
		t.Fatalf("auto-read-only: %v", err)
	}
}

func TestFilenames(t *testing.T) {
	sock := serve(t, newMem(1<<20), true)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := proto.NewServer(zerolog.Nop())
	s.AddExport(&proto.Export{Name: "e", Backend: newMem(1 << 20)})
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	_, port, _ := net.SplitHostPort(l.Addr().String())
	inet := func(extra map[string]any) map[string]any {
		m := map[string]any{"type": "inet", "host": "127.0.0.1", "port": port}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	for _, tc := range []struct {
		opts blockdev.Options
		want string
	}{
		{nodeOpts(sock), "nbd+unix:///m?socket=" + sock},
		{blockdev.Options{"driver": "nbd", "read-only": true, "export": "e", "server": inet(nil)}, "nbd://127.0.0.1:" + port + "/e"},
		{blockdev.Options{"driver": "nbd", "read-only": true, "export": "e", "server": inet(map[string]any{"to": 65000})},
			`json:{"server.to": 65000, "server.port": "` + port + `", "server.host": "127.0.0.1", "driver": "nbd", "export": "e", "server.type": "inet"}`},
		{blockdev.Options{"driver": "nbd", "read-only": true, "export": "e", "server": inet(map[string]any{"ipv4": true})},
			`json:{"server.port": "` + port + `", "server.host": "127.0.0.1", "driver": "nbd", "export": "e", "server.type": "inet", "server.ipv4": true}`},
	} {
		n, err := add(t, tc.opts)
		if err != nil {
			t.Errorf("%v: %v", tc.opts, err)
			continue
		}
		if n.Filename() != tc.want {
			t.Errorf("file name %s, want %s", n.Filename(), tc.want)
		}
		if n.Length() != 1<<20 {
			t.Errorf("length %d", n.Length())
		}
	}
}

// x-dirty-bitmap: block status reads the bitmap; dirty areas are not data.
func TestDirtyBitmap(t *testing.T) {
	m := newMem(1 << 20)
	m.WriteAt(t.Context(), []byte("x"), 8192, false)
	sock := serve(t, m, true)
	o := nodeOpts(sock)
	o["x-dirty-bitmap"] = "qemu:dirty-bitmap:b0"
	o["read-only"] = true
	_, n, c := drivertest.Open(t, o, blockdev.PermConsistentRead)
	_ = n
	for _, want := range []struct {
		off  int64
		data bool
		len  int64
	}{{0, true, 8192}, {8192, false, 4096}, {12288, true, 1<<20 - 12288}} {
		st, err := c.BlockStatus(t.Context(), want.off, 1<<20-want.off)
		if err != nil || st.Flags&blockdev.StatusData != 0 != want.data || st.Length != want.len {
			t.Errorf("status at %d: %+v %v, want data %v length %d", want.off, st, err, want.data, want.len)
		}
	}
}

// The node cannot change the export's size; a read-only export cannot be
// reopened read-write.
func TestTruncateAndReopen(t *testing.T) {
	sock := serve(t, newMem(1<<20), true)
	_, n, c := drivertest.Open(t, nodeOpts(sock), drivertest.RootPerm)
	if err := c.Truncate(t.Context(), 2<<20, false); err == nil || err.Error() != "Cannot grow NBD nodes" {
		t.Errorf("grow: %v", err)
	}
	if err := c.Truncate(t.Context(), 1<<19, true); err == nil || err.Error() != "Cannot resize NBD nodes" {
		t.Errorf("exact shrink: %v", err)
	}
	if err := c.Truncate(t.Context(), 1<<19, false); err != nil {
		t.Errorf("shrink: %v", err)
	}
	if n.Length() != 1<<20 {
		t.Errorf("length %d", n.Length())
	}
}

// The request flags reach the server: FUA on writes, NBD_CMD_FLAG_NO_HOLE
// unless the write-zeroes may unmap, NBD_CMD_FLAG_FAST_ZERO for
// ReqNoFallback.
func TestRequestFlags(t *testing.T) {
	m := newMem(1 << 20)
	_, _, c := drivertest.Open(t, nodeOpts(serve(t, m, true)), drivertest.RootPerm)
	ctx := t.Context()
	state := func() string {
		m.mu.Lock()
		defer m.mu.Unlock()
		return fmt.Sprintf("fua=%v mayTrim=%v fastZero=%v flushes=%d", m.fua, m.mayTrim, m.fastZero, m.flushes)
	}
	for _, tc := range []struct {
		do   func() error
		want string
	}{
		{func() error { return c.Write(ctx, 0, make([]byte, 4096), blockdev.ReqFUA) }, "fua=true mayTrim=false fastZero=false flushes=0"},
		{func() error { return c.Write(ctx, 0, make([]byte, 4096), 0) }, "fua=false mayTrim=false fastZero=false flushes=0"},
		{func() error { return c.WriteZeroes(ctx, 0, 65536, blockdev.ReqMayUnmap) }, "fua=false mayTrim=true fastZero=false flushes=0"},
		{func() error { return c.WriteZeroes(ctx, 0, 65536, blockdev.ReqNoFallback) }, "fua=false mayTrim=false fastZero=true flushes=0"},
		// FUA on write-zeroes: the server flushes after it.
		{func() error { return c.WriteZeroes(ctx, 0, 65536, blockdev.ReqFUA) }, "fua=false mayTrim=false fastZero=false flushes=1"},
		{func() error { return c.Flush(ctx) }, "fua=false mayTrim=false fastZero=false flushes=2"},
	} {
		if err := tc.do(); err != nil {
			t.Fatal(err)
		}
		if got := state(); got != tc.want {
			t.Errorf("got %s, want %s", got, tc.want)
		}
	}
}
