package tests

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// chainScript builds a qcow2 chain of the given layers (base first), each
// with its own pattern in its own megabyte, then commits every layer above
// base into base with qemu-img, so that base holds all the data while the
// layers still name each other; ref/ gets a copy whose top layer is
// rebased (unsafe) onto base: the expected result of dropping the
// intermediate layers below layers[overlay].
func chainScript(layers []string, overlay int) string {
	var b strings.Builder
	b.WriteString("qemu-img create -q -f qcow2 " + layers[0] + ".qcow2 4M\n")
	for i, l := range layers {
		if i > 0 {
			fmt.Fprintf(&b, "qemu-img create -q -f qcow2 -b %s.qcow2 -F qcow2 %s.qcow2\n", layers[i-1], l)
		}
		fmt.Fprintf(&b, "qemu-io -f qcow2 -c 'write -P 0x%x %dM 512k' %s.qcow2 >/dev/null\n", 0x11*(i+1), i, l)
	}
	fmt.Fprintf(&b, "qemu-img commit -q -d -b %s.qcow2 %s.qcow2\n", layers[0], layers[overlay-1])
	fmt.Fprintf(&b, "mkdir ref && cp *.qcow2 ref/\n")
	fmt.Fprintf(&b, "(cd ref && qemu-img rebase -q -u -b %s.qcow2 -F qcow2 %s.qcow2)\n", layers[0], layers[overlay])
	return b.String()
}

func backingOf(t *testing.T, img string) string {
	t.Helper()
	var info struct {
		Backing string `json:"backing-filename"`
		Format  string `json:"backing-filename-format"`
	}
	out := run(t, "qemu-img", "info", "--output=json", "-U", img)
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("qemu-img info %s: %v\n%s", img, err, out)
	}
	return info.Backing + "|" + info.Format
}

