package tests

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// More raw NBD transcripts compared between QSD and qbmond: an empty
// description, the maximum block size a node's max-transfer limit gives
// (and the splitting of requests larger than it, which blkdebug's
// set-state rules make visible), and a structured read whose block-status
// lookup fails (an error chunk after the chunks before the failure; a
// qcow2's file node failing is ignored, as QEMU only asks it for more
// detail).

// nbd2Peers starts QSD and qbmond with the same exports and returns their
// NBD socket paths. Each export has the name and id of its node.
func nbd2Peers(t *testing.T) map[kind]string {
	socks := map[kind]string{}
	for _, k := range []kind{kindQSD, kindQbmond} {
		dir := shortTempDir(t)
		d := startDaemon(t, k, dir)
		c := d.connect()
		img := func(name string, fill byte) string {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, bytes.Repeat([]byte{fill}, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}
		file := func(p string) map[string]any { return map[string]any{"driver": "file", "filename": p} }
		// The backing node of a qcow2 is given in blockdev-add: with
		// a backing file in its header QEMU would add its name to the
		// backing node's options.
		qcow2 := func(name string) string {
			p := filepath.Join(dir, name)
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "1M")
			run(t, "qemu-io", "-c", "write -P 0x33 0 512k", p)
			return p
		}
		add := func(id string, node map[string]any, export map[string]any) {
			node["node-name"] = id
			c.ok("blockdev-add", node)
			e := map[string]any{"type": "nbd", "id": id, "name": id, "node-name": id}
			for k, v := range export {
				e[k] = v
			}
			c.ok("block-export-add", e)
		}
		sock := filepath.Join(dir, "nbd.sock")
		c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})

		add("nodesc", map[string]any{"driver": "raw", "file": file(img("a.img", 0))}, nil)
		add("emptydesc", map[string]any{"driver": "raw", "file": file(img("b.img", 0))},
			map[string]any{"description": ""})
		add("desc", map[string]any{"driver": "raw", "file": file(img("c.img", 0))},
			map[string]any{"description": "x"})
		// max-transfer on blkdebug itself, inherited by raw above it,
		// by a qcow2 through its file and through its backing node, and
		// combined with align.
		add("mt", map[string]any{"driver": "blkdebug", "max-transfer": 65536, "image": file(img("d.img", 1))}, nil)
		add("mtraw", map[string]any{"driver": "raw", "file": map[string]any{"driver": "blkdebug",
			"max-transfer": 65536, "image": file(img("e.img", 1))}}, map[string]any{"writable": true})
		add("mtqcow2", map[string]any{"driver": "qcow2", "file": map[string]any{"driver": "blkdebug",
			"max-transfer": 32768, "image": file(qcow2("f.qcow2"))}}, nil)
		base := qcow2("g.qcow2")
		add("mtbacking", map[string]any{"driver": "qcow2", "file": file(qcow2("h.qcow2")),
			"backing": map[string]any{"driver": "qcow2", "file": map[string]any{"driver": "blkdebug",
				"max-transfer": 131072, "image": file(base)}}}, nil)
		add("mtalign", map[string]any{"driver": "blkdebug", "max-transfer": 65536, "align": 4096,
			"image": file(img("i.img", 1))}, nil)
		add("mtcor", map[string]any{"driver": "copy-on-read", "file": map[string]any{"driver": "blkdebug",
			"max-transfer": 65536, "image": file(img("j.img", 1))}}, nil)
		// Requests split at 64 KiB: the first piece moves blkdebug to
		// state 2, where reads fail, or 3, where writes fail. One export
		// per case, as each case changes the state.
		for i, name := range []string{"split1", "split2", "split3", "split4"} {
			add(name, map[string]any{"driver": "raw", "file": map[string]any{"driver": "blkdebug",
				"max-transfer": 65536, "image": file(img(fmt.Sprintf("split%d.img", i), 2)),
				"set-state": []any{
					map[string]any{"event": "read_aio", "state": 1, "new_state": 2},
					map[string]any{"event": "write_aio", "state": 1, "new_state": 3},
				},
				"inject-error": []any{
					map[string]any{"event": "read_aio", "state": 2, "errno": 5},
					map[string]any{"event": "write_aio", "state": 3, "errno": 28},
				}}}, map[string]any{"writable": true})
		}
		// The request alignment is the node's own: raw does not take
		// blkdebug's.
		add("alignraw", map[string]any{"driver": "raw", "file": map[string]any{"driver": "blkdebug",
			"max-transfer": 65536, "align": 4096, "image": file(img("s.img", 1))}}, nil)
		// A limit below the preferred size.
		add("mtsmall", map[string]any{"driver": "blkdebug", "max-transfer": 1024, "image": file(img("o.img", 1))}, nil)
		// Block status fails once a read has happened.
		add("bsraw", map[string]any{"driver": "raw", "file": map[string]any{"driver": "blkdebug",
			"image":        file(img("l.img", 3)),
			"inject-error": []any{map[string]any{"event": "read_aio", "iotype": "block-status", "errno": 5}}}}, nil)
		add("bsqcow2", map[string]any{"driver": "qcow2", "file": map[string]any{"driver": "blkdebug",
			"image":        file(qcow2("m.qcow2")),
			"inject-error": []any{map[string]any{"event": "read_aio", "iotype": "block-status", "errno": 5}}}}, nil)
		add("bstop", map[string]any{"driver": "blkdebug", "image": file(img("n.img", 3)),
			"inject-error": []any{map[string]any{"event": "pwritev", "iotype": "block-status", "errno": 5}}},
			map[string]any{"writable": true})
		// Reads of the unallocated half of "bsbacking" go to its backing
		// node, whose block status fails once a read reached it.
		add("bsbacking", map[string]any{"driver": "qcow2", "file": file(qcow2("q.qcow2")),
			"backing": map[string]any{"driver": "raw", "file": map[string]any{"driver": "blkdebug",
				"image":        file(img("r.img", 4)),
				"inject-error": []any{map[string]any{"event": "read_aio", "iotype": "block-status", "errno": 5}}}}}, nil)
		// nbd-server-add with an empty description.
		c.ok("nbd-server-add", map[string]any{"device": "nodesc", "name": "legacyempty", "description": ""})
		socks[k] = sock
	}
	return socks
}

