"""The DataPlane XRPC methods (lexicons/DATAPLANE.md): parameters in, DataPlaneReader out.

Each handler validates every parameter (smalldp.api.xrpc.Params raises a 400 with the
parameter's name), then runs one bounded reader call on a worker thread.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from aiohttp import web

from smalldp.api import NAMESPACE
from smalldp.api.readers import READERS
from smalldp.api.xrpc import Params, XrpcError, json_response
from smalldp.derived import BLOCK, FOLLOW, POST, REPOST
from smalldp.events import valid_did, valid_handle
from smalldp.links import is_link
from smalldp.store.dataplane import FEED_FILTERS, LIKE, QUOTE_PATHS, THREAD_LEVELS_MAX, DataPlaneReader
from smalldp.store.encoding import split_target

routes = web.RouteTableDef()
T = TypeVar("T")
ARRAY_MAX = 100
LIMIT_MAX = 100
LIMIT_DEFAULT = 50


def _route(name: str) -> Callable[[Callable[[web.Request], Any]], Any]:
    return routes.get(f"/xrpc/{NAMESPACE}.{name}")


async def _run(request: web.Request, fn: Callable[[DataPlaneReader], T]) -> T:
    return await request.app[READERS].run(fn)  # type: ignore[arg-type]


def _is_at_uri(value: str) -> bool:
    return value.startswith("at://") and is_link(value) and split_target(value) is not None


def _paged(body: dict[str, Any], cursor: str | None) -> web.Response:
    """A page: the cursor is present only when there is more."""
    if cursor is not None:
        body["cursor"] = cursor
    return json_response(body)


Fetch = Callable[[DataPlaneReader, str, int, "str | None"], tuple[list[Any], "str | None"]]


async def _page(request: web.Request, subject: Callable[["DataPlaneParams"], str], fetch: Fetch, key: str,
                shape: Callable[[list[Any]], list[Any]] = lambda items: items) -> web.Response:
    """A paged method of one subject (an actor, viewer or list), ``limit`` and ``cursor``."""
    p = DataPlaneParams(request)
    value, limit, cursor = subject(p), p.limit(), p.cursor()
    items, next_cursor = await _run(request, lambda r: fetch(r, value, limit, cursor))
    return _paged({key: shape(items)}, next_cursor)


def _actor(p: "DataPlaneParams") -> str:
    return p.did("actor")


class DataPlaneParams(Params):
    """Params with the DataPlane's value kinds."""

    def did(self, name: str) -> str:
        value = self.required(name, 2048)
        if not valid_did(value):
            raise XrpcError(f"parameter {name!r} must be a DID")
        return value

    def at_uri(self, name: str) -> str:
        value = self.required(name, 2048)
        if not _is_at_uri(value):
            raise XrpcError(f"parameter {name!r} must be an at-uri (at://DID/COLLECTION/RKEY)")
        return value

    def at_uris(self, name: str) -> list[str]:
        return self._many(name, ARRAY_MAX, _is_at_uri, "at-uris (at://DID/COLLECTION/RKEY)")

    def handles(self, name: str) -> list[str]:
        return self._many(name, ARRAY_MAX, valid_handle, "handles")

    def pairs(self, name: str) -> list[tuple[str, str]]:
        def valid(value: str) -> bool:
            a, sep, b = value.partition(",")
            return bool(sep) and valid_did(a) and valid_did(b)
        values = self._many(name, ARRAY_MAX, valid, "pairs 'didA,didB'")
        return [tuple(v.split(",", 1)) for v in values]  # type: ignore[misc]

    def limit(self) -> int:
        return self.integer("limit", LIMIT_DEFAULT, 1, LIMIT_MAX)

    def cursor(self) -> str | None:
        return self.string("cursor", required=False, max_length=64)


# ---------------------------------------------------------------- records and interactions

@_route("getRecords")
async def get_records(request: web.Request) -> web.Response:
    uris = DataPlaneParams(request).at_uris("uris")
    return json_response({"records": await _run(request, lambda r: r.records(uris))})


@_route("getInteractionCounts")
async def get_interaction_counts(request: web.Request) -> web.Response:
    uris = DataPlaneParams(request).at_uris("uris")
    return json_response(await _run(request, lambda r: r.interaction_counts(uris)))


async def _by_subject(request: web.Request, collection: str, paths: tuple[str, ...]) -> web.Response:
    p = DataPlaneParams(request)
    subject, limit, cursor = p.at_uri("subject"), p.limit(), p.cursor()
    uris, next_cursor = await _run(request, lambda r: r.by_subject(subject, collection, paths, limit, cursor))
    return _paged({"uris": uris}, next_cursor)


@_route("getLikesBySubject")
async def get_likes_by_subject(request: web.Request) -> web.Response:
    return await _by_subject(request, LIKE, (".subject.uri",))


@_route("getRepostsBySubject")
async def get_reposts_by_subject(request: web.Request) -> web.Response:
    return await _by_subject(request, REPOST, (".subject.uri",))


@_route("getQuotesBySubject")
async def get_quotes_by_subject(request: web.Request) -> web.Response:
    return await _by_subject(request, POST, QUOTE_PATHS)


async def _actor_subjects(request: web.Request, collection: str) -> web.Response:
    p = DataPlaneParams(request)
    actor, subjects = p.did("actor"), p.at_uris("subjects")
    return json_response({"uris": await _run(request, lambda r: r.actor_subjects(actor, collection, subjects))})


@_route("getLikesByActorAndSubjects")
async def get_likes_by_actor_and_subjects(request: web.Request) -> web.Response:
    return await _actor_subjects(request, LIKE)


