"""DataPlane benchmark: every dev.smalldp method under open-loop load while live ingest runs.

Run through `scripts/bench --dataplane ...` (or `scripts/bench_dataplane.py` with the
virtualenv's python).  Writes one JSON file (default bench-out/dataplane.json) and prints
a short summary.  A measurement, never a test: figures depend on the machine and its load.

1. Events: `gen_events.py` with ``dataplane=True`` (viewers that follow 1,000 active
   posters, a mega account with >= 100,000 followers at 10M events, big lists, long
   threads; see scripts/GENERATOR.md), N events plus a *tail* of M more in one pass:
   the tail is the same stream continued, replayed later as "new" events.  Cached in
   --out-dir, keyed by the generator arguments and the generator's source hash.
2. Store: `smalldp import --json` of the N events into a pristine data dir (cached with
   the same key); each run works on a fresh copy of it (live ingest writes to the copy).
3. Parameters: one pass over the N events picks realistic request parameters (popular
   and rare subjects, the viewers, the mega account, thread posts, real lists, handles
   from identity events, block and follow pairs...); cached as JSON next to the store.
4. Live: `smalldp replay` serves the tail at --ingest-rate events/s (replay --speed =
   rate / the generator's time_us rate) and `smalldp serve` on the copy follows it
   (it resumes from the store's committed cursor), while one light aiohttp client sends
   requests on a fixed schedule (open loop: latency counts from each request's scheduled
   time, so queueing in the server or the client is included).
5. Phases: ``timeline`` (getTimeline of the 1,000-follow viewers, first page of 50, at
   --timeline-rate for --timeline-s), ``follows_following`` (getFollowsFollowing(viewer,
   [mega]) at --ff-rate), ``mixed`` (every method round-robin at --mixed-rate), and
   ``capacity`` (closed loop, --capacity-concurrency requests in flight, --capacity-s per
   method: the requests/s each method can sustain next to the ingest).  Each phase
   reports per method p50/p95/p99/max, achieved requests/s, errors (with samples) and
   median answer size, the client's start delays (if it cannot keep to the schedule the
   JSON says so), CPU of serve/replay/client, and the ingest rate meanwhile.

``--plumbing`` sends each request to an existing constellation route instead
(getBacklinksCount of a subject taken from the request) to test the machinery before the
dev.smalldp routes exist.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import hashlib
import io
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import psutil
import zstandard
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, free_port, load_generator, wait_for_port  # noqa: E402
from bench_live import Child, ChildrenCpu, _cpu_model, _git_state, smalldp  # noqa: E402

DEFAULT_DICTIONARY = Path("/work/shared/fixtures/jetstream/zstd_dictionary_legacy_subscribe.zdict")
NS = "dev.smalldp"
REQUEST_TIMEOUT_S = 10.0
HEALTH_POLL_S = 1.0
WINDOW_S = 5  # latency-over-time windows
Params = list[tuple[str, str]]
Request = tuple[str, Params]  # (method, query parameters; repeated keys for arrays)

METHODS = (
    "getRecords", "getInteractionCounts", "getLikesBySubject", "getRepostsBySubject", "getQuotesBySubject",
    "getLikesByActorAndSubjects", "getRepostsByActorAndSubjects", "getKnownLikers",
    "getFollowers", "getFollows", "getFollowsFollowing", "getActorFollowsActors", "getRelationships",
    "getBlockExistence", "getBlocks", "getCountsForUsers",
    "getActors", "getDidsByHandles", "getLatestRev",
    "getAuthorFeed", "getTimeline", "getThread",
    "getListMembers", "getActorLists", "getListMembership",
)
TARGETS = {  # phase/method -> (statistic, limit in ms), from the issue
    "timeline/getTimeline": ("p95_ms", 20.0),
    "follows_following/getFollowsFollowing": ("p99_ms", 2.0),
}
OTHER_TARGET = ("p99_ms", 10.0)  # every other method, in the mixed phase
COMMIT_GAP_MAX_S = 2.0  # issue 11: no gap in commits longer than 2 s (merges run in slices between batches)


def log(msg: str) -> None:
    print(f"[bench_dataplane {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- events and store

def generator_key(events: int, seed: int, accounts: int, tail: int) -> dict[str, Any]:
    """What the cached files depend on: the generator's arguments and its source."""
    src = (ROOT / "scripts" / "gen_events.py").read_bytes()
    return {"events": events, "seed": seed, "accounts": accounts, "tail": tail, "dataplane": True,
            "generator_sha256": hashlib.sha256(src).hexdigest()[:16]}


def _manifest_ok(path: Path, key: dict[str, Any], fields: tuple[str, ...]) -> bool:
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return all(have.get(f) == key.get(f) for f in fields)


def ensure_dp_events(out: Path, key: dict[str, Any], *, prefix: str = "dp",
                     transform: Callable[[bytes], bytes] | None = None) -> tuple[Path, Path]:
    """The N-event file and its M-event tail (one generator pass over N + M events, so the
    tail continues the stream), regenerated when the key differs.

    ``prefix`` names the files; ``transform`` rewrites each line (the AppView benchmark's
    stand-in DIDs): give such a variant its own prefix and a ``variant`` in the key."""
    stem = f"{prefix}-events-{key['events']}-{key['seed']}-a{key['accounts']}"
    main, tail = out / f"{stem}.jsonl.zst", out / f"{stem}-tail{key['tail']}.jsonl.zst"
    manifest = out / f"{stem}-tail{key['tail']}.json"
    fields = ("events", "seed", "accounts", "tail", "generator_sha256", "variant")
    if main.exists() and tail.exists() and _manifest_ok(manifest, key, fields):
        return main, tail
    gen = load_generator()
    started = time.monotonic()
    total = key["events"] + key["tail"]
    tmp_main, tmp_tail = main.with_suffix(".tmp"), tail.with_suffix(".tmp")
    it = gen.generate(total, seed=key["seed"], accounts=key["accounts"], dataplane=True)
    with open(tmp_main, "wb") as raw_main, open(tmp_tail, "wb") as raw_tail:
        # one compressor per stream: a ZstdCompressor must not feed two streams at once
        with zstandard.ZstdCompressor(level=3).stream_writer(raw_main) as w_main, \
                zstandard.ZstdCompressor(level=3).stream_writer(raw_tail) as w_tail:
            for i, line in enumerate(it):
                w = w_main if i < key["events"] else w_tail
                w.write(line if transform is None else transform(line))
                w.write(b"\n")
    tmp_main.rename(main)
    tmp_tail.rename(tail)
    manifest.write_text(json.dumps(key) + "\n")
    log(f"generated {total:,} events ({key['events']:,} + tail {key['tail']:,}) in "
        f"{time.monotonic() - started:.1f} s -> {main.name}, {tail.name}")
    return main, tail


