"""The optional mypyc-compiled build of smalldp's hot modules (README: "The compiled build").

The modules to compile are listed in one place, pyproject.toml's
``[tool.smalldp.compile] modules``.  Two ways to build them, one compiler run each:

* **The development build** (``python scripts/mypyc_build.py overlay``, run by
  scripts/build_compiled, scripts/test and scripts/serve): the editable install keeps
  importing src/, and the compiled modules go to an *overlay* directory,
  ``build/compiled/<python tag>/<key>/``, that is put first on ``PYTHONPATH`` only for a
  compiled run.  It holds the extension modules and a shim ``__init__.py`` per package
  that sets the package's ``__path__`` to ``[overlay, src]``: a compiled module is found
  in the overlay, every other module (and every module added later) in src/.  Nothing is
  ever written into src/, so a run without the overlay on its path imports the plain
  ``.py`` files.  ``<key>`` is a hash of what the build depends on (the compiled sources
  and every smalldp module they import, mypy's version, the Python ABI, this file); a
  build directory is never changed once complete, and at import the shim re-hashes the
  sources and raises ImportError when they no longer match: a stale ``.so`` never runs.
* **The wheel** (scripts/install.sh): scripts/setup_compiled.py, copied to setup.py of
  install.sh's build copy, gives setuptools ``extensions()`` as its ``ext_modules``; the
  wheel holds the ``.py`` files and the ``.so`` files that shadow them.

Usage:
  python scripts/mypyc_build.py overlay   build when needed; print the overlay directory
  python scripts/mypyc_build.py status [--expect compiled|interpreted]
                                          which build this interpreter imports
  python scripts/mypyc_build.py modules   the module names, one per line
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
OVERLAYS = ROOT / "build" / "compiled"
KEEP_BUILDS = 3  # complete builds kept per Python (a running process may still use an older one)
OPT_LEVEL = "3"
# mypy's options for the compiled modules: the default checks, except that an empty
# collection mypy cannot type by itself (`parts = []`) is a list of Any, as in Python,
# rather than an error. Any other type error in a compiled module stops the build.
MYPY_FLAGS = ["--disable-error-code", "var-annotated"]
STAMP = "_smalldp_compiled.py"  # top-level module in the overlay: the build's key and hashes


def _pyproject(root: Path) -> dict:
    import tomllib

    with open(root / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def modules(root: Path = ROOT) -> list[str]:
    """The dotted names of the modules to compile, from pyproject.toml."""
    names = _pyproject(root)["tool"]["smalldp"]["compile"]["modules"]
    if not names or len(set(names)) != len(names):
        raise SystemExit("pyproject.toml [tool.smalldp.compile] modules: empty or repeated")
    return list(names)


def module_path(src: Path, name: str) -> Path:
    return src.joinpath(*name.split(".")).with_suffix(".py")


def _imports(src: Path, name: str) -> set[str]:
    """The smalldp modules ``name`` imports (anywhere in the file, as mypy follows them)."""
    path = module_path(src, name)
    tree = ast.parse(path.read_bytes(), str(path))
    package = name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    out = set()
    for mod in found:
        while mod.startswith("smalldp"):
            if module_path(src, mod).is_file():
                out.add(mod)
            elif (src.joinpath(*mod.split(".")) / "__init__.py").is_file():
                out.add(mod + ".__init__")
            mod = mod.rpartition(".")[0]
    return out


def inputs(src: Path, names: list[str]) -> list[str]:
    """Every source file the compiled code depends on, relative to ``src``: the compiled
    modules, the smalldp modules they import (mypyc reads their types and may inline
    their constants), transitively, and the packages' ``__init__.py``."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if not name.endswith(".__init__"):
            todo.extend(_imports(src, name) - seen)
    files = {module_path(src, n).relative_to(src).as_posix() for n in seen}
    for name in names:
        parts = name.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            files.add("/".join(parts[:i]) + "/__init__.py")
    return sorted(files)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hashes(src: Path, names: list[str]) -> dict[str, str]:
    return {rel: _sha256(src / rel) for rel in inputs(src, names)}


def python_tag() -> str:
    """One overlay per interpreter ABI: 'cpython-311-x86_64-linux-gnu'."""
    return sysconfig.get_config_var("EXT_SUFFIX").strip(".").rpartition(".")[0]


def mypy_version() -> str:
    from importlib.metadata import version

    return version("mypy")


