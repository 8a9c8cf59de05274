"""check_store: is a smalldp file consistent? SQLite's integrity check, then every
invariant of the index that a reader relies on (see check_store's docstring).

It streams through each table once in key order, so memory stays bounded on a 100 GB
file: the forward and backward indexes are compared through per-bucket counts and hash
sums, and only buckets that do not cancel are diffed fact by fact.  Strict decoding of
the stored formats is in store/strict.py, the report and its names in
store/check_report.py.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from pyroaring import BitMap

from smalldp.derived import POST, REPOST, is_derived, is_reverse
from smalldp.store import timeline
from smalldp.store.check_report import CheckReport, Fact, Names
from smalldp.store.backlinks import chunk_lo
from smalldp.store.bodies import COMPACT, SMALL_RECORDS
from smalldp.store.encoding import chunk_floor, did_key, get_varint
from smalldp.store.progress import Progress, Throttle
from smalldp.store.runfilter import key_hash
from smalldp.store.schema import MIGRATIONS, SCHEMA_VERSION
from smalldp.store.strict import ChunkError, decode_links_strict, parse_chunk, parse_segment

# The forward and backward indexes are compared as multisets of link facts.  Each fact
# is hashed into one of 2^BUCKET_BITS buckets; per bucket, the count and the sum of the
# 64-bit hashes of the forward facts minus those of the backlink entries must be 0.  Two
# different multisets pass only if their difference cancels in both, which random
# corruption does with probability about 2^-64 per bucket.  Buckets that do not cancel
# are then diffed exactly in a second pass, fact by fact, to name the problems.
BUCKET_BITS = 16
_MASK64 = (1 << 64) - 1
# Facts the exact pass may hold in memory (about 250 bytes each in Python).
DIFF_FACTS_MAX = 400_000

_TABLES = ("meta", "actor", "coll", "source", "alias", "fwd", "body", "run", "bl", "purge", "tl", "actor_rev")


def open_checked(path: Path) -> sqlite3.Connection:
    """A read-only connection for checking (never creates or converts the file)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no database at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA cache_size=-65536")
    return conn


def check_store(path: Path, *, quick: bool = False, integrity: bool = True, limit: int = 20,
                progress: Progress | None = None) -> CheckReport:
    """Check a smalldp file; returns a report (``report.ok`` when consistent).

    Checked, in one read transaction (a consistent snapshot, even while ingest runs):
      * SQLite's ``PRAGMA integrity_check`` (``quick_check`` with ``quick``; neither
        with ``integrity=False``) and the schema version;
      * forward rows: known actor and collection, link lists that decode, sources of
        the row's collection, no link twice, reverse links pointing at a DID;
      * backlink chunks: run listed in ``run``, known source, headers that agree with
        the entries (count, duplicate table, bitmap), entries newest first, ``lo`` the
        lowest sort key (or 0), and chunks of one key in one run covering disjoint
        sort-key ranges as their ``lo`` keys say;
      * every backlink entry is a link of a live forward row and vice versa (reverse
        links filed under the author with the subject in the entry), each once;
      * the ``links`` counter in meta equals the non-derived live links;
      * ``run.blocks`` equals each run's chunk rows, and every run in bl is in ``run``;
      * timeline segments decode, and each live post or repost with a TID rkey is in its
        bucket;
      * bodies belong to live records and name a known compression dictionary (or are
        compact bodies of a small-record collection, store/bodies.py).
    """
    started = time.monotonic()
    report = CheckReport(str(path), limit)
    conn = open_checked(path)
    try:
        tick = Throttle(progress)
        if integrity:
            _integrity(conn, report, quick, tick)
        conn.execute("BEGIN")  # one snapshot for everything below
        try:
            if _schema(conn, report):
                _Checker(conn, report, tick).run()
        except sqlite3.DatabaseError as exc:
            report.add("sqlite", f"SQLite error while reading the index: {exc}")
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()
    report.seconds = time.monotonic() - started
    return report


