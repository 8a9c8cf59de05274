"""Key filters of the backlink index's runs: which keys a run may hold.

A read of one key used to seek every run of the index (17 at 10M events), although a
key sits in one or two of them. Each run now has a filter in ``runkeys(run, data)``:
the set of 32-bit hashes (CRC-32) of its keys, a serialized roaring bitmap (about 3
bytes a hash). A reader asks only the runs whose filter holds a key's hash; a collision
(about hashes / 2**32, under 1% at 30M) costs a seek for nothing, never a wrong answer.

What is hashed: a record's target key alone (one hash serves every source a query asks
about it: a post's likes, reposts, replies and quotes, which sit side by side in a run),
but an account's (DID) target key with its source: every run holds some source of a busy
account (its followers' follows, its posts' author links), so the target alone would
rule out no run, while its follows, blocks or list items are in only a few.

Filters are written once and never changed: a run written by the writer gets the hashes
of its keys; a merge's output gets the union of its inputs' filters when the merge begins
(the output only ever receives keys of its inputs); removals leave filters as they are (a
filter may hold keys a run no longer has, never lack one it has). A run without a filter
(written before schema 8) may hold any key: readers ask it for every key, and a merge
with such an input gives its output none (``smalldp migrate`` builds the missing ones).
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Callable, Collection, Iterable, Mapping
from zlib import crc32

from pyroaring import BitMap, FrozenBitMap

from smalldp.store.progress import Progress, Throttle

Filter = FrozenBitMap


DID_KEY = b"\x03"  # the first byte of an account's target key (store/encoding.py did_key)


def key_hash(tkey: bytes, sid: int) -> int:
    """The 32-bit hash of a key (stable across processes and versions: it is stored):
    an account's target key with its source, any other target key alone."""
    return crc32(tkey, sid) if tkey[:1] == DID_KEY else crc32(tkey)


def encode_keys(keys: Iterable[tuple[int, bytes]]) -> bytes:
    """The stored filter of the keys (source id, target key)."""
    # sorted: pyroaring builds a bitmap from sorted values 2.5x faster
    return BitMap(sorted([key_hash(tkey, sid) for sid, tkey in keys])).serialize()


def union(blobs: Iterable[bytes], pause: Callable[[], None] | None = None) -> bytes:
    """The stored filter holding every key of the stored filters ``blobs`` (``pause``
    called between them). One at a time with |=: BitMap.union(*all) is 7x slower here."""
    out = BitMap()
    for blob in blobs:
        if pause is not None:
            pause()
        out |= FrozenBitMap.deserialize(blob)
    return out.serialize()


def missing_filters(conn: sqlite3.Connection) -> list[int]:
    """Runs of the index without a filter (written before filters existed)."""
    return [run for (run,) in conn.execute(
        "SELECT run FROM run WHERE run NOT IN (SELECT run FROM runkeys) ORDER BY run")]


