"""bsky.Service's graph, interaction, list and feed RPCs (smalldp.appview.rpcs.graph,
.interactions, .lists, .feeds), called as the gRPC server calls them: the registered
handler with a DataPlaneReader and a decoded bsky_pb2 request.

Expected answers come from the brute-force model (tests/appview_model.py, which shares
no code with smalldp.store) fed the same Jetstream v1 events as the real Writer, or are
written out by hand from the events.  Random histories (test_dataplane.History: double
likes, re-creates, deletes, late deliveries, replays, deactivated / taken-down /
deleted accounts, blocks and list blocks) over several seeds; every cursor walked to
the end and the pages' concatenation compared; work bounds lowered so that pages cut
short by them are walked too.  Bad input is ``invalid_argument``, never another error.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from google.protobuf.message import Message

from smalldp.appview.proto import bsky_pb2
from smalldp.appview.rpcs import args, handlers
from smalldp.appview.rpcs.base import RpcError
from smalldp.store.dataplane import DataPlaneReader, encode_feed_cursor
from smalldp.store.dataplane.graph import encode_search_cursor
from smalldp.store.dataplane.interactions import encode_scan_cursor
from smalldp.store.reader import encode_cursor
from smalldp.store.writer import Writer

import appview_model as am
from appview_model import AppViewModel
from helpers_server import BASE_US, Events, apply, did
from test_dataplane import History, Universe, tidk

pytestmark = pytest.mark.timeout(300)

SYNC, _ = handlers()
MINE = [
    "GetActorFollowsActors", "GetFollowers", "GetFollows", "GetLikesBySubject", "GetLikesBySubjectSorted",
    "GetLikesByActorAndSubjects", "GetActorLikes", "GetRepostsBySubject", "GetRepostsByActorAndSubjects",
    "GetActorReposts", "GetQuotesBySubjectSorted", "GetInteractionCounts", "GetCountsForUsers",
    "GetStarterPackCounts", "GetListCounts", "GetListCount", "GetRelationships", "GetBlockExistence",
    "GetBidirectionalBlock", "GetBidirectionalBlockViaList", "GetBlocks", "GetBlocklistSubscription",
    "GetBlocklistSubscriptions", "GetActorLists", "GetListMembers", "GetListMembership", "GetFollowsFollowing",
    "GetActorFeeds", "GetActorStarterPacks", "GetAuthorFeed", "GetTimeline", "GetListFeed", "GetThread",
    "SearchActors",
]
FEED_TYPES = {  # FeedType -> the model's author-feed filter
    bsky_pb2.FEED_TYPE_UNSPECIFIED: "posts_with_replies",
    bsky_pb2.FEED_TYPE_POSTS_AND_AUTHOR_THREADS: "posts_and_author_threads",
    bsky_pb2.FEED_TYPE_POSTS_NO_REPLIES: "posts_no_replies",
    bsky_pb2.FEED_TYPE_POSTS_WITH_MEDIA: "posts_with_media",
    bsky_pb2.FEED_TYPE_POSTS_WITH_VIDEO: "posts_with_video",
}


def request(method: str, **fields: Any) -> Message:
    """The method's request message with the given fields."""
    return getattr(bsky_pb2, f"{method}Request")(**fields)


def call(dp: DataPlaneReader, method: str, **fields: Any) -> Any:
    """Call the registered handler as the server does; check the response type."""
    response = SYNC[method](dp, request(method, **fields))
    assert type(response).__name__ == f"{method}Response", (method, type(response))
    return response


def walk(dp: DataPlaneReader, method: str, key: str, limit: int, **fields: Any) -> list[Any]:
    """Every page of a paged method concatenated (cursor "" ends it); each page within its limit."""
    out: list[Any] = []
    cursor = ""
    for _ in range(20_000):
        response = call(dp, method, limit=limit, cursor=cursor, **fields)
        page = list(getattr(response, key))
        assert len(page) <= (limit or args.LIMIT_DEFAULT), (method, fields, limit, len(page))
        out += page
        if not response.cursor:
            return out
        assert response.cursor != cursor, (method, fields, "a cursor that does not move")
        cursor = response.cursor
    raise AssertionError(f"{method} {fields}: no last page")


def ref(uri: str) -> bsky_pb2.RecordRef:
    """A RecordRef naming uri (the cid is ignored)."""
    return bsky_pb2.RecordRef(uri=uri, cid="bafyignored")


# ---------------------------------------------------------------- stores from random histories


@dataclass
class Store:
    """A store read through a DataPlaneReader, and the model after the same history."""

    name: str
    dp: DataPlaneReader
    model: AppViewModel
    u: Universe
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    @property
    def people(self) -> list[str]:
        """Every DID of the universe, the ghost (only ever a subject) and a stranger."""
        return self.u.subjects + [self.u.stranger]

    def limit(self) -> int:
        """A page size: mostly tiny (many cursors), sometimes 0 (the default) or the maximum."""
        return self.rng.choice([1, 1, 2, 3, 5, 0, 100])


SEEDS = [  # (seed, DIDs, events, fraction of the history applied)
    (21, 8, 700, 1.0), (22, 12, 900, 1.0), (23, 10, 1000, 0.5), (24, 20, 900, 1.0), (25, 6, 600, 1.0),
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Store]]:
    """One store per seed, built by the real Writer batch by batch (odd seeds with merges
    and purges left under way between batches), and the model fed the same batches."""
    out = []
    writers = []
    for seed, n_dids, n_events, part in SEEDS:
        history = History(seed, n_dids, n_events)
        batches = history.batches()
        batches = batches[:max(2, int(len(batches) * part))]
        path = tmp_path_factory.mktemp(f"gf{seed}") / "db.sqlite"
        writer = Writer(path, fanout=2, chunk_entries=4, merge_slices=1 if seed % 2 else None, merge_slice_rows=3,
                        purge_rows=2 if seed % 2 else None)
        model = AppViewModel()
        for batch in batches:
            apply(writer, batch)
            model.apply_all(batch)
        writers.append(writer)
        out.append(Store(f"seed{seed}", DataPlaneReader(path), model, history.u, random.Random(seed)))
    statuses = {a.status for s in out for a in s.model.actors.values()}
    assert {"deleted", "takendown", "deactivated"} <= statuses, statuses  # the histories reach them
    yield out
    for store in out:
        store.dp.close()
    for writer in writers:
        writer.close()


def test_registry() -> None:
    """Every RPC of this family is registered under its bsky.Service name, and each
    handler's annotated request and response types are the method's."""
    import typing
    methods = {m.name: m for m in bsky_pb2.DESCRIPTOR.services_by_name["Service"].methods}
    for name in MINE:
        assert name in methods and name in SYNC, name
        hints = typing.get_type_hints(SYNC[name])
        if hasattr(hints["req"], "DESCRIPTOR"):
            assert hints["req"].DESCRIPTOR.full_name == methods[name].input_type.full_name, name
        assert hints["return"].DESCRIPTOR.full_name == methods[name].output_type.full_name, name


# ---------------------------------------------------------------- graph


def _follow_dict(info: bsky_pb2.FollowInfo) -> dict[str, str]:
    return {"uri": info.uri, "actorDid": info.actor_did, "subjectDid": info.subject_did}


def test_followers_follows_blocks(stores: list[Store]) -> None:
    """GetFollowers / GetFollows / GetBlocks: live edges to active subjects, newest first."""
    for s in stores:
        seen = 0
        for actor in s.people:
            for limit in (s.limit(), 2):
                got = [_follow_dict(f) for f in walk(s.dp, "GetFollowers", "followers", limit, actor_did=actor)]
                assert got == s.model.get_followers(actor), (s.name, actor, limit)
                got = [_follow_dict(f) for f in walk(s.dp, "GetFollows", "follows", limit, actor_did=actor)]
                assert got == s.model.get_follows(actor), (s.name, actor, limit)
                got = walk(s.dp, "GetBlocks", "block_uris", limit, actor_did=actor)
                assert got == s.model.get_blocks(actor), (s.name, actor, limit)
                seen += len(got)
        assert seen > 0, s.name


