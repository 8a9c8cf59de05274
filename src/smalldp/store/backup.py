"""Backup and restore of a smalldp SQLite file, and detecting that it is in use.

* :func:`backup` copies a database that may be in use (``smalldp serve`` ingesting) into
  a new file with SQLite's online backup API.  It holds ONE read transaction for the
  whole copy: in WAL mode that is a fixed snapshot, so the copy is consistent and the
  writer is never blocked (it keeps committing to the WAL; only checkpoints cannot pass
  the snapshot until the copy ends, so the WAL grows meanwhile).  Without that read
  transaction, every commit of another connection would restart the copy from page 1.
* :func:`restore` installs a copy into a data directory after checking it
  (store/check.py), refusing while another process has the database open
  (:func:`database_in_use`).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smalldp.store.check import check_store
from smalldp.store.check_report import CheckReport
from smalldp.store.progress import Progress, Throttle

BACKUP_STEP_PAGES = 4096  # 32 MiB of 8 KiB pages between progress reports


class MaintenanceError(RuntimeError):
    """Backup or restore refused or failed; the message says why."""


@dataclass
class CopySummary:
    """What a backup or restore copied."""

    source: str
    dest: str
    bytes: int
    pages: int
    cursor: int | None
    links: int | None
    seconds: float
    kept: str | None = None  # restore: where the previous database went

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_database(source: Path, dest: Path, *, step_pages: int = BACKUP_STEP_PAGES,
                  progress: Progress | None = None) -> CopySummary:
    """Copy ``source`` into the new file ``dest`` (which must not exist) as of one snapshot.

    The copy is left in rollback-journal mode: one self-contained file (the writer
    switches it back to WAL when it opens it).
    """
    started = time.monotonic()
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    try:
        # The snapshot: this read transaction stays open for the whole copy, so commits
        # by `smalldp serve` neither block nor restart it (backup_step reuses an open
        # read transaction instead of starting one per step).
        src.execute("BEGIN")
        meta = dict(src.execute("SELECT k, v FROM meta WHERE k IN ('cursor', 'links')").fetchall())
        dst = sqlite3.connect(dest, isolation_level=None)
        tick = Throttle(progress)
        try:
            def step(status: int, remaining: int, total: int) -> None:
                tick("copy", total - remaining, total)

            src.backup(dst, pages=max(1, step_pages), progress=step)
            pages = dst.execute("PRAGMA page_count").fetchone()[0]
            tick("copy", pages, pages, final=True)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
        src.execute("ROLLBACK")
    finally:
        src.close()
    with open(dest, "rb+") as f:
        os.fsync(f.fileno())
    cursor = meta.get("cursor")
    return CopySummary(str(source), str(dest), dest.stat().st_size, pages,
                       None if cursor is None else int(cursor), meta.get("links"), time.monotonic() - started)


def backup(source: Path, dest: Path, *, force: bool = False, step_pages: int = BACKUP_STEP_PAGES,
           progress: Progress | None = None) -> CopySummary:
    """Copy a (possibly live) database to ``dest``, a file or an existing directory.

    Written to a temporary name next to the destination and renamed into place, so a
    crash leaves either no backup or a whole one; an existing file is replaced only
    with ``force``.
    """
    if not source.is_file():
        raise FileNotFoundError(f"no database at {source}")
    if dest.is_dir():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = dest / f"smalldp-{stamp}.sqlite"
    if dest.exists():
        if dest.resolve() == source.resolve() or os.path.samefile(dest, source):
            raise MaintenanceError(f"{dest} is the database itself")
        if not force:
            raise MaintenanceError(f"{dest} exists; use --force to overwrite it")
    if not dest.parent.is_dir():
        raise MaintenanceError(f"no such directory: {dest.parent}")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # SQLite creates it; an empty file would be taken for an empty database anyway
    try:
        summary = copy_database(source, tmp, step_pages=step_pages, progress=progress)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        for leftover in (tmp, Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)
        raise
    summary.dest = str(dest)
    return summary


_F_WRLCK, _F_UNLCK, _SEEK_SET = fcntl.F_WRLCK, fcntl.F_UNLCK, os.SEEK_SET
# The byte of the WAL index (-shm) that SQLite's unix VFS keeps read-locked for as long as
# a connection has the database open in WAL mode (UNIX_SHM_DMS in os_unix.c).
_SHM_DMS = 128


def _lock_holder(path: Path, start: int, length: int) -> int | None:
    """PID of another process holding a POSIX lock that conflicts with a write lock on
    [start, start+length) of ``path`` (F_GETLK: nothing is taken), else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        # struct flock on 64-bit Linux: short type, short whence, off_t start, off_t len, pid_t pid.
        request = struct.pack("hhqqi4x", _F_WRLCK, _SEEK_SET, start, length, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, request)
        kind, _, _, _, pid = struct.unpack("hhqqi4x", answer)
        return None if kind == _F_UNLCK else pid
    finally:
        os.close(fd)


