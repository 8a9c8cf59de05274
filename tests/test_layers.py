"""The dependency direction holds: wire formats → decoding → ingest → store ← API.

Read from the source (ast), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "smalldp"


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("smalldp")}


def module_files(*parts: str) -> list[Path]:
    paths: list[Path] = []
    for part in parts:
        target = SRC / part
        paths += sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]
    assert paths and all(p.is_file() for p in paths), parts
    return paths


def offenders(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{p.relative_to(SRC)} imports {name}" for p in paths for name in sorted(imports_of(p))
            if name.startswith(forbidden)]


def test_ingest_store_and_decoding_never_import_http_or_the_service() -> None:
    lower = module_files("ingest", "store", "events", "events_v2", "links", "tid", "timestamps", "captures",
                         "config", "systemd")
    assert offenders(lower, ("smalldp.api", "smalldp.service", "smalldp.cli")) == []


def test_store_never_imports_ingest_and_api_never_writes() -> None:
    assert offenders(module_files("store"), ("smalldp.ingest",)) == []
    assert offenders(module_files("api"), ("smalldp.ingest", "smalldp.store.writer",
                                           "smalldp.service")) == []


def test_decoding_imports_nothing_above_it() -> None:
    assert offenders(module_files("events", "events_v2", "links", "tid", "timestamps"),
                     ("smalldp.store", "smalldp.ingest", "smalldp.api")) == []


def test_replay_is_a_wire_tool() -> None:
    assert offenders(module_files("replay"), ("smalldp.store", "smalldp.ingest", "smalldp.api")) == []


def test_the_checker_sees_imports() -> None:
    """The checker itself: service.py must be seen importing both sides."""
    seen = imports_of(SRC / "service.py")
    assert "smalldp.api.server" in seen and "smalldp.ingest.live" in seen