def test_actor_follows_actors_and_follows_following(stores: list[Store]) -> None:
    """Per target: the actor's newest follow of it or ""; the followed accounts that
    follow it (a set: the order is account IDs)."""
    known = 0
    for s in stores:
        targets = s.people + [s.u.dids[0]]
        for actor in s.people:
            got = call(s.dp, "GetActorFollowsActors", actor_did=actor, target_dids=targets).uris
            assert list(got) == s.model.get_actor_follows_actors(actor, targets), (s.name, actor)
            results = call(s.dp, "GetFollowsFollowing", actor_did=actor, target_dids=targets).results
            want = s.model.get_follows_following(actor, targets)
            assert len(results) == len(targets)
            for result, (target, dids) in zip(results, want):
                assert result.target_did == target
                assert len(result.dids) == len(set(result.dids)) and set(result.dids) == dids, (s.name, actor, target)
                known += len(dids)
        assert call(s.dp, "GetActorFollowsActors", actor_did=s.u.dids[0]).uris == []
    assert known > 0


def test_relationships(stores: list[Store]) -> None:
    """Follows and direct blocks both ways as record uris; blocks through lists as the
    list's uri (what the AppView hydrates); never muted."""
    kinds: set[str] = set()
    for s in stores:
        for viewer in s.people:
            rels = call(s.dp, "GetRelationships", actor_did=viewer, target_dids=s.people).relationships
            want = s.model.get_relationships(viewer, s.people, list_uris=True)
            assert len(rels) == len(s.people)
            for rel, exp in zip(rels, want):
                assert not rel.muted and rel.muted_by_list == ""
                got = {"targetDid": exp["targetDid"], "following": rel.following, "followedBy": rel.followed_by,
                       "blocking": rel.blocking, "blockedBy": rel.blocked_by,
                       "blockingByList": rel.blocking_by_list, "blockedByList": rel.blocked_by_list}
                assert got == exp, (s.name, viewer, exp["targetDid"])
                kinds |= {k for k, v in exp.items() if v and k != "targetDid"}
    assert kinds == {"following", "followedBy", "blocking", "blockedBy", "blockingByList", "blockedByList"}


def test_block_existence_and_bidirectional_blocks(stores: list[Store]) -> None:
    """GetBlockExistence: per pair, whether a block exists either way and the blocks
    themselves; GetBidirectionalBlock(ViaList): one of them, the actor's first."""
    hits = 0
    for s in stores:
        pairs = [(a, b) for a in s.people for b in s.people]
        s.rng.shuffle(pairs)
        response = call(s.dp, "GetBlockExistence", pairs=[bsky_pb2.RelationshipPair(a=a, b=b) for a, b in pairs])
        want = s.model.get_block_refs(pairs)
        assert len(response.exists) == len(response.blocks) == len(pairs)
        for pair, exists, block, exp in zip(pairs, response.exists, response.blocks, want):
            got = {"blocking": block.blocking, "blockedBy": block.blocked_by,
                   "blockingByList": block.blocking_by_list, "blockedByList": block.blocked_by_list}
            assert got == exp, (s.name, pair)
            assert exists == any(exp.values()) == s.model.get_block_existence([pair])[0], (s.name, pair)
            hits += exists
        for a, b in pairs[:150]:
            assert call(s.dp, "GetBidirectionalBlock", actor_did=a, target_did=b).block_uri == \
                s.model.get_bidirectional_block(a, b), (s.name, a, b)
            assert call(s.dp, "GetBidirectionalBlockViaList", actor_did=a, target_did=b).list_uri == \
                s.model.get_bidirectional_block_via_list(a, b), (s.name, a, b)
    assert hits > 0


def test_blocklist_subscriptions(stores: list[Store]) -> None:
    """GetBlocklistSubscription: the actor's newest listblock of the list; ...Subscriptions:
    the live lists blocked, each once, by newest listblock."""
    found = 0
    for s in stores:
        for actor in s.people:
            for list_uri in s.u.list_uris:
                got = call(s.dp, "GetBlocklistSubscription", actor_did=actor, list_uri=list_uri).listblock_uri
                assert got == s.model.get_blocklist_subscription(actor, list_uri), (s.name, actor, list_uri)
                found += bool(got)
            limit = s.limit()
            got_lists = walk(s.dp, "GetBlocklistSubscriptions", "list_uris", limit, actor_did=actor)
            assert got_lists == s.model.get_blocklist_subscriptions(actor), (s.name, actor, limit)
    assert found > 0


def gone_dids(dp: DataPlaneReader) -> set[str]:
    """Deleted accounts whose rows the purge sweep has not removed yet: counted nowhere."""
    return dp._read(lambda: {dp._did(aid) for aid in dp.gone})


def test_counts_for_users(stores: list[Store]) -> None:
    """Followers / following count accounts, inactive ones too (as the reference's
    aggregates); the rest records; drafts 0; aligned, repeats too; dev.smalldp's rule
    (inactive accounts count nowhere) for the reader's default."""
    differ = 0
    for s in stores:
        dids = s.people + s.people[:2]
        response = call(s.dp, "GetCountsForUsers", dids=dids)
        want = s.model.get_counts_for_users(dids, inactive=True, gone=gone_dids(s.dp))
        for key, attr in (("followers", "followers"), ("following", "following"), ("posts", "posts"),
                          ("reposts", "reposts"), ("lists", "lists"), ("feeds", "feeds"),
                          ("starterPacks", "starter_packs")):
            assert list(getattr(response, attr)) == want[key], (s.name, key)
        assert list(response.drafts) == [0] * len(dids)
        assert s.dp.counts_for_users(dids) == s.model.get_counts_for_users(dids), s.name
        differ += want != s.model.get_counts_for_users(dids)
        assert s.dp.counts_for_users(dids, reference=True) == want
    assert differ  # inactive accounts' follows are in the histories
    assert call(stores[0].dp, "GetCountsForUsers") == bsky_pb2.GetCountsForUsersResponse()


# ---------------------------------------------------------------- interactions


def test_records_by_subject(stores: list[Store]) -> None:
    """Likes (both names), reposts and quotes of a subject: every live record, newest first."""
    seen = 0
    for s in stores:
        for subject in s.u.post_uris + s.u.list_uris[:2]:
            limit = s.limit()
            likes = walk(s.dp, "GetLikesBySubjectSorted", "uris", limit, subject=ref(subject))
            assert likes == s.model.get_likes_by_subject(subject), (s.name, subject, limit)
            assert walk(s.dp, "GetLikesBySubject", "uris", s.limit(), subject=ref(subject)) == likes
            reposts = walk(s.dp, "GetRepostsBySubject", "uris", limit, subject=ref(subject))
            assert reposts == s.model.get_reposts_by_subject(subject), (s.name, subject, limit)
            quotes = walk(s.dp, "GetQuotesBySubjectSorted", "uris", limit, subject=ref(subject))
            assert quotes == s.model.get_quotes_by_subject(subject), (s.name, subject, limit)
            seen += len(likes) + len(reposts) + len(quotes)
    assert seen > 20
    # no subject at all: nothing (as the reference answers)
    assert call(stores[0].dp, "GetLikesBySubjectSorted").uris == []
    assert call(stores[0].dp, "GetQuotesBySubjectSorted", subject=ref("")).uris == []


