#!/usr/bin/env bash
# Installs the Debian 12 packages husk needs to build and run, and the tests' clients.
set -euo pipefail
packages=(
  qemu-system-x86                                             # the hypervisor
  linux-source-6.1 build-essential bc bison flex libelf-dev   # the guest kernel
  libseccomp-dev                                              # seccomp in the static agent
  busybox-static                                              # the containers' rootfs in the demo and tests
  util-linux                                                  # unshare, for the daemon's mount namespace
  docker.io containerd podman                                 # the real clients the tests drive
  containernetworking-plugins                                 # CNI plugins (/usr/lib/cni) for containerd's CRI
  runc hyperfine iperf3                                       # make bench: the baseline, the timer, TCP throughput
  time                                                        # GNU time: the CLI's own peak memory in the load test
  protobuf-compiler                                           # make protos
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "install-deps: Go is required (https://go.dev/doc/install)" >&2; exit 1; }

# crictl, the CRI's client, is not packaged in Debian 12: built from the
# version pinned in tools/go.mod, unless that version is installed.
top=$(cd "$(dirname "$0")/.." && pwd)
crictl_version=$(cd "$top/tools" && go list -m -f '{{.Version}}' sigs.k8s.io/cri-tools)
if [ "$(crictl --version 2>/dev/null)" != "crictl version $crictl_version" ]; then
  echo "install-deps: installing crictl $crictl_version" >&2
  (cd "$top/tools" && go build -trimpath -o /usr/local/bin/crictl \
    -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$crictl_version" sigs.k8s.io/cri-tools/cmd/crictl)
fi
