"""What every websocket ingest client shares: options, the connection loop, failover,
backoff, liveness, and counting bad messages.

`StreamClient.run` owns the connection. Failure handling: a connection that delivered
messages and then ended is retried on the same endpoint after a short jittered pause;
every consecutive failure moves to the next endpoint and doubles the pause, up to
`backoff_max_s`. Nothing received for `liveness_s` seconds abandons the connection (a
dead socket can stay "open" forever); websocket pings detect dead peers even on
filtered, quiet streams.

A wire is a subclass (ingest/jetstream.py: Jetstream v1 and v2; ingest/firehose.py: a
relay's subscribeRepos): it says where to connect (`_prepare`), what to do once
connected (`_opened`) and how to read (`_read`), and what a batch commits with its data
besides the time cursor (`commit_meta`). Live ingest (ingest/live.py) drives either
through this interface.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from smalldp.events import Operation
from smalldp.ingest.metrics import IngestMetrics


HARD_MESSAGE_LIMIT = 64 << 20  # aiohttp closes the connection above this; smaller excess is skipped
LOGGED_ERRORS = 20  # decode errors logged in full; then every 1000th


@dataclass(frozen=True)
class Filters:
    """What to follow; empty tuples mean everything."""

    collections: tuple[str, ...] = ()
    dids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClientOptions:
    """How to reach the upstream and what to ask it for.

    ``wire``: ``v1`` or ``v2`` (Jetstream), or ``firehose`` (a relay's subscribeRepos).
    """

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
    verify_commits: bool = False  # relay firehose: check commit signatures (smalldp.verify)
    plc_url: str = "https://plc.directory"  # where did:plc documents (signing keys) come from


class Reconnect(Exception):
    """Abandon the current connection; the message says why."""


@dataclass(frozen=True)
class Plan:
    """How one connection is made: its URL, websocket subprotocols, and a log line."""

    url: str
    protocols: tuple[str, ...] = ()
    description: str = ""


class StreamClient:
    """Follows one wire into a sink until stopped (subclasses: the wires)."""

    # Each wire logs under its own logger (ingest/lograte.py limits them by message template).
    log = logging.getLogger(__name__)
    reconnect_message = "stream %s: %s; reconnecting to %s in %.1f s"

    def __init__(self, options: ClientOptions, sink: Callable[[Operation], None],
                 metrics: IngestMetrics) -> None:
        self.options = options
        self.sink = sink  # called with each operation, in order; may block (it applies batches)
        self.metrics = metrics
        self.last_time_us: int | None = None  # time_us of the newest operation delivered
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._last_rx = 0.0
        self._abandon_reason = ""

    # ------------------------------------------------------------ what a wire provides

    async def _prepare(self, endpoint: str) -> Plan:
        """Where and how to connect to ``endpoint`` now (the resume point included)."""
        raise NotImplementedError

    async def _opened(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Called once connected, before reading (e.g. a v1 hello message)."""

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Read messages and deliver operations until the connection ends."""
        raise NotImplementedError

    def commit_meta(self) -> dict[str, object]:
        """Meta values a batch commits with its data (besides the time cursor): where this
        wire resumes from, covering exactly the operations delivered so far."""
        return {}

    async def update_filters(self, filters: Filters) -> None:
        """Follow new filters (each wire knows how)."""
        raise NotImplementedError

    # ------------------------------------------------------------ control

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
                except (aiohttp.ClientError, OSError, TimeoutError, Reconnect) as exc:
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
                self.log.warning(self.reconnect_message, endpoint, reason, next_endpoint, delay)
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
        plan = await self._prepare(endpoint)
        self.log.info("connecting to %s (%s)", endpoint, plan.description)
        async with session.ws_connect(
                plan.url, heartbeat=opts.heartbeat_s, max_msg_size=HARD_MESSAGE_LIMIT, compress=0,
                protocols=plan.protocols, timeout=aiohttp.ClientWSTimeout(ws_close=2.0)) as ws:
            self._ws = ws
            await self._opened(ws)
            self.metrics.connected = True
            self.metrics.state = "streaming"
            self._last_rx = time.monotonic()
            self._abandon_reason = ""
            self._reader = asyncio.create_task(self._read(ws))
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

    def _arrived(self, ws: aiohttp.ClientWebSocketResponse, msg: aiohttp.WSMessage) -> bytes | str | None:
        """Count a received message and return its payload (None: not a data message);
        a websocket error abandons the connection."""
        self._last_rx = time.monotonic()
        self.metrics.messages_received += 1
        kind = msg.type
        if kind is aiohttp.WSMsgType.TEXT or kind is aiohttp.WSMsgType.BINARY:
            data: bytes | str = msg.data
            self.metrics.bytes_received += len(data)
            return data
        if kind is aiohttp.WSMsgType.ERROR:
            raise Reconnect(f"websocket error: {ws.exception()}")
        return None

    def _oversized(self, data: bytes | str) -> bool:
        """Whether ``data`` is over max_message_bytes (then counted and logged, to be skipped)."""
        limit = self.options.max_message_bytes
        if len(data) <= limit:
            return False
        self._bad(f"message of {len(data)} bytes, more than max_message_bytes={limit}", oversized=True)
        return True

    def _bad(self, why: str, oversized: bool = False, seq: int | None = None) -> None:
        """Count and (modestly) log a message or event skipped; ``seq``: the relay's, if known."""
        metrics = self.metrics
        metrics.decode_errors += 1
        if oversized:
            metrics.oversized += 1
        n = metrics.decode_errors
        if n <= LOGGED_ERRORS or n % 1000 == 0:
            where = f"seq {seq}" if seq is not None else f"message {metrics.messages_received}"
            self.log.warning("skipped %s (decode error %d): %s", where, n, why[:300])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"handshake refused (HTTP {exc.status}: {exc.message})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
