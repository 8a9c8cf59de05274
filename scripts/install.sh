#!/usr/bin/env bash
# Installs (or upgrades) smalldp from this checkout as a systemd service, on Raspberry Pi OS
# or Debian Bookworm/Trixie, arm64 or amd64:
#
#   sudo scripts/install.sh               install or upgrade, enable, start, print the URL
#   sudo scripts/install.sh --no-start    the same without starting (image builds)
#   sudo scripts/install.sh --no-compile  install the interpreted source: no mypyc build
#                                         (also SMALLDP_COMPILE=0), no C compiler needed
#   sudo scripts/install.sh --uninstall   remove smalldp (and the AppView); keep the data and the config
#   sudo scripts/install.sh --purge       remove smalldp, its data, its config and its user
#   sudo scripts/install.sh --appview     also install the official Bluesky AppView on smalldp
#                                         (smalldp-appview.service); later runs upgrade it too
#   sudo scripts/install.sh --appview --uninstall   remove only the AppView (--purge: and its settings)
#
# What it puts where:
#   /opt/smalldp/.venv                     a virtualenv with this checkout's package (wheels from PyPI),
#                                          its hot modules compiled with mypyc (README: "The compiled build")
#   /etc/smalldp/smalldp.toml              from systemd/smalldp.toml, only when absent
#   /etc/systemd/system/smalldp.service    the unit (systemd/smalldp.service)
#   /etc/sysusers.d/smalldp.conf           the system user smalldp (systemd/smalldp.sysusers)
#   /var/lib/smalldp                       the data (the unit's StateDirectory)
# and with --appview (appliance/README.md, "Run the official AppView"):
#   /opt/smalldp/appview                   the pinned @atproto/bsky (conformance/node's package.json,
#                                          package-lock.json: npm ci) and its launcher appview.cjs
#   /etc/smalldp/appview.env               from systemd/appview.env with a fresh signing key, only when absent
#   /etc/systemd/system/smalldp-appview.service   the unit (systemd/smalldp-appview.service)
#   Node and npm                           Debian's nodejs and npm, when /usr/bin/node is missing or too old
#
# Safe to run again: each step checks what is there. Without a running systemd (a chroot,
# an image build) it enables the unit by its symlink and does not start it.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/smalldp
VENV=$PREFIX/.venv
CONF_DIR=/etc/smalldp
CONF=$CONF_DIR/smalldp.toml
UNIT=/etc/systemd/system/smalldp.service
WANTS=/etc/systemd/system/multi-user.target.wants
SYSUSERS=/etc/sysusers.d/smalldp.conf
DATA=/var/lib/smalldp
USER_NAME=smalldp
# The AppView (--appview). It runs as a DynamicUser: no account to create.
APPVIEW_DIR=$PREFIX/appview
APPVIEW_ENV=$CONF_DIR/appview.env
APPVIEW_UNIT=/etc/systemd/system/smalldp-appview.service
# The unit's ExecStart names this node.
NODE_BIN=/usr/bin/node
# procps: /bin/kill, the unit's ExecReload.
APT_PACKAGES=(python3 python3-venv ca-certificates procps)
# The mypyc build: a C compiler and Python's headers.
COMPILE_APT_PACKAGES=(gcc libc6-dev python3-dev)

say() { printf 'smalldp install: %s\n' "$*"; }
die() { printf 'smalldp install: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

MODE=install START=1 COMPILE=${SMALLDP_COMPILE:-1} APPVIEW=0
for arg in "$@"; do
  case $arg in
    --uninstall) MODE=uninstall ;;
    --purge) MODE=purge ;;
    --no-start) START=0 ;;
    --no-compile) COMPILE=0 ;;
    --appview) APPVIEW=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $arg" ;;
  esac
done

case $COMPILE in 0|1) ;; *) die "SMALLDP_COMPILE must be 0 or 1, not '$COMPILE'" ;; esac

if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "run as root"
  # sudo drops the environment: SMALLDP_COMPILE=0 goes along as --no-compile.
  [ "$COMPILE" = 0 ] && set -- "$@" --no-compile
  exec sudo -- "$0" "$@"
fi

# systemd is PID 1 and running (not a chroot, container build or image build).
systemd_running() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

# Run a command quietly; show its output only when it fails.
quiet() {
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "failed: $*"
  fi
  rm -f "$log"
}

