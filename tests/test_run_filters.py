"""Key filters of the backlink index's runs (store/runfilter.py): readers ask only the runs
whose filter holds a key, `smalldp check` reports a filter that lacks a key it should
hold, and `smalldp migrate` gives the runs of an earlier release their filters.

A filter is the set of CRC-32s of a run's target keys (an account's target key with the
source id as the CRC's start), so the tests compute the expected hashes with zlib.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path

from pyroaring import BitMap

from conftest import run_cli
from helpers_server import BASE_US, did, tid
from smalldp.events import decode_event
from smalldp.store.check import check_store
from smalldp.store.dataplane import DataPlaneReader
from smalldp.store.schema import SCHEMA_VERSION, db_path
from smalldp.store.writer import Writer

AUTHOR = did("author")
POSTS = [f"at://{AUTHOR}/app.bsky.feed.post/{tid(i, 1)}" for i in range(3)]
LIKE = ("app.bsky.feed.like", ".subject.uri")


def likes(batch: int, likers: list[str], post: str | list[str]) -> list[str]:
    """Jetstream lines: liker i likes ``post`` (or the i-th of a list of posts, round the
    list); rkeys and times unique per batch."""
    posts = [post] if isinstance(post, str) else post
    return [json.dumps({"did": liker, "time_us": BASE_US + batch * 100 + i, "kind": "commit", "commit": {
        "rev": tid(batch * 100 + i), "operation": "create", "collection": "app.bsky.feed.like",
        "rkey": tid(batch * 100 + i), "record": {"subject": {"uri": posts[i % len(posts)], "cid": "bafyreib"}}}})
        for i, liker in enumerate(likers)]


def write_batches(path: Path, batches: list[tuple[list[str], str | list[str]]], **kwargs: int) -> None:
    """One Writer.apply (one run of the index) per (likers, post or posts), then close."""
    writer = Writer(path, **kwargs)
    for batch, (likers, post) in enumerate(batches):
        writer.apply([decode_event(line) for line in likes(batch, likers, post)], cursor=BASE_US + batch * 100 + 99)
    writer.close()


def expected_hash(tkey: bytes, sid: int) -> int:
    """A key's hash in its run's filter: an account's (DID) target key with its source,
    any other target key alone."""
    return zlib.crc32(tkey, sid) if tkey[:1] == b"\x03" else zlib.crc32(tkey)


def filters_of(path: Path) -> dict[int, BitMap]:
    conn = sqlite3.connect(path)
    try:
        return {run: BitMap.deserialize(data) for run, data in conn.execute("SELECT run, data FROM runkeys")}
    finally:
        conn.close()


def assert_filters_hold_every_key(path: Path) -> None:
    """Every run has a filter, holding the hash of every key it has chunks of."""
    conn = sqlite3.connect(path)
    try:
        filters = {run: BitMap.deserialize(data) for run, data in conn.execute("SELECT run, data FROM runkeys")}
        runs = {run for (run,) in conn.execute("SELECT run FROM run")}
        assert set(filters) == runs
        for run, tkey, sid in conn.execute("SELECT DISTINCT run, tkey, sid FROM bl"):
            assert expected_hash(tkey, sid) in filters[run], (run, tkey, sid)
    finally:
        conn.close()


def like_count(path: Path, post: str) -> int:
    reader = DataPlaneReader(path)
    try:
        counts = reader.count(post, *LIKE)
        via_batch = reader.interaction_counts([post])["likes"][0]
        assert counts == via_batch  # the single-key and the batched reads agree
        return counts
    finally:
        reader.close()


def test_a_filter_decides_which_runs_a_reader_asks(tmp_path: Path) -> None:
    """Empty one run's filter and readers no longer see that run's entries of a key (the
    filters are used), while `smalldp check` names the lacking filter; put it back and
    everything is as before."""
    path = db_path(tmp_path)
    a, b, c = ([did(f"{name}{i}") for i in range(n)] for name, n in (("a", 3), ("b", 2), ("c", 4)))
    write_batches(path, [(a, POSTS[0]), (b, POSTS[1]), (c, POSTS[0])], fanout=64)
    assert_filters_hold_every_key(path)
    assert like_count(path, POSTS[0]) == 7 and like_count(path, POSTS[1]) == 2
    assert check_store(path).ok

    conn = sqlite3.connect(path)
    first = min(run for (run,) in conn.execute("SELECT run FROM run"))
    saved = conn.execute("SELECT data FROM runkeys WHERE run=?", (first,)).fetchone()[0]
    conn.execute("UPDATE runkeys SET data=? WHERE run=?", (BitMap().serialize(), first))
    conn.commit()
    assert like_count(path, POSTS[0]) == 4  # run 1's three likes are not asked for
    report = check_store(path)
    assert not report.ok and "run-filter" in report.counts
    conn.execute("UPDATE runkeys SET data=? WHERE run=?", (saved, first))
    conn.execute("INSERT INTO runkeys VALUES(999, ?)", (saved,))  # a filter of no run
    conn.commit()
    assert like_count(path, POSTS[0]) == 7
    report = check_store(path)
    assert not report.ok and set(report.counts) == {"run-filter"}
    conn.execute("DELETE FROM runkeys WHERE run=999")
    conn.commit()
    conn.close()
    assert check_store(path).ok


def test_a_run_without_a_filter_is_asked_for_every_key(tmp_path: Path) -> None:
    """A run of an earlier release (no filter) may hold any key: readers ask it always."""
    path = db_path(tmp_path)
    write_batches(path, [([did("a0"), did("a1")], POSTS[0]), ([did("b0")], POSTS[1])], fanout=64)
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM runkeys")
    conn.commit()
    conn.close()
    assert like_count(path, POSTS[0]) == 2 and like_count(path, POSTS[1]) == 1
    assert check_store(path).ok  # no filter is not a fault, only slower


def test_merged_runs_keep_filters_that_hold_their_keys(tmp_path: Path) -> None:
    """Merges (in slices) give their output the union of the inputs' filters and drop the
    inputs' ones; removals keep filters as they are."""
    path = db_path(tmp_path)
    batches = [([did(f"u{batch}x{i}") for i in range(batch % 3 + 1)], POSTS[batch % 3]) for batch in range(9)]
    write_batches(path, batches, fanout=2, merge_slice_rows=1)
    assert_filters_hold_every_key(path)
    expected = {post: sum(len(likers) for likers, p in batches if p == post) for post in POSTS}
    assert {post: like_count(path, post) for post in POSTS} == expected
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM run").fetchone()[0] < 9  # merges ran
    conn.close()
    assert check_store(path).ok