def _integrity(conn: sqlite3.Connection, report: CheckReport, quick: bool, tick: Throttle) -> None:
    pragma = "quick_check" if quick else "integrity_check"
    report.integrity = pragma
    started = time.monotonic()
    # The pragma gives no progress of its own: report the time spent from SQLite's
    # progress handler, which runs between virtual-machine instructions.
    def handler() -> int:
        tick(f"{pragma} (seconds so far)", int(time.monotonic() - started))
        return 0  # 0: go on

    conn.set_progress_handler(handler, 100_000)
    try:
        rows = [row[0] for row in conn.execute(f"PRAGMA {pragma}({max(report.limit, 1)})")]
    except sqlite3.DatabaseError as exc:
        rows = [str(exc)]
    finally:
        conn.set_progress_handler(None, 0)
    if rows != ["ok"]:
        for row in rows:
            report.add("integrity", f"{pragma}: {row}")


def _schema(conn: sqlite3.Connection, report: CheckReport) -> bool:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    missing = [t for t in _TABLES if t not in tables]
    if missing:
        report.add("schema", f"not a smalldp database: missing tables {', '.join(missing)}")
        return False
    version = conn.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
    # An older version that smalldp migrates on opening (a backup from an earlier release)
    # is fine: nothing checked here reads the columns a migration adds.
    if version is None or (version[0] != SCHEMA_VERSION and version[0] not in MIGRATIONS):
        report.add("schema", f"schema version {version[0] if version else None}, this smalldp reads {SCHEMA_VERSION}")
        return False
    return True


