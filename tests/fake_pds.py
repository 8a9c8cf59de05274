"""A fake PLC directory, PDS, handle host and relay in one aiohttp server on 127.0.0.1, for
the backfill tests: real HTTP, each account's misbehaviour chosen by the test.

Routes: ``/plc/<did>`` (DID documents whose ``#atproto_pds`` is this server's ``/pds``),
``/pds/xrpc/com.atproto.sync.getRepo?did=``, ``/handles/<handle>/.well-known/atproto-did``,
``/relay/xrpc/com.atproto.sync.listRepos`` (pages of ``page_size``).  The server runs on its
own thread and event loop, so synchronous tests and subprocesses can use it alike.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from thread_web import ThreadedWebServer

# what a repo's getRepo does instead of answering plainly
OK, RATE_LIMITED_ONCE, STALL, TRUNCATED, TAKENDOWN, ERROR_500_ONCE = (
    "ok", "429-once", "stall", "truncated", "takendown", "500-once")


@dataclass
class FakeNetwork(ThreadedWebServer):
    """Repos (DID -> CAR bytes) and how each behaves; ``requests`` counts getRepo calls per DID."""

    cars: dict[str, bytes] = field(default_factory=dict)
    behaviour: dict[str, str] = field(default_factory=dict)
    handles: dict[str, str] = field(default_factory=dict)  # handle -> DID
    unlisted_docs: set[str] = field(default_factory=set)  # DIDs the PLC directory does not know
    keys: dict[str, str] = field(default_factory=dict)  # DID -> its #atproto Multikey (publicKeyMultibase)
    delay_s: float = 0.0  # before each getRepo answer (makes a run long enough to kill)
    hold_after: int | None = None  # getRepo calls after this many in all wait until it is raised or None
    held: int = 0  # getRepo calls waiting at that gate now
    page_size: int = 3
    requests: dict[str, int] = field(default_factory=dict)
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def doc(self, did: str) -> dict[str, Any]:
        aka = [f"at://{h}" for h, d in self.handles.items() if d == did]
        doc: dict[str, Any] = {"id": did, "alsoKnownAs": aka,
                               "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                                            "serviceEndpoint": f"{self.base}/pds"}]}
        if did in self.keys:
            doc["verificationMethod"] = [{"id": f"{did}#atproto", "type": "Multikey", "controller": did,
                                          "publicKeyMultibase": self.keys[did]}]
        return doc

    # --- handlers ---------------------------------------------------------------------------

    async def plc(self, request: web.Request) -> web.Response:
        did = request.match_info["did"]
        if did not in self.cars and did not in self.behaviour or did in self.unlisted_docs:
            return web.json_response({"message": "DID not registered"}, status=404)
        return web.json_response(self.doc(did))

    async def handle(self, request: web.Request) -> web.Response:
        did = self.handles.get(request.match_info["handle"])
        return web.Response(text=did) if did else web.Response(status=404)

    async def get_repo(self, request: web.Request) -> web.StreamResponse:
        did = request.query.get("did", "")
        count = self.requests[did] = self.requests.get(did, 0) + 1
        ordinal = sum(self.requests.values())
        how = self.behaviour.get(did, OK)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.hold_after is not None and ordinal > self.hold_after:
            self.held += 1
            try:  # a killed client leaves this waiting: the test releases it by lifting the gate
                while self.hold_after is not None and ordinal > self.hold_after:
                    await asyncio.sleep(0.01)
            finally:
                self.held -= 1
        if how == RATE_LIMITED_ONCE and count == 1:
            return web.json_response({"error": "RateLimitExceeded", "message": "slow down"}, status=429,
                                     headers={"Retry-After": "1"})
        if how == ERROR_500_ONCE and count == 1:
            return web.json_response({"error": "InternalServerError"}, status=500)
        if how == STALL:
            await asyncio.sleep(3600)
        if how == TAKENDOWN:
            return web.json_response({"error": "RepoTakendown", "message": f"Repo has been takendown: {did}"},
                                     status=400)
        car = self.cars.get(did)
        if car is None:
            return web.json_response({"error": "RepoNotFound", "message": f"Could not find repo: {did}"},
                                     status=400)
        if how == TRUNCATED:
            car = car[:len(car) * 2 // 3]
        return web.Response(body=car, content_type="application/vnd.ipld.car")

    async def list_repos(self, request: web.Request) -> web.Response:
        dids = sorted(set(self.cars) | set(self.behaviour))
        start = int(request.query.get("cursor", "0"))
        page = dids[start:start + self.page_size]
        body: dict[str, Any] = {"repos": [{"did": d, "head": "x", "rev": "x", "active": True} for d in page]}
        if start + self.page_size < len(dids):
            body["cursor"] = str(start + self.page_size)
        return web.json_response(body)

    # --- lifecycle ----------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/plc/{did}", self.plc)
        app.router.add_get("/handles/{handle}/.well-known/atproto-did", self.handle)
        app.router.add_get("/pds/xrpc/com.atproto.sync.getRepo", self.get_repo)
        app.router.add_get("/relay/xrpc/com.atproto.sync.listRepos", self.list_repos)
