"""One storage suite for the backlink index, run on tests/model.py's ModelBacklinks and on
store/backlinks.py's SqliteBacklinks (as Constellation's `test_each_storage!` runs one
suite on its memory and RocksDB stores).

The scenario tests' expected values are written out by hand.  The SQLite store is built
with tiny chunks (``chunk_entries``) and tiny merge slices (``slice_rows``) so that keys
span several chunks and a merge takes many slices, with writes and removals in between.
The differential test at the end runs seeded random sequences on both and compares them
after every step; the last tests are SQLite-only (reopening mid-merge, a slice that fails).
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from pyroaring import BitMap

from model import ModelBacklinks
from smalldp.store.schema import open_writer

ALIAS = -(1 << 62)  # where the aliases (sort keys) of non-TID rkeys begin

K1 = (1, b"\x03\x05")
K2 = (2, b"\x03\x05")
K3 = (1, b"\x03\x05\x00")
K4 = (1, b"\x01\x07\x09")


class Store:
    """An index under test, and for SQLite its connection (transactions, reopening)."""

    def __init__(self, index: Any, conn: sqlite3.Connection | None = None,
                 path: Path | None = None) -> None:
        self.index = index
        self.conn = conn
        self.path = path

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT for SQLite (ROLLBACK on an exception, then reload the
        index's state as the writer does); nothing for the model, whose remove is all or nothing."""
        if self.conn is None:
            yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            self.index.load()
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def merges_under_way(self) -> int:
        if self.conn is None:
            return 0
        return self.conn.execute("SELECT count(*) FROM merge").fetchone()[0]

    def drain(self) -> int:
        """merge_step until it says nothing is due; returns how many steps ran."""
        steps = 0
        while self.index.merge_step():
            steps += 1
            assert steps < 10_000, "merging never ends"
        return steps


def open_sqlite(path: Path, *, fanout: int = 3, chunk_entries: int = 4, slice_rows: int = 2) -> Store:
    from smalldp.store.backlinks import SqliteBacklinks

    conn = open_writer(path, cache_mb=8, mmap_mb=0)
    index = SqliteBacklinks(conn, fanout=fanout, chunk_entries=chunk_entries, slice_rows=slice_rows)
    return Store(index, conn, path)


Make = Callable[..., Store]


