"""The generator's scripted DataPlane accounts (``dataplane=True``), checked from the
emitted events only: viewers that follow exactly ``viewer_follows`` active accounts that
post, a mega account with many distinct followers (some of them a viewer's followees),
big lists, long reply chains, and the record kinds every DataPlane method needs.

The stream is scaled down (150k events, 12k accounts, 4,000 mega followers) so that it
runs in a few seconds; the viewers keep the default 1,000 follows.
"""

from __future__ import annotations

import importlib.util
from collections import Counter, defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

N_EVENTS = 150_000
PARAMS: dict[str, Any] = {"accounts": 12_000, "dataplane": True, "mega_followers": 4_000,
                          "mega_span": 140_000, "big_list_every": 500, "thread_every": 20_000}


def _load_generator() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "scripts" / "gen_events.py"
    spec = importlib.util.spec_from_file_location("gen_events_dp", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return _load_generator()


@pytest.fixture(scope="module")
def lines(gen: ModuleType) -> list[bytes]:
    return list(gen.generate(N_EVENTS, seed=3, **PARAMS))


class Facts:
    """What the stream says, computed from the events alone."""

    def __init__(self, lines: list[bytes]) -> None:
        self.inactive: set[str] = set()  # status at the end of the stream
        self.status_events: dict[str, list[bool]] = defaultdict(list)
        self.records: dict[tuple[str, str, str], tuple[int, dict[str, Any]]] = {}  # live: (idx, record)
        self.deleted: set[tuple[str, str, str]] = set()
        self.posters: set[str] = set()
        self.collections_by_did: dict[str, Counter[str]] = defaultdict(Counter)
        self.handles: dict[str, str] = {}
        self.embed_types: Counter[str] = Counter()
        self.quote_paths: Counter[str] = Counter()
        for idx, line in enumerate(lines):
            ev = orjson.loads(line)
            did = ev["did"]
            if ev["kind"] == "account":
                active = bool(ev["account"]["active"])
                self.status_events[did].append(active)
                (self.inactive.discard if active else self.inactive.add)(did)
                continue
            if ev["kind"] == "identity":
                if "handle" in ev["identity"]:
                    self.handles[did] = ev["identity"]["handle"]
                continue
            c = ev["commit"]
            key = (did, c["collection"], c["rkey"])
            self.collections_by_did[did][f'{c["collection"]}/{c["operation"]}'] += 1
            if c["operation"] == "delete":
                self.records.pop(key, None)
                self.deleted.add(key)
                continue
            rec = c["record"]
            self.records[key] = (idx, rec)
            if c["collection"] == "app.bsky.feed.post":
                self.posters.add(did)
                embed = rec.get("embed")
                if embed:
                    self.embed_types[embed["$type"]] += 1
                    if embed["$type"] == "app.bsky.embed.record":
                        self.quote_paths[".embed.record.uri"] += 1
                    elif embed["$type"] == "app.bsky.embed.recordWithMedia":
                        self.quote_paths[".embed.record.record.uri"] += 1
                        self.embed_types["recordWithMedia/" + embed["media"]["$type"]] += 1

    def live(self, collection: str) -> list[tuple[str, str, int, dict[str, Any]]]:
        """(did, rkey, index, record) of the live records of a collection by active accounts."""
        return [(d, rk, idx, rec) for (d, coll, rk), (idx, rec) in self.records.items()
                if coll == collection and d not in self.inactive]

    def follows_of(self, did: str) -> list[tuple[str, int]]:
        return [(rec["subject"], idx) for d, _, idx, rec in self.live("app.bsky.graph.follow") if d == did]


@pytest.fixture(scope="module")
def facts(lines: list[bytes]) -> Facts:
    return Facts(lines)


def test_viewers_follow_exactly_1000_active_posters_early(gen: ModuleType, facts: Facts) -> None:
    viewers = gen.viewer_dids(PARAMS["accounts"])
    assert len(viewers) == 4
    window = 25 * 4 * 1000
    for v in viewers:
        assert v not in facts.status_events, "a viewer's status never changes"
        follows = facts.follows_of(v)
        subjects = [s for s, _ in follows]
        assert len(subjects) == 1000 and len(set(subjects)) == 1000
        assert max(idx for _, idx in follows) < window + 2_000, "follows come early in the stream"
        for s in subjects:
            assert s not in facts.inactive, "followees stay active"
            assert s in facts.posters, "followees post"
            assert s != v
        # nothing of a viewer's is ever deleted, and it makes only scripted kinds of records
        assert not [k for k in facts.deleted if k[0] == v]
        kinds = set(facts.collections_by_did[v])
        assert kinds <= {"app.bsky.graph.follow/create", "app.bsky.graph.block/create",
                         "app.bsky.graph.listblock/create", "app.bsky.feed.post/create",
                         "app.bsky.actor.profile/create"}, kinds
        assert facts.collections_by_did[v]["app.bsky.graph.block/create"] >= 10
        assert v in facts.handles
    # several viewers are followed back by some of their followees
    followed_back = sum(1 for v in viewers for d, _, _, rec in facts.live("app.bsky.graph.follow")
                        if rec["subject"] == v)
    assert followed_back >= 4 * 50


def test_mega_account_has_many_distinct_followers_spread_through_the_stream(gen: ModuleType,
                                                                             facts: Facts) -> None:
    mega = gen.mega_did(PARAMS["accounts"])
    assert mega not in facts.inactive and mega not in facts.status_events
    followers = [(d, idx) for d, _, idx, rec in facts.live("app.bsky.graph.follow") if rec["subject"] == mega]
    distinct = {d for d, _ in followers}
    assert len(distinct) >= 0.9 * PARAMS["mega_followers"]
    # spread: every tenth of the mega span holds about a tenth of the follows
    span = PARAMS["mega_span"]
    tenths = Counter(min(9, idx * 10 // span) for _, idx in followers)
    assert min(tenths[k] for k in range(10)) >= 0.05 * len(followers)
    assert facts.collections_by_did[mega]["app.bsky.feed.post/create"] >= 20, "the mega account posts"
    # getFollowsFollowing(viewer 0, [mega]) has a real intersection, viewer 3's is smaller
    viewers = gen.viewer_dids(PARAMS["accounts"])
    common = [len({s for s, _ in facts.follows_of(v)} & distinct) for v in viewers]
    assert common[0] >= 300, common
    assert common[0] > common[3], common


def test_big_lists_threads_and_every_record_kind(gen: ModuleType, facts: Facts) -> None:
    items = Counter(rec["list"] for _, _, _, rec in facts.live("app.bsky.graph.listitem"))
    owners = gen.list_owner_dids(PARAMS["accounts"])
    big = {uri: n for uri, n in items.items() if uri.split("/")[2] in owners}
    assert len(big) == 4 and min(big.values()) >= 0.8 * N_EVENTS / PARAMS["big_list_every"]
    viewer0 = gen.viewer_dids(PARAMS["accounts"])[0]
    blocked_lists = {rec["subject"] for d, _, _, rec in facts.live("app.bsky.graph.listblock") if d == viewer0}
    assert len(blocked_lists & set(big)) == 2, "viewer 0 blocks both big modlists"
    # long reply chains: depth by walking .reply.parent
    parent: dict[str, str] = {}
    for d, rk, _, rec in facts.live("app.bsky.feed.post"):
        if "reply" in rec:
            parent[f"at://{d}/app.bsky.feed.post/{rk}"] = rec["reply"]["parent"]["uri"]
    depth_memo: dict[str, int] = {}

    def depth(uri: str) -> int:
        chain = []
        while uri in parent and uri not in depth_memo:
            chain.append(uri)
            uri = parent[uri]
        d = depth_memo.get(uri, 0)
        for u in reversed(chain):
            d += 1
            depth_memo[u] = d
        return d

    deepest = max(depth(u) for u in parent)
    assert deepest >= 30, deepest
    # what the other methods need
    assert facts.quote_paths[".embed.record.uri"] > 100 and facts.quote_paths[".embed.record.record.uri"] > 30
    assert facts.embed_types["app.bsky.embed.images"] > 500 and facts.embed_types["app.bsky.embed.video"] > 100
    assert facts.embed_types["recordWithMedia/app.bsky.embed.images"] > 30
    assert len(facts.live("app.bsky.actor.profile")) > 500
    assert len(facts.live("app.bsky.graph.block")) > 500
    assert len(facts.handles) > 100


def test_prefix_and_default_stream_unchanged(gen: ModuleType, lines: list[bytes]) -> None:
    short = list(gen.generate(40_000, seed=3, **PARAMS))
    assert short[:-1] == lines[: len(short) - 1]
    # dataplane=False (the default) ignores the scripted-account parameters entirely
    plain = list(gen.generate(5_000, seed=3, accounts=12_000))
    same = list(gen.generate(5_000, seed=3, accounts=12_000, mega_followers=7, viewers=2))
    assert plain == same
