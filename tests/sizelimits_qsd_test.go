package tests

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSizeLimitsLikeQSD opens and creates nodes at and around QEMU's
// size limits: BDRV_MAX_LENGTH (INT64_MAX rounded down to 1 GiB), which
// every driver's node must not exceed once rounded up to 512 bytes (null-co
// and null-aio here, whose size is whatever the option says), qcow2's own
// limits on open (a header size whose L1 index does not fit in an int is
// "too big", one that fits but exceeds the L1 table is "too small") and
// on create, and raw's offset/size over its file. Replies and the virtual
// sizes reported are compared with QSD's. (A negative size is left out:
// QSD 7.2 aborts on it.)
func TestSizeLimitsLikeQSD(t *testing.T) {
	const max = int64(1<<63-1) &^ (1<<30 - 1)
	sizes := []int64{1<<63 - 1, max + 1, max + 512, max, max - 512, max - 1, 1 << 62}
	runOn := func(k kind) *jobOutcome {
		dir := shortTempDir(t)
		// qcow2 headers whose size field says more than qemu-img would create.
		// The last is 1 MiB less 24 bytes: the disk is its whole sectors.
		headers := []uint64{1<<63 - 1, uint64(max), 1 << 62, uint64(max) + 512, 1 << 56, 1 << 40, 1<<20 - 24}
		for i, size := range headers {
			sh(t, dir, fmt.Sprintf("qemu-img create -q -f qcow2 h%d.qcow2 1M", i))
			p := filepath.Join(dir, fmt.Sprintf("h%d.qcow2", i))
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], size)
			if _, err := f.WriteAt(b[:], 24); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
		d := startDaemon(t, k, dir)
		c := d.connect()
		o := &jobOutcome{}
		for i, s := range sizes {
			for _, drv := range []string{"null-co", "null-aio"} {
				name := fmt.Sprintf("%s%d", drv[5:], i)
				o.record(c, "blockdev-add", map[string]any{"driver": drv, "node-name": name, "size": s})
			}
		}
		for i := range headers {
			o.record(c, "blockdev-add", map[string]any{"driver": "qcow2", "node-name": fmt.Sprintf("h%d", i), "read-only": true,
				"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, fmt.Sprintf("h%d.qcow2", i))}})
		}
		nodes, _ := c.ok("query-named-block-nodes", map[string]any{"flat": true}).([]any)
		for _, n := range nodes {
			m := n.(map[string]any)
			if strings.HasPrefix(fmt.Sprint(m["node-name"]), "#") {
				continue // h6's file node (auto-named)
			}
			img := m["image"].(map[string]any)
			o.replies = append(o.replies, fmt.Sprintf("%v: virtual-size %v", m["node-name"], img["virtual-size"]))
		}
		// Creating qcow2 images: sizes not a multiple of 512, past what
		// the L1 table can map, and past BDRV_MAX_LENGTH.
		sh(t, dir, "touch c.qcow2")
		c.ok("blockdev-add", map[string]any{"driver": "file", "node-name": "cf", "filename": filepath.Join(dir, "c.qcow2")})
		for i, s := range []int64{1<<63 - 1, max + 512, max, 1 << 62, 1 << 52, 1 << 51, 1 << 40} {
			id := fmt.Sprintf("c%d", i)
			o.start(c, "blockdev-create", map[string]any{"job-id": id, "options": map[string]any{"driver": "qcow2", "file": "cf", "size": s}})
			c.waitJob(id, "concluded")
			jobs, _ := c.ok("query-jobs", nil).([]any)
			for _, j := range jobs {
				if m := j.(map[string]any); m["id"] == id {
					o.replies = append(o.replies, fmt.Sprintf("create %d: %v", s, m["error"]))
				}
			}
			c.ok("job-dismiss", map[string]any{"id": id})
		}
		// raw over a 1 TiB null node: offset and size past its end.
		c.ok("blockdev-add", map[string]any{"driver": "null-co", "node-name": "nb", "size": int64(1) << 40})
		o.record(c, "blockdev-add", map[string]any{"driver": "raw", "node-name": "r1", "file": "nb", "size": max + 512})
		o.record(c, "blockdev-add", map[string]any{"driver": "raw", "node-name": "r2", "file": "nb", "offset": int64(1<<63 - 1)})
		o.record(c, "blockdev-add", map[string]any{"driver": "raw", "node-name": "r3", "file": "nb", "offset": int64(1)<<40 - 512, "size": 512})
		d.stop()
		o.scrub(dir)
		return o
	}
	compareOutcomes(t, runOn(kindQbmond), runOn(kindQSD))
}
