"""Shared fixtures: where the real Jetstream captures live, and running `smalldp import`."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Callable

import pytest

# Real captured data, kept outside the project: <project>/../shared/fixtures/jetstream.
SHARED = Path(__file__).resolve().parents[2] / "shared"
JETSTREAM = SHARED / "fixtures" / "jetstream"

# Environment that load_settings reads and that must not leak into these tests.
_ENV_PREFIXES = ("SMALLDP_",)
_ENV_NAMES = ("STATE_DIRECTORY",)


def run_cli(args: list[str]) -> tuple[int, str]:
    """Run ``smalldp.cli.main(args)`` in this process with a clean environment; (rc, stdout)."""
    from smalldp.cli import main

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(_ENV_PREFIXES) or name in _ENV_NAMES:
                mp.delenv(name)
        with contextlib.redirect_stdout(out):
            rc = main(args)
    return rc, out.getvalue()


def import_json(data_dir: Path, files: list[Path], *extra: str) -> dict:
    """`smalldp import --json --data-dir DATA_DIR FILES... EXTRA...` -> the parsed summary."""
    rc, out = run_cli(["import", "--json", "--data-dir", str(data_dir), *extra, *map(str, files)])
    assert rc == 0, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out  # --json prints exactly one line
    return json.loads(lines[0])


@pytest.fixture(scope="session")
def jetstream_dir() -> Path:
    """The captured Jetstream fixtures; skips the test when they are absent."""
    if not JETSTREAM.is_dir():
        pytest.skip(f"real Jetstream fixtures not found at {JETSTREAM}")
    return JETSTREAM


@pytest.fixture(scope="session")
def smalldp_import() -> Callable[..., dict]:
    """A callable: smalldp_import(data_dir, [files], *extra_args) -> the --json summary."""
    return import_json


# --- which build runs: the mypyc-compiled modules or the interpreted source --------------
# scripts/test sets SMALLDP_TEST_BUILD (compiled | interpreted); tests/test_compiled.py
# checks it. The header line names the build, so a run's log says what it tested.

def mypyc_build_module():
    """scripts/mypyc_build.py, imported by path (module list, hashes, status)."""
    import importlib.util
    import sys

    name = "smalldp_mypyc_build"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "scripts" / "mypyc_build.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def pytest_report_header(config: pytest.Config) -> str:
    build = mypyc_build_module()
    kind, files = build.status(build.modules())
    import sys

    stamp = sys.modules.get("_smalldp_compiled")  # the overlay's, imported with smalldp
    where = f", {os.path.dirname(stamp.__file__)}" if stamp and stamp.__file__ else ""
    return (f"smalldp build: {kind} ({len(files)} listed modules{where});"
            f" requested: {os.environ.get('SMALLDP_TEST_BUILD') or 'not said (not run by scripts/test)'}")