disable_unit() {
  local name=${1:-smalldp.service}
  if systemd_running; then
    systemctl disable --now "$name" >/dev/null 2>&1 || true
  else
    rm -f "$WANTS/$name"
  fi
}

# The AppView's unit and its copy of @atproto/bsky; its settings go only with --purge.
uninstall_appview() {
  if [ -e "$APPVIEW_UNIT" ] || [ -e "$APPVIEW_DIR" ]; then
    [ -e "$APPVIEW_UNIT" ] && disable_unit smalldp-appview.service
    rm -f "$APPVIEW_UNIT" "$WANTS/smalldp-appview.service"
    rm -rf "$APPVIEW_DIR"
    systemd_running && systemctl daemon-reload || true
    say "removed the AppView (smalldp-appview.service, $APPVIEW_DIR)"
  fi
  if [ "$MODE" = purge ]; then
    rm -f "$APPVIEW_ENV"
  elif [ -e "$APPVIEW_ENV" ]; then
    say "kept its settings, $APPVIEW_ENV (--purge removes them)"
  fi
}

uninstall() {
  uninstall_appview
  say "removing smalldp (mode: $MODE)"
  [ -e "$UNIT" ] && disable_unit
  rm -f "$UNIT" "$WANTS/smalldp.service" "$SYSUSERS"
  systemd_running && systemctl daemon-reload || true
  # The virtualenv and whatever install.sh put in /opt/smalldp; a source checkout kept
  # there (appliance: /opt/smalldp/src) stays unless purging.
  rm -rf "$VENV" "$PREFIX/.install-info"
  if [ "$MODE" = purge ]; then
    rm -rf "$PREFIX" "$DATA" "$CONF_DIR"
    if getent passwd "$USER_NAME" >/dev/null; then userdel "$USER_NAME" 2>/dev/null || true; fi
    if getent group "$USER_NAME" >/dev/null; then groupdel "$USER_NAME" 2>/dev/null || true; fi
    say "removed smalldp, its data ($DATA), its config ($CONF_DIR) and its user"
  else
    rmdir "$PREFIX" 2>/dev/null || true
    # The user stays: it owns the data, and a later install finds both as they were.
    say "removed smalldp; kept the data ($DATA), the config ($CONF) and the user $USER_NAME"
    say "(--purge removes those too)"
  fi
}

if [ "$MODE" != install ]; then
  if [ "$APPVIEW" = 1 ]; then uninstall_appview; else uninstall; fi
  exit 0
fi

# --- the system ---------------------------------------------------------------------
if [ -r /etc/os-release ]; then
  # shellcheck disable=SC1091
  . /etc/os-release
  case " ${ID:-} ${ID_LIKE:-} " in
    *" debian "*|*" raspbian "*) ;;
    *) say "warning: made for Debian and Raspberry Pi OS, this is ${PRETTY_NAME:-unknown}" ;;
  esac
fi
ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m)
case $ARCH in
  arm64|amd64) ;;
  *) say "warning: made for arm64 and amd64; on $ARCH pip may have to compile the dependencies" ;;
esac

[ -f "$SRC/pyproject.toml" ] && [ -d "$SRC/src/smalldp" ] || die "$SRC is not a smalldp checkout"

# --- Debian packages ----------------------------------------------------------------------
[ "$COMPILE" = 1 ] && APT_PACKAGES+=("${COMPILE_APT_PACKAGES[@]}")
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  quiet apt-get update -q
  APT_UPDATED=1
  quiet apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "smalldp needs Python 3.11 or newer; this system has $(python3 --version 2>&1)"

# --- the user ----------------------------------------------------------------------------
install -D -m 0644 "$SRC/systemd/smalldp.sysusers" "$SYSUSERS"
if ! getent passwd "$USER_NAME" >/dev/null; then
  # systemd-sysusers reads the snippet and works without a running systemd too; useradd
  # is for systems without it.
  if ! { command -v systemd-sysusers >/dev/null 2>&1 && systemd-sysusers "$SYSUSERS" >/dev/null 2>&1 &&
         getent passwd "$USER_NAME" >/dev/null; }; then
    quiet useradd --system --user-group --home-dir "$DATA" --no-create-home \
      --shell /usr/sbin/nologin --comment "smalldp ATProto DataPlane" "$USER_NAME"
  fi
  say "created the system user $USER_NAME"
fi

