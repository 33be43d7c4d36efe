package tests

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// While a mirror or an active commit runs, QEMU 7.2 keeps the job's dirty
// bitmap on the source node, anonymous and recording (not recording in
// write-blocking mode), and
// query-named-block-nodes lists it there; once the job ends it is gone.
// qbmond lists the same entry on the same node (count aside: it moves
// as the job copies; an active commit's is still 0 when the command
// replies) and takes it away at the same point.
func TestMirrorBitmapListedLikeQSD(t *testing.T) {
	qemuImg := requireTool(t, "qemu-img")
	qemuIOBin := requireTool(t, "qemu-io")
	out := map[kind][]string{}
	for _, k := range []kind{kindQSD, kindQbmond} {
		dir := shortTempDir(t)
		for _, f := range []string{"src.qcow2", "tgt.qcow2", "base.qcow2"} {
			run(t, qemuImg, "create", "-q", "-f", "qcow2", filepath.Join(dir, f), "64M")
		}
		run(t, qemuImg, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", filepath.Join(dir, "top.qcow2"))
		run(t, qemuIOBin, "-c", "write -P 1 0 8M", filepath.Join(dir, "src.qcow2"))
		run(t, qemuIOBin, "-c", "write -P 2 1M 4M", filepath.Join(dir, "top.qcow2"))
		d := startDaemon(t, k, dir)
		c := d.connect()
		for _, n := range []string{"src", "tgt", "top"} {
			c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": n,
				"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, n+".qcow2")}})
		}
		listed := func(label string) {
			var nodes []map[string]any
			b, _ := json.Marshal(c.ok("query-named-block-nodes", map[string]any{"flat": true}))
			if err := json.Unmarshal(b, &nodes); err != nil {
				t.Fatal(err)
			}
			var lines []string
			for _, n := range nodes {
				bms, _ := n["dirty-bitmaps"].([]any)
				for _, bm := range bms {
					m := bm.(map[string]any)
					delete(m, "count") // how far the job has got
					j, _ := json.Marshal(m)
					name, _ := n["node-name"].(string)
					if strings.HasPrefix(name, "#") {
						name = "#auto"
					}
					lines = append(lines, fmt.Sprintf("%s %s", name, j))
				}
			}
			sort.Strings(lines)
			out[k] = append(out[k], label+": "+strings.Join(lines, "; "))
		}
		listed("before")
		c.ok("blockdev-mirror", map[string]any{"job-id": "m", "device": "src", "target": "tgt",
			"sync": "full", "speed": 1 << 20})
		listed("mirror running")
		c.ok("block-job-cancel", map[string]any{"device": "m", "force": true})
		c.waitJob("m", "null")
		listed("mirror cancelled")
		c.ok("blockdev-mirror", map[string]any{"job-id": "w", "device": "src", "target": "tgt",
			"sync": "full", "speed": 1 << 20, "copy-mode": "write-blocking"})
		listed("write-blocking mirror running")
		c.ok("block-job-cancel", map[string]any{"device": "w", "force": true})
		c.waitJob("w", "null")
		listed("write-blocking mirror cancelled")
		c.ok("block-commit", map[string]any{"job-id": "c", "device": "top", "speed": 1 << 20})
		listed("active commit running")
		c.ok("block-job-cancel", map[string]any{"device": "c", "force": true})
		c.waitJob("c", "null")
		listed("commit cancelled")
		d.stop()
	}
	if !strings.Contains(strings.Join(out[kindQSD], "\n"), "src {") {
		t.Errorf("QSD listed no bitmap on the mirror's source; the test no longer shows anything:\n%s",
			strings.Join(out[kindQSD], "\n"))
	}
	for i := range out[kindQSD] {
		if i >= len(out[kindQbmond]) || out[kindQSD][i] != out[kindQbmond][i] {
			t.Errorf("QSD:\n%s\nqbmond:\n%s", strings.Join(out[kindQSD], "\n"), strings.Join(out[kindQbmond], "\n"))
			break
		}
	}
}
