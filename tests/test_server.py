"""HTTP tests: the real aiohttp app over a real SQLite file, queried over real sockets.

Every expected value comes from the events the test builds (by hand, or by a
plain computation over them), never from the program's own answers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smalldp.store.writer import Writer

from helpers_server import (
    FOLLOW,
    GET_BACKLINKS,
    GET_COUNT,
    GET_DIDS,
    GET_M2M,
    GET_MANY,
    GET_RECORD,
    HEALTH,
    LIKE,
    LIST,
    LISTITEM,
    POST,
    REPOST,
    Client,
    Events,
    Reply,
    ServerThread,
    apply,
    at_uri,
    did,
    iso,
    running,
    tid,
)

pytestmark = pytest.mark.timeout(120)

LIKE_SOURCE = f"{LIKE}:subject.uri"
LISTITEM_SOURCE = f"{LISTITEM}:list"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def page_all(client: Client, path: str, params: dict[str, Any], key: str,
                   max_pages: int = 200) -> tuple[list[Any], list[dict[str, Any]]]:
    """Follow cursors to the end; (all items concatenated, every page body)."""
    items: list[Any] = []
    pages: list[dict[str, Any]] = []
    cursor = None
    for _ in range(max_pages):
        query = dict(params)
        if cursor is not None:
            query["cursor"] = cursor
        body = await client.ok(path, query)
        pages.append(body)
        items += body[key]
        cursor = body["cursor"]
        if cursor is None:
            return items, pages
    raise AssertionError(f"no last page after {max_pages} pages")


def rec(repo: str, collection: str, rkey: str) -> dict[str, str]:
    return {"did": repo, "collection": collection, "rkey": rkey}


# ---------------------------------------------------------------- a small corpus

AUTHOR = did("author")
LIKERS = [did(f"liker{i}") for i in range(1, 8)]  # liker1 .. liker7
STRANGER = did("stranger")  # a valid DID that never appears in any event
POST_URI = at_uri(AUTHOR, POST, tid(0))
OTHER_POST_URI = at_uri(AUTHOR, POST, tid(500))
# rkey time offsets (ms) of each liker's first like of POST_URI: not in liker order
FIRST_LIKE_MS = [5, 2, 7, 1, 6, 3, 4]


@dataclass
class Corpus:
    path: Path
    writer: Writer
    events: Events
    likes: list[tuple[str, str]] = field(default_factory=list)  # (did, rkey) of likes of POST_URI
    cursor: int = 0

    def newest_first(self, likes: list[tuple[str, str]] | None = None) -> list[dict[str, str]]:
        # TIDs sort as strings in time order: an independent way to get "newest first"
        ordered = sorted(self.likes if likes is None else likes, key=lambda x: x[1], reverse=True)
        return [rec(d, LIKE, r) for d, r in ordered]


def build_corpus(tmp_path: Path, fanout: int = 8) -> Corpus:
    """POST_URI: 8 likes from 7 accounts (liker3 twice), 2 reposts, a reply.
    OTHER_POST_URI: 2 likes.  AUTHOR: followed by liker1..3.

    Each liker first appears alone in its own batch, so account IDs (the order of
    getBacklinkDids) follow liker1 .. liker7.
    """
    path = tmp_path / "smalldp.sqlite"
    corpus = Corpus(path, Writer(path, fanout=fanout), Events())
    ev = corpus.events
    corpus.cursor = apply(corpus.writer, [
        ev.post(AUTHOR, tid(0), "the post"), ev.post(AUTHOR, tid(500), "another post")])
    for liker, ms in zip(LIKERS, FIRST_LIKE_MS):
        rkey = tid(ms * 1000)
        corpus.cursor = apply(corpus.writer, [ev.like(liker, rkey, POST_URI)])
        corpus.likes.append((liker, rkey))
    second = (LIKERS[2], tid(8000))  # liker3 likes again: the newest like
    corpus.likes.append(second)
    corpus.cursor = apply(corpus.writer, [
        ev.like(second[0], second[1], POST_URI),
        ev.like(LIKERS[0], tid(9000), OTHER_POST_URI),
        ev.like(LIKERS[1], tid(9001), OTHER_POST_URI),
        ev.repost(LIKERS[3], tid(10_000), POST_URI),
        ev.repost(LIKERS[4], tid(10_001), POST_URI),
        ev.post(LIKERS[5], tid(11_000), "a reply", reply_to=POST_URI),
        ev.follow(LIKERS[0], tid(12_000), AUTHOR),
        ev.follow(LIKERS[1], tid(12_001), AUTHOR),
        ev.follow(LIKERS[2], tid(12_002), AUTHOR),
    ])
    return corpus


LIVE_LINKS = 8 + 2 + 2 + 2 + 3  # likes of POST_URI, of OTHER_POST_URI, reposts, reply parent+root, follows


# ---------------------------------------------------------------- getBacklinks


def test_get_backlinks_order_reverse_paging_and_filters(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path)
    expected = corpus.newest_first()
    assert len(expected) == 8

    async def main() -> None:
        async with running(corpus.path) as client:
            base = {"subject": POST_URI, "source": LIKE_SOURCE}
            body = await client.ok(GET_BACKLINKS, base)
            assert body == {"total": 8, "records": expected, "cursor": None}

            body = await client.ok(GET_BACKLINKS, {**base, "reverse": "true"})
            assert body == {"total": 8, "records": expected[::-1], "cursor": None}
            body = await client.ok(GET_BACKLINKS, {**base, "reverse": "false"})
            assert body["records"] == expected

            for reverse, want in (("false", expected), ("true", expected[::-1])):
                items, pages = await page_all(client, GET_BACKLINKS, {**base, "limit": 3, "reverse": reverse},
                                              "records")
                assert items == want
                assert [len(p["records"]) for p in pages] == [3, 3, 2]
                assert all(p["total"] == 8 for p in pages)
                assert all(isinstance(p["cursor"], str) for p in pages[:-1])

            # exactly one page's worth: no cursor
            items, pages = await page_all(client, GET_BACKLINKS, {**base, "limit": 8}, "records")
            assert len(pages) == 1 and items == expected

            # did filter, repeatable
            picked = [LIKERS[2], LIKERS[6]]
            want = [r for r in expected if r["did"] in picked]
            assert len(want) == 3  # liker3 twice, liker7 once
            body = await client.ok(GET_BACKLINKS, [*base.items(), ("did", picked[0]), ("did", picked[1])])
            assert body == {"total": 3, "records": want, "cursor": None}
            items, pages = await page_all(client, GET_BACKLINKS, {**base, "did": LIKERS[2], "limit": 1},
                                          "records")
            assert items == [r for r in expected if r["did"] == LIKERS[2]]
            assert [p["total"] for p in pages] == [2, 2]
            # a valid DID that never linked: nothing
            body = await client.ok(GET_BACKLINKS, {**base, "did": STRANGER})
            assert body == {"total": 0, "records": [], "cursor": None}

            # the other post, other sources, unknown subjects
            body = await client.ok(GET_BACKLINKS, {"subject": OTHER_POST_URI, "source": LIKE_SOURCE})
            assert body["total"] == 2
            assert body["records"] == [rec(LIKERS[1], LIKE, tid(9001)), rec(LIKERS[0], LIKE, tid(9000))]
            body = await client.ok(GET_BACKLINKS, {"subject": POST_URI, "source": f"{REPOST}:subject.uri"})
            assert body["records"] == [rec(LIKERS[4], REPOST, tid(10_001)), rec(LIKERS[3], REPOST, tid(10_000))]
            body = await client.ok(GET_BACKLINKS, {"subject": POST_URI, "source": f"{POST}:reply.parent.uri"})
            assert body["records"] == [rec(LIKERS[5], POST, tid(11_000))]
            body = await client.ok(GET_BACKLINKS, {"subject": AUTHOR, "source": f"{FOLLOW}:subject"})
            assert body["total"] == 3
            assert body["records"] == [rec(LIKERS[i], FOLLOW, tid(12_000 + i)) for i in (2, 1, 0)]
            for subject, source in ((POST_URI, f"{LIKE}:subject.cid"), (POST_URI, f"{FOLLOW}:subject"),
                                    (at_uri(AUTHOR, POST, tid(1)), LIKE_SOURCE),
                                    ("https://example.com/nothing", LIKE_SOURCE), (STRANGER, f"{FOLLOW}:subject")):
                body = await client.ok(GET_BACKLINKS, {"subject": subject, "source": source})
                assert body == {"total": 0, "records": [], "cursor": None}, (subject, source)

    run(main())


def test_get_backlinks_limits_across_chunks_runs_and_deletes(tmp_path: Path) -> None:
    """1100 likes of one post: default limit 100, max 1000, across merged runs and
    multi-chunk blocks, before and after deletes and a full compaction."""
    path = tmp_path / "smalldp.sqlite"
    writer = Writer(path, fanout=2)  # 8 batches of 100 merge into a run of 800: two chunks
    ev = Events()
    target = at_uri(AUTHOR, POST, tid(0))
    accounts = [did(f"fan{i}") for i in range(40)]
    likes = [(accounts[(i * 7) % 40], tid(1_000 * i, i % 5)) for i in range(1100)]
    order = list(range(1100))
    order = order[::2] + order[1::2][::-1]  # land out of rkey order
    for start in range(0, 1100, 100):
        apply(writer, [ev.like(*likes[i], target) for i in order[start:start + 100]])

    def newest_first(live: list[tuple[str, str]]) -> list[dict[str, str]]:
        return [rec(d, LIKE, r) for d, r in sorted(live, key=lambda x: x[1], reverse=True)]

    async def check(client: Client, live: list[tuple[str, str]]) -> None:
        want = newest_first(live)
        base = {"subject": target, "source": LIKE_SOURCE}
        body = await client.ok(GET_BACKLINKS, base)
        assert body["total"] == len(live)
        assert body["records"] == want[:100] and body["cursor"] is not None
        items, pages = await page_all(client, GET_BACKLINKS, {**base, "limit": 1000}, "records")
        assert len(live) > 1000
        assert [len(p["records"]) for p in pages] == [1000, len(live) - 1000]
        assert items == want
        items, _ = await page_all(client, GET_BACKLINKS, {**base, "limit": 1000, "reverse": "true"}, "records")
        assert items == want[::-1]
        items, _ = await page_all(client, GET_BACKLINKS, {**base, "limit": 337}, "records")
        assert items == want
        assert (await client.ok(GET_COUNT, base))["total"] == len(live)
        assert (await client.ok(GET_DIDS, base))["total"] == len({d for d, _ in live})
        by_one = [r for r in want if r["did"] == accounts[3]]
        body = await client.ok(GET_BACKLINKS, {**base, "did": accounts[3], "limit": 1000})
        assert body == {"total": len(by_one), "records": by_one, "cursor": None}

    async def main() -> None:
        async with running(path) as client:
            await check(client, likes)
            gone = set(range(0, 1100, 23)) | set(range(500, 520))  # deletes spread across chunks
            apply(writer, [ev.delete(likes[i][0], LIKE, likes[i][1]) for i in sorted(gone)])
            live = [like for i, like in enumerate(likes) if i not in gone]
            await check(client, live)
            writer.compact(full=True)
            await check(client, live)

    run(main())
    writer.close()


def test_get_backlinks_paging_with_equal_rkeys(tmp_path: Path) -> None:
    """Many accounts liking with the same rkey (equal sort keys): cursors must still
    neither repeat nor skip, across batches, merged runs and multi-chunk blocks."""
    path = tmp_path / "smalldp.sqlite"
    writer = Writer(path, fanout=2)
    ev = Events()
    target = at_uri(AUTHOR, POST, tid(0))
    accounts = [did(f"same{i}") for i in range(60)]
    likes = [(a, tid(1000 * k)) for k in range(12) for a in accounts]  # 720 likes, 12 distinct rkeys
    for start in range(0, len(likes), 90):
        apply(writer, [ev.like(d, r, target) for d, r in likes[start:start + 90]])
    want = sorted(likes)

    async def check(client: Client) -> None:
        base = {"subject": target, "source": LIKE_SOURCE}
        for limit in (7, 60, 512):
            for reverse in ("false", "true"):
                items, pages = await page_all(client, GET_BACKLINKS, {**base, "limit": limit, "reverse": reverse},
                                              "records")
                pairs = [(r["did"], r["rkey"]) for r in items]
                assert len(pairs) == len(set(pairs)) == len(likes), (limit, reverse)
                assert sorted(pairs) == want
                rkeys = [p[1] for p in pairs]
                assert rkeys == sorted(rkeys, reverse=reverse == "false")
                assert all(p["total"] == len(likes) for p in pages)

    async def main() -> None:
        async with running(path) as client:
            await check(client)
            writer.compact(full=True)
            await check(client)

    run(main())
    writer.close()


# ---------------------------------------------------------------- counts and distinct DIDs


def test_counts_and_distinct_dids(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path)
    # account IDs follow first sight: liker1 .. liker7; listed newest-seen first
    newest_seen_first = LIKERS[::-1]

    async def main() -> None:
        async with running(corpus.path) as client:
            base = {"subject": POST_URI, "source": LIKE_SOURCE}
            assert await client.ok(GET_COUNT, base) == {"total": 8}
            assert await client.ok(GET_COUNT, [*base.items(), ("did", LIKERS[2]), ("did", LIKERS[0])]) == {"total": 3}
            assert await client.ok(GET_COUNT, {**base, "did": STRANGER}) == {"total": 0}
            assert await client.ok(GET_COUNT, {"subject": AUTHOR, "source": f"{FOLLOW}:subject"}) == {"total": 3}
            assert await client.ok(GET_COUNT, {"subject": OTHER_POST_URI, "source": LIKE_SOURCE}) == {"total": 2}
            assert await client.ok(GET_COUNT, {"subject": STRANGER, "source": LIKE_SOURCE}) == {"total": 0}

            body = await client.ok(GET_DIDS, base)
            assert body == {"total": 7, "linking_dids": newest_seen_first, "cursor": None}
            items, pages = await page_all(client, GET_DIDS, {**base, "limit": 2}, "linking_dids")
            assert items == newest_seen_first
            assert [len(p["linking_dids"]) for p in pages] == [2, 2, 2, 1]
            assert all(p["total"] == 7 for p in pages)
            body = await client.ok(GET_DIDS, {"subject": OTHER_POST_URI, "source": LIKE_SOURCE})
            assert body == {"total": 2, "linking_dids": [LIKERS[1], LIKERS[0]], "cursor": None}
            body = await client.ok(GET_DIDS, {"subject": STRANGER, "source": LIKE_SOURCE})
            assert body == {"total": 0, "linking_dids": [], "cursor": None}

            legacy = {"target": POST_URI, "collection": LIKE, "path": ".subject.uri"}
            assert await client.ok("/links/count", legacy) == {"total": 8}
            assert await client.ok("/links/count/distinct-dids", legacy) == {"total": 7}
            body = await client.ok("/links/distinct-dids", legacy)
            assert body == {"total": 7, "linking_dids": newest_seen_first, "cursor": None}
            items, _ = await page_all(client, "/links/distinct-dids", {**legacy, "limit": 3}, "linking_dids")
            assert items == newest_seen_first
            follows = {"target": AUTHOR, "collection": FOLLOW, "path": ".subject"}
            assert await client.ok("/links/count", follows) == {"total": 3}
            assert await client.ok("/links/count/distinct-dids", follows) == {"total": 3}

            # a delete takes one link away; liker3 still links through its other like
            apply(corpus.writer, [corpus.events.delete(LIKERS[2], LIKE, tid(8000))])
            assert await client.ok(GET_COUNT, base) == {"total": 7}
            assert (await client.ok(GET_DIDS, base))["total"] == 7
            apply(corpus.writer, [corpus.events.delete(LIKERS[2], LIKE, tid(7000))])
            assert await client.ok(GET_COUNT, base) == {"total": 6}
            body = await client.ok(GET_DIDS, base)
            assert body["total"] == 6 and body["linking_dids"] == [d for d in newest_seen_first if d != LIKERS[2]]
            assert await client.ok("/links/count/distinct-dids", legacy) == {"total": 6}

    run(main())


# ---------------------------------------------------------------- legacy routes


def test_legacy_links_and_all(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path)
    expected = corpus.newest_first()

    async def main() -> None:
        async with running(corpus.path) as client:
            legacy = {"target": POST_URI, "collection": LIKE, "path": ".subject.uri"}
            body = await client.ok("/links", legacy)
            assert body == {"total": 8, "linking_records": expected, "cursor": None}
            items, pages = await page_all(client, "/links", {**legacy, "limit": 3}, "linking_records")
            assert items == expected and len(pages) == 3
            body = await client.ok("/links", [*legacy.items(), ("did", LIKERS[2])])
            assert body == {"total": 2, "linking_records": [r for r in expected if r["did"] == LIKERS[2]],
                            "cursor": None}
            body = await client.ok("/links", {"target": AUTHOR, "collection": FOLLOW, "path": ".subject"})
            assert body["linking_records"] == [rec(LIKERS[i], FOLLOW, tid(12_000 + i)) for i in (2, 1, 0)]
            body = await client.ok("/links", {"target": POST_URI, "collection": POST, "path": ".reply.root.uri"})
            assert body == {"total": 1, "linking_records": [rec(LIKERS[5], POST, tid(11_000))], "cursor": None}

            want_all = {
                LIKE: {".subject.uri": {"records": 8, "distinct_dids": 7}},
                REPOST: {".subject.uri": {"records": 2, "distinct_dids": 2}},
                POST: {".reply.parent.uri": {"records": 1, "distinct_dids": 1},
                       ".reply.root.uri": {"records": 1, "distinct_dids": 1}},
            }
            assert await client.ok("/links/all", {"target": POST_URI}) == {"links": want_all}
            assert await client.ok("/links/all/count", {"target": POST_URI}) == {"links": {
                coll: {path: v["records"] for path, v in paths.items()} for coll, paths in want_all.items()}}
            assert await client.ok("/links/all", {"target": AUTHOR}) == {
                "links": {FOLLOW: {".subject": {"records": 3, "distinct_dids": 3}}}}
            assert await client.ok("/links/all/count", {"target": OTHER_POST_URI}) == {
                "links": {LIKE: {".subject.uri": 2}}}
            for nothing in (STRANGER, at_uri(AUTHOR, POST, tid(1)), "https://example.com/x", LIKERS[6]):
                assert await client.ok("/links/all", {"target": nothing}) == {"links": {}}, nothing
                assert await client.ok("/links/all/count", {"target": nothing}) == {"links": {}}, nothing

            # both reposts gone: the repost collection disappears from /links/all
            apply(corpus.writer, [corpus.events.delete(LIKERS[3], REPOST, tid(10_000)),
                                  corpus.events.delete(LIKERS[4], REPOST, tid(10_001))])
            del want_all[REPOST]
            assert await client.ok("/links/all", {"target": POST_URI}) == {"links": want_all}

    run(main())


# ---------------------------------------------------------------- many-to-many


def test_many_to_many_counts(tmp_path: Path) -> None:
    path = tmp_path / "smalldp.sqlite"
    writer = Writer(path)
    ev = Events()
    owner, helper, other_owner = did("owner"), did("helper"), did("otherowner")
    list1 = at_uri(owner, LIST, tid(1))
    list2 = at_uri(other_owner, LIST, tid(2))
    members = [did(f"member{i}") for i in range(1, 5)]
    # (author, rkey, list, subject)
    items = [
        (owner, tid(10), list1, members[0]),
        (owner, tid(11), list1, members[1]),
        (owner, tid(12), list1, members[2]),
        (owner, tid(13), list1, members[0]),  # the same member listed twice by one account
        (helper, tid(14), list1, members[0]),
        (helper, tid(15), list1, members[3]),
        (other_owner, tid(16), list2, members[1]),  # another list: never counted for list1
        (owner, tid(17), list1, "https://example.com/not-a-did"),
    ]
    apply(writer, [ev.listitem(a, r, lst, s) for a, r, lst, s in items])

    def expected(dids: set[str] | None = None, others: set[str] | None = None) -> list[dict[str, Any]]:
        groups: dict[str, list[str]] = {}
        for author, _, lst, subject in items:
            if lst != list1 or (dids is not None and author not in dids):
                continue
            if others is not None and subject not in others:
                continue
            groups.setdefault(subject, []).append(author)
        return [{"subject": s, "total": len(a), "distinct": len(set(a))} for s, a in sorted(groups.items())]

    async def main() -> None:
        async with running(path) as client:
            base = {"subject": list1, "source": LISTITEM_SOURCE, "pathToOther": "subject"}
            want = expected()
            assert want[-1]["subject"] == "https://example.com/not-a-did"  # 'd' < 'h'
            assert {"subject": members[0], "total": 3, "distinct": 2} in want
            body = await client.ok(GET_M2M, base)
            assert body == {"counts_by_other_subject": want, "cursor": None}
            for limit in (1, 2, 3):
                got, pages = await page_all(client, GET_M2M, {**base, "limit": limit}, "counts_by_other_subject")
                assert got == want
                assert [len(p["counts_by_other_subject"]) for p in pages[:-1]] == [limit] * (len(pages) - 1)
            body = await client.ok(GET_M2M, [*base.items(), ("did", helper)])
            assert body == {"counts_by_other_subject": expected(dids={helper}), "cursor": None}
            body = await client.ok(GET_M2M, [*base.items(), ("otherSubject", members[0]),
                                             ("otherSubject", members[2]), ("otherSubject", STRANGER)])
            assert body == {"counts_by_other_subject": expected(others={members[0], members[2]}), "cursor": None}
            body = await client.ok(GET_M2M, [*base.items(), ("did", owner), ("otherSubject", members[0])])
            assert body["counts_by_other_subject"] == [{"subject": members[0], "total": 2, "distinct": 1}]
            body = await client.ok(GET_M2M, {**base, "subject": list2})
            assert body["counts_by_other_subject"] == [{"subject": members[1], "total": 1, "distinct": 1}]
            # grouping by the list itself: one group, every listitem of list1
            body = await client.ok(GET_M2M, {**base, "pathToOther": "list"})
            n_list1 = sum(1 for item in items if item[2] == list1)
            assert body["counts_by_other_subject"] == [{"subject": list1, "total": n_list1, "distinct": 2}]
            for nothing in ({"subject": at_uri(owner, LIST, tid(99))},
                            {"pathToOther": "nothing.here"}, {"source": f"{LIKE}:subject.uri"}):
                body = await client.ok(GET_M2M, {**base, **nothing})
                assert body == {"counts_by_other_subject": [], "cursor": None}, nothing

            # a deleted listitem leaves the counts
            apply(writer, [ev.delete(helper, LISTITEM, tid(14))])
            items.remove((helper, tid(14), list1, members[0]))
            assert (await client.ok(GET_M2M, base))["counts_by_other_subject"] == expected()

    run(main())
    writer.close()


# ---------------------------------------------------------------- records and health


def test_get_record(tmp_path: Path) -> None:
    """A record with a kept body: uri, cid, indexedAt and value as received, plus its rev,
    its own links (not smalldp's derived ones) and bodyKept; what is not live is RecordNotFound."""
    path = tmp_path / "smalldp.sqlite"
    writer = Writer(path)
    ev = Events()
    author = did("writer")
    created = ev.post(author, tid(1), "hello world", cid="bafyreihelloone")
    other = ev.post(author, tid(2), "second", reply_to=at_uri(author, POST, tid(1)))
    like = ev.like(author, tid(3), at_uri(author, POST, tid(1)))
    apply(writer, [created, other, like])
    uri = at_uri(author, POST, tid(1))

    async def main() -> None:
        async with running(path) as client:
            body = await client.ok(GET_RECORD, {"uri": uri})
            assert body == {"uri": uri, "cid": "bafyreihelloone", "indexedAt": iso(created["time_us"]),
                            "value": created["commit"]["record"], "rev": created["commit"]["rev"],
                            "links": [], "bodyKept": True}  # a post's author links are derived: not listed
            second = at_uri(author, POST, tid(2))
            body = await client.ok(GET_RECORD, {"uri": second})
            assert body == {"uri": second, "cid": other["commit"]["cid"], "indexedAt": iso(other["time_us"]),
                            "value": other["commit"]["record"], "rev": other["commit"]["rev"],
                            "links": [{"path": ".reply.parent.uri", "target": uri},
                                      {"path": ".reply.root.uri", "target": uri}], "bodyKept": True}

            # an update replaces value, cid, indexedAt and rev
            updated = ev.post(author, tid(1), "hello again", operation="update", cid="bafyreihellotwo")
            apply(writer, [updated])
            body = await client.ok(GET_RECORD, {"uri": uri})
            assert body == {"uri": uri, "cid": "bafyreihellotwo", "indexedAt": iso(updated["time_us"]),
                            "value": updated["commit"]["record"], "rev": updated["commit"]["rev"],
                            "links": [], "bodyKept": True}

            not_found = [
                at_uri(author, POST, tid(99)),  # never created
                at_uri(author, LIKE, tid(99)),  # never created, in a collection without bodies
                at_uri(did("nobody"), POST, tid(1)),  # unknown account
                at_uri(author, "com.example.nothing", tid(1)),  # unknown collection
                at_uri(author, POST, "self"),  # non-TID rkey never seen
                f"at://{author}/{POST}",  # no rkey
                f"at://{author}",
            ]
            apply(writer, [ev.delete(author, POST, tid(2)), ev.delete(author, LIKE, tid(3))])
            not_found.append(at_uri(author, POST, tid(2)))  # deleted
            not_found.append(at_uri(author, LIKE, tid(3)))  # deleted (a tombstone in the forward index)
            for missing in not_found:
                reply = await client.get(GET_RECORD, {"uri": missing})
                assert reply.status == 400, missing
                assert reply.json["error"] == "RecordNotFound", missing
                assert isinstance(reply.json["message"], str)

    run(main())
    writer.close()


def test_health(tmp_path: Path) -> None:
    path = tmp_path / "smalldp.sqlite"
    writer = Writer(path)  # creates the empty database

    async def main() -> None:
        async with running(path) as client:
            body = await client.ok(HEALTH)
            assert body["status"] == "ok"
            assert body["cursor"] is None and body["lag_s"] is None
            assert body["links"] == 0 and body["inactive_accounts"] == 0

        corpus = build_corpus(tmp_path / "full")
        now_us = int(time.time() * 1e6) - 30_000_000  # an event 30 s ago
        ev = corpus.events
        ev.now = now_us - 1000
        last = apply(corpus.writer, [ev.like(did("late"), tid(50_000), POST_URI)])
        assert last == now_us
        async with running(corpus.path) as client:
            body = await client.ok(HEALTH)
            assert body["status"] == "ok"
            assert body["cursor"] == now_us
            assert abs(body["lag_s"] - (time.time() - now_us / 1e6)) < 5
            assert 25 < body["lag_s"] < 60
            assert body["links"] == LIVE_LINKS + 1
            assert body["inactive_accounts"] == 0
            apply(corpus.writer, [ev.account(LIKERS[0], False, 3, "deactivated"),
                                  ev.account(LIKERS[1], False, 3, "takendown")])
            body = await client.ok(HEALTH)
            assert body["cursor"] == ev.now
            assert body["inactive_accounts"] == 2

    run(main())
    writer.close()


# ---------------------------------------------------------------- inactive accounts


def test_inactive_accounts_vanish_and_return(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path)
    ev = corpus.events
    gone = LIKERS[2]  # liker3: two likes of POST_URI, a follow of AUTHOR
    list_uri = at_uri(AUTHOR, LIST, tid(1))
    corpus.cursor = apply(corpus.writer, [
        ev.listitem(gone, tid(20_000), list_uri, AUTHOR),
        ev.listitem(LIKERS[0], tid(20_001), list_uri, AUTHOR),
        ev.post(gone, tid(21_000), "my own post"),
    ])
    own_post = at_uri(gone, POST, tid(21_000))
    all_likes = corpus.newest_first()
    hidden_likes = [r for r in all_likes if r["did"] != gone]
    legacy = {"target": POST_URI, "collection": LIKE, "path": ".subject.uri"}
    base = {"subject": POST_URI, "source": LIKE_SOURCE}
    m2m = {"subject": list_uri, "source": LISTITEM_SOURCE, "pathToOther": "subject"}

    async def expect(client: Client, visible: bool) -> None:
        likes = all_likes if visible else hidden_likes
        dids = LIKERS[::-1] if visible else [d for d in LIKERS[::-1] if d != gone]
        assert await client.ok(GET_BACKLINKS, base) == {"total": len(likes), "records": likes, "cursor": None}
        items, pages = await page_all(client, GET_BACKLINKS, {**base, "limit": 2}, "records")
        assert items == likes and all(p["total"] == len(likes) for p in pages)
        items, _ = await page_all(client, GET_BACKLINKS, {**base, "limit": 2, "reverse": "1"}, "records")
        assert items == likes[::-1]
        body = await client.ok(GET_BACKLINKS, {**base, "did": gone})
        assert body["total"] == (2 if visible else 0) and len(body["records"]) == body["total"]
        assert await client.ok(GET_COUNT, base) == {"total": len(likes)}
        assert await client.ok(GET_COUNT, {**base, "did": gone}) == {"total": 2 if visible else 0}
        assert await client.ok(GET_DIDS, base) == {"total": len(dids), "linking_dids": dids, "cursor": None}
        assert await client.ok("/links", legacy) == {"total": len(likes), "linking_records": likes, "cursor": None}
        assert await client.ok("/links/count", legacy) == {"total": len(likes)}
        assert await client.ok("/links/distinct-dids", legacy) == {
            "total": len(dids), "linking_dids": dids, "cursor": None}
        assert await client.ok("/links/count/distinct-dids", legacy) == {"total": len(dids)}
        assert (await client.ok("/links/all", {"target": POST_URI}))["links"][LIKE] == {
            ".subject.uri": {"records": len(likes), "distinct_dids": len(dids)}}
        assert (await client.ok("/links/all/count", {"target": AUTHOR}))["links"][FOLLOW] == {
            ".subject": 3 if visible else 2}
        assert (await client.ok(GET_COUNT, {"subject": AUTHOR, "source": f"{FOLLOW}:subject"}))["total"] == (
            3 if visible else 2)
        assert (await client.ok(GET_M2M, m2m))["counts_by_other_subject"] == [
            {"subject": AUTHOR, "total": 2 if visible else 1, "distinct": 2 if visible else 1}]
        record = await client.get(GET_RECORD, {"uri": own_post})
        if visible:
            assert record.status == 200 and record.json["value"]["text"] == "my own post"
        else:
            assert record.status == 400 and record.json["error"] == "RecordNotFound"
        assert (await client.ok(HEALTH))["inactive_accounts"] == (0 if visible else 1)

    async def main() -> None:
        async with running(corpus.path) as client:
            await expect(client, True)
            apply(corpus.writer, [ev.account(gone, False, 10, "deactivated")])
            await expect(client, False)
            # an account event that happened before the deactivation (seq 9), delivered
            # after it, saying active: a replay, still hidden
            before = ev.now - 10_000_000
            apply(corpus.writer, [ev.account(gone, True, 9, happened_us=before)])
            await expect(client, False)
            apply(corpus.writer, [ev.account(gone, True, 11)])
            await expect(client, True)
            apply(corpus.writer, [ev.account(gone, False, 12, "takendown")])
            await expect(client, False)
            apply(corpus.writer, [ev.account(gone, True, 13)])
            await expect(client, True)

    run(main())


# ---------------------------------------------------------------- paging while inserts land


@pytest.mark.parametrize("reverse", [False, True])
def test_paging_while_inserts_land(tmp_path: Path, reverse: bool) -> None:
    """Between page requests, new likes land: newer, older and in between.  The pages
    hold every like that existed when paging started exactly once, in order; a like
    landing ahead of the position already reached shows up, one behind it doesn't."""
    path = tmp_path / "smalldp.sqlite"
    writer = Writer(path, fanout=2)  # merges runs while paging goes on
    ev = Events()
    target = at_uri(AUTHOR, POST, tid(0))
    accounts = [did(f"acct{i}") for i in range(12)]
    # initial: rkeys at 100..119 ms (even ms only), from 12 accounts
    initial = {(accounts[i % 12], tid((100 + 2 * i) * 1000)) for i in range(10)}
    apply(writer, [ev.like(d, r, target) for d, r in sorted(initial)])
    live = set(initial)
    ahead = set()  # inserted past the position reached when they landed: must show up

    def wave(n: int) -> list[tuple[str, str]]:
        # per wave: one newer than all, one older than all, one between two initial likes
        return [(accounts[(n + 3) % 12], tid((200 + n) * 1000)),
                (accounts[(n + 5) % 12], tid((50 - n) * 1000)),
                (accounts[(n + 7) % 12], tid((101 + 4 * n) * 1000))]

    def key(r: dict[str, str]) -> str:
        return r["rkey"]

    async def main() -> list[dict[str, str]]:
        got: list[dict[str, str]] = []
        async with running(path) as client:
            params: dict[str, Any] = {"subject": target, "source": LIKE_SOURCE, "limit": 3}
            if reverse:
                params["reverse"] = "true"
            cursor = None
            for n in range(100):
                query = dict(params) if cursor is None else {**params, "cursor": cursor}
                body = await client.ok(GET_BACKLINKS, query)
                assert body["total"] == len(live)
                assert len(body["records"]) <= 3
                got.extend(body["records"])
                cursor = body["cursor"]
                if cursor is None:
                    return got
                assert len(body["records"]) == 3
                if n < 5:
                    position = key(got[-1])
                    new = wave(n)
                    apply(writer, [ev.like(d, r, target) for d, r in new])
                    live.update(new)
                    for d, r in new:
                        if (r > position) if reverse else (r < position):
                            ahead.add((d, r))
        raise AssertionError("paging did not end")

    got = run(main())
    pairs = [(r["did"], r["rkey"]) for r in got]
    assert all(r["collection"] == LIKE for r in got)
    assert len(pairs) == len(set(pairs)), "a record came twice"
    assert set(pairs) == initial | ahead
    rkeys = [p[1] for p in pairs]
    assert rkeys == sorted(rkeys, reverse=not reverse)
    assert ahead and len(live) > len(initial | ahead)  # the test did exercise both kinds
    writer.close()


# ---------------------------------------------------------------- bad parameters

POST_OK = POST_URI
BL = {"subject": POST_OK, "source": LIKE_SOURCE}
M2M = {"subject": POST_OK, "source": LISTITEM_SOURCE, "pathToOther": "subject"}
LEG = {"target": POST_OK, "collection": LIKE, "path": ".subject.uri"}
LIMITED = [GET_BACKLINKS, GET_DIDS, GET_M2M, GET_MANY, "/links", "/links/distinct-dids"]
BASES = {GET_BACKLINKS: BL, GET_COUNT: BL, GET_DIDS: BL, GET_M2M: M2M, GET_MANY: M2M, "/links": LEG,
         "/links/count": LEG, "/links/distinct-dids": LEG, "/links/count/distinct-dids": LEG}
SUBJECT_PARAM = {GET_BACKLINKS: "subject", GET_COUNT: "subject", GET_DIDS: "subject", GET_M2M: "subject",
                 GET_MANY: "subject", "/links": "target", "/links/count": "target", "/links/distinct-dids": "target",
                 "/links/count/distinct-dids": "target", "/links/all": "target", "/links/all/count": "target"}
DID_FILTER = {GET_BACKLINKS: "did", GET_COUNT: "did", GET_M2M: "did", GET_MANY: "linkDid", "/links": "did"}
# What each route answers when nothing matches (Constellation's empty shapes)
NOTHING: dict[str, Any] = {
    GET_BACKLINKS: {"total": 0, "records": [], "cursor": None}, GET_COUNT: {"total": 0},
    GET_DIDS: {"total": 0, "linking_dids": [], "cursor": None},
    GET_M2M: {"counts_by_other_subject": [], "cursor": None}, GET_MANY: {"items": [], "cursor": None},
    "/links": {"total": 0, "linking_records": [], "cursor": None}, "/links/count": {"total": 0},
    "/links/distinct-dids": {"total": 0, "linking_dids": [], "cursor": None},
    "/links/count/distinct-dids": {"total": 0}, "/links/all": {"links": {}}, "/links/all/count": {"links": {}},
}


def bad_cases() -> list[tuple[str, Any]]:
    """What really is malformed, on every route: a 400 InvalidRequest (as Constellation)."""
    cases: list[tuple[str, Any]] = []
    for route, name in SUBJECT_PARAM.items():
        base = BASES.get(route, {"target": POST_OK})
        cases.append((route, {}))
        cases.append((route, {k: v for k, v in base.items() if k != name}))
        cases.append((route, [*base.items(), (name, POST_OK)]))  # given twice
    for route in (GET_BACKLINKS, GET_COUNT, GET_DIDS, GET_M2M, GET_MANY):
        base = BASES[route]
        cases.append((route, {k: v for k, v in base.items() if k != "source"}))
        for source in ["app.bsky.feed.like", "", "app.bsky.feed.like.subject.uri"]:  # no ':'
            cases.append((route, {**base, "source": source}))
        cases.append((route, [*base.items(), ("source", LIKE_SOURCE)]))
    for route, name in DID_FILTER.items():
        cases.append((route, [*BASES[route].items(), *[(name, did(f"d{i}")) for i in range(1001)]]))  # too many
    for route in LIMITED:
        base = BASES[route]
        for limit in ["1001", "abc", "-1", "", "1.5", "1e3", "99999999999999999999999", " 5"]:
            cases.append((route, {**base, "limit": limit}))
        for cursor in ["!!!!", "abc", "a", "zzzzzzzzzzzzzzzzz", "é", "AAAA"]:
            cases.append((route, {**base, "cursor": cursor}))
        cases.append((route, [*base.items(), ("limit", "5"), ("limit", "6")]))
        cases.append((route, [*base.items(), ("cursor", "AAAA"), ("cursor", "AAAA")]))
    for reverse in ["maybe", "yes", "TRUE", "", "2"]:
        cases.append((GET_BACKLINKS, {**BL, "reverse": reverse}))
    for route in (GET_M2M, GET_MANY):  # pathToOther: missing, twice
        cases.append((route, {k: v for k, v in M2M.items() if k != "pathToOther"}))
        cases.append((route, [*M2M.items(), ("pathToOther", "subject")]))
    for route in ("/links", "/links/count", "/links/distinct-dids", "/links/count/distinct-dids"):
        for name in ("collection", "path"):
            cases.append((route, {k: v for k, v in LEG.items() if k != name}))
            cases.append((route, [*LEG.items(), (name, LEG[name])]))
    # /links: `did` and the deprecated `from_dids` together
    cases.append(("/links", {**LEG, "did": LIKERS[0], "from_dids": LIKERS[1]}))
    cases.append(("/links", [*LEG.items(), ("from_dids", LIKERS[0]), ("from_dids", LIKERS[1])]))
    # getRecord (a DataPlane method, strict): only at-uris
    for uri in [None, "", "did:plc:abc", "https://example.com/x", "at://", "not a uri", "at://a b/c/d"]:
        cases.append((GET_RECORD, {} if uri is None else {"uri": uri}))
    cases.append((GET_RECORD, [("uri", POST_OK), ("uri", POST_OK)]))
    return cases


def harmless_cases() -> list[tuple[str, Any, bool]]:
    """Odd but harmless values, which Constellation answers with 200: (route, params,
    finds nothing). False means the odd value is dropped and the answer is the base one."""
    cases: list[tuple[str, Any, bool]] = []
    not_links = ["", "notalink", "not a link", "example.com/x", "at://has space/x", "x" * 5000,
                 "https://" + "a" * 2100, "2026-05-25T14:23:29.807Z"]
    links_of_nothing = ["did:plc:", "DID:plc:abc", "at://", "http://", "did:plc:abc:", "mailto:nobody@example.com"]
    for route, name in SUBJECT_PARAM.items():
        base = BASES.get(route, {"target": POST_OK})
        for value in not_links + links_of_nothing:
            cases.append((route, {**base, name: value}, True))
    for route in (GET_BACKLINKS, GET_COUNT, GET_DIDS, GET_M2M, GET_MANY):
        for source in ["app.bsky.feed.like:", ":subject.uri", "app.bsky.feed.like:.subject.uri",
                       "not an nsid:subject.uri", "like:subject.uri", f"{LIKE}:subject.uri:x", ":"]:
            cases.append((route, {**BASES[route], "source": source}, True))
    for route, name in DID_FILTER.items():
        base = BASES[route]
        for value in ["alice", "did:", "did:plc:", "@alice.test", "did:PLC:abc", POST_OK, STRANGER]:
            cases.append((route, {**base, name: value}, True))  # a filter no record passes
        for value in ["", " ", "\t"]:
            cases.append((route, {**base, name: value}, False))  # dropped: no filter
        cases.append((route, [*base.items(), (name, ""), (name, "alice")], True))
    for route in (GET_M2M, GET_MANY):
        for value in [".subject", "", ".", "nothing.here", "subject[]"]:
            cases.append((route, {**M2M, "pathToOther": value}, True))
        for value in ["nope", "did:", STRANGER, "x" * 3000]:
            cases.append((route, {**M2M, "otherSubject": value}, True))
        for value in ["", "  "]:
            cases.append((route, {**M2M, "otherSubject": value}, False))
    for route in ("/links", "/links/count", "/links/distinct-dids", "/links/count/distinct-dids"):
        for value in ["subject.uri", ".", "", "..subject.uri"]:
            cases.append((route, {**LEG, "path": value}, True))
        for value in ["like", "app.bsky.feed.like:subject.uri", "", "app..bsky", "a" * 400]:
            cases.append((route, {**LEG, "collection": value}, True))
    for value in ["alice", STRANGER, f"{STRANGER},alice"]:
        cases.append(("/links", {**LEG, "from_dids": value}, True))
    for value in ["", ",", " , "]:
        cases.append(("/links", {**LEG, "from_dids": value}, False))
    cases.append(("/links", {**LEG, "did": "", "from_dids": ""}, False))
    return cases


def _harmless_corpus(tmp_path: Path) -> Corpus:
    """build_corpus plus a listitem naming POST_OK as its list, so the many-to-many
    routes have something to find with the base parameters too."""
    corpus = build_corpus(tmp_path)
    apply(corpus.writer, [corpus.events.listitem(LIKERS[0], tid(30_000), POST_URI, AUTHOR)])
    return corpus


def test_bad_parameters_are_400_invalid_request(tmp_path: Path) -> None:
    corpus = _harmless_corpus(tmp_path)
    cases = bad_cases()
    assert len(cases) > 150

    async def main() -> list[str]:
        failures = []
        async with running(corpus.path) as client:
            for route, params in cases:
                reply = await client.get(route, params)
                try:
                    body = reply.json
                    ok = (reply.status == 400 and reply.content_type == "application/json"
                          and body.get("error") == "InvalidRequest" and isinstance(body.get("message"), str)
                          and body["message"])
                except Exception:
                    ok = False
                if not ok:
                    failures.append(f"{route} {params!r:.200} -> {reply.status} {reply.body[:200]!r}")
            # sanity: the base parameters themselves are fine
            for route, base in BASES.items():
                await client.ok(route, base)
        return failures

    failures = run(main())
    assert not failures, "\n".join(failures)


def test_harmless_parameters_answer_200_with_zeros(tmp_path: Path) -> None:
    """What Constellation answers 200 for: an empty did=/otherSubject= is dropped, a
    subject that is no link (or no known one), a collection that is not an NSID, a path
    nobody uses, a DID filter no record passes all find nothing; limit=0 is an empty page."""
    corpus = _harmless_corpus(tmp_path)
    cases = harmless_cases()

    async def main() -> list[str]:
        failures = []
        async with running(corpus.path) as client:
            bases = {route: await client.ok(route, base) for route, base in
                     [*BASES.items(), ("/links/all", {"target": POST_OK}), ("/links/all/count", {"target": POST_OK})]}
            for route, body in bases.items():  # the base answers find something: zeros mean something
                assert body != NOTHING[route], route
            for route, params, nothing in cases:
                reply = await client.get(route, params)
                want = NOTHING[route] if nothing else bases[route]
                if reply.status != 200 or reply.content_type != "application/json" or reply.json != want:
                    failures.append(f"{route} {params!r:.200} -> {reply.status} {reply.body[:200]!r}")
            # limit=0: an empty page (and no cursor), the totals as usual
            for route in LIMITED:
                body = await client.ok(route, {**BASES[route], "limit": "0"})
                items = {k: v for k, v in body.items() if isinstance(v, list)}
                assert list(items.values()) == [[]] and body["cursor"] is None, (route, body)
                if "total" in body:
                    assert body["total"] == bases[route]["total"], route
        return failures

    failures = run(main())
    assert not failures, "\n".join(failures)


def test_unknown_methods_routes_and_http_methods(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path)

    async def main() -> None:
        async with running(corpus.path) as client:
            for method in ("some.unknown.method", "blue.microcosm.links.getNothing", "dev.smalldp.nope", "x"):
                reply = await client.get(f"/xrpc/{method}")
                assert reply.status == 501, method
                assert reply.content_type == "application/json"
                assert reply.json["error"] == "MethodNotImplemented"
                assert isinstance(reply.json["message"], str)
            reply = await client.get("/xrpc/some.unknown.method", BL)
            assert reply.status == 501 and reply.json["error"] == "MethodNotImplemented"
            reply = await client.get("/no/such/route")
            assert reply.status == 404 and reply.json["error"] == "NotFound"
            reply = await client.get(GET_COUNT, BL, method="POST")
            assert reply.status == 405 and reply.json["error"] == "InvalidRequest"
            reply = await client.get("/links/count", LEG, method="DELETE")
            assert reply.status == 405 and "error" in reply.json

    run(main())


# ---------------------------------------------------------------- cursors that once made a 500


@pytest.mark.parametrize("cursor", ["a", "_w", "AAAAA", "\u00e9"])
def test_many_to_many_garbage_cursor(tmp_path: Path, cursor: str) -> None:
    corpus = build_corpus(tmp_path)

    async def main() -> Reply:
        async with running(corpus.path) as client:
            return await client.get(GET_M2M, {**M2M, "cursor": cursor})

    reply = run(main())
    assert reply.status == 400 and reply.json["error"] == "InvalidRequest", (reply.status, reply.body)


@pytest.mark.parametrize("route", [GET_DIDS, "/links/distinct-dids"])
def test_distinct_dids_cursor_of_account_zero(tmp_path: Path, route: str) -> None:
    corpus = build_corpus(tmp_path)
    zero = "A" * 16  # base64 of 12 zero bytes: the struct (sort key 0, account id 0)

    async def main() -> Reply:
        async with running(corpus.path) as client:
            return await client.get(route, {**BASES[route], "cursor": zero})

    reply = run(main())
    assert reply.status < 500, (reply.status, reply.body)
    if reply.status == 200:
        assert reply.json["linking_dids"] == [] and reply.json["cursor"] is None
    else:
        assert reply.json["error"] == "InvalidRequest"


# ---------------------------------------------------------------- junk never makes a 500

ROUTE_PARAMS: dict[str, list[str]] = {
    GET_BACKLINKS: ["subject", "source", "did", "limit", "reverse", "cursor"],
    GET_COUNT: ["subject", "source", "did"],
    GET_DIDS: ["subject", "source", "limit", "cursor"],
    GET_M2M: ["subject", "source", "pathToOther", "did", "otherSubject", "limit", "cursor"],
    GET_MANY: ["subject", "source", "pathToOther", "linkDid", "otherSubject", "limit", "cursor"],
    "/links": ["target", "collection", "path", "did", "from_dids", "limit", "cursor"],
    "/links/count": ["target", "collection", "path"],
    "/links/distinct-dids": ["target", "collection", "path", "limit", "cursor"],
    "/links/count/distinct-dids": ["target", "collection", "path"],
    "/links/all": ["target"],
    "/links/all/count": ["target"],
    GET_RECORD: ["uri"],
    HEALTH: [],
}
VALID_VALUES: dict[str, list[str]] = {
    "subject": [POST_URI, AUTHOR, "https://example.com/x"],
    "target": [POST_URI, AUTHOR],
    "source": [LIKE_SOURCE, f"{FOLLOW}:subject", LISTITEM_SOURCE],
    "did": [LIKERS[0], LIKERS[2], STRANGER],
    "linkDid": [LIKERS[0], STRANGER],
    "from_dids": [f"{LIKERS[0]},{LIKERS[2]}", STRANGER],
    "otherSubject": [AUTHOR, POST_URI],
    "limit": ["1", "2", "1000"],
    "reverse": ["true", "false"],
    "cursor": [],  # filled with real cursors at run time
    "pathToOther": ["subject", "subject.uri"],
    "collection": [LIKE, FOLLOW],
    "path": [".subject.uri", ".subject"],
    "uri": [POST_URI, at_uri(AUTHOR, POST, tid(1))],
}
NO_JUNK: set[tuple[str, str]] = set()  # (route, parameter) pairs the junk generator leaves valid
OPTIONAL = {"did", "linkDid", "from_dids", "limit", "reverse", "cursor", "otherSubject"}


def test_junk_query_strings_never_500(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path)
    apply(corpus.writer, [corpus.events.listitem(LIKERS[0], tid(30_000), POST_URI, AUTHOR)])
    seen_statuses: set[int] = set()
    junk = st.text(max_size=40) | st.sampled_from(["", ".", ":", "at://", "did:plc:", "%", "\x00", "did:plc:x:"])

    with ServerThread(corpus.path) as server:
        cursors = {}
        for route, base in ((GET_BACKLINKS, BL), (GET_DIDS, BL), ("/links", LEG), ("/links/distinct-dids", LEG),
                            (GET_MANY, {**BL, "pathToOther": "subject.uri"})):
            body = server.get(route, {**base, "limit": "1"}).json
            cursors[route] = body["cursor"]
            assert isinstance(body["cursor"], str)
        m2m_page = server.get(GET_M2M, {"subject": POST_URI, "source": f"{LISTITEM}:list",
                                        "pathToOther": "subject"}).json
        assert m2m_page["counts_by_other_subject"] == [{"subject": AUTHOR, "total": 1, "distinct": 1}]

        @st.composite
        def queries(draw: st.DrawFn, route: str) -> list[tuple[str, str]]:
            """Mostly one junk parameter among valid ones (so junk reaches deep code),
            sometimes junk or nothing everywhere, plus unknown parameters."""
            names = ROUTE_PARAMS[route]
            everywhere = draw(st.integers(0, 3)) == 0
            junk_names = set() if not names else {draw(st.sampled_from(names))}
            query: list[tuple[str, str]] = []
            for name in names:
                valid = VALID_VALUES[name] or ([cursors[route]] if route in cursors else [])
                if (route, name) in NO_JUNK:
                    junk_here = False
                elif everywhere:
                    junk_here = draw(st.booleans())
                    if not junk_here:
                        continue  # absent
                else:
                    junk_here = name in junk_names
                if not junk_here:
                    if valid and (name not in OPTIONAL or draw(st.integers(0, 2))):
                        query.append((name, draw(st.sampled_from(valid))))
                    continue
                repeat = draw(st.integers(1, 3)) if name in ("did", "linkDid", "otherSubject") else 1
                query.extend((name, draw(junk)) for _ in range(repeat))
            extra = draw(st.lists(st.tuples(junk, junk), max_size=2))  # unknown parameters
            return query + extra

        @settings(max_examples=100, deadline=None, database=None, derandomize=False,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(data=st.data())
        def check(data: st.DataObject) -> None:
            for route in ROUTE_PARAMS:
                query = data.draw(queries(route), label=route)
                reply = server.get(route, query)
                seen_statuses.add(reply.status)
                assert reply.status < 500, (route, query, reply.status, reply.body[:300])
                assert reply.content_type == "application/json", (route, query)
                body = reply.json
                if reply.status >= 400:
                    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), (
                        route, query, body)
                else:
                    assert reply.status == 200 and isinstance(body, dict)

        check()
        # the server is still answering correctly after all that junk
        assert server.get(GET_COUNT, BL).json == {"total": 8}
    assert 200 in seen_statuses and 400 in seen_statuses


def test_get_record_without_body(tmp_path: Path) -> None:
    """A live record whose body smalldp does not keep (any collection outside
    body_collections: here likes, follows, listitems too) answers what the forward index
    holds: uri, rev and its links, bodyKept false, no cid, indexedAt or value. Rkeys that
    are not TIDs, updates, deletes and inactive accounts behave as for records with bodies."""
    path = tmp_path / "smalldp.sqlite"
    writer = Writer(path, body_collections=(POST,))
    ev = Events()
    author, friend, other = did("nobody1"), did("nobody2"), did("nobody3")
    post = at_uri(friend, POST, tid(1))
    list_uri = at_uri(author, LIST, tid(2))
    thing = {"$type": "com.example.thing", "homepage": "https://example.com/x", "owner": friend,
             "refs": [{"uri": post}, {"$type": "com.example.ref", "uri": list_uri}], "note": "plain text"}
    events = {
        "post": ev.post(friend, tid(1), "liked"),
        "like": ev.like(author, tid(10), post),
        "follow": ev.follow(author, tid(11), friend),
        "listitem": ev.listitem(author, tid(12), list_uri, other),
        "thing": ev.put(author, "com.example.thing", "main", thing),  # a non-TID rkey
        "bare": ev.put(author, "com.example.thing", tid(13), {"$type": "com.example.thing", "note": "no links"}),
    }
    nocid = ev.post(author, tid(14), "no cid")
    del nocid["commit"]["cid"]  # Jetstream may send none
    apply(writer, [*events.values(), nocid])
    uri = {name: at_uri(e["did"], e["commit"]["collection"], e["commit"]["rkey"]) for name, e in events.items()}
    want_links = {
        "like": [{"path": ".subject.uri", "target": post}],
        "follow": [{"path": ".subject", "target": friend}],  # its reverse '<.subject' link is smalldp's own
        "listitem": [{"path": ".list", "target": list_uri}, {"path": ".subject", "target": other}],
        "thing": [{"path": ".homepage", "target": "https://example.com/x"}, {"path": ".owner", "target": friend},
                  {"path": ".refs[].uri", "target": post}, {"path": ".refs[com.example.ref].uri", "target": list_uri}],
        "bare": [],
    }

    def bodyless(name: str, event: dict[str, Any]) -> dict[str, Any]:
        return {"uri": uri[name], "rev": event["commit"]["rev"], "links": want_links[name], "bodyKept": False}

    async def main() -> None:
        async with running(path) as client:
            for name in want_links:
                assert await client.ok(GET_RECORD, {"uri": uri[name]}) == bodyless(name, events[name]), name
            nocid_uri = at_uri(author, POST, tid(14))
            assert await client.ok(GET_RECORD, {"uri": nocid_uri}) == {
                "uri": nocid_uri, "indexedAt": iso(nocid["time_us"]), "value": nocid["commit"]["record"],
                "rev": nocid["commit"]["rev"], "links": [], "bodyKept": True}

            # an update: the new rev and links
            moved = ev.follow(author, tid(11), other)
            moved["commit"]["operation"] = "update"
            changed = dict(thing, owner=other, homepage="https://example.org/y")
            thing_update = ev.put(author, "com.example.thing", "main", changed, operation="update")
            apply(writer, [moved, thing_update])
            want_links["follow"] = [{"path": ".subject", "target": other}]
            want_links["thing"][:2] = [{"path": ".homepage", "target": "https://example.org/y"},
                                       {"path": ".owner", "target": other}]
            assert await client.ok(GET_RECORD, {"uri": uri["follow"]}) == bodyless("follow", moved)
            assert await client.ok(GET_RECORD, {"uri": uri["thing"]}) == bodyless("thing", thing_update)

            async def not_found(target: str) -> None:
                reply = await client.get(GET_RECORD, {"uri": target})
                assert reply.status == 400 and reply.json["error"] == "RecordNotFound", (target, reply.body[:200])

            # an inactive account's records are not found, and come back on reactivation
            apply(writer, [ev.account(author, False, 5, "deactivated")])
            for name in ("like", "follow", "thing"):
                await not_found(uri[name])
            apply(writer, [ev.account(author, True, 6)])
            assert await client.ok(GET_RECORD, {"uri": uri["like"]}) == bodyless("like", events["like"])

            # deleted: not found, the non-TID rkey too
            apply(writer, [ev.delete(author, LIKE, tid(10)), ev.delete(author, "com.example.thing", "main")])
            await not_found(uri["like"])
            await not_found(uri["thing"])
            assert await client.ok(GET_RECORD, {"uri": uri["listitem"]}) == bodyless("listitem", events["listitem"])

    run(main())
    writer.close()