def test_migrate_builds_the_filters_of_an_earlier_release(tmp_path: Path) -> None:
    """A schema-7 store (no runkeys table) with a merge under way: the writer upgrades it
    (its runs stay without filters, a merge of them gives none), `smalldp migrate` builds
    them all, the merge's output also holding the keys it has yet to receive."""
    path = db_path(tmp_path)
    # each run holds three keys (one per post), so a merge takes several one-key slices
    batches: list[tuple[list[str], str | list[str]]] = [
        ([did(f"v{batch}x{i}") for i in range(3)], POSTS) for batch in range(6)]
    write_batches(path, batches, fanout=64)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE runkeys")
    conn.execute("UPDATE meta SET v=7 WHERE k='schema'")
    conn.commit()
    conn.close()
    assert check_store(path).ok

    writer = Writer(path, fanout=2, merge_slice_rows=1)  # opening upgrades the schema
    assert writer.backlinks.merge_step()  # the first slice of the first merge
    under_way = writer.backlinks.merges_under_way
    assert len(under_way) == 1
    writer.close()
    assert filters_of(path) == {}  # nothing but the schema changed
    assert [like_count(path, post) for post in POSTS] == [6, 6, 6]

    code, out = run_cli(["migrate", "--data-dir", str(tmp_path)])
    assert code == 0 and "key filters built for 7 runs" in out  # six runs and the output
    merge = under_way[0]
    filters = filters_of(path)
    for run in merge.inputs:
        assert filters[run] <= filters[merge.output]  # keys the output has yet to receive
    assert_filters_hold_every_key(path)
    assert [like_count(path, post) for post in POSTS] == [6, 6, 6]
    assert run_cli(["migrate", "--data-dir", str(tmp_path)])[1].strip() == "store up to date: nothing to migrate"

    writer = Writer(path, fanout=2, merge_slice_rows=1)
    writer.compact(full=True)
    writer.close()
    assert_filters_hold_every_key(path)
    assert [like_count(path, post) for post in POSTS] == [6, 6, 6]
    assert check_store(path).ok
    conn = sqlite3.connect(path)
    assert int(conn.execute("SELECT v FROM meta WHERE k='schema'").fetchone()[0]) == SCHEMA_VERSION
    conn.close()
