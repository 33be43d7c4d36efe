package main

// Mirror: blockdev-mirror sync=full of a 4 GiB qcow2 image holding 1 GiB
// (as writeData puts it) into a new qcow2 image of the same size made by
// qemu-img (a blockcopy to local storage), timed from the command to
// BLOCK_JOB_READY, then job-complete (the target flushed and pivoted) to
// BLOCK_JOB_COMPLETED.

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

type mirrorResult struct{ ready, total time.Duration }

func mirror(kind, bin, root, tmpl string) mirrorResult {
	out := mirrorResult{total: time.Duration(1<<63 - 1)}
	for range *repeat {
		dir := fresh(root, tmpl)
		sh(dir, fmt.Sprintf("qemu-img create -q -f qcow2 tgt.qcow2 %d", virtualSize))
		d := start(kind, bin, dir)
		d.call("blockdev-add", qcow2("src", filepath.Join(dir, "src.qcow2"), nil, false))
		d.call("blockdev-add", qcow2("tgt", filepath.Join(dir, "tgt.qcow2"), nil, false))
		t := time.Now()
		d.call("blockdev-mirror", map[string]any{"job-id": "m0", "device": "src", "target": "tgt", "sync": "full"})
		d.wait("BLOCK_JOB_READY")
		ready := time.Since(t)
		d.call("job-complete", map[string]any{"id": "m0"})
		ev := d.wait("BLOCK_JOB_COMPLETED")
		total := time.Since(t)
		if data, _ := ev["data"].(map[string]any); data["error"] != nil {
			must(fmt.Errorf("%s: mirror failed: %v", kind, data["error"]))
		}
		d.stop()
		sh(dir, "qemu-img compare -q -f qcow2 -F qcow2 src.qcow2 tgt.qcow2")
		must(os.RemoveAll(dir))
		if total < out.total {
			out = mirrorResult{ready: ready, total: total}
		}
	}
	return out
}

func mirrorTable(root string, rate func(time.Duration) float64) {
	tmpl := filepath.Join(root, "mirror")
	must(os.Mkdir(tmpl, 0o755))
	sh(tmpl, fmt.Sprintf("qemu-img create -q -f qcow2 src.qcow2 %d", virtualSize))
	writeData(tmpl, "src.qcow2", 0x5a)
	mq := mirror("qsd", *qsdBin, root, tmpl)
	mb := mirror("qbmond", *qbmondBin, root, tmpl)
	*cpSync = " && sync cp-dst"
	floor := cpFloor(root)
	*cpSync = ""
	must(os.RemoveAll(tmpl))
	fmt.Printf("| blockdev-mirror sync=full, %d GiB in a 4 GiB qcow2, to a new qcow2 | to READY | throughput | to COMPLETED (pivot) | throughput | qbmond/QSD |\n", *dataGiB)
	fmt.Printf("| --- | ---: | ---: | ---: | ---: | ---: |\n")
	fmt.Printf("| QSD 7.2 | %.2f s | %.0f MiB/s | %.2f s | %.0f MiB/s | |\n", mq.ready.Seconds(), rate(mq.ready), mq.total.Seconds(), rate(mq.total))
	fmt.Printf("| qbmond | %.2f s | %.0f MiB/s | %.2f s | %.0f MiB/s | %.2f× |\n", mb.ready.Seconds(), rate(mb.ready), mb.total.Seconds(), rate(mb.total),
		mq.total.Seconds()/mb.total.Seconds())
	fmt.Printf("| floor: cp and sync of a %d GiB file | | | %.2f s | %.0f MiB/s | |\n\n", *dataGiB, floor.Seconds(), rate(floor))
}
