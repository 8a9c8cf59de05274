"""The backlink index: an LSM of sorted runs kept in SQLite tables.

``BacklinkIndex`` is the narrow interface the writer uses: write a batch's new entries
as one run, remove entries, read a key's entries, and merge runs a bounded slice at a
time.  ``SqliteBacklinks`` is the store's implementation; tests/model.py has a plain
in-memory one, and tests/test_storage.py runs one suite against both.  It is also the
seam where another backend could be put.

Layout (store/schema.py): ``run(run, level, blocks, gen)`` lists the runs; ``bl(run,
tkey, sid, lo, data)`` holds, per run and key (source id, target key), the key's
entries (sort key, actor id) newest first, in chunks of about ``chunk_entries``
(store/encoding.py's block format) keyed by their lowest sort key, 0 for the oldest.
``merge(output, level, inputs, next)`` records merges under way: keys whose target
key sorts below ``next`` have moved from the inputs to the output run. ``runkeys(run,
data)`` holds each run's key filter (store/runfilter.py), so readers seek only the runs
that may hold a key.
"""

from __future__ import annotations

import heapq
import itertools
import sqlite3
import time
from typing import Callable, Collection, Iterator, Mapping, Protocol, Sequence

from smalldp.store.compaction import CompactionConfig, MergeInProgress, choose
from smalldp.store.encoding import Entry, chunk_floor, decode_block, encode_block
from smalldp.store.progress import Progress, Throttle
from smalldp.store.runfilter import encode_keys, union

Key = tuple[int, bytes]  # (source id, target key)


class BacklinkIndex(Protocol):
    """The backlink index's operations.

    Entries are unique over the whole index: the writer adds an entry only when it is
    not there (a record's new link) and removes only entries that are.
    """

    def write_run(self, adds: Mapping[Key, Collection[Entry]]) -> int | None:
        """Store new entries as one new run at level 0; returns the run (None when
        ``adds`` holds no entry)."""
        ...

    def remove(self, removes: Mapping[Key, Collection[Entry]]) -> None:
        """Remove entries from whichever runs hold them; RuntimeError names any that
        is not in the index."""
        ...

    def entries(self, key: Key) -> list[Entry]:
        """All entries of ``key`` over all runs, newest first (sort key, then actor,
        descending)."""
        ...

    def keys(self) -> list[Key]:
        """Every key holding entries, ordered by (target key, source id)."""
        ...

    def runs(self) -> dict[int, int]:
        """Run -> level, including the output runs of merges under way."""
        ...

    def merge_step(self) -> bool:
        """Do one bounded slice of the merge ``compaction.choose`` picks; False when
        no merge is due.  Runs its own transaction (never call it inside one)."""
        ...

    def compact_all(self) -> int:
        """Finish merges under way, then merge every run into one; returns the slices run."""
        ...


# Chunk rows a merge slice moves at most (about 2-4 MB of chunks): a slice is one short
# transaction between batches, whatever the size of the merge it belongs to.
SLICE_ROWS = 20_000
PAUSE_EVERY = 255  # items between pause points (a mask: every 256th)
MERGE_BUFFER = 2000  # merged chunks written to the temp table at a time


ZERO_LO = -1


def chunk_lo(lowest: int) -> int:
    """The key of a chunk (other than a run's oldest, keyed 0) whose lowest sort key is
    ``lowest``.  A TID of value 0 (rkey 2222222222222) would take the oldest chunk's key
    when aliases sort below it: that chunk is keyed -1, which no sort key takes (aliases
    count up from -(1 << 62)), so every entry still sits at or above its chunk's key."""
    return lowest if lowest != 0 else ZERO_LO


def _no_pause() -> None:
    pass


