"""The pinned official AppView (conformance/node, scripts/_node_deps.sh) for the tests.

Its absence FAILS a test, never skips it: CI installs it (scripts/test runs _node_deps.sh),
so a missing package means a broken setup, not an optional extra.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "conformance" / "node"
BSKY_DIR = NODE_DIR / "node_modules" / "@atproto" / "bsky"


def node_or_fail() -> str:
    """The `node` executable, and @atproto/bsky installed under conformance/node; else fail."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("no `node` on PATH: run scripts/_node_deps.sh (installs Debian's nodejs and "
                    "the pinned @atproto/bsky)", pytrace=False)
    if not (BSKY_DIR / "package.json").is_file():
        pytest.fail(f"@atproto/bsky is not installed in {NODE_DIR / 'node_modules'}: run "
                    "scripts/_node_deps.sh (npm ci from conformance/node/package-lock.json)",
                    pytrace=False)
    return node


def bsky_version() -> str:
    return json.loads((BSKY_DIR / "package.json").read_text())["version"]


def run_node_json(script: str, *args: str, timeout: float = 120) -> object:
    """Run conformance/node/<script> with node (cwd conformance/node, so `require` finds the
    pinned packages) and parse its stdout as JSON."""
    node = node_or_fail()
    proc = subprocess.run([node, str(NODE_DIR / script), *args], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"node {script} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    return json.loads(proc.stdout)
