#!/usr/bin/env bash
# Write throughput with dirty bitmaps, qemu-storage-daemon against qbmond:
# the same 1 GiB raw image, exported writable, with 0, 1 and 8 enabled
# bitmaps (64 KiB granularity); fio's nbd engine writes random 4 KiB blocks.
# Then, for qbmond alone, a qbm node with one persistent bitmap under
# bitmap-sync=close and bitmap-sync=write.
#   scripts/bitmapperf.sh [QBMOND_BINARY]       (make perf-bitmaps)
set -euo pipefail
QBMOND=${1:-bin/qbmond}
RUNTIME=${RUNTIME:-6}
command -v fio >/dev/null || { echo "fio is needed: apt-get install -y fio" >&2; exit 1; }
dir=$(mktemp -d /tmp/qbbm-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
dd if=/dev/urandom of="$dir/img" bs=1M count=1024 status=none

qmp() { # socket, then JSON lines on stdin
	(echo '{"execute":"qmp_capabilities"}'; cat) | socat -t2 - UNIX-CONNECT:"$1" >/dev/null
}

start() { # binary node-json
	rm -f "$dir/qmp.sock" "$dir/nbd.sock"
	"$1" --chardev socket,path="$dir/qmp.sock",server=on,wait=off,id=m0 --monitor chardev=m0 >/dev/null 2>&1 &
	for _ in $(seq 100); do [ -S "$dir/qmp.sock" ] && break; sleep 0.05; done
	printf '%s\n' '{"execute":"blockdev-add","arguments":'"$2"'}' \
		'{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"'"$dir/nbd.sock"'"}}}}' \
		'{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"d0","writable":true}}' | qmp "$dir/qmp.sock"
}

bitmaps() { # count
	for i in $(seq 1 "$1"); do
		echo '{"execute":"block-dirty-bitmap-add","arguments":{"node":"d0","name":"b'"$i"'","granularity":65536}}'
	done | qmp "$dir/qmp.sock"
}

randwrite() { # MiB/s of random 4 KiB writes
	fio --name=w --ioengine=nbd --uri="nbd+unix:///d0?socket=$dir/nbd.sock" --rw=randwrite --bs=4k \
		--iodepth=16 --size=1G --time_based --runtime="$RUNTIME" --randrepeat=1 \
		--output-format=terse --terse-version=3 | awk -F';' 'NF > 50 { printf "%.1f\n", $48 / 1024 }'
}

raw='{"driver":"raw","node-name":"d0","file":{"driver":"file","filename":"'"$dir/img"'"}}'
declare -A R
for k in qsd qbmond; do
	bin=$QBMOND
	[ "$k" = qsd ] && bin=qemu-storage-daemon
	for n in 0 1 8; do
		start "$bin" "$raw"
		bitmaps "$n"
		R[$k,$n]=$(randwrite)
		kill %1; wait 2>/dev/null || true
	done
done

# qbm: one persistent dirty bitmap beside the same image.
head -c $((1024 * 1024 * 1024 / 65536 / 8)) /dev/zero >"$dir/d-b.bitmap"
cat >"$dir/d.qbm" <<JSON
{"QBM": {"version": 1, "image": {"file": "img", "format": "raw"},
 "bitmaps": {"b": {"file": "d-b.bitmap", "type": "dirty", "granularity-bytes": 65536}}}}
JSON
for sync in close write; do
	start "$QBMOND" '{"driver":"qbm","node-name":"d0","bitmap-sync":"'"$sync"'","file":{"driver":"file","filename":"'"$dir/d.qbm"'"}}'
	R[qbm,$sync]=$(randwrite)
	kill %1; wait 2>/dev/null || true
done

echo "Measured $(date +%F) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; fio nbd engine, random 4 KiB writes, iodepth 16, ${RUNTIME}s each."
echo
echo "| enabled bitmaps | QSD 7.2 | qbmond | qbmond/QSD | QSD cost | qbmond cost |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
for n in 0 1 8; do
	awk -v n="$n" -v a="${R[qsd,$n]}" -v b="${R[qbmond,$n]}" -v a0="${R[qsd,0]}" -v b0="${R[qbmond,0]}" \
		'BEGIN { printf "| %d | %.0f MiB/s | %.0f MiB/s | %.2f× | %+.1f%% | %+.1f%% |\n", n, a, b, b / a, (a / a0 - 1) * 100, (b / b0 - 1) * 100 }'
done
echo
echo "| qbm, one persistent bitmap | qbmond |"
echo "| --- | ---: |"
echo "| bitmap-sync=close | ${R[qbm,close]} MiB/s |"
echo "| bitmap-sync=write | ${R[qbm,write]} MiB/s |"
