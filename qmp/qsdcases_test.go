package qmp_test

import (
	"bufio"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/blockqmp"
	"github.com/qbmond/qbmond/qmp"
	"github.com/qbmond/qbmond/schema"
)

const marker = `{"execute":"query-version","id":"MARK"}`

// startServer serves the real schema's core commands on a unix socket.
func startServer(t *testing.T) (string, qmp.VersionInfo) {
	t.Helper()
	s, err := schema.Load()
	if err != nil {
		t.Fatal(err)
	}
	d := qmp.NewDispatcher(s, zerolog.Nop())
	v := qmp.VersionInfo{Major: 7, Minor: 2, Micro: 0, Package: "qbmond test"}
	qmp.RegisterCore(d, v, func() {})
	schema.RegisterCommands(d, s)
	blockqmp.RegisterCommands(d, blockdev.NewGraph(zerolog.Nop()))
	sock := filepath.Join(t.TempDir(), "q.sock")
	l, err := qmp.Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := qmp.NewServer(d, v, zerolog.Nop())
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock, v
}

const version = `{"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "qbmond test"}`

func runCases(t *testing.T, cases []qsdCase, negotiate bool) {
	sock, _ := startServer(t)
	for _, tc := range cases {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		r := bufio.NewReader(conn)
		line := func() string {
			l, err := r.ReadString('\n')
			if err != nil {
				return "<" + err.Error() + ">"
			}
			return strings.TrimSuffix(l, "\r\n")
		}
		line() // greeting
		if negotiate {
			conn.Write([]byte(`{"execute":"qmp_capabilities"}` + "\n"))
			line()
		}
		conn.Write([]byte(tc.in + "\n" + marker + "\n"))
		for i, w := range tc.want {
			w = strings.ReplaceAll(w, "VERSION", version)
			if got := line(); got != w {
				t.Errorf("input %q, reply %d:\n got  %s\n want %s", tc.in, i+1, got, w)
				break
			}
		}
		conn.Close()
	}
}

func TestQSDCasesNegotiated(t *testing.T) { runCases(t, negotiatedCases, true) }
func TestQSDCasesRaw(t *testing.T)        { runCases(t, rawCases, false) }
func TestQSDCasesOrder(t *testing.T)      { runCases(t, orderCases, true) }
