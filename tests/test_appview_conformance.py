"""The official AppView (@atproto/bsky 0.0.221, conformance/node) on smalldp, against the
real thing (issue 15, "Test it against the real thing").

One small stream (the real Jetstream corpus when ../shared has it, then 2,000 generated
events with scripts/gen_events.py's DataPlane accounts: two viewers following active
posters, lists, threads) is served three ways, all on 127.0.0.1 (tests/appview_harness.py):

* the reference: @atproto/bsky's own DataPlane over a throwaway Postgres, its indexer fed
  the events one at a time, and the AppView on it (HTTP/1.1, all it speaks);
* smalldp: ``smalldp import`` of the same file, ``smalldp serve --no-ingest`` with gRPC on
  a free port and ``--plc-url`` the fake PLC, and the AppView on it (HTTP/2, its default);
* a fake PLC directory whose keys the test holds, so logged-in requests carry real
  service-auth JWTs that the AppView checks against GetIdentityByDid.

Then every main view (getProfile, getFollowers, getFollows, getAuthorFeed, getPostThread,
getLikes, getRepostedBy, getTimeline, listNotifications) over the stream's busiest corners,
anonymous and as a viewer, lists with their second page:

* conformance (a): the AppView on smalldp answers each with the right status and content
  that is sane by the stream alone (what is listed exists and is what was asked for), and
  lists followers, follows, likers and reposters once each, at the pair's oldest record,
  newest first by that record's rkey (``appview_harness.rkey_order``);
* differential (b): equal to the AppView on the reference, field by field, except
  ``appview_harness.ALLOWED``; those four lists are walked to the end and compared in any
  order (``appview_harness.ORDER_FREE``: the reference orders by sortAt), each with its
  reason.

Nothing here is skipped: without node, the pinned package or PostgreSQL the tests fail,
saying what to install (scripts/_node_deps.sh, scripts/_system_deps.sh). The bigger run
with latencies is scripts/conformance.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from appview_harness import (
    CORPUS, MAIN_VIEWS, SCRIPTS, SERVER_DID, Answer, AppViewClient, Comparison, FakePlc, HarnessError,
    Query, Stream, Subjects, ask, choose_subjects, compare, generated_lines, key_for, plan, plc_for_web,
    reference_appview, rkey_order, sanity, service_jwt, smalldp_appview,
)

pytestmark = pytest.mark.timeout(900)

EVENTS = 2000
GEN = {"seed": 7, "dataplane": True, "viewers": 2, "viewer_follows": 40, "viewer_window": 1500}
ACCOUNTS = max(1000, EVENTS // 10)  # gen_events' default account universe for this size
# the reference's GetRelationships fails for a viewer who blocks a list holding the target
# twice, or two lists holding it (appview_harness.Comparison.reference_errors)
KNOWN_REFERENCE_FAILURE = "more than one row returned by a subquery used as an expression"


def viewers() -> list[str]:
    """gen_events' scripted viewers; the one who blocks fewer lists first (it is the viewer
    of the anonymous/viewer pairs), see KNOWN_REFERENCE_FAILURE."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    from gen_events import viewer_dids  # type: ignore[import-not-found]

    return [plc_for_web(v) if v.startswith("did:web:") else v for v in viewer_dids(ACCOUNTS, GEN["viewers"])][::-1]