def open_lines(path: Path) -> io.BufferedReader:
    raw = open(path, "rb")
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
    return io.BufferedReader(reader, buffer_size=1 << 20)  # type: ignore[arg-type]


def ensure_store(out: Path, events_file: Path, key: dict[str, Any],
                 rebuild: bool = False, *, prefix: str = "dp") -> tuple[Path, dict[str, Any]]:
    """`smalldp import --json` into a pristine store, once per key (the generator's
    arguments and source, and the store's schema version; --rebuild forces a new import,
    e.g. after a change to the import path that kept the schema version). ``prefix`` as
    for ensure_dp_events."""
    from smalldp.store.schema import SCHEMA_VERSION

    key = dict(key, schema=SCHEMA_VERSION)
    store = out / f"{prefix}-store-{key['events']}-{key['seed']}-a{key['accounts']}"
    manifest = store / "bench-manifest.json"
    fields = ("events", "seed", "accounts", "generator_sha256", "schema", "variant")
    if not rebuild and _manifest_ok(manifest, key, fields):
        return store, json.loads(manifest.read_text())["import"]
    if store.exists():
        shutil.rmtree(store)
    store.mkdir(parents=True)
    log(f"building the store: smalldp import {events_file.name} -> {store.name}")
    started = time.monotonic()
    with open(out / f"{prefix}-import.log", "wb") as errlog:
        proc = subprocess.run(smalldp("import", "--json", "--data-dir", str(store), str(events_file)),
                              stdout=subprocess.PIPE, stderr=errlog, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"smalldp import exited with {proc.returncode}; see {out / f'{prefix}-import.log'}")
    summary = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    summary["wall_s"] = round(time.monotonic() - started, 1)
    manifest.write_text(json.dumps(dict(key, built_by=_git_state(), **{"import": summary})) + "\n")
    log(f"store built in {summary['wall_s']} s ({summary.get('events_per_s')} events/s)")
    return store, summary


def working_copy(store: Path, out: Path) -> Path:
    """A fresh copy of the pristine store for one run (live ingest writes to it)."""
    live = out / f"{store.name}-live"
    if live.exists():
        shutil.rmtree(live)
    shutil.copytree(store, live, ignore=shutil.ignore_patterns("bench-manifest.json"))
    return live


# ---------------------------------------------------------------------------- parameters

