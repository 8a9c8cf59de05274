"""End to end: the DataPlane calls an AppView makes to render a profile page and a
thread page, over real HTTP against the real app and a real SQLite store.

The data is built by hand and every expected answer is written out by hand below
(worked out from the events, not from the program's output).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from smalldp.store.writer import Writer

from appview_model import AppViewModel
from helpers_server import BASE_US, POST, Client, Events, apply, at_uri, did, iso, running, tid

pytestmark = pytest.mark.timeout(120)

NS = "/xrpc/dev.smalldp."
PROFILE = "app.bsky.actor.profile"
BLOCK = "app.bsky.graph.block"
LIST = "app.bsky.graph.list"
LISTBLOCK = "app.bsky.graph.listblock"
FOLLOW = "app.bsky.graph.follow"
LIKE = "app.bsky.feed.like"
REPOST = "app.bsky.feed.repost"

VIEWER, ALICE, BOB, CAROL, DAVE, EVE, MALLORY = (
    did(n) for n in ("viewer", "alice", "bob", "carol", "dave", "eve", "mallory"))
STRANGER = did("stranger")


def post_uri(author: str, ms: int) -> str:
    return at_uri(author, POST, tid(ms * 1000))


# posts (rkey = tid of the offset in ms)
P0, P1, P2, P3, P4 = (post_uri(ALICE, ms) for ms in (500, 1000, 2000, 3000, 4000))
B1, B2, B3 = post_uri(BOB, 100), post_uri(BOB, 200), post_uri(BOB, 6300)
C1 = post_uri(CAROL, 6000)  # reply to P1
BR = post_uri(BOB, 6100)  # reply to P1
VR = post_uri(VIEWER, 6200)  # reply to C1
DR = post_uri(DAVE, 6400)  # reply to P1 by an account deactivated later
ALICE_REPOST = at_uri(ALICE, REPOST, tid(3_500_000))
VIEWER_REPOST_P2 = at_uri(VIEWER, REPOST, tid(7_000_000))
CAROL_REPOST_P2 = at_uri(CAROL, REPOST, tid(7_100_000))
VIEWER_LIKE_P1_OLD = at_uri(VIEWER, LIKE, tid(5_000_000))
VIEWER_LIKE_P1_NEW = at_uri(VIEWER, LIKE, tid(5_100_000))
BOB_LIKE_P1 = at_uri(BOB, LIKE, tid(5_200_000))
CAROL_LIKE_P1 = at_uri(CAROL, LIKE, tid(5_300_000))
DAVE_LIKE_P1 = at_uri(DAVE, LIKE, tid(5_400_000))
BOB_LIKE_C1 = at_uri(BOB, LIKE, tid(5_500_000))
VIEWER_FOLLOWS_ALICE = at_uri(VIEWER, FOLLOW, tid(8_000_000))
ALICE_FOLLOWS_VIEWER = at_uri(ALICE, FOLLOW, tid(8_100_000))
EVE_BLOCKS_VIEWER = at_uri(EVE, BLOCK, tid(9_000_000))
VIEWER_LIST = at_uri(VIEWER, LIST, tid(9_100_000))
VIEWER_LISTBLOCK = at_uri(VIEWER, LISTBLOCK, tid(9_300_000))
ALICE_LIST = at_uri(ALICE, LIST, tid(9_400_000))

PROFILE_BODY = {"$type": PROFILE, "displayName": "Alice", "description": "hello"}


def rkey(uri: str) -> str:
    return uri.rsplit("/", 1)[1]


def post_record(text: str, created: str = "2024-01-01T00:00:00.000Z", reply: str | None = None,
                root: str | None = None, embed: dict[str, Any] | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"$type": POST, "text": text, "createdAt": created}
    if reply is not None:
        record["reply"] = {"root": {"uri": root or reply, "cid": "bafyroot"}, "parent": {"uri": reply, "cid": "bafyp"}}
    if embed is not None:
        record["embed"] = embed
    return record


class World:
    """The hand-built data and the receive time of each post version."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer = Writer(path)
        self.ev = Events()
        self.times: dict[str, int] = {}
        self.bodies: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []  # everything applied, in order (for the model check)

    def apply(self, events: list[dict[str, Any]]) -> None:
        apply(self.writer, events)
        self.events += events

    def post(self, uri: str, record: dict[str, Any]) -> dict[str, Any]:
        author = uri.split("/")[2]
        event = self.ev.put(author, POST, rkey(uri), record, cid="bafy" + rkey(uri))
        self.times[uri] = event["time_us"]
        self.bodies[uri] = record
        return event

    def build(self) -> None:
        ev = self.ev
        # first sight in this order: viewer, alice, bob, carol, dave, eve, mallory
        self.apply([{"did": d, "time_us": BASE_US + i, "kind": "identity",
                             "identity": {"did": d, "seq": 1, "handle": f"{name}.test"}}
                            for i, (d, name) in enumerate(zip(
                                (VIEWER, ALICE, BOB, CAROL, DAVE, EVE, MALLORY),
                                ("viewer", "alice", "bob", "carol", "dave", "eve", "mallory")))])
        images = {"$type": "app.bsky.embed.images", "images": [{"alt": "a cat", "image": {"$type": "blob"}}]}
        self.apply([
            ev.put(ALICE, PROFILE, "self", PROFILE_BODY, cid="bafyprofilealice"),
            self.post(B1, post_record("bob one")),
            self.post(B2, post_record("bob two")),
            self.post(P0, post_record("deleted soon")),
            self.post(P1, post_record("first", created="2023-01-01T00:00:00.000Z")),
            self.post(P2, post_record("a picture", embed=images)),
            self.post(P3, post_record("reply to bob", reply=B1)),
            self.post(P4, post_record("quoting bob", embed={"$type": "app.bsky.embed.record",
                                                             "record": {"uri": B1, "cid": "bafyB1"}})),
            ev.repost(ALICE, rkey(ALICE_REPOST), B2),
            ev.delete(ALICE, POST, rkey(P0)),
        ])
        self.apply([
            ev.like(VIEWER, rkey(VIEWER_LIKE_P1_OLD), P1),
            ev.like(VIEWER, rkey(VIEWER_LIKE_P1_NEW), P1),
            ev.like(BOB, rkey(BOB_LIKE_P1), P1),
            ev.like(CAROL, rkey(CAROL_LIKE_P1), P1),
            ev.like(DAVE, rkey(DAVE_LIKE_P1), P1),
            ev.like(BOB, rkey(BOB_LIKE_C1), C1),
            self.post(C1, post_record("carol replies", reply=P1)),
            self.post(BR, post_record("bob replies", reply=P1)),
            self.post(VR, post_record("viewer replies to carol", reply=C1, root=P1)),
            self.post(DR, post_record("dave replies", reply=P1)),
            self.post(B3, post_record("bob quotes", embed={
                "$type": "app.bsky.embed.recordWithMedia", "media": images,
                "record": {"$type": "app.bsky.embed.record", "record": {"uri": P1, "cid": "bafyP1"}}})),
            ev.repost(VIEWER, rkey(VIEWER_REPOST_P2), P2),
            ev.repost(CAROL, rkey(CAROL_REPOST_P2), P2),
        ])
        self.apply([
            ev.follow(VIEWER, rkey(VIEWER_FOLLOWS_ALICE), ALICE),
            ev.follow(ALICE, rkey(ALICE_FOLLOWS_VIEWER), VIEWER),
            ev.follow(VIEWER, tid(8_200_000), CAROL),
            ev.follow(VIEWER, tid(8_300_000), BOB),
            ev.follow(BOB, tid(8_400_000), ALICE),
            ev.follow(CAROL, tid(8_500_000), ALICE),
            ev.follow(DAVE, tid(8_600_000), ALICE),
            ev.follow(DAVE, tid(8_650_000), VIEWER),
            ev.follow(ALICE, tid(8_700_000), BOB),
            ev.follow(ALICE, tid(8_800_000), DAVE),
            ev.put(EVE, BLOCK, rkey(EVE_BLOCKS_VIEWER), {"$type": BLOCK, "subject": VIEWER}),
            ev.put(VIEWER, LIST, rkey(VIEWER_LIST), {"$type": LIST, "name": "mute", "purpose": "modlist"}),
            ev.listitem(VIEWER, tid(9_200_000), VIEWER_LIST, MALLORY),
            ev.put(VIEWER, LISTBLOCK, rkey(VIEWER_LISTBLOCK), {"$type": LISTBLOCK, "subject": VIEWER_LIST}),
            ev.put(ALICE, LIST, rkey(ALICE_LIST), {"$type": LIST, "name": "friends", "purpose": "curatelist"}),
        ])
        self.apply([ev.account(DAVE, False, 5, "deactivated")])

    def record(self, uri: str, created: str) -> dict[str, Any]:
        """The getRecords element of a post, worked out from its event."""
        indexed = iso(self.times[uri])
        return {"uri": uri, "cid": "bafy" + rkey(uri), "record": self.bodies[uri], "indexedAt": indexed,
                "createdAt": created, "sortedAt": min(indexed, created)}


