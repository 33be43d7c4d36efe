package qmp

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// rpcPair returns both ends of a unix socket pair (net.Pipe has no
// half-close, which the tests need to end the input).
func rpcPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "rpc")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// runRPC serves one JSON-RPC connection that receives in and returns
// everything the server wrote.
func runRPC(t testing.TB, in []byte) []byte {
	_, d, _ := testServer(t)
	s := NewJSONRPCServer(d, zerolog.Nop())
	a, b := rpcPair(t)
	defer a.Close()
	done := make(chan struct{})
	go func() { s.handleConn(b); b.Close(); close(done) }()
	out := make(chan []byte)
	go func() { got, _ := io.ReadAll(a); out <- got }()
	a.Write(in)
	a.CloseWrite()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("JSON-RPC connection did not end after its input closed")
	}
	return <-out
}

// checkRPCOutput checks that every line written is a JSON-RPC 2.0
// response or an event notification.
func checkRPCOutput(t testing.TB, out []byte) int {
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not JSON: %q", sc.Bytes())
		}
		if string(m["jsonrpc"]) != `"2.0"` {
			t.Fatalf("no jsonrpc 2.0: %s", sc.Bytes())
		}
		_, res := m["result"]
		_, rerr := m["error"]
		_, id := m["id"]
		switch {
		case string(m["method"]) == `"event"`:
		case id && res != rerr:
			n++
		default:
			t.Fatalf("neither a response nor an event: %s", sc.Bytes())
		}
	}
	return n
}

func TestJSONRPCStream(t *testing.T) {
	in := `{"jsonrpc": "2.0", "id": 1, "method": "echo", "method": "quit"}
{"jsonrpc": "2.0", "id": null, "method": "echo", "params": {"a": 1}}
[{"jsonrpc": "2.0", "id": 2, "method": "echo"}]
{"jsonrpc": "2.0", "id": -1.5e3, "method": "echo", "params": {"bad": 1}}
{"jsonrpc": "2.0", "method": "emit"}
{"jsonrpc": "2.0", "id": "s", "method": "echo", "params": {"x": "` + "\xc3\x28" + `"}}
`
	out := runRPC(t, []byte(in))
	want := `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"JSON parse error, duplicate key"}}
{"id":null,"result":{"a":1},"jsonrpc":"2.0"}
{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request: batch requests are not supported"}}
{"id":-1.5e3,"error":{"code":-32602,"message":"Parameter 'bad' is unexpected","data":{"class":"GenericError","desc":"Parameter 'bad' is unexpected"}},"jsonrpc":"2.0"}
{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"JSON parse error, invalid UTF-8 sequence in string"}}
`
	// The event's timestamp varies: drop that line.
	var lines []string
	for l := range bytes.Lines(out) {
		if !bytes.Contains(l, []byte(`"method":"event"`)) {
			lines = append(lines, string(l))
		} else if !bytes.Contains(l, []byte(`"event":"TEST_EVENT"`)) {
			t.Errorf("event: %s", l)
		}
	}
	if got := join(lines); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	checkRPCOutput(t, out)
}

func join(l []string) string {
	var b bytes.Buffer
	for _, s := range l {
		b.WriteString(s)
	}
	return b.String()
}

// TestJSONRPCTokenLimit: a message over the size limit is a parse error,
// and the connection goes on.
func TestJSONRPCTokenLimit(t *testing.T) {
	old := maxTokenSize
	maxTokenSize = 1 << 10
	defer func() { maxTokenSize = old }()
	in := `{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"x": "` + string(bytes.Repeat([]byte("a"), 4096)) + `"}}
{"jsonrpc": "2.0", "id": 2, "method": "echo"}
`
	out := string(runRPC(t, []byte(in)))
	want := `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"JSON token size limit exceeded"}}` + "\n"
	if len(out) < len(want) || out[:len(want)] != want {
		t.Errorf("got %s", out)
	}
	if !bytes.HasSuffix([]byte(out), []byte(`{"id":2,"result":{},"jsonrpc":"2.0"}`+"\n")) {
		t.Errorf("no reply to the request after the large one: %s", out)
	}
}

// FuzzJSONRPC: whatever arrives, the connection ends when its input does,
// and everything written is a JSON-RPC 2.0 response or notification.
func FuzzJSONRPC(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc": "2.0", "id": 1, "method": "echo"}`,
		`[{"jsonrpc": "2.0", "id": 1, "method": "echo"}, 1]`,
		`{"jsonrpc": "2.0", "id": {"a": []}, "method": "quit"}{"jsonrpc": "2.0", "id": 1e999, "method": "quit"}`,
		"}{]['\x01\xff\"", `{"jsonrpc": "2.0", "method": "emit", "params": [1]}`,
		`{"jsonrpc": "2.0", "id": "x", "result": 1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		checkRPCOutput(t, runRPC(t, in))
	})
}
