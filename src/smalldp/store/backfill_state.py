"""Per-repo state of `smalldp backfill`: the ``backfill`` table (store/schema.py).

One row per repo asked for: ``queued``, ``running`` (its records being applied), ``done`` (at
``rev``, with its records and bytes) or ``failed`` (``reason``).  A backfill killed at any
moment leaves rows queued or running; the next run does those again (applying a repo twice
changes nothing: ingest/backfill.py) and skips the done ones.  ``done`` commits in the same
transaction as the repo's reconcile (Writer.reconcile), so a repo marked done is whole.
A name that never became a DID (a handle that does not resolve) has its row under the name.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

STATES = ("queued", "running", "done", "failed")


def _now_us() -> int:
    return time.time_ns() // 1000


def queue(conn: sqlite3.Connection, names: Iterable[str], refetch: bool = False) -> list[str]:
    """Record ``names`` as asked for (rows already there keep their state) and return those
    to do now: all but the done ones (with ``refetch``, all), in the order given."""
    names = list(dict.fromkeys(names))
    now = _now_us()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("INSERT OR IGNORE INTO backfill(did, state, updated_us) VALUES(?, 'queued', ?)",
                         [(name, now) for name in names])
        done: set[str] = set()
        if not refetch:
            for start in range(0, len(names), 500):
                chunk = names[start:start + 500]
                marks = ",".join("?" * len(chunk))
                done.update(name for (name,) in conn.execute(
                    f"SELECT did FROM backfill WHERE state='done' AND did IN ({marks})", chunk))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return [name for name in names if name not in done]


def is_done(conn: sqlite3.Connection, did: str) -> bool:
    """Whether ``did`` was backfilled already."""
    return conn.execute("SELECT 1 FROM backfill WHERE did=? AND state='done'", (did,)).fetchone() is not None


def mark_running(conn: sqlite3.Connection, did: str, stale: bool) -> None:
    """``did``'s records are about to be applied (``stale``: the store had commits of it)."""
    conn.execute("INSERT INTO backfill(did, state, stale, updated_us) VALUES(?, 'running', ?, ?) "
                 "ON CONFLICT(did) DO UPDATE SET state='running', reason=NULL, stale=excluded.stale, "
                 "updated_us=excluded.updated_us", (did, int(stale), _now_us()))


def mark_failed(conn: sqlite3.Connection, did: str, reason: str, size: int | None = None) -> None:
    """``did`` could not be backfilled, for ``reason``."""
    conn.execute("INSERT INTO backfill(did, state, reason, bytes, updated_us) VALUES(?, 'failed', ?, ?, ?) "
                 "ON CONFLICT(did) DO UPDATE SET state='failed', reason=excluded.reason, "
                 "bytes=excluded.bytes, updated_us=excluded.updated_us", (did, reason, size, _now_us()))


def done_statement(did: str, rev: str, records: int, size: int) -> tuple[str, tuple[Any, ...]]:
    """The statement marking ``did`` done, for Writer.reconcile to run in its transaction."""
    return ("UPDATE backfill SET state='done', rev=?, reason=NULL, records=?, bytes=?, updated_us=? "
            "WHERE did=?", (rev, records, size, _now_us(), did))


@dataclass(frozen=True)
class RepoState:
    """One row of the backfill table."""

    did: str
    state: str
    rev: str | None
    reason: str | None
    records: int | None
    bytes: int | None
    stale: bool
    updated_us: int | None

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready values."""
        return {"did": self.did, "state": self.state, "rev": self.rev, "reason": self.reason,
                "records": self.records, "bytes": self.bytes, "stale": self.stale,
                "updated_us": self.updated_us}


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Repos per state (every state present, 0 when none)."""
    found = dict(conn.execute("SELECT state, count(*) FROM backfill GROUP BY state").fetchall())
    return {state: int(found.get(state, 0)) for state in STATES}


def rows(conn: sqlite3.Connection, state: str | None = None) -> list[RepoState]:
    """Every row (or those in ``state``), failed first, then by DID."""
    where, params = ("WHERE state=?", (state,)) if state else ("", ())
    return [RepoState(did, st, rev, reason, records, size, bool(stale), updated)
            for did, st, rev, reason, records, size, stale, updated in conn.execute(
                "SELECT did, state, rev, reason, records, bytes, stale, updated_us FROM backfill "
                f"{where} ORDER BY state != 'failed', state, did", params)]
