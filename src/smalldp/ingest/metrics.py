"""What live ingest counts, for /metrics, /xrpc/_health, systemd STATUS= and the watchdog.

The ingest thread updates one IngestMetrics and the HTTP side reads it; plain int
updates are atomic under the GIL, and every reader only needs a consistent-enough view.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

RATE_WINDOW_S = 10.0
MERGE_GRACE_S = 1800.0  # a merge of the biggest runs may take minutes on a Pi; never an hour


@dataclass
class IngestMetrics:
    """Counters and gauges of one live ingest."""

    state: str = "starting"  # starting, connecting, streaming, backoff, stopping, stopped, failed
    endpoint: str = ""
    connected: bool = False
    reconnects: int = 0
    bytes_received: int = 0
    messages_received: int = 0
    decode_errors: int = 0
    oversized: int = 0  # messages skipped for their size (also counted in decode_errors)
    events_committed: int = 0
    batches_committed: int = 0
    links_added: int = 0
    links_removed: int = 0
    cursor: int | None = None  # time_us of the last committed event
    queue_depth: int = 0  # events received and not committed yet (the batch being filled)
    last_commit_monotonic: float = field(default_factory=time.monotonic)
    last_error: str = ""
    _rate_points: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    def committed(self, events: int, cursor: int | None, links_added: int, links_removed: int) -> None:
        """Record one committed batch (called on the ingest thread)."""
        now = time.monotonic()
        self.events_committed += events
        self.batches_committed += 1
        self.links_added += links_added
        self.links_removed += links_removed
        if cursor is not None:
            self.cursor = cursor
        self.last_commit_monotonic = now
        self._rate_points.append((now, self.events_committed))

    def events_per_s(self) -> float:
        """Committed events per second over the last ~10 seconds."""
        now = time.monotonic()
        points = [p for p in self._rate_points if now - p[0] <= RATE_WINDOW_S]
        if not points:
            return 0.0
        t0, n0 = points[0]
        if len(points) == 1 or now - t0 < 1e-3:
            return 0.0
        return (self.events_committed - n0) / (now - t0)

    def lag_s(self, now: float | None = None) -> float | None:
        """Seconds between now and the time_us of the last committed event."""
        if self.cursor is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.cursor / 1e6)

    def progressing(self, window_s: float, merging_since: float | None = None) -> bool:
        """Whether the writer keeps up: nothing waits for it, it committed within
        ``window_s``, or it is in a merge (one big statement) younger than MERGE_GRACE_S."""
        now = time.monotonic()
        if self.state == "failed":
            return False
        if self.queue_depth == 0:
            return True
        if merging_since is not None and now - merging_since <= MERGE_GRACE_S:
            return True
        return now - self.last_commit_monotonic <= window_s

    def status_line(self) -> str:
        """A short human summary (systemd STATUS=)."""
        lag = self.lag_s()
        lag_text = "no cursor yet" if lag is None else f"lag {lag:,.1f} s"
        return (f"{self.state}: {lag_text}, {self.events_per_s():,.0f} events/s, "
                f"{self.events_committed:,} events, {self.reconnects} reconnects")

    def samples(self) -> list[tuple[str, str, str, float]]:
        """(name, type, help, value) for the Prometheus exposition."""
        lag = self.lag_s()
        return [
            ("smalldp_ingest_connected", "gauge", "1 while a Jetstream connection is open.",
             1.0 if self.connected else 0.0),
            ("smalldp_ingest_lag_seconds", "gauge",
             "Now minus the time_us of the last committed event (NaN before the first).",
             float("nan") if lag is None else lag),
            ("smalldp_ingest_cursor_microseconds", "gauge", "time_us of the last committed event.",
             float(self.cursor or 0)),
            ("smalldp_ingest_events_per_second", "gauge", "Committed events per second (10 s window).",
             self.events_per_s()),
            ("smalldp_ingest_events_total", "counter", "Events committed to the store.",
             float(self.events_committed)),
            ("smalldp_ingest_batches_total", "counter", "Write transactions committed.",
             float(self.batches_committed)),
            ("smalldp_ingest_messages_total", "counter", "Websocket messages received.",
             float(self.messages_received)),
            ("smalldp_ingest_bytes_received_total", "counter",
             "Websocket payload bytes received (compressed size when compressed).",
             float(self.bytes_received)),
            ("smalldp_ingest_decode_errors_total", "counter",
             "Messages skipped: not decompressible, not JSON, not a valid event, or too big.",
             float(self.decode_errors)),
            ("smalldp_ingest_oversized_total", "counter", "Messages skipped for their size.",
             float(self.oversized)),
            ("smalldp_ingest_reconnects_total", "counter", "Connections lost or abandoned.",
             float(self.reconnects)),
            ("smalldp_ingest_queue_depth", "gauge", "Events received and not committed yet.",
             float(self.queue_depth)),
            ("smalldp_ingest_links_added_total", "counter", "Backlinks added.", float(self.links_added)),
            ("smalldp_ingest_links_removed_total", "counter", "Backlinks removed.",
             float(self.links_removed)),
        ]

    def health(self) -> dict[str, object]:
        """The ingest part of /xrpc/_health."""
        lag = self.lag_s()
        return {"state": self.state, "endpoint": self.endpoint, "connected": self.connected,
                "cursor": self.cursor, "lag_s": None if lag is None else round(lag, 3),
                "events_per_s": round(self.events_per_s(), 1), "events": self.events_committed,
                "reconnects": self.reconnects, "decode_errors": self.decode_errors,
                "queue_depth": self.queue_depth, "last_error": self.last_error}
