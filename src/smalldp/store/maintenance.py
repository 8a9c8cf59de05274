"""Backup, restore and consistency check of a smalldp SQLite file.

* :func:`backup` copies a database that may be in use (``smalldp serve`` ingesting) into
  a new file with SQLite's online backup API.  It holds ONE read transaction for the
  whole copy: in WAL mode that is a fixed snapshot, so the copy is consistent and the
  writer is never blocked (it keeps committing to the WAL; only checkpoints cannot pass
  the snapshot until the copy ends, so the WAL grows meanwhile).  Without that read
  transaction, every commit of another connection would restart the copy from page 1.
* :func:`restore` installs a copy into a data directory after checking it, refusing
  while another process has the database open.
* :func:`check_store` verifies a file: SQLite's own integrity check, then every
  invariant of the index that a reader relies on (see its docstring).  It streams
  through each table once in key order, so memory stays bounded on a 100 GB file.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import struct
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from pyroaring import BitMap

from smalldp.derived import POST, REPOST, is_derived, is_reverse
from smalldp.store import timeline
from smalldp.store.encoding import (
    BITMAP_MIN_ENTRIES,
    chunk_floor,
    decode_target,
    did_key,
    get_varint,
    unzigzag,
)
from smalldp.store.schema import SCHEMA_VERSION
from smalldp.tid import int_to_tid

# Progress callback: (phase, units done, units total or None).  Called at most every
# PROGRESS_EVERY_S seconds, plus once at the end of a phase.
Progress = Callable[[str, int, "int | None"], None]
PROGRESS_EVERY_S = 1.0
BACKUP_STEP_PAGES = 4096  # 32 MiB of 8 KiB pages between progress reports

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

_DID_KIND = 3
_TABLES = ("meta", "actor", "coll", "source", "alias", "fwd", "body", "run", "bl", "purge", "tl", "actor_rev")

Fact = tuple[int, bytes, int, int]  # (source id, target key, sort key, actor id) as filed in bl


@dataclass
class Problem:
    """One inconsistency: a stable ``kind`` for machines, a sentence for people."""

    kind: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


@dataclass
class CheckReport:
    """What :func:`check_store` found: the first ``limit`` problems and counts by kind."""

    path: str
    limit: int
    problems: list[Problem] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    stats: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    integrity: str = "skipped"  # "integrity_check", "quick_check" or "skipped"

    @property
    def ok(self) -> bool:
        return not self.counts

    def add(self, kind: str, message: str) -> None:
        """Record a problem (all are counted; the first ``limit`` are kept)."""
        self.counts[kind] += 1
        if len(self.problems) < self.limit:
            self.problems.append(Problem(kind, message))

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "integrity": self.integrity,
                "problems": [p.as_dict() for p in self.problems],
                "problem_counts": dict(sorted(self.counts.items())), "stats": self.stats,
                "seconds": round(self.seconds, 3)}

    def text(self) -> str:
        """A readable report."""
        lines = [f"{self.path}: " + ("consistent" if self.ok else
                                     f"{sum(self.counts.values()):,} problem(s)")]
        scanned = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in self.stats.items())
        lines.append(f"  checked ({self.integrity}): {scanned} in {self.seconds:,.1f} s")
        if not self.ok:
            lines.append("  by kind: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.counts.items())))
            shown = len(self.problems)
            lines.append(f"  first {shown}:" if shown < sum(self.counts.values()) else "  problems:")
            lines += [f"  - [{p.kind}] {p.message}" for p in self.problems]
        return "\n".join(lines)


class _Throttle:
    """Calls a progress callback at most every PROGRESS_EVERY_S seconds."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.next = time.monotonic() + PROGRESS_EVERY_S
        self.shown: set[str] = set()  # phases reported at least once

    def __call__(self, phase: str, done: int, total: int | None = None, *, final: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        # A phase's final report only closes progress already shown: small files, which
        # finish within the first interval, print nothing but the summary.
        if (final and phase in self.shown) or (not final and now >= self.next):
            self.next = now + PROGRESS_EVERY_S
            self.shown.add(phase)
            self.progress(phase, done, total)


# ---------------------------------------------------------------- names for reports

class _Names:
    """Turns IDs back into DIDs, NSIDs and at-uris for messages (a few lookups per problem)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.nsids: dict[int, str] = dict(conn.execute("SELECT cid, nsid FROM coll"))
        self.sources: dict[int, tuple[int, str]] = {
            sid: (coll, path) for sid, coll, path in conn.execute("SELECT sid, coll, path FROM source")}

    def did(self, aid: int) -> str:
        row = self.conn.execute("SELECT did FROM actor WHERE aid=?", (aid,)).fetchone()
        return row[0] if row else f"<actor {aid}>"

    def nsid(self, cid: int) -> str:
        return self.nsids.get(cid, f"<collection {cid}>")

    def source(self, sid: int) -> str:
        coll, path = self.sources.get(sid, (0, f"<source {sid}>"))
        return f"{self.nsid(coll)}:{path}"

    def record(self, sk: int, aid: int, coll: int) -> str:
        if sk >= 0:
            rkey = int_to_tid(sk)
        else:
            row = self.conn.execute("SELECT rkey FROM alias WHERE aid=? AND coll=? AND sk=?",
                                    (aid, coll, sk)).fetchone()
            rkey = row[0] if row else f"<alias {sk}>"
        return f"at://{self.did(aid)}/{self.nsid(coll)}/{rkey}"

    def target(self, tkey: bytes) -> str:
        try:
            return decode_target(tkey, self.did, self.nsid)
        except (IndexError, UnicodeDecodeError, ValueError):
            return f"<undecodable key {tkey.hex()}>"

    def fact(self, fact: Fact, reverse: bool) -> str:
        """A link fact in words: which record links to what, through which source."""
        sid, tkey, sk, aid = fact
        coll = self.sources.get(sid, (0, ""))[0]
        if reverse:  # filed under the author's DID key, the subject's account in the entry
            author = get_varint(tkey, 1)[0] if tkey[:1] == bytes((_DID_KIND,)) else 0
            return (f"{self.record(sk, author, coll)} -> {self.did(aid)} "
                    f"(reverse link {self.source(sid)})")
        return f"{self.record(sk, aid, coll)} -> {self.target(tkey)} ({self.source(sid)})"


# ---------------------------------------------------------------- chunk parsing

class ChunkError(ValueError):
    """A backlink chunk whose bytes or header do not agree with its entries."""


def parse_chunk(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Strictly decode a backlink chunk: (count, entries newest first); raise ChunkError
    when the header (count, duplicate table, bitmap) disagrees with the entries."""
    try:
        count, pos = get_varint(data, 0)
        ndup, pos = get_varint(data, pos)
        extra: list[tuple[int, int]] = []
        for _ in range(ndup):
            aid, pos = get_varint(data, pos)
            c, pos = get_varint(data, pos)
            extra.append((aid, c))
        size, pos = get_varint(data, pos)
        bitmap_bytes = data[pos:pos + size]
        if len(bitmap_bytes) != size:
            raise ChunkError("bitmap runs past the end of the chunk")
        pos += size
        entries: list[tuple[int, int]] = []
        prev = 0
        for i in range(count):
            value, pos = get_varint(data, pos)
            sk = unzigzag(value) if i == 0 else prev - value
            aid, pos = get_varint(data, pos)
            entries.append((sk, aid))
            prev = sk
    except IndexError:
        raise ChunkError("truncated chunk (the header promises more than the bytes hold)") from None
    if pos != len(data):
        raise ChunkError(f"{len(data) - pos} byte(s) after the last of the header's {count} entries")
    if count == 0:
        raise ChunkError("empty chunk (count 0)")
    for a, b in zip(entries, entries[1:]):
        if not a > b:
            raise ChunkError(f"entries not strictly newest first: {a} before {b}")
    aids = Counter(aid for _, aid in entries)
    want_extra = sorted((aid, c - 1) for aid, c in aids.items() if c > 1)
    if extra != want_extra:
        raise ChunkError(f"duplicate-actor table {extra[:5]} does not match the entries' {want_extra[:5]}")
    if count >= BITMAP_MIN_ENTRIES:
        if not size:
            raise ChunkError(f"no bitmap in a chunk of {count} entries (>= {BITMAP_MIN_ENTRIES})")
        try:
            bitmap = BitMap.deserialize(bitmap_bytes)
        except Exception as exc:  # pyroaring raises several types on bad bytes
            raise ChunkError(f"bitmap does not deserialize: {exc}") from None
        if bitmap != BitMap(aids):
            raise ChunkError(f"bitmap holds {len(bitmap)} actors, the entries {len(aids)} "
                             f"(differing: {sorted(bitmap ^ BitMap(aids))[:5]})")
    elif size:
        raise ChunkError(f"a bitmap in a chunk of {count} entries (< {BITMAP_MIN_ENTRIES})")
    return count, entries


def parse_segment(data: bytes) -> list[timeline.TimelineEntry]:
    """Strictly decode a timeline segment (store/timeline.py); raise ValueError if it is malformed."""
    if len(data) < 8:
        raise ValueError("shorter than its header")
    n, size = struct.unpack_from("<II", data, 0)
    if len(data) != 8 + size + 13 * n:
        raise ValueError(f"{len(data)} bytes, the header ({n} entries, bitmap {size}) says {8 + size + 13 * n}")
    segment = timeline.Segment(data)  # raises on a bitmap that does not deserialize
    entries = list(segment.all_entries())
    if segment.bitmap != BitMap(aid for _, aid, _ in entries):
        raise ValueError("bitmap does not match the entries' authors")
    order = [(aid, -sk, -kind) for sk, aid, kind in entries]
    if any(not a < b for a, b in zip(order, order[1:])):
        raise ValueError("entries not sorted by author, then newest first, without repeats")
    if any(kind not in (timeline.KIND_POST, timeline.KIND_REPOST) for _, _, kind in entries):
        raise ValueError("unknown entry kind")
    return entries


# ---------------------------------------------------------------- the check

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
      * bodies belong to live records and name a known compression dictionary.
    """
    started = time.monotonic()
    report = CheckReport(str(path), limit)
    conn = open_checked(path)
    try:
        tick = _Throttle(progress)
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


def _integrity(conn: sqlite3.Connection, report: CheckReport, quick: bool, tick: _Throttle) -> None:
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
    if version is None or version[0] != SCHEMA_VERSION:
        report.add("schema", f"schema version {version[0] if version else None}, this smalldp reads {SCHEMA_VERSION}")
        return False
    return True


class _Checker:
    """The streaming passes of check_store over one read transaction."""

    def __init__(self, conn: sqlite3.Connection, report: CheckReport, tick: _Throttle) -> None:
        self.conn = conn
        self.report = report
        self.tick = tick
        self.names = _Names(conn)
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
                if body[1] not in self.zdicts:
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
                decoded = _decode_links(links)
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
            if lo != 0 and lo != low:
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
                decoded = _decode_links(links)
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


def _decode_links(data: bytes) -> list[tuple[int, bytes]]:
    """encoding.decode_links, strict: a truncated list is an error, not a short key."""
    links = []
    pos, end = 0, len(data)
    try:
        while pos < end:
            sid, pos = get_varint(data, pos)
            size, pos = get_varint(data, pos)
            if size == 0 or pos + size > end:
                raise ChunkError("a target key runs past the end of the list")
            links.append((sid, data[pos:pos + size]))
            pos += size
    except IndexError:
        raise ChunkError("truncated varint") from None
    return links


def _rest(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    """``first`` (unless None), then the rest of an iterator."""
    if first is not None:
        yield first
    yield from rest


# ---------------------------------------------------------------- backup and restore

class MaintenanceError(RuntimeError):
    """Backup or restore refused or failed; the message says why."""


@dataclass
class CopySummary:
    """What a backup or restore copied."""

    source: str
    dest: str
    bytes: int
    pages: int
    cursor: int | None
    links: int | None
    seconds: float
    kept: str | None = None  # restore: where the previous database went

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_database(source: Path, dest: Path, *, step_pages: int = BACKUP_STEP_PAGES,
                  progress: Progress | None = None) -> CopySummary:
    """Copy ``source`` into the new file ``dest`` (which must not exist) as of one snapshot.

    The copy is left in rollback-journal mode: one self-contained file (the writer
    switches it back to WAL when it opens it).
    """
    started = time.monotonic()
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    try:
        # The snapshot: this read transaction stays open for the whole copy, so commits
        # by `smalldp serve` neither block nor restart it (backup_step reuses an open
        # read transaction instead of starting one per step).
        src.execute("BEGIN")
        meta = dict(src.execute("SELECT k, v FROM meta WHERE k IN ('cursor', 'links')").fetchall())
        dst = sqlite3.connect(dest, isolation_level=None)
        tick = _Throttle(progress)
        try:
            def step(status: int, remaining: int, total: int) -> None:
                tick("copy", total - remaining, total)

            src.backup(dst, pages=max(1, step_pages), progress=step)
            pages = dst.execute("PRAGMA page_count").fetchone()[0]
            tick("copy", pages, pages, final=True)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
        src.execute("ROLLBACK")
    finally:
        src.close()
    with open(dest, "rb+") as f:
        os.fsync(f.fileno())
    cursor = meta.get("cursor")
    return CopySummary(str(source), str(dest), dest.stat().st_size, pages,
                       None if cursor is None else int(cursor), meta.get("links"), time.monotonic() - started)


def backup(source: Path, dest: Path, *, force: bool = False, step_pages: int = BACKUP_STEP_PAGES,
           progress: Progress | None = None) -> CopySummary:
    """Copy a (possibly live) database to ``dest``, a file or an existing directory.

    Written to a temporary name next to the destination and renamed into place, so a
    crash leaves either no backup or a whole one; an existing file is replaced only
    with ``force``.
    """
    if not source.is_file():
        raise FileNotFoundError(f"no database at {source}")
    if dest.is_dir():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = dest / f"smalldp-{stamp}.sqlite"
    if dest.exists():
        if dest.resolve() == source.resolve() or os.path.samefile(dest, source):
            raise MaintenanceError(f"{dest} is the database itself")
        if not force:
            raise MaintenanceError(f"{dest} exists; use --force to overwrite it")
    if not dest.parent.is_dir():
        raise MaintenanceError(f"no such directory: {dest.parent}")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # SQLite creates it; an empty file would be taken for an empty database anyway
    try:
        summary = copy_database(source, tmp, step_pages=step_pages, progress=progress)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        for leftover in (tmp, Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)
        raise
    summary.dest = str(dest)
    return summary


_F_WRLCK, _F_UNLCK, _SEEK_SET = fcntl.F_WRLCK, fcntl.F_UNLCK, os.SEEK_SET
# The byte of the WAL index (-shm) that SQLite's unix VFS keeps read-locked for as long as
# a connection has the database open in WAL mode (UNIX_SHM_DMS in os_unix.c).
_SHM_DMS = 128


def _lock_holder(path: Path, start: int, length: int) -> int | None:
    """PID of another process holding a POSIX lock that conflicts with a write lock on
    [start, start+length) of ``path`` (F_GETLK: nothing is taken), else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        # struct flock on 64-bit Linux: short type, short whence, off_t start, off_t len, pid_t pid.
        request = struct.pack("hhqqi4x", _F_WRLCK, _SEEK_SET, start, length, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, request)
        kind, _, _, _, pid = struct.unpack("hhqqi4x", answer)
        return None if kind == _F_UNLCK else pid
    finally:
        os.close(fd)


def database_in_use(path: Path) -> str | None:
    """Why ``path`` is in use by another process (``smalldp serve``, import, a reader),
    or None when nobody else has it open."""
    shm = Path(f"{path}-shm")
    pid = _lock_holder(shm, _SHM_DMS, 1) if shm.exists() else None
    if pid is not None:
        return f"process {pid} has {path} open"
    if not path.exists():
        return None
    # A writer in the middle of a transaction (also covers rollback-journal mode).
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        return f"{path} is locked by another connection ({exc})"
    finally:
        conn.close()
    return None


def restore(source: Path, target: Path, *, keep: bool = True, quick: bool = False,
            step_pages: int = BACKUP_STEP_PAGES, progress: Progress | None = None,
            limit: int = 20) -> tuple[CopySummary, CheckReport]:
    """Install a copy of ``source`` as the database ``target`` once it passes check_store.

    Refuses (MaintenanceError) while another process has ``target`` open, or when the
    copy fails its check (the report is in the exception's second argument). The previous
    database is checkpointed and kept as ``target.bak`` unless ``keep`` is False.
    """
    if not source.is_file():
        raise FileNotFoundError(f"no such file: {source}")
    if target.exists() and os.path.samefile(source, target):
        raise MaintenanceError(f"{source} is the database itself")
    busy = database_in_use(target)
    if busy:
        raise MaintenanceError(f"refusing to restore while the database is in use: {busy}; stop smalldp first")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.restore.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        summary = copy_database(source, tmp, step_pages=step_pages, progress=progress)
        report = check_store(tmp, quick=quick, limit=limit, progress=progress)
        report.path = str(source)
        if not report.ok:
            raise MaintenanceError(f"{source} fails the check; nothing restored", report)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # what the writer would set: ready to serve
        finally:
            conn.close()
        busy = database_in_use(target)  # again: smalldp may have started meanwhile
        if busy:
            raise MaintenanceError(f"refusing to restore while the database is in use: {busy}; stop smalldp first")
        kept = _retire(target, keep)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)
    summary.dest = str(target)
    summary.kept = kept
    return summary, report


def _retire(target: Path, keep: bool) -> str | None:
    """Move the current database out of the way (as ``.bak``) or delete it, WAL included."""
    wal, shm = Path(f"{target}-wal"), Path(f"{target}-shm")
    if not target.exists():
        for p in (wal, shm):
            p.unlink(missing_ok=True)
        return None
    if keep:
        # Fold the WAL into the file so the .bak is whole on its own.
        try:
            conn = sqlite3.connect(target, isolation_level=None, timeout=0)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
        except sqlite3.DatabaseError:
            pass  # a damaged old file: its WAL is kept next to it below
    bak = Path(f"{target}.bak")
    if keep:
        os.replace(target, bak)
        if wal.exists() and wal.stat().st_size:
            os.replace(wal, Path(f"{bak}-wal"))  # SQLite finds a WAL by the file's name
        else:
            Path(f"{bak}-wal").unlink(missing_ok=True)
    else:
        target.unlink()
    for p in (wal, shm):
        p.unlink(missing_ok=True)
    return str(bak) if keep else None
