#!/usr/bin/env bash
# Installs the pinned official AppView (@atproto/bsky, conformance/node/package.json and its
# package-lock.json) that the bsky.Service tests run against, and the Node it needs:
#   1. `node` missing or older than NODE_MIN, or `npm` missing: Debian's nodejs / npm with
#      apt-get (bookworm: 18.20.4 and 9.2.0, enough; nothing from outside Debian's archive).
#   2. conformance/node/node_modules missing, or made from another package-lock.json or
#      for another Node ABI: `npm ci` there (the npm registry only).
# Usage: scripts/_node_deps.sh   (root, or a user with sudo, for step 1). Safe to run again:
# it does nothing when all is in place. Exits non-zero when Node or the package cannot be
# had; scripts/test goes on and tests/test_bsky_proto.py then fails saying so.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR="$ROOT/conformance/node"
# NODE_MIN, node_ok, node_wanted_packages, node_problem, node_modules_stamp: shared with
# scripts/install.sh --appview.
# shellcheck source=_node_common.sh
. "$ROOT/scripts/_node_common.sh"

say() { echo "_node_deps.sh: $*" >&2; }

apt_install() {
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo=(sudo -n); else
      say "not root and no sudo: cannot install $* (install Node >= $NODE_MIN and npm)"; return 1
    fi
  fi
  command -v apt-get >/dev/null 2>&1 || { say "no apt-get here: install Node >= $NODE_MIN and npm"; return 1; }
  say "installing Debian packages: $*"
  local log
  log=$(mktemp)
  if ! { "${sudo[@]}" apt-get update -qq &&
         "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
           apt-get install -y -qq --no-install-recommends "$@"; } >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    say "apt-get could not install $*"; return 1
  fi
  rm -f "$log"
}

# 1. Node and npm.
read -r -a want <<<"$(node_wanted_packages)"
if [ ${#want[@]} -gt 0 ]; then
  apt_install "${want[@]}" || exit 1
  hash -r
fi
if ! problem=$(node_problem); then
  say "$problem"
  exit 1
fi

# 2. node_modules, made by `npm ci` from the committed lockfile. The stamp records what it
# was made from: the lockfile's hash and the Node ABI (sharp and friends are native).
stamp_file="$DIR/node_modules/.smalldp-stamp"
want_stamp=$(node_modules_stamp "$DIR" node)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$want_stamp" ]; then
  exit 0
fi
say "npm ci in conformance/node ($(node --version), npm $(npm --version))"
start=$(date +%s)
# --ignore-scripts: nothing in the tree needs its install scripts (sharp 0.33 ships
# prebuilt binaries as optional packages; its script only checks them), so none run.
if ! (cd "$DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2); then
  say "npm ci failed in $DIR"; exit 1
fi
# the package that was asked for, and it loads
if ! (cd "$DIR" && node -e 'require("@atproto/bsky/dist/proto/bsky_connect.js")'); then
  say "@atproto/bsky does not load on $(node --version)"; exit 1
fi
echo "$want_stamp" >"$stamp_file"
say "conformance/node ready in $(( $(date +%s) - start )) s: @atproto/bsky $(cd "$DIR" && node -p 'require("@atproto/bsky/package.json").version'), $(du -sh "$DIR/node_modules" | cut -f1)"
