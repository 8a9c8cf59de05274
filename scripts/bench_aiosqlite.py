"""SQLite reads from asyncio: plain sqlite3, smalldp's ReaderPool pattern, and aiosqlite.

    python scripts/bench_aiosqlite.py [--rows N] [--lookups N] [--pages N] [--reps N] [--dir DIR]

Why smalldp does not use aiosqlite (README "Dependencies"): this measures what each way of
calling SQLite costs per query.  It builds a temporary SQLite file of ``--rows`` rows shaped
like smalldp's lookups (a WITHOUT ROWID table keyed by an integer, a 40-byte blob value),
opens it read-only as ``smalldp.store.schema.open_reader`` does (``mode=ro``, autocommit,
64 MB cache, no mmap), and times three queries, ``--reps`` times each (one warm-up pass first):

* ``point``: one row by key (``--lookups`` random keys per repetition);
* ``page``: 50 rows from a key on (``--pages`` random keys per repetition);
* ``request``: a read transaction as ``smalldp.store.reader.Reader._read`` makes one for an
  XRPC call (BEGIN, PRAGMA data_version, a point, a page, COMMIT; ``--pages`` per repetition):
  one hop to a reader thread for the lot, against one or two hops per statement with aiosqlite;

through each call path:

* ``sqlite3_direct``: the same sqlite3 calls on the event loop's own thread, no hop
  (the floor: SQLite and the sqlite3 module alone);
* ``reader_pool``: ``await loop.run_in_executor(pool, fn)`` with one read-only sqlite3
  connection per worker thread, found through a ``threading.local``, as
  ``smalldp.api.readers.ReaderPool`` does (``--threads`` workers; smalldp's read_threads
  defaults to 1);
* ``aiosqlite``: ``cur = await conn.execute(...)`` then ``await cur.fetchone()`` (``fetchall``
  for a page), the way its documentation reads: two hops to its connection thread;
* ``aiosqlite_fetchall``: ``await conn.execute_fetchall(...)``, aiosqlite's one-hop call.

Every path reads the same rows through the same SQL, checked by count.

Queries are awaited one after another (one in flight), so the figures are per-query cost,
not a throughput under concurrency.  Repetitions interleave the call paths, so load from
other processes falls on all of them alike: compare ratios within one run.  Prints one JSON
object: queries/s (median, min, max) and microseconds per query (median) for each call path
and query.  Runs only when aiosqlite is installed; otherwise it prints a JSON object saying
so and exits 0.  A measurement, not a test: figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

try:
    import aiosqlite
except ImportError:  # reported, not an error: aiosqlite is not a smalldp dependency
    aiosqlite = None  # type: ignore[assignment]

POINT = "SELECT v FROM kv WHERE k = ?"
PAGE = "SELECT k, v FROM kv WHERE k >= ? ORDER BY k LIMIT 50"
CACHE_MB = 64  # smalldp's default cache_mb
VALUE_BYTES = 40


def build(path: Path, rows: int) -> None:
    """A table of ``rows`` rows: even integer keys (a point lookup always hits), 40-byte values."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
    rng = random.Random(1)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO kv VALUES(?, ?)",
                     ((2 * i, rng.randbytes(VALUE_BYTES)) for i in range(rows)))
    conn.execute("COMMIT")
    conn.close()


def open_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection as smalldp.store.schema.open_reader opens it."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA cache_size={-CACHE_MB * 1024}")
    conn.execute("PRAGMA mmap_size=0")
    return conn


Run = Callable[[str, list[int]], Awaitable[int]]  # (query, keys) -> rows read


def point(conn: sqlite3.Connection, k: int) -> int:
    return 1 if conn.execute(POINT, (k,)).fetchone() is not None else 0


def page(conn: sqlite3.Connection, k: int) -> int:
    return len(conn.execute(PAGE, (k,)).fetchall())


def request(conn: sqlite3.Connection, k: int) -> int:
    """A read transaction as smalldp.store.reader.Reader._read makes one (its queries are more)."""
    conn.execute("BEGIN")
    try:
        conn.execute("PRAGMA data_version").fetchone()
        return point(conn, k) + page(conn, k)
    finally:
        conn.execute("COMMIT")


QUERIES: dict[str, Callable[[sqlite3.Connection, int], int]] = {"point": point, "page": page, "request": request}
ROWS_PER_QUERY = {"point": 1, "page": 50, "request": 51}


def direct(conn: sqlite3.Connection) -> Run:
    async def run(query: str, keys: list[int]) -> int:  # no await inside: the loop only starts it
        fn = QUERIES[query]
        return sum(fn(conn, k) for k in keys)
    return run


class Pool:
    """smalldp.api.readers.ReaderPool's pattern: one connection per worker thread, one hop a call."""

    def __init__(self, path: Path, threads: int) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reader")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = open_ro(self.path)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    async def run(self, query: str, keys: list[int]) -> int:
        loop = asyncio.get_running_loop()
        fn, n = QUERIES[query], 0
        for k in keys:
            n += await loop.run_in_executor(self._executor, lambda: fn(self._conn(), k))
        return n

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for conn in self._all:
            conn.close()


