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
# The strictest `engines.node` in package-lock.json (undici >=18.17, sharp ^18.17.0 ||
# ^20.3.0 || >=21); @atproto/bsky itself says >=18.7.0. Check again after a version bump:
#   grep -A1 '"engines"' conformance/node/package-lock.json | grep '"node"' | sort | uniq -c
NODE_MIN=18.17.0

say() { echo "_node_deps.sh: $*" >&2; }

node_ok() {
  command -v node >/dev/null 2>&1 || return 1
  local have
  have=$(node -p 'process.versions.node' 2>/dev/null) || return 1
  # version order: NODE_MIN sorts first (or equal) when node is new enough
  [ "$(printf '%s\n%s\n' "$NODE_MIN" "$have" | sort -V | head -n1)" = "$NODE_MIN" ]
}

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

# 1. Node and npm. Debian's nodejs has no npm in it (a separate package); a Node from
# elsewhere (NodeSource, nvm) that is new enough is used as it is, with its own npm.
want=()
node_ok || want+=(nodejs)
command -v npm >/dev/null 2>&1 || want+=(npm)
if [ ${#want[@]} -gt 0 ]; then
  apt_install "${want[@]}" || exit 1
  hash -r
fi
if ! node_ok; then
  say "node $(node --version 2>/dev/null || echo missing) is older than $NODE_MIN, which @atproto/bsky's dependencies need"
  exit 1
fi
command -v npm >/dev/null 2>&1 || { say "npm missing after apt-get"; exit 1; }

# 2. node_modules, made by `npm ci` from the committed lockfile. The stamp records what it
# was made from: the lockfile's hash and the Node ABI (sharp and friends are native).
stamp_file="$DIR/node_modules/.smalldp-stamp"
want_stamp="$(cat "$DIR/package.json" "$DIR/package-lock.json" | sha256sum | cut -d' ' -f1) node-abi-$(node -p 'process.versions.modules')"
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
