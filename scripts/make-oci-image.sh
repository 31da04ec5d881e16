#!/usr/bin/env bash
# Packs a root filesystem directory into an OCI image archive that
# `ctr images import` (containerd 1.6 and later) loads under the given name:
#
#   scripts/make-oci-image.sh ROOTFS_DIR NAME[:TAG] OUT.tar [-- CMD ARGS...]
#
# The image has one gzip layer (the whole directory, owned by root), runs on
# linux/amd64, and has CMD ARGS as its Cmd (none if not given). NAME is
# completed the way Docker and the CRI complete it: busybox:local becomes
# docker.io/library/busybox:local, a name without a tag gets :latest.
# The archive depends only on the directory's contents and the arguments: the
# layer's entries are sorted, dated 1970 and owned by 0:0, so packing the same
# tree again gives the same digests. Prints the manifest's digest.
# Needs only bash, GNU tar, gzip and sha256sum.
set -euo pipefail

usage() { echo "usage: $0 ROOTFS_DIR NAME[:TAG] OUT.tar [-- CMD ARGS...]" >&2; exit 2; }
[ $# -ge 3 ] || usage
rootfs=$1 name=$2 out=$3
shift 3
if [ $# -gt 0 ]; then
  [ "$1" = -- ] || usage
  shift
fi
[ -d "$rootfs" ] || { echo "make-oci-image: $rootfs is not a directory" >&2; exit 1; }

# The full reference: domain/path:tag.
case $name in
  *@*) echo "make-oci-image: $name: give a tag, not a digest" >&2; exit 1 ;;
esac
repo=$name tag=latest
last=${name##*/}
if [[ $last == *:* ]]; then
  tag=${last##*:}
  repo=${name%:*}
fi
[[ $repo =~ ^[a-z0-9]([a-z0-9._/:-]*[a-z0-9])?$ && $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] ||
  { echo "make-oci-image: $name is not a valid image name" >&2; exit 1; }
first=${repo%%/*}
if [[ $repo != */* ]]; then
  repo=docker.io/library/$repo
elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
  repo=docker.io/$repo
fi
ref=$repo:$tag

json_str() { # STRING: prints it as a JSON string
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/\\r}
  case $s in
    *[[:cntrl:]]*) echo "make-oci-image: control character in '$1'" >&2; return 1 ;;
  esac
  printf '"%s"' "$s"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
blobs=$work/image/blobs/sha256
mkdir -p "$blobs"

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
add_blob() { # FILE: moves it into blobs/, prints its digest (hex)
  local d
  d=$(sha "$1")
  mv "$1" "$blobs/$d"
  echo "$d"
}
tar_tree() { # DIR OUTPUT [ENTRIES...]: a reproducible tar of DIR
  local dir=$1 output=$2
  shift 2
  tar -C "$dir" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    --format=gnu -cf "$output" "$@"
}

# The layer: the tree as a tar (its digest is the diff_id), then gzipped.
tar_tree "$rootfs" "$work/layer.tar" .
diff_id=$(sha "$work/layer.tar")
gzip -n -6 "$work/layer.tar"
layer_size=$(size "$work/layer.tar.gz")
layer=$(add_blob "$work/layer.tar.gz")

cmd=
if [ $# -gt 0 ]; then
  cmd=',"Cmd":['
  sep=
  for a in "$@"; do
    cmd+=$sep$(json_str "$a")
    sep=,
  done
  cmd+=']'
fi
printf '%s' '{"architecture":"amd64","os":"linux",' \
  '"config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"'"$cmd"'},' \
  '"rootfs":{"type":"layers","diff_ids":["sha256:'"$diff_id"'"]},' \
  '"history":[{"created_by":"husk scripts/make-oci-image.sh"}]}' > "$work/config.json"
config_size=$(size "$work/config.json")
config=$(add_blob "$work/config.json")

printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",' \
  '"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config"'","size":'"$config_size"'},' \
  '"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$layer"'","size":'"$layer_size"'}]}' \
  > "$work/manifest.json"
manifest_size=$(size "$work/manifest.json")
manifest=$(add_blob "$work/manifest.json")

# The index names the image twice: containerd reads io.containerd.image.name
# (the full reference), other OCI tools read org.opencontainers.image.ref.name
# (the tag, as the OCI image layout defines it).
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[' \
  '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest"'","size":'"$manifest_size"',' \
  '"platform":{"architecture":"amd64","os":"linux"},' \
  '"annotations":{"io.containerd.image.name":'"$(json_str "$ref")"',"org.opencontainers.image.ref.name":'"$(json_str "$tag")"'}}]}' \
  > "$work/image/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' > "$work/image/oci-layout"

mkdir -p "$(dirname "$out")"
tar_tree "$work/image" "$work/out.tar" oci-layout index.json blobs
mv "$work/out.tar" "$out"
echo "sha256:$manifest"