// drop-intermediate on 3- and 4-layer qcow2 chains, with the layers
// opened by blockdev-add or implicitly from the headers: the overlay's
// header names base afterwards, the images check clean and the export
// reads what the reference chain reads.
func TestDropIntermediateQcow2(t *testing.T) {
	for _, tc := range []struct {
		layers   []string
		implicit bool
		overlay  int // index of the overlay in layers
	}{
		{[]string{"base", "top", "active"}, false, 2},
		{[]string{"base", "mid", "top", "active"}, false, 3},
		{[]string{"base", "mid", "top", "active"}, true, 3},
		// The overlay is a read-only backing node: it is reopened
		// read-write for the header rewrite and read-only again.
		{[]string{"base", "mid", "top", "active"}, true, 2},
	} {
		t.Run(fmt.Sprintf("%d-implicit=%v-overlay=%d", len(tc.layers), tc.implicit, tc.overlay), func(t *testing.T) {
			dir := shortTempDir(t)
			sh(t, dir, chainScript(tc.layers, tc.overlay))
			d := startDaemon(t, kindQbmond, dir)
			c := d.connect()
			base := filepath.Join(dir, "base.qcow2")
			names := map[string]string{}
			if tc.implicit {
				c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "active",
					"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, "active.qcow2")}})
				var nodes []map[string]any
				b, _ := json.Marshal(c.ok("query-named-block-nodes", nil))
				json.Unmarshal(b, &nodes)
				for _, n := range nodes {
					if n["drv"] == "qcow2" {
						names[strings.TrimSuffix(filepath.Base(n["image"].(map[string]any)["filename"].(string)), ".qcow2")] = n["node-name"].(string)
					}
				}
			} else {
				var below any
				for _, l := range tc.layers {
					o := map[string]any{"driver": "qcow2", "node-name": l,
						"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, l+".qcow2")}}
					if below != nil {
						o["backing"] = below
					}
					c.ok("blockdev-add", o)
					names[l], below = l, l
				}
			}
			active, top := "active", names[tc.layers[tc.overlay-1]]
			overlay := tc.layers[tc.overlay]
			class, desc := c.fail("drop-intermediate", map[string]any{"device": "active", "top": "active", "base": names["base"]})
			if class != "GenericError" || desc != "Top image file active is the active layer" {
				t.Errorf("active as top: %s %s", class, desc)
			}
			_, desc = c.fail("drop-intermediate", map[string]any{"device": "active", "top": top, "base": "nope"})
			if desc != "Cannot find device='' nor node-name='nope'" {
				t.Errorf("unknown base: %s", desc)
			}
			c.ok("drop-intermediate", map[string]any{"device": active, "top": top, "base": names["base"]})
			sock := filepath.Join(dir, "nbd.sock")
			c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
			c.ok("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "active"})
			identical(t, filepath.Join(dir, "ref", "active.qcow2"), "nbd+unix:///active?socket="+sock)
			nodes := c.ok("query-named-block-nodes", map[string]any{"flat": true}).([]any)
			want := 2 * (len(tc.layers) - tc.overlay + 1) // overlay and above, base, their files
			if !tc.implicit {
				want = 2 * len(tc.layers)
			}
			if len(nodes) != want {
				t.Errorf("%d nodes after the drop, want %d", len(nodes), want)
			}
			for _, n := range nodes {
				n := n.(map[string]any)
				if n["node-name"] == names[overlay] && n["ro"] != (overlay != "active") {
					t.Errorf("overlay %s: ro=%v after the drop", overlay, n["ro"])
				}
			}
			d.stop()
			if got := backingOf(t, filepath.Join(dir, overlay+".qcow2")); got != base+"|qcow2" {
				t.Errorf("%s's backing after the drop: %s", overlay, got)
			}
			chainOut := run(t, "qemu-img", "info", "--backing-chain", filepath.Join(dir, "active.qcow2"))
			if strings.Count(chainOut, "image: ") != len(tc.layers)-tc.overlay+1 {
				t.Errorf("backing chain:\n%s", chainOut)
			}
			for _, l := range tc.layers {
				checkClean(t, filepath.Join(dir, l+".qcow2"), false)
			}
			identical(t, filepath.Join(dir, "ref", "active.qcow2"), filepath.Join(dir, "active.qcow2"))
		})
	}
}

// change-backing-file answers as qemu-storage-daemon does, case by case,
// and leaves the same headers behind.
func TestChangeBackingFileLikeQSD(t *testing.T) {
	type result struct{ replies, headers []string }
	runOn := func(k kind) result {
		dir := shortTempDir(t)
		sh(t, dir, `
qemu-img create -q -f qcow2 base.qcow2 1M
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 other.qcow2
`)
		d := startDaemon(t, k, dir)
		c := d.connect()
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top",
			"file": map[string]any{"driver": "file", "filename": "top.qcow2"}})
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "other",
			"file": map[string]any{"driver": "file", "filename": "other.qcow2"}})
		c.ok("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "lone", "read-only": true,
			"file": map[string]any{"driver": "file", "filename": "base.qcow2"}})
		var nodes []map[string]any
		b, _ := json.Marshal(c.ok("query-named-block-nodes", nil))
		json.Unmarshal(b, &nodes)
		mid := ""
		for _, n := range nodes {
			if n["drv"] == "qcow2" && n["image"].(map[string]any)["filename"] == "mid.qcow2" {
				mid = n["node-name"].(string)
			}
		}
		var res result
		for _, a := range []map[string]any{
			{"device": "nope", "image-node-name": "top", "backing-file": "x"},
			{"device": "top", "image-node-name": "nope", "backing-file": "x"},
			{"device": mid, "image-node-name": mid, "backing-file": "x"},
			{"device": "top", "image-node-name": "lone", "backing-file": "x"},
			{"device": "top", "image-node-name": "other", "backing-file": "x"},
			{"device": "top", "image-node-name": mid, "backing-file": "newbase.qcow2"},
			{"device": "top", "image-node-name": "top", "backing-file": "newmid.qcow2"},
			{"device": "other", "image-node-name": "other", "backing-file": ""},
		} {
			r := c.cmd("change-backing-file", a)
			if e, ok := r["error"].(map[string]any); ok {
				res.replies = append(res.replies, fmt.Sprint(e["class"], ": ", strings.ReplaceAll(fmt.Sprint(e["desc"]), mid, "MID")))
			} else {
				res.replies = append(res.replies, fmt.Sprint(r["return"]))
			}
		}
		// The node views show the new names, read-only mid is read-only again.
		b, _ = json.Marshal(c.ok("query-named-block-nodes", nil))
		json.Unmarshal(b, &nodes)
		for _, n := range nodes {
			if n["drv"] == "qcow2" {
				img := n["image"].(map[string]any)
				line := fmt.Sprintf("view %v ro=%v backing-filename=%v file=%v backing_file=%v",
					strings.ReplaceAll(fmt.Sprint(n["node-name"]), mid, "MID"), n["ro"], img["backing-filename"], n["file"], n["backing_file"])
				res.headers = append(res.headers, autoName.ReplaceAllString(line, "#block"))
			}
		}
		d.stop()
		for _, img := range []string{"top", "mid", "other"} {
			res.headers = append(res.headers, img+": "+backingOf(t, filepath.Join(dir, img+".qcow2")))
		}
		return res
	}
	ours, qsd := runOn(kindQbmond), runOn(kindQSD)
	for i := range max(len(ours.replies), len(qsd.replies)) {
		var o, q string
		if i < len(ours.replies) {
			o = ours.replies[i]
		}
		if i < len(qsd.replies) {
			q = qsd.replies[i]
		}
		if o != q {
			t.Errorf("case %d: qbmond %q, QSD %q", i, o, q)
		}
	}
	if strings.Join(ours.headers, "\n") != strings.Join(qsd.headers, "\n") {
		t.Errorf("after the changes:\nqbmond:\n%s\nQSD:\n%s", strings.Join(ours.headers, "\n"), strings.Join(qsd.headers, "\n"))
	}
}