async def call(client: Client, method: str, query: list[tuple[str, str]]) -> Any:
    reply = await client.get(NS + method, query)
    assert reply.status == 200, (method, query, reply.status, reply.body[:300])
    return reply.json


def test_profile_and_thread_pages(tmp_path: Path) -> None:
    """What an AppView asks to render ALICE's profile and C1's thread for VIEWER."""
    world = World(tmp_path / "db.sqlite")
    world.build()
    # createdAt 2024-01-01 is after every receive time (Nov 2023): sortedAt = indexedAt
    assert iso(world.times[P1]) < "2024-01-01T00:00:00.000Z"

    async def main() -> None:
        async with running(world.path) as client:
            # ---------------- (a) profile page of ALICE, seen by VIEWER
            body = await call(client, "getActors", [("dids", ALICE), ("dids", DAVE), ("dids", STRANGER)])
            alice, dave, stranger = body["actors"]
            assert alice == {"did": ALICE, "handle": "alice.test", "status": "active", "profile": PROFILE_BODY,
                             "profileCid": "bafyprofilealice"}
            assert {k: v for k, v in dave.items() if k != "profileCid"} == {
                "did": DAVE, "handle": "dave.test", "status": "deactivated", "profile": None}
            assert dave["profileCid"] in ("", None)
            assert stranger is None

            body = await call(client, "getCountsForUsers", [("dids", ALICE), ("dids", DAVE)])
            assert body == {"followers": [3, 0],  # viewer, bob, carol (dave is inactive)
                            "following": [2, 0],  # viewer, bob (the follow of dave is hidden)
                            "posts": [4, 0],  # P1..P4 (P0 deleted)
                            "reposts": [1, 0], "lists": [1, 0], "feeds": [0, 0], "starterPacks": [0, 0]}

            body = await call(client, "getRelationships", [("viewer", VIEWER), *(("targets", t) for t in (
                ALICE, EVE, MALLORY, DAVE, STRANGER))])
            empty = {"following": "", "followedBy": "", "blocking": "", "blockedBy": "", "blockingByList": "",
                     "blockedByList": ""}
            assert body == {"relationships": [
                {**empty, "targetDid": ALICE, "following": VIEWER_FOLLOWS_ALICE, "followedBy": ALICE_FOLLOWS_VIEWER},
                {**empty, "targetDid": EVE, "blockedBy": EVE_BLOCKS_VIEWER},
                {**empty, "targetDid": MALLORY, "blockingByList": VIEWER_LISTBLOCK},
                {**empty, "targetDid": DAVE},  # dave follows viewer, but dave is inactive
                {**empty, "targetDid": STRANGER},
            ]}

            page1 = await call(client, "getAuthorFeed", [("actor", ALICE), ("limit", "3")])
            item = {"repost": "", "repostCid": ""}
            assert page1["items"] == [
                {**item, "uri": P4, "cid": "bafy" + rkey(P4)},
                {"uri": B2, "cid": "bafy" + rkey(B2), "repost": ALICE_REPOST, "repostCid": ""},
                {**item, "uri": P3, "cid": "bafy" + rkey(P3)},
            ]
            assert isinstance(page1["cursor"], str)
            page2 = await call(client, "getAuthorFeed", [("actor", ALICE), ("limit", "3"), ("cursor", page1["cursor"])])
            assert page2["items"] == [{**item, "uri": P2, "cid": "bafy" + rkey(P2)},
                                      {**item, "uri": P1, "cid": "bafy" + rkey(P1)}]
            if page2.get("cursor") is not None:
                page3 = await call(client, "getAuthorFeed", [("actor", ALICE), ("limit", "3"),
                                                             ("cursor", page2["cursor"])])
                assert page3["items"] == [] and page3.get("cursor") is None

            feed = [P4, B2, P3, P2, P1]
            body = await call(client, "getRecords", [("uris", u) for u in feed + [P0]])
            later = "2024-01-01T00:00:00.000Z"
            assert body["records"] == [world.record(P4, later), world.record(B2, later), world.record(P3, later),
                                       world.record(P2, later), world.record(P1, "2023-01-01T00:00:00.000Z"), None]
            assert body["records"][4]["sortedAt"] == "2023-01-01T00:00:00.000Z"
            assert body["records"][0]["sortedAt"] == iso(world.times[P4])

            body = await call(client, "getInteractionCounts", [("uris", u) for u in feed + [B1]])
            assert body == {"likes": [0, 0, 0, 0, 3, 0],  # P1: viewer (twice), bob, carol; dave hidden
                            "reposts": [0, 1, 0, 2, 0, 0],  # B2: alice; P2: viewer, carol
                            "replies": [0, 0, 0, 0, 2, 1],  # P1: C1, BR (DR hidden); B1: P3
                            "quotes": [0, 0, 0, 0, 1, 1]}  # P1: B3 (recordWithMedia); B1: P4
            body = await call(client, "getLikesByActorAndSubjects", [("actor", VIEWER), *(("subjects", u) for u in feed)])
            assert body == {"uris": ["", "", "", "", VIEWER_LIKE_P1_OLD]}  # one like per pair: the oldest
            body = await call(client, "getRepostsByActorAndSubjects",
                              [("actor", VIEWER), *(("subjects", u) for u in feed)])
            assert body == {"uris": ["", "", "", VIEWER_REPOST_P2, ""]}

            # ---------------- (b) thread page of C1, seen by VIEWER
            body = await call(client, "getThread", [("uri", C1)])
            assert body == {"uris": [P1, C1, VR]}
            body = await call(client, "getThread", [("uri", P1), ("below", "1")])
            assert body == {"uris": [P1, BR, C1]}  # children newest first; DR hidden, VR below level 1
            body = await call(client, "getThread", [("uri", P1)])
            assert body == {"uris": [P1, BR, C1, VR]}
            thread = [P1, C1, VR]
            body = await call(client, "getRecords", [("uris", u) for u in thread])
            assert body["records"] == [world.record(P1, "2023-01-01T00:00:00.000Z"), world.record(C1, later),
                                       world.record(VR, later)]
            body = await call(client, "getInteractionCounts", [("uris", u) for u in thread])
            assert body == {"likes": [3, 1, 0], "reposts": [0, 0, 0], "replies": [2, 1, 0], "quotes": [1, 0, 0]}
            body = await call(client, "getKnownLikers", [("viewer", VIEWER), *(("subjects", u) for u in thread)])
            results = body["results"]
            assert [r["subject"] for r in results] == thread
            assert [r["count"] for r in results] == [2, 1, 0]
            assert [set(r["dids"]) for r in results] == [{BOB, CAROL}, {BOB}, set()]
            authors = [ALICE, CAROL, VIEWER, EVE, MALLORY, DAVE]
            body = await call(client, "getBlockExistence", [("pairs", f"{VIEWER},{a}") for a in authors]
                              + [("pairs", f"{MALLORY},{VIEWER}")])
            assert body == {"exists": [False, False, False, True, True, False, True]}

    asyncio.run(main())
    world.writer.close()