def test_by_actor_and_subjects(stores: list[Store]) -> None:
    """Per ref, the actor's newest live like / repost of it, or "" (aligned, repeats kept)."""
    found = 0
    for s in stores:
        subjects = s.u.post_uris + s.u.list_uris[:1]
        subjects += subjects[:3]
        for actor in s.people:
            refs = [ref(x) for x in subjects]
            got = call(s.dp, "GetLikesByActorAndSubjects", actor_did=actor, refs=refs).uris
            assert list(got) == s.model.get_likes_by_actor_and_subjects(actor, subjects), (s.name, actor)
            got = call(s.dp, "GetRepostsByActorAndSubjects", actor_did=actor, refs=refs).uris
            assert list(got) == s.model.get_reposts_by_actor_and_subjects(actor, subjects), (s.name, actor)
            found += sum(1 for x in got if x)
    assert found > 0


def test_interaction_counts(stores: list[Store]) -> None:
    """Likes / reposts count accounts, replies / quotes records, inactive accounts' too (as
    the reference's aggregates); bookmarks 0; dev.smalldp's rule for the reader's default."""
    total = differ = 0
    for s in stores:
        uris = s.u.post_uris + s.u.list_uris[:2] + [f"at://{s.u.stranger}/{am.POST}/{tidk(0, 1)}"]
        response = call(s.dp, "GetInteractionCounts", refs=[ref(u) for u in uris])
        want = s.model.get_interaction_counts(uris, inactive=True, gone=gone_dids(s.dp))
        for key in ("likes", "reposts", "replies", "quotes"):
            assert list(getattr(response, key)) == want[key], (s.name, key)
            total += sum(want[key])
        assert list(response.bookmarks) == [0] * len(uris)
        assert s.dp.interaction_counts(uris) == s.model.get_interaction_counts(uris), s.name
        differ += want != s.model.get_interaction_counts(uris)
    assert total > 20 and differ


@pytest.mark.parametrize("scan_rows", [10_000, 1, 7])
def test_actor_likes_and_reposts(stores: list[Store], monkeypatch: pytest.MonkeyPatch, scan_rows: int) -> None:
    """GetActorLikes: {uri, subject} of the actor's live likes, newest first, also when the
    forward walk is cut every few rows (pages short or empty, with a cursor);
    GetActorReposts: the actor's live reposts."""
    monkeypatch.setattr("smalldp.store.dataplane.interactions.ACTOR_LIKES_SCAN_ROWS", scan_rows)
    seen = 0
    for s in stores:
        for actor in s.people:
            limit = s.limit()
            likes = walk(s.dp, "GetActorLikes", "likes", limit, actor_did=actor)
            assert [{"uri": x.uri, "subject": x.subject} for x in likes] == s.model.get_actor_likes(actor), \
                (s.name, actor, limit)
            reposts = walk(s.dp, "GetActorReposts", "uris", limit, actor_did=actor)
            assert reposts == s.model.get_actor_records(actor, am.REPOST), (s.name, actor, limit)
            seen += len(likes) + len(reposts)
    assert seen > 20


# ---------------------------------------------------------------- lists


def test_lists(stores: list[Store]) -> None:
    """GetActorLists, GetListMembers, GetListMembership, GetListCounts, GetListCount."""
    members = 0
    for s in stores:
        for actor in s.people:
            limit = s.limit()
            assert walk(s.dp, "GetActorLists", "list_uris", limit, actor_did=actor) == \
                s.model.get_actor_lists(actor), (s.name, actor, limit)
            got = call(s.dp, "GetListMembership", actor_did=actor, list_uris=s.u.list_uris).listitem_uris
            assert list(got) == s.model.get_list_membership(actor, s.u.list_uris), (s.name, actor)
        for list_uri in s.u.list_uris:
            limit = s.limit()
            items = walk(s.dp, "GetListMembers", "listitems", limit, list_uri=list_uri)
            assert [{"uri": i.uri, "did": i.did} for i in items] == s.model.get_list_members(list_uri), \
                (s.name, list_uri, limit)
            assert call(s.dp, "GetListCount", list_uri=list_uri).count == s.model.get_list_counts([list_uri])[0]
            members += len(items)
        lists = s.u.list_uris + s.u.post_uris[:2] + s.u.list_uris[:2]
        counts = call(s.dp, "GetListCounts", refs=[ref(x) for x in lists]).list_items
        assert list(counts) == s.model.get_list_counts(lists), s.name
    assert members > 0


# ---------------------------------------------------------------- feeds


def _item(i: Any) -> dict[str, str]:
    return {"uri": i.uri, "cid": i.cid, "repost": i.repost, "repostCid": i.repost_cid}


def _feed(items: list[dict[str, str]]) -> list[dict[str, str]]:
    """A model feed as the RPCs answer it: no item for a repost of no at-uri."""
    return [item for item in items if item["uri"]]


def test_author_feed(stores: list[Store]) -> None:
    """Every FeedType, every page: the actor's posts and reposts, newest first."""
    counts = dict.fromkeys(FEED_TYPES.values(), 0)
    for s in stores:
        for actor in s.u.dids + [s.u.stranger]:
            for feed_type, filter_ in FEED_TYPES.items():
                limit = s.limit()
                got = [_item(i) for i in walk(s.dp, "GetAuthorFeed", "items", limit, actor_did=actor,
                                              feed_type=feed_type)]
                want = _feed(s.model.get_author_feed(actor, filter_))
                assert got == want, (s.name, actor, filter_, limit)
                counts[filter_] += len(want)
    assert all(counts.values()), counts


@pytest.mark.parametrize("segments", [4000, 1, 3])
def test_timeline_and_list_feed(stores: list[Store], monkeypatch: pytest.MonkeyPatch, segments: int) -> None:
    """GetTimeline: posts and reposts of the viewer and its follows; GetListFeed: posts of
    the list's members; both newest first, also when the segments read per page are cut
    to a few (pages short or empty, with a cursor)."""
    monkeypatch.setattr("smalldp.store.dataplane.feeds.TIMELINE_SEGMENTS_MAX", segments)
    listed = 0
    for s in stores:
        for viewer in s.u.dids + [s.u.stranger]:
            limit = s.limit()
            got = [_item(i) for i in walk(s.dp, "GetTimeline", "items", limit, actor_did=viewer)]
            assert got == _feed(s.model.get_timeline(viewer)), (s.name, viewer, limit)
        for list_uri in s.u.list_uris:
            limit = s.limit()
            got = [_item(i) for i in walk(s.dp, "GetListFeed", "items", limit, list_uri=list_uri)]
            assert got == s.model.get_list_feed(list_uri), (s.name, list_uri, limit)
            listed += len(got)
    assert listed > 0


def test_thread(stores: list[Store]) -> None:
    """Ancestors root-most first, the post, descendants breadth-first; levels past 1,000
    count as 1,000."""
    deep = 0
    for s in stores:
        for uri in s.u.post_uris:
            for above, below in [(0, 0), (1, 1), (2, 3), (10, 6), (100, 20), (1000, 1000)]:
                got = list(call(s.dp, "GetThread", post_uri=uri, above=above, below=below).uris)
                assert got == s.model.get_thread(uri, above, below), (s.name, uri, above, below)
                deep += len(got) > 2
            assert list(call(s.dp, "GetThread", post_uri=uri, above=5000, below=2**31 - 1).uris) == \
                s.model.get_thread(uri, 1000, 1000)
    assert deep > 0


def test_actor_feeds_and_starter_packs(stores: list[Store]) -> None:
    """GetActorFeeds / GetActorStarterPacks: the actor's live records, newest first."""
    seen = 0
    for s in stores:
        for actor in s.people:
            limit = s.limit()
            feeds = walk(s.dp, "GetActorFeeds", "uris", limit, actor_did=actor)
            assert feeds == s.model.get_actor_records(actor, am.GENERATOR), (s.name, actor, limit)
            packs = walk(s.dp, "GetActorStarterPacks", "uris", limit, actor_did=actor)
            assert packs == s.model.get_actor_records(actor, am.STARTERPACK), (s.name, actor, limit)
            seen += len(feeds) + len(packs)
    assert seen > 0


