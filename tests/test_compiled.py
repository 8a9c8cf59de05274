"""The mypyc-compiled build (README: "The compiled build"): a run imports the build it
was asked for, never quietly the other one, and a stale compiled build is refused.

scripts/test runs the suite with SMALLDP_TEST_BUILD=compiled (the overlay from
scripts/mypyc_build.py first on PYTHONPATH) and a subset with
SMALLDP_TEST_BUILD=interpreted (the plain sources); without it these checks skip.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import mypyc_build_module

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
EXT = tuple(importlib.machinery.EXTENSION_SUFFIXES)
build = mypyc_build_module()
MODULES = build.modules(ROOT)
REQUESTED = os.environ.get("SMALLDP_TEST_BUILD", "")


def _requested(kind: str) -> None:
    if REQUESTED not in ("compiled", "interpreted"):
        pytest.skip("SMALLDP_TEST_BUILD is not set: run through scripts/test "
                    "(or set it to compiled or interpreted)")
    if REQUESTED != kind:
        pytest.skip(f"this run tests the {REQUESTED} build")


def test_listed_modules_exist_and_events_stays_interpreted() -> None:
    for name in MODULES:
        assert build.module_path(SRC, name).is_file(), f"pyproject.toml lists {name}: no such file"
    # msgspec Structs compiled by mypyc reject every event (design.md): events.py stays plain.
    assert "smalldp.events" not in MODULES


def test_no_extension_module_in_the_source_tree() -> None:
    """A .so next to a .py would shadow it for every interpreted run (and go stale)."""
    found = [p for p in (SRC / "smalldp").rglob("*") if p.name.endswith(EXT)]
    assert not found, f"compiled files in src/ shadow the sources: {found}"


def test_compiled_run_imports_the_compiled_modules() -> None:
    _requested("compiled")
    kind, files = build.status(MODULES)
    assert kind == "compiled", f"SMALLDP_TEST_BUILD=compiled, but these are imported: {files}"
    stamp = importlib.import_module("_smalldp_compiled")
    overlay = Path(stamp.__file__).parent
    assert overlay.parent.parent == ROOT / "build" / "compiled"
    assert overlay.name == stamp.KEY and (overlay / "COMPLETE").is_file()
    assert stamp.MODULES == MODULES, "the build is of another module list: rebuild"
    for name, file in zip(MODULES, files):
        module = importlib.import_module(name)
        assert module.__file__ == file and Path(file).parent.is_relative_to(overlay), (name, file)
    # The rest of the package still comes from the sources.
    import smalldp.events
    import smalldp.store.reader
    assert smalldp.events.__file__ == str(SRC / "smalldp" / "events.py")
    assert smalldp.store.reader.__file__ == str(SRC / "smalldp" / "store" / "reader.py")
    # Native code indeed: mypyc's functions are builtins, not Python functions.
    import smalldp.tid
    assert type(smalldp.tid.tid_to_int).__name__ == "builtin_function_or_method"
    assert smalldp.tid.int_to_tid(smalldp.tid.tid_to_int("3jzfcijpj2z2a")) == "3jzfcijpj2z2a"


def test_compiled_build_matches_the_sources() -> None:
    """The overlay was built from the sources as they are (else smalldp's import fails;
    this also catches a source edited while the suite ran)."""
    _requested("compiled")
    stamp = importlib.import_module("_smalldp_compiled")
    now = build.hashes(SRC, MODULES)
    assert now == stamp.SOURCES, sorted(k for k in now.keys() | stamp.SOURCES.keys()
                                        if now.get(k) != stamp.SOURCES.get(k))


def test_interpreted_run_imports_the_sources() -> None:
    _requested("interpreted")
    kind, files = build.status(MODULES)
    assert kind == "interpreted", f"SMALLDP_TEST_BUILD=interpreted, but these are imported: {files}"
    assert files == [str(build.module_path(SRC, n)) for n in MODULES]
    assert "_smalldp_compiled" not in sys.modules
    import smalldp.tid
    assert type(smalldp.tid.tid_to_int).__name__ == "function"


def test_stale_overlay_is_refused(tmp_path: Path) -> None:
    """An overlay whose recorded hashes differ from the sources fails at `import smalldp`,
    naming the changed file, instead of running old compiled code."""
    src = tmp_path / "src" / "smalldp"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("VALUE = 'from the sources'\n")
    (src / "hot.py").write_text("X = 2\n")
    overlay = tmp_path / "overlay"
    (overlay / "smalldp").mkdir(parents=True)
    built_from = hashlib.sha256(b"X = 1\n").hexdigest()  # hot.py as it was at build time
    fresh = hashlib.sha256((src / "__init__.py").read_bytes()).hexdigest()

    def write_stamp(hot_digest: str) -> None:
        (overlay / build.STAMP).write_text(build._CHECK.format(
            key="k", src=str(tmp_path / "src"), modules=["smalldp.hot"],
            sources={"smalldp/__init__.py": fresh, "smalldp/hot.py": hot_digest}))

    (overlay / "smalldp" / "__init__.py").write_text(build._SHIM.format(
        src_dir=str(src), src_init=str(src / "__init__.py"),
        check="from _smalldp_compiled import check as _check\n_check()\ndel _check\n"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMALLDP_")}
    env["PYTHONPATH"] = str(overlay)
    probe = ("import smalldp, smalldp.hot; "
             "print(smalldp.VALUE, smalldp.hot.__file__ == smalldp.__path__[1] + '/hot.py')")

    write_stamp(built_from)
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)
    assert done.returncode != 0 and "ImportError" in done.stderr, done.stderr
    assert "is stale" in done.stderr and "smalldp/hot.py" in done.stderr, done.stderr

    write_stamp(hashlib.sha256(b"X = 2\n").hexdigest())
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["from", "the", "sources", "True"]
