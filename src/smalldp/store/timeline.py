"""The timeline index: who posted or reposted in each time bucket, as bitmaps.

A home timeline is "the newest posts and reposts of the accounts I follow". Asking each
followed account's author index would cost one lookup per followed account per run;
instead the store keeps, per time bucket of the records' rkey TIDs (2^26 us, about a
minute), *segments*: a roaring bitmap of the authors plus their entries sorted by
author. A timeline walks buckets newest first, intersects each segment's bitmap with
the follow set, and binary-searches only the hits' entries.

Segments are append-only: each batch adds one per bucket it touched, and a bucket's
segments are merged into one when there are more than ``SEGMENTS_MAX``, and when a newer
bucket gets its first segment (time has moved on: the older bucket is mostly complete). Deletes and
purges do not rewrite them: a reader checks its candidates against the forward index
(which says whether a record is still live), so segments are a superset.

Segment layout: n (u32), bitmap length (u32), bitmap, n author IDs (u32, sorted),
n sort keys (i64), n kinds (u8: 0 post, 1 repost), entries sorted by author, then (sort
key, kind) descending; then n positions (u32) listing the entries newest first (by sort
key, author, kind), for follow sets so dense that scanning by time beats a lookup per
author. Arrays are little-endian.
"""

from __future__ import annotations

import bisect
import heapq
import sqlite3
import struct
import sys
from array import array
from typing import Iterable, Iterator

from pyroaring import BitMap

# Sort keys are TIDs, (us << 10) | clock: 2^36 of them is 2^26 us, about a minute.  A page
# of a dense timeline then comes from a bucket or two; coarser buckets (2^29 us) made a
# 1,000-follow timeline on generated data cost ~8 ms, mostly in authors hit but not shown.
BUCKET_SHIFT = 36
SEGMENTS_MAX = 16
# A timeline scans a segment in time order when hits^2 > DENSE_FACTOR * entries, else it
# looks up each author hit: the scan reads about limit * entries / hits entries, the
# lookups cost two bisects per hit.
DENSE_FACTOR = 4
KIND_POST, KIND_REPOST = 0, 1
TimelineEntry = tuple[int, int, int]  # (sort key, author ID, kind)
_HEADER = struct.Struct("<II")
_SWAP = sys.byteorder != "little"


def bucket_of(sk: int) -> int:
    """The time bucket of a sort key."""
    return sk >> BUCKET_SHIFT


def bucket_floor(bucket: int) -> int:
    """The lowest sort key of a bucket."""
    return bucket << BUCKET_SHIFT


def encode_segment(entries: Iterable[TimelineEntry]) -> bytes:
    """Encode entries (any order; duplicates are dropped)."""
    ordered = sorted(set(entries), key=lambda e: (e[1], -e[0], -e[2]))
    aids = array("I", [e[1] for e in ordered])
    sks = array("q", [e[0] for e in ordered])
    kinds = bytes(e[2] for e in ordered)
    order = array("I", sorted(range(len(ordered)), key=lambda i: ordered[i], reverse=True))
    bitmap = BitMap(aids).serialize()
    if _SWAP:
        aids.byteswap()
        sks.byteswap()
        order.byteswap()
    return b"".join((_HEADER.pack(len(ordered), len(bitmap)), bitmap, aids.tobytes(), sks.tobytes(), kinds,
                     order.tobytes()))


class Segment:
    """A decoded segment: the bitmap at once, the arrays when first needed."""

    __slots__ = ("bitmap", "_data", "_n", "_pos", "_aids", "_sks", "_order")

    def __init__(self, data: bytes) -> None:
        self._n, size = _HEADER.unpack_from(data, 0)
        self.bitmap = BitMap.deserialize(data[8:8 + size])
        self._data = data
        self._pos = 8 + size
        self._aids: array[int] | None = None
        self._sks: array[int] = array("q")
        self._order: array[int] | None = None

    def __len__(self) -> int:
        return self._n

    def _load(self) -> array[int]:
        n, pos, data = self._n, self._pos, self._data
        aids = array("I")
        aids.frombytes(data[pos:pos + 4 * n])
        self._sks.frombytes(data[pos + 4 * n:pos + 12 * n])
        if _SWAP:
            aids.byteswap()
            self._sks.byteswap()
        self._aids = aids
        return aids

    def span(self, aid: int) -> tuple[int, int]:
        """Positions [start, end) of one author's entries, newest first."""
        aids = self._aids if self._aids is not None else self._load()
        start = bisect.bisect_left(aids, aid)
        return start, bisect.bisect_right(aids, aid, start)

    def entry(self, i: int, aid: int) -> TimelineEntry:
        """The entry at position ``i`` (whose author is ``aid``)."""
        return self._sks[i], aid, self._data[self._pos + 12 * self._n + i]

    def by_time(self, authors: BitMap, before: TimelineEntry | None) -> Iterator[TimelineEntry]:
        """Entries of ``authors`` newest first, strictly older than ``before``, by a scan in
        time order (cheap when the authors are a good share of the segment)."""
        aids = self._aids if self._aids is not None else self._load()
        order = self._order
        if order is None:
            n, start = self._n, self._pos + 13 * self._n
            order = self._order = array("I")
            order.frombytes(self._data[start:start + 4 * n])
            if _SWAP:
                order.byteswap()
        sks, data, kinds_at = self._sks, self._data, self._pos + 12 * self._n
        for i in order:
            aid = aids[i]
            if aid in authors:
                entry = (sks[i], aid, data[kinds_at + i])
                if before is None or entry < before:
                    yield entry

    def all_entries(self) -> Iterator[TimelineEntry]:
        """Every entry (for merging)."""
        aids = self._aids if self._aids is not None else self._load()
        kinds_at = self._pos + 12 * self._n
        for i in range(self._n):
            yield self._sks[i], aids[i], self._data[kinds_at + i]


