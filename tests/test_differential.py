"""Differential tests: random event sequences applied to the model and to the real store.

Sequences include duplicates, replays with new timestamps, updates that move links,
deletes of unknown records, account deactivation, reactivation and deletion, and
identity events.  Every query answer must be equal.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smalldp.events import decode_event
from smalldp.store.check import check_store
from smalldp.store.reader import Reader
from smalldp.store.writer import Writer
from smalldp.tid import int_to_tid, tid_from_time, tid_to_int

from helpers_server import iso
from model import Model

DIDS = [f"did:plc:{c * 24}" for c in "abcde"]
BASE_US = 1_700_000_000_000_000
TIDS = [int_to_tid(tid_from_time(BASE_US + i * 1000, i)) for i in range(4)]
RKEYS = TIDS + ["self", "key-1"]
REVS = [int_to_tid(tid_from_time(BASE_US + r * 10, 0)) for r in range(8)]
POSTS = [f"at://{d}/app.bsky.feed.post/{t}" for d in DIDS[:3] for t in TIDS[:3]]
URLS = ["https://example.com/a", "https://example.com/b?x=1", "mailto:someone@example.com",
        "oracle:6f1c2a84-7d6b-4f1e-9a1b-0c2d3e4f5a6b"]
# Other spellings of URLS, as records may hold them: stored (and queried) normalized, so
# each is the same target as the URL it stands for.
SPELLINGS = {"HTTPS://Example.COM/a": URLS[0], "https://example.com/./x/../b?x=1": URLS[1],
             "MAILTO:someone@example.com": URLS[2], "oracle:6f1c2a84-7d6b-4f1e-9a1b-0c2d3e4f5a6b": URLS[3]}
TARGETS = POSTS + DIDS + URLS
SOURCES = [
    ("app.bsky.feed.like", ".subject.uri"),
    ("app.bsky.graph.follow", ".subject"),
    ("app.bsky.feed.post", ".reply.parent.uri"),
    ("app.bsky.feed.post", ".reply.root.uri"),
    ("app.bsky.feed.post", ".facets[].features[app.bsky.richtext.facet#mention].did"),
    ("com.example.thing", ".subject.uri"),
    ("com.example.thing", ".items[com.example.item].ref"),
    ("com.example.thing", ".items[]"),
    ("app.bsky.actor.profile", ".pinnedPost.uri"),
]

dids = st.sampled_from(DIDS)
tids = st.sampled_from(TIDS)
revs = st.sampled_from(REVS)
times = st.integers(min_value=BASE_US, max_value=BASE_US + 10_000_000)


@st.composite
def records(draw: st.DrawFn) -> tuple[str, str, dict]:
    kind = draw(st.sampled_from(["like", "follow", "post", "thing", "profile"]))
    if kind == "like":
        return "app.bsky.feed.like", draw(tids), {
            "$type": "app.bsky.feed.like", "subject": {"uri": draw(st.sampled_from(POSTS)), "cid": "bafyx"},
            "createdAt": "2026-01-01T00:00:00.000Z"}
    if kind == "follow":
        return "app.bsky.graph.follow", draw(tids), {"$type": "app.bsky.graph.follow", "subject": draw(dids)}
    if kind == "post":
        record: dict = {"$type": "app.bsky.feed.post", "text": "hi"}
        if draw(st.booleans()):
            record["reply"] = {"parent": {"uri": draw(st.sampled_from(POSTS))},
                               "root": {"uri": draw(st.sampled_from(POSTS))}}
        mentions = draw(st.lists(dids, max_size=3))
        if mentions:
            record["facets"] = [{"features": [{"$type": "app.bsky.richtext.facet#mention", "did": d}]}
                                for d in mentions]
        return "app.bsky.feed.post", draw(tids), record
    if kind == "thing":
        items = draw(st.lists(st.one_of(
            st.builds(lambda d: {"$type": "com.example.item", "ref": d}, dids),
            st.sampled_from(URLS + list(SPELLINGS))), max_size=3))
        return "com.example.thing", draw(st.sampled_from(RKEYS)), {
            "$type": "com.example.thing", "subject": {"uri": draw(st.sampled_from(TARGETS + list(SPELLINGS)))},
            "items": items}
    return "app.bsky.actor.profile", "self", {"$type": "app.bsky.actor.profile",
                                              "pinnedPost": {"uri": draw(st.sampled_from(POSTS))}}


@st.composite
def events(draw: st.DrawFn) -> dict:
    did = draw(dids)
    time_us = draw(times)
    kind = draw(st.sampled_from(["put", "put", "put", "put", "delete", "account", "identity"]))
    if kind == "put":
        collection, rkey, record = draw(records())
        op = draw(st.sampled_from(["create", "update"]))
        return {"did": did, "time_us": time_us, "kind": "commit", "commit": {
            "rev": draw(revs), "operation": op, "collection": collection, "rkey": rkey,
            "record": record, "cid": f"bafy{draw(st.integers(0, 99))}"}}
    if kind == "delete":
        collection, rkey, _ = draw(records())
        return {"did": did, "time_us": time_us, "kind": "commit", "commit": {
            "rev": draw(revs), "operation": "delete", "collection": collection, "rkey": rkey}}
    if kind == "account":
        status = draw(st.sampled_from([None, "deactivated", "takendown", "deleted"]))
        account = {"active": status is None, "did": did, **draw(stamps())}
        if status:
            account["status"] = status
        return {"did": did, "time_us": time_us, "kind": "account", "account": account}
    return {"did": did, "time_us": time_us, "kind": "identity",
            "identity": {"did": did, "handle": draw(st.sampled_from(["a.test", "b.test"])), **draw(stamps())}}


# The upstream `time` of account and identity events: a few moments (so equal times
# happen), a clock far ahead of every time_us (distrusted), junk, or none at all.
EVENT_TIMES = [iso(BASE_US + i * 2_000_000) for i in range(4)] + [iso(BASE_US + 10**12), "not a time"]


@st.composite
def stamps(draw: st.DrawFn) -> dict:
    """`seq` and `time` of an account or identity event on a network of several relays:
    seqs of two unrelated spaces (small, and far larger), duplicates, or none."""
    out: dict = {}
    seq = draw(st.one_of(st.none(), st.integers(1, 6), st.integers(10**10, 10**10 + 3)))
    if seq is not None:
        out["seq"] = seq
    when = draw(st.one_of(st.none(), st.sampled_from(EVENT_TIMES)))
    if when is not None:
        out["time"] = when
    return out


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[dict], list[int]]:
    base = draw(st.lists(events(), min_size=1, max_size=60))
    stream = list(base)
    for _ in range(draw(st.integers(0, 3))):  # replays of a slice, with other timestamps
        start = draw(st.integers(0, len(base) - 1))
        end = draw(st.integers(start + 1, len(base)))
        shift = draw(st.integers(-5_000_000, 5_000_000))
        at = draw(st.integers(0, len(stream)))
        replay = [dict(e, time_us=e["time_us"] + shift) for e in base[start:end]]
        stream[at:at] = replay
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=4))))
    return stream, cuts


def _sk(model: Model, did: str, collection: str, rkey: str) -> int:
    tid = tid_to_int(rkey)
    return tid if tid is not None else model.aliases[(did, collection, rkey)]


def compare(model: Model, reader: Reader, page_size: int) -> None:
    for target in TARGETS:
        expected_all = model.all_links(target)
        assert reader.all_links(target) == expected_all, target
        for collection, path in SOURCES:
            want = model.linking(target, collection, path)
            assert reader.count(target, collection, path) == len(want)
            assert reader.distinct_count(target, collection, path) == len({d for _, d, _ in want})
            for reverse in (False, True):
                got: list[tuple[int, str, str]] = []
                cursor = None
                while True:
                    page = reader.backlinks(target, collection, path, limit=page_size, cursor=cursor,
                                           reverse=reverse)
                    assert page.total == len(want)
                    got += [(_sk(model, r.did, collection, r.rkey), r.did, r.rkey) for r in page.items]
                    cursor = page.cursor
                    if cursor is None:
                        break
                keys = [g[0] for g in got]
                assert keys == sorted(keys, reverse=not reverse)
                assert sorted(got) == sorted(want)
            dids_seen: list[str] = []
            cursor = None
            while True:
                page = reader.distinct_dids(target, collection, path, limit=page_size, cursor=cursor)
                dids_seen += page.items
                cursor = page.cursor
                if cursor is None:
                    break
            assert len(dids_seen) == len(set(dids_seen))
            assert set(dids_seen) == model.distinct(target, collection, path)
    for did in DIDS:
        for rkey in RKEYS:
            for collection in ("app.bsky.feed.post", "app.bsky.actor.profile"):
                uri = f"at://{did}/{collection}/{rkey}"
                want = model.record(did, collection, rkey)
                got = reader.record(uri)
                if want is None:
                    assert got is None, uri
                else:
                    assert got is not None and got.get("cid") == want["cid"], uri  # absent when none was sent
                    assert got["value"] == json.loads(want["body"])
    for subject in TARGETS:
        expected = model.many_to_many(subject, "com.example.thing", ".subject.uri", ".items[com.example.item].ref")
        got_m2m, cursor = reader.many_to_many(subject, "com.example.thing", ".subject.uri",
                                              ".items[com.example.item].ref", limit=1000)
        assert got_m2m == expected and cursor is None


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(history=histories(), page_size=st.integers(1, 3), fanout=st.integers(2, 3), chunk=st.integers(1, 3),
       slices=st.sampled_from([None, 1]), slice_rows=st.integers(1, 4),
       purge_rows=st.sampled_from([None, 1, 3]))
def test_store_equals_model(tmp_path_factory, history, page_size: int, fanout: int, chunk: int,
                            slices: int | None, slice_rows: int, purge_rows: int | None) -> None:
    stream, cuts = history
    path = Path(tmp_path_factory.mktemp("diff")) / "db.sqlite"
    model = Model()
    # Tiny chunks and fanouts, so splitting and merging happen in small examples too; with
    # one slice of a few rows per batch, merges stay under way while answers are compared;
    # so do purge sweeps of a row or three per batch.
    writer = Writer(path, fanout=fanout, chunk_entries=chunk, body_collections=sorted(model.body_collections),
                    merge_slices=slices, merge_slice_rows=slice_rows, purge_rows=purge_rows)
    reader = Reader(path)
    ops = [decode_event(json.dumps(e)) for e in stream]
    bounds = [0, *cuts, len(ops)]
    for start, end in zip(bounds, bounds[1:]):
        for op in ops[start:end]:
            model.apply(op)
        writer.apply(ops[start:end], cursor=end)
        compare(model, reader, page_size)
    # Everything again, in one batch: a full replay changes no answer.
    writer.apply(ops, cursor=len(ops))
    compare(model, reader, page_size)
    writer.compact(full=True)  # first removes the rows of deleted accounts still queued
    compare(model, reader, page_size)
    writer.close()
    compare(model, reader, page_size)
    reader.close()
    conn = sqlite3.connect(path)
    purged = [aid for (aid,) in conn.execute("SELECT aid FROM actor WHERE status = 'deleted' AND purged_rev IS NOT NULL")]
    for aid in purged:
        rows = conn.execute("SELECT rev + sk FROM fwd WHERE aid = ?", (aid,)).fetchall()
        limit = conn.execute("SELECT purged_rev FROM actor WHERE aid = ?", (aid,)).fetchone()[0]
        assert all(rev > limit for (rev,) in rows)  # only commits newer than the deletion remain
    assert conn.execute("SELECT count(*) FROM purge").fetchone()[0] == 0
    conn.close()
    assert_indexes_agree(path)


def assert_indexes_agree(path: Path) -> None:
    """The store-level check (smalldp.store.check) finds nothing: every backlink entry
    is a link of a live forward row and vice versa (reverse links filed under the author),
    each once; the stored link count is their number; chunk headers, chunk ranges, runs,
    timeline buckets and bodies agree too."""
    report = check_store(path, limit=20)
    assert report.ok, report.text()
    # Nothing was skipped: the check saw every forward link as a backlink entry.
    assert report.stats["backlink_entries"] == report.stats["links"] + report.stats["derived_links"]
    conn = sqlite3.connect(path)
    live = conn.execute("SELECT count(*) FROM fwd WHERE links IS NOT NULL").fetchone()[0]
    assert conn.execute("SELECT v FROM meta WHERE k = 'records'").fetchone()[0] == live
    conn.close()


def test_many_links_in_small_chunks(tmp_path: Path) -> None:
    """A denser workload than the hypothesis one: hundreds of distinct rkeys on a few
    targets, tiny chunks, deletes and updates spread over batches and merges."""
    import random
    rng = random.Random(5)
    rkeys = [int_to_tid(tid_from_time(BASE_US + i * 7919, i % 1024)) for i in range(60)]
    revs_by_did = {did: 0 for did in DIDS}
    created: list[tuple[str, str]] = []
    stream = []
    for i in range(900):
        did = rng.choice(DIDS)
        revs_by_did[did] += 1
        rev = int_to_tid(tid_from_time(BASE_US + revs_by_did[did] * 100, 0))
        if created and rng.random() < 0.2:
            d, rkey = rng.choice(created)
            revs_by_did[d] += 1
            rev = int_to_tid(tid_from_time(BASE_US + revs_by_did[d] * 100, 0))
            stream.append({"did": d, "time_us": BASE_US + i, "kind": "commit", "commit": {
                "rev": rev, "operation": "delete", "collection": "app.bsky.feed.like", "rkey": rkey}})
            continue
        rkey = rng.choice(rkeys)
        created.append((did, rkey))
        stream.append({"did": did, "time_us": BASE_US + i, "kind": "commit", "commit": {
            "rev": rev, "operation": rng.choice(["create", "update"]), "collection": "app.bsky.feed.like",
            "rkey": rkey, "record": {"subject": {"uri": rng.choice(POSTS[:2])}}}})
    ops = [decode_event(json.dumps(e)) for e in stream]
    model = Model()
    writer = Writer(tmp_path / "db.sqlite", fanout=2, chunk_entries=3)
    reader = Reader(tmp_path / "db.sqlite")
    for start in range(0, len(ops), 150):
        for op in ops[start:start + 150]:
            model.apply(op)
        writer.apply(ops[start:start + 150])
        for page_size in (1, 7):
            for target in POSTS[:2]:
                want = model.linking(target, "app.bsky.feed.like", ".subject.uri")
                assert len(want) > 10
                for reverse in (False, True):
                    got, cursor = [], None
                    while True:
                        page = reader.backlinks(target, "app.bsky.feed.like", ".subject.uri",
                                                limit=page_size, cursor=cursor, reverse=reverse)
                        got += [(tid_to_int(r.rkey), r.did, r.rkey) for r in page.items]
                        cursor = page.cursor
                        if cursor is None:
                            break
                    keys = [g[0] for g in got]
                    assert keys == sorted(keys, reverse=not reverse)
                    assert sorted(got) == sorted(want)
                assert reader.count(target, "app.bsky.feed.like", ".subject.uri") == len(want)
        assert_indexes_agree(tmp_path / "db.sqlite")
    writer.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 60), st.integers(1, 9)), max_size=300), st.integers(1, 12))
def test_streamed_chunks_equal_listed_chunks(raw: list[tuple[int, int]], size: int) -> None:
    """Compaction chunks a lazy merge; the write path chunks a list: same chunks."""
    from smalldp.store.backlinks import _chunks, _stream_chunks
    entries = sorted(set(raw), reverse=True)
    assert list(_stream_chunks(iter(entries), size)) == list(_chunks(entries, size))


def test_merge_keeps_non_tid_records_in_order(tmp_path: Path) -> None:
    """Regression (found by test_store_equals_model): records with non-TID rkeys have
    negative sort keys, and a merge once put a run's oldest chunk (keyed lo 0) first."""
    a, b, c = (f"did:plc:{ch * 24}" for ch in "abc")
    post = f"at://{a}/app.bsky.feed.post/3ke6kg3wk2222"

    def profile(did: str) -> dict:
        return {"did": did, "time_us": 1_700_000_000_000_000, "kind": "commit",
                "commit": {"rev": "3ke6kg3wk2222", "operation": "create", "collection": "app.bsky.actor.profile",
                           "rkey": "self", "cid": "bafy0",
                           "record": {"$type": "app.bsky.actor.profile", "pinnedPost": {"uri": post}}}}

    writer = Writer(tmp_path / "db.sqlite", fanout=2, chunk_entries=1)
    writer.apply([decode_event(json.dumps(profile(a))), decode_event(json.dumps(profile(c)))])
    writer.apply([decode_event(json.dumps(profile(b)))])  # second run: the two runs merge
    reader = Reader(tmp_path / "db.sqlite")
    for reverse, expected in ((False, [b, c, a]), (True, [a, c, b])):  # aliases in first-seen order a, c, b
        got, cursor = [], None
        while True:
            page = reader.backlinks(post, "app.bsky.actor.profile", ".pinnedPost.uri", limit=1, cursor=cursor,
                                    reverse=reverse)
            got += [item.did for item in page.items]
            cursor = page.cursor
            if cursor is None:
                break
        assert got == expected
    reader.close()
    writer.close()
