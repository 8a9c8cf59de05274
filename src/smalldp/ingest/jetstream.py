"""The Jetstream websocket client: connect, decode, deliver; reconnect and fail over.

One `JetstreamClient.run` loop owns the connection. It resumes from the newest event
it has seen (or, at start, the committed cursor) minus a rewind: the store ignores what
it already has, so overlap is harmless and gaps are what the rewind prevents. Decoded
operations go, in order, to a sink (live ingest's batcher); while the sink commits a
batch the socket is not read and TCP pushes back on the server.

Failure handling (reconnect, failover, backoff, liveness) is ingest/stream.py's, shared
with the relay firehose client (ingest/firehose.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import orjson

from smalldp.events import MalformedEvent, Operation, decode_event
from smalldp.events_v2 import ErrorFrame, InfoFrame, OpFrame, decode_frame_v2
from smalldp.ingest import zdict
from smalldp.ingest.metrics import IngestMetrics
from smalldp.ingest.stream import ClientOptions, Filters, Plan, Reconnect, StreamClient

__all__ = ["ClientOptions", "Filters", "JetstreamClient", "endpoint_url", "options_update", "subscribe_url"]

log = logging.getLogger(__name__)

WIRE_PATHS = {"v1": "/subscribe", "v2": "/xrpc/network.bsky.jetstream.subscribeEvents",
              "firehose": "/xrpc/com.atproto.sync.subscribeRepos"}
V2_SUBPROTOCOL = "xrpc.v1.json"
URL_DIDS_MAX = 100  # v1: more DIDs than this go in an options_update sent first (requireHello)
DICTIONARY_RETRY_S = 600.0


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


class JetstreamClient(StreamClient):
    """Follows Jetstream into a sink until stopped."""

    log = log
    reconnect_message = "jetstream %s: %s; reconnecting to %s in %.1f s"

    def __init__(self, options: ClientOptions, sink: Callable[[Operation], None], metrics: IngestMetrics,
                 *, committed_cursor: int | None,
                 v1_dictionary: Callable[[], bytes | None] | None = None,
                 data_dir: Path = Path(".")) -> None:
        super().__init__(options, sink, metrics)
        self.data_dir = data_dir
        self._committed_cursor = committed_cursor
        # Loaded at the first connection and, while it can't be had (no network at boot),
        # tried again at most every DICTIONARY_RETRY_S: compression is worth coming back to.
        self._load_v1_dictionary = v1_dictionary
        self._v1_dictionary: bytes | None = None
        self._v1_tried = -DICTIONARY_RETRY_S
        self._v2_dicts: dict[str, bytes | None] = {}
        self._decompressor_now: zdict.Decompressor | None = None
        self._hello = False

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

    # ------------------------------------------------------------ the connection

    async def _prepare(self, endpoint: str) -> Plan:
        opts = self.options
        decompressor = self._decompressor_now = await self._decompressor(endpoint)
        cursor = self.resume_cursor()
        url, self._hello = subscribe_url(endpoint, opts, cursor,
                                         decompressor.dict_id if decompressor else None)
        return Plan(url, (V2_SUBPROTOCOL,) if opts.wire == "v2" else (),
                    f"cursor {'live tip' if cursor is None else cursor}, "
                    f"{'zstd' if decompressor else 'uncompressed'}")

    async def _opened(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if self._hello:
            await ws.send_str(options_update(self.options.filters))

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

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        decompressor = self._decompressor_now
        sink = self.sink
        v2 = self.options.wire == "v2"
        async for msg in ws:
            data = self._arrived(ws, msg)
            if data is None:
                continue
            if isinstance(data, bytes):
                if decompressor is None:
                    self._bad("binary message on an uncompressed stream")
                    continue
                try:
                    data = decompressor.decompress(data)
                except ValueError as exc:
                    self._bad(str(exc), oversized="more than" in str(exc))
                    continue
            if self._oversized(data):
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
            raise Reconnect(f"server error {frame.error}: {frame.message or ''}")
        if isinstance(frame, InfoFrame):
            log.info("jetstream says %s: %s", frame.name, frame.message or "")
        return None
