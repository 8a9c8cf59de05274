"""The aiohttp application: routes, the reader pool, health, and running it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from smalldp import __version__
from smalldp.api import NAMESPACE, constellation, dataplane, metrics, status
from smalldp.api.readers import READERS, WORKERS, ReaderPool
from smalldp.api.xrpc import Handler, Params, XrpcError, json_response, xrpc_errors
from smalldp.appview import connect
from smalldp.appview.grpc_server import Dispatcher
from smalldp.appview.workers import RpcWorkers
from smalldp.links import is_at_uri
from smalldp.priority import QueryGate

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
IngestStatus = Callable[[], dict[str, object]]
INGEST_STATUS: web.AppKey[IngestStatus] = web.AppKey("ingest_status")
BackfillStatus = Callable[[], "dict[str, object] | None"]
BACKFILL_STATUS: web.AppKey[BackfillStatus] = web.AppKey("backfill_status")


QUERY_GATE: web.AppKey[QueryGate] = web.AppKey("query_gate")
MAX_REQUEST_LINE = 64 * 1024


def _ingest_disabled() -> dict[str, object]:
    return {"state": "disabled"}


@web.middleware
async def queries_first(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tell live ingest a query is being answered, so it steps aside (smalldp.priority)."""
    gate = request.app[QUERY_GATE]
    gate.enter()
    try:
        return await handler(request)
    finally:
        gate.leave()


# CORS: the read API is public and takes no credentials, so any page may call it with
# fetch() (Constellation answers the same way: every route, any origin).
CORS_METHODS = "GET, HEAD, OPTIONS"
CONNECT_CORS_METHODS = "POST, OPTIONS"  # bsky.Service over Connect (appview/connect.py)
CORS_MAX_AGE_S = 86400


@web.middleware
async def cors_preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer OPTIONS on any path as a CORS preflight; other methods go on as usual."""
    if request.method != "OPTIONS":
        return await handler(request)
    asked = request.headers.get("Access-Control-Request-Headers", "").strip()
    methods = CONNECT_CORS_METHODS if request.path.startswith(connect.PATH_PREFIX) else CORS_METHODS
    return web.Response(status=204, headers={
        "Access-Control-Allow-Methods": methods,
        # The headers the page asks for (they cannot widen anything: nothing is read
        # from them but Accept), else any.
        "Access-Control-Allow-Headers": asked[:1000] or "*",
        "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
        "Allow": methods})


async def allow_any_origin(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, error JSON, 500s and the status page included,
    carries ``Access-Control-Allow-Origin: *`` (a signal, not a middleware, so that
    responses made outside the handlers get it too)."""
    response.headers["Access-Control-Allow-Origin"] = "*"


@routes.get(f"/xrpc/{NAMESPACE}.getRecord")
async def get_record(request: web.Request) -> web.Response:
    uri = Params(request).required("uri", 2048)
    if not is_at_uri(uri):
        raise XrpcError("parameter 'uri' must be an at-uri")
    record = await request.app[READERS].run(lambda r: r.record(uri))
    if record is None:
        raise XrpcError(f"no stored record at {uri[:300]}", error="RecordNotFound")
    return json_response(record)


@routes.get("/xrpc/_health")
async def health(request: web.Request) -> web.Response:
    stats = await request.app[READERS].run(lambda r: r.stats())
    cursor = stats["cursor"]
    lag = None if cursor is None else round(max(0.0, time.time() - int(cursor) / 1e6), 3)
    ingest = request.app[INGEST_STATUS]()
    body: dict[str, object] = {
        "status": "ok", "version": __version__, "ingest": ingest["state"],
        "cursor": None if cursor is None else int(cursor), "lag_s": lag, "links": stats["links"],
        "runs": stats["runs"], "inactive_accounts": stats["inactive_accounts"]}
    if ingest.get("paused_reason"):  # at the top too: why ingest waits matters more than its details
        body["paused_reason"] = ingest["paused_reason"]
    if len(ingest) > 1:
        body["jetstream"] = {k: v for k, v in ingest.items() if k != "state"}
    backfill = request.app[BACKFILL_STATUS]()
    if backfill is not None:  # a backfill handed to this serve (running, or how the last one ended)
        body["backfill"] = backfill
    # bsky.Service: the gRPC server (grpc_listen) and the calls of both transports
    body["grpc"] = request.app[connect.DISPATCHER].health()
    # What the status page at / shows: disk, file, counts, history, top targets (api/status.py).
    body.update(await status.health_fields(request.app))
    return json_response(body)


def make_app(db_path: Path, *, read_threads: int = 1, cache_mb: int = 64, mmap_mb: int = 0,
             ingest_status: IngestStatus = _ingest_disabled,
             sample_sources: list[metrics.SampleSource] | None = None,
             query_gate: QueryGate | None = None,
             backfill_status: BackfillStatus = lambda: None,
             rpc_services: dict[str, Any] | None = None, rpc_processes: int = 0) -> web.Application:
    """Build the application answering from read-only connections to ``db_path``.

    ``ingest_status`` says what live ingest is doing (a dict with at least "state");
    ``sample_sources`` add Prometheus samples to /metrics; with a ``query_gate`` every
    request marks itself in flight so that live ingest lets it go first;
    ``backfill_status`` says what a backfill handed to the service is doing (None: none);
    ``rpc_services`` are the named services bsky.Service's async handlers get
    (``AppViewContext.services``). The app's ``connect.DISPATCHER`` answers bsky.Service,
    its store reads in ``rpc_processes`` worker processes (and one for big calls; 0: on
    the reader pool's threads).
    """
    middlewares = [cors_preflight, xrpc_errors] if query_gate is None else [cors_preflight, queries_first, xrpc_errors]
    # 100 at-uris in one query string are ~12 KB: above aiohttp's default 8 KB request line.
    app = web.Application(middlewares=middlewares, handler_args={"max_line_size": MAX_REQUEST_LINE})
    if query_gate is not None:
        app[QUERY_GATE] = query_gate
    app[READERS] = ReaderPool(db_path, threads=read_threads, cache_mb=cache_mb, mmap_mb=mmap_mb)
    app[INGEST_STATUS] = ingest_status
    app[BACKFILL_STATUS] = backfill_status
    app.on_response_prepare.append(allow_any_origin)
    # bsky.Service (issue 15): Connect on this port; smalldp.service adds the gRPC server,
    # which shares this dispatcher and so this reader pool.
    workers = RpcWorkers(db_path, rpc_processes, cache_mb=cache_mb, mmap_mb=mmap_mb) if rpc_processes else None
    if workers is not None:
        app[WORKERS] = workers
    dispatcher = Dispatcher(app[READERS], gate=query_gate, services=rpc_services, workers=workers)
    connect.setup(app, dispatcher)
    app[metrics.SAMPLE_SOURCES] = [*(sample_sources or []), dispatcher.metrics.samples]
    app.add_routes(constellation.routes)
    app.add_routes(dataplane.routes)
    app.add_routes(metrics.routes)
    app.add_routes(routes)
    status.setup(app, db_path, ingest_status)

    async def close_readers(app: web.Application) -> None:
        app[READERS].close()
        if workers is not None:
            await workers.close()

    app.on_cleanup.append(close_readers)
    return app
