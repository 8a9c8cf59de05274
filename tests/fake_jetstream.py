"""A fake Jetstream for tests: a real aiohttp websocket server on 127.0.0.1 that plays
capture lines, v1 or v2, optionally zstd-compressed, and misbehaves on request.

Faults are given per connection number (0 = the first connection), so a test can say
"the first connection dies after 300 events, the next one is healthy".
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import zstandard
from aiohttp import WSMsgType, web

from v2wire import v1_to_v2_frame


@dataclass
class Fault:
    """What goes wrong on one connection."""

    close_after: int | None = None  # send this many events, then close the socket
    stall_after: int | None = None  # send this many events, then go silent (socket stays open)
    die_after: int | None = None  # send this many events, then stop the whole server
    inject: dict[int, list[str | bytes]] = field(default_factory=dict)  # before event i: these frames


@dataclass
class Connection:
    """What one client asked for and said."""

    query: dict[str, list[str]]
    received: list[str] = field(default_factory=list)  # text messages from the client
    sent: int = 0


def time_of(line: str, previous: int) -> int:
    """time_us of a capture line (a malformed line takes its predecessor's)."""
    try:
        return int(json.loads(line)["time_us"])
    except (ValueError, KeyError, TypeError):
        return previous


class FakeJetstream:
    """Serves ``lines`` at /subscribe (v1) or the v2 path, honouring ``cursor`` (time_us, >=)."""

    def __init__(self, lines: list[str], *, wire: str = "v1", dictionary: bytes | None = None,
                 faults: dict[int, Fault] | None = None, pace_s: float = 0.0) -> None:
        self.lines = lines
        self.pace_s = pace_s  # a pause after each line: a stream that lasts a while
        self.times: list[int] = []
        previous = 0
        for line in lines:
            previous = time_of(line, previous)
            self.times.append(previous)
        self.wire = wire
        self.dictionary = dictionary
        self.faults = faults or {}
        self.connections: list[Connection] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self.stopped = asyncio.Event()

    async def __aenter__(self) -> FakeJetstream:
        app = web.Application()
        path = "/subscribe" if self.wire == "v1" else "/xrpc/network.bsky.jetstream.subscribeEvents"
        app.router.add_get(path, self._subscribe)
        app.router.add_get("/xrpc/network.bsky.jetstream.getZstdDictionary", self._dictionary)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"ws://127.0.0.1:{port}{path}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Close every socket and stop listening (connections are then refused)."""
        if self._runner is None:
            return
        for ws in list(self._sockets):
            await ws.close()
        runner, self._runner = self._runner, None
        await runner.cleanup()
        self.stopped.set()

    async def _dictionary(self, request: web.Request) -> web.Response:
        if self.dictionary is None:
            return web.json_response({"error": "DictionaryNotFound"}, status=404)
        return web.Response(body=self.dictionary, content_type="application/octet-stream")

    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        query: dict[str, list[str]] = {}
        for key, value in request.query.items():
            query.setdefault(key, []).append(value)
        conn = Connection(query)
        number = len(self.connections)
        self.connections.append(conn)
        fault = self.faults.get(number, Fault())
        compress = "compress" in query or "zstdDictionary" in query
        ws = web.WebSocketResponse(protocols=("xrpc.v1.json",) if self.wire == "v2" else ())
        await ws.prepare(request)
        self._sockets.add(ws)
        listener = asyncio.create_task(self._listen(ws, conn))
        cctx = zstandard.ZstdCompressor(dict_data=zstandard.ZstdCompressionDict(self.dictionary)) \
            if compress and self.dictionary else None
        cursor = int(query["cursor"][0]) if "cursor" in query else None
        try:
            sent = 0
            for i, line in enumerate(self.lines):
                if cursor is not None and self.times[i] < cursor:
                    continue
                for frame in fault.inject.get(sent, []):
                    if isinstance(frame, bytes):
                        await ws.send_bytes(frame)
                    else:
                        await ws.send_str(frame)
                if sent in (fault.close_after, fault.stall_after, fault.die_after):
                    break
                data = line.encode()
                if self.wire == "v2":
                    try:
                        data = v1_to_v2_frame(data, i + 1)
                    except (ValueError, KeyError, TypeError):
                        pass  # a malformed line goes out as it is
                if cctx is not None:
                    await ws.send_bytes(cctx.compress(data))
                else:
                    await ws.send_str(data.decode())
                sent += 1
                conn.sent = sent
                if self.pace_s:
                    await asyncio.sleep(self.pace_s)
            if sent == fault.die_after:
                asyncio.get_running_loop().create_task(self.stop())
            elif sent == fault.close_after:
                await ws.close()
            else:
                # After the last event (or a stall): stay open and quiet, like a live tail.
                await listener
        finally:
            listener.cancel()
            self._sockets.discard(ws)
        return ws

    async def _listen(self, ws: web.WebSocketResponse, conn: Connection) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                conn.received.append(msg.data)


def options_updates(conn: Connection) -> list[dict[str, Any]]:
    """The options_update payloads a client sent on one connection."""
    out = []
    for text in conn.received:
        message = json.loads(text)
        if message.get("type") == "options_update":
            out.append(message["payload"])
    return out