@pytest.mark.parametrize("scan", [1000, 1, 2])
def test_search_actors(stores: list[Store], monkeypatch: pytest.MonkeyPatch, scan: int) -> None:
    """Active accounts whose handle starts with the term, in handle order (several DIDs
    may claim one handle: compared as sets within a handle); also with the rows read per
    page cut to one or two."""
    monkeypatch.setattr("smalldp.store.dataplane.graph.SEARCH_SCAN_MAX", scan)
    hits = 0
    for s in stores:
        handles = {d: a.handle for d, a in s.model.actors.items()}
        for term in ["", "a", "alice", "ALICE.test", "@bob", "  carol ", "c", "dan.example.com", "dan.example.comx",
                     "z", "\U0010ffff", "alice.test\U0010ffff"]:
            limit = s.limit()
            dids = walk(s.dp, "SearchActors", "dids", limit, term=term)
            want = s.model.search_actors(term.strip().removeprefix("@"))
            assert [handles[d] for d in dids] == [h for h, _ in want], (s.name, term, limit)
            for handle, group in itertools.groupby(want, key=lambda x: x[0]):
                assert {d for d in dids if handles[d] == handle} == {d for _, d in group}, (s.name, term)
            hits += len(dids)
    assert hits > 0


# ---------------------------------------------------------------- by hand


def test_by_hand_blocks_lists_and_inactive(tmp_path: Path) -> None:
    """Blocks through lists, list members and feeds, inactive accounts and deletes, with
    the answers written out from the events."""
    ev = Events()
    owner, viewer, member, other, fan = (did(n) for n in ("owner", "viewer", "member", "other", "fan"))
    list_uri = f"at://{owner}/{am.LIST}/{tidk(1, 6)}"
    foreign_list = f"at://{other}/{am.LIST}/{tidk(2, 6)}"
    item = f"at://{owner}/{am.LISTITEM}/{tidk(1, 7)}"
    block_list = f"at://{viewer}/{am.LISTBLOCK}/{tidk(1, 8)}"
    block = f"at://{member}/{am.BLOCK}/{tidk(1, 5)}"
    post = f"at://{member}/{am.POST}/{tidk(3, 1)}"
    follow = f"at://{fan}/{am.FOLLOW}/{tidk(1, 4)}"
    like = f"at://{fan}/{am.LIKE}/{tidk(1, 2)}"
    events = [
        ev.put(owner, am.LIST, tidk(1, 6), {"$type": am.LIST, "name": "mods", "purpose": "app.bsky.graph.defs#modlist"}),
        ev.put(other, am.LIST, tidk(2, 6), {"$type": am.LIST, "name": "x", "purpose": "app.bsky.graph.defs#modlist"}),
        ev.listitem(owner, tidk(1, 7), list_uri, member),
        # a listitem by someone who does not own the list puts nobody in it
        ev.listitem(other, tidk(2, 7), list_uri, fan),
        ev.put(viewer, am.LISTBLOCK, tidk(1, 8), {"$type": am.LISTBLOCK, "subject": list_uri}),
        ev.put(viewer, am.LISTBLOCK, tidk(2, 8), {"$type": am.LISTBLOCK, "subject": foreign_list}),
        ev.put(member, am.BLOCK, tidk(1, 5), {"$type": am.BLOCK, "subject": fan}),
        ev.post(member, tidk(3, 1), "hello"),
        ev.follow(fan, tidk(1, 4), member),
        ev.like(fan, tidk(1, 2), post),
    ]
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    apply(writer, events)
    dp = DataPlaneReader(path)
    try:
        rel = call(dp, "GetRelationships", actor_did=viewer, target_dids=[member, fan, "not a did"]).relationships
        assert [r.blocking_by_list for r in rel] == [list_uri, "", ""]
        assert call(dp, "GetBidirectionalBlockViaList", actor_did=member, target_did=viewer).list_uri == list_uri
        pair = call(dp, "GetBlockExistence", pairs=[bsky_pb2.RelationshipPair(a=member, b=viewer),
                                                    bsky_pb2.RelationshipPair(a=fan, b=member),
                                                    bsky_pb2.RelationshipPair(a=fan, b=viewer)])
        assert list(pair.exists) == [True, True, False]
        assert pair.blocks[0] == bsky_pb2.BlockExistence(blocked_by_list=list_uri)
        assert pair.blocks[1] == bsky_pb2.BlockExistence(blocked_by=block)
        assert pair.blocks[2] == bsky_pb2.BlockExistence()
        assert call(dp, "GetBidirectionalBlock", actor_did=fan, target_did=member).block_uri == block
        assert call(dp, "GetBlocklistSubscription", actor_did=viewer, list_uri=list_uri).listblock_uri == block_list
        assert list(call(dp, "GetBlocklistSubscriptions", actor_did=viewer).list_uris) == [foreign_list, list_uri]
        members = call(dp, "GetListMembers", list_uri=list_uri).listitems
        assert [(m.uri, m.did) for m in members] == [(item, member)]
        assert list(call(dp, "GetListCounts", refs=[ref(list_uri), ref(foreign_list)]).list_items) == [1, 0]
        assert [i.uri for i in call(dp, "GetListFeed", list_uri=list_uri).items] == [post]
        assert [f.uri for f in call(dp, "GetFollowers", actor_did=member).followers] == [follow]
        assert [(x.uri, x.subject) for x in call(dp, "GetActorLikes", actor_did=fan).likes] == [(like, post)]
        counts = call(dp, "GetCountsForUsers", dids=[member, fan])
        assert (list(counts.followers), list(counts.following), list(counts.posts)) == ([1, 0], [0, 1], [1, 0])

        # the list's owner deactivates: its list blocks nobody, its list is empty
        apply(writer, [ev.account(owner, False, 2, "deactivated"),
                       ev.account(fan, False, 2, "takendown")])
        assert call(dp, "GetRelationships", actor_did=viewer, target_dids=[member]).relationships[0] == \
            bsky_pb2.Relationships()
        assert call(dp, "GetBidirectionalBlockViaList", actor_did=member, target_did=viewer).list_uri == ""
        assert list(call(dp, "GetBlocklistSubscriptions", actor_did=viewer).list_uris) == [foreign_list]
        assert list(call(dp, "GetListCounts", refs=[ref(list_uri)]).list_items) == [0]
        assert call(dp, "GetListFeed", list_uri=list_uri).items == []
        # the taken-down fan: its follow, like and block target vanish
        assert call(dp, "GetFollowers", actor_did=member).followers == []
        assert call(dp, "GetActorLikes", actor_did=fan).likes == []
        assert call(dp, "GetBidirectionalBlock", actor_did=fan, target_did=member).block_uri == ""
        # ... but its like still counts, as in the reference's aggregates (dev.smalldp: not)
        assert list(call(dp, "GetInteractionCounts", refs=[ref(post)]).likes) == [1]
        assert dp.interaction_counts([post])["likes"] == [0]

        # both back; then the listitem and the block are deleted
        apply(writer, [ev.account(owner, True, 3), ev.account(fan, True, 3)])
        assert call(dp, "GetBidirectionalBlockViaList", actor_did=viewer, target_did=member).list_uri == list_uri
        apply(writer, [ev.delete(owner, am.LISTITEM, tidk(1, 7)), ev.delete(member, am.BLOCK, tidk(1, 5))])
        assert call(dp, "GetBidirectionalBlockViaList", actor_did=viewer, target_did=member).list_uri == ""
        assert call(dp, "GetBidirectionalBlock", actor_did=fan, target_did=member).block_uri == ""
        assert call(dp, "GetListMembers", list_uri=list_uri).listitems == []
        assert call(dp, "GetListCount", list_uri=list_uri).count == 0
        assert [(x.uri, x.subject) for x in call(dp, "GetActorLikes", actor_did=fan).likes] == [(like, post)]
    finally:
        dp.close()
        writer.close()