# --- the virtualenv ---------------------------------------------------------------------
# Recreated when its python no longer runs or is not the system's (an OS upgrade from
# Bookworm's 3.11 to Trixie's 3.13 leaves a dangling interpreter).
want=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
have=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  [ -e "$VENV" ] && say "recreating $VENV (Python ${have:-broken} -> $want)"
  rm -rf "$VENV"
  mkdir -p "$PREFIX"
  quiet python3 -m venv "$VENV"
fi
# pip builds in the source tree (build/, *.egg-info): build from a copy so the checkout
# stays untouched (it may be read-only or belong to someone else).
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
cp -a "$SRC/pyproject.toml" "$SRC/src" "$BUILD/"
for f in README.md LICENSE LICENSE.txt MANIFEST.in setup.cfg; do
  [ -e "$SRC/$f" ] && cp -a "$SRC/$f" "$BUILD/"
done
find "$BUILD" -name __pycache__ -prune -exec rm -rf {} +
PIP=(--disable-pip-version-check --no-input --prefer-binary)
TARGET=$BUILD
if [ "$COMPILE" = 1 ]; then
  # The wheel with the compiled modules, built in a throwaway virtualenv holding
  # setuptools and mypy (the `compile` extra); the runtime virtualenv gets only the wheel.
  [ -f "$SRC/scripts/mypyc_build.py" ] && [ -f "$SRC/scripts/setup_compiled.py" ] ||
    die "$SRC/scripts/mypyc_build.py or setup_compiled.py missing (--no-compile installs without them)"
  mkdir "$BUILD/scripts"
  cp -a "$SRC/scripts/mypyc_build.py" "$BUILD/scripts/"
  cp -a "$SRC/scripts/setup_compiled.py" "$BUILD/setup.py"
  # mypy reads the dependencies' types (msgspec, pyroaring...): they go in too.
  mapfile -t tools < <(python3 -c 'import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(p["optional-dependencies"]["compile"] + p["dependencies"]))' "$SRC/pyproject.toml")
  say "compiling the hot modules with mypyc (${tools[0]}; minutes on a Pi; --no-compile skips it)"
  quiet python3 -m venv "$BUILD/tools"
  quiet "$BUILD/tools/bin/python" -m pip install "${PIP[@]}" "${tools[@]}"
  started=$SECONDS
  quiet "$BUILD/tools/bin/python" -m pip wheel "${PIP[@]}" --no-build-isolation --no-deps \
    --wheel-dir "$BUILD/dist" "$BUILD"
  say "compiled in $((SECONDS - started)) s"
  TARGET=$(echo "$BUILD"/dist/smalldp-*.whl)
  [ -f "$TARGET" ] || die "pip wheel made no smalldp wheel in $BUILD/dist"
else
  say "--no-compile (or SMALLDP_COMPILE=0): installing the interpreted source, no mypyc build"
fi
say "installing smalldp into $VENV (pip, wheels from PyPI)"
# --force-reinstall --no-deps first: an upgrade of the same version still replaces
# every file (the compiled ones with the .py they were built from); then the dependencies.
quiet "$VENV/bin/python" -m pip install "${PIP[@]}" --upgrade "$TARGET"
quiet "$VENV/bin/python" -m pip install "${PIP[@]}" --force-reinstall --no-deps "$TARGET"
VERSION=$("$VENV/bin/smalldp" --version)
# No quiet fallback: the build installed is the one asked for.
if [ "$COMPILE" = 1 ]; then BUILD_KIND=compiled; else BUILD_KIND=interpreted; fi
if ! built=$(cd / && "$VENV/bin/python" "$SRC/scripts/mypyc_build.py" status --expect "$BUILD_KIND" 2>&1); then
  die "$built"