def build_missing(conn: sqlite3.Connection, progress: Progress | None = None) -> tuple[int, int]:
    """Write the filter of every run that has none, from its keys: a scan of its chunks,
    one transaction per run (the writer's connection, no other transaction open). The
    output of a merge under way also gets its inputs' keys, which it has yet to receive,
    so it comes after them. Returns (runs, keys) done; ``progress`` hears chunks scanned."""
    missing = missing_filters(conn)
    outputs: dict[int, list[int]] = {
        output: [int(run) for run in inputs.split(",")]
        for output, inputs in conn.execute("SELECT output, inputs FROM merge")}
    missing.sort(key=lambda run: run in outputs)
    blocks = dict(conn.execute("SELECT run, blocks FROM run"))
    total = sum(blocks[run] for run in missing)
    tick = Throttle(progress)
    done = keys = 0
    for run in missing:
        conn.execute("BEGIN IMMEDIATE")
        try:
            hashes = BitMap()
            for i, (tkey, sid) in enumerate(conn.execute("SELECT tkey, sid FROM bl WHERE run=?", (run,))):
                hashes.add(key_hash(tkey, sid))
                if not i & 0xFFFF:
                    tick("run filters", done + i, total)
            keys += len(hashes)
            inputs = ",".join(map(str, outputs.get(run, ()))) or "NULL"  # integers only
            for (data,) in conn.execute(f"SELECT data FROM runkeys WHERE run IN ({inputs})"):
                hashes |= BitMap.deserialize(data)
            conn.execute("INSERT INTO runkeys VALUES(?, ?)", (run, hashes.serialize()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        done += blocks[run]
    tick("run filters", done, total, final=True)
    return len(missing), keys


class RunFilters:
    """The filters of the runs readers see, loaded once per run and shared by every
    reader thread of one store (a filter never changes while its run exists, and run
    numbers are never reused: a merge's output is numbered above every run before it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_run: dict[int, Filter | None] = {}

    def of_runs(self, conn: sqlite3.Connection, runs: Iterable[int]) -> dict[int, Filter | None]:
        """Run -> its filter (None: it has none, so it may hold any key), for ``runs`` as
        ``conn``'s snapshot sees them; forgets runs not among them."""
        wanted = list(runs)
        with self._lock:
            missing = [run for run in wanted if run not in self._by_run]
        loaded: dict[int, Filter | None] = {run: None for run in missing}
        for start in range(0, len(missing), 500):
            part = ",".join(str(run) for run in missing[start:start + 500])  # integers only
            for run, data in conn.execute(f"SELECT run, data FROM runkeys WHERE run IN ({part})"):
                loaded[run] = FrozenBitMap.deserialize(data)
        with self._lock:
            self._by_run.update(loaded)
            current = {run: self._by_run[run] for run in wanted}
            # Readers on an older snapshot reload what they still need (rows outlive
            # nothing they can see); runs merged away are dropped here.
            self._by_run = dict(current)
        return current


def plan_reads(filters: Mapping[int, Filter | None],
               wanted: Mapping[bytes, Collection[int]]) -> list[tuple[str, list[bytes]]]:
    """The (run list, target keys) queries that fetch every chunk of the wanted keys
    (target key -> source ids). A run is asked only for the targets its filter may hold,
    in a query of its own; runs that may hold half the targets or more, and runs without
    a filter, are asked for all of them in one query (a query per run would cost more
    in statements than the seeks it saves)."""
    by_hash: dict[int, list[bytes]] = {}
    for tkey, sids in wanted.items():
        if tkey[:1] == DID_KEY:
            for sid in sids:
                by_hash.setdefault(crc32(tkey, sid), []).append(tkey)
        else:
            by_hash.setdefault(crc32(tkey), []).append(tkey)
    if not by_hash:
        return []
    asked = BitMap(by_hash)
    dense = len(asked) // 2
    every: list[str] = []
    plans: list[tuple[str, list[bytes]]] = []
    for run, f in filters.items():
        if f is None:
            every.append(str(run))
            continue
        hits = asked & f
        if len(hits) > dense:
            every.append(str(run))
        elif hits:
            plans.append((str(run), list(dict.fromkeys(tkey for h in hits for tkey in by_hash[h]))))
    if every:
        plans.append((",".join(every), list(wanted)))
    return plans


def runs_for(filters: Mapping[int, Filter | None], tkey: bytes, sids: Iterable[int]) -> str:
    """The runs (an SQL list, "NULL" for none) that may hold the target key under one
    of the sources."""
    if tkey[:1] == DID_KEY:
        hashes = [crc32(tkey, sid) for sid in sids]
        return ",".join([str(run) for run, f in filters.items()
                         if f is None or any(h in f for h in hashes)]) or "NULL"
    h = crc32(tkey)
    return ",".join([str(run) for run, f in filters.items() if f is None or h in f]) or "NULL"
