#!/usr/bin/env bash
# The whole test suite: static checks, unit tests, and the end-to-end tests
# that boot real guests under QEMU. Run as root after `make all` (make test does both).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== static checks"
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt: not formatted: $unformatted" >&2; exit 1; fi
go vet ./...
# Pinned in go.mod as a tool: always there, at the version the code was checked with.
go tool staticcheck ./...

echo "== fuzz targets, briefly (make fuzz runs them longer)"
FUZZTIME=${FUZZTIME:-10s} ./scripts/fuzz.sh

echo "== services for the end-to-end tests (containerd with the CRI, a private dockerd with husk, images)"
services=$(./scripts/start-services.sh)
for v in $(printf '%s\n' "$services" | grep -E '^HUSK_TEST_[A-Z_]+='); do export "$v"; done

echo "== unit and end-to-end tests"
# One package at a time: the end-to-end tests boot guests on a 2-core machine.
# Everything the end-to-end tests need was installed and started above: a
# test that would skip for want of it fails instead.
export HUSK_TEST_REQUIRE_ALL=${HUSK_TEST_REQUIRE_ALL:-1}
go test -count=1 -p 1 -timeout 30m ./... "$@"

echo "== the load and fault tests again, beside a noisy neighbour"
# A CPU-bound process holds one of the two cores the whole time and no
# template is there at the start: bursts must queue and faults must be
# handled on a busy host, where users run them, not only on a quiet one.
HUSK_TEST_NOISY=1 go test -count=1 -timeout 30m ./test/e2e \
	-run '^(TestParallel.*|TestManyCycles|TestHostProcessKilled|TestCreateKilledHalfway|TestGuestDies|TestForcedDeleteIsNoCrash|TestStateRoot.*|TestCtrShimOrQEMUKilled|TestCtrGuestDies|TestCRIPodVMKilled|TestWarmPoolFaultsAndChanges|TestQueuedCreates|TestCtrQueuedCreates|TestStartTurnsNeverOverlap)$'