def aio_two_hops(conn: Any) -> Run:
    """aiosqlite as documented: ``await conn.execute``, then ``await cur.fetchone()``/``fetchall()``."""
    async def run(query: str, keys: list[int]) -> int:
        n = 0
        for k in keys:
            if query == "request":
                await conn.execute("BEGIN")
                cur = await conn.execute("PRAGMA data_version")
                await cur.fetchone()
            if query in ("point", "request"):
                cur = await conn.execute(POINT, (k,))
                n += 1 if await cur.fetchone() is not None else 0
            if query in ("page", "request"):
                cur = await conn.execute(PAGE, (k,))
                n += len(await cur.fetchall())
            if query == "request":
                await conn.execute("COMMIT")
        return n
    return run


def aio_one_hop(conn: Any) -> Run:
    """aiosqlite's cheapest call, ``await conn.execute_fetchall(...)``: one hop a statement."""
    async def run(query: str, keys: list[int]) -> int:
        n = 0
        for k in keys:
            if query == "request":
                await conn.execute("BEGIN")
                await conn.execute_fetchall("PRAGMA data_version")
            if query in ("point", "request"):
                n += len(await conn.execute_fetchall(POINT, (k,)))
            if query in ("page", "request"):
                n += len(await conn.execute_fetchall(PAGE, (k,)))
            if query == "request":
                await conn.execute("COMMIT")
        return n
    return run


async def measure(path: Path, threads: int, workloads: dict[str, list[list[int]]],
                  reps: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per repetition: {call path: {query: [s, ...]}}; repetitions interleaved."""
    assert aiosqlite is not None
    conn = open_ro(path)
    pool = Pool(path, threads)
    aconn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    await aconn.execute(f"PRAGMA cache_size={-CACHE_MB * 1024}")
    await aconn.execute("PRAGMA mmap_size=0")
    paths: dict[str, Run] = {"sqlite3_direct": direct(conn), "reader_pool": pool.run,
                             "aiosqlite": aio_two_hops(aconn), "aiosqlite_fetchall": aio_one_hop(aconn)}
    times: dict[str, dict[str, list[float]]] = {name: {q: [] for q in workloads} for name in paths}
    try:
        for rep in range(reps + 1):  # repetition 0 warms caches and threads, not recorded
            for query, key_sets in workloads.items():
                keys = key_sets[rep]
                expected = ROWS_PER_QUERY[query] * len(keys)
                for name, run in paths.items():
                    started = time.perf_counter()
                    rows = await run(query, keys)
                    elapsed = time.perf_counter() - started
                    assert rows == expected, (name, query, rows, expected)
                    if rep:
                        times[name][query].append(elapsed)
    finally:
        await aconn.close()
        pool.close()
        conn.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=20_000, help="point lookups per repetition")
    parser.add_argument("--pages", type=int, default=5_000, help="page queries, and requests, per repetition")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (the median is reported)")
    parser.add_argument("--threads", type=int, default=1, help="reader_pool workers (smalldp's read_threads)")
    parser.add_argument("--dir", type=Path, default=None, help="where the SQLite file goes (default: a temp dir)")
    args = parser.parse_args()
    out: dict[str, Any] = {"python": sys.version.split()[0], "machine": platform.machine(),
                           "cpus": os.cpu_count(), "sqlite": sqlite3.sqlite_version}
    if aiosqlite is None:
        print(json.dumps({**out, "aiosqlite": "not installed: nothing measured"}, indent=1))
        return
    out.update(aiosqlite=importlib.metadata.version("aiosqlite"), rows=args.rows, reps=args.reps,
               threads=args.threads, lookups_per_rep=args.lookups, pages_per_rep=args.pages)
    rng = random.Random(2)
    counts = {"point": args.lookups, "page": args.pages, "request": args.pages}
    workloads = {query: [[2 * rng.randrange(args.rows - 50) for _ in range(count)] for _ in range(args.reps + 1)]
                 for query, count in counts.items()}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "kv.sqlite"
        started = time.perf_counter()
        build(path, args.rows)
        out["build_s"] = round(time.perf_counter() - started, 2)
        out["file_mb"] = round(path.stat().st_size / 2**20, 1)
        times = asyncio.run(measure(path, args.threads, workloads, args.reps))
    results: dict[str, dict[str, Any]] = {}
    for name, per_query in times.items():
        results[name] = {}
        for query, seconds in per_query.items():
            count = len(workloads[query][0])
            rates = sorted(count / s for s in seconds)
            results[name][query] = {"per_s_median": round(statistics.median(rates)), "per_s_min": round(rates[0]),
                                    "per_s_max": round(rates[-1]),
                                    "us_per_query_median": round(1e6 / statistics.median(rates), 2)}
    out["results"] = results
    out["us_over_direct_median"] = {  # what the call path adds to a query, in microseconds
        name: {q: round(r["us_per_query_median"] - results["sqlite3_direct"][q]["us_per_query_median"], 2)
               for q, r in per.items()}
        for name, per in results.items() if name != "sqlite3_direct"}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
