# Sourced by the scripts here: makes sure $ROOT/.venv exists with smalldp and its test
# dependencies installed, and sets PY to its python.  Safe to run again.
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
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
  touch "$STAMP"
fi
PY="$VENV/bin/python"
