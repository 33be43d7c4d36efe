package tests

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// blkdebugIO runs qemu-io commands against an NBD export of a blkdebug node
// with the given rules over a fresh 1 MiB raw file full of data, on a daemon of kind k,
// and returns what qemu-io said about each request: the "read"/"wrote"
// lines and the failures, without timings.
func blkdebugIO(t *testing.T, k kind, rules map[string]any, cmds []string, overRaw bool) []string {
	t.Helper()
	dir := shortTempDir(t)
	// Data everywhere, so that NBD reads reach the driver rather than
	// being answered as holes from block status.
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, bytes.Repeat([]byte{0x5a}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	opts := map[string]any{"driver": "blkdebug", "image": map[string]any{"driver": "file", "filename": img}}
	for key, v := range rules {
		opts[key] = v
	}
	if overRaw {
		// A format node above fires read_aio and write_aio.
		opts = map[string]any{"driver": "raw", "file": opts}
	}
	d, _, uri := exportNode(t, k, dir, opts, true, false)
	defer d.stop()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	// qemu-io's exit status says whether a command failed: the output is
	// what is compared.
	out, _ := exec.Command(requireTool(t, "qemu-io"), append(args, uri)...).CombinedOutput()
	var got []string
	for l := range strings.SplitSeq(string(out), "\n") {
		if strings.HasPrefix(l, "read ") || strings.HasPrefix(l, "wrote ") || strings.Contains(l, "failed") {
			got = append(got, l)
		}
	}
	return got
}

// TestBlkdebugLikeQSD injects errors through events the node fires on
// itself (pwritev, pwritev_zero) and compares what qemu-io sees through
// NBD with qemu-storage-daemon.
func TestBlkdebugLikeQSD(t *testing.T) {
	requireTool(t, "qemu-storage-daemon")
	for _, tc := range []struct {
		name    string
		rules   []any
		cmds    []string
		overRaw bool
	}{
		{"once", []any{map[string]any{"event": "pwritev", "once": true}},
			[]string{"write 0 4k", "write 0 4k", "read 0 4k"}, false},
		{"enospc", []any{map[string]any{"event": "pwritev", "errno": 28, "iotype": "write"}},
			[]string{"write 0 4k", "write 4k 4k", "read 0 4k"}, false},
		{"sector", []any{map[string]any{"event": "pwritev", "sector": 8, "iotype": "write"}},
			[]string{"write 0 4k", "write 4k 4k", "write 8k 4k", "write 4095 2", "read 0 8k"}, false},
		{"zeroes", []any{map[string]any{"event": "pwritev_zero", "iotype": "write-zeroes", "once": true}},
			[]string{"write -z 0 4k", "write -z 0 4k", "write 0 4k"}, false},
		{"state", []any{map[string]any{"event": "pwritev", "state": 2, "iotype": "write"}},
			[]string{"write 0 4k", "write 0 4k", "write 0 4k"}, false},
		// Without an iotype the active rule fails reads too. QSD drops the
		// NBD connection after a failed read, so the read comes last.
		{"default-iotype", []any{map[string]any{"event": "pwritev"}},
			[]string{"read 0 4k", "write 0 4k", "read 0 4k"}, false},
		// Events a raw node above fires on its file child.
		{"read_aio", []any{map[string]any{"event": "read_aio", "iotype": "read", "once": true}},
			[]string{"write 0 4k", "read 0 4k"}, true},
		{"write_aio", []any{map[string]any{"event": "write_aio", "iotype": "write", "errno": 28}},
			[]string{"write 0 4k", "write 4k 4k", "read 0 4k"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rules := map[string]any{"inject-error": tc.rules}
			if tc.name == "state" {
				rules["set-state"] = []any{map[string]any{"event": "pwritev_done", "new_state": 2}}
			}
			want := blkdebugIO(t, kindQSD, rules, tc.cmds, tc.overRaw)
			got := blkdebugIO(t, kindQbmond, rules, tc.cmds, tc.overRaw)
			sameLines(t, "results", got, want)
			t.Logf("%s", strings.Join(want, "\n"))
		})
	}
}
