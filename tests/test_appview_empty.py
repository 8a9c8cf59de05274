"""The RPCs answered empty (smalldp/appview/rpcs/empty.py): each one's exact answer.

Over real gRPC (an in-process GrpcServer on 127.0.0.1 with the real registry, a Python
grpcio client). The expected answers are written out here from the reference DataPlane's
routes (@atproto/bsky's data-plane/server/routes/*.js, what it answers when it finds
nothing): one entry per requested item, in order, where the request has a list. The
list of methods is checked against the plan table in appview/README-dev.md both ways.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest
from google.protobuf.message import Message

from smalldp.api.readers import ReaderPool
from smalldp.appview.grpc_server import Dispatcher, GrpcServer
from smalldp.appview.proto import bsky_pb2 as pb
from smalldp.appview.rpcs import empty, handlers
from smalldp.store.writer import Writer

pytestmark = pytest.mark.timeout(120)
PLAN = Path(empty.__file__).resolve().parents[1] / "README-dev.md"
VIEWER = "did:plc:viewerviewerviewerview"
NAMESPACE = "app.bsky.notification.defs#subjectActivitySubscription"
ITEMS = ["at://did:plc:a/app.bsky.feed.post/1", "did:plc:b", "at://did:plc:c/app.bsky.graph.list/3", "x"]
SITEMAP_NS = "{http://www.sitemaps.org/schemas/sitemap/0.9}"

# method -> (request for n items, the answer expected for it)
Case = tuple[Callable[[list[str]], Message], Callable[[list[str]], Message]]
CASES: dict[str, Case] = {
    "Ping": (lambda xs: pb.PingRequest(), lambda xs: pb.PingResponse()),
    "GetActorMutesActor": (lambda xs: pb.GetActorMutesActorRequest(actor_did=VIEWER, target_did="did:plc:b"),
                           lambda xs: pb.GetActorMutesActorResponse(muted=False)),
    "GetMutes": (lambda xs: pb.GetMutesRequest(actor_did=VIEWER, limit=50, cursor="c"),
                 lambda xs: pb.GetMutesResponse(dids=[], cursor="")),
    "GetActorMutesActorViaList": (
        lambda xs: pb.GetActorMutesActorViaListRequest(actor_did=VIEWER, target_did="did:plc:b"),
        lambda xs: pb.GetActorMutesActorViaListResponse(list_uri="")),
    "GetMutelistSubscription": (
        lambda xs: pb.GetMutelistSubscriptionRequest(actor_did=VIEWER, list_uri=ITEMS[2]),
        lambda xs: pb.GetMutelistSubscriptionResponse(subscribed=False)),
    "GetMutelistSubscriptions": (lambda xs: pb.GetMutelistSubscriptionsRequest(actor_did=VIEWER, limit=10),
                                 lambda xs: pb.GetMutelistSubscriptionsResponse()),
    "GetThreadMutesOnSubjects": (
        lambda xs: pb.GetThreadMutesOnSubjectsRequest(actor_did=VIEWER, thread_roots=xs),
        lambda xs: pb.GetThreadMutesOnSubjectsResponse(muted=[False for _ in xs])),
    "GetNotificationPreferences": (
        lambda xs: pb.GetNotificationPreferencesRequest(dids=xs),
        lambda xs: pb.GetNotificationPreferencesResponse(preferences=[pb.NotificationPreferences() for _ in xs])),
    "GetActivitySubscriptionDids": (lambda xs: pb.GetActivitySubscriptionDidsRequest(actor_did=VIEWER, limit=5),
                                    lambda xs: pb.GetActivitySubscriptionDidsResponse()),
    "GetActivitySubscriptionsByActorAndSubjects": (
        lambda xs: pb.GetActivitySubscriptionsByActorAndSubjectsRequest(actor_did=VIEWER, subject_dids=xs),
        lambda xs: pb.GetActivitySubscriptionsByActorAndSubjectsResponse(subscriptions=[
            pb.ActivitySubscription(actor_did=VIEWER, namespace=NAMESPACE, key="", subject_did="")
            for _ in xs])),
    "GetBookmarksByActorAndSubjects": (
        lambda xs: pb.GetBookmarksByActorAndSubjectsRequest(actor_did=VIEWER, uris=xs),
        lambda xs: pb.GetBookmarksByActorAndSubjectsResponse(bookmarks=[pb.Bookmark() for _ in xs])),
    "GetActorBookmarks": (lambda xs: pb.GetActorBookmarksRequest(actor_did=VIEWER, limit=5),
                          lambda xs: pb.GetActorBookmarksResponse()),
    "GetActorDrafts": (lambda xs: pb.GetActorDraftsRequest(actor_did=VIEWER, limit=5),
                       lambda xs: pb.GetActorDraftsResponse()),
    "GetLabels": (lambda xs: pb.GetLabelsRequest(subjects=xs, issuers=["did:plc:labeler"]),
                  lambda xs: pb.GetLabelsResponse(labels=[])),  # not per subject: labels found, flattened
    "GetBlobTakedown": (lambda xs: pb.GetBlobTakedownRequest(did="did:plc:b", cid="bafyblob"),
                        lambda xs: pb.GetBlobTakedownResponse(taken_down=False, takedown_ref="")),
    "GetRecordTakedown": (lambda xs: pb.GetRecordTakedownRequest(record_uri=ITEMS[0]),
                          lambda xs: pb.GetRecordTakedownResponse(taken_down=False)),
    "GetActorTakedown": (lambda xs: pb.GetActorTakedownRequest(did="did:plc:b"),
                         lambda xs: pb.GetActorTakedownResponse(taken_down=False)),
    "GetSuggestedFeeds": (lambda xs: pb.GetSuggestedFeedsRequest(actor_did=VIEWER, limit=10),
                          lambda xs: pb.GetSuggestedFeedsResponse()),
    "GetFollowSuggestions": (
        lambda xs: pb.GetFollowSuggestionsRequest(actor_did=VIEWER, relative_to_did="did:plc:b", limit=10),
        lambda xs: pb.GetFollowSuggestionsResponse()),
    "GetSuggestedEntities": (lambda xs: pb.GetSuggestedEntitiesRequest(limit=10),
                             lambda xs: pb.GetSuggestedEntitiesResponse()),
    "SearchPosts": (lambda xs: pb.SearchPostsRequest(term="hello from:alice", limit=25),
                    lambda xs: pb.SearchPostsResponse()),
    "SearchStarterPacks": (lambda xs: pb.SearchStarterPacksRequest(term="cats", limit=25),
                           lambda xs: pb.SearchStarterPacksResponse()),
    "SearchFeedGenerators": (lambda xs: pb.SearchFeedGeneratorsRequest(query="cats", limit=25),
                             lambda xs: pb.SearchFeedGeneratorsResponse()),
}


def call_all(tmp_path: Path, calls: list[tuple[str, bytes]]) -> list[tuple[str, bytes] | tuple[str, str]]:
    """Each (method, request bytes) over gRPC: ("ok", answer bytes) or (code name, details)."""
    Writer(tmp_path / "smalldp.sqlite").close()

    async def main() -> list[tuple[str, bytes] | tuple[str, str]]:
        pool = ReaderPool(tmp_path / "smalldp.sqlite", threads=1)
        server = GrpcServer(Dispatcher(pool), "127.0.0.1", 0)
        port = await server.start()
        out: list[tuple[str, bytes] | tuple[str, str]] = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                for method, body in calls:
                    try:
                        out.append(("ok", await ch.unary_unary(f"/bsky.Service/{method}")(body, timeout=10)))
                    except grpc.aio.AioRpcError as exc:
                        out.append((exc.code().name, exc.details() or ""))
        finally:
            await server.stop(0)
            pool.close()
        return out

    return asyncio.run(main())


def test_each_empty_answer_has_the_reference_shape(tmp_path: Path) -> None:
    sizes = [0, 1, 3, 4]
    calls = [(method, request(ITEMS[:n]).SerializeToString())
             for method, (request, _) in CASES.items() for n in sizes]
    answers = call_all(tmp_path, calls)
    wrong = []
    for (method, _), n, (status, body) in zip(calls, sizes * len(CASES), answers):
        expected = CASES[method][1](ITEMS[:n])
        if status != "ok":
            wrong.append(f"{method} x{n}: {status} {body!r}")
            continue
        assert isinstance(body, bytes)
        got = type(expected).FromString(body)
        if got != expected or body != expected.SerializeToString():
            wrong.append(f"{method} x{n}: {got} != {expected}")
    assert not wrong, "\n".join(wrong)


def test_sitemaps(tmp_path: Path) -> None:
    index, page = call_all(tmp_path, [
        ("GetSitemapIndex", pb.GetSitemapIndexRequest(type=pb.SitemapPageType.Value("SITEMAP_PAGE_TYPE_USER")
                                                      ).SerializeToString()),
        ("GetSitemapPage", pb.GetSitemapPageRequest(bucket=1).SerializeToString())])
    assert index[0] == "ok" and isinstance(index[1], bytes)
    xml = gzip.decompress(pb.GetSitemapIndexResponse.FromString(index[1]).sitemap)
    root = ET.fromstring(xml)
    assert root.tag == f"{SITEMAP_NS}sitemapindex" and list(root) == []  # valid, no entries
    assert page[0] == "NOT_FOUND"


def plan_rows() -> dict[str, str]:
    """The plan table of README-dev.md: RPC -> its smalldp column."""
    rows = {}
    for line in PLAN.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"[0-9]+", cells[0]):
            rows[cells[1]] = cells[4]
    assert len(rows) == 108, len(rows)
    return rows


# Rows the plan marks empty that other families answer (with state they keep).
EMPTY_ELSEWHERE = {"GetNotificationSeen"}  # notifications: seen state, if kept
# Answered here though the plan said otherwise, each with its reason in empty.py.
BEYOND_THE_PLAN = {"Ping": "`{}`", "GetSitemapIndex": "unimpl", "GetSitemapPage": "unimpl"}


def test_the_empty_list_matches_the_plan_and_the_registry() -> None:
    rows = plan_rows()
    planned_empty = {name for name, smalldp in rows.items() if smalldp.startswith("empty")}
    assert planned_empty - EMPTY_ELSEWHERE == set(empty.EMPTY) - set(BEYOND_THE_PLAN)
    for name, was in BEYOND_THE_PLAN.items():
        assert rows[name] == was, name
    assert set(CASES) | {"GetSitemapIndex", "GetSitemapPage"} == set(empty.EMPTY)
    sync, async_ = handlers()
    for name in empty.EMPTY:  # registered, by this module, on the loop (no reader thread)
        assert name not in sync and async_[name].__module__ == empty.__name__, name
    ours = {name for name, fn in {**sync, **async_}.items() if fn.__module__ == empty.__name__}
    assert ours == set(empty.EMPTY)


def test_unimplemented_writes_name_themselves(tmp_path: Path) -> None:
    """What the plan leaves unimplemented and no family answers: admin and mute writes."""
    writes = ["TakedownBlob", "TakedownRecord", "TakedownActor", "UntakedownBlob", "UntakedownRecord",
              "UntakedownActor", "UpdateActorUpstreamStatus", "CreateActorMute", "DeleteActorMute",
              "ClearActorMutes", "CreateActorMutelistSubscription", "DeleteActorMutelistSubscription",
              "ClearActorMutelistSubscriptions", "CreateThreadMute", "DeleteThreadMute", "ClearThreadMutes"]
    rows = plan_rows()
    assert all(rows[name] == "unimpl" for name in writes)
    answers: list[Any] = call_all(tmp_path, [(name, b"") for name in writes])
    assert answers == [("UNIMPLEMENTED", f"bsky.Service/{name} is not implemented by smalldp") for name in writes]