def database_in_use(path: Path) -> str | None:
    """Why ``path`` is in use by another process (``smalldp serve``, import, a reader),
    or None when nobody else has it open."""
    shm = Path(f"{path}-shm")
    pid = _lock_holder(shm, _SHM_DMS, 1) if shm.exists() else None
    if pid is not None:
        return f"process {pid} has {path} open"
    if not path.exists():
        return None
    # A writer in the middle of a transaction (also covers rollback-journal mode).
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        return f"{path} is locked by another connection ({exc})"
    finally:
        conn.close()
    return None


def restore(source: Path, target: Path, *, keep: bool = True, quick: bool = False,
            step_pages: int = BACKUP_STEP_PAGES, progress: Progress | None = None,
            limit: int = 20) -> tuple[CopySummary, CheckReport]:
    """Install a copy of ``source`` as the database ``target`` once it passes check_store.

    Refuses (MaintenanceError) while another process has ``target`` open, or when the
    copy fails its check (the report is in the exception's second argument). The previous
    database is checkpointed and kept as ``target.bak`` unless ``keep`` is False.
    """
    if not source.is_file():
        raise FileNotFoundError(f"no such file: {source}")
    if target.exists() and os.path.samefile(source, target):
        raise MaintenanceError(f"{source} is the database itself")
    busy = database_in_use(target)
    if busy:
        raise MaintenanceError(f"refusing to restore while the database is in use: {busy}; stop smalldp first")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.restore.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        summary = copy_database(source, tmp, step_pages=step_pages, progress=progress)
        report = check_store(tmp, quick=quick, limit=limit, progress=progress)
        report.path = str(source)
        if not report.ok:
            raise MaintenanceError(f"{source} fails the check; nothing restored", report)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # what the writer would set: ready to serve
        finally:
            conn.close()
        busy = database_in_use(target)  # again: smalldp may have started meanwhile
        if busy:
            raise MaintenanceError(f"refusing to restore while the database is in use: {busy}; stop smalldp first")
        kept = _retire(target, keep)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)
    summary.dest = str(target)
    summary.kept = kept
    return summary, report


def _retire(target: Path, keep: bool) -> str | None:
    """Move the current database out of the way (as ``.bak``) or delete it, WAL included."""
    wal, shm = Path(f"{target}-wal"), Path(f"{target}-shm")
    if not target.exists():
        for p in (wal, shm):
            p.unlink(missing_ok=True)
        return None
    if keep:
        # Fold the WAL into the file so the .bak is whole on its own.
        try:
            conn = sqlite3.connect(target, isolation_level=None, timeout=0)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
        except sqlite3.DatabaseError:
            pass  # a damaged old file: its WAL is kept next to it below
    bak = Path(f"{target}.bak")
    if keep:
        os.replace(target, bak)
        if wal.exists() and wal.stat().st_size:
            os.replace(wal, Path(f"{bak}-wal"))  # SQLite finds a WAL by the file's name
        else:
            Path(f"{bak}-wal").unlink(missing_ok=True)
    else:
        target.unlink()
    for p in (wal, shm):
        p.unlink(missing_ok=True)
    return str(bak) if keep else None
