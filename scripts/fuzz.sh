#!/usr/bin/env bash
# Runs every fuzz target for FUZZTIME each (default 10s; make fuzz gives 5m).
# A finding is written by go test under the package's testdata/fuzz/ and then
# runs as a regression test in every plain `go test`: commit it with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s}
for pkg in $(go list ./...); do
  for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
    echo "fuzz: $pkg $target ($fuzztime)"
    out=$(go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" 2>&1) || { echo "$out"; exit 1; }
    echo "$out" | grep -o 'execs: [0-9]*' | tail -1
  done
done
