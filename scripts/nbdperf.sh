#!/usr/bin/env bash
# Side-by-side NBD throughput, qemu-storage-daemon against qbmond: the same
# image, the same client (nbdcopy), the same export set up over QMP, one
# daemon after the other in one run. Best of REPEAT runs per workload.
#   scripts/nbdperf.sh [QBMOND_BINARY]      (make perf-nbd)
set -euo pipefail
QBMOND=${1:-bin/qbmond}
REPEAT=${REPEAT:-3}
dir=$(mktemp -d /tmp/qbperf-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
# A 2 GiB image whose first 1 GiB is data, and 512 MiB to write.
truncate -s 2G "$dir/img"
dd if=/dev/urandom of="$dir/img" bs=1M count=1024 conv=notrunc status=none
head -c 512M /dev/urandom > "$dir/in"

start() { # kind
	local sock="$dir/$1.qmp" bin
	if [ "$1" = qsd ]; then bin=qemu-storage-daemon; else bin=$QBMOND; fi
	rm -f "$sock" "$dir/nbd.sock"
	"$bin" --chardev socket,path="$sock",server=on,wait=off,id=m0 --monitor chardev=m0 >/dev/null 2>&1 &
	for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
	printf '%s\n' '{"execute":"qmp_capabilities"}' \
		'{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"d0","file":{"driver":"file","filename":"'"$dir/img"'"}}}' \
		'{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"'"$dir/nbd.sock"'"}}}}' \
		'{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"d0","writable":true}}' |
		socat -t2 - UNIX-CONNECT:"$sock" >/dev/null
}

best() { # command...: best wall time of REPEAT runs, in seconds
	local b=999999 t
	for _ in $(seq "$REPEAT"); do
		t=$( { /usr/bin/env TIMEFORMAT=%R bash -c "time $* >/dev/null" ; } 2>&1 | tail -1)
		b=$(echo "$t $b" | awk '{print ($1 < $2) ? $1 : $2}')
	done
	echo "$b"
}

declare -A R
uri="nbd+unix:///d0?socket=$dir/nbd.sock"
for k in qsd qbmond; do
	start "$k"
	# Reading 1 GiB of data: nbdcopy copies what the map says is data.
	R[$k,read1]=$(best nbdcopy --connections=1 "'$uri'" null:)
	R[$k,read4]=$(best nbdcopy --connections=4 "'$uri'" null:)
	R[$k,write]=$(best nbdcopy --connections=1 "$dir/in" "'$uri'")
	kill %1; wait 2>/dev/null || true
done
echo "Measured $(date +%F) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; best of $REPEAT."
echo
echo "| workload | QSD 7.2 | qbmond | qbmond/QSD throughput |"
echo "| --- | ---: | ---: | ---: |"
row() { awk -v n="$1" -v a="$2" -v b="$3" -v mib="$4" 'BEGIN { printf "| %s | %.0f MiB/s | %.0f MiB/s | %.2f× |\n", n, mib/a, mib/b, a/b }'; }
row "nbdcopy read 1 GiB of data (2 GiB image), 1 connection" "${R[qsd,read1]}" "${R[qbmond,read1]}" 1024
row "nbdcopy read 1 GiB of data (2 GiB image), 4 connections" "${R[qsd,read4]}" "${R[qbmond,read4]}" 1024
row "nbdcopy write 512 MiB, 1 connection" "${R[qsd,write]}" "${R[qbmond,write]}" 512