class SqliteBacklinks:
    """The backlink index in the store's SQLite file, used by the writer on its connection.

    ``write_run`` and ``remove`` run inside the caller's transaction; ``merge_step``
    runs its own.  ``pause`` is called every few hundred items of work (live ingest
    steps aside there while queries are answered: smalldp.priority).
    """

    def __init__(self, conn: sqlite3.Connection, *, fanout: int = 8, chunk_entries: int = 512,
                 slice_rows: int = SLICE_ROWS) -> None:
        self.conn = conn
        self.config = CompactionConfig(fanout=fanout)
        self.chunk_entries = chunk_entries
        self.slice_rows = slice_rows
        self.pause: Callable[[], None] = _no_pause
        self.merging_since: float | None = None  # time.monotonic() when the running slice began
        self._stopped = False
        self._in_merge = False
        self.slices_done = 0  # merge slices committed by this process, and their time
        self.slice_seconds = 0.0
        self.slice_seconds_max = 0.0
        self.last_slice_rows = 0  # chunk rows the last slice took from its input runs
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS mdup(tkey BLOB, sid INTEGER, PRIMARY KEY(tkey, sid)) "
                     "WITHOUT ROWID")
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS mrow(tkey BLOB, sid INTEGER, lo INTEGER, data BLOB)")
        self.load()

    def load(self) -> None:
        """(Re)read the runs and merges under way from the file (after a rollback, too)."""
        conn = self.conn
        self._levels: dict[int, int] = dict(conn.execute("SELECT run, level FROM run"))
        self.next_run = max(self._levels, default=0) + 1
        self._merging: dict[int, MergeInProgress] = {}
        self._next: dict[int, bytes] = {}
        for output, level, inputs, start in conn.execute("SELECT output, level, inputs, next FROM merge"):
            self._merging[output] = MergeInProgress(output, level, tuple(int(r) for r in inputs.split(",")))
            self._next[output] = start

    # ------------------------------------------------------------ the Protocol

    def write_run(self, adds: Mapping[Key, Collection[Entry]]) -> int | None:
        """Store new entries as one new run at level 0, written in key order (appends)."""
        keys = [key for key, entries in adds.items() if entries]
        if not keys:
            return None
        run = self.next_run
        self.next_run += 1
        rows = []
        pause = self.pause
        size = self.chunk_entries
        for i, (sid, tkey) in enumerate(sorted(keys, key=lambda k: (k[1], k[0]))):
            if not i & PAUSE_EVERY:
                pause()
            found = adds[(sid, tkey)]
            if len(found) == 1:  # most keys of a batch: one chunk, the oldest, keyed 0
                rows.append((run, tkey, sid, 0, encode_block(list(found))))
                continue
            for lo, chunk in _chunks(sorted(found, reverse=True), size):
                rows.append((run, tkey, sid, lo, encode_block(chunk)))
        self.conn.executemany("INSERT INTO bl VALUES(?, ?, ?, ?, ?)", rows)
        self.conn.execute("INSERT INTO run(run, level, blocks) VALUES(?, 0, ?)", (run, len(rows)))
        self.conn.execute("INSERT INTO runkeys VALUES(?, ?)", (run, encode_keys(keys)))
        self._levels[run] = 0
        return run

    def remove(self, removes: Mapping[Key, Collection[Entry]]) -> None:
        """Remove entries; each is in the chunk of its run with the largest lo <= its sort key."""
        conn = self.conn
        run_list = ",".join(str(r) for r in self._levels) or "NULL"
        pause = self.pause
        rewritten: dict[int, int] = {}  # run -> chunks it lost (emptied by the removals)
        for i, ((sid, tkey), removed) in enumerate(removes.items()):
            if not i & 63:
                pause()
            if not removed:
                continue
            gone = set(removed)
            by_run: dict[int, list[int]] = {}
            for run, lo in conn.execute(
                    f"SELECT run, lo FROM bl WHERE run IN ({run_list}) AND tkey=? AND sid=?", (tkey, sid)):
                by_run.setdefault(run, []).append(lo)
            wanted: set[tuple[int, int]] = set()
            for sk, _ in gone:
                for run, los in by_run.items():
                    candidates = [lo for lo in los if chunk_floor(lo) <= sk]
                    if candidates:
                        wanted.add((run, max(candidates, key=chunk_floor)))
            for run, lo in sorted(wanted):
                if not gone:
                    break
                data = conn.execute("SELECT data FROM bl WHERE run=? AND tkey=? AND sid=? AND lo=?",
                                    (run, tkey, sid, lo)).fetchone()[0]
                entries = decode_block(data)
                kept = [e for e in entries if e not in gone]
                if len(kept) == len(entries):
                    continue
                gone.difference_update(entries)
                conn.execute("DELETE FROM bl WHERE run=? AND tkey=? AND sid=? AND lo=?", (run, tkey, sid, lo))
                rewritten[run] = rewritten.get(run, 0) + (0 if kept else 1)
                if kept:
                    # Entries only leave, so the chunk's lo can only rise: still unique in its run.
                    new_lo = 0 if lo == 0 else chunk_lo(kept[-1][0])
                    conn.execute("INSERT INTO bl VALUES(?, ?, ?, ?, ?)",
                                 (run, tkey, sid, new_lo, encode_block(kept)))
            if gone:
                raise RuntimeError(f"backlink entries missing from the index: {sorted(gone)[:5]}")
        # A new generation tells readers that cached summaries of this run are stale.
        conn.executemany("UPDATE run SET gen = gen + 1, blocks = blocks - ? WHERE run = ?",
                         [(lost, run) for run, lost in rewritten.items()])

    def entries(self, key: Key) -> list[Entry]:
        """All entries of a key, newest first (for tests and tools; readers read chunks)."""
        sid, tkey = key
        found: list[Entry] = []
        runs = ",".join(str(r) for r in self._levels) or "NULL"
        for (data,) in self.conn.execute(f"SELECT data FROM bl WHERE run IN ({runs}) AND tkey=? AND sid=?",
                                         (tkey, sid)):
            found.extend(decode_block(data))
        found.sort(reverse=True)
        return found

    def keys(self) -> list[Key]:
        """Every key holding entries, by (target key, source id)."""
        return [(sid, tkey) for tkey, sid in self.conn.execute(
            "SELECT DISTINCT tkey, sid FROM bl ORDER BY tkey, sid")]

    def runs(self) -> dict[int, int]:
        """Run -> level, including the output runs of merges under way."""
        return dict(self._levels)

    def merge_step(self) -> bool:
        """One bounded slice of the next merge (see compaction.choose)."""
        return self._step(full=False)

    def compact_all(self, progress: Progress | None = None) -> int:
        """Finish merges under way, then merge every run into one, slice by slice;
        ``progress`` hears (phase, chunks moved, chunks in the index)."""
        tick = Throttle(progress)
        total = self.conn.execute("SELECT coalesce(sum(blocks), 0) FROM run").fetchone()[0]
        slices = moved = 0
        while self._step(full=True):
            slices += 1
            moved += self.last_slice_rows
            tick("merging", min(moved, total), total)
        tick("merging", total, total, final=True)
        return slices

    # ------------------------------------------------------------ merging

    @property
    def merges_under_way(self) -> list[MergeInProgress]:
        """Merges begun and not finished (they continue after a restart)."""
        return list(self._merging.values())

    def stop(self) -> None:
        """From any thread: begin no slice, and abort a running one (it rolls back)."""
        self._stopped = True
        if self._in_merge:
            self.conn.interrupt()

    def _free_levels(self) -> dict[int, list[int]]:
        busy = {run for m in self._merging.values() for run in (m.output, *m.inputs)}
        levels: dict[int, list[int]] = {}
        for run, level in sorted(self._levels.items()):
            if run not in busy:
                levels.setdefault(level, []).append(run)
        return levels

    def _step(self, full: bool) -> bool:
        if self._stopped:
            return False
        plan = choose(self._free_levels(), list(self._merging.values()), self.config, full=full)
        if plan is None:
            return False
        conn = self.conn
        began = self.merging_since = time.monotonic()
        # A new merge's output filter, made before the write lock is taken (a union of big
        # filters takes a while: 0.1 s for the 10M store's biggest runs)
        output_filter = self._output_filter(plan.inputs) if plan.output is None else None
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._in_merge = True
            if plan.output is None:
                output = self.next_run
                start = b""
                conn.execute("INSERT INTO run(run, level, blocks) VALUES(?, ?, 0)", (output, plan.level))
                conn.execute("INSERT INTO merge VALUES(?, ?, ?, ?)",
                             (output, plan.level, ",".join(map(str, plan.inputs)), start))
                if output_filter is not None:
                    conn.execute("INSERT INTO runkeys VALUES(?, ?)", (output, output_filter))
            else:
                output, start = plan.output, self._next[plan.output]
            end = self._slice_end(plan.inputs, start)
            self._move(plan.inputs, output, start, end)
            if end is None:  # the inputs are empty now: the output is an ordinary run
                conn.execute(f"DELETE FROM run WHERE run IN ({','.join(map(str, plan.inputs))})")
                conn.execute(f"DELETE FROM runkeys WHERE run IN ({','.join(map(str, plan.inputs))})")
                conn.execute("DELETE FROM merge WHERE output=?", (output,))
            else:
                conn.execute("UPDATE merge SET next=? WHERE output=?", (end, output))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:  # an interrupt may have rolled it back already
                conn.execute("ROLLBACK")
            self.load()
            if self._stopped and isinstance(exc, sqlite3.OperationalError):
                return False  # interrupted by stop(): nothing committed is lost, it goes on next time
            raise
        finally:
            self._in_merge = False
            self.merging_since = None
        if plan.output is None:
            self.next_run += 1
            self._levels[output] = plan.level
            self._merging[output] = MergeInProgress(output, plan.level, plan.inputs)
        if end is None:
            for run in plan.inputs:
                del self._levels[run]
            del self._merging[output]
            self._next.pop(output, None)
        else:
            self._next[output] = end
        took = time.monotonic() - began
        self.slices_done += 1
        self.slice_seconds += took
        self.slice_seconds_max = max(self.slice_seconds_max, took)
        return True

    def _output_filter(self, inputs: Sequence[int]) -> bytes | None:
        """The filter of a merge's output: the union of its inputs' filters (it only ever
        receives their keys), or None when an input has none (it may hold any key).
        Pauses between inputs, so queries are not held up for the whole union."""
        blobs: list[bytes] = []
        for run in inputs:
            row = self.conn.execute("SELECT data FROM runkeys WHERE run=?", (run,)).fetchone()
            if row is None:
                return None
            blobs.append(row[0])
        return union(blobs, self.pause)

    def _slice_end(self, inputs: Sequence[int], start: bytes) -> bytes | None:
        """The target key the slice beginning at ``start`` stops before (None: through the
        last): no input contributes more than its share of ``slice_rows`` rows, except
        that one target's rows always move together."""
        conn = self.conn
        share = max(1, self.slice_rows // len(inputs))
        bounds = []
        for run in inputs:
            row = conn.execute("SELECT tkey FROM bl WHERE run=? AND tkey>=? ORDER BY tkey LIMIT 1 OFFSET ?",
                               (run, start, share)).fetchone()
            if row is not None:
                bounds.append(row[0])
        if not bounds:
            return None
        end: bytes = min(bounds)
        if end != start:
            return end
        after = []  # a target holding more than a share: the slice is that target alone
        for run in inputs:
            row = conn.execute("SELECT tkey FROM bl WHERE run=? AND tkey>? ORDER BY tkey LIMIT 1",
                               (run, start)).fetchone()
            if row is not None:
                after.append(row[0])
        return min(after) if after else None

    def _move(self, inputs: Sequence[int], output: int, start: bytes, end: bytes | None) -> None:
        """Move the keys with target keys in [start, end) from the inputs to ``output``.
        Keys found in one input only (most of them) are copied by SQLite itself; Python
        merges the chunks of keys found in several."""
        conn = self.conn
        marks = ",".join(str(r) for r in inputs)
        where = "tkey >= :start" + ("" if end is None else " AND tkey < :end")
        bounds = {"start": start, "end": end}
        conn.execute("DELETE FROM mdup")
        conn.execute("DELETE FROM mrow")
        conn.execute(f"INSERT INTO mdup SELECT tkey, sid FROM bl WHERE run IN ({marks}) AND {where} "
                     "GROUP BY tkey, sid HAVING count(DISTINCT run) > 1", bounds)
        # Chunks newest first: lo 0 marks a run's oldest chunk, below negative (alias) keys too.
        # A lazy k-way merge per key: memory stays bounded by a few chunks per run.
        # The range keeps SQLite to the slice's rows (joined from mdup, it scanned whole runs).
        rows = conn.execute(
            f"SELECT tkey, sid, run, data FROM bl WHERE run IN ({marks}) AND {where} AND EXISTS "
            "(SELECT 1 FROM mdup WHERE mdup.tkey = bl.tkey AND mdup.sid = bl.sid) "
            "ORDER BY tkey, sid, run, lo = 0, lo DESC", bounds)
        merged: list[tuple[bytes, int, int, bytes]] = []
        pause = self.pause
        for i, ((tkey, sid), group) in enumerate(itertools.groupby(rows, key=lambda row: (row[0], row[1]))):
            if not i & PAUSE_EVERY:
                pause()
            by_run = [[row[3] for row in chunks] for _, chunks in itertools.groupby(group, key=lambda row: row[2])]
            entries = heapq.merge(*(_entries_of(blocks) for blocks in by_run), reverse=True)
            for lo, chunk in _stream_chunks(entries, self.chunk_entries):
                merged.append((tkey, sid, lo, encode_block(chunk)))
                if len(merged) >= MERGE_BUFFER:
                    conn.executemany("INSERT INTO mrow VALUES(?, ?, ?, ?)", merged)
                    merged.clear()
        conn.executemany("INSERT INTO mrow VALUES(?, ?, ?, ?)", merged)
        # One insert in key order, so the output run is appended to, not scattered.
        added = conn.execute(
            f"INSERT INTO bl SELECT {output}, tkey, sid, lo, data FROM ("
            f"SELECT tkey, sid, lo, data FROM bl WHERE run IN ({marks}) AND {where} AND NOT EXISTS "
            "(SELECT 1 FROM mdup WHERE mdup.tkey = bl.tkey AND mdup.sid = bl.sid) "
            "UNION ALL SELECT tkey, sid, lo, data FROM mrow) ORDER BY tkey, sid, lo", bounds).rowcount
        changes = [(added, output)]
        self.last_slice_rows = 0
        for run in inputs:
            removed = conn.execute(f"DELETE FROM bl WHERE run={run} AND {where}", bounds).rowcount
            changes.append((-removed, run))
            self.last_slice_rows += removed
        conn.execute("DELETE FROM mrow")
        # Readers cache summaries per run generation: every run touched gets a new one.
        conn.executemany("UPDATE run SET gen = gen + 1, blocks = blocks + ? WHERE run = ?", changes)


def _entries_of(blocks: list[bytes]) -> Iterator[Entry]:
    """The entries of one run's chunks of a key, newest first, decoded one chunk at a time."""
    for block in blocks:
        yield from decode_block(block)


def _stream_chunks(entries: Iterator[Entry], size: int) -> Iterator[tuple[int, list[Entry]]]:
    """`_chunks` over an iterator: the same chunks, without holding all entries."""
    chunk: list[Entry] = []
    for entry in entries:
        # Close a full chunk, but never between equal sort keys (keys stay unique in a run).
        if len(chunk) >= size and entry[0] != chunk[-1][0]:
            yield chunk_lo(chunk[-1][0]), chunk
            chunk = []
        chunk.append(entry)
    if chunk:
        yield 0, chunk  # the oldest chunk is keyed 0


def _chunks(entries: list[Entry], size: int) -> Iterator[tuple[int, list[Entry]]]:
    """Split entries sorted newest first into (lo, chunk) of about ``size`` each.

    A chunk is keyed by its lowest sort key, except the oldest, keyed 0: most keys have
    one chunk, and SQLite stores the integer 0 in no bytes.  Chunks never split equal
    sort keys, so keys stay unique within a run.
    """
    start = 0
    n = len(entries)
    while start < n:
        end = min(start + size, n)
        while end < n and entries[end][0] == entries[end - 1][0]:
            end += 1
        yield (0 if end == n else chunk_lo(entries[end - 1][0])), entries[start:end]
        start = end
