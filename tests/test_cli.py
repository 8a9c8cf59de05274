"""The `smalldp` command's start-up checks: bad settings and missing inputs give a clear
message and exit code 2, before anything is created."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smalldp.cli", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_bad_setting_names_setting_and_source(tmp_path: Path) -> None:
    capture = tmp_path / "c.jsonl"
    capture.write_text("")
    done = run("import", "--data-dir", str(tmp_path / "d"), "--cache-mb", "0", str(capture))
    assert done.returncode == 2
    assert "cache_mb" in done.stderr and "--cache-mb" in done.stderr
    assert not (tmp_path / "d").exists()


def test_bad_setting_from_environment(tmp_path: Path) -> None:
    import os
    env = dict(os.environ, SMALLDP_LISTEN="nonsense")
    done = run("serve", "--no-ingest", "--data-dir", str(tmp_path), env=env)
    assert done.returncode == 2
    assert "listen" in done.stderr and "SMALLDP_LISTEN" in done.stderr


def test_missing_capture_file(tmp_path: Path) -> None:
    done = run("import", "--data-dir", str(tmp_path / "d"), str(tmp_path / "nope.jsonl"))
    assert done.returncode == 2 and "nope.jsonl" in done.stderr


def test_serve_without_database(tmp_path: Path) -> None:
    done = run("serve", "--no-ingest", "--data-dir", str(tmp_path / "empty"))
    assert done.returncode == 2 and "smalldp import" in done.stderr