def test_model_gives_the_hand_answers(tmp_path: Path) -> None:
    """The brute-force model of test_dataplane, on the same hand-built world, gives the
    hand-written answers above (a check of the model itself)."""
    world = World(tmp_path / "db.sqlite")
    world.build()
    world.writer.close()
    m = AppViewModel()
    m.apply_all(world.events)
    assert m.get_counts_for_users([ALICE, DAVE]) == {
        "followers": [3, 0], "following": [2, 0], "posts": [4, 0], "reposts": [1, 0], "lists": [1, 0],
        "feeds": [0, 0], "starterPacks": [0, 0]}
    rel = m.get_relationships(VIEWER, [ALICE, EVE, MALLORY, DAVE])
    assert [(r["following"], r["followedBy"], r["blockedBy"], r["blockingByList"]) for r in rel] == [
        (VIEWER_FOLLOWS_ALICE, ALICE_FOLLOWS_VIEWER, "", ""), ("", "", EVE_BLOCKS_VIEWER, ""),
        ("", "", "", VIEWER_LISTBLOCK), ("", "", "", "")]
    assert [(i["uri"], i["repost"]) for i in m.get_author_feed(ALICE)] == [
        (P4, ""), (B2, ALICE_REPOST), (P3, ""), (P2, ""), (P1, "")]
    assert m.get_interaction_counts([P1, C1, B1]) == {
        "likes": [3, 1, 0], "reposts": [0, 0, 0], "replies": [2, 1, 1], "quotes": [1, 0, 1]}
    assert m.get_thread(C1) == [P1, C1, VR]
    assert m.get_thread(P1, below=1) == [P1, BR, C1]
    assert m.get_known_likers(VIEWER, [P1, C1]) == [(P1, {BOB, CAROL}), (C1, {BOB})]
    assert m.get_block_existence([(VIEWER, EVE), (VIEWER, MALLORY), (VIEWER, ALICE), (VIEWER, DAVE)]) == [
        True, True, False, False]
    assert m.get_likes_by_actor_and_subjects(VIEWER, [P2, P1]) == ["", VIEWER_LIKE_P1_OLD]
    records = m.get_records([P1, P0])
    assert records[1] is None and records[0] == world.record(P1, "2023-01-01T00:00:00.000Z")
