"""The status page at `/` and the figures it shows, which /xrpc/_health carries.

`/` is the page for browsers (an Accept header that prefers HTML); other clients get
Constellation's JSON hello from api/hello.py.

The page (static/status.html, .css, .js: plain files, no build step, nothing from another
origin) fetches /xrpc/_health every few seconds and draws what it finds there, so
everything it shows can be had as JSON too. This module adds to _health what the page
needs beyond the ingest and store basics, each kept cheap because browsers left open
poll it forever:

* ``events_per_s_history``: per-minute averages of committed events/s over the last
  hour, sampled every second on the HTTP side from live ingest's ``events`` counter (a
  bounded ring: 59 closed minutes and the current one).
* ``disk`` and ``file_bytes`` / ``wal_bytes``: one statvfs and two stats.
* ``accounts``, ``records`` and ``top_targets_last_hour``: SQL on a connection and a
  thread of their own (never a query thread), refreshed at most every REFRESH_S and
  served from that cache meanwhile. ``accounts`` is ``max(aid)``, an index lookup.
  ``records`` comes from the meta counter ``records`` when the writer keeps one, else
  from a count of the forward index run at most once per max(RECORDS_MIN_S, 100 times
  its last duration), so it costs at most 1% of one thread however big the store.
  The top targets are sampled from the forward index, per minute: see ``TopTargets``.

Lexicons: `/lexicons/` lists them and `/lexicons/<id>.json` serves each, from the
package data ``smalldp/api/lexicons`` (a symlink to the repository's lexicons/ that
setuptools copies into wheels, so an installed smalldp serves them too).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import os
import shutil
import sqlite3
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Callable

import orjson
from aiohttp import web
from pyroaring import BitMap

from smalldp.api import hello
from smalldp.derived import is_derived
from smalldp.store.encoding import decode_links, decode_target
from smalldp.store.schema import open_reader
from smalldp.tid import tid_from_time

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

SAMPLE_S = 1.0  # how often the events counter is read for the per-minute history
HISTORY_MINUTES = 60
REFRESH_S = 5.0  # store figures are recomputed at most this often
RECORDS_MIN_S = 10.0  # the fallback count of records runs at most this often...
RECORDS_DUTY = 100.0  # ...and at most once per this many times its own duration
WINDOW_MINUTES = 60
SLOTS_PER_MINUTE = 12  # a minute of the top-targets window is sampled in 5 s slots...
ROWS_PER_SLOT = 50  # ...of at most this many records each (600 records a minute)
FINAL_GRACE_US = 10_000_000  # a minute is final once the cursor is this far past its end...
# ...and ingest is live: while it catches up, records of a past minute keep arriving (their
# rkey time is older than the events around them), so minutes are read again each time.
LIVE_LAG_US = 60_000_000
KEEP_PER_MINUTE = 300  # (target, source) counts kept per minute (the heavy hitters)
TOP_TARGETS = 10
STATIC_FILES = {"status.css": "text/css", "status.js": "text/javascript"}
# The page needs nothing from elsewhere: the policy says so to the browser, which then
# refuses any injected script or style and any request off this origin.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _package_dir(name: str) -> Traversable:
    return importlib.resources.files("smalldp.api").joinpath(name)


# ---------------------------------------------------------------- events/s history


class RateHistory:
    """Per-minute average events/s from a monotonically growing counter.

    Each sample that falls in a new wall-clock minute closes the previous minute at the
    last sample taken in it, so every event counts in exactly one minute (at most a
    sample interval early or late). A minute without samples (the process was stopped or
    suspended) is simply missing: the chart shows a gap, not a made-up zero.
    """

    def __init__(self, minutes: int = HISTORY_MINUTES) -> None:
        self._closed: deque[tuple[int, float]] = deque(maxlen=minutes - 1)
        self._minute: int | None = None
        self._start = (0.0, 0)  # (time, counter) where the current minute began
        self._last = (0.0, 0)  # the latest sample

    def sample(self, now: float, events: int) -> None:
        """Take one reading of the counter at wall-clock time ``now``."""
        minute = int(now // 60)
        if self._minute is None or events < self._last[1]:  # first sample, or a restarted counter
            self._minute, self._start, self._last = minute, (now, events), (now, events)
            return
        if minute != self._minute:
            self._closed.append((self._minute * 60, self._rate(self._start, self._last)))
            self._minute, self._start = minute, self._last
        self._last = (now, events)

    @staticmethod
    def _rate(start: tuple[float, int], end: tuple[float, int]) -> float:
        elapsed = end[0] - start[0]
        return (end[1] - start[1]) / elapsed if elapsed > 0 else 0.0

    def history(self) -> list[dict[str, object]]:
        """Oldest first: {t (minute start, unix s), events_per_s}; the last, still open
        minute has "partial": true."""
        out: list[dict[str, object]] = [{"t": t, "events_per_s": round(r, 1)} for t, r in self._closed]
        if self._minute is not None and self._last[0] > self._start[0]:
            out.append({"t": self._minute * 60, "events_per_s": round(self._rate(self._start, self._last), 1),
                        "partial": True})
        return out


# ---------------------------------------------------------------- top targets


@dataclass
class _Minute:
    """The sampled links of the records whose TID falls in one minute."""

    counts: Counter[tuple[bytes, int]] = field(default_factory=Counter)
    records: int = 0
    sampled: bool = False  # some slot had more records than were read
    final: bool = False


class TopTargets:
    """The most-linked targets among records created in the last hour, sampled.

    "The last hour" is the 60 whole minutes ending with the one that holds the cursor
    (the time of the newest committed event), by the TID time of the linking record's
    rkey: records created then, whenever they were ingested; during a catch-up it is the
    hour being caught up on. Records with non-TID rkeys have no time and are not seen.
    Each minute is read in SLOTS_PER_MINUTE slots of at most ROWS_PER_SLOT records (the
    first ones by TID in each slot: every record when the stream is slower, an evenly
    spread sample when faster), through the forward index's primary key, so a minute costs
    12 index range reads whatever the ingest rate. Deleted records are skipped (in SQL,
    so they take no place in a slot), and so are, after reading, the records of accounts
    inactive at the time and derived links (the DataPlane's author links).
    A minute is read again while the cursor is inside it, then kept: later deletions in
    it are not seen. Per minute only the KEEP_PER_MINUTE biggest (target, source) counts
    are kept, which bounds memory and can only undercount the long tail.
    """

    def __init__(self) -> None:
        self._minutes: dict[int, _Minute] = {}

    def refresh(self, conn: sqlite3.Connection, cursor: int | None, hidden: BitMap,
                derived_sids: set[int]) -> tuple[int, int] | None:
        """Bring the per-minute samples up to ``cursor``; returns the window (from_us, to_us)."""
        if cursor is None or cursor <= 0:
            self._minutes.clear()
            return None
        last = cursor // 60_000_000
        first = last - WINDOW_MINUTES + 1
        for minute in [m for m in self._minutes if not first <= m <= last]:
            del self._minutes[minute]
        for minute in range(first, last + 1):
            known = self._minutes.get(minute)
            if known is None or not known.final:
                self._minutes[minute] = self._read_minute(conn, minute, hidden, derived_sids, cursor)
        return first * 60_000_000, cursor

    @staticmethod
    def _read_minute(conn: sqlite3.Connection, minute: int, hidden: BitMap, derived_sids: set[int],
                     cursor: int) -> _Minute:
        live = time.time() * 1e6 - cursor < LIVE_LAG_US
        out = _Minute(final=live and cursor >= (minute + 1) * 60_000_000 + FINAL_GRACE_US)
        slot_us = 60_000_000 // SLOTS_PER_MINUTE
        start_us = minute * 60_000_000
        for slot in range(SLOTS_PER_MINUTE):
            lo = tid_from_time(start_us + slot * slot_us)
            hi = tid_from_time(start_us + (slot + 1) * slot_us)
            rows = conn.execute("SELECT aid, links FROM fwd WHERE sk >= ? AND sk < ? AND links IS NOT NULL "
                                "LIMIT ?", (lo, hi, ROWS_PER_SLOT)).fetchall()
            out.sampled |= len(rows) == ROWS_PER_SLOT
            for aid, links in rows:
                if aid in hidden:
                    continue
                out.records += 1
                for sid, tkey in decode_links(links):
                    if sid not in derived_sids:
                        out.counts[(tkey, sid)] += 1
        if len(out.counts) > KEEP_PER_MINUTE:
            out.counts = Counter(dict(out.counts.most_common(KEEP_PER_MINUTE)))
        return out

    def top(self, limit: int = TOP_TARGETS) -> tuple[list[tuple[bytes, int, list[tuple[int, int]]]], int, bool]:
        """([(target key, links, [(source id, links)...])...], records read, sampled?)."""
        pairs: Counter[tuple[bytes, int]] = Counter()
        records, sampled = 0, False
        for minute in self._minutes.values():
            pairs.update(minute.counts)
            records += minute.records
            sampled |= minute.sampled
        by_target: dict[bytes, list[tuple[int, int]]] = {}
        for (tkey, sid), n in pairs.items():
            by_target.setdefault(tkey, []).append((sid, n))
        totals = sorted(((sum(n for _, n in srcs), tkey) for tkey, srcs in by_target.items()),
                        key=lambda item: (-item[0], item[1]))[:limit]
        return ([(tkey, total, sorted(by_target[tkey], key=lambda s: (-s[1], s[0]))) for total, tkey in totals],
                records, sampled)


# ---------------------------------------------------------------- store figures


class StoreFigures:
    """accounts, records and top targets from a read-only connection on one thread of
    its own, cached: _health answers from the cache and starts a refresh when it is older
    than REFRESH_S (only the very first call waits for one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="status")
        self._conn: sqlite3.Connection | None = None
        self._names: dict[tuple[str, int], str] = {}
        self._top = TopTargets()
        self._figures: dict[str, object] | None = None
        self._computed = 0.0  # monotonic time of the cached figures
        self._pending: asyncio.Future[None] | None = None
        self._records: int | None = None  # the last fallback count, and when it ran (unix s)
        self._records_at: float | None = None
        self._records_due = 0.0  # monotonic time after which it may run again
        self._closing = False

    async def get(self) -> dict[str, object]:
        """The cached figures, refreshed in the background when stale."""
        loop = asyncio.get_running_loop()
        if self._pending is None and (self._figures is None or time.monotonic() - self._computed > REFRESH_S):
            self._pending = loop.run_in_executor(self._executor, self._refresh)
            self._pending.add_done_callback(self._refreshed)
        if self._figures is None and self._pending is not None:
            with contextlib.suppress(Exception):  # logged by _refreshed; answer without figures
                await asyncio.shield(self._pending)
        return self._figures or {"accounts": None, "records": None, "top_targets_last_hour": None}

    def _refreshed(self, future: asyncio.Future[None]) -> None:
        self._pending = None
        if not future.cancelled() and future.exception() is not None:
            log.warning("status figures not computed: %s", future.exception())

    def close(self) -> None:
        """Stop the thread and close the connection; a count under way is interrupted
        (on a big store it may take seconds, and shutdown must not wait for it)."""
        self._closing = True
        if self._conn is not None:
            self._conn.interrupt()  # thread-safe: the running statement fails at once
        self._executor.submit(self._close).result()
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -------- on the status thread

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # A small page cache: the samples read a few pages at the right edge of fwd,
            # and the occasional count streams through the table once.
            self._conn = open_reader(self.path, cache_mb=4, mmap_mb=0)
        return self._conn

    def _name(self, table: str, key: int) -> str:
        name = self._names.get((table, key))
        if name is None:
            sql = "SELECT did FROM actor WHERE aid=?" if table == "actor" else "SELECT nsid FROM coll WHERE cid=?"
            row = self._connection().execute(sql, (key,)).fetchone()
            name = self._names[(table, key)] = row[0] if row else "?"
            if len(self._names) > 10_000:  # top targets change slowly; a small cache is enough
                self._names.clear()
        return name

    def _refresh(self) -> None:
        try:
            self._refresh_figures()
        except sqlite3.OperationalError:
            if not self._closing:  # else: interrupted by close(), nothing to report
                raise

    def _refresh_figures(self) -> None:
        conn = self._connection()
        conn.execute("BEGIN")  # one snapshot for every figure
        try:
            figures = self._read(conn)
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
        if figures["records"] is not None:  # the writer's counter: exact and free
            self._figures, self._computed = figures, time.monotonic()
            return
        # Publish with the last count first: a long count must not hold the other figures.
        self._figures = {**figures, "records": self._records, "records_at": self._records_at}
        self._computed = time.monotonic()
        if time.monotonic() >= self._records_due:
            self._count_records(conn)
            self._figures = {**figures, "records": self._records, "records_at": self._records_at}

    def _read(self, conn: sqlite3.Connection) -> dict[str, object]:
        meta = dict(conn.execute("SELECT k, v FROM meta WHERE k IN ('cursor', 'records', 'hidden')"))
        accounts = conn.execute("SELECT max(aid) FROM actor").fetchone()[0] or 0
        hidden = BitMap.deserialize(meta["hidden"]) if meta.get("hidden") else BitMap()
        sources = {sid: (coll, path) for sid, coll, path in conn.execute("SELECT sid, coll, path FROM source")}
        derived = {sid for sid, (_, path) in sources.items() if is_derived(path)}
        cursor = meta.get("cursor")
        window = self._top.refresh(conn, None if cursor is None else int(cursor), hidden, derived)
        top, sampled_records, sampled = self._top.top()
        targets = []
        for tkey, total, per_source in top:
            target = decode_target(tkey, lambda aid: self._name("actor", aid), lambda cid: self._name("coll", cid))
            targets.append({"target": target, "links": total, "sources": [
                {"collection": self._name("coll", sources[sid][0]), "path": sources[sid][1], "links": n}
                for sid, n in per_source if sid in sources]})
        records = meta.get("records")
        return {
            "accounts": int(accounts),
            "records": None if records is None else int(records),
            "records_at": None if records is None else round(time.time(), 3),
            "top_targets_last_hour": None if window is None else {
                "from_us": window[0], "to_us": window[1], "records_read": sampled_records,
                "sampled": sampled, "targets": targets},
        }

    def _count_records(self, conn: sqlite3.Connection) -> None:
        """The fallback when the writer keeps no counter: live records in the forward
        index (a tombstone has NULL links), in its own read transaction."""
        started = time.monotonic()
        conn.execute("BEGIN")
        try:
            self._records = int(conn.execute("SELECT count(*) FROM fwd WHERE links IS NOT NULL").fetchone()[0])
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
        self._records_at = round(time.time(), 3)
        took = time.monotonic() - started
        self._records_due = time.monotonic() + max(RECORDS_MIN_S, RECORDS_DUTY * took)
        log.debug("counted %d records in %.3f s", self._records, took)


# ---------------------------------------------------------------- the figures in _health


def disk_figures(db: Path) -> dict[str, object]:
    """The filesystem holding the data directory (as an unprivileged writer sees it:
    free is what SQLite can still use), and the database's own files."""
    usage = shutil.disk_usage(db.parent)
    sizes = {}
    for key, path in (("file_bytes", db), ("wal_bytes", db.with_name(db.name + "-wal"))):
        try:
            sizes[key] = os.stat(path).st_size
        except FileNotFoundError:  # no WAL between a checkpoint-truncate and the next write
            sizes[key] = 0
    return {"disk": {"path": str(db.parent), "used_bytes": usage.used, "free_bytes": usage.free,
                     "total_bytes": usage.total}, **sizes}


@dataclass
class StatusState:
    """What the status part of the application keeps."""

    db: Path
    ingest_status: Callable[[], dict[str, object]]
    history: RateHistory = field(default_factory=RateHistory)
    figures: StoreFigures | None = None
    sampler: asyncio.Task[None] | None = None


STATUS: web.AppKey[StatusState] = web.AppKey("status", StatusState)


async def health_fields(app: web.Application) -> dict[str, object]:
    """The fields /xrpc/_health has for the status page."""
    state = app[STATUS]
    figures = await state.figures.get() if state.figures is not None else {}
    return {**disk_figures(state.db), **figures, "events_per_s_history": state.history.history()}


async def _sample_events(state: StatusState) -> None:
    """Read live ingest's committed-events counter every SAMPLE_S into the history."""
    while True:
        events = state.ingest_status().get("events")
        if isinstance(events, int):
            state.history.sample(time.time(), events)
        await asyncio.sleep(SAMPLE_S)


# ---------------------------------------------------------------- the page and the lexicons


def _static(name: str) -> bytes:
    return _package_dir("static").joinpath(name).read_bytes()


@routes.get("/")
async def page(request: web.Request) -> web.Response:
    """The status page for browsers; Constellation's JSON hello for everything else."""
    if not hello.prefers_html(request.headers.get("Accept")):
        response = await hello.hello(request)
        response.headers["Vary"] = "Accept"
        return response
    return web.Response(body=_static("status.html"), content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache",
                                 "X-Content-Type-Options": "nosniff", "Vary": "Accept"})


