"""Constellation's clients, unchanged: CORS, getManyToMany, any absolute URI as a target,
/links?from_dids, and the JSON hello at `/`.

Real SQLite files, the real app on 127.0.0.1, real requests; every expected value is
built from the events written here (see helpers_server).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from smalldp.store.writer import Writer

from helpers_server import (
    GET_BACKLINKS,
    GET_COUNT,
    GET_MANY,
    HEALTH,
    LIKE,
    POST,
    Events,
    apply,
    at_uri,
    did,
    running,
    tid,
)

pytestmark = pytest.mark.timeout(120)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def rec(repo: str, collection: str, rkey: str) -> dict[str, str]:
    return {"did": repo, "collection": collection, "rkey": rkey}


# ---------------------------------------------------------------- CORS


def test_cors_on_every_response_and_preflights(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    ev = Events()
    author = did("author")
    apply(writer, [ev.post(author, tid(0), "p"), ev.like(did("fan"), tid(1), at_uri(author, POST, tid(0)))])
    writer.close()
    origin = "https://app.example"
    subject = {"subject": at_uri(author, POST, tid(0)), "source": f"{LIKE}:subject.uri"}

    async def main() -> None:
        async with running(path) as client:
            async def request(method: str, route: str, params: Any = None,
                              headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
                async with client.session.request(method, client.base + route, params=params,
                                                  headers={"Origin": origin, **(headers or {})}) as resp:
                    await resp.read()
                    return resp

            # every kind of answer carries the header: 200s, errors, the page, static files
            for method, route, params, status in [
                    ("GET", GET_COUNT, subject, 200), ("HEAD", GET_COUNT, subject, 200),
                    ("GET", GET_BACKLINKS, {"subject": "x"}, 400),  # missing source
                    ("GET", "/no/such/route", None, 404), ("GET", "/xrpc/com.example.nothing", None, 501),
                    ("POST", GET_COUNT, subject, 405), ("DELETE", "/links/count", None, 405),
                    ("GET", "/", None, 200), ("GET", "/static/status.js", None, 200),
                    ("GET", "/lexicons/", None, 200), ("GET", HEALTH, None, 200), ("GET", "/metrics", None, 200)]:
                resp = await request(method, route, params)
                assert resp.status == status, (method, route, resp.status)
                assert resp.headers.get("Access-Control-Allow-Origin") == "*", (method, route)
            # a preflight, on an API route and on any other path
            for route in (GET_COUNT, "/links", "/anything/at/all", "/"):
                resp = await request("OPTIONS", route, headers={
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "content-type, x-client-thing"})
                assert resp.status == 204, route
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
                assert set(resp.headers["Access-Control-Allow-Methods"].replace(" ", "").split(",")) == {
                    "GET", "HEAD", "OPTIONS"}
                assert resp.headers["Access-Control-Allow-Headers"] == "content-type, x-client-thing"
                assert int(resp.headers["Access-Control-Max-Age"]) > 0
            resp = await request("OPTIONS", GET_COUNT, headers={"Access-Control-Request-Method": "GET"})
            assert resp.status == 204 and resp.headers["Access-Control-Allow-Headers"] == "*"
            # the preflight answered, the request itself still works
            assert (await client.ok(GET_COUNT, subject)) == {"total": 1}

    run(main())


def test_cors_on_an_internal_error(tmp_path: Path) -> None:
    """A 500 (here: a store missing its collections table) carries the header too."""
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    apply(writer, [Events().post(did("author"), tid(0), "p")])
    writer.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE coll")
    conn.commit()
    conn.close()

    async def main() -> None:
        async with running(path) as client:
            async with client.session.get(client.base + GET_COUNT, params={
                    "subject": at_uri(did("author"), POST, tid(0)), "source": f"{LIKE}:subject.uri"}) as resp:
                body = await resp.json()
                assert resp.status == 500 and body["error"] == "InternalServerError"
                assert resp.headers["Access-Control-Allow-Origin"] == "*"

    run(main())


# ---------------------------------------------------------------- getManyToMany

PAIR = "com.example.pair"
SOURCE = f"{PAIR}:subject.uri"
OTHER = "others[].uri"


def pair(ev: Events, repo: str, rkey: str, subject: str, others: list[str]) -> dict[str, Any]:
    return ev.put(repo, PAIR, rkey, {"$type": PAIR, "subject": {"uri": subject},
                                     "others": [{"uri": o} for o in others]})


def test_get_many_to_many(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    ev = Events()
    alice, bob, carol, dave, erin = (did(n) for n in ("alice", "bob", "carol", "dave", "erin"))
    subject = at_uri(did("owner"), POST, tid(0))
    elsewhere = at_uri(did("owner"), POST, tid(1))
    a, b, c = (at_uri(did("thing"), "com.example.thing", tid(i)) for i in (100, 101, 102))
    d = "mailto:x@example.com"
    # (author, rkey, others), by rkey time: erin 50, dave 40, bob 30, carol 20, alice 10, bob 5
    pairs = [(alice, tid(10), [a, b, c]), (bob, tid(30), [b]), (carol, tid(20), [c, a]), (dave, tid(40), []),
             (erin, tid(50), [a]), (bob, tid(5), ["MAILTO:x@example.com"])]
    apply(writer, [pair(ev, *p[:2], subject, p[2]) for p in pairs] + [pair(ev, alice, tid(60), elsewhere, [a])])

    def item(repo: str, ms: int, other: str) -> dict[str, Any]:
        return {"linkRecord": rec(repo, PAIR, tid(ms)), "otherSubject": other}

    everything = [item(erin, 50, a), item(bob, 30, b), item(carol, 20, c), item(carol, 20, a),
                  item(alice, 10, a), item(alice, 10, b), item(alice, 10, c), item(bob, 5, d)]
    base = {"subject": subject, "source": SOURCE, "pathToOther": OTHER}

    async def walk(client: Any, params: Any, limit: int) -> tuple[list[dict[str, Any]], list[int]]:
        items: list[dict[str, Any]] = []
        sizes: list[int] = []
        cursor = None
        while True:
            query = [*(params.items() if isinstance(params, dict) else params), ("limit", str(limit))]
            body = await client.ok(GET_MANY, query + ([("cursor", cursor)] if cursor else []))
            assert set(body) == {"items", "cursor"}
            items += body["items"]
            sizes.append(len(body["items"]))
            cursor = body["cursor"]
            if cursor is None:
                return items, sizes

    async def main() -> None:
        nonlocal everything
        async with running(path) as client:
            assert await client.ok(GET_MANY, base) == {"items": everything, "cursor": None}
            for limit in range(1, 9):  # pages end inside alice's and carol's records too
                items, sizes = await walk(client, base, limit)
                assert items == everything, limit
                assert all(n == limit for n in sizes[:-1]), (limit, sizes)
            # filters: linking accounts (an empty value is dropped, an unknown one finds nothing)
            body = await client.ok(GET_MANY, {**base, "linkDid": alice})
            assert body["items"] == [i for i in everything if i["linkRecord"]["did"] == alice]
            body = await client.ok(GET_MANY, [*base.items(), ("linkDid", f" {alice} "), ("linkDid", bob),
                                              ("linkDid", "")])
            assert body["items"] == [i for i in everything if i["linkRecord"]["did"] in (alice, bob)]
            assert (await client.ok(GET_MANY, {**base, "linkDid": "foo"}))["items"] == []
            assert (await client.ok(GET_MANY, {**base, "linkDid": ""}))["items"] == everything
            # other subjects, in any spelling of them
            body = await client.ok(GET_MANY, {**base, "otherSubject": a})
            assert body["items"] == [i for i in everything if i["otherSubject"] == a]
            for spelling in ("MAILTO:x@example.com", "mailto:%78@example.com"):  # %78 is "x"
                body = await client.ok(GET_MANY, [*base.items(), ("otherSubject", spelling), ("otherSubject", c)])
                assert body["items"] == [i for i in everything if i["otherSubject"] in (c, d)], spelling
            assert (await client.ok(GET_MANY, {**base, "otherSubject": "nope"}))["items"] == []
            items, _ = await walk(client, [*base.items(), ("otherSubject", a), ("linkDid", carol),
                                           ("linkDid", alice)], 1)
            assert items == [item(carol, 20, a), item(alice, 10, a)]
            # the other path may be the subject's own
            body = await client.ok(GET_MANY, {**base, "pathToOther": "subject.uri", "linkDid": bob})
            assert body["items"] == [item(bob, 30, subject), item(bob, 5, subject)]
            # a deactivated account's records leave, a deleted record too
            apply(writer, [ev.account(erin, False, 1, "deactivated"), ev.delete(carol, PAIR, tid(20))])
            everything = [i for i in everything if i["linkRecord"]["did"] not in (erin, carol)]
            for limit in (1, 3, 100):
                assert (await walk(client, base, limit))[0] == everything
            # a cursor into a record that is gone resumes after it
            first = await client.ok(GET_MANY, {**base, "limit": "2"})
            assert first["items"] == everything[:2]  # bob 30, alice 10 (a)
            apply(writer, [ev.delete(alice, PAIR, tid(10))])
            rest = await client.ok(GET_MANY, {**base, "cursor": first["cursor"]})
            assert rest == {"items": [item(bob, 5, d)], "cursor": None}

    run(main())
    writer.close()


def test_get_many_to_many_default_and_largest_limit(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    ev = Events()
    fan = did("fan")
    subject = at_uri(did("owner"), POST, tid(0))
    rkeys = [tid(1000 + i) for i in range(1001)]
    apply(writer, [pair(ev, fan, r, subject, [f"urn:example:{i}"]) for i, r in enumerate(rkeys)])
    newest_first = [{"linkRecord": rec(fan, PAIR, r), "otherSubject": f"urn:example:{i}"}
                    for i, r in reversed(list(enumerate(rkeys)))]
    base = {"subject": subject, "source": SOURCE, "pathToOther": OTHER}

    async def main() -> None:
        async with running(path) as client:
            body = await client.ok(GET_MANY, base)
            assert body["items"] == newest_first[:100] and body["cursor"] is not None
            body = await client.ok(GET_MANY, {**base, "limit": "1000"})
            assert body["items"] == newest_first[:1000] and body["cursor"] is not None
            rest = await client.ok(GET_MANY, {**base, "limit": "1000", "cursor": body["cursor"]})
            assert rest == {"items": newest_first[1000:], "cursor": None}
            reply = await client.get(GET_MANY, {**base, "limit": "1001"})
            assert reply.status == 400 and reply.json["error"] == "InvalidRequest"

    run(main())
    writer.close()


# ---------------------------------------------------------------- any absolute URI is a link

REF = "com.example.ref"


def test_any_absolute_uri_is_a_target_and_a_subject(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    ev = Events()
    who = [did(f"ref{i}") for i in range(8)]
    oracle = "oracle:6f1c2a84-7d6b-4f1e-9a1b-0c2d3e4f5a6b"
    mailto = "mailto:someone@example.com"
    urn = "urn:isbn:0451450523"
    messy = "HTTPS://Example.COM/%7Efoo/./bar/../baz?Q=%7a#Frag"
    clean = "https://example.com/~foo/baz?Q=z#Frag"  # the same URI, normalized by hand (RFC 3986 6.2.2)
    values = [oracle, mailto, urn, messy]
    not_links = ["not a link", "hello", "2026-05-25T14:23:29.807Z", "bafyreiaxf7tgbfydx3465sckitq6v564thxe2wwydbi7c",
                 "https://example.com/" + "a" * 2100, "https://例え.jp/", "Note: see below"]
    events = [ev.put(who[i], REF, tid(i), {"$type": REF, "ref": v}) for i, v in enumerate(values)]
    events += [ev.put(who[4], REF, tid(10 + i), {"$type": REF, "ref": v}) for i, v in enumerate(not_links)]
    events.append(ev.put(who[5], REF, tid(20), {"$type": REF, "ref": clean}))  # clean and messy: one target
    apply(writer, events)

    async def main() -> None:
        async with running(path) as client:
            for i, target in enumerate([oracle, mailto, urn]):
                body = await client.ok(GET_BACKLINKS, {"subject": target, "source": f"{REF}:ref"})
                assert body == {"total": 1, "records": [rec(who[i], REF, tid(i))], "cursor": None}, target
                assert await client.ok("/links/all", {"target": target}) == {
                    "links": {REF: {".ref": {"records": 1, "distinct_dids": 1}}}}
            both = [rec(who[5], REF, tid(20)), rec(who[3], REF, tid(3))]
            for spelling in (clean, messy, "https://EXAMPLE.com/%7efoo/baz?Q=z#Frag"):
                body = await client.ok(GET_BACKLINKS, {"subject": spelling, "source": f"{REF}:ref"})
                assert body == {"total": 2, "records": both, "cursor": None}, spelling
                body = await client.ok("/links", {"target": spelling, "collection": REF, "path": ".ref"})
                assert body["linking_records"] == both, spelling
            for text in not_links:  # plain text, over-long and non-ASCII strings are not links
                assert await client.ok(GET_COUNT, {"subject": text, "source": f"{REF}:ref"}) == {"total": 0}
                assert await client.ok("/links/all", {"target": text}) == {"links": {}}
            assert (await client.ok(HEALTH))["links"] == len(values) + 1

    run(main())
    writer.close()


# ---------------------------------------------------------------- /links?from_dids


def test_links_from_dids_filters(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    ev = Events()
    post = at_uri(did("author"), POST, tid(0))
    fans = [did(f"fan{i}") for i in range(4)]
    apply(writer, [ev.like(f, tid(10 + i), post) for i, f in enumerate(fans)])
    base = {"target": post, "collection": LIKE, "path": ".subject.uri"}

    def likes(*which: int) -> list[dict[str, str]]:
        return [rec(fans[i], LIKE, tid(10 + i)) for i in sorted(which, reverse=True)]

    async def main() -> None:
        async with running(path) as client:
            body = await client.ok("/links", {**base, "from_dids": f"{fans[0]},{fans[2]}"})
            assert body == {"total": 2, "linking_records": likes(0, 2), "cursor": None}
            body = await client.ok("/links", {**base, "from_dids": f" {fans[3]} ,, {fans[1]},"})
            assert body["linking_records"] == likes(1, 3)
            body = await client.ok("/links", {**base, "from_dids": "did:plc:nobody"})
            assert body == {"total": 0, "linking_records": [], "cursor": None}
            assert (await client.ok("/links", {**base, "from_dids": ""}))["linking_records"] == likes(0, 1, 2, 3)
            reply = await client.get("/links", {**base, "from_dids": fans[0], "did": fans[1]})
            assert reply.status == 400 and reply.json["error"] == "InvalidRequest"

    run(main())
    writer.close()


# ---------------------------------------------------------------- GET /: JSON unless HTML is preferred

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.mark.parametrize("accept, html", [
    (None, False), ("", False), ("*/*", False), ("application/json", False), ("text/html", True),
    (BROWSER_ACCEPT, True), ("application/json, text/html", False), ("text/html, application/json", True),
    ("application/json;q=0.5, text/html", True), ("text/*, application/json;q=0.9", True),
    ("text/html;q=0, */*", False), ("text/html;q=0.4, */*;q=0.1", True), ("image/png", False),
    ("*/*, text/html;q=0.9", False), ("text/*, */*", True), ("text/html;level=1, */*", False),
    ("text/html;q=bogus, */*;q=0.5", True), ("garbage, text/html", False), ("text/html,, ", True),
    ("application/json;q=0.900, text/html;q=0.9", False),
])
def test_prefers_html(accept: str | None, html: bool) -> None:
    from smalldp.api.hello import prefers_html  # here, not at the top: the module is new
    assert prefers_html(accept) is html


def test_root_answers_the_json_hello_unless_html_is_preferred(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    ev = Events()
    author, fan1, fan2, followed = did("author"), did("fan1"), did("fan2"), did("followed")
    post1, post2 = at_uri(author, POST, tid(0)), at_uri(author, POST, tid(1))
    first = [ev.post(author, tid(0), "one"), ev.post(author, tid(1), "two"), ev.like(fan1, tid(2), post1),
             ev.like(fan2, tid(3), post1), ev.like(fan2, tid(4), post2), ev.follow(fan1, tid(5), followed),
             ev.delete(fan2, LIKE, tid(4))]
    apply(writer, first)
    started = first[0]["time_us"]
    # by hand: 4 accounts (3 authors, 1 followed), 5 live records, 3 live links (2 likes, 1 follow)
    accounts, records, links = 4, 5, 3
    real_keys = 2  # distinct (target, collection, path) of the live links: likes of post1, the follow

    async def hello(client: Any, accept: str | None) -> tuple[int, str, Any]:
        headers = {} if accept is None else {"Accept": accept}
        skip = ("Accept",) if accept is None else ()
        async with client.session.get(client.base + "/", headers=headers, skip_auto_headers=skip) as resp:
            return resp.status, resp.content_type, await resp.read()

    def days_since(us: int) -> int:
        return int((time.time() - us / 1e6) // 86_400)

    async def main() -> None:
        async with running(path) as client:
            for accept in (None, "*/*", "application/json", "application/json, text/html"):
                before = days_since(started)
                status, kind, raw = await hello(client, accept)
                assert status == 200 and kind == "application/json", accept
                body = json.loads(raw)
                assert set(body) == {"help", "days_indexed", "stats"} and isinstance(body["help"], str)
                assert body["days_indexed"] in (before, days_since(started))
                stats = body["stats"]
                assert set(stats) == {"dids", "targetables", "linking_records", "started_at", "other_data"}
                assert stats["dids"] == accounts and stats["linking_records"] == records
                assert stats["started_at"] == started
                # an estimate: at least the real keys, plus the DataPlane's derived ones (at
                # most one per record) and a removed like's chunk
                assert real_keys <= stats["targetables"] <= real_keys + len(first)
                assert stats["other_data"]["links"] == links
                assert stats["other_data"]["cursor"] == max(e["time_us"] for e in first)
            for accept in (BROWSER_ACCEPT, "text/html"):
                status, kind, raw = await hello(client, accept)
                assert status == 200 and kind == "text/html" and b"<html" in raw.lower(), accept

    run(main())
    # A store written before started_at was kept: none until the next batch, then that one's first event.
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM meta WHERE k = 'started_at'")
    conn.commit()
    conn.close()
    writer.close()
    writer = Writer(path)

    async def old_store() -> None:
        async with running(path) as client:
            body = await client.ok("/")
            assert body["days_indexed"] is None and body["stats"]["started_at"] is None
            later = [ev.like(fan1, tid(6), post2)]
            apply(writer, later)
            body = await client.ok("/")
            assert body["stats"]["started_at"] == later[0]["time_us"]
            assert body["stats"]["linking_records"] == records + 1
            apply(writer, [ev.like(fan2, tid(7), post2)])  # set once: a later batch changes nothing
            assert (await client.ok("/"))["stats"]["started_at"] == later[0]["time_us"]

    run(old_store())
    writer.close()
