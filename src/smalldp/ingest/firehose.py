"""The relay firehose client: `com.atproto.sync.subscribeRepos` into the same sink as Jetstream's.

A relay sends every event of the network as one binary websocket message, a DAG-CBOR
header and body (decoded by events_firehose.py into the operations of the Jetstream v1
path). Connecting, failover, backoff and liveness are ingest/stream.py's, as for Jetstream.

**The cursor is the relay's seq**, and a seq is that relay's own: two relays number the
same event differently. So each relay has its own resume point, the meta key
``firehose_seq:<host[:port]>``, which live ingest commits in the same transaction as the
batch it covers (`commit_meta`): the seq of the last frame whose every operation is in
that batch or an earlier one (a batch that fills in the middle of a multi-op commit
commits the frame before it; the frame is received again after a restart, its first ops
replayed, which the store ignores). A relay sends the frames after the cursor, so no
rewind is needed.

Resuming on a relay uses its seq (seen by this process, else the committed one). A relay
with no seq of ours (failover to a relay never used, or its seq dropped after a
FutureCursor) is joined at its live tip: subscribeRepos has no time cursor, and a foreign
seq would point anywhere. Events between the newest one we hold and the first one that
relay sends may then be missing: the client logs that possible gap with its time span and
counts it (`possible_gaps`); only a backfill (not built yet) could fill it. Going back to a
relay used before resumes from its own seq, which covers the time spent elsewhere.

What else the relay says:

* ``#info OutdatedCursor``: our seq is older than its backfill window; it starts at the
  oldest event it has. Logged and counted as a possible gap; reading goes on.
* error ``FutureCursor``: our seq is ahead of it (a relay that lost its state). The seq for
  it is dropped and we reconnect at its live tip (a possible gap, logged).
* error ``ConsumerTooSlow`` (and any other error frame): reconnect from the last seq read.
* ``#sync`` (a repo was reset: what we hold of it may have diverged): counted and logged.
  Making the store equal to the repo again needs a backfill (getRepo), not built yet.
* a frame that does not decode, a ``tooBig`` commit, an op whose block is absent from the
  CAR slice: counted as decode errors, logged with the seq, skipped; the connection and
  the batch go on.

With ``verify_commits``, each frame also goes through smalldp.verify's ``CommitVerifier``
(keys from ``plc_url`` or did:web, cached): a commit that does not verify is counted
(``verify_failures``), logged with its seq and skipped, the stream going on; one that
verifies but whose ``prevData`` is not the repo's last data seen (a commit missed, or
the first since a restart's cache loss: the chain is kept in memory) is counted
(``chain_breaks``) and applied.  A DID not yet cached is resolved inline, the socket
unread meanwhile.

Filters: a relay has none, so ``wanted_collections`` and ``wanted_dids`` are applied here,
after decoding, as Jetstream applies them: DIDs to every kind of event (with wanted_dids,
only those accounts' status is followed), collections to commits only. Every frame is
still received and decoded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

from smalldp.events import AccountStatus, Identity, Operation
from smalldp.events_firehose import (
    ErrorFrame, InfoFrame, MalformedFrame, OpsFrame, SyncFrame, UnknownFrame, decode_frame_firehose,
)
from smalldp.ingest.jetstream import endpoint_url
from smalldp.ingest.metrics import IngestMetrics
from smalldp.ingest.stream import ClientOptions, Filters, Plan, Reconnect, StreamClient
from smalldp.verify import ChainBreak, CommitVerifier, HttpDidResolver, VerifyError

log = logging.getLogger(__name__)

SEQ_META_PREFIX = "firehose_seq:"
LOGGED_SYNCS = 20  # #sync frames logged in full; then every 1000th


def relay_key(endpoint: str) -> str:
    """The meta key holding the seq to resume ``endpoint``'s relay from."""
    return SEQ_META_PREFIX + (urlsplit(endpoint).netloc.lower() or endpoint)


def relay_url(endpoint: str, seq: int | None) -> str:
    """The subscribeRepos URL of ``endpoint`` (its path added when it has none), from ``seq``."""
    base = endpoint_url(endpoint, "firehose")
    if seq is None:
        return base
    parts = urlsplit(base)
    query = "&".join(q for q in (parts.query, urlencode([("cursor", str(seq))])) if q)
    return urlunsplit(parts._replace(query=query))