class Reservoir:
    """A fixed-size uniform sample (Algorithm R) with its own seeded RNG."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size, self.rng, self.seen, self.items = size, rng, 0, []  # type: ignore[var-annotated]

    def add(self, item: Any) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = self.rng.randrange(self.seen)
            if j < self.size:
                self.items[j] = item


def pick_params(events_file: Path, key: dict[str, Any],
                rename: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Request parameters drawn from the stream the store holds (one pass, bounded memory).
    ``rename`` maps the generator's scripted DIDs as the stream's ``transform`` did."""
    gen = load_generator()
    A = key["accounts"]
    viewers, mega, owners = gen.viewer_dids(A), gen.mega_did(A), gen.list_owner_dids(A)
    if rename is not None:
        viewers, mega, owners = [rename(v) for v in viewers], rename(mega), [rename(o) for o in owners]
    vset = set(viewers)
    rng = random.Random(11)
    likes = Reservoir(200_000, rng)  # (actor, subject uri)
    reposts = Reservoir(50_000, rng)
    follows = Reservoir(100_000, rng)  # (actor, subject did)
    posts = Reservoir(20_000, rng)  # (uri, author)
    replies = Reservoir(20_000, rng)  # (uri, root uri)
    quotes = Reservoir(20_000, rng)  # quoted uri
    blocks = Reservoir(20_000, rng)  # (actor, subject)
    listitems = Reservoir(20_000, rng)  # (list uri, member)
    lists = Reservoir(5_000, rng)  # (list uri, owner)
    handles = Reservoir(5_000, rng)
    media_authors = Reservoir(5_000, rng)
    viewer_follows: dict[str, list[str]] = {v: [] for v in viewers}
    viewer_blocks: dict[str, list[str]] = {v: [] for v in viewers}
    big_lists: list[str] = []
    post_count: Counter[str] = Counter()
    chain: dict[str, str] = {}  # reply uri -> parent uri, for posts of the long threads
    thread_every, depth = gen.DEFAULTS["thread_every"], gen.DEFAULTS["thread_depth"]
    started = time.monotonic()
    with open_lines(events_file) as stream:
        for idx, line in enumerate(stream):
            did = line[8:40].decode()
            if b'"kind":"identity"' in line[:100]:
                ev = orjson.loads(line)
                if ev["identity"].get("handle"):
                    handles.add(ev["identity"]["handle"])
                continue
            if b'"kind":"commit"' not in line[:100] or b'"operation":"create"' not in line[:160]:
                continue
            if b'"app.bsky.feed.like"' in line[:200]:
                if rng.random() < 0.2:
                    ev = orjson.loads(line)
                    likes.add((did, ev["commit"]["record"]["subject"]["uri"]))
                continue
            if b'"app.bsky.graph.follow"' in line[:200]:
                if did in vset or rng.random() < 0.2:
                    ev = orjson.loads(line)
                    subject = ev["commit"]["record"]["subject"]
                    if did in vset:
                        viewer_follows[did].append(subject)
                    else:
                        follows.add((did, subject))
                continue
            if b'"app.bsky.feed.repost"' in line[:200]:
                if rng.random() < 0.2:
                    ev = orjson.loads(line)
                    reposts.add((did, ev["commit"]["record"]["subject"]["uri"]))
                continue
            if b'"app.bsky.feed.post"' in line[:200]:
                post_count[did] += 1
                rel = (idx - 30000) % thread_every
                in_chain = idx >= 30000 and rel <= 50 * depth + 8 and rel % 50 <= 8
                if not in_chain and rng.random() > 0.1:
                    continue
                ev = orjson.loads(line)
                c = ev["commit"]
                rec = c["record"]
                uri = f"at://{did}/app.bsky.feed.post/{c['rkey']}"
                posts.add((uri, did))
                reply = rec.get("reply")
                if reply:
                    replies.add((uri, reply["root"]["uri"]))
                    if in_chain:
                        chain[uri] = reply["parent"]["uri"]
                embed = rec.get("embed") or {}
                et = embed.get("$type")
                if et == "app.bsky.embed.record":
                    quotes.add(embed["record"]["uri"])
                elif et == "app.bsky.embed.recordWithMedia":
                    quotes.add(embed["record"]["record"]["uri"])
                if et in ("app.bsky.embed.images", "app.bsky.embed.video", "app.bsky.embed.recordWithMedia"):
                    media_authors.add(did)
                continue
            if b'"app.bsky.graph.block"' in line[:200]:
                ev = orjson.loads(line)
                subject = ev["commit"]["record"]["subject"]
                if did in vset:
                    viewer_blocks[did].append(subject)
                blocks.add((did, subject))
                continue
            if b'"app.bsky.graph.listitem"' in line[:200]:
                ev = orjson.loads(line)
                listitems.add((ev["commit"]["record"]["list"], ev["commit"]["record"]["subject"]))
                continue
            if b'"app.bsky.graph.list"' in line[:200]:
                ev = orjson.loads(line)
                uri = f"at://{did}/app.bsky.graph.list/{ev['commit']['rkey']}"
                if did in owners and str(ev["commit"]["record"].get("name", "")).startswith("big list "):
                    big_lists.append(uri)
                lists.add((uri, did))
    log(f"parameters picked in {time.monotonic() - started:.1f} s")

    def depth_of(uri: str) -> int:
        d = 0
        while uri in chain and d < 1000:
            uri, d = chain[uri], d + 1
        return d

    deep = sorted(chain, key=depth_of, reverse=True)
    like_counts = Counter(s for _, s in likes.items)
    follow_counts = Counter(s for _, s in follows.items)
    root_counts = Counter(r for _, r in replies.items)
    quote_counts = Counter(quotes.items)
    repost_counts = Counter(s for _, s in reposts.items)
    rare = [s for s, n in like_counts.items() if n == 1]
    rng.shuffle(rare)
    authors = [a for a, _ in post_count.most_common(50)]
    some_authors = [a for a, n in post_count.items() if 1 <= n <= 5]
    rng.shuffle(some_authors)
    return {
        "viewers": viewers, "mega": mega, "list_owners": owners, "big_lists": big_lists,
        "viewer_follows": viewer_follows, "viewer_blocks": viewer_blocks,
        "popular_posts": [u for u, _ in like_counts.most_common(50)],
        "rare_posts": rare[:200],
        "random_posts": [u for u, _ in posts.items[:500]],
        "popular_reposted": [u for u, _ in repost_counts.most_common(30)],
        "popular_quoted": [u for u, _ in quote_counts.most_common(30)],
        "quoted": list(dict.fromkeys(quotes.items))[:200],
        "thread_roots": [u for u, _ in root_counts.most_common(30)],
        "deep_replies": deep[:30],
        "replies": [u for u, _ in replies.items[:200]],
        "popular_dids": [d for d, _ in follow_counts.most_common(50)],
        "random_dids": list(dict.fromkeys(a for a, _ in follows.items))[:500],
        "top_authors": authors,
        "quiet_authors": some_authors[:200],
        "media_authors": list(dict.fromkeys(media_authors.items))[:100],
        "like_pairs": likes.items[:500], "repost_pairs": reposts.items[:300],
        "follow_pairs": follows.items[:500],
        "block_pairs": blocks.items[:500],
        "blockers": list(dict.fromkeys(a for a, _ in blocks.items))[:200],
        "listitems": listitems.items[:500],
        "lists": [u for u, _ in lists.items[:300]],
        "list_creators": list(dict.fromkeys(o for _, o in lists.items))[:200],
        "handles": handles.items[:1000],
        "counts": {"likes_sampled": likes.seen, "chain_posts": len(chain),
                   "deepest_chain": depth_of(deep[0]) if deep else 0},
    }


# ---------------------------------------------------------------------------- requests

