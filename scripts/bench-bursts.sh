#!/usr/bin/env bash
# Bursts (part of make bench; runs alone too): N containers started at once,
# each printing a line, through husk run, docker run and ctr run, husk
# against runc in the same run. On a small host the guests' starts queue
# (runtime.concurrent_starts, one per core by default): every run must
# succeed, and the time to the last one's output is the figure.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=$top/build/bench
mkdir -p "$out"
services=$("$top/scripts/start-services.sh")
for v in $(printf '%s\n' "$services" | grep -E '^HUSK_TEST_[A-Z_]+='); do export "$v"; done
ctr="ctr -n $HUSK_TEST_CTR_NAMESPACE"
image=docker.io/library/busybox:local

echo "== bursts: N containers started at once, each printing a line; time to the last one's output, husk against runc"
"$top/scripts/make-bundle.sh" "$out/bundle-echo" >/dev/null
: > "$out/bursts.txt"
for n in ${BENCH_BURSTS:-20 50}; do
  for rt in husk runc; do
    case $rt in
      husk) cli="$top/build/husk --root /run/husk-bench-burst"; shim=io.containerd.husk.v2 ;;
      runc) cli="runc --root /run/runc-bench-burst"; shim=io.containerd.runc.v2 ;;
    esac
    python3 "$top/scripts/bench-burst.py" "$rt run" "$n" "hello from husk" \
      $cli run --bundle "$out/bundle-echo" "burst-$$-{i}" | tee -a "$out/bursts.txt"
    python3 "$top/scripts/bench-burst.py" "docker run --runtime $rt" "$n" burst-ok \
      docker -H "$HUSK_TEST_DOCKER_HOST" run --rm --runtime "$rt" busybox:local echo burst-ok | tee -a "$out/bursts.txt"
    python3 "$top/scripts/bench-burst.py" "ctr run ($rt shim)" "$n" burst-ok \
      $ctr run --rm --runtime "$shim" "$image" "burst-$$-{i}" echo burst-ok | tee -a "$out/bursts.txt"
  done
done
