"""Deleted accounts: the queue of those whose rows are still stored, and the sweep that
removes them.

A deleted account is hidden at once (the writer's inactive bitmap); its rows go later.
Finding them needs a pass over the forward index, which is keyed by time, not by
account, and has no index by account: at network scale it holds billions of rows.
So the rows go in a *sweep*: a cursor that walks `fwd` in key order, a bounded slice
per batch (in the batch's own transaction), and wraps around at the end.  One lap
removes the rows of every account queued, however many: the cost is a fixed share of
each batch, where a full scan per few deletions grew with the file (at 10M events, 5% of
import's time, and quadratic in the file's size).

An account joins the sweep where the cursor stands; it is done once the cursor has gone
once round and is back there.  Its rows with a rev up to the deletion's (`rev`) are
removed; rows it wrote later are kept (the writer ignores replays of older commits, so
none with an older rev can appear behind the cursor meanwhile).  A deletion of an
account already queued, with a newer rev, joins again from where the cursor is.

The cursor and each account's place are committed with the batch: a crash resumes
the sweep where its last commit left it.  An account that comes back (active again)
before its sweep is done is purged at once by a full scan (`purge_now`): its old rows
must not show.

A *reconcile* entry (``add(..., reconcile=True)``, issue 12's backfill) uses the same sweep
for an account that is not deleted: a repo applied from its CAR at rev R leaves the
account's rows with a rev below R exactly where the CAR no longer has the record, and the
sweep removes those (queued with rev R - 1).  The account stays visible meanwhile, and it
is not "active again": the writer's purge at once skips it (``reconciles``).  An account
queued both ways keeps the larger rev and is a deletion (which removes at least as much).
"""

from __future__ import annotations

import sqlite3
from typing import Callable

# The cursor starts below every sort key (aliases of non-TID rkeys are negative).
START = -(1 << 63)

# Called for every row removed: (sort key, actor ID, collection ID, links; None: a tombstone).
DropRow = Callable[[int, int, int, bytes | None], None]

_ROWS = "SELECT sk, aid, coll, rev, links FROM fwd"


class PurgeSweep:
    """The purge queue of one store and its sweep position (on the writer's connection)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lap = int(self._meta("purge_lap", 0))
        self.at = int(self._meta("purge_at", START))
        # aid -> (deletion rev, lap and cursor when it joined)
        self.queue: dict[int, tuple[int, int, int]] = {}
        # the queued accounts that are reconciles (a backfill's stale rows), not deletions
        self.reconciles: set[int] = set()
        for aid, rev, lap, start, reconcile in conn.execute(
                "SELECT aid, rev, lap, start, reconcile FROM purge"):
            if lap is None:  # queued by a smalldp before the sweep (schema 4): join now
                lap, start = self.lap, self.at
            self.queue[aid] = (rev, lap, start)
            if reconcile:
                self.reconciles.add(aid)

    def _meta(self, key: str, default: int) -> int:
        row = self.conn.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def __len__(self) -> int:
        return len(self.queue)

    def __contains__(self, aid: int) -> bool:
        return aid in self.queue

    def add(self, aid: int, rev: int, reconcile: bool = False) -> None:
        """Queue the rows of ``aid`` with a rev up to ``rev`` (in the caller's transaction):
        a deleted account's, or with ``reconcile`` the stale rows a backfill leaves."""
        queued = self.queue.get(aid)
        if queued is not None:
            rev = max(rev, queued[0])
            # a deletion stays one; a reconcile queued again stays one only if still only that
            reconcile = reconcile and aid in self.reconciles
        if reconcile:
            self.reconciles.add(aid)
        else:
            self.reconciles.discard(aid)
        self.queue[aid] = (rev, self.lap, self.at)
        self.conn.execute("INSERT OR REPLACE INTO purge VALUES(?, ?, ?, ?, ?)",
                          (aid, rev, self.lap, self.at, int(reconcile)))

    def step(self, rows: int, drop: DropRow) -> list[int]:
        """Sweep the next ``rows`` forward rows (at least one sort key's worth), removing
        those of queued accounts; returns the deleted accounts whose sweep is now complete
        (reconciles that complete are not among them: nothing was purged)."""
        if not self.queue:
            return []
        conn = self.conn
        row = conn.execute("SELECT sk FROM fwd WHERE sk >= ? ORDER BY sk LIMIT 1 OFFSET ?",
                           (self.at, rows)).fetchone()
        if row is None:  # the rest of the index: then round again from the start
            self._remove(f"{_ROWS} WHERE sk >= ? AND aid IN (SELECT aid FROM purge)", (self.at,), drop)
            self.lap, self.at = self.lap + 1, START
        else:
            end = max(int(row[0]), self.at + 1)  # more than `rows` rows with one sort key: all of them
            self._remove(f"{_ROWS} WHERE sk >= ? AND sk < ? AND aid IN (SELECT aid FROM purge)",
                         (self.at, end), drop)
            self.at = end
        done = [aid for aid, (_, lap, start) in self.queue.items()
                if self.lap > lap + 1 or (self.lap == lap + 1 and self.at >= start)]
        deleted = [aid for aid in done if aid not in self.reconciles]
        self._forget(done)
        conn.executemany("INSERT OR REPLACE INTO meta VALUES(?, ?)",
                         [("purge_lap", self.lap), ("purge_at", self.at)])
        return deleted

    def purge_now(self, aids: list[int], drop: DropRow) -> None:
        """Remove every queued row of ``aids`` at once (one scan of the whole index)."""
        aids = [aid for aid in aids if aid in self.queue]
        if not aids:
            return
        marks = ",".join(str(aid) for aid in aids)
        self._remove(f"{_ROWS} WHERE aid IN ({marks})", (), drop)
        self._forget(aids)

    def _remove(self, sql: str, params: tuple[int, ...], drop: DropRow) -> None:
        queue = self.queue
        doomed = []
        for sk, aid, coll, rev, links in self.conn.execute(sql, params).fetchall():
            purge = queue.get(aid)
            if purge is None or rev + sk > purge[0]:
                continue  # written after the deletion (rev is stored relative to sk)
            drop(sk, aid, coll, links)
            doomed.append((sk, aid, coll))
        self.conn.executemany("DELETE FROM fwd WHERE sk=? AND aid=? AND coll=?", doomed)
        self.conn.executemany("DELETE FROM body WHERE sk=? AND aid=? AND coll=?", doomed)

    def _forget(self, aids: list[int]) -> None:
        for aid in aids:
            del self.queue[aid]
            self.reconciles.discard(aid)
        self.conn.executemany("DELETE FROM purge WHERE aid=?", [(aid,) for aid in aids])