class _Wanted:
    """Client-side filters, Jetstream's way: the DID for every event, the collection for commits."""

    def __init__(self, filters: Filters) -> None:
        self.exact = frozenset(c for c in filters.collections if not c.endswith(".*"))
        # Keep the dot: "app.bsky.*" must not take "app.bskyx.y".
        self.prefixes = tuple(c[:-1] for c in filters.collections if c.endswith(".*"))
        self.dids = frozenset(filters.dids)
        self.everything = not (self.exact or self.prefixes or self.dids)

    def __call__(self, op: Operation) -> bool:
        if self.everything:
            return True
        if self.dids and op.did not in self.dids:
            return False
        if not (self.exact or self.prefixes) or isinstance(op, (Identity, AccountStatus)):
            return True
        collection = op.collection
        return collection in self.exact or (bool(self.prefixes) and collection.startswith(self.prefixes))


class FirehoseClient(StreamClient):
    """Follows relays' subscribeRepos into a sink until stopped."""

    log = log
    reconnect_message = "relay %s: %s; reconnecting to %s in %.1f s"

    def __init__(self, options: ClientOptions, sink: Callable[[Operation], None], metrics: IngestMetrics,
                 *, committed_cursor: int | None,
                 committed_meta: Callable[[str], object] = lambda key: None,
                 verifier: CommitVerifier | None = None) -> None:
        super().__init__(options, sink, metrics)
        # With verify_commits: the one given (tests), else one made by run() on its session.
        self._given_verifier = verifier
        self.verifier: CommitVerifier | None = verifier
        self._committed_cursor = committed_cursor  # time_us: only to measure a possible gap
        self._committed_meta = committed_meta
        # Per relay key: the seq of the last frame fully delivered to the sink; None once
        # dropped (FutureCursor). A key absent here is read from the committed meta.
        self._seqs: dict[str, int | None] = {}
        self._key = ""  # the current connection's relay
        self._gap_since: int | None = None  # time_us we hold up to, while a gap's end is unknown
        self._wanted = _Wanted(options.filters)

    # ------------------------------------------------------------ control

    async def run(self, stop: asyncio.Event) -> None:
        """As StreamClient.run; with ``verify_commits``, a verifier lives as long as the run."""
        if not self.options.verify_commits or self._given_verifier is not None:
            return await super().run(stop)
        async with aiohttp.ClientSession() as session:
            self.verifier = CommitVerifier(HttpDidResolver(session, plc_url=self.options.plc_url))
            try:
                await super().run(stop)
            finally:
                self.verifier = None

    def commit_meta(self) -> dict[str, object]:
        """Every relay's seq delivered so far (None: dropped), for the batch's transaction."""
        return dict(self._seqs)

    def resume_seq(self, endpoint: str) -> int | None:
        """The seq to resume ``endpoint``'s relay from: this process's, else the committed one."""
        key = relay_key(endpoint)
        if key in self._seqs:
            return self._seqs[key]
        stored = self._committed_meta(key)
        return stored if isinstance(stored, int) and not isinstance(stored, bool) and stored >= 0 else None

    async def update_filters(self, filters: Filters) -> None:
        """Relays have no filters: apply the new ones here, from the next frame on."""
        self.options = replace(self.options, filters=filters)
        self._wanted = _Wanted(filters)
        log.info("new filters: %d collections, %d DIDs (applied to the frames as they come)",
                 len(filters.collections), len(filters.dids))

    # ------------------------------------------------------------ the connection

    async def _prepare(self, endpoint: str) -> Plan:
        key = self._key = relay_key(endpoint)
        seq = self.resume_seq(endpoint)
        if seq is not None:
            self._seqs.setdefault(key, seq)  # committed again with the next batch, as it stands
            return Plan(relay_url(endpoint, seq), (), f"cursor seq {seq}")
        newest = self.last_time_us if self.last_time_us is not None else self._committed_cursor
        if newest is not None:
            # Holding events and no seq of this relay: its live tip, and maybe a gap.
            self._gap_since = newest
            self.metrics.possible_gaps += 1
            log.warning("relay %s: no seq of this relay to resume from; starting at its live tip: "
                        "events after %s (the newest held) that it sent before now are missed "
                        "(the span is logged at the first event)", endpoint, _utc(newest))
        return Plan(relay_url(endpoint, None), (), "live tip")

    # ------------------------------------------------------------ the hot path

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        metrics = self.metrics
        sink = self.sink
        seqs, key = self._seqs, self._key
        async for msg in ws:
            data = self._arrived(ws, msg)
            if data is None:
                continue
            if isinstance(data, str):
                self._bad("text message on a firehose stream")
                continue
            if self._oversized(data):
                continue
            try:
                frame = decode_frame_firehose(data)
            except MalformedFrame as exc:
                self._bad(str(exc), seq=exc.seq)
                if exc.seq is not None:
                    seqs[key] = metrics.seq = exc.seq
                continue
            if self.verifier is not None and not await self._verified(data, frame):
                assert isinstance(frame, (OpsFrame, SyncFrame))  # only those can fail
                seqs[key] = metrics.seq = frame.seq
                continue
            if isinstance(frame, OpsFrame):
                seq = frame.seq
                for why in frame.skipped:
                    self._bad(why, seq=seq)
                ops = frame.ops
                if ops:
                    if self._gap_since is not None:
                        self._gap_found(ops[0].time_us)
                    wanted = self._wanted
                    for op in ops:
                        if wanted(op):
                            sink(op)
                    self.last_time_us = ops[-1].time_us
                # Only now: a batch committed while this frame's ops were delivered covers
                # the frame before it.
                seqs[key] = metrics.seq = seq
                # The sink may have spent a while committing: that was us, not a silent server.
                self._last_rx = time.monotonic()
            else:
                self._other(frame, key)

    async def _verified(self, data: bytes,
                        frame: OpsFrame | SyncFrame | UnknownFrame | InfoFrame | ErrorFrame) -> bool:
        """Whether a decoded frame may be applied under verify_commits (see the module doc)."""
        if not isinstance(frame, (OpsFrame, SyncFrame)):
            return True  # info, error and unknown frames carry no commit
        assert self.verifier is not None
        metrics = self.metrics
        try:
            if await self.verifier.verify(data):
                metrics.commits_verified += 1
        except ChainBreak as exc:
            metrics.commits_verified += 1
            metrics.chain_breaks += 1
            log.warning("seq %s: %s (applied)", frame.seq, exc)  # rate-limited: ingest/lograte.py
        except VerifyError as exc:
            metrics.verify_failures += 1
            log.warning("seq %s: commit skipped, it does not verify: %s", frame.seq, exc)
            return False
        return True

    def _other(self, frame: SyncFrame | UnknownFrame | InfoFrame | ErrorFrame, key: str) -> None:
        """Frames that carry no operations."""
        metrics = self.metrics
        if isinstance(frame, SyncFrame):
            metrics.sync_events += 1
            n = metrics.sync_events
            if n <= LOGGED_SYNCS or n % 1000 == 0:
                log.warning("#sync %d at seq %d: repo %s reset to rev %s; not applied (needs a backfill, "
                            "not built yet): what the store holds of it may differ from the repo",
                            n, frame.seq, frame.did, frame.rev)
            self._seqs[key] = metrics.seq = frame.seq
        elif isinstance(frame, UnknownFrame):
            log.info("skipped a message of unknown type %r (seq %s)", frame.kind, frame.seq)
            if frame.seq is not None:
                self._seqs[key] = metrics.seq = frame.seq
        elif isinstance(frame, InfoFrame):
            if frame.name == "OutdatedCursor":
                metrics.possible_gaps += 1
                log.warning("relay says OutdatedCursor (%s): our seq is older than what it keeps; it "
                            "starts at its oldest event, and events before that are missed",
                            frame.message or "")
            else:
                log.info("relay says %s: %s", frame.name, frame.message or "")
        else:
            if frame.error == "FutureCursor":
                # Ahead of the relay: it lost events or state; that seq means nothing there now.
                self._seqs[key] = None
                raise Reconnect(f"relay error FutureCursor ({frame.message or ''}): its seq dropped, "
                                "reconnecting at its live tip")
            # ConsumerTooSlow and the rest: the relay closes; resume from the last seq read.
            raise Reconnect(f"relay error {frame.error}: {frame.message or ''}")

    def _gap_found(self, first_us: int) -> None:
        since, self._gap_since = self._gap_since, None
        assert since is not None
        span = max(0, first_us - since) / 1e6
        log.warning("possible gap: up to %.1f s of events (%s to %s, the first event of the live tip) "
                    "may be missing", span, _utc(since), _utc(first_us))


def _utc(time_us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time_us / 1e6))