def test_starter_pack_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Profiles that joined through a starter pack, all time and in the last week (by the
    profile's own createdAt); a deactivated account's profile does not count. With the
    bodies read per request cut, the week counts the most recently first-seen profiles."""
    ev = Events()
    creator = did("creator")
    pack = f"at://{creator}/{am.STARTERPACK}/{tidk(1, 10)}"
    other_pack = f"at://{creator}/{am.STARTERPACK}/{tidk(2, 10)}"
    now_us = time.time_ns() // 1000

    def created(days_ago: float) -> str:
        return am.iso_ms(am.time_us_to_datetime(now_us - int(days_ago * 86_400_000_000)))

    joiners = [(did(f"joiner{i}"), days) for i, days in enumerate([0.5, 2, 6.5, 8, 30, 1])]
    events = [ev.put(creator, am.STARTERPACK, tidk(1, 10), {"$type": am.STARTERPACK, "name": "p", "list": ""})]
    for who, days in joiners:
        events.append(ev.put(who, am.PROFILE, "self", {"$type": am.PROFILE, "createdAt": created(days),
                                                        "joinedViaStarterPack": {"uri": pack, "cid": "bafy"}}))
    events.append(ev.put(did("nodate"), am.PROFILE, "self", {"$type": am.PROFILE,
                                                             "joinedViaStarterPack": {"uri": pack, "cid": "bafy"}}))
    events.append(ev.account(joiners[-1][0], False, 2, "deactivated"))
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    apply(writer, events)
    model = AppViewModel()
    model.apply_all(events)
    dp = DataPlaneReader(path)
    try:
        uris = [pack, other_pack, pack, "not a uri"]
        response = call(dp, "GetStarterPackCounts", refs=[ref(u) for u in uris])
        assert list(response.joined_all_time) == [6, 0, 6, 0]  # 5 dated active joiners + the undated one
        assert list(response.joined_week) == [3, 0, 3, 0]  # 0.5, 2 and 6.5 days ago
        all_time, week = model.get_starter_pack_counts(uris, now_us)
        assert (list(response.joined_all_time), list(response.joined_week)) == (all_time, week)
        # four reads: "nodate", then joiners 4 (30 days), 3 (8 days), 2 (6.5 days): one in the week
        monkeypatch.setattr("smalldp.store.dataplane.interactions.JOINED_WEEK_READS", 4)
        monkeypatch.setattr("smalldp.store.dataplane.interactions.JOINED_WEEK_MIN", 1)
        response = call(dp, "GetStarterPackCounts", refs=[ref(pack)])
        assert (list(response.joined_all_time), list(response.joined_week)) == ([6], [1])
    finally:
        dp.close()
        writer.close()


# ---------------------------------------------------------------- bad input


GOOD_DID = did("someone")
GOOD_LIST = f"at://{GOOD_DID}/{am.LIST}/{tidk(0, 6)}"
GOOD_POST = f"at://{GOOD_DID}/{am.POST}/{tidk(1, 1)}"
BAD_DIDS = ["notadid", "did:plc:", "did:PLC:abc", "did:plc:ab cd", f"at://{GOOD_DID}", "did:plc:" + "x" * 3000]
BAD_URIS = ["notauri", "https://example.com/x", "at://", "at:// spaces here", GOOD_DID, "at://not_a_host!/x/y",
            "at://" + GOOD_DID + "/" + "x" * 3000]
BAD_LIMITS = [101, -1, 1000, 2**31 - 1, -(2**31)]
SIMPLE, FEED, SCAN, SEARCH = (encode_cursor((5, 1)), encode_feed_cursor((5, 1, 0)),
                              encode_scan_cursor((5, 1, 1)), encode_search_cursor("alice.test.example", 5))
CURSORS = {"simple": SIMPLE, "feed": FEED, "scan": SCAN, "search": SEARCH}
GARBAGE_CURSORS = ["!!!garbage!!!", "x", "\u00e9\u00e9", "A" * (args.CURSOR_MAX + 1)]

# method -> (a valid request's fields, its DID fields, its at-uri fields, its cursor kind or None)
SHAPES: dict[str, tuple[dict[str, Any], list[str], list[str], str | None]] = {
    "GetActorFollowsActors": ({"actor_did": GOOD_DID, "target_dids": [GOOD_DID]}, ["actor_did"], [], None),
    "GetFollowers": ({"actor_did": GOOD_DID}, ["actor_did"], [], "simple"),
    "GetFollows": ({"actor_did": GOOD_DID}, ["actor_did"], [], "simple"),
    "GetLikesBySubject": ({"subject": ref(GOOD_POST)}, [], ["subject"], "simple"),
    "GetLikesBySubjectSorted": ({"subject": ref(GOOD_POST)}, [], ["subject"], "simple"),
    "GetLikesByActorAndSubjects": ({"actor_did": GOOD_DID, "refs": [ref(GOOD_POST)]}, ["actor_did"], [], None),
    "GetActorLikes": ({"actor_did": GOOD_DID}, ["actor_did"], [], "scan"),
    "GetRepostsBySubject": ({"subject": ref(GOOD_POST)}, [], ["subject"], "simple"),
    "GetRepostsByActorAndSubjects": ({"actor_did": GOOD_DID, "refs": [ref(GOOD_POST)]}, ["actor_did"], [], None),
    "GetActorReposts": ({"actor_did": GOOD_DID}, ["actor_did"], [], "simple"),
    "GetQuotesBySubjectSorted": ({"subject": ref(GOOD_POST)}, [], ["subject"], "simple"),
    "GetInteractionCounts": ({"refs": [ref(GOOD_POST)]}, [], [], None),
    "GetCountsForUsers": ({"dids": [GOOD_DID]}, [], [], None),
    "GetStarterPackCounts": ({"refs": [ref(GOOD_POST)]}, [], [], None),
    "GetListCounts": ({"refs": [ref(GOOD_LIST)]}, [], [], None),
    "GetListCount": ({"list_uri": GOOD_LIST}, [], ["list_uri"], None),
    "GetRelationships": ({"actor_did": GOOD_DID, "target_dids": [GOOD_DID]}, ["actor_did"], [], None),
    "GetBlockExistence": ({"pairs": [bsky_pb2.RelationshipPair(a=GOOD_DID, b=GOOD_DID)]}, [], [], None),
    "GetBidirectionalBlock": ({"actor_did": GOOD_DID, "target_did": GOOD_DID}, ["actor_did", "target_did"], [],
                              None),
    "GetBidirectionalBlockViaList": ({"actor_did": GOOD_DID, "target_did": GOOD_DID}, ["actor_did", "target_did"],
                                     [], None),
    "GetBlocks": ({"actor_did": GOOD_DID}, ["actor_did"], [], "simple"),
    "GetBlocklistSubscription": ({"actor_did": GOOD_DID, "list_uri": GOOD_LIST}, ["actor_did"], ["list_uri"], None),
    "GetBlocklistSubscriptions": ({"actor_did": GOOD_DID}, ["actor_did"], [], "simple"),
    "GetActorLists": ({"actor_did": GOOD_DID}, ["actor_did"], [], "simple"),
    "GetListMembers": ({"list_uri": GOOD_LIST}, [], ["list_uri"], "simple"),
    "GetListMembership": ({"actor_did": GOOD_DID, "list_uris": [GOOD_LIST]}, ["actor_did"], [], None),
    "GetFollowsFollowing": ({"actor_did": GOOD_DID, "target_dids": [GOOD_DID]}, ["actor_did"], [], None),
    "GetActorFeeds": ({"actor_did": GOOD_DID}, ["actor_did"], [], "simple"),
    "GetActorStarterPacks": ({"actor_did": GOOD_DID}, ["actor_did"], [], "simple"),
    "GetAuthorFeed": ({"actor_did": GOOD_DID}, ["actor_did"], [], "feed"),
    "GetTimeline": ({"actor_did": GOOD_DID}, ["actor_did"], [], "feed"),
    "GetListFeed": ({"list_uri": GOOD_LIST}, [], ["list_uri"], "feed"),
    "GetThread": ({"post_uri": GOOD_POST, "above": 10, "below": 6}, [], ["post_uri"], None),
    "SearchActors": ({"term": "alice"}, [], [], "search"),
}
ARRAYS = {  # method -> (array field, a valid value of it)
    "GetActorFollowsActors": ("target_dids", GOOD_DID), "GetLikesByActorAndSubjects": ("refs", ref(GOOD_POST)),
    "GetRepostsByActorAndSubjects": ("refs", ref(GOOD_POST)), "GetInteractionCounts": ("refs", ref(GOOD_POST)),
    "GetCountsForUsers": ("dids", GOOD_DID), "GetStarterPackCounts": ("refs", ref(GOOD_POST)),
    "GetListCounts": ("refs", ref(GOOD_LIST)), "GetRelationships": ("target_dids", GOOD_DID),
    "GetBlockExistence": ("pairs", bsky_pb2.RelationshipPair(a=GOOD_DID, b=GOOD_DID)),
    "GetListMembership": ("list_uris", GOOD_LIST), "GetFollowsFollowing": ("target_dids", GOOD_DID),
}


def bad_requests(method: str) -> list[tuple[str, dict[str, Any]]]:
    """(what is wrong, the request's fields) for every bad variant of the method's valid request."""
    good, did_fields, uri_fields, cursor_kind = SHAPES[method]
    out: list[tuple[str, dict[str, Any]]] = []
    for name in did_fields:
        out += [(f"{name}={v[:30]!r}", {**good, name: v}) for v in BAD_DIDS + [""]]
    for name in uri_fields:
        for v in BAD_URIS + ([] if name == "subject" else [""]):  # an empty subject is answered, as the reference
            out.append((f"{name}={v[:30]!r}", {**good, name: ref(v) if name == "subject" else v}))
    if cursor_kind is not None:
        out += [(f"limit={v}", {**good, "limit": v}) for v in BAD_LIMITS]
        foreign = [c for kind, c in CURSORS.items() if kind != cursor_kind]
        out += [(f"cursor={c[:20]!r}", {**good, "cursor": c}) for c in foreign + GARBAGE_CURSORS]
    if method in ARRAYS:
        name, value = ARRAYS[method]
        out.append((f"{name} x {args.ITEMS_MAX + 1}", {**good, name: [value] * (args.ITEMS_MAX + 1)}))
    if method == "GetAuthorFeed":
        out.append(("feed_type=99", {**good, "feed_type": 99}))
    if method == "GetThread":
        out += [("above=-1", {**good, "above": -1}), ("below=-5", {**good, "below": -5})]
    if method == "SearchActors":
        out.append(("term=long", {**good, "term": "a" * (args.TEXT_MAX + 1)}))
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlaneReader]:
    """A store knowing one account (a handle, a post, a list) and a valid cursor of each kind."""
    path = tmp_path_factory.mktemp("bad") / "db.sqlite"
    writer = Writer(path)
    ev = Events()
    apply(writer, [{"did": GOOD_DID, "time_us": BASE_US + 1, "kind": "identity",
                    "identity": {"did": GOOD_DID, "handle": "alice.test", "seq": 1}},
                   ev.post(GOOD_DID, tidk(1, 1), "hi"),
                   ev.put(GOOD_DID, am.LIST, tidk(0, 6), {"$type": am.LIST, "name": "l", "purpose": "x"})])
    writer.close()
    dp = DataPlaneReader(path)
    yield dp
    dp.close()


@pytest.mark.parametrize("method", sorted(SHAPES))
def test_bad_input_is_invalid_argument(small: DataPlaneReader, method: str) -> None:
    """The valid request answers (also with its own kind of cursor, with the largest array
    and limit allowed); every malformed field is ``invalid_argument`` naming the field."""
    good, _, _, cursor_kind = SHAPES[method]
    call(small, method, **good)
    if cursor_kind is not None:
        call(small, method, **good, cursor=CURSORS[cursor_kind], limit=args.LIMIT_MAX)
    if method in ARRAYS:
        name, value = ARRAYS[method]
        call(small, method, **{**good, name: [value] * args.ITEMS_MAX})
    for what, fields in bad_requests(method):
        with pytest.raises(RpcError) as caught:
            call(small, method, **fields)
        assert caught.value.code == "invalid_argument", (method, what, caught.value.code)
        field_name = what.split("=")[0].split(" ")[0]
        assert caught.value.message.startswith(field_name.split(".")[0]), (method, what, caught.value.message)


def test_odd_array_values_get_empty_entries(small: DataPlaneReader) -> None:
    """Arrays hold what the AppView read off records: a value that is no DID or at-uri (or
    an at-uri naming a handle) gets the empty entry at its place, not an error."""
    odd_dids = ["", "notadid", "at://x", GOOD_DID]
    odd_uris = ["", "notauri", f"at://alice.test/{am.POST}/{tidk(1, 1)}", GOOD_POST]
    counts = call(small, "GetCountsForUsers", dids=odd_dids)
    assert list(counts.posts) == [0, 0, 0, 1] and list(counts.drafts) == [0] * 4
    rel = call(small, "GetRelationships", actor_did=GOOD_DID, target_dids=odd_dids).relationships
    assert len(rel) == 4 and all(r == bsky_pb2.Relationships() for r in rel)
    follows = call(small, "GetFollowsFollowing", actor_did=GOOD_DID, target_dids=odd_dids).results
    assert [r.target_did for r in follows] == odd_dids and all(not r.dids for r in follows)
    pairs = [bsky_pb2.RelationshipPair(a=a, b=GOOD_DID) for a in odd_dids]
    blocks = call(small, "GetBlockExistence", pairs=pairs)
    assert list(blocks.exists) == [False] * 4 and all(b == bsky_pb2.BlockExistence() for b in blocks.blocks)
    inter = call(small, "GetInteractionCounts", refs=[ref(u) for u in odd_uris])
    assert list(inter.likes) == [0] * 4 and list(inter.bookmarks) == [0] * 4
    assert list(call(small, "GetLikesByActorAndSubjects", actor_did=GOOD_DID,
                     refs=[ref(u) for u in odd_uris]).uris) == [""] * 4
    assert list(call(small, "GetListMembership", actor_did=GOOD_DID, list_uris=odd_uris).listitem_uris) == [""] * 4
    assert list(call(small, "GetListCounts", refs=[ref(u) for u in odd_uris]).list_items) == [0] * 4
    # a well-formed at-uri naming a handle names nothing smalldp keeps: an empty answer
    assert call(small, "GetThread", post_uri=odd_uris[2], above=1, below=1).uris == []
    assert list(call(small, "GetThread", post_uri=GOOD_POST, above=1, below=1).uris) == [GOOD_POST]


def test_limit_zero_is_the_default(small: DataPlaneReader, tmp_path: Path) -> None:
    """limit 0 (unset) pages by 50, as the AppView's default; never everything (the
    reference's reading of 0)."""
    ev = Events()
    star = did("star")
    events = [ev.follow(did(f"f{i}"), tidk(i, 4), star) for i in range(120)]
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    apply(writer, events)
    dp = DataPlaneReader(path)
    try:
        first = call(dp, "GetFollowers", actor_did=star)
        assert len(first.followers) == args.LIMIT_DEFAULT and first.cursor
        assert len(walk(dp, "GetFollowers", "followers", 0, actor_did=star)) == 120
    finally:
        dp.close()
        writer.close()


# ---------------------------------------------------------------- one record per pair


@pytest.mark.parametrize("skip_max", [10_000, 1, 3])
def test_one_record_per_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, skip_max: int) -> None:
    """Likes, reposts, follows, blocks, list items and list blocks count once per pair, as
    the reference indexes them (store/dataplane/base.py): 40 accounts each liking,
    reposting, following, blocking one account, being put in its list and blocking that
    list one to six times, with rkeys older and newer than their earlier ones, batch after
    batch (small chunks, merges: keys in several runs, big keys read from per-run
    summaries), some pairs' oldest record deleted.  Every list names each pair once, at
    its oldest live record, newest first, on every page (also when only one or three
    newer duplicates may be skipped per page: short pages with a cursor); a pair's record
    (by actor and subjects, relationships, memberships, subscriptions) is that one too."""
    monkeypatch.setattr("smalldp.store.dataplane.base.DUPLICATES_SKIP_MAX", skip_max)
    rng = random.Random(99)
    ev = Events()
    star = did("star")
    post = f"at://{star}/{am.POST}/{tidk(0, 1)}"
    list_uri = f"at://{star}/{am.LIST}/{tidk(0, 6)}"
    fans = [did(f"fan{i}") for i in range(40)]
    path = tmp_path / "db.sqlite"
    writer = Writer(path, fanout=2, chunk_entries=4)
    model = AppViewModel()
    first = [ev.post(star, tidk(0, 1), "hello"),
             ev.put(star, am.LIST, tidk(0, 6), {"$type": am.LIST, "name": "l", "purpose": "app.bsky.graph.defs#modlist",
                                                  "createdAt": "2024-01-01T00:00:00.000Z"})]
    apply(writer, first)
    model.apply_all(first)
    dp = DataPlaneReader(path)
    try:
        for round_ in range(8):
            batch = []
            for i, fan in enumerate(fans):
                if rng.random() < 0.5:
                    continue
                k = rng.randrange(1, 900)  # anywhere: older or newer than the fan's earlier ones
                batch += [ev.like(fan, tidk(k, 2), post), ev.repost(fan, tidk(k, 3), post),
                          ev.follow(fan, tidk(k, 4), star),
                          ev.put(fan, am.BLOCK, tidk(k, 5), {"$type": am.BLOCK, "subject": star,
                                                             "createdAt": "2024-01-01T00:00:00.000Z"}),
                          ev.put(fan, am.LISTBLOCK, tidk(k, 8), {"$type": am.LISTBLOCK, "subject": list_uri,
                                                                 "createdAt": "2024-01-01T00:00:00.000Z"}),
                          ev.listitem(star, tidk(k * 50 + i, 7), list_uri, fan)]
            if round_ >= 3:  # delete some pairs' oldest record: the next one takes its place
                for uri in rng.sample(model.get_likes_by_subject(post), 3) + \
                        rng.sample([f["uri"] for f in model.get_followers(star)], 3) + \
                        rng.sample([m["uri"] for m in model.get_list_members(list_uri)], 3):
                    rid = am.split_uri(uri)
                    assert rid is not None
                    batch.append(ev.delete(*rid))
            apply(writer, batch)
            model.apply_all(batch)
        twice = sum(1 for fan in fans if len([r for r, _ in model.live(am.LIKE, fan)]) > 1)
        assert twice > 20  # most pairs have duplicates
        for limit in (1, 2, 3, 7, 100):
            assert walk(dp, "GetLikesBySubjectSorted", "uris", limit, subject=ref(post)) == \
                model.get_likes_by_subject(post), limit
            assert walk(dp, "GetRepostsBySubject", "uris", limit, subject=ref(post)) == \
                model.get_reposts_by_subject(post), limit
            assert [_follow_dict(f) for f in walk(dp, "GetFollowers", "followers", limit, actor_did=star)] == \
                model.get_followers(star), limit
            got = [{"uri": m.uri, "did": m.did} for m in walk(dp, "GetListMembers", "listitems", limit,
                                                              list_uri=list_uri)]
            assert got == model.get_list_members(list_uri), limit
            for fan in fans[:5]:
                assert [_follow_dict(f) for f in walk(dp, "GetFollows", "follows", limit, actor_did=fan)] == \
                    model.get_follows(fan), (limit, fan)
                assert walk(dp, "GetBlocks", "block_uris", limit, actor_did=fan) == model.get_blocks(fan)
        assert len(model.get_likes_by_subject(post)) >= 30
        assert dp._summaries._big, "no key big enough to be read from per-run summaries"
        for fan in fans:
            assert list(call(dp, "GetLikesByActorAndSubjects", actor_did=fan, refs=[ref(post)]).uris) == \
                model.get_likes_by_actor_and_subjects(fan, [post])
            assert list(call(dp, "GetRepostsByActorAndSubjects", actor_did=fan, refs=[ref(post)]).uris) == \
                model.get_reposts_by_actor_and_subjects(fan, [post])
            assert list(call(dp, "GetActorFollowsActors", actor_did=fan, target_dids=[star]).uris) == \
                model.get_actor_follows_actors(fan, [star])
            assert call(dp, "GetBlocklistSubscription", actor_did=fan, list_uri=list_uri).listblock_uri == \
                model.get_blocklist_subscription(fan, list_uri)
            assert list(call(dp, "GetListMembership", actor_did=fan, list_uris=[list_uri]).listitem_uris) == \
                model.get_list_membership(fan, [list_uri])
            rels = call(dp, "GetRelationships", actor_did=fan, target_dids=[star] + fans[:5]).relationships
            want = model.get_relationships(fan, [star] + fans[:5], list_uris=True)
            assert [{"targetDid": w["targetDid"], "following": r.following, "followedBy": r.followed_by,
                     "blocking": r.blocking, "blockedBy": r.blocked_by, "blockingByList": r.blocking_by_list,
                     "blockedByList": r.blocked_by_list} for r, w in zip(rels, want)] == want, fan
            assert dp.relationships(fan, fans[:5]) == model.get_relationships(fan, fans[:5]), fan
    finally:
        dp.close()
        writer.close()


# ---------------------------------------------------------------- thread gates


def test_thread_gate_violations(tmp_path: Path) -> None:
    """GetPostRecords' violates_thread_gate and GetInteractionCounts' replies, by the
    reference's rules (store/dataplane/gates.py), written out by hand: the root's author
    may always reply; allow [] lets nobody else; followingRule / followerRule / mentionRule
    / listRule let the followed, the followers, the mentioned, the listed in; a rule
    counts with what was received before the reply (a follow or list item after it does
    not help, a gate after it does not apply); a reply deeper in the thread is judged by
    its root's gate; no gate, or a gate without ``allow``, lets anyone. The root's author
    is notified of the replies that keep to the gates only."""
    ev = Events()
    alice, bob, carol, dave = did("alice"), did("bob"), did("carol"), did("dave")
    gate_t, list_t = "app.bsky.feed.threadgate", am.LIST
    rule = "app.bsky.feed.threadgate#"
    roots = {name: f"at://{alice}/{am.POST}/{tidk(k, 1)}" for k, name in enumerate(
        ["none", "following", "follower", "mention", "list", "late", "open", "nogate"])}
    list_uri = f"at://{alice}/{list_t}/{tidk(0, 6)}"
    allow: dict[str, Any] = {"none": [], "following": [{"$type": rule + "followingRule"}],
                             "follower": [{"$type": rule + "followerRule"}],
                             "mention": [{"$type": rule + "mentionRule"}],
                             "list": [{"$type": rule + "listRule", "list": list_uri}], "late": []}
    first: list[dict[str, Any]] = []
    for name, root in roots.items():
        record: dict[str, Any] = {"$type": am.POST, "text": name, "createdAt": "2024-01-01T00:00:00.000Z"}
        if name == "mention":
            record["facets"] = [{"index": {"byteStart": 0, "byteEnd": 1}, "features": [
                {"$type": "app.bsky.richtext.facet#mention", "did": carol}]}]
        first.append(ev.put(alice, am.POST, root.rsplit("/", 1)[1], record))
    for name, rules in allow.items():
        if name != "late":
            first.append(ev.put(alice, gate_t, roots[name].rsplit("/", 1)[1], {
                "$type": gate_t, "post": roots[name], "allow": rules, "createdAt": "2024-01-01T00:00:00.000Z"}))
    first.append(ev.put(alice, gate_t, roots["open"].rsplit("/", 1)[1], {
        "$type": gate_t, "post": roots["open"], "createdAt": "2024-01-01T00:00:00.000Z"}))  # no allow
    first += [ev.follow(alice, tidk(1, 4), carol), ev.follow(bob, tidk(2, 4), alice),
              ev.put(alice, list_t, tidk(0, 6), {"$type": list_t, "name": "l", "purpose": "app.bsky.graph.defs#curatelist",
                                               "createdAt": "2024-01-01T00:00:00.000Z"}),
              ev.listitem(alice, tidk(3, 7), list_uri, bob)]
    replies: dict[str, bool] = {}  # reply uri -> violates
    k = [100]

    def reply(author: str, root: str, violates: bool, parent: str | None = None) -> dict[str, Any]:
        k[0] += 1
        at = f"at://{author}/{am.POST}/{tidk(k[0], 1)}"
        replies[at] = violates
        return ev.post(author, tidk(k[0], 1), "re", reply_to=parent or root, root=root)

    second = [reply(alice, roots["none"], False), reply(bob, roots["none"], True),
              reply(carol, roots["following"], False), reply(bob, roots["following"], True),
              reply(dave, roots["following"], True),
              reply(bob, roots["follower"], False), reply(carol, roots["follower"], True),
              reply(carol, roots["mention"], False), reply(bob, roots["mention"], True),
              reply(bob, roots["list"], False), reply(carol, roots["list"], True), reply(dave, roots["list"], True),
              reply(bob, roots["late"], False), reply(bob, roots["open"], False), reply(bob, roots["nogate"], False)]
    deep_parent = next(u for u, v in replies.items() if u.startswith(f"at://{alice}/") and not v)
    second.append(reply(carol, roots["none"], True, parent=deep_parent))
    # after those replies: alice follows dave, puts carol in the list, gates "late"
    third = [ev.follow(alice, tidk(4, 4), dave), ev.listitem(alice, tidk(5, 7), list_uri, carol),
             ev.put(alice, gate_t, roots["late"].rsplit("/", 1)[1], {
                 "$type": gate_t, "post": roots["late"], "allow": [], "createdAt": "2024-01-01T00:00:00.000Z"}),
             reply(bob, roots["late"], True), reply(dave, roots["following"], False),
             reply(carol, roots["list"], False)]
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    for batch in (first, second, third):
        apply(writer, batch)
    dp = DataPlaneReader(path)
    try:
        asked = list(replies) + list(roots.values())
        meta = call(dp, "GetPostRecords", uris=asked).meta
        got = {u: m.violates_thread_gate for u, m in zip(asked, meta)}
        assert got == {**replies, **dict.fromkeys(roots.values(), False)}
        parents = list(roots.values()) + [deep_parent]
        counts = call(dp, "GetInteractionCounts", refs=[ref(u) for u in parents]).replies
        want = [sum(1 for u, v in replies.items() if not v and dp.record(u)["value"]["reply"]["parent"]["uri"] == p)
                for p in parents]
        assert list(counts) == want and sum(want) < len(replies)
        # dev.smalldp counts every reply (its rule: replies are records)
        assert dp.interaction_counts(parents)["replies"] == [
            sum(1 for u in replies if dp.record(u)["value"]["reply"]["parent"]["uri"] == p) for p in parents]
        # alice is notified of the replies that keep to the gates only
        notes = call(dp, "GetNotifications", actor_did=alice, limit=100).notifications
        assert {n.uri for n in notes if n.reason == "reply"} == {
            u for u, v in replies.items() if not v and not u.startswith(f"at://{alice}/")}
    finally:
        dp.close()
        writer.close()


def test_post_gate_violations(tmp_path: Path) -> None:
    """GetPostRecords' violates_embedding_rules: a post quoting (embed.record, or the
    record of a recordWithMedia) a post whose post gate has a disableRule, received after
    that gate, unless the quoting author is the quoted post's; a gate without the rule, or
    no gate, lets anyone quote. The quoted author is notified of the other quotes only."""
    ev = Events()
    alice, bob, carol = did("alice"), did("bob"), did("carol")
    postgate = "app.bsky.feed.postgate"
    gated, open_, loose = (f"at://{alice}/{am.POST}/{tidk(k, 1)}" for k in range(3))

    def quote(author: str, k: int, subject: str, with_media: bool = False) -> dict[str, Any]:
        record_embed = {"$type": "app.bsky.embed.record", "record": {"uri": subject, "cid": "bafyq"}}
        embed = record_embed if not with_media else {
            "$type": am.RECORD_WITH_MEDIA, "record": record_embed,
            "media": {"$type": am.IMAGES, "images": [{"alt": "", "image": {"$type": "blob", "mimeType": "image/png"}}]}}
        return ev.put(author, am.POST, tidk(k, 1), {"$type": am.POST, "text": "q", "embed": embed,
                                                     "createdAt": "2024-01-01T00:00:00.000Z"})

    first = [ev.put(alice, am.POST, uri.rsplit("/", 1)[1], {"$type": am.POST, "text": "p",
                                                             "createdAt": "2024-01-01T00:00:00.000Z"})
             for uri in (gated, open_, loose)]
    first.append(quote(carol, 10, gated))  # before the gate
    second = [ev.put(alice, postgate, gated.rsplit("/", 1)[1], {
                  "$type": postgate, "post": gated, "createdAt": "2024-01-01T00:00:00.000Z",
                  "embeddingRules": [{"$type": "app.bsky.feed.postgate#disableRule"}]}),
              ev.put(alice, postgate, loose.rsplit("/", 1)[1], {
                  "$type": postgate, "post": loose, "createdAt": "2024-01-01T00:00:00.000Z",
                  "detachedEmbeddingUris": []})]
    third = [quote(bob, 11, gated), quote(bob, 12, gated, with_media=True), quote(alice, 13, gated),
             quote(bob, 14, open_), quote(bob, 15, loose)]
    want = {f"at://{carol}/{am.POST}/{tidk(10, 1)}": False, f"at://{bob}/{am.POST}/{tidk(11, 1)}": True,
            f"at://{bob}/{am.POST}/{tidk(12, 1)}": True, f"at://{alice}/{am.POST}/{tidk(13, 1)}": False,
            f"at://{bob}/{am.POST}/{tidk(14, 1)}": False, f"at://{bob}/{am.POST}/{tidk(15, 1)}": False}
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    for batch in (first, second, third):
        apply(writer, batch)
    dp = DataPlaneReader(path)
    try:
        meta = call(dp, "GetPostRecords", uris=list(want)).meta
        assert {u: m.violates_embedding_rules for u, m in zip(want, meta)} == want
        assert not any(m.violates_thread_gate for m in meta)
        notes = call(dp, "GetNotifications", actor_did=alice, limit=100).notifications
        assert {n.uri for n in notes if n.reason == "quote"} == {
            u for u, v in want.items() if not v and not u.startswith(f"at://{alice}/")}
        # quotes count whatever the gate (the reference counts every quote row)
        assert list(call(dp, "GetInteractionCounts", refs=[ref(gated)]).quotes) == [4]
    finally:
        dp.close()
        writer.close()
