# Sourced (not run) by the two scripts that need Node for the pinned official AppView
# (@atproto/bsky, conformance/node/package.json and its package-lock.json):
#   scripts/_node_deps.sh          the tests' copy in conformance/node
#   scripts/install.sh --appview   the appliance's copy in /opt/smalldp/appview
# Both take Node and npm from Debian (apt-get install nodejs npm) when what is there is
# missing or too old (bookworm: 18.20.4 and npm 9.2.0, enough).

# The strictest `engines.node` in package-lock.json (undici >=18.17, sharp ^18.17.0 ||
# ^20.3.0 || >=21); @atproto/bsky itself says >=18.7.0. Check again after a version bump:
#   grep -A1 '"engines"' conformance/node/package-lock.json | grep '"node"' | sort | uniq -c
NODE_MIN=18.17.0

# node_ok [NODE]: NODE (default: `node` on PATH) runs and is NODE_MIN or newer.
node_ok() {
  local node=${1:-node} have
  command -v "$node" >/dev/null 2>&1 || return 1
  have=$("$node" -p 'process.versions.node' 2>/dev/null) || return 1
  # version order: NODE_MIN sorts first (or equal) when node is new enough
  [ "$(printf '%s\n%s\n' "$NODE_MIN" "$have" | sort -V | head -n1)" = "$NODE_MIN" ]
}

# node_wanted_packages [NODE]: the Debian packages that would make NODE and npm usable,
# space-separated (empty when both are). Debian's nodejs has no npm in it (a separate
# package); a Node from elsewhere (NodeSource, nvm) that is new enough is used as it is.
node_wanted_packages() {
  local want=()
  node_ok "${1:-node}" || want+=(nodejs)
  command -v npm >/dev/null 2>&1 || want+=(npm)
  echo "${want[*]}"
}

# node_problem [NODE]: after installing, why NODE or npm still cannot be used (printed,
# status 1), or nothing (status 0).
node_problem() {
  local node=${1:-node}
  if ! node_ok "$node"; then
    echo "node $("$node" --version 2>/dev/null || echo missing) is older than $NODE_MIN, which @atproto/bsky's dependencies need"
    return 1
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "npm missing after apt-get"
    return 1
  fi
}

# node_modules_stamp DIR NODE: what DIR/node_modules is made from: the hash of DIR's
# package.json and package-lock.json and NODE's module ABI (sharp and friends are native).
# `npm ci` runs again only when it changes.
node_modules_stamp() {
  echo "$(cat "$1/package.json" "$1/package-lock.json" | sha256sum | cut -d' ' -f1) node-abi-$("$2" -p 'process.versions.modules')"
}