@dataclass
class World:
    stream: Stream
    subjects: Subjects
    queries: list[Query]
    events: Path
    workdir: Path
    plc: FakePlc
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Side:
    """One stack's answers to the plan, or why it could not give them."""

    answers: dict[str, list[Answer]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    errors_logged: list[str] = field(default_factory=list)  # the AppView's own error log
    extra: dict[str, Any] = field(default_factory=dict)

    def need(self) -> None:
        if self.error:
            pytest.fail(self.error, pytrace=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    started = time.monotonic()
    lines = (CORPUS.read_bytes().splitlines() if CORPUS.is_file() else []) + generated_lines(EVENTS, **GEN)
    stream = Stream.of(lines)
    subjects = choose_subjects(stream, viewers())
    workdir = tmp_path_factory.mktemp("appview-conformance")
    events = stream.write(workdir / "events.jsonl")
    with FakePlc(stream.handles, stream.deleted) as plc:
        w = World(stream, subjects, plan(subjects), events, workdir, plc)
        w.timings["stream_s"] = time.monotonic() - started
        yield w


@pytest.fixture(scope="module")
def reference(world: World) -> Side:
    side = Side()
    started = time.monotonic()
    try:
        with reference_appview(world.events, world.plc, world.workdir) as (av, info):
            side.answers = ask(av.url, world.queries)
            side.errors_logged = av.errors(50)
            side.info = info
    except HarnessError as err:
        side.error = f"the reference stack did not run: {err}"
    world.timings["reference_s"] = time.monotonic() - started
    return side


@pytest.fixture(scope="module")
def smalldp(world: World) -> Side:
    side = Side()
    started = time.monotonic()
    try:
        with smalldp_appview(world.events, world.plc, world.workdir) as (av, info):
            side.answers = ask(av.url, world.queries)
            side.extra["auth"] = auth_answers(av.url, world.subjects.viewers[0])
            side.errors_logged = av.errors(50)
            side.info = info
    except HarnessError as err:
        side.error = f"the smalldp stack did not run: {err}"
    world.timings["smalldp_s"] = time.monotonic() - started
    return side


def auth_answers(url: str, viewer: str) -> dict[str, Answer]:
    """getProfile of the viewer itself with a good JWT and with bad ones."""
    client = AppViewClient(url)
    nsid, params = "app.bsky.actor.getProfile", [("actor", viewer)]
    out = {"good": client.get(nsid, params, viewer)}
    bad = {
        "wrong key": service_jwt(viewer, SERVER_DID, nsid, key=key_for(viewer + "#other")),
        "wrong aud": service_jwt(viewer, "did:web:elsewhere.test", nsid),
        "wrong lxm": service_jwt(viewer, SERVER_DID, "app.bsky.feed.getTimeline"),
        "expired": service_jwt(viewer, SERVER_DID, nsid, now=time.time() - 3600),
        "unknown iss": service_jwt("did:plc:zzzzzzzzzzzzzzzzzzzzzzzz", SERVER_DID, nsid),
    }
    for name, token in bad.items():
        client.conn.request("GET", f"/xrpc/{nsid}?actor={viewer}", headers={"Authorization": f"Bearer {token}"})
        resp = client.conn.getresponse()
        raw = resp.read()
        out[name] = Answer(resp.status, json.loads(raw) if raw.startswith(b"{") else raw.decode(), 0.0)
    client.close()
    return out


def selected(world: World, nsid: str, as_viewer: bool | None = None) -> list[Query]:
    return [q for q in world.queries
            if q.nsid == nsid and (as_viewer is None or bool(q.viewer) == as_viewer)]


# --------------------------------------------------------------------------- the comparison itself

def test_the_comparison_walks_whole_lists_and_rkey_order_judges_smalldp() -> None:
    """No stack needed: ``compare`` takes a walk's pages as one list (split anywhere) and
    ORDER_FREE lists in any order, other lists in order (feed items of one millisecond in
    any order); ``rkey_order`` wants each listed account at its pair's oldest record,
    newest first by rkey, and getLikes' createdAt that record's, and feeds newest first
    by rkey."""
    a, b, s = "did:plc:" + "a" * 24, "did:plc:" + "b" * 24, "did:plc:" + "s" * 24
    post = f"at://{s}/app.bsky.feed.post/3lbbbbbbbbbb2"

    def line(author: str, collection: str, rkey: str, record: dict[str, Any]) -> bytes:
        return json.dumps({"did": author, "time_us": 1, "kind": "commit", "commit": {
            "rev": rkey, "operation": "create", "collection": collection, "rkey": rkey,
            "record": {"$type": collection, "createdAt": f"2024-01-0{rkey[-1]}T00:00:00.000Z", **record},
            "cid": "bafy"}}).encode()

    stream = Stream.of([
        line(a, "app.bsky.graph.follow", "3laaaaaaaaaa3", {"subject": s}),
        line(a, "app.bsky.graph.follow", "3laaaaaaaaaa5", {"subject": s}),  # A's second follow of S
        line(b, "app.bsky.graph.follow", "3laaaaaaaaaa4", {"subject": s}),
        line(a, "app.bsky.feed.like", "3laaaaaaaaaa6", {"subject": {"uri": post, "cid": "bafy"}}),
        line(a, "app.bsky.feed.like", "3laaaaaaaaaa7", {"subject": {"uri": post, "cid": "bafy"}}),
    ])
    followers = Query("f", "app.bsky.graph.getFollowers", (("actor", s),), walk=True)
    ok = [Answer(200, {"followers": [{"did": b}], "cursor": "x"}, 0), Answer(200, {"followers": [{"did": a}]}, 0)]
    assert rkey_order(followers, ok, stream) == []  # B (rkey ..4) before A (its oldest, ..3)
    swapped = [Answer(200, {"followers": [{"did": a}, {"did": b}]}, 0)]
    assert len(rkey_order(followers, swapped, stream)) == 1
    likes = Query("l", "app.bsky.feed.getLikes", (("uri", post),), walk=True)
    assert rkey_order(likes, [Answer(200, {"likes": [{"actor": {"did": a}, "createdAt": "2024-01-06T00:00:00.000Z"}]},
                                     0)], stream) == []
    assert rkey_order(likes, [Answer(200, {"likes": [{"actor": {"did": a}, "createdAt": "2024-01-07T00:00:00.000Z"}]},
                                     0)], stream)  # the newer like's
    # the reference's walk in its order, split in two pages, equals smalldp's in one page
    cmp = compare({"f": ok}, {"f": swapped})
    assert cmp.equal == 1 and not cmp.differing, cmp.report()
    def item(rkey: str, at: str) -> dict[str, Any]:
        return {"post": {"uri": f"at://{a}/app.bsky.feed.post/{rkey}", "indexedAt": at}}

    newer, older = item("3laaaaaaaaab2", "2024-01-01T00:00:02.000Z"), item("3laaaaaaaaaa2", "2024-01-01T00:00:01.000Z")
    feed = [Answer(200, {"feed": [newer], "cursor": "c"}, 0), Answer(200, {"feed": [older]}, 0)]
    assert compare({"t": feed}, {"t": [Answer(200, {"feed": [newer, older]}, 0)]}).equal == 1
    assert compare({"t": feed}, {"t": [Answer(200, {"feed": [older, newer]}, 0)]}).paths == {"feed[]": 1}
    assert compare({"t": feed}, {"t": [feed[0], Answer(500, "boom", 0)]}).paths == {"status": 1}
    # within one millisecond the order is free (the reference: by CID), and rkey_order wants smalldp's
    tie = item("3laaaaaaaaab3", "2024-01-01T00:00:02.000Z")
    assert compare({"t": [Answer(200, {"feed": [newer, tie]}, 0)]}, {"t": [Answer(200, {"feed": [tie, newer]}, 0)]}
                   ).equal == 1
    timeline = Query("t", "app.bsky.feed.getTimeline", (), viewer=a, page2=True)
    assert rkey_order(timeline, [Answer(200, {"feed": [tie, newer, older]}, 0)], stream) == []
    assert len(rkey_order(timeline, [Answer(200, {"feed": [newer, tie, older]}, 0)], stream)) == 1


# --------------------------------------------------------------------------- the reference

def test_the_reference_stack_answers_every_view(world: World, reference: Side) -> None:
    """The harness itself, on the reference: every query answered as the stream says,
    the indexer took every event, nothing tried to leave 127.0.0.1."""
    reference.need()
    indexed = reference.info["indexed"]
    print(f"\nstream: {len(world.stream.lines)} events, {len(world.stream.actors)} accounts, "
          f"{len(world.queries)} queries; reference: {reference.info}")
    assert indexed["events"] == len(world.stream.lines) and not indexed["errors"], indexed
    assert reference.info["blocked"] == [], reference.info["blocked"]
    problems = {}
    dataplane_log = (world.workdir / "reference-dataplane.log").read_text(errors="replace")
    for q in world.queries:
        answers = reference.answers[q.name]
        if any(a.status >= 500 for a in answers) and KNOWN_REFERENCE_FAILURE in dataplane_log:
            continue
        found = sanity(q, answers, world.stream)
        if found:
            problems[q.name] = found
    assert not problems, json.dumps(problems, indent=1)[:6000]
    for nsid in MAIN_VIEWS:
        assert any(reference.answers[q.name][0].status == 200 and reference.answers[q.name][0].body
                   for q in selected(world, nsid)), f"{nsid}: no query with a non-empty answer"


# --------------------------------------------------------------------------- (a) conformance

CASES = [(nsid, v) for nsid in MAIN_VIEWS for v in (False, True)
         if v or nsid not in ("app.bsky.feed.getTimeline", "app.bsky.notification.listNotifications")]


@pytest.mark.parametrize("nsid,as_viewer", CASES,
                         ids=[f"{n.rsplit('.', 1)[1]}-{'viewer' if v else 'anonymous'}" for n, v in CASES])
def test_conformance(world: World, smalldp: Side, nsid: str, as_viewer: bool) -> None:
    """(a) The AppView on smalldp: the expected status and sane content for every query;
    lists of follows, likes and reposts in smalldp's order (newest first by the rkey of each
    pair's oldest record)."""
    smalldp.need()
    queries = selected(world, nsid, as_viewer)
    assert queries
    problems = {q.name: p for q in queries
                if (p := sanity(q, smalldp.answers[q.name], world.stream) +
                    rkey_order(q, smalldp.answers[q.name], world.stream))}
    if problems:
        logged = "\n".join(smalldp.errors_logged[-10:])
        pytest.fail(f"{len(problems)} of {len(queries)} {nsid} queries wrong:\n" +
                    "\n".join(f"  {name}: {'; '.join(p[:3])}" for name, p in problems.items()) +
                    (f"\nthe AppView logged:\n{logged}" if logged else ""), pytrace=False)


def test_a_viewer_is_authenticated_by_the_key_smalldp_serves(world: World, smalldp: Side) -> None:
    """A service JWT signed with the viewer's key (in the DID document smalldp resolved and
    serves as GetIdentityByDid) is accepted; one signed with another key, or with the wrong
    audience, method, expiry or an unresolvable issuer, is refused with 401."""
    smalldp.need()
    auth = smalldp.extra["auth"]
    assert auth["good"].status == 200 and "viewer" in auth["good"].body, auth["good"]
    refused = {name: (a.status, a.body.get("error") if isinstance(a.body, dict) else a.body)
               for name, a in auth.items() if name != "good"}
    assert all(status == 401 for status, _ in refused.values()), refused


def test_nothing_left_loopback(world: World, smalldp: Side) -> None:
    smalldp.need()
    assert smalldp.info["blocked"] == [], smalldp.info["blocked"]


# --------------------------------------------------------------------------- (b) differential

@pytest.mark.parametrize("nsid", MAIN_VIEWS, ids=[n.rsplit(".", 1)[1] for n in MAIN_VIEWS])
def test_differential(world: World, reference: Side, smalldp: Side, nsid: str) -> None:
    """(b) The AppView's answers on smalldp equal its answers on the reference DataPlane,
    field by field, except the allow-list (appview_harness.ALLOWED)."""
    reference.need()
    smalldp.need()
    names = {q.name for q in selected(world, nsid)}
    cmp: Comparison = compare({n: a for n, a in reference.answers.items() if n in names},
                              {n: a for n, a in smalldp.answers.items() if n in names})
    print(f"\n{nsid}: {cmp.equal} of {cmp.queries} equal; reference errors {len(cmp.reference_errors)}")
    assert cmp.queries > 0
    if cmp.differing:
        pytest.fail(f"{nsid}: the AppView on smalldp differs from the reference:\n{cmp.report()}", pytrace=False)


def test_timings(world: World, reference: Side, smalldp: Side) -> None:
    """Not a check: what each part of this module cost (pytest -s)."""
    print(f"\ntimings (s): {json.dumps({k: round(v, 1) for k, v in world.timings.items()})}; "
          f"reference {json.dumps({k: v for k, v in reference.info.items() if k.endswith('_s')})} "
          f"indexing {reference.info.get('indexed', {}).get('seconds')}; "
          f"smalldp {json.dumps({k: v for k, v in smalldp.info.items() if k.endswith('_s')})}")
