#!/usr/bin/env bash
# Starts what the end-to-end tests drive: containerd with its CRI plugin and
# husk's shim (this tree's build/containerd-shim-husk-v2) as the runtime
# handler `husk`, a private dockerd with husk (this tree's build/husk)
# registered as a runtime, and the local busybox image in Docker, Podman,
# containerd (for ctr) and the CRI (for crictl), beside the pods' pause image.
# Idempotent: a second run changes nothing. Prints the variables the tests read.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
run=/run/husk-test
mkdir -p "$run" /var/log/husk-test
log=/var/log/husk-test

containerd_sock=/run/containerd/containerd.sock
ctr_namespace=husk-test-ctr        # where the ctr tests run their containers
cri_namespace=k8s.io               # where the CRI plugin keeps its images
busybox_image=docker.io/library/busybox:local
pause_image=husk.local/pause:1     # the pod sandbox image: there is no registry to pull one from

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "start-services: $what did not come up; see $log" >&2; return 1
}

alive() { # PID: true while that process runs (a zombie has stopped)
  [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

socket_owner() { # SOCKET: the pid of the process listening on that unix socket
  local inode
  inode=$(awk -v p="$1" '$6 == "01" && $8 == p { print $7; exit }' /proc/net/unix)
  [ -n "$inode" ] || return 0
  local fds
  fds=$(find /proc/[0-9]*/fd -maxdepth 1 -lname "socket:\\[$inode\\]" 2>/dev/null || true)
  fds=${fds%%$'\n'*}      # /proc/PID/fd/N
  fds=${fds#/proc/}
  echo "${fds%%/*}"
}

stop() { # NAME PID: SIGTERM, SIGKILL if it is still there after 30 s
  local what=$1 pid=$2
  alive "$pid" || return 0
  # A pid file can outlive its process, and the pid be reused: only NAME is stopped.
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$what" ] || return 0
  echo "start-services: stopping $what (pid $pid)" >&2
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do alive "$pid" || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do alive "$pid" || return 0; sleep 0.2; done
  echo "start-services: $what (pid $pid) did not stop" >&2; return 1
}

write_file() { # PATH CONTENT: writes it only if it differs, so a second run leaves it as it is
  if [ "$(cat "$1" 2>/dev/null)" != "$2" ]; then
    mkdir -p "$(dirname "$1")"
    printf '%s\n' "$2" > "$1.tmp"
    mv "$1.tmp" "$1"
  fi
}

# containerd, with a configuration of the tests' own. Its PATH starts with
# this tree's build/, where containerd finds containerd-shim-husk-v2 for the
# runtime type io.containerd.husk.v2; the rest of PATH is fixed, so that the
# caller's PATH does not count.
containerd_config=$run/containerd.toml
containerd_path=$top/build:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cni_conf_dir=$run/cni/net.d
write_file "$containerd_config" "# Written by husk's scripts/start-services.sh, which restarts containerd when it changes.
version = 2
root = \"/var/lib/containerd\"
state = \"/run/containerd\"

[grpc]
  address = \"$containerd_sock\"

[plugins]
  [plugins.\"io.containerd.internal.v1.opt\"]
    path = \"/var/lib/containerd/opt\"
  [plugins.\"io.containerd.grpc.v1.cri\"]
    sandbox_image = \"$pause_image\"
    # Pods' sandboxes ask for oom_score_adj -998, which needs CAP_SYS_RESOURCE:
    # keep them at no less than containerd's own score instead of failing.
    restrict_oom_score_adj = true
    [plugins.\"io.containerd.grpc.v1.cri\".cni]
      bin_dir = \"/usr/lib/cni\"
      conf_dir = \"$cni_conf_dir\"
      max_conf_num = 1
    [plugins.\"io.containerd.grpc.v1.cri\".containerd]
      snapshotter = \"overlayfs\"
      default_runtime_name = \"runc\"
      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]
        runtime_type = \"io.containerd.runc.v2\"
      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk]
        runtime_type = \"io.containerd.husk.v2\""
# Pods get a loopback interface and nothing else: no bridge, no address on the
# host, nothing outside the pod's own network namespace. containerd 1.6's CRI
# fails RunPodSandbox unless the network's result has an address on "eth0",
# and the loopback plugin reports "lo"; but it hands on a prevResult as its
# own result, so this one tells the CRI that the pod's address is 127.0.0.1
# (which it is, on the pod's own lo).
write_file "$cni_conf_dir/10-husk-test-loopback.conflist" '{
  "cniVersion": "1.0.0",
  "name": "husk-test-loopback",
  "plugins": [
    {
      "type": "loopback",
      "prevResult": {
        "cniVersion": "1.0.0",
        "interfaces": [ { "name": "eth0" } ],
        "ips": [ { "address": "127.0.0.1/8", "interface": 0 } ]
      }
    }
  ]
}'
write_file "$run/crictl.yaml" "runtime-endpoint: unix://$containerd_sock
image-endpoint: unix://$containerd_sock
timeout: 60
debug: false
pull-image-on-create: false"

# A second runtime, husk-pool: husk with a warm pool of one sandbox.
write_file "$run/husk-pool.toml" "[pool]
size = 1"
write_file "$run/husk-pool" "#!/bin/sh
exec '$top/build/husk' --config '$run/husk-pool.toml' \"\$@\""
chmod 0755 "$run/husk-pool"

docker_host=unix://$run/docker.sock
dockerd_args=(-H "$docker_host" --pidfile "$run/docker.pid"
  --data-root /var/lib/husk-test/docker --exec-root "$run/docker-exec"
  --containerd "$containerd_sock" --containerd-namespace husk-test
  --containerd-plugins-namespace husk-test-plugins
  --iptables=false --ip-masq=false --bridge=none
  --add-runtime husk="$top/build/husk" --add-runtime husk-pool="$run/husk-pool")
dockerd_key=$(printf '%s\n' "${dockerd_args[@]}" | sha256sum | cut -d' ' -f1)

stop_dockerd() {
  local pid
  pid=$(cat "$run/docker.pid" 2>/dev/null || true)
  alive "$pid" || pid=$(socket_owner "$run/docker.sock")
  [ -z "$pid" ] || stop dockerd "$pid"
  rm -f "$run/dockerd.key"
}

if command -v containerd >/dev/null; then
  containerd_key=$( { cat "$containerd_config"; echo "PATH=$containerd_path"; } | sha256sum | cut -d' ' -f1)
  pid=$(cat "$run/containerd.pid" 2>/dev/null || true)
  if ! ctr version >/dev/null 2>&1 || [ "$(cat "$run/containerd.key" 2>/dev/null)" != "$containerd_key" ] ||
     ! alive "$pid" || [ "$(socket_owner "$containerd_sock")" != "$pid" ]; then
    # Not ours, or not with this configuration: dockerd talks to it, so it
    # goes first and comes back after.
    stop_dockerd
    stop containerd "$pid"
    other=$(socket_owner "$containerd_sock")
    [ -z "$other" ] || stop containerd "$other"
    rm -f "$run/containerd.key" "$run/containerd.pid"
    PATH=$containerd_path setsid containerd --config "$containerd_config" \
      >>"$log/containerd.log" 2>&1 < /dev/null &
    wait_for containerd ctr version
    socket_owner "$containerd_sock" > "$run/containerd.pid"
    echo "$containerd_key" > "$run/containerd.key"
    if [ "$(ctr plugins ls 2>/dev/null | awk '$1 == "io.containerd.grpc.v1" && $2 == "cri" { print $NF }')" != ok ]; then
      echo "start-services: containerd's CRI plugin did not load; see $log/containerd.log" >&2
    fi
  fi
fi

if command -v dockerd >/dev/null && command -v containerd >/dev/null; then
  if ! docker -H "$docker_host" info >/dev/null 2>&1 || [ "$(cat "$run/dockerd.key" 2>/dev/null)" != "$dockerd_key" ]; then
    stop_dockerd
    setsid dockerd "${dockerd_args[@]}" >>"$log/dockerd.log" 2>&1 < /dev/null &
    wait_for dockerd docker -H "$docker_host" info
    echo "$dockerd_key" > "$run/dockerd.key"
  fi
fi

# The busybox image, built locally: there is no registry to pull from.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/busybox
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

# For containerd: the same tree as an OCI image, and the pause image that
# holds each pod's namespaces: busybox's sleep, stopped by SIGTERM or SIGKILL.
pause=$work/pause
# The sandbox's root is read-only: a runtime that mounts it so before the
# CRI's mounts finds their mount points in the image.
mkdir -p "$pause/bin" "$pause/dev" "$pause/etc" "$pause/proc" "$pause/sys" "$pause/tmp" "$pause/run"
cp /bin/busybox "$pause/bin/busybox"
ln -s busybox "$pause/bin/sh"
ln -s busybox "$pause/bin/sleep"
printf '%s\n' '#!/bin/sh' '# The pod sandbox: holds the namespaces until the pod is stopped.' \
  "trap 'exit 0' TERM INT HUP" 'while :; do sleep 2147483647 & wait $!; done' > "$pause/pause"
chmod 0755 "$pause/pause"
: > "$pause/etc/hostname"; : > "$pause/etc/hosts"; : > "$pause/etc/resolv.conf"

ctr_import() { # NAMESPACE IMAGE ARCHIVE DIGEST: imports it unless that image is there already
  local have
  have=$(ctr -n "$1" images ls 2>/dev/null | awk -v r="$2" '$1 == r { print $3 }')
  [ "$have" = "$4" ] || ctr -n "$1" images import "$3" >/dev/null
}
if ctr version >/dev/null 2>&1; then
  busybox_digest=$("$top/scripts/make-oci-image.sh" "$rootfs" "$busybox_image" "$run/busybox-oci.tar" -- sh)
  pause_digest=$("$top/scripts/make-oci-image.sh" "$pause" "$pause_image" "$run/pause-oci.tar" -- /pause)
  ctr_import "$ctr_namespace" "$busybox_image" "$run/busybox-oci.tar" "$busybox_digest"
  ctr_import "$cri_namespace" "$busybox_image" "$run/busybox-oci.tar" "$busybox_digest"
  ctr_import "$cri_namespace" "$pause_image" "$run/pause-oci.tar" "$pause_digest"
fi

echo "HUSK_TEST_DOCKER_HOST=$docker_host"
echo "HUSK_TEST_DOCKER_EXEC_ROOT=$run/docker-exec"
echo "HUSK_TEST_CRICTL_CONFIG=$run/crictl.yaml"
echo "HUSK_TEST_CTR_NAMESPACE=$ctr_namespace"
