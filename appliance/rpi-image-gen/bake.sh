#!/usr/bin/env bash
# Bakes smalldp into a root filesystem that is being built (the rpi-image-gen layer's
# customize hook; any mmdebstrap-style build can call it the same way):
#
#   appliance/rpi-image-gen/bake.sh ROOTFS
#
# Copies this checkout to ROOTFS/opt/smalldp/src (so the image can update itself with
# `git pull` + install.sh, or a newer copy), writes ROOTFS/etc/smalldp/smalldp.toml from
# SMALLDP_LISTEN / SMALLDP_COLLECTIONS / SMALLDP_DIDS when it is absent, and runs
# scripts/install.sh --no-start inside ROOTFS with chroot: apt (if anything is missing),
# the user, the virtualenv, the unit and its enablement symlink. For a foreign
# architecture the build's qemu-user binfmt runs the chroot, as for the rest of the build.
set -euo pipefail

ROOTFS=${1:?usage: bake.sh ROOTFS}
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEST=$ROOTFS/opt/smalldp/src

[ -x "$SRC/scripts/install.sh" ] || { echo "bake.sh: $SRC is not a smalldp checkout" >&2; exit 1; }
[ -x "$ROOTFS/bin/sh" ] || { echo "bake.sh: $ROOTFS is not a root filesystem" >&2; exit 1; }

# The checkout without what is local to it (virtualenv, data, caches, git objects).
rm -rf "$DEST"
mkdir -p "$DEST"
tar -C "$SRC" \
  --exclude=./.git --exclude=./.venv --exclude=./data --exclude=./bench-out \
  --exclude=./build --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
  --exclude=.hypothesis -cf - . | tar -C "$DEST" -xf - --no-same-owner

# TOML list from a comma-separated value: "a, b" -> ["a", "b"].
toml_list() {
  local out="" item
  local -a items
  IFS=, read -r -a items <<<"$1"
  for item in "${items[@]}"; do
    item=$(printf '%s' "$item" | tr -d '[:space:]"\\')
    [ -n "$item" ] && out+="${out:+, }\"$item\""
  done
  printf '[%s]' "$out"
}

CONF=$ROOTFS/etc/smalldp/smalldp.toml
if [ ! -e "$CONF" ]; then
  mkdir -p "$(dirname "$CONF")"
  {
    echo "# /etc/smalldp/smalldp.toml, baked into the image (appliance/rpi-image-gen)."
    echo "# Every setting: README.md, \"Settings\". After editing: sudo systemctl reload smalldp"
    echo "listen = \"${SMALLDP_LISTEN:-0.0.0.0:8080}\""
    echo "wanted_collections = $(toml_list "${SMALLDP_COLLECTIONS:-}")"
    echo "wanted_dids = $(toml_list "${SMALLDP_DIDS:-}")"
  } >"$CONF"
  chmod 0640 "$CONF"
fi

# install.sh sees no running systemd in the chroot: it enables, does not start.
chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive /opt/smalldp/src/scripts/install.sh --no-start