class _Checker:
    """The streaming passes of check_store over one read transaction."""

    def __init__(self, conn: sqlite3.Connection, report: CheckReport, tick: Throttle) -> None:
        self.conn = conn
        self.report = report
        self.tick = tick
        self.names = Names(conn)
        self.sources = self.names.sources
        self.reverse = {sid for sid, (_, path) in self.sources.items() if is_reverse(path)}
        self.derived = {sid for sid, (_, path) in self.sources.items() if is_derived(path)}
        self.max_aid = conn.execute("SELECT max(aid) FROM actor").fetchone()[0] or 0
        colls = {nsid: cid for cid, nsid in self.names.nsids.items()}
        self.kinds = {c: k for c, k in ((colls.get(POST), timeline.KIND_POST),
                                        (colls.get(REPOST), timeline.KIND_REPOST)) if c is not None}
        self.zdicts = {0} | {int(k[6:]) for (k,) in conn.execute("SELECT k FROM meta WHERE k LIKE 'zdict:%'")}
        self.runs: dict[int, int] = dict(conn.execute("SELECT run, blocks FROM run"))
        nb = 1 << BUCKET_BITS
        self.count = [0] * nb  # forward facts minus backlink entries, per hash bucket
        self.sums = [0] * nb  # ... and the same for their 64-bit hashes
        self.stats = report.stats

    def run(self) -> None:
        self._forward()
        self._backward()
        self._compare()

    # ------------------------------------------------------------ forward rows, bodies, tl

    def _forward(self) -> None:
        conn, report, names = self.conn, self.report, self.names
        count, sums, shift = self.count, self.sums, 64 - BUCKET_BITS
        reverse, derived, sources, kinds = self.reverse, self.derived, self.sources, self.kinds
        max_aid = self.max_aid
        bodies = self._bodies()
        body = next(bodies, None)
        segments = self._timeline()
        bucket: tuple[int, set[timeline.TimelineEntry]] | None = next(segments, None)
        rows = live = links_real = links_all = 0
        span = conn.execute("SELECT min(sk), max(sk) FROM fwd").fetchone()
        for sk, aid, coll, links in conn.execute("SELECT sk, aid, coll, links FROM fwd ORDER BY sk, aid, coll"):
            rows += 1
            if not rows & 0xFFFF:
                # fwd is read in sort-key order: the position in [min, max] is the progress.
                lo_sk, hi_sk = span
                self.tick("forward index", int(1000 * (sk - lo_sk) / max(1, hi_sk - lo_sk)), 1000)
            key = (sk, aid, coll)
            while body is not None and body[0] < key:
                report.add("body-orphan", f"body of a record that has no forward row: {names.record(*body[0])}")
                body = next(bodies, None)
            if body is not None and body[0] == key:
                if links is None:
                    report.add("body-deleted", f"body of a deleted record: {names.record(*key)}")
                if body[1] not in self.zdicts and not (body[1] >= COMPACT and names.nsid(coll) in SMALL_RECORDS):
                    report.add("body-dictionary", f"body of {names.record(*key)} names compression "
                                                  f"dictionary {body[1]}, which meta does not hold")
                body = next(bodies, None)
            if not 0 < aid <= max_aid or coll not in names.nsids:
                report.add("fwd-ids", f"forward row ({sk}, {aid}, {coll}) names an unknown actor or collection")
            if links is None:
                continue  # a tombstone: the delete's rev, no links
            live += 1
            kind = kinds.get(coll)
            if kind is not None and sk >= 0:
                # A live post or repost with a TID rkey must be in its timeline bucket.
                b = timeline.bucket_of(sk)
                while bucket is not None and bucket[0] < b:
                    bucket = next(segments, None)
                if bucket is None or bucket[0] != b or (sk, aid, kind) not in bucket[1]:
                    report.add("tl-missing", f"live {names.nsid(coll)} {names.record(*key)} is not in "
                                             f"timeline bucket {b}")
            try:
                decoded = decode_links_strict(links)
            except ChunkError as exc:
                report.add("fwd-links", f"links of {names.record(*key)} do not decode: {exc}")
                continue
            if len(set(decoded)) != len(decoded):
                report.add("fwd-links", f"{names.record(*key)} holds a link twice")
            for sid, tkey in decoded:
                links_all += 1
                source = sources.get(sid)
                if source is None or source[0] != coll:
                    report.add("fwd-links", f"{names.record(*key)} links through source {sid}, "
                                            f"which is not a source of {names.nsid(coll)}")
                if sid in reverse:
                    if tkey[:1] != b"\x03":
                        report.add("fwd-links", f"reverse link of {names.record(*key)} to a non-DID "
                                                f"{names.target(tkey)}")
                        continue
                    fact: Fact = (sid, did_key(aid), sk, get_varint(tkey, 1)[0])
                else:
                    fact = (sid, tkey, sk, aid)
                    if sid not in derived:
                        links_real += 1
                h = hash(fact) & _MASK64
                i = h >> shift
                count[i] += 1
                sums[i] += h
        for body_key, _ in _rest(body, bodies):
            report.add("body-orphan", f"body of a record that has no forward row: {names.record(*body_key)}")
        for _ in _rest(bucket, segments):
            pass  # decoding the remaining segments reports the malformed ones
        self.tick("forward index", 1000, 1000, final=True)
        self.stats.update(records=rows, live_records=live, links=links_real, derived_links=links_all - links_real)
        stored = conn.execute("SELECT v FROM meta WHERE k='links'").fetchone()
        stored_links = stored[0] if stored else 0
        if stored_links != links_real:
            report.add("links-counter", f"meta 'links' is {stored_links:,} but the forward index holds "
                                        f"{links_real:,} live non-derived links")

    def _bodies(self) -> Iterator[tuple[tuple[int, int, int], int]]:
        """Body keys in key order, with the dictionary byte of each."""
        n = 0
        for sk, aid, coll, head in self.conn.execute("SELECT sk, aid, coll, substr(data, 1, 1) FROM body ORDER BY sk, aid, coll"):
            n += 1
            yield (sk, aid, coll), (head[0] if head else -1)
        self.stats["bodies"] = n

    def _timeline(self) -> Iterator[tuple[int, set[timeline.TimelineEntry]]]:
        """Timeline buckets in order, each with the entries of all its segments; malformed
        segments are reported."""
        report = self.report
        current: int | None = None
        entries: set[timeline.TimelineEntry] = set()
        n = 0
        for b, seg, data in self.conn.execute("SELECT bucket, seg, data FROM tl ORDER BY bucket, seg"):
            n += 1
            if b != current:
                if current is not None:
                    yield current, entries
                current, entries = b, set()
            try:
                part = parse_segment(data)
            except (ValueError, struct.error) as exc:
                report.add("tl-segment", f"timeline segment (bucket {b}, seg {seg}) is malformed: {exc}")
                continue
            wrong = [e for e in part if timeline.bucket_of(e[0]) != b]
            if wrong:
                report.add("tl-segment", f"timeline segment (bucket {b}, seg {seg}) holds {len(wrong)} "
                                         f"entries of other buckets, e.g. sort key {wrong[0][0]}")
            entries.update(part)
        if current is not None:
            yield current, entries
        self.stats["timeline_segments"] = n

    # ------------------------------------------------------------ backlink chunks

    def _backward(self) -> None:
        conn, report, names = self.conn, self.report, self.names
        count, sums, shift = self.count, self.sums, 64 - BUCKET_BITS
        sources, reverse, max_aid = self.sources, self.reverse, self.max_aid
        blocks: Counter[int] = Counter()
        entries_n = chunks = 0
        group: tuple[int, bytes, int] | None = None
        ranges: list[tuple[float, int, int, int]] = []  # (floor, lo, lowest sk, highest sk) per chunk
        runs_total = max(1, len(self.runs))
        runs_seen = 0
        # (a backup from before schema 8 has no runkeys table: its runs have no filters)
        has_filters = conn.execute("SELECT 1 FROM sqlite_master WHERE name='runkeys'").fetchone()
        filters = {run: BitMap.deserialize(data) for run, data in
                   (conn.execute("SELECT run, data FROM runkeys") if has_filters else ())}
        for run in sorted(set(filters) - set(self.runs)):
            report.add("run-filter", f"a key filter is stored for run {run}, which is not in the run table")
        for run, tkey, sid, lo, data in conn.execute("SELECT run, tkey, sid, lo, data FROM bl ORDER BY run, tkey, sid, lo"):
            chunks += 1
            if run not in blocks:
                runs_seen += 1
            blocks[run] += 1
            if not chunks & 0xFFF:
                self.tick("backlink index", runs_seen, runs_total)
            if (run, tkey, sid) != group:
                if group is not None:
                    self._ranges(group, ranges)
                group, ranges = (run, tkey, sid), []
                run_filter = filters.get(run)
                if run_filter is not None and key_hash(tkey, sid) not in run_filter:
                    report.add("run-filter", f"run {run}'s key filter lacks {names.target(tkey)} via "
                                             f"{names.source(sid)}: readers would not find its entries")
            where = f"run {run}, {names.target(tkey)} via {names.source(sid)}, lo {lo}"
            if sid not in sources:
                report.add("bl-source", f"chunk ({where}) names an unknown source")
            elif sid in reverse and tkey[:1] != b"\x03":
                report.add("bl-source", f"reverse-link chunk ({where}) is not filed under a DID")
            try:
                n, entries = parse_chunk(data)
            except ChunkError as exc:
                report.add("chunk-header", f"chunk ({where}): {exc}")
                continue
            entries_n += n
            low, high = entries[-1][0], entries[0][0]
            if lo != 0 and lo != chunk_lo(low):
                report.add("chunk-lo", f"chunk ({where}) is keyed lo {lo} but its lowest sort key is {low}")
            ranges.append((chunk_floor(lo), lo, low, high))
            for sk, aid in entries:
                if not 0 < aid <= max_aid:
                    report.add("bl-ids", f"chunk ({where}) holds unknown actor {aid}")
                h = hash((sid, tkey, sk, aid)) & _MASK64
                i = h >> shift
                count[i] -= 1
                sums[i] -= h
        if group is not None:
            self._ranges(group, ranges)
        self.tick("backlink index", runs_total, runs_total, final=True)
        self.stats.update(chunks=chunks, backlink_entries=entries_n, runs=len(self.runs))
        for run, n in sorted(blocks.items()):
            if run not in self.runs:
                report.add("run-missing", f"run {run} has {n:,} chunk(s) in bl but is not in the run table")
            elif self.runs[run] != n:
                report.add("run-blocks", f"run {run}: the run table says {self.runs[run]:,} block(s), bl holds {n:,}")
        for run, n in sorted(self.runs.items()):
            if run not in blocks and n != 0:
                report.add("run-blocks", f"run {run}: the run table says {n:,} block(s), bl holds none")

    def _ranges(self, group: tuple[int, bytes, int], ranges: list[tuple[float, int, int, int]]) -> None:
        """Chunks of one key in one run: sorted by their floors, each must end below the next."""
        if len(ranges) < 2:
            return
        ranges.sort()
        for (_, lo_a, low_a, high_a), (floor_b, lo_b, _, _) in zip(ranges, ranges[1:]):
            if high_a >= floor_b:
                run, tkey, sid = group
                self.report.add(
                    "chunk-range", f"chunks lo {lo_a} and lo {lo_b} of run {run}, {self.names.target(tkey)} "
                                   f"via {self.names.source(sid)} overlap: the first holds sort keys "
                                   f"{low_a}..{high_a}, the second starts at {lo_b}")

    # ------------------------------------------------------------ forward vs backward

    def _compare(self) -> None:
        bad = [i for i in range(1 << BUCKET_BITS) if self.count[i] or self.sums[i]]
        if not bad:
            return
        # Exact diff of as many mismatching buckets as fit in memory.
        per_bucket = max(1, self.stats.get("backlink_entries", 0) >> BUCKET_BITS)
        chosen = set(bad[:max(1, DIFF_FACTS_MAX // per_bucket)])
        shift = 64 - BUCKET_BITS
        forward: Counter[Fact] = Counter()
        backward: Counter[Fact] = Counter()
        where: dict[Fact, int] = {}
        reverse = self.reverse
        for sk, aid, links in self.conn.execute("SELECT sk, aid, links FROM fwd WHERE links IS NOT NULL"):
            try:
                decoded = decode_links_strict(links)
            except ChunkError:
                continue
            for sid, tkey in decoded:
                if sid in reverse:
                    if tkey[:1] != b"\x03":
                        continue
                    fact: Fact = (sid, did_key(aid), sk, get_varint(tkey, 1)[0])
                else:
                    fact = (sid, tkey, sk, aid)
                if (hash(fact) & _MASK64) >> shift in chosen:
                    forward[fact] += 1
        for run, tkey, sid, data in self.conn.execute("SELECT run, tkey, sid, data FROM bl"):
            try:
                _, entries = parse_chunk(data)
            except ChunkError:
                continue  # already reported; its entries count as missing
            for sk, aid in entries:
                fact = (sid, tkey, sk, aid)
                if (hash(fact) & _MASK64) >> shift in chosen:
                    backward[fact] += 1
                    where.setdefault(fact, run)
        names, report = self.names, self.report
        for fact in sorted(set(forward) | set(backward)):
            f, b = forward[fact], backward[fact]
            text = names.fact(fact, fact[0] in reverse)
            if b == 0:
                report.add("fwd-not-in-bl", f"forward link missing from the backlink index: {text}")
            elif f == 0:
                report.add("bl-not-in-fwd", f"backlink entry (run {where[fact]}) with no live forward link: {text}")
            elif b > f:
                report.add("bl-duplicate", f"backlink entry held {b} times (run {where[fact]}): {text}")
        if len(chosen) < len(bad):
            report.add("index-mismatch", f"forward and backlink indexes differ in {len(bad):,} of "
                                         f"{1 << BUCKET_BITS:,} hash buckets; only {len(chosen):,} were listed")



def _rest(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    """``first`` (unless None), then the rest of an iterator."""
    if first is not None:
        yield first
    yield from rest