class RequestMaker:
    """Realistic requests for every method, drawn from the picked parameters (seeded)."""

    def __init__(self, p: dict[str, Any], seed: int = 5) -> None:
        # pairs come back from the JSON cache as lists: make them tuples again
        self.p: dict[str, Any] = {k: [tuple(x) if isinstance(x, list) else x for x in v] if isinstance(v, list) else v
                  for k, v in p.items()}
        self.rng = random.Random(seed)

    def _c(self, key: str) -> Any:
        if not self.p[key]:  # a store too small to hold this kind of parameter
            raise RuntimeError(f"no {key} among the events: too few for the DataPlane benchmark "
                               f"(--events 2000 or more)")
        return self.rng.choice(self.p[key])

    def _some(self, keys: list[str], n: int) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            v = self._c(self.rng.choice([k for k in keys if self.p[k]]))
            out.append(v if isinstance(v, str) else v[0])
        return list(dict.fromkeys(out))

    def _posts(self, n: int = 25) -> list[str]:
        return self._some(["popular_posts", "random_posts", "random_posts", "replies", "rare_posts"], n)

    def _dids(self, n: int = 25) -> list[str]:
        ds = self._some(["popular_dids", "random_dids", "random_dids", "top_authors"], n - 1)
        return ds + [self.p["mega"]]

    def _subject(self, kind: str) -> str:
        popular = {"like": "popular_posts", "repost": "popular_reposted", "quote": "popular_quoted"}[kind]
        rare = {"like": "rare_posts", "repost": "random_posts", "quote": "quoted"}[kind]
        return self._c(popular if self.rng.random() < 0.5 and self.p[popular] else rare)

    def viewer(self) -> str:
        return self._c("viewers")

    def make(self, method: str) -> Request:  # noqa: C901 - one branch per method
        r = self.rng.random
        if method == "getRecords":
            uris = self._posts(20) + [f"at://{d}/app.bsky.actor.profile/self" for d in self._dids(4)]
            return method, [("uris", u) for u in uris]
        if method == "getInteractionCounts":
            return method, [("uris", u) for u in self._posts(25)]
        if method in ("getLikesBySubject", "getRepostsBySubject", "getQuotesBySubject"):
            kind = {"getLikesBySubject": "like", "getRepostsBySubject": "repost", "getQuotesBySubject": "quote"}
            return method, [("subject", self._subject(kind[method])), ("limit", "50")]
        if method in ("getLikesByActorAndSubjects", "getRepostsByActorAndSubjects"):
            pairs = "like_pairs" if method == "getLikesByActorAndSubjects" else "repost_pairs"
            actor, liked = self._c(pairs)
            subjects = [liked] + self._posts(24)
            return method, [("actor", actor)] + [("subjects", s) for s in subjects]
        if method == "getKnownLikers":
            return method, [("viewer", self.viewer())] + [("subjects", s) for s in self._posts(25)] + [("limit", "5")]
        if method in ("getFollowers", "getFollows"):
            if method == "getFollowers":
                actor = self.p["mega"] if r() < 0.2 else self._c("popular_dids" if r() < 0.5 else "random_dids")
            else:
                actor = self.viewer() if r() < 0.3 else self._c("follow_pairs")[0]
            return method, [("actor", actor), ("limit", "50")]
        if method == "getFollowsFollowing":
            targets = self._some(["popular_dids", "random_dids", "top_authors"], 10)
            return method, [("viewer", self.viewer())] + [("targets", t) for t in targets]
        if method == "getActorFollowsActors":
            if r() < 0.5:
                actor = self.viewer()
                mine = self.p["viewer_follows"][actor]
                targets = self.rng.sample(mine, min(15, len(mine))) + self._dids(10)
            else:
                actor, s = self._c("follow_pairs")
                targets = [s] + self._dids(24)
            return method, [("actor", actor)] + [("targets", t) for t in dict.fromkeys(targets)]
        if method == "getRelationships":
            v = self.viewer()
            mine, blocked = self.p["viewer_follows"][v], self.p["viewer_blocks"][v]
            members = [m for lst, m in self.p["listitems"] if lst in self.p["big_lists"]]
            targets = (self.rng.sample(mine, min(10, len(mine))) + blocked[:3]
                       + self.rng.sample(members, min(5, len(members))) + self._dids(7))
            return method, [("viewer", v)] + [("targets", t) for t in dict.fromkeys(targets)]
        if method == "getBlockExistence":
            duos: list[tuple[str, str]] = [self._c("block_pairs") for _ in range(10)]
            duos += [(self._c("random_dids"), self._c("popular_dids")) for _ in range(10)]
            in_big = [m for lst, m in self.p["listitems"] if lst in self.p["big_lists"]]
            if in_big:
                duos += [(self.p["viewers"][0], self.rng.choice(in_big)) for _ in range(5)]
            return method, [("pairs", f"{a},{b}") for a, b in dict.fromkeys(duos) if a != b]
        if method == "getBlocks":
            actor = self.viewer() if r() < 0.3 else self._c("blockers")
            return method, [("actor", actor), ("limit", "50")]
        if method in ("getCountsForUsers", "getActors"):
            return method, [("dids", d) for d in self._dids(25)]
        if method == "getDidsByHandles":
            hs = [self._c("handles") for _ in range(9)] + ["nobody-here.bsky.social"]
            return method, [("handles", h) for h in dict.fromkeys(hs)]
        if method == "getLatestRev":
            return method, [("actor", self._dids(3)[0])]
        if method == "getAuthorFeed":
            u = r()
            if u < 0.4:
                actor = self._c("top_authors")
            elif u < 0.5:
                actor = self.p["mega"]
            elif u < 0.8:
                actor = self._c("quiet_authors")
            else:
                actor = self._c("media_authors")
            filt = self.rng.choice(["posts_with_replies", "posts_with_replies", "posts_no_replies",
                                    "posts_and_author_threads", "posts_with_media", "posts_with_video"])
            return method, [("actor", actor), ("limit", "50"), ("filter", filt)]
        if method == "getTimeline":
            return method, [("viewer", self.viewer()), ("limit", "50")]
        if method == "getThread":
            u = r()
            key = "thread_roots" if u < 0.35 else ("deep_replies" if u < 0.6 else
                                                   ("popular_posts" if u < 0.75 else "replies"))
            if not self.p[key]:
                key = "replies"
            return method, [("uri", self._c(key)), ("above", "10"), ("below", "6")]
        if method == "getListMembers":
            lst = self._c("big_lists") if r() < 0.4 and self.p["big_lists"] else self._c("listitems")[0]
            return method, [("list", lst), ("limit", "50")]
        if method == "getActorLists":
            actor = self._c("list_owners") if r() < 0.3 else self._c("list_creators")
            return method, [("actor", actor), ("limit", "50")]
        if method == "getListMembership":
            lst, member = self._c("listitems")
            others = self._some(["lists"], 9)
            return method, [("actor", member)] + [("lists", x) for x in dict.fromkeys([lst] + others)]
        raise ValueError(f"unknown method {method}")


