"""The Jetstream websocket client: connect, decode, deliver; reconnect and fail over.

One `JetstreamClient.run` loop owns the connection. It resumes from the newest event
it has seen (or, at start, the committed cursor) minus a rewind: the store ignores what
it already has, so overlap is harmless and gaps are what the rewind prevents. Decoded
operations go, in order, to a sink (live ingest's batcher); while the sink commits a
batch the socket is not read and TCP pushes back on the server.

Failure handling: a connection that delivered events and then ended is retried on the
same endpoint after a short jittered pause; every consecutive failure moves to the next
endpoint and doubles the pause, up to `backoff_max_s`. Nothing received for
`liveness_s` seconds abandons the connection (a dead socket can stay "open" forever);
websocket pings detect dead peers even on filtered, quiet streams.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import orjson

from smalldp.events import MalformedEvent, Operation, decode_event
from smalldp.events_v2 import ErrorFrame, InfoFrame, OpFrame, decode_frame_v2
from smalldp.ingest import zdict
from smalldp.ingest.metrics import IngestMetrics

log = logging.getLogger(__name__)

WIRE_PATHS = {"v1": "/subscribe", "v2": "/xrpc/network.bsky.jetstream.subscribeEvents"}
V2_SUBPROTOCOL = "xrpc.v1.json"
URL_DIDS_MAX = 100  # v1: more DIDs than this go in an options_update sent first (requireHello)
HARD_MESSAGE_LIMIT = 64 << 20  # aiohttp closes the connection above this; smaller excess is skipped
DICTIONARY_RETRY_S = 600.0
LOGGED_ERRORS = 20  # decode errors logged in full; then every 1000th


@dataclass(frozen=True)
class Filters:
    """What to follow; empty tuples mean everything."""

    collections: tuple[str, ...] = ()
    dids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClientOptions:
    """How to reach Jetstream and what to ask it for."""

    endpoints: tuple[str, ...]
    wire: str = "v1"
    filters: Filters = field(default_factory=Filters)
    compress: bool = True
    rewind_s: float = 5.0
    liveness_s: float = 30.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    max_message_bytes: int = 4 << 20
    heartbeat_s: float = 20.0
    connect_timeout_s: float = 15.0


def endpoint_url(endpoint: str, wire: str) -> str:
    """``endpoint`` with the wire's path when it has none."""
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        parts = parts._replace(path=WIRE_PATHS[wire])
    return urlunsplit(parts)


def subscribe_url(endpoint: str, options: ClientOptions, cursor: int | None,
                  dict_id: int | None) -> tuple[str, bool]:
    """The URL to connect to, and whether the filters must be sent after connecting (v1 hello)."""
    filters = options.filters
    params: list[tuple[str, str]] = []
    hello = False
    if options.wire == "v1":
        params += [("wantedCollections", c) for c in filters.collections]
        if len(filters.dids) > URL_DIDS_MAX:
            hello = True
            params.append(("requireHello", "true"))
        else:
            params += [("wantedDids", d) for d in filters.dids]
        if dict_id is not None:
            params.append(("compress", "true"))
    else:
        params += [("collections", c) for c in filters.collections]
        params += [("dids", d) for d in filters.dids]
        if dict_id is not None:
            params.append(("zstdDictionary", str(dict_id)))
    if cursor is not None:
        # v2 reads a cursor >= 1e15 as unix microseconds: the same resume point works on both.
        params.append(("cursor", str(cursor)))
    base = endpoint_url(endpoint, options.wire)
    parts = urlsplit(base)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(query=query)), hello


def options_update(filters: Filters) -> str:
    """The v1 message that replaces a connection's filters."""
    return orjson.dumps({"type": "options_update", "payload": {
        "wantedCollections": list(filters.collections), "wantedDids": list(filters.dids),
        "maxMessageSizeBytes": 0}}).decode()


class _Reconnect(Exception):
    """Abandon the current connection; the message says why."""


