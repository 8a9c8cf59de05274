"""getThread at the depths an AppView asks for (app.bsky.feed.getPostThread: depth and
parentHeight up to 1000), with the work bound (1,000 descendants) and reply cycles.

Real Writer on a real SQLite file, the real app on 127.0.0.1; every expected list of
uris is built from the events the test writes (and checked against the brute-force
model of tests/appview_model.py as well).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from smalldp.store.writer import Writer

from appview_model import AppViewModel
from helpers_server import POST, Client, Events, apply, at_uri, did, running, tid

pytestmark = pytest.mark.timeout(300)

GET_THREAD = "/xrpc/dev.smalldp.getThread"
AUTHORS = [did("threada"), did("threadb"), did("threadc")]
DESCENDANTS_MAX = 1000  # the documented cap (lexicons/DATAPLANE.md), not read from the program


def chain(ev: Events, n: int, offset: int) -> tuple[list[str], list[dict[str, Any]]]:
    """n posts, each replying to the one before (post 0 is the root), authors in turn."""
    uris: list[str] = []
    events = []
    for k in range(n):
        author = AUTHORS[k % len(AUTHORS)]
        rkey = tid(offset + k * 1000)
        events.append(ev.post(author, rkey, f"level {k}", reply_to=uris[-1] if uris else None,
                              root=uris[0] if uris else None))
        uris.append(at_uri(author, POST, rkey))
    return uris, events


async def thread(client: Client, uri: str, above: int | None = None, below: int | None = None) -> list[str]:
    query: dict[str, Any] = {"uri": uri}
    if above is not None:
        query["above"] = str(above)
    if below is not None:
        query["below"] = str(below)
    body = await client.ok(GET_THREAD, query)
    assert set(body) == {"uris"}
    uris: list[str] = body["uris"]
    return uris


def test_deep_threads_at_appview_depths(tmp_path: Path) -> None:
    """A 40-level chain comes back whole with below=1000 and above=1000 (it stopped at
    20 levels before); a 1,100-level chain gives exactly 1,000 descendants or 1,000
    ancestors; a post with 1,100 direct replies gives its 1,000 newest."""
    ev = Events()
    short, short_events = chain(ev, 41, 1_000_000)
    long, long_events = chain(ev, 1101, 100_000_000)
    hub_author = did("threadhub")
    hub = at_uri(hub_author, POST, tid(3_000_000_000))
    hub_events = [ev.post(hub_author, tid(3_000_000_000), "hub")]
    replies = []  # oldest first: rkey times ascend
    for k in range(1100):
        author = AUTHORS[k % len(AUTHORS)]
        rkey = tid(3_000_001_000 + k * 1000)
        hub_events.append(ev.post(author, rkey, f"reply {k}", reply_to=hub))
        replies.append(at_uri(author, POST, rkey))
    events = short_events + long_events + hub_events
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    for start in range(0, len(events), 500):
        apply(writer, events[start:start + 500])
    model = AppViewModel()
    model.apply_all(events)

    cases: list[tuple[str, int | None, int | None, list[str]]] = [
        (short[0], None, 1000, short),  # 40 levels below the root
        (short[0], 1000, 1000, short),
        (short[0], None, None, short[:7]),  # the default stays 6 levels
        (short[0], None, 20, short[:21]),  # the old maximum
        (short[0], None, 21, short[:22]),  # one past it (a 400 before)
        (short[40], 1000, 0, short),  # 40 ancestors, root-most first
        (short[40], 101, 1000, short),  # past the old `above` maximum of 100
        (short[20], 1000, 1000, short),  # 20 above, 20 below
        (short[20], 5, 3, short[15:24]),
        (long[0], 0, 1000, long[:1 + DESCENDANTS_MAX]),  # 1,100 levels: the cap holds
        (long[-1], 1000, 0, long[-1001:]),  # 1,000 ancestors, then the post
        (long[100], 1000, 1000, long[:101] + long[101:101 + DESCENDANTS_MAX]),
        (hub, 0, 1000, [hub] + replies[::-1][:DESCENDANTS_MAX]),  # newest replies first
        (hub, 0, 1, [hub] + replies[::-1][:DESCENDANTS_MAX]),
        (replies[5], 1000, 1000, [hub, replies[5]]),
    ]

    async def main() -> None:
        async with running(path) as client:
            for uri, above, below, want in cases:
                got = await thread(client, uri, above, below)
                assert got == want, (uri, above, below, len(got), len(want))
                args = {} if above is None and below is None else \
                    {"above": 10 if above is None else above, "below": 6 if below is None else below}
                assert model.get_thread(uri, **args) == want, (uri, above, below)
            for above, below in (("1000", "1001"), ("1001", "1000"), ("-1", "6"), ("10", "-1")):
                reply = await client.get(GET_THREAD, {"uri": short[0], "above": above, "below": below})
                assert reply.status == 400, (above, below, reply.status)
                assert reply.json["error"] == "InvalidRequest" and reply.json["message"]
    asyncio.run(main())
    writer.close()


def test_reply_cycles_list_each_post_once(tmp_path: Path) -> None:
    """Records can name any uri as their parent, including their own or a reply of their
    own: with a depth of 1000, a cycle must not fill the answer with repeats."""
    ev = Events()
    a_author, b_author = did("cyclea"), did("cycleb")
    a = at_uri(a_author, POST, tid(1_000))
    b = at_uri(b_author, POST, tid(2_000))
    selfish = at_uri(a_author, POST, tid(3_000))
    child = at_uri(b_author, POST, tid(4_000))  # a plain reply to the self-reply
    c = at_uri(a_author, POST, tid(5_000))  # a three-post ring: c -> d -> e -> c
    d = at_uri(b_author, POST, tid(6_000))
    e = at_uri(a_author, POST, tid(7_000))
    events = [
        ev.post(a_author, tid(1_000), "a replies to b", reply_to=b),
        ev.post(b_author, tid(2_000), "b replies to a", reply_to=a),
        ev.post(a_author, tid(3_000), "replies to itself", reply_to=selfish),
        ev.post(b_author, tid(4_000), "reply", reply_to=selfish),
        ev.post(a_author, tid(5_000), "c", reply_to=e),
        ev.post(b_author, tid(6_000), "d", reply_to=c),
        ev.post(a_author, tid(7_000), "e", reply_to=d),
    ]
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    apply(writer, events)
    model = AppViewModel()
    model.apply_all(events)
    cases = [
        (a, 1000, 1000, [b, a]),  # b is a's parent; a's only reply is b, already listed
        (a, 0, 1000, [a, b]),  # b is a's reply; b's reply is a, the post itself
        (b, 0, 6, [b, a]),
        (selfish, 1000, 1000, [selfish, child]),
        (selfish, 0, 1000, [selfish, child]),
        (c, 1000, 1000, [d, e, c]),  # ancestors e, then d (root-most first); no descendant is new
        (c, 0, 1000, [c, d, e]),
        (d, 1, 1, [c, d, e]),
    ]

    async def main() -> None:
        async with running(path) as client:
            for uri, above, below, want in cases:
                assert await thread(client, uri, above, below) == want, (uri, above, below)
                assert model.get_thread(uri, above, below) == want, (uri, above, below)
    asyncio.run(main())
    writer.close()
