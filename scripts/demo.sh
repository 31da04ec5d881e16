#!/usr/bin/env bash
# make demo: a busybox container in its own micro-VM, in the foreground, then
# one in the background to show list, state and exec, then removed.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
husk=$top/build/husk
cd "$top/build/bundle"
echo "--- husk run: the container prints from inside its own VM (host kernel: $(uname -r))"
"$husk" run "demo-$$"
echo "--- husk run -d, then husk list, husk exec, husk delete"
sed 's|"sh", "-c", "echo hello from husk; uname -r"|"sleep", "300"|' config.json > ../bundle-sleep.json
mkdir -p ../bundle-bg && cp ../bundle-sleep.json ../bundle-bg/config.json && ln -sfn ../bundle/rootfs ../bundle-bg/rootfs
"$husk" run -d --bundle ../bundle-bg "demo-bg-$$" </dev/null >/dev/null
"$husk" list
"$husk" exec "demo-bg-$$" sh -c 'echo "exec inside the VM: $(uname -r), $(cat /proc/meminfo | head -1)"'
"$husk" delete --force "demo-bg-$$"
rm -rf ../bundle-bg ../bundle-sleep.json
