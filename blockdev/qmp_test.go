package blockdev_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"testing"

	qemuraw "github.com/digitalocean/go-qemu/qmp/raw"
	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/blockqmp"
	"github.com/qbmond/qbmond/drivers/drivertest"
	"github.com/qbmond/qbmond/qmp"
)

// acceptAll stands in for the schema package: every command exists and
// every argument object is valid.
type acceptAll struct{}

func (acceptAll) HasCommand(string) bool                       { return true }
func (acceptAll) AllowOOB(string) bool                         { return false }
func (acceptAll) Args(_ string, args any, _ bool) (any, error) { return args, nil }

// Decode decodes the arguments through JSON.
func (acceptAll) Decode(_ string, args any, _ bool, dst any) error {
	if args == nil {
		return nil
	}
	b, err := json.Marshal(args)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return dec.Decode(dst)
}

func newDispatcher(t testing.TB) (*qmp.Dispatcher, *blockdev.Graph) {
	g := newGraph(t)
	d := qmp.NewDispatcher(acceptAll{}, zerolog.Nop())
	blockqmp.RegisterCommands(d, g)
	return d, g
}

// exec runs one command with JSON arguments and returns the reply value
// re-decoded as generic JSON, as a client would see it.
func exec(t testing.TB, d *qmp.Dispatcher, name, args string) (any, *qmp.Error) {
	t.Helper()
	var a any
	if args != "" {
		dec := json.NewDecoder(strings.NewReader(args))
		dec.UseNumber()
		if err := dec.Decode(&a); err != nil {
			t.Fatalf("bad test JSON %s: %v", args, err)
		}
	}
	res, qerr := d.Execute(context.Background(), qmp.Request{Name: name, Args: a})
	if qerr != nil {
		return nil, qerr
	}
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out, nil
}

func mustExec(t testing.TB, d *qmp.Dispatcher, name, args string) any {
	t.Helper()
	out, qerr := exec(t, d, name, args)
	if qerr != nil {
		t.Fatalf("%s %s: %s: %s", name, args, qerr.Class, qerr.Desc)
	}
	return out
}

var autoName = regexp.MustCompile(`#block[0-9]{3,}`)

// sameJSON compares a reply with the text QSD gave, after replacing the
// image path and auto node-names.
func sameJSON(t *testing.T, got any, img, qsd string) {
	t.Helper()
	qsd = strings.ReplaceAll(qsd, "/tmp/t1.img", img)
	var want any
	if err := json.Unmarshal([]byte(qsd), &want); err != nil {
		t.Fatalf("bad golden JSON: %v", err)
	}
	gb, _ := json.Marshal(got)
	g := autoName.ReplaceAllString(string(gb), "#blockN")
	var norm any
	json.Unmarshal([]byte(g), &norm)
	wb, _ := json.Marshal(want)
	var wnorm any
	json.Unmarshal([]byte(autoName.ReplaceAllString(string(wb), "#blockN")), &wnorm)
	if !reflect.DeepEqual(norm, wnorm) {
		t.Fatalf("reply differs from QSD's\n got: %s\nwant: %s", g, wb)
	}
}

// The golden replies below are qemu-storage-daemon 7.2's, captured with
// /work/helpers/qsd.sh for the same commands on a sparse 1 MiB /tmp/t1.img.