func TestNBDLikeQSD2(t *testing.T) {
	socks := nbd2Peers(t)
	type tcase struct {
		name string
		run  func(r *rawNBD)
	}
	var cases []tcase
	info := func(name string) func(r *rawNBD) {
		return func(r *rawNBD) {
			r.clientFlags(3)
			r.opt(3, 0, nil)
			r.optReplies()
			for _, opt := range []uint32{6, 7} {
				for _, infos := range [][]uint16{nil, {3}, {2, 1}} {
					d := infoData(name, infos...)
					r.opt(opt, uint32(len(d)), d)
					r.optReplies()
					if opt == 7 {
						return
					}
				}
			}
		}
	}
	for _, e := range []string{"nodesc", "emptydesc", "desc", "legacyempty", "mt", "mtraw", "mtqcow2", "mtbacking",
		"mtalign", "mtcor", "mtsmall", "alignraw"} {
		cases = append(cases, tcase{"info " + e, info(e)})
	}
	for _, e := range []string{"mt", "mtraw", "mtqcow2", "mtbacking", "mtalign", "mtcor", "mtsmall", "alignraw"} {
		cases = append(cases, tcase{"big read " + e, func(r *rawNBD) {
			r.goExport(e, false)
			r.request(0, 0, 1, 512, 512<<10, nil)
			replyDigest(r, 512<<10)
		}})
	}
	cases = append(cases, tcase{"big unaligned write", func(r *rawNBD) {
		r.goExport("mtraw", false)
		p := make([]byte, 300000)
		for i := range p {
			p[i] = byte(i * 7)
		}
		r.request(0, 1, 1, 1000, uint32(len(p)), p)
		r.reply(0)
		r.request(0, 0, 2, 0, 1<<20, nil)
		replyDigest(r, 1<<20)
	}})
	cases = append(cases,
		tcase{"split read", func(r *rawNBD) {
			r.goExport("split1", false)
			r.request(0, 0, 1, 0, 128<<10, nil)
			r.reply(128 << 10)
			r.request(0, 0, 2, 0, 512, nil)
			r.reply(512)
		}},
		tcase{"split write", func(r *rawNBD) {
			r.goExport("split2", false)
			r.request(0, 1, 1, 4096, 128<<10, make([]byte, 128<<10))
			r.reply(0)
			r.request(0, 1, 2, 0, 512, make([]byte, 512))
			r.reply(0)
		}},
		tcase{"split write fua", func(r *rawNBD) {
			r.goExport("split3", false)
			r.request(1, 1, 1, 4096, 128<<10, bytes.Repeat([]byte{7}, 128<<10))
			r.reply(0)
		}},
		tcase{"split read below limit", func(r *rawNBD) {
			r.goExport("split4", false)
			r.request(0, 0, 1, 0, 64<<10, nil)
			r.reply(64 << 10)
			r.request(0, 0, 2, 0, 512, nil)
			r.reply(512)
		}},
	)
	for _, e := range []string{"bsraw", "bsqcow2"} {
		cases = append(cases, tcase{"block status failure " + e, func(r *rawNBD) {
			r.goExport(e, true)
			r.request(4, 0, 1, 0, 4096, nil)
			r.reply(0)
			r.request(0, 0, 2, 0, 4096, nil)
			r.reply(0)
			r.request(0, 0, 3, 0, 4096, nil)
			r.reply(0)
		}})
	}
	cases = append(cases, tcase{"block status failure bsbacking", func(r *rawNBD) {
		r.goExport("bsbacking", true)
		r.request(4, 0, 1, 768<<10, 4096, nil)
		r.reply(0)
		r.request(0, 0, 2, 0, 1<<20, nil)
		r.reply(0)
	}})
	cases = append(cases, tcase{"block status failure bstop", func(r *rawNBD) {
		r.goExport("bstop", true)
		r.request(0, 0, 1, 0, 4096, nil)
		r.reply(0)
		r.request(0, 1, 2, 0, 512, make([]byte, 512))
		r.reply(0)
		r.request(0, 0, 3, 0, 4096, nil)
		r.reply(0)
	}})
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			if q := compareRawNBD(t, socks, tc.run); !t.Failed() {
				t.Logf("transcript (both):\n%s", q)
			}
		})
	}
}

// replyDigest reads a simple read reply and logs its error and a digest
// of its data.
func replyDigest(r *rawNBD, n int) {
	r.t.Helper()
	var h [16]byte
	if !r.read(h[:]) {
		return
	}
	if m := nbe.Uint32(h[:]); m != nbdSimpleMagic {
		r.t.Fatalf("bad reply magic %#x", m)
	}
	errno := nbe.Uint32(h[4:])
	r.logf("simple handle %d error %d", nbe.Uint64(h[8:]), errno)
	if errno == 0 {
		data := make([]byte, n)
		if r.read(data) {
			r.logf("data sha256 %x", sha256.Sum256(data))
		}
	}
}
