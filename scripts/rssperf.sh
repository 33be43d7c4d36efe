#!/usr/bin/env bash
# Idle memory, qemu-storage-daemon against qbmond: each daemon is started
# STARTS times with one QMP monitor socket and no nodes; AFTER seconds later
# its resident set is read from /proc/PID/status (total, anonymous, file
# pages), then it is killed. Figures in MB (10^6 bytes, as in
# docs/PERFORMANCE.md). With QUERY=1 a client first runs query-qmp-schema
# (through socat), the figure after use.
#   scripts/rssperf.sh [QBMOND_BINARY]          (make perf-rss)
# STARTS=3 AFTER=1.5 QUERY= by environment.
set -euo pipefail
QBMOND=${1:-bin/qbmond}
STARTS=${STARTS:-3}
AFTER=${AFTER:-1.5}
QUERY=${QUERY:-}
dir=$(mktemp -d /tmp/qbrss-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT

kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$2/status"; }

printf '%-8s %8s %8s %8s\n' daemon rss anon file
for k in qsd qbmond; do
	bin=$QBMOND
	[ "$k" = qsd ] && bin=qemu-storage-daemon
	for _ in $(seq "$STARTS"); do
		rm -f "$dir/qmp.sock"
		"$bin" --chardev socket,path="$dir/qmp.sock",server=on,wait=off,id=m0 --monitor chardev=m0 >/dev/null 2>&1 &
		pid=$!
		sleep "$AFTER"
		[ -S "$dir/qmp.sock" ] || { echo "$k: no QMP socket after ${AFTER}s" >&2; exit 1; }
		if [ -n "$QUERY" ]; then
			printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"query-qmp-schema"}' |
				socat -t2 - UNIX-CONNECT:"$dir/qmp.sock" >/dev/null
			sleep 0.5
		fi
		awk -v d="$k" -v r="$(kb VmRSS $pid)" -v a="$(kb RssAnon $pid)" -v f="$(kb RssFile $pid)" \
			'BEGIN { printf "%-8s %8.2f %8.2f %8.2f\n", d, r * 1.024 / 1000, a * 1.024 / 1000, f * 1.024 / 1000 }'
		kill "$pid"
		wait "$pid" 2>/dev/null || true
	done
done