class JetstreamClient:
    """Follows Jetstream into a sink until stopped."""

    def __init__(self, options: ClientOptions, sink: Callable[[Operation], None], metrics: IngestMetrics,
                 *, committed_cursor: int | None,
                 v1_dictionary: Callable[[], bytes | None] | None = None,
                 data_dir: Path = Path(".")) -> None:
        self.options = options
        self.sink = sink  # called with each operation, in order; may block (it applies batches)
        self.metrics = metrics
        self.data_dir = data_dir
        self.last_time_us: int | None = None  # newest event seen by this process
        self._committed_cursor = committed_cursor
        # Loaded at the first connection and, while it can't be had (no network at boot),
        # tried again at most every DICTIONARY_RETRY_S: compression is worth coming back to.
        self._load_v1_dictionary = v1_dictionary
        self._v1_dictionary: bytes | None = None
        self._v1_tried = -DICTIONARY_RETRY_S
        self._v2_dicts: dict[str, bytes | None] = {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._last_rx = 0.0
        self._abandon_reason = ""

    # ------------------------------------------------------------ control

    def resume_cursor(self) -> int | None:
        """Where the next connection starts: newest seen (or committed) minus the rewind."""
        newest = self.last_time_us if self.last_time_us is not None else self._committed_cursor
        if newest is None:
            return None
        return max(0, newest - int(self.options.rewind_s * 1_000_000))

    async def update_filters(self, filters: Filters) -> None:
        """Follow new filters: v1 sends an options_update on the open connection; v2,
        which has no such message, reconnects with them."""
        if filters == self.options.filters:
            return
        self.options = replace(self.options, filters=filters)
        ws = self._ws
        if ws is None or ws.closed:
            return
        if self.options.wire == "v1":
            await ws.send_str(options_update(filters))
            log.info("sent new filters: %d collections, %d DIDs", len(filters.collections),
                     len(filters.dids))
        else:
            self._abandon("filters changed (v2 reconnects to change them)")

    def _abandon(self, reason: str) -> None:
        self._abandon_reason = reason
        if self._reader is not None:
            self._reader.cancel()

    # ------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, read and reconnect until ``stop`` is set."""
        opts = self.options
        failures = 0
        index = 0
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=opts.connect_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                endpoint = self.options.endpoints[index % len(self.options.endpoints)]
                self.metrics.state = "connecting"
                self.metrics.endpoint = endpoint
                before = self.metrics.messages_received
                try:
                    reason = await self._connection(session, endpoint, stop)
                except (aiohttp.ClientError, OSError, TimeoutError, _Reconnect) as exc:
                    reason = _describe(exc)
                finally:
                    self._ws = None
                    self.metrics.connected = False
                if stop.is_set():
                    break
                self.metrics.reconnects += 1
                self.metrics.last_error = reason
                if self.metrics.messages_received > before:
                    failures = 0  # it worked for a while: retry the same endpoint soon
                else:
                    failures += 1
                    index += 1
                delay = min(self.options.backoff_max_s,
                            self.options.backoff_initial_s * 2 ** max(0, failures - 1))
                delay *= random.uniform(0.5, 1.0)  # jitter: clients of one outage don't return in step
                next_endpoint = self.options.endpoints[index % len(self.options.endpoints)]
                log.warning("jetstream %s: %s; reconnecting to %s in %.1f s", endpoint, reason,
                            next_endpoint, delay)
                self.metrics.state = "backoff"
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
        self.metrics.state = "stopped"

    async def _connection(self, session: aiohttp.ClientSession, endpoint: str,
                          stop: asyncio.Event) -> str:
        """One connection, from handshake to its end; returns why it ended."""
        opts = self.options
        decompressor = await self._decompressor(endpoint)
        cursor = self.resume_cursor()
        url, hello = subscribe_url(endpoint, opts, cursor,
                                   decompressor.dict_id if decompressor else None)
        log.info("connecting to %s (cursor %s, %s)", endpoint,
                 "live tip" if cursor is None else cursor,
                 "zstd" if decompressor else "uncompressed")
        async with session.ws_connect(
                url, heartbeat=opts.heartbeat_s, max_msg_size=HARD_MESSAGE_LIMIT, compress=0,
                protocols=(V2_SUBPROTOCOL,) if opts.wire == "v2" else (),
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0)) as ws:
            self._ws = ws
            if hello:
                await ws.send_str(options_update(opts.filters))
            self.metrics.connected = True
            self.metrics.state = "streaming"
            self._last_rx = time.monotonic()
            self._abandon_reason = ""
            self._reader = asyncio.create_task(self._read(ws, decompressor))
            watchers: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
            if opts.liveness_s > 0:
                watchers.append(asyncio.create_task(self._watch_liveness()))
            try:
                await asyncio.wait([self._reader, *watchers], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in watchers:
                    task.cancel()
                if not self._reader.done():
                    self._reader.cancel()
                try:
                    await self._reader
                except asyncio.CancelledError:
                    if not stop.is_set() and not self._abandon_reason:
                        raise
            if stop.is_set():
                return "stopping"
            if self._abandon_reason:
                return self._abandon_reason
            code = ws.close_code
            return f"connection closed (code {code})" if code else "connection closed"

    async def _watch_liveness(self) -> None:
        limit = self.options.liveness_s
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            silent = time.monotonic() - self._last_rx
            if silent > limit:
                self._abandon(f"nothing received for {silent:.0f} s (liveness_s={limit:g})")
                return

    async def _decompressor(self, endpoint: str) -> zdict.Decompressor | None:
        opts = self.options
        if not opts.compress:
            return None
        if opts.wire == "v1":
            now = time.monotonic()
            if (self._v1_dictionary is None and self._load_v1_dictionary is not None
                    and now - self._v1_tried >= DICTIONARY_RETRY_S):
                self._v1_tried = now
                loop = asyncio.get_running_loop()
                self._v1_dictionary = await loop.run_in_executor(None, self._load_v1_dictionary)
            data = self._v1_dictionary
        else:
            if endpoint not in self._v2_dicts:
                loop = asyncio.get_running_loop()
                try:
                    _, data = await loop.run_in_executor(None, zdict.v2_dictionary, self.data_dir, endpoint)
                except zdict.DictionaryError as exc:
                    log.warning("%s: no zstd dictionary (%s); running uncompressed", endpoint, exc)
                    data = None
                self._v2_dicts[endpoint] = data
            data = self._v2_dicts[endpoint]
        return zdict.Decompressor(data, opts.max_message_bytes) if data else None

    # ------------------------------------------------------------ the hot path

    async def _read(self, ws: aiohttp.ClientWebSocketResponse,
                    decompressor: zdict.Decompressor | None) -> None:
        metrics = self.metrics
        sink = self.sink
        limit = self.options.max_message_bytes
        v2 = self.options.wire == "v2"
        text, binary = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY
        async for msg in ws:
            self._last_rx = time.monotonic()
            metrics.messages_received += 1
            kind = msg.type
            data: bytes | str
            if kind is text:
                data = msg.data
                metrics.bytes_received += len(data)
            elif kind is binary:
                metrics.bytes_received += len(msg.data)
                if decompressor is None:
                    self._bad("binary message on an uncompressed stream")
                    continue
                try:
                    data = decompressor.decompress(msg.data)
                except ValueError as exc:
                    self._bad(str(exc), oversized="more than" in str(exc))
                    continue
            elif kind is aiohttp.WSMsgType.ERROR:
                raise _Reconnect(f"websocket error: {ws.exception()}")
            else:
                continue
            if len(data) > limit:
                self._bad(f"message of {len(data)} bytes, more than max_message_bytes={limit}",
                          oversized=True)
                continue
            try:
                op = self._decode_v2(data) if v2 else decode_event(data)
            except MalformedEvent as exc:
                self._bad(str(exc))
                continue
            if op is None:
                continue
            sink(op)
            self.last_time_us = op.time_us
            # The sink may have spent a while committing: that was us, not a silent server.
            self._last_rx = time.monotonic()

    def _decode_v2(self, data: bytes | str) -> Operation | None:
        frame = decode_frame_v2(data)
        if isinstance(frame, OpFrame):
            return frame.op
        if isinstance(frame, ErrorFrame):
            raise _Reconnect(f"server error {frame.error}: {frame.message or ''}")
        if isinstance(frame, InfoFrame):
            log.info("jetstream says %s: %s", frame.name, frame.message or "")
        return None

    def _bad(self, why: str, oversized: bool = False) -> None:
        metrics = self.metrics
        metrics.decode_errors += 1
        if oversized:
            metrics.oversized += 1
        n = metrics.decode_errors
        if n <= LOGGED_ERRORS or n % 1000 == 0:
            log.warning("skipped message %d (decode error %d): %s", metrics.messages_received, n, why[:300])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"handshake refused (HTTP {exc.status}: {exc.message})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
