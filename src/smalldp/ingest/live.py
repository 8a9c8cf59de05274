"""Live ingest's writer side: batches from the queue, applied on the one writer thread.

Like datasette's write thread, one thread owns the read-write connection; the event loop
only hands it batches. Batches are pipelined: while the thread commits one, the loop
collects the next. Each commit carries the cursor: the time_us of the batch's last event,
the point this stream resumes from (so it may step back after a failover to an instance
whose clock is behind; replays are harmless).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from smalldp.events import Operation
from smalldp.ingest.metrics import IngestMetrics
from smalldp.ingest.queue import EventQueue
from smalldp.store.writer import Writer

log = logging.getLogger(__name__)
T = TypeVar("T")


class LiveWriter:
    """Owns the Writer and its thread for the life of `smalldp serve`."""

    def __init__(self, open_writer: Callable[[], Writer], queue: EventQueue[Operation],
                 metrics: IngestMetrics, *, batch_events: int, batch_ms: int) -> None:
        self._open_writer = open_writer
        self.queue = queue
        self.metrics = metrics
        self.batch_events = batch_events
        self.batch_s = batch_ms / 1000
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self.writer: Writer | None = None

    async def _on_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self) -> Writer:
        """Open (creating if needed) the store on the writer thread."""
        self.writer = await self._on_thread(self._open_writer)
        self.metrics.cursor = self.writer.cursor
        return self.writer

    def _apply(self, batch: list[Operation]) -> None:
        assert self.writer is not None
        cursor = batch[-1].time_us
        stats = self.writer.apply(batch, cursor=cursor)
        self.metrics.in_flight = 0
        self.metrics.committed(len(batch), cursor, stats.links_added, stats.links_removed)

    async def run(self, reading_done: asyncio.Event) -> None:
        """Commit batches until ``reading_done`` is set and the queue is empty."""
        queue, metrics = self.queue, self.metrics
        pending: asyncio.Future[None] | None = None
        try:
            while True:
                wait = 0.0 if reading_done.is_set() else self.batch_s
                batch = await queue.take(self.batch_events, wait)
                metrics.queue_depth = len(queue)
                if pending is not None and (batch or pending.done()):
                    await pending
                    pending = None
                if batch:
                    metrics.in_flight = len(batch)
                    pending = asyncio.get_running_loop().run_in_executor(
                        self._executor, self._apply, batch)
                elif reading_done.is_set() and not len(queue):
                    break
            if pending is not None:
                await pending
        except Exception as exc:
            metrics.state = "failed"
            metrics.last_error = f"writer: {type(exc).__name__}: {exc}"
            log.exception("the writer failed; ingest stops")
            raise

    def stop_merging(self) -> None:
        """Shutdown has begun: no new merges, abort a running one (thread-safe)."""
        if self.writer is not None:
            self.writer.stop_merging()

    async def close(self) -> None:
        """Close the store on its thread, then the thread."""
        if self.writer is not None:
            await self._on_thread(self.writer.close)
            self.writer = None
        self._executor.shutdown(wait=True)