@_route("getRepostsByActorAndSubjects")
async def get_reposts_by_actor_and_subjects(request: web.Request) -> web.Response:
    return await _actor_subjects(request, REPOST)


@_route("getKnownLikers")
async def get_known_likers(request: web.Request) -> web.Response:
    p = DataPlaneParams(request)
    viewer, subjects, limit = p.did("viewer"), p.at_uris("subjects"), p.limit()
    return json_response({"results": await _run(request, lambda r: r.known_likers(viewer, subjects, limit))})


# ---------------------------------------------------------------- graph

@_route("getFollowers")
async def get_followers(request: web.Request) -> web.Response:
    return await _page(request, _actor, lambda r, actor, limit, cursor: r.followers(actor, limit, cursor), "followers")


@_route("getFollows")
async def get_follows(request: web.Request) -> web.Response:
    return await _page(request, _actor, lambda r, actor, limit, cursor: r.out_edges(actor, FOLLOW, limit, cursor),
                       "follows")


@_route("getBlocks")
async def get_blocks(request: web.Request) -> web.Response:
    return await _page(request, _actor, lambda r, actor, limit, cursor: r.out_edges(actor, BLOCK, limit, cursor),
                       "blockUris", lambda items: [item["uri"] for item in items])


@_route("getFollowsFollowing")
async def get_follows_following(request: web.Request) -> web.Response:
    p = DataPlaneParams(request)
    viewer, targets = p.did("viewer"), p.dids("targets", ARRAY_MAX)
    return json_response({"results": await _run(request, lambda r: r.follows_following(viewer, targets))})


@_route("getActorFollowsActors")
async def get_actor_follows_actors(request: web.Request) -> web.Response:
    p = DataPlaneParams(request)
    actor, targets = p.did("actor"), p.dids("targets", ARRAY_MAX)
    return json_response({"uris": await _run(request, lambda r: r.actor_follows_actors(actor, targets))})


@_route("getRelationships")
async def get_relationships(request: web.Request) -> web.Response:
    p = DataPlaneParams(request)
    viewer, targets = p.did("viewer"), p.dids("targets", ARRAY_MAX)
    return json_response({"relationships": await _run(request, lambda r: r.relationships(viewer, targets))})


@_route("getBlockExistence")
async def get_block_existence(request: web.Request) -> web.Response:
    pairs = DataPlaneParams(request).pairs("pairs")
    return json_response({"exists": await _run(request, lambda r: r.block_existence(pairs))})


@_route("getCountsForUsers")
async def get_counts_for_users(request: web.Request) -> web.Response:
    dids = DataPlaneParams(request).dids("dids", ARRAY_MAX)
    return json_response(await _run(request, lambda r: r.counts_for_users(dids)))


# ---------------------------------------------------------------- actors

@_route("getActors")
async def get_actors(request: web.Request) -> web.Response:
    dids = DataPlaneParams(request).dids("dids", ARRAY_MAX)
    return json_response({"actors": await _run(request, lambda r: r.actors(dids))})


@_route("getDidsByHandles")
async def get_dids_by_handles(request: web.Request) -> web.Response:
    handles = DataPlaneParams(request).handles("handles")
    return json_response({"dids": await _run(request, lambda r: r.dids_by_handles(handles))})


@_route("getLatestRev")
async def get_latest_rev(request: web.Request) -> web.Response:
    actor = DataPlaneParams(request).did("actor")
    return json_response({"rev": await _run(request, lambda r: r.latest_rev(actor))})


# ---------------------------------------------------------------- feeds

@_route("getAuthorFeed")
async def get_author_feed(request: web.Request) -> web.Response:
    p = DataPlaneParams(request)
    actor, limit, cursor = p.did("actor"), p.limit(), p.cursor()
    feed_filter = p.string("filter", required=False, max_length=64)
    if feed_filter is None:
        feed_filter = "posts_with_replies"
    if feed_filter not in FEED_FILTERS:
        raise XrpcError(f"parameter 'filter' must be one of {', '.join(FEED_FILTERS)}")
    items, next_cursor = await _run(request, lambda r: r.author_feed(actor, limit, cursor, feed_filter))
    return _paged({"items": items}, next_cursor)


@_route("getTimeline")
async def get_timeline(request: web.Request) -> web.Response:
    return await _page(request, lambda p: p.did("viewer"),
                       lambda r, viewer, limit, cursor: r.timeline(viewer, limit, cursor), "items")


@_route("getThread")
async def get_thread(request: web.Request) -> web.Response:
    p = DataPlaneParams(request)
    uri = p.at_uri("uri")
    above, below = p.integer("above", 10, 0, THREAD_LEVELS_MAX), p.integer("below", 6, 0, THREAD_LEVELS_MAX)
    return json_response({"uris": await _run(request, lambda r: r.thread(uri, above, below))})


# ---------------------------------------------------------------- lists

@_route("getListMembers")
async def get_list_members(request: web.Request) -> web.Response:
    return await _page(request, lambda p: p.at_uri("list"),
                       lambda r, list_uri, limit, cursor: r.list_members(list_uri, limit, cursor), "listitems")


@_route("getActorLists")
async def get_actor_lists(request: web.Request) -> web.Response:
    return await _page(request, _actor, lambda r, actor, limit, cursor: r.actor_lists(actor, limit, cursor),
                       "listUris")


@_route("getListMembership")
async def get_list_membership(request: web.Request) -> web.Response:
    p = DataPlaneParams(request)
    actor, lists = p.did("actor"), p.at_uris("lists")
    return json_response({"listitemUris": await _run(request, lambda r: r.list_membership(actor, lists))})
