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
    # go's fuzzer can end a clean run with "context deadline exceeded" when
    # its time is up while a worker is busy (no input reported): that run
    # is repeated once. A finding names its input file and always fails.
    for attempt in 1 2; do
      if out=$(go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" 2>&1); then
        break
      fi
      if [ "$attempt" = 1 ] && grep -q 'context deadline exceeded' <<<"$out" && ! grep -q 'Failing input written' <<<"$out"; then
        echo "fuzz: $target ended with go's deadline error and no finding; running it again"
        continue
      fi
      echo "$out"
      exit 1
    done
    echo "$out" | grep -o 'execs: [0-9]*' | tail -1
  done
done