def plumbing(req: Request) -> tuple[str, Params]:
    """Before the dev.smalldp routes exist: getBacklinksCount of a subject of the request."""
    method, params = req
    subject = next((v.split(",")[0] for _, v in params if v.startswith("at://") or v.startswith("did:")), None)
    if subject is None:
        subject = "did:plc:" + "a" * 24
    source = "app.bsky.feed.like:subject.uri" if subject.startswith("at://") else "app.bsky.graph.follow:subject"
    return "/xrpc/blue.microcosm.links.getBacklinksCount", [("subject", subject), ("source", source)]


def to_url(base: str, req: Request, use_plumbing: bool) -> URL:
    if use_plumbing:
        route, params = plumbing(req)
    else:
        route, params = f"/xrpc/{NS}.{req[0]}", req[1]
    return URL(f"{base}{route}?{urlencode(params)}", encoded=True)


# ---------------------------------------------------------------------------- statistics

def pct(v: list[float], q: float) -> float:
    """The value at index int(n*q) of the sorted values (as scripts/bench.py takes it)."""
    return v[min(len(v) - 1, int(len(v) * q))] if v else float("nan")


def lat_stats(values_ms: list[float]) -> dict[str, Any]:
    v = sorted(values_ms)
    if not v:
        return {"n": 0}
    return {"n": len(v), "p50_ms": round(statistics.median(v), 2), "p95_ms": round(pct(v, 0.95), 2),
            "p99_ms": round(pct(v, 0.99), 2), "max_ms": round(v[-1], 2)}


# ---------------------------------------------------------------------------- load