fi
{
  echo "version: $VERSION"
  echo "build: $BUILD_KIND"
  echo "source: $SRC"
  if command -v git >/dev/null 2>&1 && git -C "$SRC" rev-parse HEAD >/dev/null 2>&1; then
    echo "commit: $(git -C "$SRC" rev-parse HEAD)"
  fi
  echo "installed: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$PREFIX/.install-info"

# --- config, data, unit ------------------------------------------------------------------
install -d -m 0755 "$CONF_DIR"
if [ ! -e "$CONF" ]; then
  install -m 0640 -o root -g "$USER_NAME" "$SRC/systemd/smalldp.toml" "$CONF"
  say "wrote $CONF (edit it, then: systemctl restart smalldp)"
else
  # The operator's file is kept as it is; the service must still be able to read it.
  chgrp "$USER_NAME" "$CONF"
  chmod g+r,o-rwx "$CONF"
  say "kept $CONF"
fi
install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$DATA"

# A config the new version rejects is reported now rather than in a restart loop.
if ! check=$(STATE_DIRECTORY=$DATA "$VENV/bin/python" -c '
import sys
from smalldp.config import load_settings
s = load_settings(config_path=sys.argv[1])
grpc = s.grpc_host_port()
print(s.listen_host_port()[1], s.listen_host_port()[0], *(grpc[::-1] if grpc else ("off", "off")))
' "$CONF" 2>&1); then
  die "$CONF: ${check##*$'\n'}"
fi
read -r PORT HOST GRPC_PORT GRPC_HOST <<<"$check"

install -m 0644 "$SRC/systemd/smalldp.service" "$UNIT"

# --- enable, start ----------------------------------------------------------------------
if systemd_running; then
  systemctl daemon-reload
  systemctl enable smalldp.service >/dev/null 2>&1
else
  # No systemd to ask (chroot, image build): `systemctl enable` edits files offline when
  # it can; the symlink is what enabling means either way.
  systemctl enable smalldp.service >/dev/null 2>&1 || true
  mkdir -p "$WANTS"
  ln -sfn "$UNIT" "$WANTS/smalldp.service"
fi
[ -L "$WANTS/smalldp.service" ] || die "could not enable smalldp.service"

if systemd_running && [ "$START" = 1 ]; then
  # Type=notify: start returns once smalldp says READY=1 (store open, HTTP bound).
  if systemctl is-active --quiet smalldp.service; then
    say "restarting smalldp (upgrade)"
    systemctl restart smalldp.service
  else
    say "starting smalldp"
    systemctl start smalldp.service
  fi
  state="running"
else
  state="installed and enabled, not started (systemd is not running here; it starts at boot)"
  [ "$START" = 0 ] && state="installed and enabled, not started (--no-start)"
fi

say "$VERSION ($BUILD_KIND) $state"
# where HOST:PORT is reached from the LAN
show_url() {
  local host=$1 port=$2 path=${3:-/} ip
  case $host in
    0.0.0.0|::)
      say "open http://$(hostname).local:$port$path"
      ip=$(hostname -I 2>/dev/null | awk '{print $1}') || true
      [ -n "${ip:-}" ] && say "  or http://$ip:$port$path"
      ;;
    *:*) say "open http://[$host]:$port$path" ;;
    *) say "open http://$host:$port$path" ;;
  esac
}
show_url "$HOST" "$PORT"
say "logs: journalctl -u smalldp -f    status: systemctl status smalldp"

# --- the AppView (--appview, or already installed: upgraded with smalldp) ----------------
[ "$APPVIEW" = 1 ] || [ -e "$APPVIEW_UNIT" ] || exit 0
[ "$APPVIEW" = 1 ] || say "upgrading the AppView too (installed earlier with --appview)"
[ "$GRPC_PORT" != off ] ||
  die "grpc_listen is off in $CONF: the AppView reads smalldp through it (set it, e.g. \"127.0.0.1:8081\")"
# What the service's user reads (node_modules, the launcher) must not be root-only.
umask 022

