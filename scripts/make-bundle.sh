#!/usr/bin/env bash
# Makes an OCI bundle with a busybox rootfs (Debian's busybox-static) and the
# default config.json of `husk spec`, with the terminal off so it runs anywhere.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bundle=${1:?usage: make-bundle.sh DIR}
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "make-bundle: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
rm -rf "$bundle"
mkdir -p "$bundle/rootfs"/{bin,dev,proc,sys,tmp,etc,root}
cp "$busybox" "$bundle/rootfs/bin/busybox"
for applet in $("$busybox" --list); do
  [ -e "$bundle/rootfs/bin/$applet" ] || ln -s busybox "$bundle/rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$bundle/rootfs/etc/passwd"
echo 'root:x:0:' > "$bundle/rootfs/etc/group"
(cd "$bundle" && "$top/build/husk" spec)
# The demo prints a greeting from inside the VM; no terminal, so it works from scripts too.
sed -i -e 's/"terminal": true/"terminal": false/' \
  -e 's|"sh"|"sh", "-c", "echo hello from husk; uname -r"|' "$bundle/config.json"
