#!/usr/bin/env bash
# Runs every Go fuzz target in the module for a short time each.
# Usage: scripts/fuzz.sh [DURATION]   (default 10s)
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-10s}"
n=0
for pkg in $(go list ./...); do
	for f in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "fuzz $pkg $f ($t)"
		go test -run=NONE -fuzz="^${f}\$" -fuzztime="$t" "$pkg"
		n=$((n + 1))
	done
done
echo "fuzz: ran $n targets"
[ "$n" -gt 0 ] || { echo "fuzz: no fuzz targets found" >&2; exit 1; }