# 1. Node and npm: Debian's, when /usr/bin/node (the unit's) is missing or too old.
# shellcheck source=_node_common.sh
. "$SRC/scripts/_node_common.sh"
read -r -a want <<<"$(node_wanted_packages "$NODE_BIN")"
if [ ${#want[@]} -gt 0 ]; then
  say "installing ${want[*]} with apt-get (Debian's Node for the AppView)"
  export DEBIAN_FRONTEND=noninteractive
  # the lists are fresh when smalldp's packages were just installed
  [ "${APT_UPDATED:-0}" = 1 ] || quiet apt-get update -q
  quiet apt-get install -y -q --no-install-recommends "${want[@]}"
  hash -r
fi
problem=$(node_problem "$NODE_BIN") || die "$problem"

# 2. The pinned @atproto/bsky, as the conformance tests run it: npm ci from the lockfile
# (the npm registry; no install scripts run), again only when the lockfile or Node's ABI
# changed. Root owns it all; the service only reads it.
NODE_SRC=$SRC/conformance/node
for f in package.json package-lock.json appview.cjs; do
  [ -f "$NODE_SRC/$f" ] || die "$NODE_SRC/$f missing"
done
install -d -m 0755 "$APPVIEW_DIR"
install -m 0644 "$NODE_SRC/package.json" "$NODE_SRC/package-lock.json" "$NODE_SRC/appview.cjs" "$APPVIEW_DIR/"
stamp_file=$APPVIEW_DIR/node_modules/.smalldp-stamp
want_stamp=$(node_modules_stamp "$APPVIEW_DIR" "$NODE_BIN")
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$want_stamp" ]; then
  say "kept $APPVIEW_DIR/node_modules (same lockfile, same Node)"
else
  say "installing @atproto/bsky into $APPVIEW_DIR (npm ci, $("$NODE_BIN" --version), npm $(npm --version))"
  started=$SECONDS
  # The unit's node first on PATH: npm runs on it.
  (cd "$APPVIEW_DIR" && quiet env PATH="$(dirname "$NODE_BIN"):$PATH" npm ci --omit=dev --ignore-scripts \
    --no-audit --no-fund --loglevel=error)
  echo "$want_stamp" >"$stamp_file"
  say "npm ci took $((SECONDS - started)) s ($(du -sh "$APPVIEW_DIR/node_modules" | cut -f1))"
fi
APPVIEW_VERSION=$(cd "$APPVIEW_DIR" && "$NODE_BIN" -p 'require("@atproto/bsky/package.json").version') ||
  die "@atproto/bsky does not load in $APPVIEW_DIR"

# 3. Settings: written only when absent, with a secp256k1 key made here.
if [ ! -e "$APPVIEW_ENV" ]; then
  key=$(cd "$APPVIEW_DIR" && "$NODE_BIN" -e '
const { Secp256k1Keypair } = require("@atproto/crypto")
Secp256k1Keypair.create({ exportable: true })
  .then((k) => k.export())
  .then((b) => process.stdout.write(Buffer.from(b).toString("hex")))') || die "could not make a signing key"
  [ ${#key} = 64 ] || die "the signing key made is not 64 hex digits"
  case $GRPC_HOST in
    0.0.0.0) dataplane=http://127.0.0.1:$GRPC_PORT ;;
    ::) dataplane=http://[::1]:$GRPC_PORT ;;
    *:*) dataplane=http://[$GRPC_HOST]:$GRPC_PORT ;;
    *) dataplane=http://$GRPC_HOST:$GRPC_PORT ;;
  esac
  name=$(hostname | tr 'A-Z' 'a-z')
  tmp=$(mktemp "$CONF_DIR/.appview.env.XXXXXX")
  sed -e "s|^BSKY_SERVICE_SIGNING_KEY=.*|BSKY_SERVICE_SIGNING_KEY=$key|" \
      -e "s|^BSKY_DATAPLANE_URLS=.*|BSKY_DATAPLANE_URLS=$dataplane|" \
      -e "/^[A-Z_]*=/s|smalldp\.local|${name:-smalldp}.local|g" \
      "$SRC/systemd/appview.env" >"$tmp"
  chown root:root "$tmp"
  chmod 0600 "$tmp"
  mv "$tmp" "$APPVIEW_ENV"
  unset key
  say "wrote $APPVIEW_ENV with a new service signing key (edit it, then: systemctl restart smalldp-appview)"
else
  chown root:root "$APPVIEW_ENV"
  chmod 0600 "$APPVIEW_ENV"
  say "kept $APPVIEW_ENV"
fi
# A setting the AppView rejects is reported now rather than in a restart loop: the file
# read as systemd reads it (NAME=value lines), then ServerConfig.readEnv and the key.
if ! check=$(cd "$APPVIEW_DIR" && env -i PATH=/usr/bin:/bin NODE_ENV=production "$NODE_BIN" -e '
// one line on failure: the last line of the output is what install.sh reports
const fail = (err) => { console.log(`${err.name || "Error"}: ${String(err.message).replace(/\s+/g, " ").slice(0, 400)}`); process.exit(1) }
Promise.resolve().then(() => {
const fs = require("node:fs")
for (const line of fs.readFileSync(process.argv[1], "utf8").split("\n")) {
  const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/.exec(line)
  if (!m || /^\s*[#;]/.test(line)) continue
  process.env[m[1]] = m[2].replace(/^"(.*)"$|^'"'"'(.*)'"'"'$/, "$1$2")
}
const e = process.env
if (e.NODE_ENV === "test" || e.NODE_ENV === "development") throw new Error(`NODE_ENV=${e.NODE_ENV} is refused`)
for (const name of ["BSKY_DATAPLANE_URLS", "BSKY_SERVER_DID", "BSKY_SERVICE_SIGNING_KEY", "BSKY_BSYNC_URL", "MOD_SERVICE_DID"]) {
  if (!e[name]) throw new Error(`${name} is not set`)
}
if (!/^[0-9a-fA-F]{64}$/.test(e.BSKY_SERVICE_SIGNING_KEY)) throw new Error("BSKY_SERVICE_SIGNING_KEY is not 64 hex digits")
if ((e.BSKY_DATAPLANE_HTTP_VERSION || "2") !== "2") throw new Error("BSKY_DATAPLANE_HTTP_VERSION must be 2: smalldp speaks gRPC over HTTP/2 only")
const { ServerConfig } = require("@atproto/bsky")
const { Secp256k1Keypair } = require("@atproto/crypto")
const config = ServerConfig.readEnv()
return Secp256k1Keypair.import(e.BSKY_SERVICE_SIGNING_KEY).then((k) => {
  console.log([e.SMALLDP_APPVIEW_HOST || "127.0.0.1", config.port, config.dataplaneUrls.join(","), k.did()].join(" "))
})
}).catch(fail)' "$APPVIEW_ENV" 2>&1); then
  die "$APPVIEW_ENV: ${check##*$'\n'}"
fi
read -r AV_HOST AV_PORT AV_DATAPLANE AV_KEY <<<"${check##*$'\n'}"
case ",$AV_DATAPLANE," in
  *"127.0.0.1:$GRPC_PORT,"*|*"localhost:$GRPC_PORT,"*|*"[::1]:$GRPC_PORT,"*|*"$GRPC_HOST:$GRPC_PORT,"*) ;;
  *) say "warning: BSKY_DATAPLANE_URLS=$AV_DATAPLANE in $APPVIEW_ENV, but smalldp's grpc_listen is $GRPC_HOST:$GRPC_PORT" ;;
esac

# 4. The unit, enabled; started (restarted on upgrade) where systemd runs.
install -m 0644 "$SRC/systemd/smalldp-appview.service" "$APPVIEW_UNIT"
if systemd_running; then
  systemctl daemon-reload
  systemctl enable smalldp-appview.service >/dev/null 2>&1
else
  systemctl enable smalldp-appview.service >/dev/null 2>&1 || true
  mkdir -p "$WANTS"
  ln -sfn "$APPVIEW_UNIT" "$WANTS/smalldp-appview.service"
fi
[ -L "$WANTS/smalldp-appview.service" ] || die "could not enable smalldp-appview.service"
if systemd_running && [ "$START" = 1 ]; then
  if systemctl is-active --quiet smalldp-appview.service; then
    say "restarting the AppView (upgrade)"
    systemctl restart smalldp-appview.service
  else
    say "starting the AppView"
    systemctl start smalldp-appview.service
  fi
  av_state="running"
  # Ready when /xrpc/_health is 200: listening, and its Ping reached smalldp.
  case $AV_HOST in 0.0.0.0) probe=127.0.0.1 ;; ::) probe=[::1] ;; *:*) probe=[$AV_HOST] ;; *) probe=$AV_HOST ;; esac
  if python3 - "http://$probe:$AV_PORT/xrpc/_health" <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
            sys.exit(0 if r.status == 200 else 1)
    except OSError:
        time.sleep(0.5)
sys.exit(1)
PY
  then
    av_state="running, answering (its /xrpc/_health reached smalldp)"
  else
    say "warning: the AppView does not answer http://$probe:$AV_PORT/xrpc/_health yet: journalctl -u smalldp-appview"
  fi
else
  av_state="installed and enabled, not started"
fi
say "AppView @atproto/bsky $APPVIEW_VERSION on smalldp ($AV_DATAPLANE) $av_state, service key $AV_KEY"
show_url "$AV_HOST" "$AV_PORT" /xrpc/_health
say "logs: journalctl -u smalldp-appview -f    settings: $APPVIEW_ENV"