def write_entries(conn: sqlite3.Connection, entries: Iterable[TimelineEntry]) -> None:
    """Writer side: add one segment per bucket touched; merge buckets that have too many."""
    by_bucket: dict[int, list[TimelineEntry]] = {}
    for entry in entries:
        if entry[0] >= 0:  # non-TID rkeys have no time: not in any timeline bucket
            by_bucket.setdefault(bucket_of(entry[0]), []).append(entry)
    for bucket, part in by_bucket.items():
        last, count = conn.execute("SELECT max(seg), count(*) FROM tl WHERE bucket=?", (bucket,)).fetchone()
        conn.execute("INSERT INTO tl VALUES(?, ?, ?)", (bucket, (last or 0) + 1, encode_segment(part)))
        if count + 1 > SEGMENTS_MAX:
            _merge(conn, bucket)
        if count == 0:
            older = conn.execute("SELECT bucket, count(*) FROM tl WHERE bucket < ? GROUP BY bucket "
                                 "ORDER BY bucket DESC LIMIT 1", (bucket,)).fetchone()
            if older is not None and older[1] > 1:
                _merge(conn, older[0])


def _merge(conn: sqlite3.Connection, bucket: int) -> None:
    merged: list[TimelineEntry] = []
    for (data,) in conn.execute("SELECT data FROM tl WHERE bucket=?", (bucket,)).fetchall():
        merged.extend(Segment(data).all_entries())
    conn.execute("DELETE FROM tl WHERE bucket=?", (bucket,))
    conn.execute("INSERT INTO tl VALUES(?, 1, ?)", (bucket, encode_segment(merged)))


def newest_first(segments: list[Segment], authors: BitMap,
                 before: TimelineEntry | None) -> Iterator[TimelineEntry]:
    """The entries of ``authors`` in one bucket's segments, newest first, strictly older
    than ``before``, without repeats.  Per segment, whichever is cheaper: a scan in time
    order when the authors hit are many (a dense follow set), else a heap of one head per
    author hit (a page needs the first few entries, not a sort of every hit's)."""
    streams: list[Iterator[TimelineEntry]] = []
    for segment in segments:
        hits = segment.bitmap & authors
        if not hits:
            continue
        if len(hits) * len(hits) > DENSE_FACTOR * len(segment):
            streams.append(segment.by_time(authors, before))
        else:
            streams.append(_by_author(segment, hits, before))
    previous = None
    for entry in heapq.merge(*streams, reverse=True) if len(streams) != 1 else streams[0]:
        if entry != previous:
            yield entry
        previous = entry


def _by_author(segment: Segment, hits: BitMap, before: TimelineEntry | None) -> Iterator[TimelineEntry]:
    """A segment's entries of the authors ``hits``, newest first: a heap of one head each."""
    heap: list[tuple[int, int, int, int, int]] = []
    for aid in hits:
        start, end = segment.span(aid)
        while start < end and before is not None and segment.entry(start, aid) >= before:
            start += 1
        if start < end:
            sk, _, kind = segment.entry(start, aid)
            heap.append((-sk, -aid, -kind, start, end))
    heapq.heapify(heap)
    while heap:
        neg_sk, neg_aid, neg_kind, i, end = heap[0]
        entry = (-neg_sk, -neg_aid, -neg_kind)
        if i + 1 < end:
            sk, aid, kind = segment.entry(i + 1, entry[1])
            heapq.heapreplace(heap, (-sk, -aid, -kind, i + 1, end))
        else:
            heapq.heappop(heap)
        yield entry

def buckets_before(conn: sqlite3.Connection, bucket: int) -> Iterator[tuple[int, list[Segment]]]:
    """Reader side: (bucket, its segments) for buckets <= ``bucket``, newest first."""
    current: int | None = None
    segments: list[Segment] = []
    for b, data in conn.execute("SELECT bucket, data FROM tl WHERE bucket <= ? ORDER BY bucket DESC", (bucket,)):
        if b != current:
            if current is not None:
                yield current, segments
            current, segments = b, []
        segments.append(Segment(data))
    if current is not None:
        yield current, segments