func TestQueryNamedBlockNodesNullAndRawOverFile(t *testing.T) {
	d, _ := newDispatcher(t)
	img := drivertest.Image(t, 1<<20)
	mustExec(t, d, "blockdev-add", `{"driver":"null-co","node-name":"n0"}`)
	mustExec(t, d, "blockdev-add", fmt.Sprintf(`{"driver":"raw","node-name":"r0","file":{"driver":"file","filename":%q}}`, img))
	got := mustExec(t, d, "query-named-block-nodes", "")
	sameJSON(t, got, img, `[{"iops_rd": 0, "detect_zeroes": "off", "image": {"virtual-size": 1048576, "filename": "/tmp/t1.img", "format": "raw", "actual-size": 0, "dirty-flag": false}, "iops_wr": 0, "ro": false, "node-name": "r0", "backing_file_depth": 0, "drv": "raw", "iops": 0, "bps_wr": 0, "write_threshold": 0, "encrypted": false, "bps": 0, "bps_rd": 0, "cache": {"no-flush": false, "direct": false, "writeback": true}, "file": "/tmp/t1.img"}, {"iops_rd": 0, "detect_zeroes": "off", "image": {"virtual-size": 1048576, "filename": "/tmp/t1.img", "format": "file", "actual-size": 0, "dirty-flag": false}, "iops_wr": 0, "ro": false, "node-name": "#block057", "backing_file_depth": 0, "drv": "file", "iops": 0, "bps_wr": 0, "write_threshold": 0, "encrypted": false, "bps": 0, "bps_rd": 0, "cache": {"no-flush": false, "direct": false, "writeback": true}, "file": "/tmp/t1.img"}, {"iops_rd": 0, "detect_zeroes": "off", "image": {"virtual-size": 1073741824, "filename": "null-co://", "format": "null-co", "actual-size": 0}, "iops_wr": 0, "ro": false, "node-name": "n0", "backing_file_depth": 0, "drv": "null-co", "iops": 0, "bps_wr": 0, "write_threshold": 0, "encrypted": false, "bps": 0, "bps_rd": 0, "cache": {"no-flush": false, "direct": false, "writeback": true}, "file": "null-co://"}]`)
	// flat changes nothing without backing files.
	sameJSON(t, mustExec(t, d, "query-named-block-nodes", `{"flat":true}`), img, mustJSON(t, got))
	sameJSON(t, mustExec(t, d, "query-block", ""), img, `[]`)
	sameJSON(t, mustExec(t, d, "x-debug-query-block-graph", ""), img, `{"edges": [{"name": "file", "parent": 3, "shared-perm": ["resize", "write-unchanged", "write", "consistent-read"], "perm": [], "child": 2}], "nodes": [{"name": "r0", "type": "block-driver", "id": 3}, {"name": "#block057", "type": "block-driver", "id": 2}, {"name": "n0", "type": "block-driver", "id": 1}]}`)
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestQueryVariants(t *testing.T) {
	d, _ := newDispatcher(t)
	img := drivertest.Image(t, 1<<20)
	for _, a := range []string{
		`{"driver":"file","node-name":"f1","filename":"/tmp/t1.img","read-only":true}`,
		`{"driver":"raw","node-name":"r1","file":"f1"}`,
		`{"driver":"raw","node-name":"r2","file":"f1","read-only":true}`,
		`{"driver":"file","node-name":"f3","filename":"/tmp/t1.img","aio":"native","cache":{"direct":true}}`,
		`{"driver":"null-aio","node-name":"na","size":4096,"read-zeroes":true,"latency-ns":10}`,
		`{"driver":"null-co","node-name":"nc","size":1000,"cache":{"no-flush":true,"direct":true}}`,
		`{"driver":"raw","node-name":"r3","file":"na","size":512,"offset":512}`,
	} {
		mustExec(t, d, "blockdev-add", strings.ReplaceAll(a, "/tmp/t1.img", img))
	}
	sameJSON(t, mustExec(t, d, "query-named-block-nodes", ""), img, `[{"iops_rd": 0, "detect_zeroes": "off", "image": {"virtual-size": 512, "filename": "json:{\"offset\": 512, \"driver\": \"raw\", \"size\": 512, \"file\": {\"read-zeroes\": true, \"driver\": \"null-aio\", \"size\": 4096}}", "format": "raw", "actual-size": 0}, "iops_wr": 0, "ro": false, "node-name": "r3", "backing_file_depth": 0, "drv": "raw", "iops": 0, "bps_wr": 0, "write_threshold": 0, "encrypted": false, "bps": 0, "bps_rd": 0, "cache": {"no-flush": false, "direct": false, "writeback": true}, "file": "json:{\"offset\": 512, \"driver\": \"raw\", \"size\": 512, \"file\": {\"read-zeroes\": true, \"driver\": \"null-aio\", \"size\": 4096}}"}, {"iops_rd": 0, "detect_zeroes": "off", "image": {"virtual-size": 1024, "filename": "json:{\"driver\": \"null-co\", \"size\": 1000}", "format": "null-co", "actual-size": 0}, "iops_wr": 0, "ro": false, "node-name": "nc", "backing_file_depth": 0, "drv": "null-co", "iops": 0, "bps_wr": 0, "write_threshold": 0, "encrypted": false, "bps": 0, "bps_rd": 0, "cache": {"no-flush": true, "direct": true, "writeback": true}, "file": "json:{\"driver\": \"null-co\", \"size\": 1000}"}, {"iops_rd": 0, "detect_zeroes": "off", "image": {"virtual-size": 4096, "filename": "json:{\"read-zeroes\": true, \"driver\": \"null-aio\", \"size\": 4096}", "format": "null-aio", "actual-size": 0}, "iops_wr": 0, "ro": false, "node-name": "na", "backing_file_depth": 0, "drv": "null-aio", "iops": 0, "bps_wr": 0, "write_threshold": 0, "encrypted": false, "bps": 0, "bps_rd": 0, "cache": {"no-flush": false, "direct": false, "writeback": true}, "file": "json:{\"read-zeroes\": true, \"driver\": \"null-aio\", \"size\": 4096}"}, {"iops_rd": 0, "detect_zeroes": "off", "image": {"virtual-size": 1048576, "filename": "/tmp/t1.img", "format": "file", "actual-size": 0, "dirty-flag": false}, "iops_wr": 0, "ro": false, "node-name": "f3", "backing_file_depth": 0, "drv": "file", "iops": 0, "bps_wr": 0, "write_threshold": 0, "encrypted": false, "bps": 0, "bps_rd": 0, "cache": {"no-flush": false, "direct": true, "writeback": true}, "file": "/tmp/t1.img"}, {"iops_rd": 0, "detect_zeroes": "off", "image": {"virtual-size": 1048576, "filename": "/tmp/t1.img", "format": "raw", "actual-size": 0, "dirty-flag": false}, "iops_wr": 0, "ro": true, "node-name": "r2", "backing_file_depth": 0, "drv": "raw", "iops": 0, "bps_wr": 0, "write_threshold": 0, "encrypted": false, "bps": 0, "bps_rd": 0, "cache": {"no-flush": false, "direct": false, "writeback": true}, "file": "/tmp/t1.img"}, {"iops_rd": 0, "detect_zeroes": "off", "image": {"virtual-size": 1048576, "filename": "/tmp/t1.img", "format": "raw", "actual-size": 0, "dirty-flag": false}, "iops_wr": 0, "ro": false, "node-name": "r1", "backing_file_depth": 0, "drv": "raw", "iops": 0, "bps_wr": 0, "write_threshold": 0, "encrypted": false, "bps": 0, "bps_rd": 0, "cache": {"no-flush": false, "direct": false, "writeback": true}, "file": "/tmp/t1.img"}, {"iops_rd": 0, "detect_zeroes": "off", "image": {"virtual-size": 1048576, "filename": "/tmp/t1.img", "format": "file", "actual-size": 0, "dirty-flag": false}, "iops_wr": 0, "ro": true, "node-name": "f1", "backing_file_depth": 0, "drv": "file", "iops": 0, "bps_wr": 0, "write_threshold": 0, "encrypted": false, "bps": 0, "bps_rd": 0, "cache": {"no-flush": false, "direct": false, "writeback": true}, "file": "/tmp/t1.img"}]`)
	sameJSON(t, mustExec(t, d, "x-debug-query-block-graph", ""), img, `{"edges": [{"name": "file", "parent": 7, "shared-perm": ["write-unchanged", "write", "consistent-read"], "perm": [], "child": 5}, {"name": "file", "parent": 3, "shared-perm": ["resize", "write-unchanged", "write", "consistent-read"], "perm": [], "child": 1}, {"name": "file", "parent": 2, "shared-perm": ["resize", "write-unchanged", "write", "consistent-read"], "perm": [], "child": 1}], "nodes": [{"name": "r3", "type": "block-driver", "id": 7}, {"name": "nc", "type": "block-driver", "id": 6}, {"name": "na", "type": "block-driver", "id": 5}, {"name": "f3", "type": "block-driver", "id": 4}, {"name": "r2", "type": "block-driver", "id": 3}, {"name": "r1", "type": "block-driver", "id": 2}, {"name": "f1", "type": "block-driver", "id": 1}]}`)
}

func TestQueryInheritanceAndJSONNames(t *testing.T) {
	d, _ := newDispatcher(t)
	img := drivertest.Image(t, 1<<20)
	for _, a := range []string{
		`{"driver":"raw","node-name":"r","read-only":true,"cache":{"direct":true,"no-flush":true},"detect-zeroes":"on","file":{"driver":"file","filename":"/tmp/t1.img","node-name":"f"}}`,
		`{"driver":"raw","node-name":"r2","file":{"driver":"file","filename":"/tmp/t1.img","node-name":"f2","read-only":true}}`,
		`{"driver":"raw","node-name":"r3","read-only":true,"file":{"driver":"file","filename":"/tmp/t1.img","node-name":"f3","read-only":false}}`,
		`{"driver":"raw","node-name":"r4","file":"r3"}`,
		`{"driver":"raw","node-name":"r5","offset":1000,"file":{"driver":"file","filename":"/tmp/t1.img","node-name":"f5"}}`,
	} {
		a = strings.ReplaceAll(a, "/tmp/t1.img", img)
		if strings.Contains(a, `"direct":true`) && !directOK(img) {
			t.Skip("no O_DIRECT here")
		}
		mustExec(t, d, "blockdev-add", a)
	}
	var got []map[string]any
	for _, v := range mustExec(t, d, "query-named-block-nodes", "").([]any) {
		got = append(got, v.(map[string]any))
	}
	summary := func(m map[string]any) string {
		img := m["image"].(map[string]any)
		c := m["cache"].(map[string]any)
		return fmt.Sprintf("%s ro=%v direct=%v no-flush=%v dz=%v size=%v file=%v",
			m["node-name"], m["ro"], c["direct"], c["no-flush"], m["detect_zeroes"], img["virtual-size"], m["file"])
	}
	var lines []string
	for _, m := range got {
		lines = append(lines, strings.ReplaceAll(summary(m), img, "IMG"))
	}
	// As QSD 7.2 shows: an inline child inherits read-only and the cache
	// modes (not detect-zeroes) unless it sets them; raw over raw and a
	// raw window get json: names; virtual-size is rounded to 512.
	want := []string{
		`r5 ro=false direct=false no-flush=false dz=off size=1.048064e+06 file=json:{"offset": 1000, "driver": "raw", "file": {"driver": "file", "filename": "IMG"}}`,
		`f5 ro=false direct=false no-flush=false dz=off size=1.048576e+06 file=IMG`,
		`r4 ro=false direct=false no-flush=false dz=off size=1.048576e+06 file=json:{"driver": "raw", "file": {"driver": "raw", "file": {"driver": "file", "filename": "IMG"}}}`,
		`r3 ro=true direct=false no-flush=false dz=off size=1.048576e+06 file=IMG`,
		`f3 ro=false direct=false no-flush=false dz=off size=1.048576e+06 file=IMG`,
		`r2 ro=false direct=false no-flush=false dz=off size=1.048576e+06 file=IMG`,
		`f2 ro=true direct=false no-flush=false dz=off size=1.048576e+06 file=IMG`,
		`r ro=true direct=true no-flush=true dz=on size=1.048576e+06 file=IMG`,
		`f ro=true direct=true no-flush=true dz=off size=1.048576e+06 file=IMG`,
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

func directOK(path string) bool {
	g := blockdev.NewGraph(zerolog.Nop())
	defer g.Close()
	return add(g, blockdev.Options{"driver": "file", "node-name": "probe", "filename": path, "read-only": true,
		"cache": map[string]any{"direct": true}}) == nil
}

func TestQMPErrors(t *testing.T) {
	d, _ := newDispatcher(t)
	img := drivertest.Image(t, 1<<20)
	mustExec(t, d, "blockdev-add", fmt.Sprintf(`{"driver":"file","node-name":"f","filename":%q}`, img))
	mustExec(t, d, "blockdev-add", `{"driver":"raw","node-name":"r","file":"f"}`)
	for _, tc := range []struct{ cmd, args, want string }{
		{"blockdev-del", `{"node-name":"f"}`, "Block device f is in use"},
		{"blockdev-del", `{"node-name":"zz"}`, "Failed to find node with node-name='zz'"},
		{"blockdev-add", `{"driver":"null-co","node-name":"r"}`, "Duplicate nodes with node-name='r'"},
		{"blockdev-add", `{"driver":"null-co","node-name":"1a"}`, "Invalid node-name: '1a'"},
	} {
		_, qerr := exec(t, d, tc.cmd, tc.args)
		if qerr == nil || qerr.Class != qmp.ClassGeneric || qerr.Desc != tc.want {
			t.Errorf("%s %s: got %+v, want GenericError %q", tc.cmd, tc.args, qerr, tc.want)
		}
	}
	mustExec(t, d, "blockdev-del", `{"node-name":"r"}`)
	mustExec(t, d, "blockdev-del", `{"node-name":"f"}`)
	if got := mustExec(t, d, "query-named-block-nodes", ""); len(got.([]any)) != 0 {
		t.Fatalf("nodes left: %v", got)
	}
}

func TestGoQemuDecodes(t *testing.T) {
	d, _ := newDispatcher(t)
	img := drivertest.Image(t, 1<<20)
	mustExec(t, d, "blockdev-add", `{"driver":"null-co","node-name":"n0"}`)
	mustExec(t, d, "blockdev-add", fmt.Sprintf(`{"driver":"raw","node-name":"r0","read-only":true,"file":{"driver":"file","filename":%q}}`, img))
	res, qerr := d.Execute(context.Background(), qmp.Request{Name: "query-named-block-nodes"})
	if qerr != nil {
		t.Fatal(qerr)
	}
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var infos []qemuraw.BlockDeviceInfo
	if err := json.Unmarshal(b, &infos); err != nil {
		t.Fatalf("go-qemu cannot decode the reply: %v", err)
	}
	if len(infos) != 3 {
		t.Fatalf("%d nodes", len(infos))
	}
	r0 := infos[0]
	if r0.NodeName == nil || *r0.NodeName != "r0" || r0.Drv != "raw" || !r0.Ro || r0.File != img ||
		r0.Image.VirtualSize != 1<<20 || r0.Image.Format != "raw" || r0.Image.DirtyFlag == nil ||
		r0.DetectZeroes != qemuraw.BlockdevDetectZeroesOptionsOff || !r0.Cache.Writeback {
		t.Fatalf("r0 decoded as %+v", r0)
	}
	if n0 := infos[2]; n0.Image.ActualSize == nil || *n0.Image.ActualSize != 0 || n0.Image.Filename != "null-co://" {
		t.Fatalf("n0 decoded as %+v", n0)
	}
}

func BenchmarkBlockdevAdd(b *testing.B) {
	// 1,000 null-co nodes per iteration through the dispatcher, as the
	// side-by-side benchmark against QSD does over the socket.
	names := make([]string, 1000)
	for i := range names {
		names[i] = fmt.Sprintf(`{"driver":"null-co","node-name":"n%d"}`, i)
	}
	for b.Loop() {
		b.StopTimer()
		d, g := newDispatcher(b)
		b.StartTimer()
		for _, a := range names {
			if _, qerr := exec(b, d, "blockdev-add", a); qerr != nil {
				b.Fatal(qerr)
			}
		}
		b.StopTimer()
		g.Close()
		b.StartTimer()
	}
}

func BenchmarkQueryNamedBlockNodes1000(b *testing.B) {
	d, _ := newDispatcher(b)
	for i := range 1000 {
		if _, qerr := exec(b, d, "blockdev-add", fmt.Sprintf(`{"driver":"null-co","node-name":"n%d"}`, i)); qerr != nil {
			b.Fatal(qerr)
		}
	}
	for b.Loop() {
		res, qerr := d.Execute(context.Background(), qmp.Request{Name: "query-named-block-nodes"})
		if qerr != nil {
			b.Fatal(qerr)
		}
		if _, err := json.Marshal(res); err != nil {
			b.Fatal(err)
		}
	}
}

func TestReportCorruptionEvent(t *testing.T) {
	d, g := newDispatcher(t)
	var got []qmp.Event
	cancel := d.SubscribeFunc(func(ev qmp.Event) { got = append(got, ev) })
	defer cancel()
	if _, qerr := exec(t, d, "blockdev-add", `{"driver":"null-co","node-name":"n0"}`); qerr != nil {
		t.Fatal(qerr)
	}
	lk, unlock := drivertest.Lock(g)
	n := lk.Lookup("n0")
	n.ReportCorruption("L2 table offset 0x5 unaligned", 5, -1, true) // under the graph lock too
	unlock()
	if len(got) != 1 || got[0].Name != "BLOCK_IMAGE_CORRUPTED" {
		t.Fatalf("events %v", got)
	}
	b, _ := json.Marshal(got[0].Data)
	if want := `{"device":"","node-name":"n0","msg":"L2 table offset 0x5 unaligned","offset":5,"fatal":true}`; string(b) != want {
		t.Fatalf("event data %s, want %s", b, want)
	}
}
