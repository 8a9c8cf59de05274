"""Helpers for the HTTP tests: Jetstream event builders and a real aiohttp server.

Events are plain Jetstream v1 JSON documents, decoded with smalldp's own decoder and
applied with the real Writer to a real SQLite file.  The server is the real
application from ``make_app`` on 127.0.0.1 with an ephemeral port; requests go over
real sockets with aiohttp.ClientSession.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Iterable, TypeVar

import aiohttp
from aiohttp import web

from smalldp.api.server import make_app
from smalldp.events import decode_event
from smalldp.store.writer import Writer
from smalldp.tid import int_to_tid, tid_from_time

T = TypeVar("T")

BASE_US = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z

XRPC = "/xrpc/blue.microcosm.links."
GET_BACKLINKS = XRPC + "getBacklinks"
GET_COUNT = XRPC + "getBacklinksCount"
GET_DIDS = XRPC + "getBacklinkDids"
GET_M2M = XRPC + "getManyToManyCounts"
GET_MANY = XRPC + "getManyToMany"
GET_RECORD = "/xrpc/dev.smalldp.getRecord"
HEALTH = "/xrpc/_health"

LIKE = "app.bsky.feed.like"
REPOST = "app.bsky.feed.repost"
POST = "app.bsky.feed.post"
FOLLOW = "app.bsky.graph.follow"
LIST = "app.bsky.graph.list"
LISTITEM = "app.bsky.graph.listitem"


def did(name: str) -> str:
    """A syntactically valid did:plc with a readable name in it (24 chars after 'did:plc:').

    The name's length is spelled out at the end, so distinct names never give one DID
    (plain padding would make 'fan1' and 'fan12' collide)."""
    assert 1 <= len(name) <= 22 and name.isalnum() and name.islower()
    return "did:plc:" + name.ljust(22, "x") + f"{len(name):02d}"


def tid(offset_us: int, clock: int = 0) -> str:
    """A TID rkey for BASE_US + offset_us."""
    return int_to_tid(tid_from_time(BASE_US + offset_us, clock))


def at_uri(repo: str, collection: str, rkey: str) -> str:
    return f"at://{repo}/{collection}/{rkey}"


def iso(time_us: int) -> str:
    """ATProto datetime with milliseconds, computed independently of smalldp."""
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=time_us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond // 1000:03d}Z"


class Events:
    """Builds Jetstream v1 events with strictly increasing revs and time_us."""

    def __init__(self, start_us: int = BASE_US + 10_000_000_000) -> None:
        self._rev = 0
        self.now = start_us

    def _next_rev(self) -> str:
        self._rev += 1
        return int_to_tid(tid_from_time(BASE_US + 5_000_000_000 + self._rev * 1000, 7))

    def _tick(self) -> int:
        self.now += 1000
        return self.now

    def put(self, repo: str, collection: str, rkey: str, record: dict[str, Any],
            operation: str = "create", cid: str | None = None) -> dict[str, Any]:
        return {"did": repo, "time_us": self._tick(), "kind": "commit", "commit": {
            "rev": self._next_rev(), "operation": operation, "collection": collection, "rkey": rkey,
            "record": record, "cid": cid or f"bafyrei{collection.replace('.', '')[:20]}{rkey}"}}

    def delete(self, repo: str, collection: str, rkey: str) -> dict[str, Any]:
        return {"did": repo, "time_us": self._tick(), "kind": "commit", "commit": {
            "rev": self._next_rev(), "operation": "delete", "collection": collection, "rkey": rkey}}

    def account(self, repo: str, active: bool, seq: int, status: str | None = None,
                happened_us: int | None = None) -> dict[str, Any]:
        """An account event that happened upstream at ``happened_us`` (default: 300 ms
        before it is received): its ``time``, by which account events are ordered."""
        time_us = self._tick()
        when = iso(time_us - 300_000 if happened_us is None else happened_us)
        account: dict[str, Any] = {"active": active, "did": repo, "seq": seq, "time": when}
        if status is not None:
            account["status"] = status
        return {"did": repo, "time_us": time_us, "kind": "account", "account": account}

    # record shapes

    def like(self, repo: str, rkey: str, subject: str) -> dict[str, Any]:
        return self.put(repo, LIKE, rkey, {
            "$type": LIKE, "subject": {"uri": subject, "cid": "bafyreisubjectcid"},
            "createdAt": "2024-01-01T00:00:00.000Z"})

    def repost(self, repo: str, rkey: str, subject: str) -> dict[str, Any]:
        return self.put(repo, REPOST, rkey, {
            "$type": REPOST, "subject": {"uri": subject, "cid": "bafyreisubjectcid"},
            "createdAt": "2024-01-01T00:00:00.000Z"})

    def follow(self, repo: str, rkey: str, subject: str) -> dict[str, Any]:
        return self.put(repo, FOLLOW, rkey, {"$type": FOLLOW, "subject": subject,
                                             "createdAt": "2024-01-01T00:00:00.000Z"})

    def post(self, repo: str, rkey: str, text: str, reply_to: str | None = None,
             root: str | None = None, operation: str = "create", cid: str | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {"$type": POST, "text": text, "createdAt": "2024-01-01T00:00:00.000Z",
                                  "langs": ["en"]}
        if reply_to is not None:
            record["reply"] = {"parent": {"uri": reply_to, "cid": "bafyreiparent"},
                               "root": {"uri": root or reply_to, "cid": "bafyreiroot"}}
        return self.put(repo, POST, rkey, record, operation=operation, cid=cid)

    def listitem(self, repo: str, rkey: str, list_uri: str, subject: str) -> dict[str, Any]:
        return self.put(repo, LISTITEM, rkey, {"$type": LISTITEM, "list": list_uri, "subject": subject,
                                               "createdAt": "2024-01-01T00:00:00.000Z"})


def apply(writer: Writer, events: Iterable[dict[str, Any]]) -> int:
    """Decode and apply events in one batch with cursor = their max time_us; returns it."""
    events = list(events)
    ops = [decode_event(json.dumps(e)) for e in events]
    assert all(op is not None for op in ops)
    cursor = max(e["time_us"] for e in events)
    writer.apply(ops, cursor=cursor)
    return cursor


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


Params = dict[str, Any] | list[tuple[str, str]] | None


class Client:
    """Requests against one running server."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def get(self, path: str, params: Params = None, method: str = "GET") -> Reply:
        async with self.session.request(method, self.base + path, params=params) as resp:
            return Reply(resp.status, resp.content_type, await resp.read())

    async def ok(self, path: str, params: Params = None) -> Any:
        """GET, require 200 + JSON, return the decoded body."""
        reply = await self.get(path, params)
        assert reply.status == 200, (path, params, reply.status, reply.body[:500])
        assert reply.content_type == "application/json"
        return reply.json


@asynccontextmanager
async def running(db_path: Path, read_threads: int = 2, rpc_processes: int = 0) -> AsyncIterator[Client]:
    """The real app on 127.0.0.1:<ephemeral>, with a client session (``rpc_processes``:
    store reads of the DataPlane and bsky.Service in that many worker processes)."""
    app = make_app(db_path, read_threads=read_threads, rpc_processes=rpc_processes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as session:
            yield Client(session, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


class ServerThread:
    """``running`` on an event loop in a background thread, for synchronous callers
    (hypothesis examples): one server reused across many requests."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path

    def __enter__(self) -> "ServerThread":
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self.thread.start()
        self._cm = running(self.db_path)
        self.client: Client = self.call(self._cm.__aenter__())
        return self

    def call(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)  # type: ignore[arg-type]

    def get(self, path: str, params: Params = None) -> Reply:
        return self.call(self.client.get(path, params))

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self._cm.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            self.loop.close()
