"""Live ingest on its own thread: websocket → decode → batch → one transaction, in order.

One thread, with its own event loop, runs the websocket client (Jetstream's, or a relay
firehose's: ingest/stream.py's interface) and the store's writer.
Decoded events collect in a batch; a full batch, or any batch once `batch_ms` have gone
since the last commit, is applied right there, synchronously.  Counting from the last
commit (not from the batch's first event) bounds the time between commits by about
`batch_ms` plus one batch's apply, however long the merge slices after a commit or the
pauses for queries took. While it commits nothing reads the socket, so TCP pushes back
on the server: the batch is the bounded buffer, and nothing is ever dropped.

Why one thread: in CPython, receive+decode on the HTTP loop and apply on a writer thread
fight over the GIL. Measured on 200k events, that split caught up at ~65% of `import`'s
rate and queries waited on both threads; one ingest thread does the same work in sequence,
like `import`, and leaves the main loop to HTTP.

Each commit carries the cursor: the time_us of the batch's last event, the point this
stream resumes from (it may step back after a failover to an instance whose clock is
behind; replays are harmless), and whatever else the client resumes from (a relay's seq,
`commit_meta`), in the same transaction.

Disk space (ingest/diskguard.py): before each commit the guard compares the free space
with the floor. Below it, or after a commit failed for lack of space (rolled back by
SQLite, the batch kept), ingest pauses where it stands: the client's sink blocks this
thread, so the socket is not read and TCP pushes back, exactly as during a long commit;
the HTTP side, on the main thread, keeps answering. The thread wakes every
PAUSE_TICK_S to notice a stop and to show the watchdog it is alive, and the guard
looks at the disk every few seconds; once there is room again the kept batch commits
and reading goes on. A stop while paused commits nothing more: what was received is
replayed from the committed cursor at the next start.

Other writes (a backfill handed to the running service): ``submit`` queues a function of
the writer, run on this thread between batches (after a commit, or on the quiet-stream
tick), each in its own transaction, so the store keeps one writer and live batches wait
at most one job; a stop fails the jobs still queued (``IngestStopped``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from smalldp.events import Operation
from smalldp.ingest import lograte
from smalldp.ingest.diskguard import DiskGuard, is_disk_full
from smalldp.ingest.firehose import FirehoseClient
from smalldp.ingest.jetstream import ClientOptions, Filters, JetstreamClient
from smalldp.ingest.metrics import IngestMetrics
from smalldp.ingest.stream import StreamClient
from smalldp.priority import QueryGate
from smalldp.store.schema import WAL_SIZE_LIMIT
from smalldp.store.writer import Writer

log = logging.getLogger(__name__)
_T = TypeVar("_T")

PAUSE_TICK_S = 0.5  # while paused: how often the thread checks for a stop and says it is alive
# How far past a batch's due time queries may still hold ingest up (priority.QueryGate):
# with batch_ms 1000, commits stay within about 2 s of each other under any query load.
COMMIT_SLACK_S = 0.25
# While queries come (one in the last BUSY_WINDOW_S), merges get at most BUSY_MERGE_S after
# a batch (at least one slice) instead of merge_ms: in steady live ingest merges need a
# fraction of that (about 15 slices a minute at 1,500 events/s), and every millisecond of
# their Python is one the queries wait for at the GIL (the AppView benchmark at 10M: the
# ingest thread 38% busy, half of it merging). A backlog of merges still drains, more
# slowly, and at full speed whenever queries pause.
BUSY_WINDOW_S = 1.0
BUSY_MERGE_S = 0.05
# The WAL is truncated back to WAL_SIZE_LIMIT whenever SQLite restarts it (after a complete
# checkpoint). If readers kept it from restarting (checkpoint starvation) it would grow
# with every commit: past this size, force a TRUNCATE checkpoint (it waits up to the busy
# timeout for readers to finish their short transactions), at most every WAL_RETRY_S.
WAL_MAX_BYTES = 4 * WAL_SIZE_LIMIT
WAL_RETRY_S = 60.0


class WriterFailed(RuntimeError):
    """The store could not apply a batch; ingest stops (the service exits non-zero)."""


class IngestStopped(RuntimeError):
    """A job submitted to the ingest thread did not run: ingest stopped (or failed) first."""


JOB_BUDGET_S = 0.25  # after a commit, queued jobs run for about this long (at least one runs)


class LiveIngest:
    """The ingest thread: owns the Writer and the websocket client for one `smalldp serve`."""

    def __init__(self, open_writer: Callable[[], Writer], options: ClientOptions,
                 metrics: IngestMetrics, *, batch_events: int, batch_ms: int, merge_ms: int = 250,
                 v1_dictionary: Callable[[], bytes | None] | None = None,
                 data_dir: Path = Path("."), query_gate: QueryGate | None = None,
                 disk_guard: DiskGuard | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._open_writer = open_writer
        self.options = options
        self.metrics = metrics
        self.batch_events = batch_events
        self.batch_s = batch_ms / 1000
        self.merge_s = merge_ms / 1000
        self._v1_dictionary = v1_dictionary
        self._data_dir = data_dir
        self._gate = query_gate
        # Without settings (tests, tools): no floor, but a full disk still pauses, not fails.
        self.guard = disk_guard or DiskGuard(data_dir, min_free_mb=0, min_free_percent=0)
        self._next_wal_truncate = 0.0
        self.writer: Writer | None = None
        self.client: StreamClient | None = None
        self.error: BaseException | None = None
        self._failure: WriterFailed | None = None
        self._batch: list[Operation] = []
        self._meta_committed: dict[str, object] = {}  # the client's commit_meta() as last committed
        # A merge slice failed for lack of space: it is retried before the next batch, so
        # that while the guard pauses ingest nothing is committed, whichever write found
        # the disk full (a small batch would often fit where the merge did not).
        self._merge_pending = False
        self._clock = clock
        self._due = clock() + self.batch_s  # a batch commits by then: batch_ms after the last commit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._opened = threading.Event()
        self._done = threading.Event()
        self._jobs: collections.deque[tuple[Callable[[Writer], Any], concurrent.futures.Future[Any]]] = \
            collections.deque()
        self._jobs_lock = threading.Lock()
        self._jobs_closed = False
        self._thread = threading.Thread(target=self._main, name="ingest", daemon=True)

    # ------------------------------------------------------------ from the service (any thread)

    def start(self) -> None:
        """Start the thread; `wait_open` then says when the store is open."""
        self._thread.start()

    def wait_open(self, timeout: float | None = None) -> bool:
        """Block until the store is open (or opening failed: see `error`)."""
        return self._opened.wait(timeout)

    def wait_done(self, timeout: float | None = None) -> bool:
        """Block until the thread has finished (stopped, or failed: see `error`)."""
        return self._done.wait(timeout)

    def pending(self) -> int:
        """Events received and not committed yet."""
        return len(self._batch)

    def stop(self) -> None:
        """Stop reading, commit the batch, close the store; a running merge is aborted."""
        self._stop_requested.set()
        if self.writer is not None:
            self.writer.stop_merging()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop has already finished

    def submit(self, job: Callable[[Writer], _T]) -> concurrent.futures.Future[_T]:
        """Run ``job(writer)`` on the ingest thread between batches; its future has the
        result, or the exception (``IngestStopped`` when ingest ended before it ran)."""
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        with self._jobs_lock:
            if self._jobs_closed:
                future.set_exception(IngestStopped("live ingest has stopped"))
                return future
            self._jobs.append((job, future))
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._run_jobs)
            except RuntimeError:
                pass  # the loop has finished: _close_jobs fails the job
        return future

    def update_filters(self, filters: Filters) -> None:
        """Follow new filters (sent on the open connection where the wire allows)."""
        loop, client = self._loop, self.client
        if loop is None or client is None:
            return
        future = asyncio.run_coroutine_threadsafe(client.update_filters(filters), loop)
        future.add_done_callback(_log_failure)

    # ------------------------------------------------------------ the thread

    def _main(self) -> None:
        lograte.install()
        try:
            asyncio.run(self._run())
            self.metrics.state = "stopped"
        except BaseException as exc:  # noqa: BLE001 - reported through `error` and the exit status
            self.error = exc
            self.metrics.state = "failed"
            self.metrics.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("live ingest failed")
        finally:
            self._close_jobs()  # also when the store never opened
            self._opened.set()
            self._done.set()
            lograte.REPEATS.flush(force=True)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        writer = self.writer = self._open_writer()
        self._due = self._clock() + self.batch_s  # opening (and migrating) may take a while
        if self._gate is not None:
            writer.pause = self._gate.pause
            self._gate.committed(time.monotonic() + self.batch_s + COMMIT_SLACK_S)
        try:
            self.metrics.cursor = writer.cursor
            self.client = self._client(writer)
            self._opened.set()
            self._run_jobs()  # submitted while the store was opening
            if self._stop_requested.is_set():
                self._stop.set()
            flusher = asyncio.create_task(self._flush_when_old())
            try:
                await self.client.run(self._stop)
            finally:
                flusher.cancel()
            if self._failure is not None:
                raise self._failure
            if self._flush(block=False):  # what was received before the stop
                self._commit_position(writer, force=True)
            else:
                log.warning("stopped while paused (%s): %d received events not committed; they are "
                            "received again from the committed cursor at the next start",
                            self.guard.reason, len(self._batch))
        finally:
            self._close_jobs()
            self._close(writer)

    def _client(self, writer: Writer) -> StreamClient:
        if self.options.wire == "firehose":
            return FirehoseClient(self.options, self._deliver, self.metrics, committed_cursor=writer.cursor,
                                  committed_meta=writer.meta)
        return JetstreamClient(self.options, self._deliver, self.metrics, committed_cursor=writer.cursor,
                               v1_dictionary=self._v1_dictionary, data_dir=self._data_dir)

    def _run_jobs(self, budget_s: float = JOB_BUDGET_S) -> None:
        """Run queued jobs for about ``budget_s`` (at least one), unless the disk guard holds
        writes back; a job that finds no room is kept and runs again later."""
        writer = self.writer
        if writer is None or self._stop_requested.is_set():
            return
        deadline = time.monotonic() + budget_s
        while self._jobs and time.monotonic() < deadline:
            if not self._room(block=False):
                return
            job, future = self._jobs[0]
            if future.cancelled():
                self._jobs.popleft()
                continue
            try:
                result = job(writer)
            except Exception as exc:
                if is_disk_full(exc):  # rolled back: kept, tried again once there is room
                    self.guard.commit_failed(exc)
                    self._show_guard()
                    return
                self._jobs.popleft()
                future.set_exception(exc)
                continue
            self._jobs.popleft()
            future.set_result(result)

    def _close_jobs(self) -> None:
        """Fail what is still queued: ingest is stopping."""
        with self._jobs_lock:
            self._jobs_closed = True
            jobs, self._jobs = list(self._jobs), collections.deque()
        for _, future in jobs:
            if not future.done():
                future.set_exception(IngestStopped("live ingest stopped before the job ran"))

    def _close(self, writer: Writer) -> None:
        try:
            writer.close()
            log.info("cursor %s committed", self.metrics.cursor)
        except Exception as exc:
            if not is_disk_full(exc):
                log.exception("closing the store failed")
                return
            # The final checkpoint (or purge) found no room: the WAL stays and SQLite reads
            # it back at the next start; nothing committed is lost.
            log.warning("store closed without its final checkpoint (disk full: %s)", exc)
            try:
                writer.conn.close()
            except sqlite3.Error:
                pass

    def _deliver(self, op: Operation) -> None:
        """The client's sink: add to the batch; apply it when full."""
        gate = self._gate
        if gate is not None and gate.active:
            gate.pause()
        batch = self._batch
        batch.append(op)
        self.metrics.queue_depth = len(batch)
        # Due by time here too, not only in _flush_when_old: while events keep coming (a
        # backlog) the loop may not get round to that task for a long while.
        # Paused: block here, so that nothing more is read until there is room.
        if len(batch) >= self.batch_events or self.guard.paused or self._clock() >= self._due:
            self._flush(block=True)

    def _flush(self, *, block: bool) -> bool:
        """Commit the batch; returns False when it is still pending (no room yet, and
        ``block`` is False or a stop came). A commit that fails for lack of space rolled
        back: the batch is kept and committed again once the guard allows."""
        writer = self.writer
        while self._batch and writer is not None:
            if not self._room(block):
                return False
            if self._merge_pending:
                self._merge(writer)
                if self._merge_pending:  # no room yet: the guard paused again
                    continue
            batch = self._batch
            cursor = batch[-1].time_us
            meta = self.client.commit_meta() if self.client is not None else None
            try:
                stats = writer.apply(batch, cursor=cursor, meta=meta)
            except Exception as exc:
                if not is_disk_full(exc):
                    raise WriterFailed(f"{type(exc).__name__}: {exc}") from exc
                self.guard.commit_failed(exc)
                self._show_guard()
                # A writer that merges inside apply() (merge_slices != 0) commits first: a
                # merge slice that found no room fails after the batch is in. Its cursor then
                # says so; committing the batch again would be a harmless replay, but counted
                # twice in the metrics.
                if writer.cursor == cursor and self.metrics.cursor != cursor:
                    self._committed(batch, cursor, 0, 0)
                    return True
                continue
            self.guard.committed()
            self._meta_committed = meta or {}
            self._committed(batch, cursor, stats.links_added, stats.links_removed)
            self._merge(writer)
            self._run_jobs()
            self._bound_wal(writer)
            return True
        return True

    def _commit_position(self, writer: Writer, *, force: bool = False) -> None:
        """With no batch pending, commit the client's position alone when it has moved past
        frames that delivered nothing (a relay's #sync or skipped frames, commits the
        filters leave out), batch_ms after the last commit (``force``: now): else a
        restart would receive all of them again, hours of them on a filtered firehose."""
        client = self.client
        if client is None or self._batch:
            return
        meta = client.commit_meta()
        if not meta or meta == self._meta_committed or (not force and self._clock() < self._due):
            return
        if not self._room(block=False):
            return
        try:
            writer.apply([], meta=meta)
        except Exception as exc:
            if not is_disk_full(exc):
                raise WriterFailed(f"{type(exc).__name__}: {exc}") from exc
            self.guard.commit_failed(exc)
            self._show_guard()
            return
        self._meta_committed = meta
        self._due = self._clock() + self.batch_s

    def _merge(self, writer: Writer) -> None:
        """Merge slices between batches, for at most merge_ms: a merge of any size goes on
        over many batches, so no commit waits long behind one.  A slice that finds no room
        rolls back and is done again later, before the next batch; the disk guard pauses
        ingest meanwhile."""
        if writer.merge_slices != 0:
            return  # this writer merges inside apply()
        try:
            writer.merge_steps(budget_s=self.merge_budget())
            self._merge_pending = False
        except Exception as exc:
            if not is_disk_full(exc):
                raise WriterFailed(f"merge: {type(exc).__name__}: {exc}") from exc
            self._merge_pending = True
            self.guard.commit_failed(exc)
            self._show_guard()
        index, metrics = writer.backlinks, self.metrics
        metrics.merge_slices, metrics.merge_seconds = index.slices_done, index.slice_seconds
        metrics.merge_slice_max_s = index.slice_seconds_max
        metrics.merges_under_way = len(index.merges_under_way)

    def merge_budget(self) -> float:
        """Seconds of merge slices after a batch: merge_ms, or BUSY_MERGE_S at most while
        queries come (one in flight, or started within BUSY_WINDOW_S)."""
        if self._gate is not None and self._gate.busy(BUSY_WINDOW_S):
            return min(self.merge_s, BUSY_MERGE_S)
        return self.merge_s

    def _committed(self, batch: list[Operation], cursor: int, added: int, removed: int) -> None:
        self._due = self._clock() + self.batch_s
        if self._gate is not None:  # queries may delay the next commit by COMMIT_SLACK_S at most
            self._gate.committed(time.monotonic() + self.batch_s + COMMIT_SLACK_S)
        self._batch = []
        self.metrics.queue_depth = 0
        self.metrics.committed(len(batch), cursor, added, removed)

    def _room(self, block: bool) -> bool:
        """Whether the guard lets a commit go ahead; with ``block``, wait until it does
        (or a stop is requested)."""
        while True:
            allowed = self.guard.check()
            self._show_guard()
            if allowed:
                return True
            if not block or self._stop_requested.is_set():
                return False
            self._stop_requested.wait(PAUSE_TICK_S)

    def _show_guard(self) -> None:
        """Copy the guard's state into the metrics (read by the HTTP side)."""
        guard, metrics = self.guard, self.metrics
        metrics.paused_tick = time.monotonic()
        metrics.paused_reason = guard.reason
        metrics.disk_pauses = guard.pauses
        metrics.disk_full_failures = guard.full_failures
        metrics.disk_floor_bytes = guard.floor
        if guard.last is not None:
            metrics.disk_free_bytes = guard.last.free
            metrics.disk_total_bytes = guard.last.total

    def _bound_wal(self, writer: Writer) -> None:
        """Keep the WAL bounded even if readers starve checkpoints (see WAL_MAX_BYTES)."""
        try:
            size = os.stat(f"{writer.path}-wal").st_size
        except OSError:
            return
        self.metrics.wal_bytes = size
        now = time.monotonic()
        if size <= WAL_MAX_BYTES or now < self._next_wal_truncate:
            return
        self._next_wal_truncate = now + WAL_RETRY_S
        try:
            busy = writer.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:  # e.g. no room to grow the database file: try later
            log.warning("WAL of %d MB not checkpointed: %s", size >> 20, exc)
            return
        if busy:
            log.warning("WAL of %d MB not truncated: readers kept it busy; trying again in %.0f s",
                        size >> 20, WAL_RETRY_S)
        else:
            self.metrics.wal_bytes = 0

    async def _flush_when_old(self) -> None:
        """Commit a partial batch once `batch_ms` have gone since the last commit (a quiet or
        filtered stream),
        or, while paused, as soon as the guard sees room again (without blocking the
        loop: nothing is being received that would need it to); with nothing to commit,
        go on with merges."""
        while True:
            await asyncio.sleep(max(0.01, min(self.batch_s / 4, PAUSE_TICK_S)))
            lograte.REPEATS.flush()
            try:
                if self._batch and (self.guard.paused or self._clock() >= self._due):
                    self._flush(block=False)
                elif not self._batch and self.writer is not None and not self.guard.paused:
                    self._commit_position(self.writer)
                    self._run_jobs()
                    self._merge(self.writer)  # a quiet stream: merges go on between ticks
            except WriterFailed as exc:
                self._failure = exc
                assert self._stop is not None
                self._stop.set()
                return


def _log_failure(future: object) -> None:
    exc = future.exception() if hasattr(future, "exception") else None  # type: ignore[union-attr]
    if exc is not None:
        log.warning("new filters not sent (%s); the next connection uses them", exc)
