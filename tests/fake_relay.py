"""A fake relay for tests: a real aiohttp websocket server on 127.0.0.1 serving
`com.atproto.sync.subscribeRepos` frames (real ones from the fixtures, or made with
smalldp.replay_firehose.event_frame), honouring ``cursor`` (seq: the frames after it),
answering a cursor past its last frame with FutureCursor as relays do, and misbehaving
on request per connection number (0 = the first connection).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from fake_jetstream import Fault
from smalldp.dagcbor import decode_prefix, encode

PATH = "/xrpc/com.atproto.sync.subscribeRepos"


def seq_of(frame: bytes) -> int | None:
    """The seq in a frame's body (None for error frames, #info and garbage)."""
    try:
        _, at = decode_prefix(frame)
        body, _ = decode_prefix(frame, at)
    except ValueError:
        return None
    return body.get("seq") if isinstance(body, dict) else None


def error_frame(name: str, message: str | None = None) -> bytes:
    """An error frame as relays send them: header {op: -1}, body {error, message}."""
    body = {"error": name} if message is None else {"error": name, "message": message}
    return encode({"op": -1}) + encode(body)


def info_frame(name: str, message: str) -> bytes:
    return encode({"op": 1, "t": "#info"}) + encode({"name": name, "message": message})


@dataclass
class RelayFault(Fault):
    """What goes wrong on one connection: FakeJetstream's faults (close, stall, die, inject)
    and a relay's own."""

    error_after: tuple[int, bytes] | None = None  # after this many frames: this error frame, then close
    pause: dict[int, float] = field(default_factory=dict)  # before frame i: this many seconds of silence


@dataclass
class RelayConnection:
    """What one subscriber asked for, and how many frames of the stream it was sent."""

    cursor: str | None
    sent: int = 0
    seqs: list[int] = field(default_factory=list)


class FakeRelay:
    """Serves ``frames`` at /xrpc/com.atproto.sync.subscribeRepos; ``frames`` may be swapped
    between connections (a relay that lost its state, for FutureCursor)."""

    def __init__(self, frames: list[bytes], *, faults: dict[int, RelayFault] | None = None,
                 port: int = 0) -> None:
        self.frames = frames
        self.faults = faults or {}
        self.connections: list[RelayConnection] = []
        self.port = port
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    async def __aenter__(self) -> FakeRelay:
        app = web.Application()
        app.router.add_get(PATH, self._subscribe)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]
        self.url = f"ws://127.0.0.1:{self.port}"  # no path: the client adds it
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

    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        cursor_text = request.query.get("cursor")
        conn = RelayConnection(cursor_text)
        fault = self.faults.get(len(self.connections), RelayFault())
        self.connections.append(conn)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        frames = self.frames
        seqs = [seq_of(f) for f in frames]
        try:
            cursor = int(cursor_text) if cursor_text is not None else None
            known = [s for s in seqs if s is not None]
            if cursor is not None and known and cursor > known[-1]:
                await ws.send_bytes(error_frame("FutureCursor", "Cursor in the future."))
                await ws.close()
                return ws
            sent = 0
            for frame, seq in zip(frames, seqs):
                if cursor is not None and seq is not None and seq <= cursor:
                    continue
                if sent in fault.pause:
                    await asyncio.sleep(fault.pause[sent])
                for extra in fault.inject.get(sent, []):
                    if isinstance(extra, bytes):
                        await ws.send_bytes(extra)
                    else:
                        await ws.send_str(extra)
                if sent in (fault.close_after, fault.stall_after, fault.die_after):
                    break
                if fault.error_after is not None and sent == fault.error_after[0]:
                    await ws.send_bytes(fault.error_after[1])
                    await ws.close()
                    return ws
                await ws.send_bytes(frame)
                sent += 1
                conn.sent = sent
                if seq is not None:
                    conn.seqs.append(seq)
            if sent == fault.die_after:
                asyncio.get_running_loop().create_task(self.stop())
            elif sent == fault.close_after:
                await ws.close()
            else:
                async for _ in ws:  # a live tail: open and quiet until the client goes
                    pass
        finally:
            self._sockets.discard(ws)
        return ws
