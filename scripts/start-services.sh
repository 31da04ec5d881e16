#!/usr/bin/env bash
# Starts what the end-to-end tests drive: containerd, a private dockerd with
# husk (this tree's build/husk) registered as a runtime, and the local busybox
# image in Docker and Podman. Idempotent; prints the variables the tests read.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
run=/run/husk-test
mkdir -p "$run" /var/log/husk-test
log=/var/log/husk-test

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "start-services: $what did not come up; see $log" >&2; return 1
}

if command -v containerd >/dev/null; then
  if ! ctr version >/dev/null 2>&1; then
    setsid containerd >"$log/containerd.log" 2>&1 < /dev/null &
    wait_for containerd ctr version
  fi
fi

docker_host=unix://$run/docker.sock
if command -v dockerd >/dev/null && command -v containerd >/dev/null; then
  if ! docker -H "$docker_host" info >/dev/null 2>&1; then
    setsid dockerd -H "$docker_host" --pidfile "$run/docker.pid" \
      --data-root /var/lib/husk-test/docker --exec-root "$run/docker-exec" \
      --containerd /run/containerd/containerd.sock --containerd-namespace husk-test \
      --containerd-plugins-namespace husk-test-plugins \
      --iptables=false --ip-masq=false --bridge=none \
      --add-runtime husk="$top/build/husk" >"$log/dockerd.log" 2>&1 < /dev/null &
    wait_for dockerd docker -H "$docker_host" info
  fi
fi

# The busybox image, built locally: there is no registry to pull from.
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp"
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$rootfs/etc/passwd"
echo 'root:x:0:' > "$rootfs/etc/group"
tar -C "$rootfs" -cf "$run/busybox.tar" .
if docker -H "$docker_host" info >/dev/null 2>&1 && ! docker -H "$docker_host" image inspect busybox:local >/dev/null 2>&1; then
  docker -H "$docker_host" import "$run/busybox.tar" busybox:local >/dev/null
fi
if command -v podman >/dev/null && ! podman image exists localhost/busybox:local; then
  podman import "$run/busybox.tar" localhost/busybox:local >/dev/null 2>&1
fi
echo "HUSK_TEST_DOCKER_HOST=$docker_host"
