#!/usr/bin/env bash
# Builds the guest kernel (uncompressed vmlinux) from Debian's linux-source-6.1 with
# guest/kernel/husk.config merged onto allnoconfig. The result is cached under
# $HUSK_CACHE (default /var/cache/husk) keyed by the source package version, the
# fragment and this script, so CI and re-runs skip the ~5 minute build.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/build/vmlinux}
cache=${HUSK_CACHE:-/var/cache/husk}
tarball=/usr/src/linux-source-6.1.tar.xz
fragment=$top/guest/kernel/husk.config

[ -f "$tarball" ] || { echo "build-kernel: $tarball missing (apt-get install linux-source-6.1)" >&2; exit 1; }
version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( { echo "$version"; cat "$fragment" "$0"; } | sha256sum | cut -c1-16)
cached=$cache/kernel/$key/vmlinux

if [ ! -f "$cached" ]; then
  work=$(mktemp -d /var/tmp/husk-kernel.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  echo "build-kernel: building linux-source $version (key $key), this takes a few minutes" >&2
  tar -C "$work" -xf "$tarball"
  src=$work/linux-source-6.1
  make -C "$src" -s allnoconfig
  (cd "$src" && KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m -O . .config "$fragment" >/dev/null)
  make -C "$src" -s olddefconfig
  # Every line of the fragment must survive olddefconfig, or the guest lacks a feature silently.
  missing=$(grep -E '^CONFIG_' "$fragment" | while read -r line; do grep -qx "$line" "$src/.config" || echo "$line"; done)
  # And every option it turns off must be off.
  missing+=$(sed -n 's/^# \(CONFIG_[A-Z0-9_]*\) is not set$/\1/p' "$fragment" | while read -r opt; do if grep -q "^$opt=" "$src/.config"; then echo " $opt=n"; fi; done)
  if [ -n "$missing" ]; then echo "build-kernel: options not applied: $missing" >&2; exit 1; fi
  make -C "$src" -s -j"$(($(nproc) + 1))" vmlinux
  mkdir -p "$(dirname "$cached")"
  cp "$src/vmlinux" "$cached.tmp"
  cp "$src/.config" "$(dirname "$cached")/config"
  strip --strip-debug "$cached.tmp" 2>/dev/null || true
  mv "$cached.tmp" "$cached"
fi
mkdir -p "$(dirname "$out")"
cp "$cached" "$out.tmp" && mv "$out.tmp" "$out"
echo "build-kernel: $out (key $key)" >&2
