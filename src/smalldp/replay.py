"""`smalldp replay`: serve Jetstream v1 JSONL captures as a Jetstream v1 websocket server.

A stand-in for a real Jetstream in tests and benchmarks: ``GET /subscribe`` takes the same
query parameters (``cursor``, ``wantedCollections``, ``wantedDids``, ``compress``,
``maxMessageSizeBytes``, ``requireHello``) and ``options_update`` messages, and sends each
event of the capture files, in file order, as one websocket message holding the line's
bytes unchanged (or one zstd frame of them, compressed with the v1 dictionary). After the
last event the connection stays open and idle, as a live tail would.

This is a wire-format tool: it imports only ``captures``, ``events`` and ``config``, never the store, the
importer (which pulls in the store) or the HTTP API.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import zstandard
from aiohttp import WSCloseCode, WSMsgType, web

from smalldp.captures import open_capture
from smalldp.config import MAX_WANTED_DIDS
from smalldp.events import valid_did, valid_nsid

log = logging.getLogger(__name__)

MAX_WANTED_COLLECTIONS = 100  # Jetstream's limits, checked after removing duplicates
ZSTD_LEVEL = 3
MAX_CLIENT_MESSAGE = 10_000_000  # Jetstream ignores bigger subscriber messages
LOGGED_BAD_LINES = 100  # per file and connection: a corrupt capture must not flood the log
YIELD_EVERY = 256  # lines between explicit yields to the event loop (see _stream)
MAX_SLEEP_S = 1.0  # pacing sleeps in slices so that shutdown never waits long
IDLE_PING_S = 30.0  # Jetstream pings every 30 s; pongs are not required
CLOSE_TIMEOUT_S = 2.0  # how long a close waits for the client's reply
# Request line limit: 10,000 wantedDids in the query string take about 450 KB, which Jetstream
# (Go, 1 MB of headers) accepts and aiohttp (8 KB by default) would refuse.
MAX_REQUEST_LINE = 1 << 20
# `prefix.*`: NSID-like segments, then `.*` (Jetstream matches the prefix up to the dot).
_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(\.[A-Za-z0-9][A-Za-z0-9-]*)*\.\*\Z")
_INT_RE = re.compile(r"[+-]?[0-9]{1,19}\Z")


class _CommitHead(msgspec.Struct):
    collection: str = ""


class EventHead(msgspec.Struct):
    """The fields of a Jetstream v1 event that filtering and pacing need.

    msgspec skips everything else (the record above all) without building objects, which
    is what keeps the server far faster than its clients.
    """

    time_us: int
    did: str = ""
    kind: str = ""
    commit: _CommitHead | None = None


_head_decoder = msgspec.json.Decoder(EventHead)


def decode_head(raw: bytes) -> EventHead:
    """Decode the filter fields of one event line; raise ValueError if the line is malformed
    (not JSON, no integer ``time_us``, or not valid UTF-8)."""
    try:
        head = _head_decoder.decode(raw)
        # Events go out as text frames, which must be UTF-8; msgspec does not check the
        # strings it skips, so check here (ASCII, the common case, is a fast C test).
        if not raw.isascii():
            raw.decode()
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None
    return head


class EventFilter:
    """A subscriber's filters: wanted collections (NSIDs or ``prefix.*``), wanted DIDs, and a
    maximum message size (0: none). Empty lists want everything.

    The collection and DID filters apply to commit events only: identity and account
    events always pass them (only the size limit applies to every event).
    """

    __slots__ = ("collections", "prefixes", "dids", "max_message_bytes")

    def __init__(self, wanted_collections: Iterable[str] = (), wanted_dids: Iterable[str] = (),
                 max_message_bytes: int = 0) -> None:
        """Validate and build; raise ValueError with a message fit for a client."""
        exact: set[str] = set()
        prefixes: set[str] = set()
        for col in wanted_collections:
            if not isinstance(col, str):
                raise ValueError(f"invalid collection: {col!r}")
            if col.endswith(".*"):
                if not _PREFIX_RE.match(col):
                    raise ValueError(f"invalid collection prefix: {col[:100]!r}")
                prefixes.add(col[:-1])  # keep the dot: "app.bsky.*" must not match "app.bskyx"
            elif valid_nsid(col):
                exact.add(col)
            else:
                raise ValueError(f"invalid collection: {col[:100]!r}")
        if len(exact) + len(prefixes) > MAX_WANTED_COLLECTIONS:
            raise ValueError(f"too many wanted collections (at most {MAX_WANTED_COLLECTIONS})")
        dids: set[str] = set()
        for did in wanted_dids:
            if not isinstance(did, str) or not valid_did(did):
                raise ValueError(f"invalid DID: {str(did)[:100]!r}")
            dids.add(did)
        if len(dids) > MAX_WANTED_DIDS:
            raise ValueError(f"too many wanted DIDs (at most {MAX_WANTED_DIDS:,})")
        if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int) \
                or max_message_bytes < 0:
            raise ValueError(f"invalid maxMessageSizeBytes: {max_message_bytes!r}")
        self.collections = frozenset(exact)
        # Sorted so logs are stable; str.startswith takes the tuple in one C call.
        self.prefixes = tuple(sorted(prefixes))
        self.dids = frozenset(dids)
        self.max_message_bytes = max_message_bytes

    def matches(self, event: EventHead, size: int = 0) -> bool:
        """Whether a subscriber with these filters gets ``event`` whose JSON is ``size`` bytes."""
        if self.max_message_bytes and size > self.max_message_bytes:
            return False
        if event.kind != "commit":
            return True
        if self.dids and event.did not in self.dids:
            return False
        if not (self.collections or self.prefixes):
            return True
        commit = event.commit
        if commit is None or not commit.collection:
            return True  # as Jetstream: an event without a collection passes the collection filter
        collection = commit.collection
        return collection in self.collections or (
            bool(self.prefixes) and collection.startswith(self.prefixes))

    def describe(self) -> str:
        """A short summary for logs."""
        cols = sorted(self.collections) + [p + "*" for p in self.prefixes]
        shown = ",".join(cols[:5]) + (f",... ({len(cols)})" if len(cols) > 5 else "")
        return (f"collections={shown or 'all'} dids={len(self.dids) or 'all'} "
                f"max_bytes={self.max_message_bytes or 'none'}")


ALL_EVENTS = EventFilter()


@dataclass
class ScanStats:
    """Counts of one pass over capture files."""

    lines: int = 0
    malformed: int = 0


def scan_capture(files: Sequence[Path], stats: ScanStats | None = None) -> Iterator[tuple[EventHead, bytes]]:
    """Every well-formed event of ``files``, in order, as (head, line bytes without the newline).

    Reads line by line (captures can be several GB). Blank lines are skipped; a malformed
    line is logged with its file and line number, counted in ``stats`` and skipped.
    """
    stats = ScanStats() if stats is None else stats
    for path in files:
        bad_here = 0
        with open_capture(path) as stream:
            for lineno, line in enumerate(stream, 1):
                stats.lines += 1
                raw = line.rstrip(b"\r\n")
                if not raw or raw.isspace():
                    continue
                try:
                    head = decode_head(raw)
                except ValueError as exc:
                    stats.malformed += 1
                    bad_here += 1
                    if bad_here <= LOGGED_BAD_LINES:
                        log.warning("%s line %d: malformed event skipped: %s", path, lineno, exc)
                    continue
                yield head, raw


def iter_events(files: Sequence[Path], *, cursor: int | None = None,
                event_filter: EventFilter | None = None) -> Iterator[tuple[int, bytes]]:
    """(time_us, line bytes) of the events a subscriber with ``cursor`` and ``event_filter``
    gets from ``files``: those with time_us >= cursor that pass the filter, in file order."""
    wanted = event_filter or ALL_EVENTS
    for head, raw in scan_capture(files):
        if cursor is not None and head.time_us < cursor:
            continue
        if wanted.matches(head, len(raw)):
            yield head.time_us, raw


def make_compressor(dictionary: bytes | zstandard.ZstdCompressionDict) -> zstandard.ZstdCompressor:
    """A compressor producing what Jetstream v1 sends with ``compress=true``: one zstd frame
    per event, compressed with the dictionary, with the content size in the frame header."""
    zdict = dictionary if isinstance(dictionary, zstandard.ZstdCompressionDict) \
        else zstandard.ZstdCompressionDict(dictionary)
    return zstandard.ZstdCompressor(dict_data=zdict, level=ZSTD_LEVEL, write_content_size=True)


async def send_event(ws: web.WebSocketResponse, raw: bytes,
                     compressor: zstandard.ZstdCompressor | None = None) -> None:
    """Send one event as Jetstream v1 does: a text message of its JSON bytes, or with a
    compressor a binary message of one zstd frame. Awaiting it applies backpressure."""
    # send_frame takes the bytes as they are: send_str would decode and re-encode them.
    if compressor is None:
        await ws.send_frame(raw, WSMsgType.TEXT)
    else:
        await ws.send_frame(compressor.compress(raw), WSMsgType.BINARY)


class Pacer:
    """Holds sends back to ``speed`` times real time by the events' own clock (microseconds),
    counted from the first event paced; ``speed`` None: no pacing."""

    def __init__(self, speed: float | None) -> None:
        self.speed = speed
        self._start: tuple[float, int] | None = None  # (loop time, event time) of the first event

    async def wait(self, when_us: int) -> None:
        """Return once the event of time ``when_us`` is due (in slices of MAX_SLEEP_S, so that a
        shutdown never waits long)."""
        if self.speed is None:
            return
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = (loop.time(), when_us)
            return
        due = self._start[0] + (when_us - self._start[1]) / (self.speed * 1_000_000)
        while (ahead := due - loop.time()) > 0:
            await asyncio.sleep(min(ahead, MAX_SLEEP_S))


async def idle_tail(ws: web.WebSocketResponse) -> None:
    """Keep a connection open and quiet after the last event, as a live tail would (pinging)."""
    while True:
        await asyncio.sleep(IDLE_PING_S)
        await ws.ping()


def parse_speed(text: str) -> float | None:
    """``max`` -> None (as fast as the client reads), else a positive finite number."""
    if text.strip().lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected 'max' or a positive number, got {text!r}") from None
    if not (0 < value < float("inf")):
        raise ValueError(f"expected 'max' or a positive number, got {text!r}")
    return value


class _OptionsPayload(msgspec.Struct):
    wantedCollections: list[str] | None = None
    wantedDids: list[str] | None = None
    maxMessageSizeBytes: int = 0


class _ClientMessage(msgspec.Struct):
    type: str = ""
    payload: msgspec.Raw = msgspec.Raw(b"null")


_client_decoder = msgspec.json.Decoder(_ClientMessage)
_options_decoder = msgspec.json.Decoder(_OptionsPayload)


@dataclass(eq=False)
class _Connection:
    ws: web.WebSocketResponse
    peer: str
    event_filter: EventFilter
    hello: asyncio.Event | None  # set by the first valid options_update when requireHello
    sent: int = 0
    stats: ScanStats = field(default_factory=ScanStats)
    sender: asyncio.Task[None] | None = None

    def on_client_text(self, data: str) -> None:
        """Apply an options_update; log and ignore anything invalid (the stream goes on)."""
        try:
            msg = _client_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("%s: unreadable client message ignored: %s", self.peer, exc)
            return
        if msg.type != "options_update":
            log.info("%s: client message of type %r ignored", self.peer, msg.type[:40])
            return
        try:
            opts = _options_decoder.decode(msg.payload)
            new = EventFilter(opts.wantedCollections or (), opts.wantedDids or (),
                              opts.maxMessageSizeBytes)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            log.warning("%s: invalid options_update ignored: %s", self.peer, exc)
            return
        self.event_filter = new  # the sender reads it for every event
        log.info("%s: options updated: %s", self.peer, new.describe())
        if self.hello is not None:
            self.hello.set()


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": "InvalidRequest", "message": message}, status=400)


def _parse_cursor(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    if not _INT_RE.match(text) or not -(1 << 63) <= int(text) < (1 << 63):
        raise ValueError(f"invalid cursor: {text[:40]!r} (expected an integer time_us)")
    return int(text)


def _parse_size(text: str | None) -> int:
    if text is None or text == "":
        return 0
    if not _INT_RE.match(text) or int(text) < 0:
        raise ValueError(f"invalid maxMessageSizeBytes: {text[:40]!r} (expected an integer >= 0)")
    return int(text)


class _Replay:
    """The state of one replay app: its captures, dictionary, pace and open connections."""

    def __init__(self, files: Sequence[Path], dictionary: bytes | None, speed: float | None) -> None:
        self.files = tuple(files)
        self.speed = speed
        self.zdict: zstandard.ZstdCompressionDict | None = None
        if dictionary is not None:
            if not dictionary:
                raise ValueError("the zstd dictionary is empty")
            try:
                self.zdict = zstandard.ZstdCompressionDict(dictionary)
                # Done once here, not per connection: compressors then share the digested dictionary.
                self.zdict.precompute_compress(level=ZSTD_LEVEL)
            except zstandard.ZstdError as exc:
                raise ValueError(f"invalid zstd dictionary: {exc}") from None
        self.connections: set[_Connection] = set()

    async def subscribe(self, request: web.Request) -> web.StreamResponse:
        """``GET /subscribe``: validate, upgrade, stream, then idle until either side closes."""
        query = request.query
        try:
            cursor = _parse_cursor(query.get("cursor"))
            wanted = EventFilter(query.getall("wantedCollections", []), query.getall("wantedDids", []),
                                 _parse_size(query.get("maxMessageSizeBytes")))
        except ValueError as exc:
            return _bad_request(str(exc))
        compress = query.get("compress") == "true" or "zstd" in request.headers.get("Socket-Encoding", "")
        if compress and self.zdict is None:
            return _bad_request("compression was requested but this server has no zstd dictionary "
                                "(start it with --zstd-dictionary PATH)")
        # compress=False: no permessage-deflate, as Jetstream (and it would cost more than the rest).
        ws = web.WebSocketResponse(max_msg_size=MAX_CLIENT_MESSAGE, compress=False, timeout=CLOSE_TIMEOUT_S)
        if not ws.can_prepare(request).ok:
            return _bad_request("expected a websocket upgrade")
        await ws.prepare(request)
        peername = request.transport.get_extra_info("peername") if request.transport else None
        peer = f"{peername[0]}:{peername[1]}" if peername else str(request.remote)
        hello = asyncio.Event() if query.get("requireHello") == "true" else None
        conn = _Connection(ws, peer, wanted, hello)
        log.info("%s connected: cursor=%s %s compress=%s%s", peer, cursor, wanted.describe(), compress,
                 " requireHello" if hello else "")
        compressor = make_compressor(self.zdict) if compress and self.zdict is not None else None
        conn.sender = asyncio.create_task(self._stream(conn, cursor, compressor))
        self.connections.add(conn)
        try:
            async for msg in ws:  # ends when the client closes, the socket drops, or we close
                if msg.type is WSMsgType.TEXT:
                    conn.on_client_text(msg.data)
        finally:
            conn.sender.cancel()
            await asyncio.wait([conn.sender])
            self.connections.discard(conn)
            log.info("%s closed: %d events sent (%d malformed lines skipped)", peer, conn.sent,
                     conn.stats.malformed)
        return ws

    async def _stream(self, conn: _Connection, cursor: int | None,
                      compressor: zstandard.ZstdCompressor | None) -> None:
        """Send the capture to one connection, then keep it open and idle."""
        ws = conn.ws
        pacer = Pacer(self.speed)
        try:
            if conn.hello is not None:
                await conn.hello.wait()
            since_yield = 0
            for head, raw in scan_capture(self.files, conn.stats):
                since_yield += 1
                if since_yield >= YIELD_EVERY:
                    # Sends only suspend when the socket is backed up: without this, a fast
                    # client (or a filter that matches nothing) would starve client messages,
                    # other connections and the shutdown signal.
                    since_yield = 0
                    await asyncio.sleep(0)
                if cursor is not None and head.time_us < cursor:
                    continue
                # Pace before filtering: as on a live Jetstream, the filter in force when an
                # event's time comes decides, so an options_update applies from then on.
                await pacer.wait(head.time_us)
                if not conn.event_filter.matches(head, len(raw)):
                    continue
                await send_event(ws, raw, compressor)
                conn.sent += 1
            log.info("%s: end of capture after %d events; idling as a live tail", conn.peer, conn.sent)
            await idle_tail(ws)
        except ConnectionError as exc:  # the client went away mid-send
            log.info("%s: connection lost: %s", conn.peer, exc)
        except Exception:
            log.exception("%s: replay failed", conn.peer)
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"replay failed")

    async def close_all(self, app: web.Application) -> None:
        """On shutdown: close every connection with 1001 (going away), so idle ones don't hold it up."""
        conns = list(self.connections)
        for conn in conns:
            if conn.sender is not None:
                conn.sender.cancel()
        await asyncio.gather(*(c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
                               for c in conns), return_exceptions=True)


def make_replay_app(files: list[Path], *, dictionary: bytes | None = None,
                    speed: float | None = None) -> web.Application:
    """The replay server: ``GET /subscribe`` streams ``files`` (played in order as one stream).

    ``dictionary`` enables ``compress=true``; ``speed`` None sends as fast as each client
    reads, X plays at X times real time (from the events' time_us). Raises ValueError for
    an unusable dictionary or speed.
    """
    if speed is not None and not speed > 0:
        raise ValueError(f"speed must be positive, got {speed}")
    replay = _Replay(files, dictionary, speed)
    app = web.Application()
    app.router.add_get("/subscribe", replay.subscribe)
    app.on_shutdown.append(replay.close_all)
    return app


async def serve_replay(app: web.Application, host: str, port: int,
                       ready: Callable[[str, int], None] | None = None) -> None:
    """Serve ``app`` until SIGTERM or SIGINT; ``ready(host, bound_port)`` is called once listening."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0, max_line_size=MAX_REQUEST_LINE)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        log.info("replay listening on %s:%d", host, bound_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready(host, bound_port)
        await stop.wait()
        log.info("shutting down")
    finally:
        with suppress(NotImplementedError, RuntimeError):
            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().remove_signal_handler(sig)
        await runner.cleanup()
