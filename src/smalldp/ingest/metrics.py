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

    # The connection's state: starting, connecting, streaming, backoff, stopping, stopped,
    # failed. What health and STATUS= show is `shown_state()`: "paused" while the disk
    # guard holds ingest back, whatever the connection does meanwhile.
    state: str = "starting"
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
    seq: int | None = None  # relay firehose: the seq of the last frame read (None on Jetstream)
    sync_events: int = 0  # relay firehose: #sync frames seen (a repo reset; not applied, see README)
    possible_gaps: int = 0  # relay firehose: resumes that may have missed events (logged with their span)
    commits_verified: int = 0  # relay firehose, verify_commits: commits whose signature verified
    verify_failures: int = 0  # ... commits that did not verify: skipped
    chain_breaks: int = 0  # ... verified commits whose prevData is not the last data seen: applied
    queue_depth: int = 0  # events received and not committed yet (the batch being filled)
    last_commit_monotonic: float = field(default_factory=time.monotonic)
    last_error: str = ""
    paused_reason: str = ""  # why the disk guard holds ingest back; "" while it does not
    paused_tick: float = 0.0  # time.monotonic() of the ingest thread's last look while paused
    disk_pauses: int = 0  # times ingest paused for disk space
    disk_full_failures: int = 0  # commits that failed for lack of space (and were retried)
    disk_free_bytes: int | None = None  # of the data directory's filesystem, at the last look
    disk_total_bytes: int | None = None
    disk_floor_bytes: int | None = None
    wal_bytes: int = 0  # size of the SQLite WAL file after the last commit
    commit_gap_max_s: float = 0.0  # longest time between two commits (long on a quiet stream)
    merge_slices: int = 0  # merge slices run between batches (store/compaction.py)
    merge_seconds: float = 0.0  # time they took
    merge_slice_max_s: float = 0.0  # the longest one
    merges_under_way: int = 0
    _rate_points: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    def committed(self, events: int, cursor: int | None, links_added: int, links_removed: int) -> None:
        """Record one committed batch (called on the ingest thread)."""
        now = time.monotonic()
        if self.batches_committed:
            self.commit_gap_max_s = max(self.commit_gap_max_s, now - self.last_commit_monotonic)
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

    def shown_state(self) -> str:
        """The state to show: "paused" while the disk guard holds ingest back (unless it
        is stopping or has stopped), else the connection's state."""
        if self.paused_reason and self.state not in ("stopping", "stopped", "failed"):
            return "paused"
        return self.state

    def progressing(self, window_s: float, merging_since: float | None = None) -> bool:
        """Whether the writer keeps up: nothing waits for it, it committed within
        ``window_s``, it is in a merge (one big statement) younger than MERGE_GRACE_S, or it
        is paused for disk space and its thread still looked at the disk within ``window_s``
        (a pause is healthy: restarting would not make space, and the watchdog must not
        kill it; a hung thread stops looking)."""
        now = time.monotonic()
        if self.state == "failed":
            return False
        if self.queue_depth == 0:
            return True
        if self.shown_state() == "paused":
            return now - self.paused_tick <= window_s
        if merging_since is not None and now - merging_since <= MERGE_GRACE_S:
            return True
        return now - self.last_commit_monotonic <= window_s

    def status_line(self) -> str:
        """A short human summary (systemd STATUS=)."""
        lag = self.lag_s()
        lag_text = "no cursor yet" if lag is None else f"lag {lag:,.1f} s"
        state = self.shown_state()
        if state == "paused":
            state = f"paused ({self.paused_reason})"
        return (f"{state}: {lag_text}, {self.events_per_s():,.0f} events/s, "
                f"{self.events_committed:,} events, {self.reconnects} reconnects")

    def samples(self) -> list[tuple[str, str, str, float]]:
        """(name, type, help, value) for the Prometheus exposition."""
        lag = self.lag_s()
        return [
            ("smalldp_ingest_connected", "gauge", "1 while a Jetstream (or relay) connection is open.",
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
            ("smalldp_ingest_sync_events_total", "counter",
             "Relay #sync frames seen (repo resets; not applied: no backfill yet).", float(self.sync_events)),
            ("smalldp_ingest_possible_gaps_total", "counter",
             "Relay resumes without a usable seq of that relay (events may be missing).",
             float(self.possible_gaps)),
            ("smalldp_ingest_commits_verified_total", "counter",
             "Relay commits whose signature verified (verify_commits).", float(self.commits_verified)),
            ("smalldp_ingest_verify_failures_total", "counter",
             "Relay commits that did not verify (verify_commits): skipped.", float(self.verify_failures)),
            ("smalldp_ingest_chain_breaks_total", "counter",
             "Verified relay commits whose prevData is not the repo's last data seen.", float(self.chain_breaks)),
            ("smalldp_ingest_queue_depth", "gauge", "Events received and not committed yet.",
             float(self.queue_depth)),
            ("smalldp_ingest_links_added_total", "counter", "Backlinks added.", float(self.links_added)),
            ("smalldp_ingest_links_removed_total", "counter", "Backlinks removed.",
             float(self.links_removed)),
            ("smalldp_ingest_paused", "gauge",
             "1 while ingest is paused for disk space (why: paused_reason in /xrpc/_health).",
             1.0 if self.shown_state() == "paused" else 0.0),
            ("smalldp_ingest_disk_pauses_total", "counter", "Times ingest paused for disk space.",
             float(self.disk_pauses)),
            ("smalldp_ingest_disk_full_failures_total", "counter",
             "Commits that failed for lack of space (rolled back, retried later).",
             float(self.disk_full_failures)),
            ("smalldp_ingest_disk_free_bytes", "gauge",
             "Free space of the data directory's filesystem (NaN before the first look).",
             _or_nan(self.disk_free_bytes)),
            ("smalldp_ingest_disk_floor_bytes", "gauge",
             "Free space below which ingest pauses (min_free_mb, min_free_percent).",
             _or_nan(self.disk_floor_bytes)),
            ("smalldp_ingest_wal_bytes", "gauge", "Size of the SQLite WAL file.", float(self.wal_bytes)),
            ("smalldp_ingest_commit_gap_max_seconds", "gauge",
             "Longest time between two commits (long gaps are normal on a quiet stream).",
             self.commit_gap_max_s),
            ("smalldp_merge_slices_total", "counter", "Merge slices of the backlink index run between batches.",
             float(self.merge_slices)),
            ("smalldp_merge_seconds_total", "counter", "Time spent in merge slices.", self.merge_seconds),
            ("smalldp_merge_slice_max_seconds", "gauge", "The longest merge slice.", self.merge_slice_max_s),
            ("smalldp_merges_under_way", "gauge", "Merges begun and not finished.", float(self.merges_under_way)),
        ]

    def health(self) -> dict[str, object]:
        """The ingest part of /xrpc/_health."""
        lag = self.lag_s()
        return {"state": self.shown_state(), "paused_reason": self.paused_reason,
                "disk": {"free_bytes": self.disk_free_bytes, "total_bytes": self.disk_total_bytes,
                         "floor_bytes": self.disk_floor_bytes, "pauses": self.disk_pauses,
                         "wal_bytes": self.wal_bytes},
                "endpoint": self.endpoint, "connected": self.connected,
                "cursor": self.cursor, "lag_s": None if lag is None else round(lag, 3),
                "events_per_s": round(self.events_per_s(), 1), "events": self.events_committed,
                "reconnects": self.reconnects, "decode_errors": self.decode_errors,
                "seq": self.seq, "sync_events": self.sync_events, "possible_gaps": self.possible_gaps,
                "verify": {"verified": self.commits_verified, "failures": self.verify_failures,
                           "chain_breaks": self.chain_breaks},
                "queue_depth": self.queue_depth, "last_error": self.last_error,
                "commit_gap_max_s": round(self.commit_gap_max_s, 3),
                "merge": {"slices": self.merge_slices, "seconds": round(self.merge_seconds, 3),
                          "slice_max_s": round(self.merge_slice_max_s, 3), "under_way": self.merges_under_way}}


def _or_nan(value: int | None) -> float:
    return float("nan") if value is None else float(value)
