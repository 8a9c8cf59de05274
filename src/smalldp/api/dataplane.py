"""The DataPlane XRPC methods (lexicons/DATAPLANE.md): parameters in, DataPlaneReader out.

Each handler validates every parameter (smalldp.api.xrpc.Params raises a 400 with the
parameter's name), then runs one bounded reader call, named with its arguments: in an RPC
worker process when serve has them (``rpc_processes``, appview/workers.py), else on a
reader thread.
"""

from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from smalldp.api import NAMESPACE
from smalldp.api.readers import READERS, WORKERS, read_store
from smalldp.api.xrpc import Params, XrpcError, json_response
from smalldp.appview.workers import reader_method
from smalldp.derived import BLOCK, FOLLOW, POST, REPOST
from smalldp.events import valid_did, valid_handle
from smalldp.links import is_link
from smalldp.store.dataplane import FEED_FILTERS, LIKE, QUOTE_PATHS, THREAD_LEVELS_MAX
from smalldp.store.encoding import split_target

routes = web.RouteTableDef()
ARRAY_MAX = 100
LIMIT_MAX = 100
LIMIT_DEFAULT = 50


def _route(name: str) -> Callable[[Callable[[web.Request], Any]], Any]:
    return routes.get(f"/xrpc/{NAMESPACE}.{name}")


async def _run(request: web.Request, method: str, *args: Any) -> Any:
    """``reader.<method>(*args)`` of a DataPlaneReader, where serve runs store reads."""
    return await read_store(request.app[READERS], request.app.get(WORKERS), reader_method, method, *args)


def _is_at_uri(value: str) -> bool:
    return value.startswith("at://") and is_link(value) and split_target(value) is not None


def _paged(body: dict[str, Any], cursor: str | None) -> web.Response:
    """A page: the cursor is present only when there is more."""
    if cursor is not None:
        body["cursor"] = cursor
    return json_response(body)


async def _page(request: web.Request, subject: Callable[["DataPlaneParams"], str], method: str, key: str,
                shape: Callable[[list[Any]], list[Any]] = lambda items: items, *,
                extra: tuple[Any, ...] = ()) -> web.Response:
    """A paged method of one subject (an actor, viewer or list), ``limit`` and ``cursor``:
    ``reader.<method>(subject, *extra, limit, cursor)``."""
    p = DataPlaneParams(request)
    value, limit, cursor = subject(p), p.limit(), p.cursor()
    items, next_cursor = await _run(request, method, value, *extra, limit, cursor)
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
    return json_response({"records": await _run(request, "records", uris)})


@_route("getInteractionCounts")
async def get_interaction_counts(request: web.Request) -> web.Response:
    uris = DataPlaneParams(request).at_uris("uris")
    return json_response(await _run(request, "interaction_counts", uris))


async def _by_subject(request: web.Request, collection: str, paths: tuple[str, ...]) -> web.Response:
    p = DataPlaneParams(request)
    subject, limit, cursor = p.at_uri("subject"), p.limit(), p.cursor()
    uris, next_cursor = await _run(request, "by_subject", subject, collection, paths, limit, cursor)
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
    return json_response({"uris": await _run(request, "actor_subjects", actor, collection, subjects)})


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
    return json_response({"results": await _run(request, "known_likers", viewer, subjects, limit)})


# ---------------------------------------------------------------- graph

@_route("getFollowers")
async def get_followers(request: web.Request) -> web.Response:
    return await _page(request, _actor, "followers", "followers")


@_route("getFollows")
async def get_follows(request: web.Request) -> web.Response:
    return await _page(request, _actor, "out_edges", "follows", extra=(FOLLOW,))


@_route("getBlocks")
async def get_blocks(request: web.Request) -> web.Response:
    return await _page(request, _actor, "out_edges", "blockUris", lambda items: [item["uri"] for item in items],
                       extra=(BLOCK,))


@_route("getFollowsFollowing")
async def get_follows_following(request: web.Request) -> web.Response:
    p = DataPlaneParams(request)
    viewer, targets = p.did("viewer"), p.dids("targets", ARRAY_MAX)
    return json_response({"results": await _run(request, "follows_following", viewer, targets)})


@_route("getActorFollowsActors")
async def get_actor_follows_actors(request: web.Request) -> web.Response:
    p = DataPlaneParams(request)
    actor, targets = p.did("actor"), p.dids("targets", ARRAY_MAX)
    return json_response({"uris": await _run(request, "actor_follows_actors", actor, targets)})


@_route("getRelationships")
async def get_relationships(request: web.Request) -> web.Response:
    p = DataPlaneParams(request)
    viewer, targets = p.did("viewer"), p.dids("targets", ARRAY_MAX)
    return json_response({"relationships": await _run(request, "relationships", viewer, targets)})


@_route("getBlockExistence")
async def get_block_existence(request: web.Request) -> web.Response:
    pairs = DataPlaneParams(request).pairs("pairs")
    return json_response({"exists": await _run(request, "block_existence", pairs)})


@_route("getCountsForUsers")
async def get_counts_for_users(request: web.Request) -> web.Response:
    dids = DataPlaneParams(request).dids("dids", ARRAY_MAX)
    return json_response(await _run(request, "counts_for_users", dids))


# ---------------------------------------------------------------- actors

@_route("getActors")
async def get_actors(request: web.Request) -> web.Response:
    dids = DataPlaneParams(request).dids("dids", ARRAY_MAX)
    return json_response({"actors": await _run(request, "actors", dids)})


@_route("getDidsByHandles")
async def get_dids_by_handles(request: web.Request) -> web.Response:
    handles = DataPlaneParams(request).handles("handles")
    return json_response({"dids": await _run(request, "dids_by_handles", handles)})


@_route("getLatestRev")
async def get_latest_rev(request: web.Request) -> web.Response:
    actor = DataPlaneParams(request).did("actor")
    return json_response({"rev": await _run(request, "latest_rev", actor)})


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
    items, next_cursor = await _run(request, "author_feed", actor, limit, cursor, feed_filter)
    return _paged({"items": items}, next_cursor)


@_route("getTimeline")
async def get_timeline(request: web.Request) -> web.Response:
    return await _page(request, lambda p: p.did("viewer"), "timeline", "items")


@_route("getThread")
async def get_thread(request: web.Request) -> web.Response:
    p = DataPlaneParams(request)
    uri = p.at_uri("uri")
    above, below = p.integer("above", 10, 0, THREAD_LEVELS_MAX), p.integer("below", 6, 0, THREAD_LEVELS_MAX)
    return json_response({"uris": await _run(request, "thread", uri, above, below)})


# ---------------------------------------------------------------- lists

@_route("getListMembers")
async def get_list_members(request: web.Request) -> web.Response:
    return await _page(request, lambda p: p.at_uri("list"), "list_members", "listitems")


@_route("getActorLists")
async def get_actor_lists(request: web.Request) -> web.Response:
    return await _page(request, _actor, "actor_lists", "listUris")


@_route("getListMembership")
async def get_list_membership(request: web.Request) -> web.Response:
    p = DataPlaneParams(request)
    actor, lists = p.did("actor"), p.at_uris("lists")
    return json_response({"listitemUris": await _run(request, "list_membership", actor, lists)})
