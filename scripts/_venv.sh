# Sourced by the scripts here: makes sure $ROOT/.venv exists with smalldp and its test
# dependencies installed, and sets PY to its python.  Safe to run again.
# It also defines smalldp_compiled (the mypyc build), which scripts/test, scripts/serve
# and scripts/build_compiled call.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="${SMALLDP_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian and Raspberry Pi OS ship venv support as a separate package.
    rm -rf "$VENV"
    echo "python3 -m venv failed: installing python3-venv with apt-get" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
fi
STAMP="$VENV/.smalldp-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test,compile]"
  touch "$STAMP"
fi
PY="$VENV/bin/python"

# A C compiler and Python's headers, for the mypyc build: Debian's gcc, libc6-dev and
# python3-dev when missing (python3-dev only helps Debian's own python3).
smalldp_need_compiler() {
  local inc cc
  inc=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  cc=$("$PY" -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])')
  if command -v "$cc" >/dev/null 2>&1 && [ -f "$inc/Python.h" ]; then return 0; fi
  if command -v apt-get >/dev/null 2>&1; then
    echo "smalldp: no C compiler or no Python.h: installing gcc libc6-dev python3-dev with apt-get" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends gcc libc6-dev python3-dev >/dev/null || true
  fi
  if command -v "$cc" >/dev/null 2>&1 && [ -f "$inc/Python.h" ]; then return 0; fi
  echo "smalldp: the compiled build needs a C compiler ($cc) and $inc/Python.h;" \
       "install them, or set SMALLDP_COMPILE=0 to run the interpreted source" >&2
  return 1
}

# The mypyc-compiled build of the hot modules (README: "The compiled build"). Builds it
# when its sources changed (scripts/mypyc_build.py), then sets COMPILED_DIR to the
# directory a compiled run puts first on PYTHONPATH. SMALLDP_COMPILE=0: no build,
# COMPILED_DIR empty, the interpreted source runs. A failed build is an error, never a
# quiet fallback to the interpreted source.
smalldp_compiled() {
  COMPILED_DIR=""
  case "${SMALLDP_COMPILE:-1}" in
    0)
      echo "smalldp: SMALLDP_COMPILE=0: no mypyc build, running the interpreted source" >&2
      return 0 ;;
    1) ;;
    *) echo "smalldp: SMALLDP_COMPILE must be 0 or 1, not '$SMALLDP_COMPILE'" >&2; return 1 ;;
  esac
  smalldp_need_compiler || return 1
  if ! COMPILED_DIR=$("$PY" "$ROOT/scripts/mypyc_build.py" overlay); then
    echo "smalldp: the mypyc build failed (above). Fix it, take the failing module off" \
         "[tool.smalldp.compile] in pyproject.toml, or set SMALLDP_COMPILE=0" >&2
    COMPILED_DIR=""
    return 1
  fi
}
