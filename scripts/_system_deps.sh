#!/usr/bin/env bash
# Installs the Debian packages the appliance tests need, quietly, skipping what is there:
#   systemd      systemd-analyze (verify, security --offline)
#   cloud-init   `cloud-init schema` for appliance/user-data
#   mmdebstrap   builds the Debian Bookworm root that scripts/install.sh is run in
#   chromium     headless browser that loads the status page (tests/test_status_page.py)
#   postgresql   the reference DataPlane's database (@atproto/bsky's DataPlaneServer) for the
#                AppView differential tests (tests/appview_harness.py starts its own throwaway
#                cluster with initdb/pg_ctl; the package's own cluster is not used). Its
#                binaries live in /usr/lib/postgresql/<major>/bin, so dpkg says whether it is in
# Usage: scripts/_system_deps.sh   (root, or a user with sudo). Safe to run again.
set -euo pipefail

# package:command pairs; a package counts as present when its command is on PATH or
# dpkg says it is installed (either is enough, so a hand-installed tool is respected).
WANTED=(systemd:systemd-analyze cloud-init:cloud-init mmdebstrap:mmdebstrap chromium:chromium
        postgresql:initdb)

if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo -n)
else
  echo "_system_deps.sh: not root and no sudo: cannot install ${WANTED[*]}" >&2
  exit 0   # the tests themselves skip loudly, naming what is missing
fi

missing=()
for pair in "${WANTED[@]}"; do
  pkg=${pair%%:*} cmd=${pair#*:}
  if command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/bin/$cmd" ] || [ -x "/usr/sbin/$cmd" ]; then
    continue
  fi
  if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    continue
  fi
  missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "_system_deps.sh: no apt-get here: cannot install ${missing[*]}" >&2
  exit 0
fi
echo "installing Debian packages for the appliance tests: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# apt's chatter goes to a log shown only on failure. A failure is reported, not fatal:
# the tests that need a package skip with a warning naming it.
log=$(mktemp)
if ! { "${SUDO[@]}" apt-get update -qq &&
       "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "_system_deps.sh: apt-get could not install ${missing[*]}" >&2
fi
rm -f "$log"
exit 0
