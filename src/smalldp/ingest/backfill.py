"""`smalldp backfill`: whole repos (getRepo CARs) applied to the store (issue 12 part 2).

Per repo: resolve the name to its PDS and fetch the CAR into a file (ingest/repo_fetch.py),
read it with ``repo_car`` (streamed, CIDs checked, bounded memory), and apply every record
as a put at the commit's rev R, ``batch_records`` at a time through ``Writer.apply``; the
operations are built by ``events.commit_operation``, as live ones are (same links, derived
links).  Their ``time_us`` is when the CAR's download began.  Then ``Writer.reconcile``
marks the repo done, in one transaction with its state (store/backfill_state.py).

**Exactly-once with live ingest** (design.md property 5), from the writer's rules:

* a put applies only over a stored rev below R: what live ingest applied at a newer rev
  stays, and a stored older copy of the same record gets rev R;
* afterwards the account's rows still below R are the records the CAR no longer has: when
  the store had commits of the account before (``Writer.has_commits``), a reconcile entry
  of the purge sweep removes them within one lap (until then they still show: approximate);
* commits up to R arriving later are ignored (the CAR holds their effect).

So applying a repo again changes nothing, which is what makes resuming simple: a backfill
killed at any moment redoes the repos it had not marked done.

**Concurrency.**  ``concurrency`` fetches run at once on the event loop; CARs are read and
turned into operations on one backfill thread, so the loop keeps reading sockets while a
big repo is applied, and at most ``concurrency`` CARs wait on disk.  Store work (state,
applying, reconciling) goes through a ``WriterRunner``: with serve stopped, ``DirectWriter``
(the backfill thread is the writer's only thread); through a running serve, its ingest
thread, between live batches (ingest/backfill_service.py).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO, TypeVar

import msgspec

from smalldp.events import MalformedEvent, Operation, commit_operation, valid_did
from smalldp.ingest.repo_fetch import FetchError, ListedRepo, RepoFetcher
from smalldp.repo_car import RepoError, open_repo
from smalldp.store import backfill_state as state
from smalldp.store.writer import Writer
from smalldp.tid import tid_to_int
from smalldp.verify import SigningKey, VerifyError, signing_key, verify_commit_block

log = logging.getLogger(__name__)
_T = TypeVar("_T")
FOLLOW = "app.bsky.graph.follow"
CHUNK_NAMES = 1000  # names queued (and checked against the table) at a time
LOGGED_FAILURES = 50  # failures logged one by one; --status has them all


@dataclass
class BackfillSummary:
    """Totals of one backfill run."""

    repos: int = 0  # names taken up this run (skipped ones included)
    done: int = 0
    failed: int = 0
    skipped: int = 0  # already done by an earlier run
    records: int = 0
    bad_records: int = 0  # records in a repo's tree whose block was absent or not atproto data
    bytes: int = 0
    retries: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (name, reason), the first 1000

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BackfillSummary:
        """The summary ``as_dict`` gave (a running serve's, read by `smalldp backfill`)."""
        return cls(repos=int(values["repos"]), done=int(values["done"]), failed=int(values["failed"]),
                   skipped=int(values["skipped"]), records=int(values["records"]),
                   bad_records=int(values["bad_records"]), bytes=int(values["bytes"]),
                   retries=int(values["retries"]), seconds=float(values["seconds"]),
                   failures=[(str(f["did"]), str(f["reason"])) for f in values["failures"]])

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        return {"repos": self.repos, "done": self.done, "failed": self.failed, "skipped": self.skipped,
                "records": self.records, "bad_records": self.bad_records, "bytes": self.bytes,
                "retries": self.retries, "seconds": round(self.seconds, 3),
                "records_per_s": round(self.records_per_s, 1),
                "failures": [{"did": name, "reason": reason} for name, reason in self.failures]}


class BackfillProgress:
    """Repos done / total, records/s, MB, ETA: one redrawn line on a terminal, else a plain
    line every ``plain_interval`` seconds (logs of a service or a CI run)."""

    def __init__(self, stream: TextIO = sys.stderr, interval: float = 0.5, plain_interval: float = 10.0) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = interval if self.tty else plain_interval
        self._last = 0.0

    def update(self, summary: BackfillSummary, total: int, listing: bool, elapsed: float,
               force: bool = False) -> None:
        """Show the figures after ``elapsed`` seconds of the run (at most every interval,
        unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        elapsed = max(elapsed, 1e-9)
        finished = summary.done + summary.failed + summary.skipped
        eta = ""
        if not listing and finished and total > finished:
            eta = f"  ETA {_duration((total - finished) * elapsed / finished)}"
        line = (f"backfill: {finished:,}/{total:,}{'+' if listing else ''} repos "
                f"({summary.failed:,} failed)  {summary.records:,} records  "
                f"{summary.records / elapsed:,.0f} records/s  {summary.bytes / 1e6:,.1f} MB{eta}")
        if self.tty:
            self.stream.write(f"\r{line}   ")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        """End the progress line."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class WriterRunner(Protocol):
    """Where the store's writes run."""

    def run(self, job: Callable[[Writer], _T]) -> _T:
        """``job(writer)`` on the writer's thread; blocks the caller until it has run."""
        ...


class DirectWriter:
    """With serve stopped: the backfill's own writer, used on the backfill thread itself."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def run(self, job: Callable[[Writer], _T]) -> _T:
        """Run ``job`` here and now."""
        return job(self.writer)


class BackfillStopped(RuntimeError):
    """The run was stopped (cancelled, or the service is stopping) while a repo was applied."""


class Backfill:
    """One `smalldp backfill` run over the store's writer (through a runner) and a fetcher."""

    def __init__(self, runner: WriterRunner, fetcher: RepoFetcher, *, concurrency: int = 4,
                 batch_records: int = 5000, refetch: bool = False, verify: bool = False,
                 progress: BackfillProgress | None = None) -> None:
        self.runner = runner
        self.verify = verify  # check each repo's commit signature (verify_commits)
        self.fetcher = fetcher
        self.concurrency = concurrency
        self.batch_records = batch_records
        self.refetch = refetch
        self.progress = progress
        self.summary = BackfillSummary()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="backfill")
        self._stopping = threading.Event()
        self.total = 0
        self.listing = False
        self._started = time.monotonic()

    @property
    def elapsed(self) -> float:
        """Seconds since the run began."""
        return time.monotonic() - self._started

    async def _store(self, job: Callable[[Writer], _T]) -> _T:
        """Run ``job(writer)`` through the runner, from the backfill thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.runner.run, job)

    # --- what to backfill ------------------------------------------------------------------------

    async def run_names(self, names: Iterable[str]) -> BackfillSummary:
        """Backfill DIDs and handles."""
        async def chunks() -> AsyncIterator[list[tuple[str, str | None]]]:
            batch = list(names)
            for start in range(0, len(batch), CHUNK_NAMES):
                yield [(name, None) for name in batch[start:start + CHUNK_NAMES]]
        return await self._run(chunks())

    async def run_follows_of(self, root: str) -> BackfillSummary:
        """Backfill ``root`` and then every account its repo follows.  The root is fetched
        even when done before: its follows are read from its CAR (a resumed run needs them)."""
        async def chunks() -> AsyncIterator[list[tuple[str, str | None]]]:
            follows: list[str] = []
            self.summary.repos += 1
            self.total += 1
            root_did = await self._one(root, None, follows, force=True)
            self.listing = False
            subjects = [did for did in dict.fromkeys(follows) if did != root_did]
            for start in range(0, len(subjects), CHUNK_NAMES):
                yield [(did, None) for did in subjects[start:start + CHUNK_NAMES]]
        self.listing = True
        return await self._run(chunks())

    async def run_relay(self, relay: str) -> BackfillSummary:
        """Backfill every repo a relay lists (listRepos, paged); inactive ones are recorded
        as failed with their status, without a fetch."""
        async def chunks() -> AsyncIterator[list[tuple[str, str | None]]]:
            page: list[ListedRepo]
            async for page in self.fetcher.list_repos(relay):
                yield [(repo.did, repo.inactive) for repo in page]
            self.listing = False
        self.listing = True
        return await self._run(chunks())

    # --- the run -------------------------------------------------------------------------------

    async def _run(self, chunks: AsyncIterator[list[tuple[str, str | None]]]) -> BackfillSummary:
        queue: asyncio.Queue[tuple[str, str | None] | None] = asyncio.Queue(maxsize=2 * self.concurrency)
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(self.concurrency)]
        try:
            try:
                async for chunk in chunks:
                    known = dict(chunk)
                    # DIDs are queued a chunk at a time (one transaction, done ones skipped);
                    # handles once they are DIDs (_one)
                    dids = [name for name in known if valid_did(name)]
                    todo = set(await self._store(lambda w: state.queue(w.conn, dids, self.refetch)))
                    self.summary.repos += len(known)
                    self.summary.skipped += len(dids) - len(todo)
                    self.total += len(known)
                    for name in known:
                        if name in todo or not valid_did(name):
                            await queue.put((name, known[name]))
            except FetchError as exc:  # the listing itself failed (listRepos): what was listed goes on
                self._fail_run(f"listing failed: {exc.reason}")
            finally:
                self.listing = False
                for _ in workers:
                    await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            # A repo being applied stops at its next batch; wait for it without holding up
            # the loop (a running serve answers queries on it).
            self._stopping.set()
            await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)
        self.summary.seconds = time.monotonic() - self._started
        self.summary.retries = self.fetcher.retried
        self._show(force=True)
        if self.progress is not None:
            self.progress.done()
        return self.summary

    def _fail_run(self, reason: str) -> None:
        log.error("backfill: %s", reason)
        self.summary.failures.append(("(listing)", reason))

    async def _worker(self, queue: asyncio.Queue[tuple[str, str | None] | None]) -> None:
        while (item := await queue.get()) is not None:
            await self._one(*item, None)

    def _show(self, force: bool = False) -> None:
        self.summary.seconds = self.elapsed
        if self.progress is not None:
            self.progress.update(self.summary, self.total, self.listing, self.elapsed, force)

    async def _one(self, name: str, known_failure: str | None, follows: list[str] | None,
                   force: bool = False) -> str:
        """Backfill one repo (a DID already queued, or a handle, or with ``force`` any name
        and even if done); a failure is recorded against it and the run goes on.  Returns
        the DID (the name when it did not resolve)."""
        did = name
        try:
            if known_failure is not None:
                raise FetchError(known_failure)
            if not valid_did(name):
                did = await self.fetcher.resolve_handle(name)
            if force or did != name:
                refetch = self.refetch or force
                todo = await self._store(lambda w: state.queue(w.conn, [did], refetch))
                if not todo:
                    self.summary.skipped += 1
                    return did
            fetched = await self.fetcher.fetch_repo(did)
            try:
                key = _signing_key(did, fetched.document) if self.verify else None
                records, bad = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._apply, did, fetched.path, fetched.size, fetched.fetched_us, follows, key)
            finally:
                fetched.path.unlink(missing_ok=True)
            self.summary.done += 1
            self.summary.records += records
            self.summary.bad_records += bad
            self.summary.bytes += fetched.size
        except (FetchError, RepoError) as exc:
            reason = exc.reason if isinstance(exc, FetchError) else f"{type(exc).__name__}: {exc}"
            self.summary.failed += 1
            if len(self.summary.failures) < 1000:
                self.summary.failures.append((did, reason))
            if self.summary.failed <= LOGGED_FAILURES:
                log.warning("backfill %s: %s", did, reason)
            await self._store(lambda w: _failed(w, did, reason))
        self._show()
        return did

    # --- on the backfill thread ----------------------------------------------------------------

    def _apply(self, did: str, path: Any, size: int, time_us: int,
               follows: list[str] | None, key: SigningKey | None) -> tuple[int, int]:
        """Apply one fetched repo and mark it done; returns (records applied, bad records).
        With ``key``, nothing is applied unless the commit is signed with it."""
        run = self.runner.run
        with open_repo(path) as repo:
            commit = repo.commit
            if commit.did != did:
                raise FetchError(f"the CAR is the repo of {commit.did[:80]}, not of {did}")
            if key is not None:
                try:
                    verify_commit_block(repo.commit_block(), key, did, commit.rev)
                except VerifyError as exc:
                    raise FetchError(f"the commit does not verify ({exc})") from None
            rev = tid_to_int(commit.rev)
            if rev is None:
                raise FetchError(f"the commit's rev {commit.rev[:40]!r} is not a TID")
            stale = run(lambda w: _begin(w, did, rev))
            ops: list[Operation] = []
            records = bad = 0
            for record in repo.records():
                if record.json is None:
                    bad += 1
                    continue
                try:
                    op = commit_operation(did, time_us, commit.rev, "create", record.collection,
                                          record.rkey, msgspec.Raw(record.json), record.cid)
                except MalformedEvent:
                    bad += 1
                    continue
                if follows is not None and record.collection == FOLLOW:
                    subject = op.record.get("subject")  # type: ignore[union-attr]
                    if isinstance(subject, str) and valid_did(subject):
                        follows.append(subject)
                ops.append(op)
                if len(ops) >= self.batch_records:
                    self._write(ops)
                    records += len(ops)
                    ops = []
            if ops:
                self._write(ops)
                records += len(ops)
            done = state.done_statement(did, commit.rev, records, size)
            run(lambda w: w.reconcile(did, rev, stale, [done]))
        return records, bad

    def _write(self, ops: list[Operation]) -> None:
        if self._stopping.is_set():
            raise BackfillStopped("the backfill was stopped")
        self.runner.run(lambda w: w.apply(ops))


def _signing_key(did: str, document: Mapping[str, Any]) -> SigningKey:
    """``did``'s signing key from its DID document (FetchError when it has none usable)."""
    try:
        return signing_key(document)
    except VerifyError as exc:
        raise FetchError(f"no signing key to verify the commit of {did} with ({exc})") from None


def _begin(writer: Writer, did: str, rev: int) -> bool:
    """A repo's apply begins: watched by the writer, marked running; whether it is stale."""
    stale = writer.watch_backfill(did, rev)
    state.mark_running(writer.conn, did, stale)
    return stale


def _failed(writer: Writer, did: str, reason: str) -> None:
    writer.unwatch_backfill(did)
    state.mark_failed(writer.conn, did, reason)
