"""`smalldp import` end to end: malformed lines, .zst captures, the summary, resuming, crashes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import zstandard

from smalldp.store.reader import Reader
from smalldp.store.schema import db_path
from smalldp.store.writer import Writer

LIKE, POST, REPOST = "app.bsky.feed.like", "app.bsky.feed.post", "app.bsky.feed.repost"
FOLLOW, BLOCK, PROFILE = "app.bsky.graph.follow", "app.bsky.graph.block", "app.bsky.actor.profile"
BASE_US = 1_750_000_000_000_000
_SORTABLE = "234567abcdefghijklmnopqrstuvwxyz"


def tid(value: int) -> str:
    """13-character base32-sortable TID of an integer (written out here, not smalldp's)."""
    chars = []
    for _ in range(13):
        chars.append(_SORTABLE[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def tid_at(time_us: int, clock: int = 0) -> str:
    return tid((time_us << 10) | clock)


def did_of(n: int) -> str:
    return "did:plc:" + tid(n * 7919 + 12345).rjust(24, "a")


# ---------------------------------------------------------------- an event generator with its own model

class Capture:
    """Builds realistic Jetstream v1 lines and keeps the expected state alongside.

    Every record gets a distinct TID rkey (time_us is unique per event), every rev is
    newer than the last one of its account, so the expected answer of each query is a
    plain computation over ``live``.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.time_us = BASE_US
        self.lines: list[str] = []
        self.live: dict[tuple[str, str, str], tuple[list[tuple[str, str]], str, dict]] = {}
        self.hidden: set[str] = set()
        self.acct_seq = 1000
        self.posts: list[str] = []
        self.valid_events = 0
        self.malformed = 0
        # records whose rkey is not a TID sort before every TID, in order of first sight
        self.aliases: dict[tuple[str, str, str], int] = {}

    def _tick(self) -> int:
        self.time_us += self.rng.randint(1, 900)
        return self.time_us

    def _emit(self, did: str, kind: str, body: dict[str, Any]) -> None:
        self.lines.append(json.dumps({"did": did, "time_us": self.time_us, "kind": kind, kind: body},
                                     separators=(",", ":")))
        self.valid_events += 1

    def put(self, did: str, coll: str, record: dict, links: list[tuple[str, str]], rkey: str | None = None,
            operation: str = "create") -> str:
        now = self._tick()
        rkey = rkey or tid_at(now, 1)
        cid = "bafyrei" + tid_at(now, 2)
        self._emit(did, "commit", {"rev": tid_at(now), "operation": operation, "collection": coll,
                                   "rkey": rkey, "record": record, "cid": cid})
        self.live[(did, coll, rkey)] = (links, cid, record)
        if len(rkey) != 13:
            self.aliases.setdefault((did, coll, rkey), len(self.aliases))
        return f"at://{did}/{coll}/{rkey}"

    def delete(self, key: tuple[str, str, str]) -> None:
        now = self._tick()
        did, coll, rkey = key
        self._emit(did, "commit", {"rev": tid_at(now), "operation": "delete", "collection": coll, "rkey": rkey})
        self.live.pop(key, None)

    def account(self, did: str, active: bool) -> None:
        self._tick()
        self.acct_seq += 1
        body: dict[str, Any] = {"active": active, "did": did, "seq": self.acct_seq}
        if not active:
            body["status"] = "deactivated"
        self._emit(did, "account", body)
        (self.hidden.discard if active else self.hidden.add)(did)

    def identity(self, did: str, handle: str) -> None:
        self._tick()
        self.acct_seq += 1
        self._emit(did, "identity", {"did": did, "handle": handle, "seq": self.acct_seq})

    def garbage(self) -> None:
        self.lines.append(self.rng.choice(['{"did":"did:plc:broken","time_us":', "not json at all",
                                           '{"did":"did:plc:x","time_us":1,"kind":"commit"}']))
        self.malformed += 1

    # -- the expected answers

    def index(self) -> dict[tuple[str, str, str], list[tuple[str, str]]]:
        """{(target, collection, path): [(did, rkey)] newest first}, hidden accounts left out."""
        out: dict[tuple[str, str, str], list[tuple[tuple[int, Any], str, str]]] = defaultdict(list)
        for (did, coll, rkey), (links, _, _) in self.live.items():
            if did in self.hidden:
                continue
            alias = self.aliases.get((did, coll, rkey))
            order = (1, rkey) if alias is None else (0, alias)  # TIDs sort as strings
            for path, target in links:
                out[(target, coll, path)].append((order, did, rkey))
        return {k: [(d, r) for _, d, r in sorted(v, reverse=True)] for k, v in out.items()}

    def total_links(self) -> int:
        return sum(len(links) for links, _, _ in self.live.values())


def realistic_capture(events: int, seed: int, accounts: int = 300, garbage: bool = False) -> Capture:
    cap = Capture(seed)
    rng = cap.rng
    dids = [did_of(i) for i in range(accounts)]
    hot_dids = dids[:3]
    likes: list[tuple[str, str, str]] = []
    follows: list[tuple[str, str, str]] = []
    own_posts: dict[str, list[str]] = defaultdict(list)
    for did in dids[:20]:  # some posts to start with
        cap.posts.append(cap.put(did, POST, {"$type": POST, "text": "hello", "createdAt": "2026-01-01T00:00:00Z"}, []))
    hot_posts = cap.posts[:3]
    while cap.valid_events < events:
        did = rng.choice(dids)
        roll = rng.random()
        if roll < 0.35:
            subject = rng.choice(hot_posts) if rng.random() < 0.4 else rng.choice(cap.posts)
            uri = cap.put(did, LIKE, {"$type": LIKE, "subject": {"uri": subject, "cid": "bafyreisubject"},
                                      "createdAt": "2026-01-01T00:00:00Z"}, [(".subject.uri", subject)])
            likes.append((did, LIKE, uri.rsplit("/", 1)[1]))
        elif roll < 0.50:
            subject = rng.choice(hot_dids) if rng.random() < 0.3 else rng.choice(dids)
            uri = cap.put(did, FOLLOW, {"$type": FOLLOW, "subject": subject, "createdAt": "2026-01-01T00:00:00Z"},
                          [(".subject", subject)])
            follows.append((did, FOLLOW, uri.rsplit("/", 1)[1]))
        elif roll < 0.65:
            record: dict[str, Any] = {"$type": POST, "text": f"post {cap.valid_events}", "createdAt": "2026-01-01T00:00:00Z"}
            links: list[tuple[str, str]] = []
            if rng.random() < 0.4:
                parent = rng.choice(cap.posts)
                root = rng.choice([parent, rng.choice(hot_posts)])
                record["reply"] = {"parent": {"uri": parent, "cid": "bafyreip"}, "root": {"uri": root, "cid": "bafyreir"}}
                links += [(".reply.parent.uri", parent), (".reply.root.uri", root)]
            if rng.random() < 0.1:
                quoted = rng.choice(cap.posts)
                record["embed"] = {"$type": "app.bsky.embed.record", "record": {"uri": quoted, "cid": "bafyreiq"}}
                links.append((".embed.record.uri", quoted))
            if rng.random() < 0.1:
                mentioned = rng.choice(hot_dids)
                record["facets"] = [{"index": {"byteStart": 0, "byteEnd": 1}, "features": [
                    {"$type": "app.bsky.richtext.facet#mention", "did": mentioned}]}]
                links.append((".facets[].features[app.bsky.richtext.facet#mention].did", mentioned))
            if rng.random() < 0.05:
                url = f"https://example.com/{rng.randint(0, 9)}"
                record["embed"] = {"$type": "app.bsky.embed.external", "external": {"uri": url, "title": "t"}}
                links = [link for link in links if link[0] != ".embed.record.uri"]
                links.append((".embed.external.uri", url))
            cap.posts.append(cap.put(did, POST, record, links))
            own_posts[did].append(cap.posts[-1].rsplit("/", 1)[1])
        elif roll < 0.72:
            subject = rng.choice(hot_posts + cap.posts[-50:])
            cap.put(did, REPOST, {"$type": REPOST, "subject": {"uri": subject, "cid": "bafyreis"},
                                  "createdAt": "2026-01-01T00:00:00Z"}, [(".subject.uri", subject)])
        elif roll < 0.73:
            subject = rng.choice(dids)
            cap.put(did, BLOCK, {"$type": BLOCK, "subject": subject, "createdAt": "2026-01-01T00:00:00Z"},
                    [(".subject", subject)])
        elif roll < 0.85:
            pool = likes if rng.random() < 0.6 else follows
            if pool:
                key = pool.pop(rng.randrange(len(pool)))
                cap.delete(key)
            else:
                cap.delete((did, LIKE, tid_at(BASE_US - 5, 3)))  # a delete of a record never seen
        elif roll < 0.90:
            own = [p for p in cap.posts[-200:] if p.startswith(f"at://{did}/")]
            pinned = own[-1] if own else rng.choice(hot_posts)
            cap.put(did, PROFILE, {"$type": PROFILE, "displayName": f"user {did[-4:]}",
                                   "pinnedPost": {"uri": pinned, "cid": "bafyreipin"}},
                    [(".pinnedPost.uri", pinned)], rkey="self", operation="update")
        elif roll < 0.93:
            mine = [p for p in own_posts[did] if (did, POST, p) in cap.live]
            if mine:  # an edit that moves its links
                key = (did, POST, rng.choice(mine))
                target = rng.choice(hot_posts)
                cap.put(did, POST, {"$type": POST, "text": "edited", "embed": {
                    "$type": "app.bsky.embed.record", "record": {"uri": target, "cid": "bafyreie"}}},
                    [(".embed.record.uri", target)], rkey=key[2], operation="update")
        elif roll < 0.932:
            cap.account(did, did in cap.hidden)  # deactivate, or come back
        elif roll < 0.94:
            cap.identity(did, f"user{rng.randint(0, 999)}.example.com")
        elif roll < 0.945 and garbage:
            cap.garbage()
        elif roll < 0.95 and cap.lines:
            # Jetstream replays: the same line again (a no-op, its rev is not newer)
            line = rng.choice(cap.lines[-100:])
            if '"kind":"commit"' in line and '"rev"' in line:
                cap.lines.append(line)
                cap.valid_events += 1
    return cap


def write_lines(path: Path, lines: list[str], *, final_newline: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if final_newline else ""))
    return path


def finish_purges(data_dir: Path) -> None:
    """Remove the rows of deleted accounts still queued for the purge sweep (the store must
    not be in use).  Queries never show them, but the links counter counts stored links,
    and where the sweep stands differs between two stores given the same events."""
    writer = Writer(db_path(data_dir))
    try:
        writer.finish_purges()
    finally:
        writer.close()


def answers(data_dir: Path, keys, targets, uris=()) -> dict:
    """Every answer about the given query keys; backlinks in full, paging 97 at a time.
    Purges still queued are finished first (see finish_purges), so the links counter compares."""
    finish_purges(data_dir)
    reader = Reader(db_path(data_dir))
    try:
        out: dict[Any, Any] = {"links": reader.stats()["links"], "inactive": reader.stats()["inactive_accounts"]}
        for target, coll, path in sorted(keys):
            items, cursor = [], None
            while True:
                page = reader.backlinks(target, coll, path, limit=97, cursor=cursor)
                items += [(i.did, i.rkey) for i in page.items]
                cursor = page.cursor
                if cursor is None:
                    break
            dids, cursor = [], None
            while True:
                dpage = reader.distinct_dids(target, coll, path, limit=37, cursor=cursor)
                dids += dpage.items
                cursor = dpage.cursor
                if cursor is None:
                    break
            assert len(dids) == len(set(dids)), (target, coll, path)
            out[("q", target, coll, path)] = (reader.count(target, coll, path),
                                              reader.distinct_count(target, coll, path),
                                              page.total, items, dpage.total, sorted(dids))
        for target in sorted(targets):
            out[("all", target)] = reader.all_links(target)
        for uri in sorted(uris):
            got = reader.record(uri)
            out[("record", uri)] = None if got is None else (got["cid"], got["value"])
        return out
    finally:
        reader.close()


def expected_answers(cap: Capture, keys, targets, uris=()) -> dict:
    index = cap.index()
    out: dict[Any, Any] = {"links": cap.total_links(), "inactive": len(cap.hidden)}
    for key in sorted(keys):
        target, coll, path = key
        items = index.get(key, [])
        dids = sorted({d for d, _ in items})
        out[("q", target, coll, path)] = (len(items), len(dids), len(items), items, len(dids), dids)
    by_target: dict[str, dict[str, dict[str, tuple[int, int]]]] = defaultdict(dict)
    for (target, coll, path), items in index.items():
        if items:
            by_target[target].setdefault(coll, {})[path] = (len(items), len({d for d, _ in items}))
    for target in sorted(targets):
        out[("all", target)] = by_target.get(target, {})
    for uri in sorted(uris):
        did, coll, rkey = uri[5:].split("/")
        value = cap.live.get((did, coll, rkey))
        visible = value is not None and coll in (POST, PROFILE) and did not in cap.hidden
        out[("record", uri)] = (value[1], value[2]) if visible else None
    return out


def query_keys(cap: Capture) -> tuple[set, set, list]:
    """Every (target, collection, path) the capture ever linked, plus a few never linked."""
    keys: set[tuple[str, str, str]] = set()
    for line in cap.lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        record = (event.get("commit") or {}).get("record")
        if not isinstance(record, dict):
            continue
        coll = event["commit"]["collection"]
        for path, target in _walk_links(record):
            keys.add((target, coll, path))
    keys |= {(did_of(999), FOLLOW, ".subject"), (cap.posts[0], LIKE, ".subject")}
    targets = {k[0] for k in keys}
    uris = cap.posts[:40] + cap.posts[-40:] + [f"at://{did_of(i)}/{PROFILE}/self" for i in range(10)]
    return keys, targets, uris


def _walk_links(record: Any, path: str = "") -> list[tuple[str, str]]:
    """The generator's records only hold at://, did: and https:// strings as links."""
    if isinstance(record, str):
        return [(path, record)] if record.startswith(("at://", "did:", "https://")) else []
    if isinstance(record, dict):
        return [x for k, v in record.items() if k != "$type" for x in _walk_links(v, f"{path}.{k}")]
    if isinstance(record, list):
        out = []
        for item in record:
            kind = item.get("$type") if isinstance(item, dict) else None
            out += _walk_links(item, f"{path}[{kind}]" if kind else f"{path}[]")
        return out
    return []


# ---------------------------------------------------------------- tests

def test_generator_model_by_hand():
    # A tiny capture worked out by hand checks the expected-answer machinery itself.
    cap = Capture(0)
    a, b = did_of(1), did_of(2)
    post = cap.put(b, POST, {"$type": POST, "text": "x"}, [])
    cap.put(a, LIKE, {"subject": {"uri": post}}, [(".subject.uri", post)])
    second = cap.put(a, LIKE, {"subject": {"uri": post}}, [(".subject.uri", post)])
    cap.put(b, LIKE, {"subject": {"uri": post}}, [(".subject.uri", post)])
    cap.delete((a, LIKE, second.rsplit("/", 1)[1]))
    index = cap.index()
    assert [d for d, _ in index[(post, LIKE, ".subject.uri")]] == [b, a]  # newest first
    assert cap.total_links() == 2
    cap.account(b, False)
    assert [d for d, _ in cap.index()[(post, LIKE, ".subject.uri")]] == [a]
    assert cap.total_links() == 2 and cap.valid_events == 6
    assert tid(0) == "2222222222222" and tid(33) == "2222222222233"


def test_malformed_lines_are_skipped_and_counted(tmp_path, smalldp_import):
    a, b, c = did_of(1), did_of(2), did_of(3)
    cap = Capture(1)
    post = cap.put(c, POST, {"$type": POST, "text": "hi"}, [])
    for did in (a, b, a):
        cap.put(did, LIKE, {"$type": LIKE, "subject": {"uri": post, "cid": "bafyreic"}}, [(".subject.uri", post)])
    cap.put(a, FOLLOW, {"$type": FOLLOW, "subject": c}, [(".subject", c)])
    cap.put(b, FOLLOW, {"$type": FOLLOW, "subject": c}, [(".subject", c)])
    good = cap.lines[:]
    bad = [
        "garbage garbage",
        good[2][: len(good[2]) // 2],  # truncated JSON
        "[1, 2, 3]",
        json.dumps({"did": "did:nope", "time_us": 1, "kind": "identity", "identity": {}}),
        good[3].replace('"operation":"create"', '"operation":"upsert"'),
        "\x00\x01\x02",
    ]
    lines = [good[0], good[1], bad[0], bad[1], "", good[2], bad[2], bad[3], "   ", good[3],
             bad[4], good[4], bad[5], good[5]]
    path = write_lines(tmp_path / "mixed.jsonl", lines, final_newline=False)
    for batch in ("1", "4", "1000"):
        data = tmp_path / f"store-{batch}"
        summary = smalldp_import(data, [path], "--batch-events", batch)
        # 6 good events, 6 malformed lines; blank lines are neither
        assert summary["events"] == 6, batch
        assert summary["skipped"] == 6, batch
        assert summary["links_added"] == 5, batch
        reader = Reader(db_path(data))
        try:
            assert reader.count(post, LIKE, ".subject.uri") == 3
            assert reader.distinct_count(post, LIKE, ".subject.uri") == 2
            assert reader.count(c, FOLLOW, ".subject") == 2
            assert sorted(reader.distinct_dids(c, FOLLOW, ".subject").items) == sorted([a, b])
            assert reader.stats()["links"] == 5
            assert reader.record(post)["value"] == {"$type": POST, "text": "hi"}
        finally:
            reader.close()




@pytest.mark.parametrize("kind", [
    "utf8", "time_us", "seq",
])
def test_lines_that_break_the_writer_are_skipped_not_fatal(tmp_path, smalldp_import, kind):
    a, b = did_of(1), did_of(2)
    cap = Capture(7)
    for did in (a, b, a):
        cap.put(did, FOLLOW, {"$type": FOLLOW, "subject": did_of(3)}, [(".subject", did_of(3))])
    bad = {
        # invalid UTF-8 (a lone 0xff byte) inside a record string
        "utf8": cap.lines[0].replace('"$type":"app.bsky.graph.follow"',
                                     '"$type":"app.bsky.graph.follow","t":"\udcff"'),
        # time_us beyond SQLite's 64-bit integers
        "time_us": json.dumps({"did": a, "time_us": 2**63, "kind": "identity", "identity": {"seq": 1}}),
        # account seq beyond SQLite's 64-bit integers
        "seq": json.dumps({"did": b, "time_us": BASE_US, "kind": "account",
                           "account": {"active": True, "seq": 2**64 - 1}}),
    }[kind]
    lines = [cap.lines[0], bad, cap.lines[1], cap.lines[2]]
    path = tmp_path / "bad.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape") + b"\n")
    summary = smalldp_import(tmp_path / "store", [path], "--batch-events", "1")
    assert summary["events"] == 3
    assert summary["skipped"] == 1
    reader = Reader(db_path(tmp_path / "store"))
    try:
        assert reader.count(did_of(3), FOLLOW, ".subject") == 3
    finally:
        reader.close()


def _likers_capture(n: int) -> tuple[Capture, str, list[str]]:
    cap = Capture(8)
    post = cap.put(did_of(0), POST, {"$type": POST, "text": "popular"}, [])
    likers = [did_of(100 + i) for i in range(n)]  # each first seen on its own like, in this order
    for did in likers:
        cap.put(did, LIKE, {"$type": LIKE, "subject": {"uri": post, "cid": "bafyreic"}}, [(".subject.uri", post)])
    return cap, post, likers


def test_distinct_dids_newest_seen_first_in_single_event_batches(tmp_path, smalldp_import):
    cap, post, likers = _likers_capture(50)
    path = write_lines(tmp_path / "likes.jsonl", cap.lines)
    smalldp_import(tmp_path / "store", [path], "--batch-events", "1")
    reader = Reader(db_path(tmp_path / "store"))
    try:
        assert reader.distinct_dids(post, LIKE, ".subject.uri", limit=50).items == likers[::-1]
    finally:
        reader.close()


def test_distinct_dids_newest_seen_first_in_one_batch(tmp_path, smalldp_import):
    cap, post, likers = _likers_capture(50)
    path = write_lines(tmp_path / "likes.jsonl", cap.lines)
    smalldp_import(tmp_path / "store", [path])  # one batch
    reader = Reader(db_path(tmp_path / "store"))
    try:
        assert reader.distinct_dids(post, LIKE, ".subject.uri", limit=50).items == likers[::-1]
    finally:
        reader.close()


def test_summary_json_fields(tmp_path, smalldp_import):
    cap = realistic_capture(2000, seed=2)
    path = write_lines(tmp_path / "cap.jsonl", cap.lines)
    summary = smalldp_import(tmp_path / "store", [path])
    assert {"events", "skipped", "links_added", "seconds", "events_per_s"} <= set(summary)
    assert summary["events"] == cap.valid_events == len(cap.lines)
    assert summary["skipped"] == 0
    assert isinstance(summary["seconds"], (int, float)) and summary["seconds"] >= 0
    assert isinstance(summary["events_per_s"], (int, float))
    if summary["seconds"] > 0.01:  # both fields are rounded (3 and 1 decimals)
        assert summary["events_per_s"] == pytest.approx(summary["events"] / summary["seconds"], rel=0.1)
    # links added minus removed is what is live
    assert summary["links_added"] - summary["links_removed"] == cap.total_links()
    keys, targets, uris = query_keys(cap)
    assert answers(tmp_path / "store", keys, targets, uris) == expected_answers(cap, keys, targets, uris)


def test_zst_imports_like_plain(tmp_path, smalldp_import):
    cap = realistic_capture(3000, seed=3, garbage=True)
    assert cap.malformed > 0
    data = ("\n".join(cap.lines) + "\n").encode()
    plain = tmp_path / "cap.jsonl"
    plain.write_bytes(data)
    # two zstd frames, split in the middle of a line: a reader must cross frames
    cut = len(data) // 2 + 7
    zst = tmp_path / "cap.jsonl.zst"
    compressor = zstandard.ZstdCompressor(level=3)
    zst.write_bytes(compressor.compress(data[:cut]) + compressor.compress(data[cut:]))
    s_plain = smalldp_import(tmp_path / "plain", [plain], "--batch-events", "700")
    s_zst = smalldp_import(tmp_path / "zst", [zst], "--batch-events", "700")
    for field in ("events", "skipped", "ignored", "links_added", "links_removed"):
        assert s_plain[field] == s_zst[field], field
    assert s_zst["events"] == cap.valid_events
    assert s_zst["skipped"] == cap.malformed
    keys, targets, uris = query_keys(cap)
    expected = expected_answers(cap, keys, targets, uris)
    assert answers(tmp_path / "zst", keys, targets, uris) == expected
    assert answers(tmp_path / "plain", keys, targets, uris) == expected
    # importing the .zst again resumes at its end
    again = smalldp_import(tmp_path / "zst", [zst])
    assert again["events"] == 0 and again["links_added"] == 0


def test_import_twice_resumes_and_changes_nothing(tmp_path, smalldp_import):
    cap = realistic_capture(3000, seed=4)
    path = write_lines(tmp_path / "cap.jsonl", cap.lines)
    data = tmp_path / "store"
    first = smalldp_import(data, [path], "--batch-events", "250")
    assert first["events"] == cap.valid_events
    keys, targets, uris = query_keys(cap)
    before = answers(data, keys, targets, uris)
    assert before == expected_answers(cap, keys, targets, uris)
    second = smalldp_import(data, [path], "--batch-events", "250")
    assert second["events"] == 0 and second["skipped"] == 0
    assert second["links_added"] == 0 and second["links_removed"] == 0
    assert answers(data, keys, targets, uris) == before
    # --restart reads it all again: all replays, nothing changes
    third = smalldp_import(data, [path], "--restart", "--batch-events", "999")
    assert third["events"] == cap.valid_events
    assert third["links_added"] == 0 and third["links_removed"] == 0
    assert answers(data, keys, targets, uris) == before


def test_grown_file_is_read_again_and_new_events_applied(tmp_path, smalldp_import):
    cap = realistic_capture(1500, seed=5)
    half = len(cap.lines) // 2
    path = write_lines(tmp_path / "cap.jsonl", cap.lines[:half])
    data = tmp_path / "store"
    smalldp_import(data, [path])
    write_lines(path, cap.lines)  # the capture grew: size differs, so it is read from the start
    summary = smalldp_import(data, [path])
    assert summary["events"] == len(cap.lines)
    keys, targets, uris = query_keys(cap)
    assert answers(data, keys, targets, uris) == expected_answers(cap, keys, targets, uris)


CRASH_EVENTS = 30_000
CRASH_TRIALS = 4


def _import_cmd(data: Path, path: Path) -> list[str]:
    return [sys.executable, "-m", "smalldp.cli", "import", "--json", "--batch-events", "500",
            "--data-dir", str(data), str(path)]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMALLDP_") and k != "STATE_DIRECTORY"}
    env["SMALLDP_LOG_LEVEL"] = "warning"
    return env


def test_sigkill_at_random_moments_then_resume_equals_clean_import(tmp_path):
    cap = realistic_capture(CRASH_EVENTS, seed=6, garbage=True)
    path = write_lines(tmp_path / "capture.jsonl", cap.lines)
    keys, targets, uris = query_keys(cap)

    clean = tmp_path / "clean"
    started = time.monotonic()
    done = subprocess.run(_import_cmd(clean, path), env=_env(), capture_output=True, text=True, timeout=120)
    clean_seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["events"] == cap.valid_events and summary["skipped"] == cap.malformed
    reference = answers(clean, keys, targets, uris)
    # the clean import itself is right
    assert reference == expected_answers(cap, keys, targets, uris)
    hot = max(cap.index().values(), key=len)
    assert len(hot) > 512  # some backlink lists span several chunks (512 entries each) and runs

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    partial = 0
    for trial in range(CRASH_TRIALS):
        # one random moment in each quarter of the clean run's duration
        low = max(0.05, clean_seconds * trial / CRASH_TRIALS)
        delay = rng.uniform(low, max(low, clean_seconds * (trial + 1) / CRASH_TRIALS))
        data = tmp_path / f"crash-{trial}"
        proc = subprocess.Popen(_import_cmd(data, path), env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        context = f"seed={seed} trial={trial} delay={delay:.3f}s of {clean_seconds:.3f}s"
        committed = None
        if db_path(data).exists():
            try:
                reader = Reader(db_path(data))
                committed = reader.stats()["cursor"]
                reader.close()
            except Exception:  # killed before the schema was written
                committed = None
        resumed = subprocess.run(_import_cmd(data, path), env=_env(), capture_output=True, text=True,
                                 timeout=120)
        assert resumed.returncode == 0, (context, resumed.stderr)
        resumed_events = json.loads(resumed.stdout)["events"]
        if proc.returncode == -signal.SIGKILL and committed is not None and resumed_events > 0:
            partial += 1
            # it resumed after the last commit rather than starting over
            assert resumed_events < cap.valid_events, context
        assert answers(data, keys, targets, uris) == reference, context
    assert partial >= 1, f"no trial was killed mid-import (seed={seed}, clean run {clean_seconds:.2f}s)"
