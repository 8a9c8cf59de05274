"""Constellation's API, same parameters and JSON shapes: XRPC methods and legacy routes.

Parameters are read as Constellation reads them (smalldp.api.xrpc.LenientParams): odd
but harmless values find nothing rather than fail. Differences from Constellation, on
purpose, are listed in the README ("Where smalldp differs from Constellation"): `total`
counts live links only, lists are in rkey-time order, distinct DIDs by account.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from smalldp.api.readers import READERS, ReaderPool
from smalldp.api.xrpc import MAX_VALUES, LenientParams, XrpcError, json_response
from smalldp.store.reader import LinkRecord

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
routes = web.RouteTableDef()


def _pool(request: web.Request) -> ReaderPool:
    return request.app[READERS]


def _record(r: LinkRecord) -> dict[str, str]:
    return {"did": r.did, "collection": r.collection, "rkey": r.rkey}


def _records(items: list[LinkRecord]) -> list[dict[str, str]]:
    return [_record(r) for r in items]


@routes.get("/xrpc/blue.microcosm.links.getBacklinks")
async def get_backlinks(request: web.Request) -> web.Response:
    p = LenientParams(request)
    subject = p.target("subject")
    collection, path = p.source()
    dids = p.values("did")
    limit = p.limit(DEFAULT_LIMIT, MAX_LIMIT)
    reverse = p.boolean("reverse")
    cursor = p.string("cursor", required=False)
    page = await _pool(request).run(lambda r: r.backlinks(
        subject, collection, path, dids=dids, limit=limit, cursor=cursor, reverse=reverse))
    return json_response({"total": page.total, "records": _records(page.items), "cursor": page.cursor})


@routes.get("/xrpc/blue.microcosm.links.getBacklinksCount")
async def get_backlinks_count(request: web.Request) -> web.Response:
    p = LenientParams(request)
    subject = p.target("subject")
    collection, path = p.source()
    dids = p.values("did")
    total = await _pool(request).run(lambda r: r.count(subject, collection, path, dids))
    return json_response({"total": total})


@routes.get("/xrpc/blue.microcosm.links.getBacklinkDids")
async def get_backlink_dids(request: web.Request) -> web.Response:
    p = LenientParams(request)
    subject = p.target("subject")
    collection, path = p.source()
    limit = p.limit(DEFAULT_LIMIT, MAX_LIMIT)
    cursor = p.string("cursor", required=False)
    page = await _pool(request).run(lambda r: r.distinct_dids(subject, collection, path, limit=limit, cursor=cursor))
    return json_response({"total": page.total, "linking_dids": page.items, "cursor": page.cursor})


def _many_to_many_query(request: web.Request, did_param: str) -> dict[str, Any]:
    """The parameters both many-to-many routes take (their DID filter is named apart)."""
    p = LenientParams(request)
    subject = p.target("subject")
    collection, path = p.source()
    return {"subject": subject, "collection": collection, "path": path,
            "path_to_other": "." + p.anything("pathToOther"), "dids": p.values(did_param),
            "other_subjects": p.targets("otherSubject"), "limit": p.limit(DEFAULT_LIMIT, MAX_LIMIT),
            "cursor": p.string("cursor", required=False)}


@routes.get("/xrpc/blue.microcosm.links.getManyToManyCounts")
async def get_many_to_many_counts(request: web.Request) -> web.Response:
    query = _many_to_many_query(request, "did")
    counts, next_cursor = await _pool(request).run(lambda r: r.many_to_many(**query))
    return json_response({"counts_by_other_subject": [
        {"subject": s, "total": total, "distinct": distinct} for s, total, distinct in counts],
        "cursor": next_cursor})


@routes.get("/xrpc/blue.microcosm.links.getManyToMany")
async def get_many_to_many(request: web.Request) -> web.Response:
    query = _many_to_many_query(request, "linkDid")
    items, next_cursor = await _pool(request).run(lambda r: r.many_to_many_items(**query))
    return json_response({"items": [{"linkRecord": _record(record), "otherSubject": other}
                                    for record, other in items], "cursor": next_cursor})


def _legacy(p: LenientParams) -> tuple[str, str, str]:
    """target, collection, path (with its leading dot, as given: Constellation adds none)."""
    return p.target("target"), p.anything("collection"), p.anything("path")


@routes.get("/links")
async def links(request: web.Request) -> web.Response:
    p = LenientParams(request)
    target, collection, path = _legacy(p)
    dids = p.values("did")
    from_dids = p.string("from_dids", required=False, max_length=64 * 1024)
    if from_dids is not None:  # the deprecated comma-joined form of `did`
        if dids:
            raise XrpcError("give either 'did' or 'from_dids', not both")
        dids = [d.strip() for d in from_dids.split(",") if d.strip()]
        if len(dids) > MAX_VALUES:
            raise XrpcError(f"parameter 'from_dids' accepts at most {MAX_VALUES} values")
    limit = p.limit(DEFAULT_LIMIT, MAX_LIMIT)
    cursor = p.string("cursor", required=False)
    page = await _pool(request).run(lambda r: r.backlinks(
        target, collection, path, dids=dids, limit=limit, cursor=cursor))
    return json_response({"total": page.total, "linking_records": _records(page.items), "cursor": page.cursor})


@routes.get("/links/count")
async def links_count(request: web.Request) -> web.Response:
    p = LenientParams(request)
    target, collection, path = _legacy(p)
    total = await _pool(request).run(lambda r: r.count(target, collection, path))
    return json_response({"total": total})


@routes.get("/links/distinct-dids")
async def links_distinct_dids(request: web.Request) -> web.Response:
    p = LenientParams(request)
    target, collection, path = _legacy(p)
    limit = p.limit(DEFAULT_LIMIT, MAX_LIMIT)
    cursor = p.string("cursor", required=False)
    page = await _pool(request).run(lambda r: r.distinct_dids(target, collection, path, limit=limit, cursor=cursor))
    return json_response({"total": page.total, "linking_dids": page.items, "cursor": page.cursor})


@routes.get("/links/count/distinct-dids")
async def links_count_distinct_dids(request: web.Request) -> web.Response:
    p = LenientParams(request)
    target, collection, path = _legacy(p)
    total = await _pool(request).run(lambda r: r.distinct_count(target, collection, path))
    return json_response({"total": total})


@routes.get("/links/all")
async def links_all(request: web.Request) -> web.Response:
    target = LenientParams(request).target("target")
    found = await _pool(request).run(lambda r: r.all_links(target))
    return json_response({"links": {
        coll: {path: {"records": n, "distinct_dids": d} for path, (n, d) in paths.items()}
        for coll, paths in found.items()}})


@routes.get("/links/all/count")
async def links_all_count(request: web.Request) -> web.Response:
    target = LenientParams(request).target("target")
    found = await _pool(request).run(lambda r: r.all_links(target))
    return json_response({"links": {coll: {path: n for path, (n, _) in paths.items()}
                                    for coll, paths in found.items()}})
