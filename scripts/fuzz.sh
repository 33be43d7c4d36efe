#!/usr/bin/env bash
# Runs every Go fuzz target in the module for a short time each.
# Usage: scripts/fuzz.sh [DURATION]   (default 10s)
# New interesting inputs are not minimised: with inputs of tens of KiB
# (qcow2 images) minimisation took the whole run; a crash still saves
# its input.
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-10s}"
n=0
for pkg in $(go list ./...); do
	for f in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "fuzz $pkg $f ($t)"
		go test -run=NONE -fuzz="^${f}\$" -fuzztime="$t" -fuzzminimizetime=0 "$pkg"
		n=$((n + 1))
	done
done
echo "fuzz: ran $n targets"
[ "$n" -gt 0 ] || { echo "fuzz: no fuzz targets found" >&2; exit 1; }
