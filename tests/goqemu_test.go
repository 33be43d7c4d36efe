package tests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"
)

// TestGoQemu drives qbmond the way go-qemu programs do: SocketMonitor and
// the generated raw.Monitor add, query and delete nodes.
func TestGoQemu(t *testing.T) {
	d := startDaemon(t, kindQbmond, "")
	img := filepath.Join(d.dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	mon, err := qmp.NewSocketMonitor("unix", d.sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}
	defer mon.Disconnect()
	r := raw.NewMonitor(mon)

	v, err := r.QueryVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.Qemu.Major != 7 || v.Qemu.Minor != 2 || v.Package == "" {
		t.Fatalf("query-version: %+v", v)
	}

	// go-qemu's generated BlockdevOptions* types cannot be marshalled: each
	// MarshalJSON embeds its own type and recurses until the stack
	// overflows. Programs add nodes with SocketMonitor.Run and raw JSON,
	// as here, and use raw.Monitor for the typed queries.
	add := func(args string) error {
		_, err := mon.Run([]byte(`{"execute":"blockdev-add","arguments":` + args + `}`))
		return err
	}
	size := int64(8 << 20)
	if err := add(`{"driver": "null-co", "node-name": "n0", "size": 8388608}`); err != nil {
		t.Fatalf("blockdev-add null-co: %v", err)
	}
	if err := add(`{"driver": "file", "node-name": "f0", "filename": "` + img + `", "read-only": true}`); err != nil {
		t.Fatalf("blockdev-add file: %v", err)
	}
	if err := add(`{"driver": "raw", "node-name": "r0", "file": "f0", "read-only": true}`); err != nil {
		t.Fatalf("blockdev-add raw: %v", err)
	}
	if err := add(`{"driver": "null-co", "node-name": "n0"}`); err == nil {
		t.Fatal("duplicate node-name accepted")
	} else if err.Error() != "Duplicate nodes with node-name='n0'" {
		t.Fatalf("duplicate node-name: %q", err)
	}

	nodes, err := r.QueryNamedBlockNodes()
	if err != nil {
		t.Fatalf("query-named-block-nodes: %v", err)
	}
	got := map[string]raw.BlockDeviceInfo{}
	for _, n := range nodes {
		if n.NodeName != nil {
			got[*n.NodeName] = n
		}
	}
	if n, ok := got["n0"]; !ok || n.Drv != "null-co" || n.Image.VirtualSize != size || n.Ro {
		t.Errorf("n0: %+v", n)
	}
	if n, ok := got["f0"]; !ok || n.Drv != "file" || n.File != img || !n.Ro || n.Image.VirtualSize != 1<<20 {
		t.Errorf("f0: %+v", n)
	}
	if n, ok := got["r0"]; !ok || n.Drv != "raw" || n.Image.Format != "raw" || n.Image.Filename != img {
		t.Errorf("r0: %+v", n)
	}
	if len(got) != 3 {
		t.Errorf("want 3 named nodes, got %d", len(got))
	}

	cmds, err := r.QueryCommands()
	if err != nil {
		t.Fatal(err)
	}
	if len(cmds) < 10 {
		t.Errorf("query-commands: only %d commands", len(cmds))
	}

	if err := r.BlockdevDel("f0"); err == nil {
		t.Error("blockdev-del of a node in use succeeded")
	}
	for _, n := range []string{"r0", "f0", "n0"} {
		if err := r.BlockdevDel(n); err != nil {
			t.Errorf("blockdev-del %s: %v", n, err)
		}
	}
	out, err := mon.Run([]byte(`{"execute":"query-named-block-nodes"}`))
	if err != nil {
		t.Fatal(err)
	}
	var left struct{ Return []any }
	if err := json.Unmarshal(out, &left); err != nil || len(left.Return) != 0 {
		t.Errorf("nodes left after blockdev-del: %s (%v)", out, err)
	}
}
