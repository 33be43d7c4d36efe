#!/usr/bin/env bash
# Runs every Go fuzz target in the module for a fixed number of executions.
# Usage: scripts/fuzz.sh [SCALE]   (default 1: about ten seconds per target
# on a 2-vCPU machine; make fuzz FUZZSCALE=60 runs about ten minutes each)
#
# Budgets are execution counts, not durations: with a duration, Go 1.26's
# fuzz coordinator can report "context deadline exceeded" and fail the run
# when -fuzztime expires while a worker is mid-call, with no crasher at all
# (go.dev/issue/75804, fixed in Go 1.27). A count has no deadline to race.
# Each target's count is what it executes in about ten seconds here; a new
# target must be given one below.
#
# New interesting inputs are not minimised: with inputs of tens of KiB
# (qcow2 images) minimisation took the whole run; a crash still saves
# its input.
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-1}"
[[ "$scale" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: SCALE must be a positive integer, not '$scale'" >&2; exit 2; }

budget() {
	case "$1 $2" in
	"drivers/blkdebug FuzzConfig") echo 250000 ;;
	"drivers/qbm FuzzParse") echo 120000 ;;
	"drivers/qcow2 FuzzBitmapDirectory") echo 200000 ;;
	"drivers/qcow2 FuzzOpen") echo 4000 ;;
	"internal/qjson FuzzDirectLikeGeneral") echo 60000 ;;
	"keyval FuzzParse") echo 250000 ;;
	"nbd FuzzClientReply") echo 100000 ;;
	"nbd FuzzOptions") echo 90000 ;;
	"nbd FuzzRequests") echo 90000 ;;
	"qmp FuzzParseJSON") echo 120000 ;;
	"qmp FuzzJSONRPC") echo 25000 ;;
	"qmp FuzzSession") echo 50000 ;;
	"schema FuzzArgs") echo 200000 ;;
	*) return 1 ;;
	esac
}

mod="$(go list -m)"
n=0
for pkg in $(go list ./...); do
	for f in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		rel="${pkg#"$mod"/}"
		b="$(budget "$rel" "$f")" || { echo "fuzz: no budget for $rel $f; add one to $0" >&2; exit 1; }
		execs=$((b * scale))
		echo "fuzz $pkg $f (${execs} execs)"
		go test -run=NONE -fuzz="^${f}\$" -fuzztime="${execs}x" -fuzzminimizetime=0 "$pkg"
		n=$((n + 1))
	done
done
echo "fuzz: ran $n targets"
[ "$n" -gt 0 ] || { echo "fuzz: no fuzz targets found" >&2; exit 1; }
