#!/usr/bin/env bash
# Side-by-side qcow2 throughput through NBD, qemu-storage-daemon against
# qbmond: the same fresh 4 GiB qcow2 image (qemu-img create), the same QMP
# setup, the same fio jobs (fio's nbd engine), one daemon after the other.
#   scripts/qcow2perf.sh [QBMOND_BINARY]        (make perf-qcow2)
# Needs fio with the nbd engine (Debian's fio has it).
set -euo pipefail
QBMOND=${1:-bin/qbmond}
RUNTIME=${RUNTIME:-8}
command -v fio >/dev/null || { echo "fio is needed: apt-get install -y fio" >&2; exit 1; }
dir=$(mktemp -d /tmp/qbq2-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT

start() { # kind
	local sock="$dir/$1.qmp" bin
	if [ "$1" = qsd ]; then bin=qemu-storage-daemon; else bin=$QBMOND; fi
	rm -f "$sock" "$dir/nbd.sock" "$dir/img.qcow2"
	qemu-img create -q -f qcow2 "$dir/img.qcow2" 4G
	"$bin" --chardev socket,path="$sock",server=on,wait=off,id=m0 --monitor chardev=m0 >/dev/null 2>&1 &
	for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
	printf '%s\n' '{"execute":"qmp_capabilities"}' \
		'{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"d0","file":{"driver":"file","filename":"'"$dir/img.qcow2"'"}}}' \
		'{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"'"$dir/nbd.sock"'"}}}}' \
		'{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"d0","writable":true}}' |
		socat -t2 - UNIX-CONNECT:"$sock" >/dev/null
}

# fio_bw NAME RW BS [extra fio options...]: MiB/s of one fio job.
fio_bw() {
	local name=$1 rw=$2 bs=$3
	shift 3
	fio --name="$name" --ioengine=nbd --uri="nbd+unix:///d0?socket=$dir/nbd.sock" \
		--rw="$rw" --bs="$bs" --iodepth=16 --output-format=terse --terse-version=3 "$@" |
		awk -F';' -v rw="$rw" 'NF > 50 { kb = (rw ~ /write/) ? $48 : $7; printf "%.1f\n", kb / 1024 }'
}

# small_alloc: a VM's first boot on a thin image, each 4 KiB write the
# first into its 64 KiB cluster (16384 writes, iodepth 16, qemu-img bench
# through NBD); MiB/s of the 64 MiB written, from the wall time.
small_alloc() {
	local s e
	s=$(date +%s%N)
	qemu-img bench -f raw -w -c 16384 -d 16 -s 4096 -S 65536 "nbd+unix:///d0?socket=$dir/nbd.sock" >/dev/null
	e=$(date +%s%N)
	awk -v ns=$((e - s)) 'BEGIN { printf "%.1f\n", 64 / (ns / 1e9) }'
}

declare -A R
jobs=(small_alloc alloc seqread seqwrite randread4k randwrite4k randread64k randwrite64k)
for k in qsd qbmond; do
	start "$k"
	R[$k,small_alloc]=$(small_alloc)
	kill %1; wait 2>/dev/null || true
	start "$k"
	# First writes allocate clusters: 2 GiB sequentially into the empty image.
	R[$k,alloc]=$(fio_bw alloc write 1M --size=2G)
	R[$k,seqread]=$(fio_bw seqread read 1M --size=2G)
	R[$k,seqwrite]=$(fio_bw seqwrite write 1M --size=2G)
	R[$k,randread4k]=$(fio_bw rr4 randread 4k --size=2G --time_based --runtime="$RUNTIME" --randrepeat=1)
	R[$k,randwrite4k]=$(fio_bw rw4 randwrite 4k --size=2G --time_based --runtime="$RUNTIME" --randrepeat=1)
	R[$k,randread64k]=$(fio_bw rr64 randread 64k --size=2G --time_based --runtime="$RUNTIME" --randrepeat=1)
	R[$k,randwrite64k]=$(fio_bw rw64 randwrite 64k --size=2G --time_based --runtime="$RUNTIME" --randrepeat=1)
	kill %1; wait 2>/dev/null || true
done
echo "Measured $(date +%F) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; fio nbd engine, iodepth 16, ${RUNTIME}s per random job."
echo
echo "| workload (4 GiB qcow2, 64 KiB clusters) | QSD 7.2 | qbmond | qbmond/QSD |"
echo "| --- | ---: | ---: | ---: |"
for j in "${jobs[@]}"; do
	awk -v n="$j" -v a="${R[qsd,$j]}" -v b="${R[qbmond,$j]}" 'BEGIN { printf "| %s | %.0f MiB/s | %.0f MiB/s | %.2f× |\n", n, a, b, (a > 0) ? b / a : 0 }'
done