class Recorder:
    """Latencies, errors and answer sizes per method."""

    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = {}
        self.errors: Counter[str] = Counter()
        self.error_samples: list[str] = []
        self.sizes: dict[str, list[int]] = {}
        self.sent: Counter[str] = Counter()
        self.trace: list[tuple[float, float, str]] = []  # (scheduled, ms, method)

    async def one(self, session: aiohttp.ClientSession, method: str, url: URL, t0: float,
                  headers: dict[str, str] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.sent[method] += 1
        try:
            async with session.get(url, headers=headers) as r:
                body = await r.read()
                ok, why = r.status == 200, f"HTTP {r.status} {body[:120]!r}"
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            ok, why, body = False, f"{type(exc).__name__}: {exc}", b""
        ms = (loop.time() - t0) * 1000
        self.trace.append((t0, ms, method))
        if ok:
            self.lat.setdefault(method, []).append(ms)
            self.sizes.setdefault(method, []).append(len(body))
        else:
            self.errors[method] += 1
            if len(self.error_samples) < 12:
                self.error_samples.append(f"{method}: {why}")

    def report(self, seconds: float) -> dict[str, Any]:
        out = {}
        for m in sorted(set(self.sent), key=lambda m: METHODS.index(m) if m in METHODS else 99):
            sizes = self.sizes.get(m, [])
            out[m] = dict(lat_stats(self.lat.get(m, [])), errors=self.errors[m], sent=self.sent[m],
                          ok_per_s=round(len(self.lat.get(m, [])) / max(seconds, 1e-9), 1),
                          answer_bytes_p50=int(statistics.median(sizes)) if sizes else None)
        return out


async def open_loop(base: str, requests: list[tuple[str, URL]] | list[tuple[str, URL, dict[str, str]]],
                    rate: float, seconds: float, max_in_flight: int,
                    recorder: Recorder | None = None) -> dict[str, Any]:
    """Send ``requests`` (cycled) at ``rate``/s for ``seconds``; latency from the schedule.
    A request may carry headers as a third element; ``recorder`` replaces the default one
    (a subclass that judges answers differently)."""
    loop = asyncio.get_running_loop()
    rec = recorder if recorder is not None else Recorder()
    delays: list[float] = []
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    tasks: set[asyncio.Task[None]] = set()
    cpu0 = time.process_time()
    n_total = int(rate * seconds)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = loop.time() + 0.05
        for i in range(n_total):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            delays.append((loop.time() - due) * 1000)
            req = requests[i % len(requests)]
            task = asyncio.create_task(rec.one(session, req[0], req[1], due, req[2] if len(req) > 2 else None))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent_for = loop.time() - start
        if tasks:
            await asyncio.wait(set(tasks), timeout=REQUEST_TIMEOUT_S + 1)
        wall = loop.time() - start
    cpu = time.process_time() - cpu0
    windows: dict[int, list[float]] = {}
    for t, ms, _ in rec.trace:
        windows.setdefault(int((t - start) // WINDOW_S), []).append(ms)
    over_time = [[w * WINDOW_S, len(v), round(statistics.median(v), 2), round(pct(sorted(v), 0.99), 2),
                  round(max(v), 1)] for w, v in sorted(windows.items())]
    slowest = sorted(rec.trace, key=lambda r: r[1], reverse=True)[:10]
    d = sorted(delays)
    behind = pct(d, 0.99) > 5.0 or sent_for > seconds * 1.02 + 0.2
    return {"rate_requested": rate, "seconds_requested": seconds, "requests": n_total,
            "rate_achieved": round(n_total / max(sent_for, 1e-9), 1), "wall_s": round(wall, 2),
            "client_start_delay_ms": {"p50": round(pct(d, 0.5), 2), "p99": round(pct(d, 0.99), 2),
                                      "max": round(d[-1], 2) if d else None},
            "client_cpu_pct": round(100 * cpu / max(wall, 1e-9), 1),
            "client_kept_up": not behind,
            "errors": sum(rec.errors.values()), "error_samples": rec.error_samples,
            "methods": rec.report(sent_for),
            "over_time": {"window_s": WINDOW_S, "columns": ["t_s", "n", "p50_ms", "p99_ms", "max_ms"],
                          "rows": over_time},
            "slowest": [{"t_s": round(t - start, 3), "ms": round(ms, 1), "method": m} for t, ms, m in slowest]}


async def closed_loop(requests: list[tuple[str, URL]], seconds: float, concurrency: int) -> dict[str, Any]:
    """``concurrency`` requests always in flight for ``seconds``: the sustainable requests/s."""
    loop = asyncio.get_running_loop()
    rec = Recorder()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        end = loop.time() + seconds
        counter = iter(range(1 << 62))

        async def worker() -> None:
            while loop.time() < end:
                method, url = requests[next(counter) % len(requests)]
                await rec.one(session, method, url, loop.time())

        start = loop.time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = loop.time() - start
    rep = rec.report(wall)
    figures: dict[str, Any] = next(iter(rep.values())) if len(rep) == 1 else {"methods": rep}
    return {"concurrency": concurrency, "seconds": round(wall, 2),
            "requests_per_s": round(sum(rec.sent.values()) / wall, 1), **figures}


# ---------------------------------------------------------------------------- live run

async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as r:
        body = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url} -> HTTP {r.status}")
        return orjson.loads(body)


class Watch:
    """Polls /xrpc/_health: ingest events and lag over time (one light request a second)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.samples: list[tuple[float, int, float | None, int]] = []  # (t, events, lag_s, queue)
        self.stop = asyncio.Event()

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            while not self.stop.is_set():
                try:
                    h = await get_json(s, self.base + "/xrpc/_health")
                    js = h.get("jetstream") or {}
                    self.samples.append((time.monotonic(), int(js.get("events") or 0),
                                         h.get("lag_s"), int(js.get("queue_depth") or 0)))
                except (aiohttp.ClientError, OSError, RuntimeError, asyncio.TimeoutError):
                    pass
                try:
                    await asyncio.wait_for(self.stop.wait(), HEALTH_POLL_S)
                except asyncio.TimeoutError:
                    pass

    def behind_s(self, rate: float) -> float:
        """Seconds of ingest the store is behind the replay's schedule (which started at
        about the first sample), from the latest sample."""
        (ta, ea, _, _), (tb, eb, _, _) = self.samples[0], self.samples[-1]
        return max(0.0, ((tb - ta) * rate - (eb - ea)) / rate)

    def between(self, t0: float, t1: float) -> dict[str, Any]:
        inside = [s for s in self.samples if t0 - HEALTH_POLL_S <= s[0] <= t1 + HEALTH_POLL_S]
        if len(inside) < 2:
            return {}
        a, b = inside[0], inside[-1]
        return {"events": b[1] - a[1], "events_per_s": round((b[1] - a[1]) / max(b[0] - a[0], 1e-9), 1),
                "max_queue_depth": max(s[3] for s in inside)}


async def wait_ingesting(base: str, serve: Child, timeout: float = 180) -> None:
    """Until serve's health shows ingested events (it has connected to the replay)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        while True:
            try:
                h = await get_json(s, base + "/xrpc/_health")
                if ((h.get("jetstream") or {}).get("events") or 0) > 0:
                    return
            except (aiohttp.ClientError, OSError, RuntimeError, asyncio.TimeoutError):
                pass
            if not serve.alive():
                raise RuntimeError("serve exited: " + " | ".join(serve.log_tail(5)))
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start ingesting within {timeout:.0f} s")
            await asyncio.sleep(0.2)


async def drive(args: argparse.Namespace, base: str, params: dict[str, Any], serve: Child, replay: Child,
                tail_events: int) -> dict[str, Any]:
    maker = RequestMaker(params)
    plumb = args.plumbing
    result: dict[str, Any] = {"phases": {}}
    await wait_ingesting(base, serve, timeout=120)
    watch = Watch(base)
    watch_task = asyncio.create_task(watch.run())
    log(f"ingest running; warming up {args.warmup_s:g} s")
    await asyncio.sleep(args.warmup_s)
    # serve's RPC worker processes (rpc_processes) read the store for the DataPlane methods
    workers = ChildrenCpu(serve.proc.pid)
    procs = {"serve": serve, "serve_workers": workers, "replay": replay}

    async def settle() -> float:
        """Let ingest catch up with the replay before a phase (an overloaded phase starves
        it: queries go first), at most --settle-s; returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.settle_s:
            await asyncio.sleep(HEALTH_POLL_S)
            if len(watch.samples) >= 2 and watch.samples[-1][0] > t0 and watch.behind_s(args.ingest_rate) < 2.0:
                break
        return round(time.monotonic() - t0, 1)

    async def phase(name: str, coro: Any) -> dict[str, Any]:
        settled = await settle()
        cpu0 = {k: p.cpu_s() for k, p in procs.items()}
        gc.collect()
        gc.freeze()  # keep the client light: no collector pauses inside a phase
        gc.disable()
        t0 = time.monotonic()
        try:
            res = await coro
        finally:
            gc.enable()
            gc.unfreeze()
        t1 = time.monotonic()
        res["cpu_pct"] = {k: round(100 * (p.cpu_s() - cpu0[k]) / (t1 - t0), 1) for k, p in procs.items()}
        res["ingest"] = watch.between(t0, t1)
        res["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        res["settle_s_before"] = settled
        result["phases"][name] = res
        summary = ", ".join(f"{m} p50 {v.get('p50_ms')} p95 {v.get('p95_ms')} p99 {v.get('p99_ms')} ms"
                            for m, v in list(res.get("methods", {}).items())[:3])
        log(f"{name}: {summary}; errors {res.get('errors')}; ingest {res['ingest'].get('events_per_s')}/s")
        return res

    def build(reqs: Iterator[Request], n: int) -> list[tuple[str, URL]]:
        return [(req[0], to_url(base, req, plumb)) for req, _ in zip(reqs, range(n))]

    only = set(args.phases.split(","))
    if "timeline" in only:
        reqs = build((maker.make("getTimeline") for _ in iter(int, 1)), 400)
        await phase("timeline", open_loop(base, reqs, args.timeline_rate, args.timeline_s, args.max_in_flight))
    if "follows_following" in only:
        v0 = params["viewers"][0]
        ff = [("getFollowsFollowing", [("viewer", v), ("targets", params["mega"])]) for v in params["viewers"]]
        # viewer 0 shares the most followees with the mega account's followers: half the requests
        reqs = build(iter([ff[0] if i % 2 == 0 else ff[(i // 2) % len(ff)] for i in range(400)]), 400)
        res = await phase("follows_following",
                          open_loop(base, reqs, args.ff_rate, args.ff_s, args.max_in_flight))
        res["viewer"] = v0
    if "mixed" in only:
        order = [m for m in METHODS]
        reqs = build((maker.make(order[i % len(order)]) for i in range(1 << 30)), 25 * 80)
        await phase("mixed", open_loop(base, reqs, args.mixed_rate, args.mixed_s, args.max_in_flight))
    if "capacity" in only and args.capacity_s > 0:
        cap: dict[str, Any] = {}
        for m in METHODS:
            reqs = build((maker.make(m) for _ in iter(int, 1)), 200)
            cpu0, wcpu0 = serve.cpu_s(), workers.cpu_s()
            t0 = time.monotonic()
            cap[m] = await closed_loop(reqs, args.capacity_s, args.capacity_concurrency)
            cap[m]["serve_cpu_pct"] = round(100 * (serve.cpu_s() - cpu0) / (time.monotonic() - t0), 1)
            cap[m]["serve_workers_cpu_pct"] = round(100 * (workers.cpu_s() - wcpu0) / (time.monotonic() - t0), 1)
        result["phases"]["capacity"] = {"methods": cap, "ingest": {}}
        log("capacity: " + ", ".join(f"{m} {v['requests_per_s']}/s" for m, v in cap.items()))
    watch.stop.set()
    await watch_task
    samples = watch.samples
    if samples:
        # behind: events the replay had sent by then (at the requested rate, from the first
        # sample) minus events committed, in seconds of ingest
        t0, e0 = samples[0][0], samples[0][1]
        behind = [max(0.0, ((s[0] - t0) * args.ingest_rate - (s[1] - e0)) / args.ingest_rate) for s in samples]
        result["ingest"] = {"events_total": samples[-1][1], "tail_events": tail_events,
                            "tail_exhausted": samples[-1][1] >= tail_events,
                            "events_per_s_overall": round((samples[-1][1] - e0) / max(samples[-1][0] - t0, 1e-9), 1),
                            "max_behind_s": round(max(behind), 1),
                            "columns": ["t_s", "events", "queue_depth", "behind_s"],
                            "timeline": [[round(s[0] - t0, 1), s[1], s[3], round(b, 1)]
                                         for s, b in list(zip(samples, behind))[::5]]}
        try:  # the stall figures: the longest time between two commits, and merge slices
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
                js = (await get_json(s, base + "/xrpc/_health")).get("jetstream") or {}
            result["ingest"]["commit_gap_max_s"] = js.get("commit_gap_max_s")
            result["ingest"]["merge"] = js.get("merge")
        except (aiohttp.ClientError, OSError, RuntimeError, asyncio.TimeoutError) as exc:
            result.setdefault("problems", []).append(f"final health not read: {exc}")
    return result


def evaluate(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, met or missed, from the phases' figures."""
    rows = []
    phases = result.get("phases", {})
    for key, (stat, limit) in TARGETS.items():
        ph, m = key.split("/")
        fig = phases.get(ph, {}).get("methods", {}).get(m, {})
        value = fig.get(stat)
        rows.append({"what": f"{m} ({ph} phase) {stat}", "value": value, "target": limit,
                     "met": value is not None and value <= limit and not fig.get("errors")})
    for m, fig in phases.get("mixed", {}).get("methods", {}).items():
        if m in ("getTimeline", "getFollowsFollowing"):  # targets of their own phases
            continue
        stat, limit = OTHER_TARGET
        value = fig.get(stat)
        rows.append({"what": f"{m} (mixed phase) {stat}", "value": value, "target": limit,
                     "met": value is not None and value <= limit and not fig.get("errors")})
    gap = result.get("ingest", {}).get("commit_gap_max_s")
    rows.append({"what": "longest gap between live-ingest commits, s", "value": gap, "target": COMMIT_GAP_MAX_S,
                 "met": gap is not None and gap <= COMMIT_GAP_MAX_S})
    return rows


def human(result: dict[str, Any]) -> str:
    lines = [f"DataPlane benchmark: {result['settings']['events']:,} events in the store, live ingest at "
             f"{result['settings']['ingest_rate']:g} events/s" + (" (PLUMBING: constellation routes)"
                                                                   if result["settings"]["plumbing"] else "")]
    for name, ph in result.get("phases", {}).items():
        if name == "capacity":
            lines.append("capacity (closed loop, requests/s): " + ", ".join(
                f"{m} {v['requests_per_s']:g}" for m, v in ph["methods"].items()))
            continue
        lines.append(f"{name}: {ph['rate_achieved']:g}/{ph['rate_requested']:g} req/s, client kept up: "
                     f"{ph['client_kept_up']}, errors {ph['errors']}, ingest {ph['ingest'].get('events_per_s')}/s, "
                     f"cpu {ph['cpu_pct']}")
        for m, v in ph["methods"].items():
            lines.append(f"  {m:30s} n {v.get('n', 0):5d}  p50 {v.get('p50_ms')}  p95 {v.get('p95_ms')}  "
                         f"p99 {v.get('p99_ms')}  max {v.get('max_ms')} ms  errors {v['errors']}  "
                         f"bytes {v.get('answer_bytes_p50')}")
    ingest = result.get("ingest", {})
    if "commit_gap_max_s" in ingest:
        lines.append(f"ingest: longest gap between commits {ingest['commit_gap_max_s']} s, merge slices "
                     f"{ingest.get('merge')}")
    for row in result.get("targets", []):
        lines.append(f"{'MET   ' if row['met'] else 'MISSED'} {row['what']}: {row['value']} (target <= {row['target']})")
    for p in result.get("problems", []):
        lines.append(f"PROBLEM: {p}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000, help="events in the store (default 10M)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--accounts", type=int, default=None, help="default max(1000, events // 10)")
    ap.add_argument("--tail", type=int, default=None,
                    help="new events replayed live (default: enough for every phase at --ingest-rate, x1.5)")
    ap.add_argument("--ingest-rate", type=float, default=1500.0, help="live events/s (default 1,500)")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--timeline-rate", type=float, default=200.0)
    ap.add_argument("--timeline-s", type=float, default=30.0)
    ap.add_argument("--ff-rate", type=float, default=200.0, help="getFollowsFollowing(viewer, [mega]) per s")
    ap.add_argument("--ff-s", type=float, default=30.0)
    ap.add_argument("--mixed-rate", type=float, default=200.0, help="all methods round-robin, requests/s")
    ap.add_argument("--mixed-s", type=float, default=60.0)
    ap.add_argument("--capacity-s", type=float, default=2.0, help="closed-loop seconds per method (0: skip)")
    ap.add_argument("--capacity-concurrency", type=int, default=4)
    ap.add_argument("--phases", default="timeline,follows_following,mixed,capacity")
    ap.add_argument("--settle-s", type=float, default=30.0,
                    help="before each phase, wait (at most this long) until ingest has no backlog")
    ap.add_argument("--max-in-flight", type=int, default=64)
    ap.add_argument("--compress", choices=["on", "off"], default="on",
                    help="live wire: zstd with the v1 dictionary (if present) or uncompressed")
    ap.add_argument("--dictionary", type=Path, default=DEFAULT_DICTIONARY)
    ap.add_argument("--plumbing", action="store_true",
                    help="send getBacklinksCount instead of the dev.smalldp methods (tests the machinery)")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra argument for smalldp serve")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--json", type=Path, default=None, help="default OUT_DIR/dataplane-<events>.json")
    ap.add_argument("--keep-data", action="store_true", help="keep the live copy of the store")
    ap.add_argument("--rebuild", action="store_true", help="import the store again even if cached")
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    accounts = args.accounts or max(1000, args.events // 10)
    gen = load_generator()
    gen_rate = float(gen.DEFAULTS["rate"])
    run_s = (args.warmup_s + args.timeline_s + args.ff_s + args.mixed_s + 3 * args.settle_s
             + (25 * (args.capacity_s + 0.5) if "capacity" in args.phases else 0) + 30)
    tail = args.tail or int(round(run_s * args.ingest_rate * 1.5, -4))
    key = generator_key(args.events, args.seed, accounts, tail)
    json_path = args.json or out / f"dataplane-{args.events}.json"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result: dict[str, Any] = {
        "command": [sys.executable, *sys.argv], "label": args.label,
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "cpu_model": _cpu_model(), "python": sys.version.split()[0],
                    "platform": platform.platform(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "generator": key, "smalldp": _git_state(), "problems": []}
    result["settings"]["accounts"] = accounts
    live = None
    try:
        main_file, tail_file = ensure_dp_events(out, key)
        store, imported = ensure_store(out, main_file, key, args.rebuild)
        result["import"] = imported
        params_path = store.parent / f"{store.name}-params.json"
        if params_path.exists() and _manifest_ok(params_path, {"key": key}, ("key",)):
            params = json.loads(params_path.read_text())["params"]
        else:
            params = pick_params(main_file, key)
            params_path.write_text(json.dumps({"key": key, "params": params}) + "\n")
        result["params"] = {k: (v if k in ("viewers", "mega", "big_lists", "counts") else
                                (len(v) if isinstance(v, (list, dict)) else v)) for k, v in params.items()}
        result["params"]["viewer_follows"] = {v: len(f) for v, f in params["viewer_follows"].items()}
        live = working_copy(store, out)
        dictionary = args.dictionary if args.compress == "on" and args.dictionary.is_file() else None
        rport, sport = free_port(), free_port()
        speed = args.ingest_rate / gen_rate
        argv = smalldp("replay", str(tail_file), "--listen", f"127.0.0.1:{rport}", "--speed", f"{speed:g}")
        if dictionary is not None:
            argv += ["--zstd-dictionary", str(dictionary)]
        replay = Child("replay", argv, out / "dp-replay.log")
        wait_for_port(rport, replay.proc)
        sargv = smalldp("serve", "--grpc-listen", "off", "--data-dir", str(live), "--listen", f"127.0.0.1:{sport}",
                        "--jetstream", f"ws://127.0.0.1:{rport}", "--log-level", "warning", *args.serve_arg)
        sargv += ["--compress", "--zstd-dictionary", str(dictionary)] if dictionary else ["--no-compress"]
        serve = Child("serve", sargv, out / "dp-serve.log")
        wait_for_port(sport, serve.proc, timeout=120)
        result["wire"] = "zstd" if dictionary else "uncompressed"
        log(f"replay :{rport} (speed {speed:g} = {args.ingest_rate:g} events/s), serve :{sport} on {live.name}")
        result.update(asyncio.run(drive(args, f"http://127.0.0.1:{sport}", params, serve, replay, tail)))
        result["serve_rss_bytes"] = serve.rss()
        result["serve_workers_rss_bytes"] = ChildrenCpu(serve.proc.pid).rss()
        result["serve_exit"] = serve.stop()
        if result["serve_exit"] != 0:
            result["problems"].append(f"serve exited with {result['serve_exit']}: {serve.log_tail(5)}")
    except BaseException as exc:  # the JSON must not say "no problems" about a run that crashed
        result["problems"].append(f"the run failed: {exc!r}")
        raise
    finally:
        Child.stop_all()
        if live is not None and not args.keep_data:
            shutil.rmtree(live, ignore_errors=True)
        result["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result["targets"] = evaluate(result)
        for name, ph in result.get("phases", {}).items():
            if name != "capacity" and not ph.get("client_kept_up", True):
                result["problems"].append(f"{name}: the load client could not keep to its schedule "
                                          f"(start delay p99 {ph['client_start_delay_ms']['p99']} ms, "
                                          f"{ph['rate_achieved']} of {ph['rate_requested']} req/s, client CPU "
                                          f"{ph['client_cpu_pct']}% of a core, load average "
                                          f"{ph['load_avg_after'][0]}): latencies include the client's own lag")
            if ph.get("errors"):
                result["problems"].append(f"{name}: {ph['errors']} errors, e.g. {ph['error_samples'][:2]}")
        if (result.get("ingest") or {}).get("tail_exhausted"):
            result["problems"].append("the replay tail ran out before the end: raise --tail")
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        print(human(result))
        print(f"(JSON: {json_path})")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
