package main

// Mirror over NBD, a storage migration's copy: blockdev-mirror sync=full
// of a 4 GiB qcow2 image holding 1 GiB (as writeData puts it) into an nbd
// node on the other daemon's export (unix socket) of an empty 4 GiB
// qcow2 image, timed from the command to BLOCK_JOB_READY, then
// block-job-cancel (the switch-over) to BLOCK_JOB_COMPLETED. Both images
// are compared once both daemons have quit.

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

func nbdMirror(srcKind, srcBin, dstKind, dstBin, root, tmpl string) mirrorResult {
	out := mirrorResult{total: time.Duration(1<<63 - 1)}
	for range *repeat {
		dir := fresh(root, tmpl)
		ddir := filepath.Join(dir, "dst")
		must(os.Mkdir(ddir, 0o755))
		sh(ddir, fmt.Sprintf("qemu-img create -q -f qcow2 dst.qcow2 %d", virtualSize))
		dd := start(dstKind, dstBin, ddir)
		dsock := filepath.Join(ddir, "nbd.sock")
		dd.call("blockdev-add", qcow2("dst", filepath.Join(ddir, "dst.qcow2"), nil, false))
		dd.call("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": dsock}}})
		dd.call("block-export-add", map[string]any{"type": "nbd", "id": "dst", "node-name": "dst", "writable": true})
		sd := start(srcKind, srcBin, dir)
		sd.call("blockdev-add", qcow2("src", filepath.Join(dir, "src.qcow2"), nil, false))
		sd.call("blockdev-add", map[string]any{"driver": "nbd", "node-name": "tgt", "export": "dst",
			"server": map[string]any{"type": "unix", "path": dsock}})
		t := time.Now()
		sd.call("blockdev-mirror", map[string]any{"job-id": "m0", "device": "src", "target": "tgt", "sync": "full"})
		sd.wait("BLOCK_JOB_READY")
		ready := time.Since(t)
		sd.call("block-job-cancel", map[string]any{"device": "m0"})
		ev := sd.wait("BLOCK_JOB_COMPLETED")
		total := time.Since(t)
		if data, _ := ev["data"].(map[string]any); data["error"] != nil {
			must(fmt.Errorf("%s to %s: mirror failed: %v", srcKind, dstKind, data["error"]))
		}
		sd.call("blockdev-del", map[string]any{"node-name": "tgt"})
		sd.stop()
		dd.stop()
		sh(dir, "qemu-img compare -q -f qcow2 -F qcow2 src.qcow2 dst/dst.qcow2")
		must(os.RemoveAll(dir))
		if total < out.total {
			out = mirrorResult{ready: ready, total: total}
		}
	}
	return out
}

func nbdMirrorTable(root string, rate func(time.Duration) float64) {
	tmpl := filepath.Join(root, "nbdmirror")
	must(os.Mkdir(tmpl, 0o755))
	sh(tmpl, fmt.Sprintf("qemu-img create -q -f qcow2 src.qcow2 %d", virtualSize))
	writeData(tmpl, "src.qcow2", 0x5a)
	fmt.Printf("| blockdev-mirror sync=full over NBD (unix socket), %d GiB in a 4 GiB qcow2, into the other daemon's export of a new qcow2 | to READY | throughput | to COMPLETED (cancel) | throughput | qbmond/QSD as source |\n", *dataGiB)
	fmt.Printf("| --- | ---: | ---: | ---: | ---: | ---: |\n")
	for _, dst := range []struct{ kind, bin string }{{"qsd", *qsdBin}, {"qbmond", *qbmondBin}} {
		q := nbdMirror("qsd", *qsdBin, dst.kind, dst.bin, root, tmpl)
		b := nbdMirror("qbmond", *qbmondBin, dst.kind, dst.bin, root, tmpl)
		fmt.Printf("| QSD 7.2 to %s | %.2f s | %.0f MiB/s | %.2f s | %.0f MiB/s | |\n", dst.kind, q.ready.Seconds(), rate(q.ready), q.total.Seconds(), rate(q.total))
		fmt.Printf("| qbmond to %s | %.2f s | %.0f MiB/s | %.2f s | %.0f MiB/s | %.2f× |\n", dst.kind, b.ready.Seconds(), rate(b.ready), b.total.Seconds(), rate(b.total),
			q.total.Seconds()/b.total.Seconds())
	}
	must(os.RemoveAll(tmpl))
	fmt.Println()
}
