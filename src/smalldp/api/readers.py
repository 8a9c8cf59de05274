"""A pool of read-only Readers, one per worker thread, so queries never block the event loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from aiohttp import web

from smalldp.appview.workers import RpcWorkers
from smalldp.store.dataplane import DataPlaneReader
from smalldp.store.reader import Reader
from smalldp.store.runfilter import RunFilters
from smalldp.store.summaries import SummaryCache

T = TypeVar("T")


class ReaderPool:
    """Runs reader functions on worker threads, each with its own connection.

    Besides its ``threads``, the pool keeps one *bulk* thread for work known to be big
    (``run(..., bulk=True)``: an AppView batch of hundreds of posts, a thread walk). On the
    same threads it would hold up every small query queued behind it for its whole run
    (a thousand-post thread's hydration takes hundreds of ms); on its own thread the two
    take turns at the interpreter instead, every switch interval."""

    def __init__(self, path: Path, threads: int = 4, cache_mb: int = 64, mmap_mb: int = 0) -> None:
        self.path = path
        self._cache_mb = cache_mb
        self._mmap_mb = mmap_mb
        self._local = threading.local()
        self._all: list[Reader] = []
        self._lock = threading.Lock()
        self._summaries = SummaryCache()  # shared: every thread profits from a summary made once
        self._filters = RunFilters()  # shared too: each run's key filter loaded once
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reader")
        self._bulk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reader_bulk")

    def _reader(self) -> Reader:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = DataPlaneReader(self.path, summaries=self._summaries, filters=self._filters,
                                     cache_mb=self._cache_mb, mmap_mb=self._mmap_mb)
            self._local.reader = reader
            with self._lock:
                self._all.append(reader)
        return reader

    async def run(self, fn: Callable[[Reader], T], *, bulk: bool = False) -> T:
        """Run ``fn(reader)`` on a worker thread (``bulk``: on the bulk thread)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._bulk if bulk else self._executor, lambda: fn(self._reader()))

    def close(self) -> None:
        """Stop the threads and close every connection."""
        self._executor.shutdown(wait=True)
        self._bulk.shutdown(wait=True)
        with self._lock:
            for reader in self._all:
                reader.close()
            self._all.clear()


READERS = web.AppKey("readers", ReaderPool)  # where the application keeps its pool
# the RPC worker processes (rpc_processes), when serve has them: the DataPlane's XRPC
# methods and bsky.Service read the store there
WORKERS = web.AppKey("rpc_workers", RpcWorkers)


async def read_store(pool: ReaderPool, workers: RpcWorkers | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(reader, *args)`` with a DataPlaneReader: in a worker process when there are
    ``workers`` (then ``fn`` is a module-level function), else on one of ``pool``'s threads."""
    if workers is not None:
        return await workers.read(fn, *args)
    return await pool.run(lambda reader: fn(reader, *args))