def build_key(names: list[str], source_hashes: dict[str, str]) -> str:
    blob = json.dumps({
        "modules": names, "sources": source_hashes, "mypy": mypy_version(), "abi": python_tag(),
        "opt": OPT_LEVEL, "flags": MYPY_FLAGS, "builder": _sha256(Path(__file__)),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def extensions(prefix: str, names: list[str]) -> list:
    """mypycify's extensions for ``names``, whose files are under ``prefix`` (relative to
    the working directory, as setuptools wants).  Errors in the listed modules stop the
    build: a module that does not compile is taken off the list, never skipped quietly."""
    from mypyc.build import mypycify

    paths = [module_path(Path(prefix), n).as_posix() for n in names]
    return mypycify([*MYPY_FLAGS, *paths], opt_level=OPT_LEVEL)


# --- the development overlay --------------------------------------------------------------

_CHECK = '''\
"""Generated by scripts/mypyc_build.py: the compiled build's key and the hashes of the
sources it was built from, checked when smalldp is imported from this overlay."""
import hashlib as _hashlib
import os as _os

KEY = {key!r}
SRC = {src!r}
MODULES = {modules!r}
SOURCES = {sources!r}


def check():
    changed = []
    for rel, digest in SOURCES.items():
        try:
            with open(_os.path.join(SRC, rel), "rb") as f:
                ok = _hashlib.sha256(f.read()).hexdigest() == digest
        except OSError:
            ok = False
        if not ok:
            changed.append(rel)
    if changed:
        raise ImportError(
            "smalldp's compiled build in " + _os.path.dirname(_os.path.abspath(__file__))
            + " is stale: changed since it was built: " + ", ".join(sorted(changed))
            + ". Rebuild it with scripts/build_compiled (scripts/test and scripts/serve do),"
            + " or run without it on PYTHONPATH (the interpreted source).")
'''

_SHIM = '''\
# Generated by scripts/mypyc_build.py (the compiled build): this package's modules come
# from {src_dir!r}, except the compiled ones, found here first.
import os as _os
__path__ = [_os.path.dirname(_os.path.abspath(__file__)), {src_dir!r}]
{check}with open({src_init!r}, "rb") as _f:
    exec(compile(_f.read(), {src_init!r}, "exec"))
del _f
'''


def _write_overlay(out: Path, src_snapshot: Path, names: list[str], source_hashes: dict[str, str],
                   key: str) -> None:
    """Compile ``names`` from ``src_snapshot`` into ``out`` (a new directory)."""
    from setuptools import setup

    work = out.parent / (out.name + ".work")
    cwd = os.getcwd()
    os.chdir(src_snapshot)
    try:
        exts = extensions(".", names)
        setup(name="smalldp-compiled", ext_modules=exts,
              script_args=["-q", "build_ext", "--build-lib", str(out), "--build-temp", str(work)])
    finally:
        os.chdir(cwd)
    packages = {n.rsplit(".", 1)[0] for n in names if "." in n}
    for pkg in list(packages):
        while "." in pkg:
            pkg = pkg.rsplit(".", 1)[0]
            packages.add(pkg)
    for pkg in sorted(packages):
        src_dir = str(SRC.joinpath(*pkg.split(".")))
        check = "from _smalldp_compiled import check as _check\n_check()\ndel _check\n" if "." not in pkg else ""
        (out.joinpath(*pkg.split(".")) / "__init__.py").write_text(_SHIM.format(
            src_dir=src_dir, src_init=os.path.join(src_dir, "__init__.py"), check=check))
    (out / STAMP).write_text(_CHECK.format(key=key, src=str(SRC), modules=names, sources=source_hashes))
    for name in names:
        found = list(out.joinpath(*name.split(".")[:-1]).glob(name.rpartition(".")[2] + ".*.so"))
        if len(found) != 1:
            raise SystemExit(f"mypyc build: no extension module for {name} in {out}")
    (out / "COMPLETE").write_text(json.dumps({"key": key, "modules": names, "mypy": mypy_version(),
                                              "built": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def overlay() -> Path:
    """The complete overlay for the current sources, built when there is none."""
    names = modules()
    base = OVERLAYS / python_tag()
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; others wait and reuse it
        key = build_key(names, hashes(SRC, names))
        out = base / key
        if (out / "COMPLETE").is_file():
            _prune(base, keep=out)
            return out
        started = time.monotonic()
        print(f"mypyc: compiling {len(names)} modules (mypy {mypy_version()}) into {out}",
              file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="smalldp-mypyc-") as tmp:
            # Compile a snapshot: the sources may be edited while the compiler runs.
            snap = Path(tmp) / "src"
            shutil.copytree(SRC / "smalldp", snap / "smalldp", symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so", "lexicons", "static"))
            snap_hashes = hashes(snap, names)
            key = build_key(names, snap_hashes)
            out = base / key
            if not (out / "COMPLETE").is_file():
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(out.parent / (out.name + ".work"), ignore_errors=True)
                with contextlib.redirect_stdout(sys.stderr):
                    _write_overlay(out, snap, names, snap_hashes, key)
                shutil.rmtree(out.parent / (out.name + ".work"), ignore_errors=True)
        print(f"mypyc: built in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        _prune(base, keep=out)
        return out


def _prune(base: Path, keep: Path) -> None:
    """Keep ``keep`` and the newest other complete builds, KEEP_BUILDS in all; delete the
    rest and what an interrupted build left (called with the lock held)."""
    complete = sorted((p for p in base.iterdir() if (p / "COMPLETE").is_file() and p != keep),
                      key=lambda p: (p / "COMPLETE").stat().st_mtime, reverse=True)
    wanted = {keep, *complete[:KEEP_BUILDS - 1]}
    for p in base.iterdir():
        if p.is_dir() and p not in wanted:
            shutil.rmtree(p, ignore_errors=True)


def status(names: list[str]) -> tuple[str, list[str]]:
    """('compiled' | 'interpreted' | 'mixed', the module files) as this interpreter imports them."""
    files = []
    for name in names:
        spec = importlib.util.find_spec(name)
        files.append(spec.origin if spec and spec.origin else "?")
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    compiled = [f.endswith(suffixes) for f in files]
    kind = "compiled" if all(compiled) else "interpreted" if not any(compiled) else "mixed"
    return kind, files


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else ""
    if cmd == "overlay" and len(argv) == 1:
        print(overlay())
    elif cmd == "modules" and len(argv) == 1:
        print("\n".join(modules()))
    elif cmd == "status" and (len(argv) == 1 or (len(argv) == 3 and argv[1] == "--expect")):
        kind, files = status(modules())
        print(f"smalldp build: {kind}")
        for f in files:
            print(f"  {f}")
        if len(argv) == 3 and kind != argv[2]:
            print(f"expected the {argv[2]} build, this python imports the {kind} one", file=sys.stderr)
            return 1
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