@routes.get("/static/{name}")
async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC_FILES:  # a fixed list: no path from the request reaches the filesystem
        raise web.HTTPNotFound()
    return web.Response(body=_static(name), content_type=STATIC_FILES[name], charset="utf-8",
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


def load_lexicons() -> dict[str, bytes]:
    """Every lexicon document of the package data, by its id."""
    found: dict[str, bytes] = {}

    def walk(folder: Traversable) -> None:
        for item in folder.iterdir():
            if item.is_dir():
                walk(item)
            elif item.name.endswith(".json"):
                data = item.read_bytes()
                lexicon_id = orjson.loads(data).get("id")
                if isinstance(lexicon_id, str):
                    found[lexicon_id] = data

    root = _package_dir("lexicons")
    if root.is_dir():
        walk(root)
    else:
        log.warning("no lexicons in the package data (%s): /lexicons/ is empty", root)
    return dict(sorted(found.items()))


LEXICONS: web.AppKey[dict[str, bytes]] = web.AppKey("lexicons", dict)


@routes.get("/lexicons/")
async def lexicon_index(request: web.Request) -> web.Response:
    items = []
    for lexicon_id, data in request.app[LEXICONS].items():
        main = orjson.loads(data).get("defs", {}).get("main", {})
        items.append({"id": lexicon_id, "url": f"/lexicons/{lexicon_id}.json", "type": main.get("type"),
                      "description": main.get("description", "")})
    return web.Response(body=orjson.dumps({"lexicons": items}), content_type="application/json")


@routes.get("/lexicons/{id}.json")
async def lexicon(request: web.Request) -> web.Response:
    data = request.app[LEXICONS].get(request.match_info["id"])
    if data is None:
        raise web.HTTPNotFound()
    return web.Response(body=data, content_type="application/json")


def setup(app: web.Application, db: Path, ingest_status: Callable[[], dict[str, object]]) -> None:
    """Add the page, the lexicons and the health figures' machinery to ``app``."""
    state = app[STATUS] = StatusState(db=db, ingest_status=ingest_status)
    app[LEXICONS] = load_lexicons()
    app.add_routes(routes)

    async def start(app: web.Application) -> None:
        state.figures = StoreFigures(db)
        state.sampler = asyncio.create_task(_sample_events(state))

    async def stop(app: web.Application) -> None:
        if state.sampler is not None:
            state.sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await state.sampler
        if state.figures is not None:
            await asyncio.get_running_loop().run_in_executor(None, state.figures.close)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
