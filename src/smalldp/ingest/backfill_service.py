"""A backfill run by `smalldp serve` for `smalldp backfill` (the hand-off, issue 12).

The service holds the store's only writer, on its ingest thread.  A backfill handed to it
runs its fetches on the service's event loop and reads CARs on its own thread (as with
serve stopped: ingest/backfill.py), and every write goes to the ingest thread as a job
(``LiveIngest.submit``), run between live batches.  So live ingest and the backfill share
one writer and its rules: exactly-once needs nothing more than it does with serve stopped,
and the longest wait of a live batch is one backfill batch (``backfill_batch_records``).

One backfill at a time; a second is refused while one runs.  The admin interface
(smalldp/admin.py) starts, follows and cancels it; /xrpc/_health shows it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any, Callable, TypeVar

from smalldp.config import Settings, with_overrides
from smalldp.ingest.backfill import Backfill, BackfillProgress, BackfillSummary
from smalldp.ingest.backfill_run import RUN_SETTINGS, BackfillRequest, run_backfill_with
from smalldp.ingest.live import IngestStopped, LiveIngest
from smalldp.store.writer import Writer

log = logging.getLogger(__name__)
_T = TypeVar("_T")
PROGRESS_LOG_S = 60.0  # a progress line in the service's log this often
SHOWN_FAILURES = 20  # failures in /xrpc/_health (the admin interface has them all)


class BackfillBusy(RuntimeError):
    """A backfill is already running in this service."""


class IngestThreadWriter:
    """Writes through the running service's ingest thread (its single writer)."""

    def __init__(self, live: LiveIngest) -> None:
        self.live = live

    def run(self, job: Callable[[Writer], _T]) -> _T:
        """Queue ``job`` on the ingest thread and wait for it (raises IngestStopped when
        ingest stops first)."""
        return self.live.submit(job).result()


class _LogStream:
    """The progress line, into the service's log."""

    def write(self, text: str) -> int:
        if text.strip():
            log.info("%s", text.strip())
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class BackfillHandOff:
    """The service's backfill: at most one running, the last one's outcome kept."""

    def __init__(self, settings: Settings, live: LiveIngest) -> None:
        self.settings = settings
        self.live = live
        self._ids = itertools.count(1)
        self.id = 0
        self.state = "idle"  # running, done, failed, cancelled
        self.request: BackfillRequest | None = None
        self.error: str | None = None
        self.started_at: float | None = None  # wall clock
        self._backfill: Backfill | None = None
        self._summary: BackfillSummary | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, request: BackfillRequest) -> dict[str, Any]:
        """Begin ``request`` on the running loop; returns its status (BackfillBusy while
        another runs, ConfigError for a bad setting in it)."""
        settings = with_overrides(self.settings, request.settings, RUN_SETTINGS, "smalldp backfill")
        if self.state == "running":
            raise BackfillBusy(f"a backfill is already running ({self._progress_text()}): wait for it, "
                               "or stop it with `smalldp backfill --cancel`")
        self.id = next(self._ids)
        self.state, self.request, self.error = "running", request, None
        self.started_at = time.time()
        self._backfill = self._summary = None
        self._task = asyncio.create_task(self._run(request, settings))
        log.info("backfill %d begins: %s", self.id, _describe(request))
        return self.status()

    async def _run(self, request: BackfillRequest, settings: Settings) -> None:
        def started(backfill: Backfill) -> None:
            self._backfill = backfill

        try:
            self._summary = await run_backfill_with(
                settings, request, IngestThreadWriter(self.live),
                progress=BackfillProgress(_LogStream(), plain_interval=PROGRESS_LOG_S),  # type: ignore[arg-type]
                started=started)
            self.state = "done"
            summary = self._summary
            log.info("backfill %d done: %d repos, %d failed, %d records in %.1f s", self.id, summary.done,
                     summary.failed, summary.records, summary.seconds)
        except asyncio.CancelledError:
            self.state, self.error = "cancelled", "cancelled: run the same backfill again to resume it"
            log.warning("backfill %d cancelled", self.id)
        except IngestStopped:
            self.state = "failed"
            self.error = "smalldp serve stopped during the backfill: run it again to resume (done repos are skipped)"
            log.warning("backfill %d stopped with the service", self.id)
        except Exception as exc:  # noqa: BLE001 - reported in the status and the log
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("backfill %d failed", self.id)

    def summary(self) -> BackfillSummary:
        """The figures so far (the final ones once it has ended)."""
        if self._summary is not None:
            return self._summary
        if self._backfill is not None:
            summary = self._backfill.summary
            summary.seconds = self._backfill.elapsed
            summary.retries = self._backfill.fetcher.retried
            return summary
        return BackfillSummary()

    def status(self, failures: int | None = None) -> dict[str, Any]:
        """The backfill's state and figures (``failures``: at most that many listed)."""
        summary = self.summary().as_dict()
        if failures is not None:
            summary["failures"] = summary["failures"][:failures]
        backfill = self._backfill
        return {"id": self.id, "state": self.state, "error": self.error,
                "request": None if self.request is None else self.request.as_dict(),
                "started_at": self.started_at,
                "total": backfill.total if backfill is not None else 0,
                "listing": backfill.listing if backfill is not None else self.state == "running",
                "summary": summary}

    def health(self) -> dict[str, Any] | None:
        """The /xrpc/_health part: None before the first backfill of this run of serve."""
        return None if self.id == 0 else self.status(failures=SHOWN_FAILURES)

    def _progress_text(self) -> str:
        summary = self.summary()
        backfill = self._backfill
        total = backfill.total if backfill is not None else 0
        return f"{summary.done + summary.failed + summary.skipped:,}/{total:,} repos"

    async def cancel(self) -> bool:
        """Stop the running backfill (what it finished stays done); False if none runs."""
        task = self._task
        if task is None or task.done():
            return False
        task.cancel()
        await asyncio.wait([task])
        return True


def _describe(request: BackfillRequest) -> str:
    if request.follows_of:
        return f"--follows-of {request.follows_of}"
    if request.relay:
        return f"--all-from-relay {request.relay}"
    shown = " ".join(request.names[:5])
    return shown + (f" and {len(request.names) - 5:,} more" if len(request.names) > 5 else "")
