"""Differential tests of the DataPlane methods (lexicons/DATAPLANE.md) over HTTP.

Seeded random Jetstream histories over small universes of DIDs (so that edges
collide: double likes, re-creates, deletes of unknown records, late deliveries,
replays, deactivated / taken-down / deleted accounts, blocks and list blocks) go to
the real Writer on a real SQLite file and to the brute-force model in
tests/appview_model.py.  Every method is asked over real HTTP (the real app on
127.0.0.1) with many parameter combinations, each cursor walked to the end, and the
answers compared with the model's.

Also: paging while new records land between page requests, and bad input (400 with
``{"error", "message"}``, never a 500).
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from smalldp.events import MAX_TIME_AHEAD_US
from smalldp.store.dataplane import DataPlaneReader
from smalldp.store.dataplane.base import PREFETCH_KEYS_MAX
from smalldp.store.writer import Writer
from smalldp.tid import int_to_tid, tid_from_time

import appview_model as am
from appview_model import AppViewModel, split_uri
from helpers_server import BASE_US, Client, apply, did, iso, running

pytestmark = pytest.mark.timeout(300)

NS = "/xrpc/dev.smalldp."
Query = list[tuple[str, str]]

METHODS = [
    "getRecords", "getInteractionCounts", "getLikesBySubject", "getRepostsBySubject", "getQuotesBySubject",
    "getLikesByActorAndSubjects", "getRepostsByActorAndSubjects", "getKnownLikers", "getFollowers",
    "getFollows", "getFollowsFollowing", "getActorFollowsActors", "getRelationships", "getBlockExistence",
    "getBlocks", "getCountsForUsers", "getActors", "getDidsByHandles", "getLatestRev", "getAuthorFeed",
    "getTimeline", "getThread", "getListMembers", "getActorLists", "getListMembership",
]
FILTERS = ["posts_with_replies", "posts_no_replies", "posts_and_author_threads", "posts_with_media",
           "posts_with_video"]


def run(coro: Awaitable[Any]) -> Any:
    """Run a coroutine to completion on a fresh event loop."""
    return asyncio.run(coro)  # type: ignore[arg-type]


def tidk(k: int, clock: int) -> str:
    """Rkey number k of a pool: one second apart, the clock ID says the collection.

    Pools are shared by all DIDs (ties between accounts happen), and each collection
    has its own clock ID (a post and a repost never tie)."""
    return int_to_tid(tid_from_time(BASE_US + (k + 1) * 1_000_000, clock))


def chunks(values: list[Any], size: int = 100) -> list[list[Any]]:
    """values in slices of at most size."""
    return [values[i:i + size] for i in range(0, len(values), size)] or [[]]


# ---------------------------------------------------------------- HTTP helpers


async def call(client: Client, method: str, query: Query) -> Any:
    """GET a DataPlane method; require 200 + JSON."""
    reply = await client.get(NS + method, query)
    assert reply.status == 200, (method, query[:6], reply.status, reply.body[:300])
    assert reply.content_type == "application/json"
    return reply.json


async def walk(client: Client, method: str, query: Query, key: str, limit: int | None) -> list[Any]:
    """Follow every cursor to the end; the items of all pages concatenated.

    Each page holds at most ``limit`` items (50 by default); a page before the last
    carries a string cursor."""
    items: list[Any] = []
    cursor: str | None = None
    base = list(query) + ([("limit", str(limit))] if limit is not None else [])
    for _ in range(500):
        body = await call(client, method, base + ([("cursor", cursor)] if cursor is not None else []))
        page = body[key]
        assert isinstance(page, list)
        assert len(page) <= (limit or 50), (method, query, len(page))
        items += page
        cursor = body.get("cursor")
        if cursor is None:
            return items
        assert isinstance(cursor, str) and cursor, (method, query, cursor)
    raise AssertionError(f"{method} {query}: no last page after 500 pages")


# ---------------------------------------------------------------- random histories


@dataclass
class Universe:
    """The DIDs, record keys and URIs a history draws from."""

    dids: list[str]
    ghost: str  # a DID only ever named as a subject, never the author of an event
    stranger: str  # a valid DID in no event at all
    n_posts: int = 7
    handles: tuple[str, ...] = ("alice.test", "bob.test", "Carol.Test", "dan.example.com")

    @property
    def subjects(self) -> list[str]:
        """DIDs follows, blocks and listitems point at."""
        return self.dids + [self.ghost]

    @property
    def post_uris(self) -> list[str]:
        return [f"at://{d}/{am.POST}/{tidk(k, 1)}" for d in self.dids for k in range(self.n_posts)]

    @property
    def list_uris(self) -> list[str]:
        return [f"at://{d}/{am.LIST}/{tidk(k, 6)}" for d in self.dids for k in range(3)]


CREATED_AT: list[Any] = [
    "2024-01-01T00:00:00.000Z",  # earlier than indexedAt
    "2024-01-01T00:00:00.000Z",
    "2030-05-05T05:05:05.555Z",  # later than indexedAt: sortedAt is indexedAt
    "2023-11-15T03:00:00.250+02:00",  # an offset: 01:00:00.250Z, earlier than indexedAt
    "2023-11-14T20:00:00Z",  # no fraction
    "yesterday",  # not a datetime
    12345,  # not a string
    None,  # absent
]

# (collection, weight, rkey pool size, clock ID)
COLLECTIONS = [
    (am.POST, 5, 7, 1), (am.LIKE, 5, 5, 2), (am.REPOST, 2, 4, 3), (am.FOLLOW, 5, 5, 4), (am.BLOCK, 2, 3, 5),
    (am.LIST, 1, 3, 6), (am.LISTITEM, 3, 6, 7), (am.LISTBLOCK, 2, 3, 8), (am.PROFILE, 1, 1, 0),
    (am.GENERATOR, 1, 2, 9), (am.STARTERPACK, 1, 2, 10),
]


class History:
    """Generates a Jetstream v1 history: a list of batches of event dicts."""

    def __init__(self, seed: int, n_dids: int, n_events: int) -> None:
        self.rng = random.Random(seed)
        self.stamp_rng = random.Random(seed + 1_000_003)
        self.u = Universe([did(f"s{seed}u{i}") for i in range(n_dids)], did(f"s{seed}ghost"),
                          did(f"s{seed}stranger"))
        self.n_events = n_events
        self.clock_us = BASE_US + 20_000_000_000
        self.seq = {d: 10 for d in self.u.dids}
        self.id_seq = {d: 10 for d in self.u.dids}
        self.last_time: dict[tuple[str, int], int] = {}  # (account, id of its seq table) -> last time
        self.revive: list[str] = []  # deleted accounts that come back later (their purge must hold)

    def _created(self) -> dict[str, Any]:
        value = self.rng.choice(CREATED_AT)
        return {} if value is None else {"createdAt": value}

    def _record(self, author: str, collection: str, k: int) -> dict[str, Any]:
        rng, u = self.rng, self.u
        rec: dict[str, Any] = {"$type": collection}
        if collection == am.POST:
            rec["text"] = f"post {k}"
            if k > 0 and rng.random() < 0.5:  # replies point at older rkeys: no cycles
                parent_k = rng.randrange(k)
                parent = f"at://{rng.choice(u.dids)}/{am.POST}/{tidk(parent_k, 1)}"
                root = parent if rng.random() < 0.4 else \
                    f"at://{rng.choice(u.dids + [author] * 3)}/{am.POST}/{tidk(rng.randrange(parent_k + 1), 1)}"
                rec["reply"] = {"root": {"uri": root, "cid": "bafyroot"}, "parent": {"uri": parent, "cid": "bafyp"}}
            image = {"$type": am.IMAGES, "images": [{"alt": "", "image": {"$type": "blob", "mimeType": "image/png"}}]}
            video = {"$type": am.VIDEO, "video": {"$type": "blob", "mimeType": "video/mp4"}}
            quoted = rng.choice(u.post_uris + u.list_uris[:2])
            embed = rng.choice([None, None, "images", "video", "record", "rwm_images", "rwm_video", "external"])
            if embed == "images":
                rec["embed"] = image
            elif embed == "video":
                rec["embed"] = video
            elif embed == "record":
                rec["embed"] = {"$type": "app.bsky.embed.record", "record": {"uri": quoted, "cid": "bafyq"}}
            elif embed in ("rwm_images", "rwm_video"):
                rec["embed"] = {"$type": am.RECORD_WITH_MEDIA,
                                "record": {"$type": "app.bsky.embed.record",
                                           "record": {"uri": quoted, "cid": "bafyq"}},
                                "media": image if embed == "rwm_images" else video}
            elif embed == "external":
                rec["embed"] = {"$type": "app.bsky.embed.external",
                                "external": {"uri": "https://example.com/x", "title": "", "description": ""}}
        elif collection in (am.LIKE, am.REPOST):
            hot = [f"at://{d}/{am.POST}/{tidk(k, 1)}" for d in u.dids[:3] for k in range(2)]
            pool = hot if rng.random() < 0.5 else u.post_uris + u.list_uris[:1]
            rec["subject"] = {"uri": rng.choice(pool), "cid": "bafysubject"}
        elif collection in (am.FOLLOW, am.BLOCK):
            rec["subject"] = rng.choice(u.subjects)
        elif collection == am.LIST:
            rec.update(name=f"list {k}", purpose="app.bsky.graph.defs#modlist")
        elif collection == am.LISTITEM:
            owner = author if rng.random() < 0.8 else rng.choice(u.dids)
            rec["list"] = f"at://{owner}/{am.LIST}/{tidk(rng.randrange(3), 6)}"
            rec["subject"] = rng.choice(u.subjects)
        elif collection == am.LISTBLOCK:
            rec["subject"] = rng.choice(u.list_uris)
        elif collection == am.PROFILE:
            rec["displayName"] = f"name {rng.randrange(100)}"
        else:
            rec["displayName"] = f"thing {k}"
        rec.update(self._created())
        return rec

    def _stamp(self, author: str, seq_table: dict[str, int], body: dict[str, Any]) -> None:
        """``time`` and ``seq`` of an account or identity event, as a network of several
        relays delivers them: mostly the moment it was made with the next seq; sometimes
        stale (older than the account's last event: a replay or a late delivery), at the
        same moment as the last one, with a seq of another relay's space (far lower or
        higher), without seq, without time, with an unparseable time, or with a clock far
        ahead (which the rule distrusts).  Its own random stream: the rest of the
        history stays what the coverage checks below were tuned on."""
        rng = self.stamp_rng
        seq_table[author] += 1
        roll = rng.random()
        when = self.clock_us
        last = self.last_time.get((author, id(seq_table)), self.clock_us)
        if roll < 0.12:
            when = last - rng.randrange(1, 5_000_000)
        elif roll < 0.2:
            when = last
        self.last_time[(author, id(seq_table))] = max(last, when)
        seq = seq_table[author]
        roll = rng.random()
        if roll < 0.1:
            seq = rng.randrange(1, 1000)  # another relay, far lower
        elif roll < 0.15:
            seq = 10 ** 10 + rng.randrange(1000)  # another relay, far higher
        elif roll < 0.2:
            seq = seq_table[author] - 1  # the last event's seq again
        if rng.random() >= 0.05:
            body["seq"] = seq
        roll = rng.random()
        if roll < 0.04:
            return  # no time: the receive time stands in
        if roll < 0.06:
            body["time"] = "not a time"
        elif roll < 0.08:
            body["time"] = iso(self.clock_us + 3_600_000_000)  # a clock an hour ahead
        else:
            body["time"] = iso(when)

    def _event(self) -> dict[str, Any]:
        rng, u = self.rng, self.u
        self.clock_us += rng.randrange(1000, 5000)
        author = rng.choice(u.dids)
        roll = rng.random()
        if self.revive and rng.random() < 0.03:
            author = self.revive.pop(0)
            back: dict[str, Any] = {"active": True, "did": author}
            self._stamp(author, self.seq, back)
            return {"did": author, "kind": "account", "account": back}
        if roll < 0.025:
            status = rng.choices([None, "deactivated", "takendown", "suspended", "deleted", "throttled",
                                  "desynchronized"], weights=[12, 2, 2, 1, 2, 1, 1])[0]
            account: dict[str, Any] = {"active": status is None, "did": author}
            self._stamp(author, self.seq, account)
            if status is not None:
                account["status"] = status
            if status == "deleted" and rng.random() < 0.7:
                self.revive.append(author)  # it comes back, and writes again at once
            return {"did": author, "kind": "account", "account": account}
        if roll < 0.06:
            identity: dict[str, Any] = {"did": author}
            self._stamp(author, self.id_seq, identity)
            if rng.random() < 0.9:
                identity["handle"] = rng.choice(u.handles)
            return {"did": author, "kind": "identity", "identity": identity}
        collection, _, size, clock = rng.choices(COLLECTIONS, weights=[c[1] for c in COLLECTIONS])[0]
        k = rng.randrange(size)
        rkey = "self" if collection == am.PROFILE else tidk(k, clock)
        rev = int_to_tid(tid_from_time(self.clock_us, 0))
        op = rng.choices(["create", "update", "delete"], weights=[6, 2, 2])[0]
        commit: dict[str, Any] = {"rev": rev, "operation": op, "collection": collection, "rkey": rkey}
        if op != "delete":
            commit["record"] = self._record(author, collection, k)
            commit["cid"] = f"bafyrei{rng.randrange(10 ** 9)}"
        return {"did": author, "kind": "commit", "commit": commit}

    def batches(self) -> list[list[dict[str, Any]]]:
        """The history: an intro batch naming every DID in order (account IDs follow
        the universe's order), then events in batches of 1..25; some events arrive
        late (after newer ones of the same account) and some slices again (replays)."""
        rng = self.rng
        generated = [self._event() for _ in range(self.n_events)]
        for i in range(len(generated) - 1):  # late deliveries
            if rng.random() < 0.05:
                j = min(len(generated) - 1, i + rng.randrange(1, 6))
                generated[i], generated[j] = generated[j], generated[i]
        stream = list(generated)
        for _ in range(3):  # replays of slices
            start = rng.randrange(len(generated))
            piece = [json.loads(json.dumps(e)) for e in generated[start:start + rng.randrange(1, 30)]]
            at = rng.randrange(start, len(stream) + 1)
            stream[at:at] = piece
        time_us = BASE_US + 20_000_000_000
        for event in stream:  # receive times: increasing in stream order
            time_us += rng.randrange(1000, 3000)
            event["time_us"] = time_us
        intro = [{"did": d, "time_us": BASE_US + 19_000_000_000 + i, "kind": "identity",
                  "identity": {"did": d, "seq": 1}} for i, d in enumerate(self.u.dids)]
        out = [intro]
        i = 0
        while i < len(stream):
            n = rng.randrange(1, 26)
            out.append(stream[i:i + n])
            i += n
        return out


@dataclass
class Scenario:
    """A store and the model after the same history."""

    name: str
    path: Path
    model: AppViewModel
    u: Universe
    rng: random.Random = field(default_factory=lambda: random.Random(0))


SCENARIOS = [  # (seed, DIDs, events, fraction of the history applied, close the writer)
    (1, 8, 600, 1.0, False),
    (2, 12, 900, 1.0, True),
    (3, 10, 1000, 0.5, False),
    (4, 24, 900, 1.0, False),
]


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> list[Scenario]:
    """Build every scenario once: the real Writer and the model see the same batches."""
    out = []
    for seed, n_dids, n_events, part, close in SCENARIOS:
        history = History(seed, n_dids, n_events)
        batches = history.batches()
        batches = batches[:max(2, int(len(batches) * part))]
        path = tmp_path_factory.mktemp(f"dp{seed}") / "db.sqlite"
        # Odd seeds leave merges under way between batches (one slice of 3 rows each),
        # so the answers are also read from a half-merged index; and purges under way (a
        # sweep of 2 forward rows per batch).
        writer = Writer(path, fanout=2, chunk_entries=4, merge_slices=1 if seed % 2 else None, merge_slice_rows=3,
                        purge_rows=2 if seed % 2 else None)
        model = AppViewModel()
        for batch in batches:
            apply(writer, batch)
            model.apply_all(batch)
        if close:
            writer.close()
        out.append(Scenario(f"seed{seed}", path, model, history.u, random.Random(seed)))
    # the histories must reach the interesting cases, or the tests prove little
    everything = [s.model for s in out]
    statuses = {a.status for m in everything for a in m.actors.values()}
    assert {"deleted", "takendown", "deactivated"} <= statuses, statuses
    # a deleted account came back and what it wrote afterwards is there (issue 10's case)
    assert any(a.active and a.purged_rev is not None
               and any(rid[0] == d and r.rev > a.purged_rev for rid, r in m.records.items())
               for m in everything for d, a in m.actors.items())
    assert any(dids for s, m in zip(out, everything) for v in s.u.dids
               for _, dids in m.get_known_likers(v, s.u.post_uris))
    return out


def for_each(scenarios: list[Scenario], check: Callable[[Client, Scenario], Awaitable[None]]) -> None:
    """Run check against a server on each scenario's store."""
    async def main() -> None:
        for scenario in scenarios:
            async with running(scenario.path) as client:
                await check(client, scenario)
    run(main())


def limit_choice(s: Scenario) -> int | None:
    """A page size: mostly tiny (many cursors), sometimes the default or the maximum."""
    return s.rng.choice([1, 1, 2, 3, 5, None, 100])


def test_clock_bound_matches_store() -> None:
    """The model's copy of the bound on clocks running ahead is the decoder's."""
    assert am.MAX_TIME_AHEAD_US == MAX_TIME_AHEAD_US


# ---------------------------------------------------------------- Records


def test_get_records(scenarios: list[Scenario]) -> None:
    """getRecords: bodies of live records of body collections, null elsewhere, aligned."""
    async def check(client: Client, s: Scenario) -> None:
        m = s.model
        uris = (s.u.post_uris + s.u.list_uris + [f"at://{d}/{am.PROFILE}/self" for d in s.u.dids]
                + [f"at://{d}/{am.LIKE}/{tidk(k, 2)}" for d in s.u.dids for k in range(2)]
                + [f"at://{d}/{am.GENERATOR}/{tidk(0, 9)}" for d in s.u.dids]
                + [f"at://{s.u.stranger}/{am.POST}/{tidk(0, 1)}"])
        s.rng.shuffle(uris)
        uris += uris[:3]  # repeats
        non_null = 0
        for part in chunks(uris, 97):
            body = await call(client, "getRecords", [("uris", u) for u in part])
            want = m.get_records(part)
            assert len(body["records"]) == len(part)
            for uri, got, exp in zip(part, body["records"], want):
                assert got == exp, (s.name, uri)
                non_null += exp is not None
        assert non_null > 10
        assert await call(client, "getRecords", []) == {"records": []}
    for_each(scenarios, check)


# ---------------------------------------------------------------- Interactions


def test_get_interaction_counts(scenarios: list[Scenario]) -> None:
    """getInteractionCounts: likes / reposts count accounts, replies / quotes records."""
    async def check(client: Client, s: Scenario) -> None:
        uris = s.u.post_uris + s.u.list_uris[:2] + [f"at://{s.u.stranger}/{am.POST}/{tidk(0, 1)}"]
        total = 0
        for part in chunks(uris, 100):
            body = await call(client, "getInteractionCounts", [("uris", u) for u in part])
            want = s.model.get_interaction_counts(part)
            for key in ("likes", "reposts", "replies", "quotes"):
                assert len(body[key]) == len(part)
                for uri, got, exp in zip(part, body[key], want[key]):
                    assert got == exp, (s.name, key, uri)
                total += sum(want[key])
        assert total > 20
    for_each(scenarios, check)


def test_interaction_counts_past_one_prefetch_query(scenarios: list[Scenario]) -> None:
    """More URIs than one prefetch query takes (PREFETCH_KEYS_MAX), repeated and unknown
    ones among them, asked of the reader directly: each count as the model's."""
    for s in scenarios:
        uris = s.u.post_uris + s.u.list_uris + [f"at://{s.u.stranger}/{am.POST}/{tidk(0, 1)}"]
        uris = (uris * (PREFETCH_KEYS_MAX // len(uris) + 2))[:PREFETCH_KEYS_MAX + 37]
        s.rng.shuffle(uris)
        reader = DataPlaneReader(s.path)
        try:
            got = reader.interaction_counts(uris)
        finally:
            reader.close()
        want = s.model.get_interaction_counts(uris)
        for key in ("likes", "reposts", "replies", "quotes"):
            assert got[key] == want[key], (s.name, key)
        assert sum(want["likes"]) > 0, s.name


@pytest.mark.parametrize("side", [None, True, False])
def test_list_blocks_answer_the_same_from_either_side(scenarios: list[Scenario], side: bool | None) -> None:
    """A list block between two accounts is read from the blocker's list blocks or from
    the lists holding the other account and their blockers, whichever is cheaper: forced
    to either side (or left to choose), relationships and block existence answer as the
    model, through the reader directly, for every ordered pair of accounts."""
    for s in scenarios:
        people = s.u.subjects + [s.u.stranger]
        pairs = [(a, b) for a in people for b in people]
        reader = DataPlaneReader(s.path)
        if side is not None:
            reader._blocker_side = lambda blocker, blocked, sharing=1: side  # type: ignore[method-assign]
        try:
            refs = reader.block_refs(pairs)
            exists = reader.block_existence(pairs)
            relationships = {viewer: reader.relationships(viewer, people, list_uris=False) for viewer in people}
        finally:
            reader.close()
        assert exists == s.model.get_block_existence(pairs), s.name
        assert [any(r.values()) for r in refs] == exists, s.name
        for viewer in people:
            assert relationships[viewer] == s.model.get_relationships(viewer, people), (s.name, viewer)
        if s.name == "seed2":  # list blocks both ways are reached
            assert any(r["blockedByList"] for rows in relationships.values() for r in rows)
            assert any(r["blockingByList"] for rows in relationships.values() for r in rows)


@pytest.mark.parametrize("method", ["getLikesBySubject", "getRepostsBySubject", "getQuotesBySubject"])
def test_records_by_subject(scenarios: list[Scenario], method: str) -> None:
    """getLikesBySubject / getRepostsBySubject / getQuotesBySubject: every live record,
    newest first, over all pages."""
    model_fn = {"getLikesBySubject": AppViewModel.get_likes_by_subject,
                "getRepostsBySubject": AppViewModel.get_reposts_by_subject,
                "getQuotesBySubject": AppViewModel.get_quotes_by_subject}[method]

    async def check(client: Client, s: Scenario) -> None:
        seen = 0
        for subject in s.u.post_uris + s.u.list_uris[:2]:
            want = model_fn(s.model, subject)
            limit = limit_choice(s)
            got = await walk(client, method, [("subject", subject)], "uris", limit)
            assert got == want, (s.name, method, subject, limit)
            seen += len(want)
        assert seen > 5
    for_each(scenarios, check)


@pytest.mark.parametrize("method", ["getLikesByActorAndSubjects", "getRepostsByActorAndSubjects"])
def test_by_actor_and_subjects(scenarios: list[Scenario], method: str) -> None:
    """The actor's newest live like / repost of each subject, or ""."""
    model_fn = {"getLikesByActorAndSubjects": AppViewModel.get_likes_by_actor_and_subjects,
                "getRepostsByActorAndSubjects": AppViewModel.get_reposts_by_actor_and_subjects}[method]

    async def check(client: Client, s: Scenario) -> None:
        found = 0
        for actor in s.u.dids + [s.u.stranger]:
            subjects = s.u.post_uris + s.u.list_uris[:1]
            s.rng.shuffle(subjects)
            for part in chunks(subjects, 100):
                body = await call(client, method, [("actor", actor), *(("subjects", x) for x in part)])
                want = model_fn(s.model, actor, part)
                assert len(body["uris"]) == len(part)
                for subject, got, exp in zip(part, body["uris"], want):
                    assert got == exp, (s.name, method, actor, subject)
                found += sum(1 for x in want if x)
        assert found > 3
    for_each(scenarios, check)


def test_get_known_likers(scenarios: list[Scenario]) -> None:
    """Followed accounts that like each subject: a set (a subset of it when cut by limit),
    with the full count."""
    async def check(client: Client, s: Scenario) -> None:
        for viewer in s.u.dids + [s.u.stranger]:
            subjects = s.u.post_uris[:100]
            limit = s.rng.choice([1, 2, 100, None])
            query = [("viewer", viewer), *(("subjects", x) for x in subjects)]
            if limit is not None:
                query.append(("limit", str(limit)))
            body = await call(client, "getKnownLikers", query)
            want = s.model.get_known_likers(viewer, subjects)
            assert len(body["results"]) == len(subjects)
            for got, (subject, dids) in zip(body["results"], want):
                where = (s.name, viewer, subject, limit)
                assert got["subject"] == subject, where
                assert got["count"] == len(dids), where
                assert len(got["dids"]) == len(set(got["dids"])), where
                assert set(got["dids"]) <= dids, where
                assert len(got["dids"]) == min(limit or 50, len(dids)), where
    for_each(scenarios, check)


# ---------------------------------------------------------------- Graph


@pytest.mark.parametrize("method", ["getFollowers", "getFollows", "getBlocks"])
def test_graph_lists(scenarios: list[Scenario], method: str) -> None:
    """getFollowers / getFollows / getBlocks: live edges to active subjects, newest first."""
    key, model_fn = {"getFollowers": ("followers", AppViewModel.get_followers),
                     "getFollows": ("follows", AppViewModel.get_follows),
                     "getBlocks": ("blockUris", AppViewModel.get_blocks)}[method]

    async def check(client: Client, s: Scenario) -> None:
        seen = 0
        for actor in s.u.subjects + [s.u.stranger]:
            for limit in (limit_choice(s), 2):
                got = await walk(client, method, [("actor", actor)], key, limit)
                want = model_fn(s.model, actor)
                assert got == want, (s.name, method, actor, limit)
                seen += len(want)
        assert seen > 3
    for_each(scenarios, check)


def test_get_follows_following(scenarios: list[Scenario]) -> None:
    """Per target, the accounts the viewer follows that follow it (as sets)."""
    async def check(client: Client, s: Scenario) -> None:
        found = 0
        for viewer in s.u.dids + [s.u.stranger]:
            targets = s.u.subjects + [s.u.stranger]
            body = await call(client, "getFollowsFollowing", [("viewer", viewer), *(("targets", t) for t in targets)])
            want = s.model.get_follows_following(viewer, targets)
            assert len(body["results"]) == len(targets)
            for got, (target, dids) in zip(body["results"], want):
                assert got["targetDid"] == target
                assert len(got["dids"]) == len(set(got["dids"])), (s.name, viewer, target)
                assert set(got["dids"]) == dids, (s.name, viewer, target)
                found += len(dids)
        assert found > 0
    for_each(scenarios, check)


def test_get_actor_follows_actors(scenarios: list[Scenario]) -> None:
    """The actor's newest follow record of each target, or ""."""
    async def check(client: Client, s: Scenario) -> None:
        for actor in s.u.dids + [s.u.stranger]:
            targets = s.u.subjects + [s.u.stranger, actor]
            body = await call(client, "getActorFollowsActors", [("actor", actor), *(("targets", t) for t in targets)])
            assert body["uris"] == s.model.get_actor_follows_actors(actor, targets), (s.name, actor)
    for_each(scenarios, check)


def test_get_relationships(scenarios: list[Scenario]) -> None:
    """Follows both ways, direct blocks both ways, list blocks both ways."""
    async def check(client: Client, s: Scenario) -> None:
        seen: set[str] = set()
        for viewer in s.u.subjects + [s.u.stranger]:
            targets = s.u.subjects + [s.u.stranger]
            body = await call(client, "getRelationships", [("viewer", viewer), *(("targets", t) for t in targets)])
            want = s.model.get_relationships(viewer, targets)
            assert len(body["relationships"]) == len(targets)
            for got, exp in zip(body["relationships"], want):
                assert got == exp, (s.name, viewer, exp["targetDid"])
                seen |= {k for k, v in exp.items() if v and k != "targetDid"}
        if s.name == "seed2":  # the fixture's richest history reaches every kind
            assert seen == {"following", "followedBy", "blocking", "blockedBy", "blockingByList", "blockedByList"}
    for_each(scenarios, check)


def test_get_block_existence(scenarios: list[Scenario]) -> None:
    """True when either account blocks the other, directly or through a list."""
    async def check(client: Client, s: Scenario) -> None:
        people = s.u.subjects + [s.u.stranger]
        pairs = [(a, b) for a in people for b in people]
        s.rng.shuffle(pairs)
        hits = 0
        for part in chunks(pairs, 100):
            body = await call(client, "getBlockExistence", [("pairs", f"{a},{b}") for a, b in part])
            want = s.model.get_block_existence(part)
            assert len(body["exists"]) == len(part)
            for pair, got, exp in zip(part, body["exists"], want):
                assert got is exp, (s.name, pair)
            hits += sum(want)
        assert hits > 0
    for_each(scenarios, check)


def test_get_counts_for_users(scenarios: list[Scenario]) -> None:
    """Followers / following count accounts; posts, reposts, lists, feeds, starter packs
    count records."""
    async def check(client: Client, s: Scenario) -> None:
        dids = s.u.subjects + [s.u.stranger]
        dids = dids + dids[:2]
        body = await call(client, "getCountsForUsers", [("dids", d) for d in dids])
        want = s.model.get_counts_for_users(dids)
        for key, values in want.items():
            assert len(body[key]) == len(dids), key
            for d, got, exp in zip(dids, body[key], values):
                assert got == exp, (s.name, key, d)
    for_each(scenarios, check)


# ---------------------------------------------------------------- Actors


def test_get_actors(scenarios: list[Scenario]) -> None:
    """Handle, status and profile of every seen DID; null for a DID never seen."""
    async def check(client: Client, s: Scenario) -> None:
        dids = s.u.dids + [s.u.stranger]
        body = await call(client, "getActors", [("dids", d) for d in dids])
        want = s.model.get_actors(dids)
        assert len(body["actors"]) == len(dids)
        for d, got, exp in zip(dids, body["actors"], want):
            if exp is None or got is None:
                assert got == exp, (s.name, d)
                continue
            if exp["profileCid"] is None:  # no profile: "" or null, the spec says neither
                assert got.get("profileCid") in ("", None), (s.name, d, got)
                got = {**got, "profileCid": None}
            assert got == exp, (s.name, d)
    for_each(scenarios, check)


def test_get_dids_by_handles(scenarios: list[Scenario]) -> None:
    """The DID whose latest identity event named the handle (any case), or ""."""
    async def check(client: Client, s: Scenario) -> None:
        handles = [h for h in s.u.handles] + [h.upper() for h in s.u.handles] + ["nobody.test"]
        body = await call(client, "getDidsByHandles", [("handles", h) for h in handles])
        want = s.model.get_dids_by_handles(handles)
        assert len(body["dids"]) == len(handles)
        for h, got, ok in zip(handles, body["dids"], want):
            assert got in ok, (s.name, h, got, ok)
    for_each(scenarios, check)


def test_get_latest_rev(scenarios: list[Scenario]) -> None:
    """The rev of the newest commit seen from an active actor, else ""."""
    async def check(client: Client, s: Scenario) -> None:
        for actor in s.u.subjects + [s.u.stranger]:
            body = await call(client, "getLatestRev", [("actor", actor)])
            assert body["rev"] == s.model.get_latest_rev(actor), (s.name, actor)
    for_each(scenarios, check)


# ---------------------------------------------------------------- Feeds


def test_get_author_feed(scenarios: list[Scenario]) -> None:
    """Every filter, every page: posts and reposts of the actor, newest first."""
    async def check(client: Client, s: Scenario) -> None:
        counts = {f: 0 for f in FILTERS}
        for actor in s.u.dids + [s.u.stranger]:
            for filter_ in FILTERS + [None]:
                query = [("actor", actor)] + ([("filter", filter_)] if filter_ else [])
                limit = limit_choice(s)
                got = await walk(client, "getAuthorFeed", query, "items", limit)
                want = s.model.get_author_feed(actor, filter_ or "posts_with_replies")
                assert got == want, (s.name, actor, filter_, limit)
                counts[filter_ or "posts_with_replies"] += len(want)
        assert all(counts.values()), counts
    for_each(scenarios, check)


def test_get_timeline(scenarios: list[Scenario]) -> None:
    """Posts and reposts of the viewer and of the accounts it follows, newest first."""
    async def check(client: Client, s: Scenario) -> None:
        for viewer in s.u.dids + [s.u.stranger]:
            limit = limit_choice(s)
            got = await walk(client, "getTimeline", [("viewer", viewer)], "items", limit)
            assert got == s.model.get_timeline(viewer), (s.name, viewer, limit)
    for_each(scenarios, check)


def test_get_thread(scenarios: list[Scenario]) -> None:
    """Ancestors root-most first, the post, descendants breadth-first newest first."""
    deep = 0

    async def check(client: Client, s: Scenario) -> None:
        nonlocal deep
        for uri in s.u.post_uris:
            for above, below in [(None, None), (0, 0), (1, 1), (2, 3), (100, 20), (1000, 1000)]:
                query = [("uri", uri)] + ([("above", str(above)), ("below", str(below))] if above is not None else [])
                body = await call(client, "getThread", query)
                want = s.model.get_thread(uri, *(() if above is None else (above, below)))
                assert body["uris"] == want, (s.name, uri, above, below)
                deep += len(want) > 2
    for_each(scenarios, check)
    assert deep > 0  # some scenario has threads deeper than a post and its parent


# ---------------------------------------------------------------- Lists


def test_get_list_members(scenarios: list[Scenario]) -> None:
    """Live listitems of the list's owner, newest first."""
    async def check(client: Client, s: Scenario) -> None:
        found = 0
        for list_uri in s.u.list_uris:
            limit = limit_choice(s)
            got = await walk(client, "getListMembers", [("list", list_uri)], "listitems", limit)
            want = s.model.get_list_members(list_uri)
            assert got == want, (s.name, list_uri, limit)
            found += len(want)
        assert found > 0
    for_each(scenarios, check)


def test_get_actor_lists(scenarios: list[Scenario]) -> None:
    """The actor's live lists, newest first."""
    async def check(client: Client, s: Scenario) -> None:
        for actor in s.u.dids + [s.u.stranger]:
            limit = limit_choice(s)
            got = await walk(client, "getActorLists", [("actor", actor)], "listUris", limit)
            assert got == s.model.get_actor_lists(actor), (s.name, actor, limit)
    for_each(scenarios, check)


def test_get_list_membership(scenarios: list[Scenario]) -> None:
    """Per list, the owner's listitem that puts the actor in it, or ""."""
    async def check(client: Client, s: Scenario) -> None:
        found = 0
        for actor in s.u.subjects + [s.u.stranger]:
            lists = s.u.list_uris
            body = await call(client, "getListMembership", [("actor", actor), *(("lists", x) for x in lists)])
            want = s.model.get_list_membership(actor, lists)
            assert body["listitemUris"] == want, (s.name, actor)
            found += sum(1 for x in want if x)
        assert found > 0
    for_each(scenarios, check)


# ---------------------------------------------------------------- paging while records land


def test_paging_while_records_land(tmp_path: Path) -> None:
    """Pages walked while likes, follows, posts and reposts land (newer and older rkeys)
    and some are deleted between page requests: no item twice, every item that was listed
    all along is there (a like or follow stops being listed when its author deletes it, or
    likes / follows again with an older rkey: one per account, the oldest), nothing that
    never existed."""
    path = tmp_path / "db.sqlite"
    writer = Writer(path, fanout=2, chunk_entries=4, merge_slices=1, merge_slice_rows=2)
    rng = random.Random(7)
    people = [did(f"pg{i}") for i in range(60)]
    star = people[0]
    subject = f"at://{star}/{am.POST}/{tidk(500, 1)}"
    clock = [BASE_US + 30_000_000_000]

    def ev(author: str, collection: str, rkey: str, record: dict[str, Any] | None) -> dict[str, Any]:
        clock[0] += 1000
        commit: dict[str, Any] = {"rev": int_to_tid(tid_from_time(clock[0], 0)), "collection": collection,
                                  "rkey": rkey, "operation": "create" if record else "delete"}
        if record:
            commit.update(record=record, cid=f"bafy{clock[0]}")
        return {"did": author, "time_us": clock[0], "kind": "commit", "commit": commit}

    def like(author: str, k: int) -> dict[str, Any]:
        return ev(author, am.LIKE, tidk(k, 2), {"$type": am.LIKE, "subject": {"uri": subject, "cid": "x"}})

    def follow(author: str, k: int) -> dict[str, Any]:
        return ev(author, am.FOLLOW, tidk(k, 4), {"$type": am.FOLLOW, "subject": star})

    def post(k: int) -> dict[str, Any]:
        return ev(star, am.POST, tidk(k, 1), {"$type": am.POST, "text": str(k)})

    def repost(k: int) -> dict[str, Any]:
        return ev(star, am.REPOST, tidk(k, 3), {"$type": am.REPOST, "subject": {"uri": subject, "cid": "x"}})

    model = AppViewModel()
    start: list[dict[str, Any]] = [post(500)]
    used: set[tuple[str, int]] = set()
    for i in range(60):
        author, k = rng.choice(people), rng.randrange(1000)
        used.add((author, k))
        start += [like(author, k), follow(author, k)]
    for k in rng.sample(range(1000), 60):
        start.append(post(k) if k % 2 else repost(k))
    apply(writer, start)
    model.apply_all(start)

    cases: list[tuple[str, Query, str, Callable[[AppViewModel], list[Any]], Callable[[Any], str]]] = [
        ("getLikesBySubject", [("subject", subject)], "uris",
         lambda m: m.get_likes_by_subject(subject), lambda x: x),
        ("getFollowers", [("actor", star)], "followers", lambda m: m.get_followers(star), lambda x: x["uri"]),
        ("getAuthorFeed", [("actor", star)], "items", lambda m: m.get_author_feed(star),
         lambda x: x["repost"] or x["uri"]),
        ("getTimeline", [("viewer", star)], "items", lambda m: m.get_timeline(star),
         lambda x: x["repost"] or x["uri"]),
    ]

    async def main() -> None:
        async with running(path) as client:
            for method, query, key, expected, ident in cases:
                before = [ident(x) for x in expected(model)]
                assert len(before) >= 25
                ever = set(before)
                always = set(before)
                got: list[str] = []
                cursor: str | None = None
                while True:
                    body = await call(client, method, query + [("limit", "4")] + (
                        [("cursor", cursor)] if cursor else []))
                    got += [ident(x) for x in body[key]]
                    cursor = body.get("cursor")
                    if cursor is None:
                        break
                    # between pages: new records with rkeys all over the range, and deletes
                    batch = []
                    for _ in range(3):
                        author, k = rng.choice(people), rng.randrange(1000)
                        if (author, k) in used:
                            continue
                        used.add((author, k))
                        batch += [like(author, k), follow(author, k)]
                        kk = rng.randrange(1000, 2000)
                        batch.append(post(kk) if kk % 2 else repost(kk))
                    live_now = [ident(x) for x in expected(model)]
                    victim = rng.choice(live_now)
                    rid = split_uri(victim)
                    assert rid is not None
                    if rid[2] != tidk(500, 1):
                        batch.append(ev(rid[0], rid[1], rid[2], None))
                    apply(writer, batch)
                    model.apply_all(batch)
                    ever |= {ident(x) for x in expected(model)}
                    always &= {ident(x) for x in expected(model)}
                assert len(got) == len(set(got)), (method, "an item came twice")
                missing = always - set(got)
                assert not missing, (method, "skipped", sorted(missing)[:5])
                assert set(got) <= ever, (method, "never existed", sorted(set(got) - ever)[:5])
    run(main())
    writer.close()


# ---------------------------------------------------------------- bad input

GOOD_DID = did("someone")
GOOD_URI = f"at://{GOOD_DID}/{am.POST}/{tidk(1, 1)}"
BAD_DIDS = ["notadid", "did:plc:", "did:PLC:abc", "did:plc:ab cd", "at://" + GOOD_DID, ""]
BAD_URIS = ["notauri", "https://example.com/x", "at://", "at:// spaces here", GOOD_DID, ""]
BAD_HANDLES = ["not a handle", "-bad-.test", "nodot", "a..b.test", "", "x" * 300 + ".test"]
BAD_LIMITS = ["0", "101", "-1", "abc", "1.5", "", "99999999999999999999999"]
BAD_CURSORS = ["!!!garbage!!!", "not a cursor", "\u00e9\u00e9", "x"]

# method -> (a valid query, [(parameter, kind)]) where kind says which bad values it gets
SHAPES: dict[str, tuple[Query, list[tuple[str, str]]]] = {
    "getRecords": ([("uris", GOOD_URI)], [("uris", "uri[]")]),
    "getInteractionCounts": ([("uris", GOOD_URI)], [("uris", "uri[]")]),
    "getLikesBySubject": ([("subject", GOOD_URI)], [("subject", "uri"), ("limit", "limit"), ("cursor", "cursor")]),
    "getRepostsBySubject": ([("subject", GOOD_URI)], [("subject", "uri"), ("limit", "limit"), ("cursor", "cursor")]),
    "getQuotesBySubject": ([("subject", GOOD_URI)], [("subject", "uri"), ("limit", "limit"), ("cursor", "cursor")]),
    "getLikesByActorAndSubjects": ([("actor", GOOD_DID), ("subjects", GOOD_URI)],
                                   [("actor", "did"), ("subjects", "uri[]")]),
    "getRepostsByActorAndSubjects": ([("actor", GOOD_DID), ("subjects", GOOD_URI)],
                                     [("actor", "did"), ("subjects", "uri[]")]),
    "getKnownLikers": ([("viewer", GOOD_DID), ("subjects", GOOD_URI)],
                       [("viewer", "did"), ("subjects", "uri[]"), ("limit", "limit")]),
    "getFollowers": ([("actor", GOOD_DID)], [("actor", "did"), ("limit", "limit"), ("cursor", "cursor")]),
    "getFollows": ([("actor", GOOD_DID)], [("actor", "did"), ("limit", "limit"), ("cursor", "cursor")]),
    "getFollowsFollowing": ([("viewer", GOOD_DID), ("targets", GOOD_DID)], [("viewer", "did"), ("targets", "did[]")]),
    "getActorFollowsActors": ([("actor", GOOD_DID), ("targets", GOOD_DID)], [("actor", "did"), ("targets", "did[]")]),
    "getRelationships": ([("viewer", GOOD_DID), ("targets", GOOD_DID)], [("viewer", "did"), ("targets", "did[]")]),
    "getBlockExistence": ([("pairs", f"{GOOD_DID},{GOOD_DID}")], [("pairs", "pair[]")]),
    "getBlocks": ([("actor", GOOD_DID)], [("actor", "did"), ("limit", "limit"), ("cursor", "cursor")]),
    "getCountsForUsers": ([("dids", GOOD_DID)], [("dids", "did[]")]),
    "getActors": ([("dids", GOOD_DID)], [("dids", "did[]")]),
    "getDidsByHandles": ([("handles", "alice.test")], [("handles", "handle[]")]),
    "getLatestRev": ([("actor", GOOD_DID)], [("actor", "did")]),
    "getAuthorFeed": ([("actor", GOOD_DID)], [("actor", "did"), ("limit", "limit"), ("cursor", "cursor"),
                                              ("filter", "filter")]),
    "getTimeline": ([("viewer", GOOD_DID)], [("viewer", "did"), ("limit", "limit"), ("cursor", "cursor")]),
    "getThread": ([("uri", GOOD_URI)], [("uri", "uri"), ("above", "above"), ("below", "below")]),
    "getListMembers": ([("list", f"at://{GOOD_DID}/{am.LIST}/{tidk(0, 6)}")],
                       [("list", "uri"), ("limit", "limit"), ("cursor", "cursor")]),
    "getActorLists": ([("actor", GOOD_DID)], [("actor", "did"), ("limit", "limit"), ("cursor", "cursor")]),
    "getListMembership": ([("actor", GOOD_DID), ("lists", f"at://{GOOD_DID}/{am.LIST}/{tidk(0, 6)}")],
                          [("actor", "did"), ("lists", "uri[]")]),
}


def bad_queries(good: Query, name: str, kind: str) -> list[Query]:
    """Variants of a valid query with one parameter made bad."""
    rest = [(k, v) for k, v in good if k != name]
    base = kind.rstrip("[]")
    values = {"did": BAD_DIDS, "uri": BAD_URIS, "handle": BAD_HANDLES, "limit": BAD_LIMITS,
              "cursor": BAD_CURSORS, "filter": ["posts", "", "POSTS_WITH_MEDIA"],
              "above": ["-1", "1001", "x"], "below": ["-1", "1001", "x"],
              "pair": ["onlyone", f"{GOOD_DID}", f"{GOOD_DID},notadid", f"notadid,{GOOD_DID}",
                       f"{GOOD_DID},{GOOD_DID},{GOOD_DID}", ","]}[base]
    out = [rest + [(name, v)] for v in values]
    if kind.endswith("[]"):
        ok = next(v for k, v in good if k == name)
        out.append(rest + [(name, ok)] * 101)  # too many values
        out.append(rest + [(name, ok), (name, values[0])])  # one bad among good ones
    elif base in ("did", "uri"):
        out.append(rest)  # a required parameter missing
        out.append(rest + [(name, next(v for k, v in good if k == name))] * 2)  # given twice
    elif base == "limit":
        out.append(good + [(name, "5"), (name, "6")])
    return out


@pytest.mark.parametrize("method", METHODS)
def test_bad_input_is_400(tmp_path: Path, method: str) -> None:
    """Every malformed parameter is a 400 with {"error", "message"}; the valid query is a 200."""
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    apply(writer, [{"did": GOOD_DID, "time_us": BASE_US + 1, "kind": "identity",
                    "identity": {"did": GOOD_DID, "handle": "alice.test", "seq": 1}}])
    good, params = SHAPES[method]

    async def main() -> None:
        async with running(path) as client:
            await call(client, method, good)
            exactly_100 = [(k, v) for k, v in good if not any(k == p and kind.endswith("[]") for p, kind in params)]
            for name, kind in params:
                if kind.endswith("[]"):
                    ok = next(v for k, v in good if k == name)
                    await call(client, method, exactly_100 + [(name, ok)] * 100)  # the maximum is fine
            for name, kind in params:
                for query in bad_queries(good, name, kind):
                    reply = await client.get(NS + method, query)
                    where = (method, name, [(k, v[:60]) for k, v in query][:4], len(query))
                    assert reply.status == 400, (*where, reply.status, reply.body[:200])
                    body = reply.json
                    assert body["error"] == "InvalidRequest" and isinstance(body["message"], str) \
                        and body["message"], (*where, body)
    run(main())
    writer.close()


def test_repost_of_an_invisible_post_has_no_cid(tmp_path: Path) -> None:
    """A repost item names the reposted post's cid only when that post is live: a deleted
    post or one whose author is inactive gives "" (inactive accounts are invisible). The
    author feed leaves out the repost of the deleted post (only reposts of posts that
    exist, as the reference's); the timeline keeps it."""
    author, reposter, viewer = did("rpauthor"), did("rpreposter"), did("rpviewer")
    kept, gone = (f"at://{author}/{am.POST}/{tidk(k, 1)}" for k in (1, 2))
    other = did("rpother")
    hidden = f"at://{other}/{am.POST}/{tidk(3, 1)}"
    clock = [BASE_US + 40_000_000_000]

    def commit(repo: str, collection: str, rkey: str, record: dict[str, Any] | None) -> dict[str, Any]:
        clock[0] += 1000
        body: dict[str, Any] = {"rev": int_to_tid(tid_from_time(clock[0], 0)), "collection": collection,
                                "rkey": rkey, "operation": "create" if record else "delete"}
        if record:
            body.update(record=record, cid=f"bafy{rkey}")
        return {"did": repo, "time_us": clock[0], "kind": "commit", "commit": body}

    events = [
        commit(author, am.POST, tidk(1, 1), {"$type": am.POST, "text": "kept"}),
        commit(author, am.POST, tidk(2, 1), {"$type": am.POST, "text": "deleted"}),
        commit(other, am.POST, tidk(3, 1), {"$type": am.POST, "text": "author deactivated"}),
        *(commit(reposter, am.REPOST, tidk(k, 3), {"$type": am.REPOST, "subject": {"uri": uri, "cid": "x"}})
          for k, uri in ((1, kept), (2, gone), (3, hidden))),
        commit(viewer, am.FOLLOW, tidk(1, 4), {"$type": am.FOLLOW, "subject": reposter}),
        commit(author, am.POST, tidk(2, 1), None),
        {"did": other, "time_us": clock[0] + 1, "kind": "account",
         "account": {"did": other, "active": False, "status": "deactivated", "seq": 3}},
    ]
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    apply(writer, events)
    reposts = [f"at://{reposter}/{am.REPOST}/{tidk(k, 3)}" for k in (3, 2, 1)]
    want = [{"uri": hidden, "cid": "", "repost": reposts[0], "repostCid": ""},
            {"uri": gone, "cid": "", "repost": reposts[1], "repostCid": ""},
            {"uri": kept, "cid": f"bafy{tidk(1, 1)}", "repost": reposts[2], "repostCid": ""}]

    async def main() -> None:
        async with running(path) as client:
            feed = await call(client, "getAuthorFeed", [("actor", reposter)])
            assert feed["items"] == [want[0], want[2]]
            timeline = await call(client, "getTimeline", [("viewer", viewer)])
            assert timeline["items"] == want
    run(main())
    writer.close()