@pytest.fixture(params=["model", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    """make(fanout=3, chunk_entries=4, slice_rows=2) -> a new empty Store of this kind."""
    opened: list[sqlite3.Connection] = []

    def make(*, fanout: int = 3, chunk_entries: int = 4, slice_rows: int = 2) -> Store:
        if request.param == "model":
            return Store(ModelBacklinks(fanout=fanout))
        store = open_sqlite(tmp_path / f"s{len(opened)}.sqlite", fanout=fanout,
                            chunk_entries=chunk_entries, slice_rows=slice_rows)
        assert store.conn is not None
        opened.append(store.conn)
        return store

    yield make
    for conn in opened:
        conn.close()


def level_counts(store: Store) -> Counter[int]:
    return Counter(store.index.runs().values())


# ---------------------------------------------------------------- scenarios

def test_write_run_returns_new_runs_and_none_for_nothing(make: Make) -> None:
    store = make(fanout=8)
    index = store.index
    assert index.write_run({}) is None
    assert index.write_run({K1: [], K2: set()}) is None
    assert index.runs() == {}
    first = index.write_run({K1: {(10, 1)}})
    second = index.write_run({K2: [(11, 1)], K3: []})
    assert isinstance(first, int) and isinstance(second, int) and second > first
    assert index.runs() == {first: 0, second: 0}
    assert index.keys() == [K1, K2]


def test_entries_newest_first_across_runs(make: Make) -> None:
    store = make(fanout=8)  # no merge: three runs are read
    index = store.index
    index.write_run({K1: {(10, 1), (30, 2)}, K2: {(5, 1)}})
    index.write_run({K1: [(20, 3), (30, 1)]})
    index.write_run({K1: {(40, 1), (10, 2)}, K3: {(1, 1)}})
    assert len(index.runs()) == 3
    assert index.entries(K1) == [(40, 1), (30, 2), (30, 1), (20, 3), (10, 2), (10, 1)]
    assert index.entries(K2) == [(5, 1)]
    assert index.entries(K3) == [(1, 1)]
    assert index.entries((3, b"\x03\x05")) == []
    assert index.entries((1, b"\x03")) == []


def test_entries_unchanged_by_merges(make: Make) -> None:
    store = make(fanout=2, chunk_entries=2, slice_rows=1)
    index = store.index
    index.write_run({K1: {(10, 1), (30, 2)}, K2: {(5, 1)}, K4: {(3, 3)}})
    index.write_run({K1: [(20, 3), (30, 1)], K4: {(4, 3)}})
    index.write_run({K1: {(40, 1), (10, 2)}, K3: {(1, 1)}})
    assert store.drain() > 0
    assert index.entries(K1) == [(40, 1), (30, 2), (30, 1), (20, 3), (10, 2), (10, 1)]
    assert index.entries(K2) == [(5, 1)]
    assert index.entries(K3) == [(1, 1)]
    assert index.entries(K4) == [(4, 3), (3, 3)]
    assert sorted(index.runs().values()) == [0, 1]


def test_remove_from_an_old_run_after_merges(make: Make) -> None:
    store = make(fanout=2, chunk_entries=2, slice_rows=1)
    index = store.index
    index.write_run({K1: {(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)}})
    index.write_run({K1: {(6, 1)}, K2: {(7, 7)}})
    store.drain()
    assert sorted(index.runs().values()) == [1]
    index.write_run({K1: {(8, 1)}})
    index.remove({K1: {(2, 1), (5, 1)}, K2: {(7, 7)}})
    assert index.entries(K1) == [(8, 1), (6, 1), (4, 1), (3, 1), (1, 1)]
    assert index.entries(K2) == []
    assert index.keys() == [K1]
    # The oldest chunk of the merged run, and the new run's only entry.
    index.remove({K1: [(1, 1), (8, 1)]})
    assert index.entries(K1) == [(6, 1), (4, 1), (3, 1)]
    store.drain()
    index.compact_all()
    assert index.entries(K1) == [(6, 1), (4, 1), (3, 1)]
    index.remove({K1: [(6, 1), (4, 1), (3, 1)]})
    assert index.entries(K1) == []
    assert index.keys() == []


def test_remove_inside_a_transaction(make: Make) -> None:
    store = make(fanout=8)
    index = store.index
    index.write_run({K1: {(1, 1), (2, 2)}})
    with store.transaction():
        index.remove({K1: [(2, 2)]})
        index.write_run({K2: [(3, 3)]})
    assert index.entries(K1) == [(1, 1)]
    assert index.entries(K2) == [(3, 3)]


def test_removing_a_missing_entry_raises_and_a_rollback_keeps_everything(make: Make) -> None:
    store = make(fanout=8, chunk_entries=2)
    index = store.index
    index.write_run({K1: {(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)}})
    index.write_run({K2: {(3, 3)}})
    before = {K1: [(5, 5), (4, 4), (3, 3), (2, 2), (1, 1)], K2: [(3, 3)]}
    cases: list[dict[tuple[int, bytes], list[tuple[int, int]]]] = [
        {K1: [(4, 4), (2, 2)], K2: [(4, 4)]},  # present ones first, then a missing one
        {K1: [(1, 1), (3, 9)]},  # the sort key is there, with another actor
        {K1: [(5, 5)], K3: [(3, 3)]},  # a key that holds nothing
        {K2: [(3, 3)], K1: [(6, 6)]},  # newer than anything
        {K1: [(0, 1)]},
    ]
    for removes in cases:
        with pytest.raises(RuntimeError):
            with store.transaction():
                if store.conn is not None:  # rolled back with the rest (the model has no transactions)
                    index.write_run({K4: [(9, 9)]})
                index.remove(removes)
        assert {K1: index.entries(K1), K2: index.entries(K2)} == before, removes
        assert index.entries(K4) == []
        assert index.keys() == [K1, K2]
        assert len(index.runs()) == 2
    # An entry removed once is missing the second time.
    index.remove({K2: [(3, 3)]})
    with pytest.raises(RuntimeError):
        index.remove({K2: [(3, 3)]})
    assert index.keys() == [K1]


def test_keys_order_by_target_key_then_source(make: Make) -> None:
    store = make(fanout=2, slice_rows=1)
    index = store.index
    index.write_run({(2, b"\x01"): [(1, 1)], (1, b"\x02"): [(1, 1)]})
    index.write_run({(1, b"\x01"): [(2, 1)], (3, b"\x01\x00"): [(2, 1)]})
    index.write_run({(1, b"\x00\xff"): [(3, 1)], (10, b"\x01"): [(3, 1)], (1, b"\xff"): [(3, 1)]})
    expected = [(1, b"\x00\xff"), (1, b"\x01"), (2, b"\x01"), (10, b"\x01"), (3, b"\x01\x00"),
                (1, b"\x02"), (1, b"\xff")]
    assert index.keys() == expected
    assert index.merge_step()
    assert index.keys() == expected
    store.drain()
    assert index.keys() == expected
    index.compact_all()
    assert index.keys() == expected


def test_a_key_bigger_than_a_chunk_with_equal_sort_keys(make: Make) -> None:
    store = make(fanout=2, chunk_entries=4, slice_rows=1)
    index = store.index
    # Nine entries at sort key 100 (no chunk may split them), six at 50, others around.
    index.write_run({K1: [(100, a) for a in range(1, 10)] + [(7, 1), (6, 1), (5, 1)]})
    index.write_run({K1: [(50, a) for a in (2, 4, 6, 8, 10, 12)] + [(101, 1), (4, 1)]})
    expected = [(101, 1),
                (100, 9), (100, 8), (100, 7), (100, 6), (100, 5), (100, 4), (100, 3), (100, 2), (100, 1),
                (50, 12), (50, 10), (50, 8), (50, 6), (50, 4), (50, 2),
                (7, 1), (6, 1), (5, 1), (4, 1)]
    assert index.entries(K1) == expected
    store.drain()
    assert index.entries(K1) == expected
    index.write_run({K1: [(100, 10), (100, 11), (3, 1)]})
    index.remove({K1: [(100, 4), (50, 12), (4, 1), (101, 1)]})
    expected = [(100, 11), (100, 10),
                (100, 9), (100, 8), (100, 7), (100, 6), (100, 5), (100, 3), (100, 2), (100, 1),
                (50, 10), (50, 8), (50, 6), (50, 4), (50, 2),
                (7, 1), (6, 1), (5, 1), (3, 1)]
    assert index.entries(K1) == expected
    index.compact_all()
    assert index.entries(K1) == expected
    index.remove({K1: [(100, a) for a in range(1, 12) if a != 4]})
    assert index.entries(K1) == [(50, 10), (50, 8), (50, 6), (50, 4), (50, 2), (7, 1), (6, 1), (5, 1), (3, 1)]


def test_negative_sort_keys_order_below_positive_ones(make: Make) -> None:
    store = make(fanout=2, chunk_entries=2, slice_rows=1)
    index = store.index
    index.write_run({K1: [(ALIAS + 3, 1), (5, 1), (ALIAS, 2), (ALIAS + 1, 1), (1 << 60, 4)]})
    index.write_run({K1: [(ALIAS + 2, 7), (ALIAS, 1), (3, 3)]})
    expected = [(1 << 60, 4), (5, 1), (3, 3), (ALIAS + 3, 1), (ALIAS + 2, 7), (ALIAS + 1, 1),
                (ALIAS, 2), (ALIAS, 1)]
    assert index.entries(K1) == expected
    store.drain()
    assert index.entries(K1) == expected
    index.remove({K1: [(ALIAS + 2, 7), (ALIAS, 2), (5, 1)]})
    assert index.entries(K1) == [(1 << 60, 4), (3, 3), (ALIAS + 3, 1), (ALIAS + 1, 1), (ALIAS, 1)]
    index.write_run({K1: [(ALIAS + 4, 5)]})
    index.compact_all()
    assert index.entries(K1) == [(1 << 60, 4), (3, 3), (ALIAS + 4, 5), (ALIAS + 3, 1), (ALIAS + 1, 1),
                                 (ALIAS, 1)]


def test_sort_key_zero_with_aliases_below(make: Make) -> None:
    # rkey "2222222222222" is a valid TID whose value is 0; aliases are below it.  With a
    # chunk of two, the chunk ending at sort key 0 is not the key's oldest one.
    store = make(fanout=2, chunk_entries=2, slice_rows=1)
    index = store.index
    index.write_run({K1: [(5, 1), (0, 1), (ALIAS, 1)]})
    index.write_run({K1: [(0, 2), (ALIAS + 1, 2)]})
    expected = [(5, 1), (0, 2), (0, 1), (ALIAS + 1, 2), (ALIAS, 1)]
    assert index.entries(K1) == expected
    store.drain()
    assert index.entries(K1) == expected
    index.remove({K1: [(0, 2), (ALIAS, 1)]})
    assert index.entries(K1) == [(5, 1), (0, 1), (ALIAS + 1, 2)]


def test_sort_key_zero_meets_aliases_in_a_merge(make: Make) -> None:
    # Each run alone is one chunk; merged, the chunk ending at sort key 0 is not the oldest.
    store = make(fanout=2, chunk_entries=2, slice_rows=1)
    index = store.index
    index.write_run({K1: [(5, 1), (0, 1)]})
    index.write_run({K1: [(ALIAS, 1)]})
    store.drain()
    assert index.entries(K1) == [(5, 1), (0, 1), (ALIAS, 1)]
    assert sorted(index.runs().values()) == [1]


def test_writes_and_removals_while_a_merge_is_under_way(make: Make) -> None:
    store = make(fanout=2, chunk_entries=2, slice_rows=1)
    index = store.index
    keys = [(1, bytes([t])) for t in range(1, 7)]  # six targets: a merge of many slices
    index.write_run({k: [(10, 1), (20, 1), (30, 1)] for k in keys})
    index.write_run({k: [(15, 2), (25, 2)] for k in keys})
    assert index.merge_step()
    # Keys on both sides of where the merge has got to.
    index.remove({keys[0]: [(20, 1), (15, 2)], keys[5]: [(30, 1), (25, 2)]})
    index.write_run({keys[0]: [(40, 3)], keys[3]: [(5, 3)]})
    index.merge_step()  # the model has merged at once: False there
    index.remove({keys[3]: [(5, 3), (10, 1)]})
    store.drain()
    assert index.entries(keys[0]) == [(40, 3), (30, 1), (25, 2), (10, 1)]
    assert index.entries(keys[1]) == [(30, 1), (25, 2), (20, 1), (15, 2), (10, 1)]
    assert index.entries(keys[3]) == [(30, 1), (25, 2), (20, 1), (15, 2)]
    assert index.entries(keys[5]) == [(20, 1), (15, 2), (10, 1)]
    assert index.keys() == keys


def test_no_full_level_left_when_merge_step_says_done(make: Make) -> None:
    store = make(fanout=2, slice_rows=1)
    index = store.index
    for i in range(5):
        index.write_run({(1, bytes([i, j])): [(i, j)] for j in range(3)})
    store.drain()
    # 1+2 -> A and 3+4 -> B at level 1, A+B -> level 2; the fifth run stays at level 0.
    assert sorted(index.runs().values()) == [0, 2]
    assert not index.merge_step()
    assert store.merges_under_way() == 0

    store = make(fanout=3, slice_rows=2)
    index = store.index
    rng = random.Random(7)
    for i in range(40):
        index.write_run({(1, bytes([i % 5, i])): [(i, 1), (i + 1, 2)]})
        for _ in range(rng.randrange(3)):
            index.merge_step()
    store.drain()
    assert max(level_counts(store).values()) < 3
    assert store.merges_under_way() == 0
    assert len(index.keys()) == 40


def test_merge_step_on_an_empty_index(make: Make) -> None:
    store = make()
    assert store.index.merge_step() is False
    assert store.index.runs() == {}
    assert store.index.compact_all() == 0
    assert store.index.runs() == {}


def test_compact_all_leaves_one_run(make: Make) -> None:
    store = make(fanout=3, chunk_entries=2, slice_rows=1)
    index = store.index
    index.write_run({K1: [(1, 1)]})
    assert index.compact_all() == 0  # one run: nothing to do
    assert len(index.runs()) == 1
    index.write_run({K1: [(2, 1), (3, 1)], K2: [(1, 2)]})
    index.write_run({K1: [(4, 1)], K3: [(1, 3)]})
    index.write_run({K2: [(5, 2)], K4: [(7, 7)]})
    assert index.merge_step()  # a merge of the three level-0 runs begins
    index.write_run({K3: [(6, 3)]})
    index.write_run({K4: [(8, 7)]})
    assert index.compact_all() >= 1
    runs = index.runs()
    assert len(runs) == 1
    assert store.merges_under_way() == 0
    assert index.entries(K1) == [(4, 1), (3, 1), (2, 1), (1, 1)]
    assert index.entries(K2) == [(5, 2), (1, 2)]
    assert index.entries(K3) == [(6, 3), (1, 3)]
    assert index.entries(K4) == [(8, 7), (7, 7)]
    assert index.keys() == [K4, K1, K2, K3]
    assert index.compact_all() == 0
    assert index.runs() == runs


# ---------------------------------------------------------------- differential

KEY_POOL = [(sid, tkey) for tkey in (b"\x01", b"\x03\x05", b"\x03\x05\x00", b"\x03\x06", b"\xff\x00")
            for sid in (1, 2)] + [(7, b"\x02")]
SORT_KEYS = [0, 1, 2, 3, 10, 11, 50, 1 << 50, (1 << 50) + 1, ALIAS, ALIAS + 1, ALIAS + 2]  # 0: rkey 2222222222222


def _compare(model: ModelBacklinks, store: Store, where: str) -> None:
    assert store.index.keys() == model.keys(), where
    for key in KEY_POOL:
        assert store.index.entries(key) == model.entries(key), (where, key)
    _check_tables(store, where)


def _expected_hash(tkey: bytes, sid: int) -> int:
    return zlib.crc32(tkey, sid) if tkey[:1] == b"\x03" else zlib.crc32(tkey)


def _check_tables(store: Store, where: str) -> None:
    """What the SQLite tables must say besides the answers (store/check.py and remove rely on it)."""
    from smalldp.store.encoding import decode_block

    conn = store.conn
    assert conn is not None
    table = {run: (level, blocks) for run, level, blocks in conn.execute("SELECT run, level, blocks FROM run")}
    assert {run: level for run, (level, _) in table.items()} == store.index.runs(), where
    rows = dict(conn.execute("SELECT run, count(*) FROM bl GROUP BY run"))
    assert set(rows) <= set(table), where
    assert {run: rows.get(run, 0) for run in table} == {run: blocks for run, (_, blocks) in table.items()}, where
    # Per run and key: chunks newest first hold descending entries, each chunk's at or
    # above its lo (0: no floor) and below the next newer chunk's lowest entry.
    chunks: dict[tuple[int, bytes, int], list[tuple[int, list[tuple[int, int]]]]] = {}
    for run, tkey, sid, lo, data in conn.execute("SELECT run, tkey, sid, lo, data FROM bl"):
        chunks.setdefault((run, tkey, sid), []).append((lo, decode_block(data)))
    for (run, tkey, sid), found in chunks.items():
        found.sort(key=lambda c: (c[0] != 0, c[0]), reverse=True)
        flat = [e for _, entries in found for e in entries]
        assert flat == sorted(flat, reverse=True) and len(set(flat)) == len(flat), (where, run, tkey, sid)
        for i, (lo, entries) in enumerate(found):
            assert entries, (where, run, tkey, sid, lo)
            # keyed by the lowest sort key, except -1 for a lowest of 0 (0 keys the oldest chunk)
            assert lo == 0 or lo == (entries[-1][0] if entries[-1][0] != 0 else -1), (where, run, tkey, sid, lo)
            if i + 1 < len(found):
                assert found[i + 1][1][0][0] < entries[-1][0], (where, run, tkey, sid)  # no split sort key
    # Every run has a key filter (store/runfilter.py: CRC-32s of its target keys, of an
    # account's with the source) holding each key it has chunks of: a reader asks only
    # the runs whose filter holds a key, so a missing hash would lose entries.
    filters = {run: BitMap.deserialize(data) for run, data in conn.execute("SELECT run, data FROM runkeys")}
    assert set(filters) == set(table), where
    for run, tkey, sid in chunks:
        assert _expected_hash(tkey, sid) in filters[run], (where, run, tkey, sid)
    # A merge under way: its output holds the target keys below next, its inputs the rest.
    for output, level, inputs, nxt in conn.execute("SELECT output, level, inputs, next FROM merge"):
        assert table[output][0] == level, where
        marks = ",".join(str(int(r)) for r in inputs.split(","))
        assert conn.execute("SELECT count(*) FROM bl WHERE run=? AND tkey>=?", (output, nxt)).fetchone()[0] == 0
        assert conn.execute(f"SELECT count(*) FROM bl WHERE run IN ({marks}) AND tkey<?",
                            (nxt,)).fetchone()[0] == 0, where


@pytest.mark.parametrize("seed", range(8))
def test_random_sequences_agree(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    fanout = rng.choice((2, 3))
    store = open_sqlite(tmp_path / "d.sqlite", fanout=fanout, chunk_entries=rng.randint(2, 5),
                        slice_rows=rng.randint(1, 5))
    model = ModelBacklinks(fanout=fanout)
    present: set[tuple[tuple[int, bytes], tuple[int, int]]] = set()
    log: list[str] = []
    ever: set[int] = set()  # every run number the store has shown
    try:
        for step in range(300):
            roll = rng.random()
            if roll < 0.35:
                adds: dict[tuple[int, bytes], set[tuple[int, int]]] = {}
                for _ in range(rng.randint(0, 4)):
                    key = rng.choice(KEY_POOL)
                    for _ in range(rng.choice((1, 1, 2, 3, 8))):
                        entry = (rng.choice(SORT_KEYS), rng.randint(1, 6))
                        if (key, entry) not in present:
                            adds.setdefault(key, set()).add(entry)
                log.append(f"write_run({adds})")
                with store.transaction() if rng.random() < 0.5 else contextlib.nullcontext():
                    run = store.index.write_run(adds)
                assert (run is None) == (model.write_run(adds) is None)
                present |= {(key, e) for key, entries in adds.items() for e in entries}
            elif roll < 0.55 and present:
                gone = rng.sample(sorted(present), min(len(present), rng.randint(1, 6)))
                removes: dict[tuple[int, bytes], list[tuple[int, int]]] = {}
                for key, entry in gone:
                    removes.setdefault(key, []).append(entry)
                log.append(f"remove({removes})")
                with store.transaction() if rng.random() < 0.5 else contextlib.nullcontext():
                    store.index.remove(removes)
                model.remove(removes)
                present -= set(gone)
            elif roll < 0.6 and present:
                # A removal that fails part way, rolled back: nothing changes.
                key, entry = rng.choice(sorted(present))
                removes = {key: [entry], rng.choice(KEY_POOL): [(12345, 99)]}
                log.append(f"failing remove({removes})")
                with pytest.raises(RuntimeError):
                    with store.transaction():
                        store.index.remove(removes)
            elif roll < 0.98:
                log.append("merge_step()")
                store.index.merge_step()
                model.merge_step()
            else:
                log.append("compact_all()")
                store.index.compact_all()
                model.compact_all()
                assert len(store.index.runs()) == len(model.runs()) <= 1
            _compare(model, store, f"seed {seed} step {step}")
            # Readers cache a run's key filter by its number: a number is never reused,
            # each new run is numbered above every run before it.
            new = set(store.index.runs()) - ever
            assert not ever or not new or min(new) > max(ever), (seed, step, sorted(new), max(ever))
            ever |= new
        store.drain()
        _compare(model, store, f"seed {seed} after draining")
        assert max(level_counts(store).values(), default=0) < fanout
        store.index.compact_all()
        model.compact_all()
        _compare(model, store, f"seed {seed} after compact_all")
        assert len(store.index.runs()) == len(model.runs())
    except BaseException:
        print("\n".join(log[-30:]))
        raise
    finally:
        assert store.conn is not None
        store.close()


# ---------------------------------------------------------------- SQLite only

def _fill(store: Store, runs: int) -> dict[tuple[int, bytes], list[tuple[int, int]]]:
    """Runs over many targets, each key in several runs; returns what entries() should say."""
    expected: dict[tuple[int, bytes], set[tuple[int, int]]] = {}
    for r in range(runs):
        adds = {(1 + t % 2, bytes([t])): {(r * 10 + t + 1, 1), (r * 10 + t + 1, 2), (ALIAS + r, t)}
                for t in range(r % 3, 12)}
        store.index.write_run(adds)
        for key, entries in adds.items():
            expected.setdefault(key, set()).update(entries)
    return {key: sorted(entries, reverse=True) for key, entries in expected.items()}


def test_reopen_mid_merge(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    store = open_sqlite(path, fanout=2, chunk_entries=2, slice_rows=1)
    expected = _fill(store, 4)
    runs_before = len(store.index.runs())
    for _ in range(3):
        assert store.index.merge_step()
    assert store.merges_under_way() == 1
    assert len(store.index.runs()) == runs_before + 1  # the output and all its inputs are there
    store.close()

    store = open_sqlite(path, fanout=2, chunk_entries=2, slice_rows=1)
    assert store.merges_under_way() == 1
    assert {key: store.index.entries(key) for key in expected} == expected
    # Writes and removals go on beside the merge after the restart.
    store.index.write_run({(1, b"\x00"): [(7, 7)]})
    store.index.remove({(1, b"\x00"): [(ALIAS, 0)]})
    expected[(1, b"\x00")] = sorted([(7, 7)] + [e for e in expected[(1, b"\x00")] if e != (ALIAS, 0)],
                                    reverse=True)
    assert store.index.merge_step()
    store.close()

    store = open_sqlite(path, fanout=2, chunk_entries=2, slice_rows=1)
    assert store.drain() > 0
    assert store.merges_under_way() == 0
    assert {key: store.index.entries(key) for key in expected} == expected
    assert max(level_counts(store).values()) < 2
    _check_tables(store, "after reopening twice")
    store.close()


@pytest.mark.parametrize("after", [10, 50, 300, 700])  # a slice here: 800-1500 steps, its BEGIN 5
def test_a_merge_slice_that_fails_rolls_back(tmp_path: Path, after: int) -> None:
    """A slice aborted part way (SQLite's progress handler interrupts it after ``after``
    VM steps, as conn.interrupt() would) commits nothing; the merge goes on afterwards."""
    store = open_sqlite(tmp_path / "f.sqlite", fanout=2, chunk_entries=2, slice_rows=4)
    expected = _fill(store, 4)
    assert store.conn is not None
    conn = store.conn
    assert store.index.merge_step()
    failures = 0
    for _ in range(200):
        before = (store.index.runs(), conn.execute("SELECT * FROM merge").fetchall())
        # Once: the statements after the failure (ROLLBACK, reloading) must run.
        steps = iter(range(after, -1, -1))
        conn.set_progress_handler(lambda: next(steps, None) == 0, 1)
        try:
            done = not store.index.merge_step()
        except sqlite3.OperationalError as exc:
            assert "interrupt" in str(exc)
            failures += 1
            assert not conn.in_transaction
            assert (store.index.runs(), conn.execute("SELECT * FROM merge").fetchall()) == before
            done = False
            _check_tables(store, f"after a failed slice ({after})")
        finally:
            conn.set_progress_handler(None, 1)
        assert {key: store.index.entries(key) for key in expected} == expected
        if done:
            break
    assert failures > 0
    store.drain()
    assert store.merges_under_way() == 0
    assert {key: store.index.entries(key) for key in expected} == expected
    conn.close()


@pytest.mark.parametrize("after", [200, 1500, 3000, 5000])  # a slice here: about 6,000 steps
def test_stop_interrupts_a_slice_and_a_new_index_goes_on(tmp_path: Path, after: int) -> None:
    store = open_sqlite(tmp_path / "t.sqlite", fanout=2, chunk_entries=2, slice_rows=100)
    expected = _fill(store, 4)
    assert store.conn is not None
    conn = store.conn
    index = store.index
    steps = iter(range(after, -1, -1))

    def handler() -> int:
        if next(steps, None) == 0:
            index.stop()  # from inside the slice, as another thread would
        return 0

    before = conn.execute("SELECT * FROM merge").fetchall(), conn.execute("SELECT * FROM run").fetchall()
    conn.set_progress_handler(handler, 1)
    # Interrupted, not an error.  SQLite drops an interrupt that lands as a statement
    # ends, and the short slice then commits: stop() only promises that no slice begins.
    if index.merge_step() is False:
        assert (conn.execute("SELECT * FROM merge").fetchall(), conn.execute("SELECT * FROM run").fetchall()) \
            == before  # rolled back
    conn.set_progress_handler(None, 1)
    assert not conn.in_transaction
    assert index.merge_step() is False  # stopped: no further slice
    assert {key: index.entries(key) for key in expected} == expected
    from smalldp.store.backlinks import SqliteBacklinks

    again = Store(SqliteBacklinks(conn, fanout=2, chunk_entries=2, slice_rows=100), conn)
    assert again.drain() > 0
    assert {key: again.index.entries(key) for key in expected} == expected
    conn.close()


def test_a_like_with_rkey_of_tid_zero_beside_non_tid_rkeys_passes_check(tmp_path: Path) -> None:
    """rkey 2222222222222 is the TID 0: with alias (non-TID) likes of the same post older
    in the chunk order, its chunk must not take the oldest chunk's key 0 (it made the batch
    fail with a UNIQUE error); the store answers and passes `smalldp check`."""
    import json

    from smalldp.events import decode_event
    from smalldp.store.check import check_store
    from smalldp.store.reader import Reader
    from smalldp.store.writer import Writer

    post = "at://did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/app.bsky.feed.post/3kabcdefghij2"
    likes = [("did:plc:bbbbbbbbbbbbbbbbbbbbbbbb", "2222222222222"), ("did:plc:cccccccccccccccccccccccc", "self"),
             ("did:plc:dddddddddddddddddddddddd", "3kabcdefghik2"), ("did:plc:eeeeeeeeeeeeeeeeeeeeeeee", "x-1")]
    path = tmp_path / "db.sqlite"
    writer = Writer(path, fanout=2, chunk_entries=1)
    for i, (repo, rkey) in enumerate(likes):
        line = json.dumps({"did": repo, "time_us": 1_700_000_000_000_000 + i, "kind": "commit", "commit": {
            "rev": "3kabcdefghil2", "operation": "create", "collection": "app.bsky.feed.like", "rkey": rkey,
            "record": {"subject": {"uri": post, "cid": "bafyreib"}}}})
        writer.apply([decode_event(line)], cursor=i)
    writer.apply([decode_event(json.dumps({"did": likes[1][0], "time_us": 1_700_000_000_000_009, "kind": "commit",
                                           "commit": {"rev": "3kabcdefghim2", "operation": "delete",
                                                      "collection": "app.bsky.feed.like", "rkey": "self"}}))])
    writer.compact(full=True)
    writer.close()
    reader = Reader(path)
    assert reader.count(post, "app.bsky.feed.like", ".subject.uri") == 3
    assert {r.rkey for r in reader.backlinks(post, "app.bsky.feed.like", ".subject.uri", limit=10).items} \
        == {"2222222222222", "3kabcdefghik2", "x-1"}
    reader.close()
    assert check_store(path).ok


def test_compact_all_reports_progress_up_to_every_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`smalldp compact` is long on a big store: it reports chunks moved out of the total."""
    import smalldp.store.progress as progress

    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.0)
    store = open_sqlite(tmp_path / "p.sqlite", fanout=64, chunk_entries=2, slice_rows=3)
    for run in range(4):
        store.index.write_run({(1, bytes([3, key])): [(run * 10 + key, 1)] for key in range(10)})
    reports: list[tuple[str, int, int | None]] = []
    slices = store.index.compact_all(lambda phase, done, total: reports.append((phase, done, total)))
    assert slices > 3 and len(store.index.runs()) == 1
    assert reports[-1] == ("merging", 40, 40)  # 4 runs x 10 keys, one chunk each, before the merge
    moved = [done for _, done, _ in reports]
    assert moved == sorted(moved) and moved[0] < 40 and moved.count(40) == 2  # the last slice, and the end
