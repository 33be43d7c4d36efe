package tests

import (
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/sourcegraph/jsonrpc2"
)

// TestJSONRPC drives the JSON-RPC 2.0 transport with sourcegraph/jsonrpc2's
// own client: the same commands as QMP, errors carrying the QMP class.
func TestJSONRPC(t *testing.T) {
	dir := shortTempDir(t)
	rpcSock := filepath.Join(dir, "rpc.sock")
	startDaemon(t, kindQbmond, dir, "--jsonrpc", "unix:"+rpcSock)
	nc, err := net.Dial("unix", rpcSock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	events := make(chan *jsonrpc2.Request, 16)
	h := jsonrpc2.HandlerWithError(func(_ context.Context, _ *jsonrpc2.Conn, r *jsonrpc2.Request) (any, error) {
		if r.Notif {
			events <- r
		}
		return nil, nil
	})
	conn := jsonrpc2.NewConn(ctx, jsonrpc2.NewBufferedStream(nc, jsonrpc2.PlainObjectCodec{}), h)
	defer conn.Close()

	var ver struct {
		Qemu    struct{ Major, Minor, Micro int }
		Package string
	}
	if err := conn.Call(ctx, "query-version", nil, &ver); err != nil {
		t.Fatal(err)
	}
	if ver.Qemu.Major != 7 || ver.Qemu.Minor != 2 {
		t.Fatalf("query-version: %+v", ver)
	}
	var empty map[string]any
	if err := conn.Call(ctx, "blockdev-add", map[string]any{"driver": "null-co", "node-name": "n0"}, &empty); err != nil {
		t.Fatal(err)
	}
	var nodes []map[string]any
	if err := conn.Call(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || nodes[0]["node-name"] != "n0" {
		t.Fatalf("nodes: %v", nodes)
	}

	err = conn.Call(ctx, "blockdev-add", map[string]any{"driver": "null-co", "node-name": "n0"}, &empty)
	rpcErr, ok := err.(*jsonrpc2.Error)
	if !ok {
		t.Fatalf("duplicate blockdev-add: want a JSON-RPC error, got %v", err)
	}
	var data struct{ Class, Desc string }
	if rpcErr.Data == nil || json.Unmarshal(*rpcErr.Data, &data) != nil {
		t.Fatalf("error without QMP data: %+v", rpcErr)
	}
	if rpcErr.Message != "Duplicate nodes with node-name='n0'" || data.Class != "GenericError" || data.Desc != rpcErr.Message {
		t.Errorf("error: %+v data %+v", rpcErr, data)
	}
	err = conn.Call(ctx, "no-such-command", nil, &empty)
	if e, ok := err.(*jsonrpc2.Error); !ok || json.Unmarshal(*e.Data, &data) != nil || data.Class != "CommandNotFound" {
		t.Errorf("unknown command: %v", err)
	}
	err = conn.Call(ctx, "blockdev-del", map[string]any{}, &empty)
	if e, ok := err.(*jsonrpc2.Error); !ok || e.Message != "Parameter 'node-name' is missing" {
		t.Errorf("missing parameter: %v", err)
	}
}
