"""Constellation's API, same parameters and JSON shapes: XRPC methods and legacy routes.

Differences from Constellation, on purpose: `total` counts live links only (links of
inactive accounts are not counted), and distinct DIDs are listed by account, newest
seen first.
"""

from __future__ import annotations

from aiohttp import web

from smalldp.api.readers import READERS, ReaderPool
from smalldp.api.xrpc import Params, json_response

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
routes = web.RouteTableDef()


def _pool(request: web.Request) -> ReaderPool:
    return request.app[READERS]


def _records(items: list) -> list[dict[str, str]]:
    return [{"did": r.did, "collection": r.collection, "rkey": r.rkey} for r in items]


@routes.get("/xrpc/blue.microcosm.links.getBacklinks")
async def get_backlinks(request: web.Request) -> web.Response:
    p = Params(request)
    subject = p.subject("subject")
    collection, path = p.source()
    dids = p.dids("did")
    limit = p.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    reverse = p.boolean("reverse")
    cursor = p.string("cursor", required=False)
    page = await _pool(request).run(lambda r: r.backlinks(
        subject, collection, path, dids=dids, limit=limit, cursor=cursor, reverse=reverse))
    return json_response({"total": page.total, "records": _records(page.items), "cursor": page.cursor})


@routes.get("/xrpc/blue.microcosm.links.getBacklinksCount")
async def get_backlinks_count(request: web.Request) -> web.Response:
    p = Params(request)
    subject = p.subject("subject")
    collection, path = p.source()
    dids = p.dids("did")
    total = await _pool(request).run(lambda r: r.count(subject, collection, path, dids))
    return json_response({"total": total})


@routes.get("/xrpc/blue.microcosm.links.getBacklinkDids")
async def get_backlink_dids(request: web.Request) -> web.Response:
    p = Params(request)
    subject = p.subject("subject")
    collection, path = p.source()
    limit = p.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    cursor = p.string("cursor", required=False)
    page = await _pool(request).run(lambda r: r.distinct_dids(subject, collection, path, limit=limit, cursor=cursor))
    return json_response({"total": page.total, "linking_dids": page.items, "cursor": page.cursor})


@routes.get("/xrpc/blue.microcosm.links.getManyToManyCounts")
async def get_many_to_many_counts(request: web.Request) -> web.Response:
    p = Params(request)
    subject = p.subject("subject")
    collection, path = p.source()
    path_to_other = p.path("pathToOther", leading_dot=False)
    dids = p.dids("did")
    others = p.subjects("otherSubject")
    limit = p.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    cursor = p.string("cursor", required=False)
    counts, next_cursor = await _pool(request).run(lambda r: r.many_to_many(
        subject, collection, path, path_to_other, dids=dids, other_subjects=others, limit=limit, cursor=cursor))
    return json_response({"counts_by_other_subject": [
        {"subject": s, "total": total, "distinct": distinct} for s, total, distinct in counts],
        "cursor": next_cursor})


def _legacy(p: Params) -> tuple[str, str, str]:
    return p.subject("target"), p.nsid("collection"), p.path("path", leading_dot=True)


@routes.get("/links")
async def links(request: web.Request) -> web.Response:
    p = Params(request)
    target, collection, path = _legacy(p)
    dids = p.dids("did")
    limit = p.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    cursor = p.string("cursor", required=False)
    page = await _pool(request).run(lambda r: r.backlinks(
        target, collection, path, dids=dids, limit=limit, cursor=cursor))
    return json_response({"total": page.total, "linking_records": _records(page.items), "cursor": page.cursor})


@routes.get("/links/count")
async def links_count(request: web.Request) -> web.Response:
    p = Params(request)
    target, collection, path = _legacy(p)
    total = await _pool(request).run(lambda r: r.count(target, collection, path))
    return json_response({"total": total})


@routes.get("/links/distinct-dids")
async def links_distinct_dids(request: web.Request) -> web.Response:
    p = Params(request)
    target, collection, path = _legacy(p)
    limit = p.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    cursor = p.string("cursor", required=False)
    page = await _pool(request).run(lambda r: r.distinct_dids(target, collection, path, limit=limit, cursor=cursor))
    return json_response({"total": page.total, "linking_dids": page.items, "cursor": page.cursor})


@routes.get("/links/count/distinct-dids")
async def links_count_distinct_dids(request: web.Request) -> web.Response:
    p = Params(request)
    target, collection, path = _legacy(p)
    total = await _pool(request).run(lambda r: r.distinct_count(target, collection, path))
    return json_response({"total": total})


@routes.get("/links/all")
async def links_all(request: web.Request) -> web.Response:
    target = Params(request).subject("target")
    found = await _pool(request).run(lambda r: r.all_links(target))
    return json_response({"links": {
        coll: {path: {"records": n, "distinct_dids": d} for path, (n, d) in paths.items()}
        for coll, paths in found.items()}})


@routes.get("/links/all/count")
async def links_all_count(request: web.Request) -> web.Response:
    target = Params(request).subject("target")
    found = await _pool(request).run(lambda r: r.all_links(target))
    return json_response({"links": {coll: {path: n for path, (n, _) in paths.items()}
                                    for coll, paths in found.items()}})
