"""Cached per-run summaries of big backlink keys, shared by the reader threads.

Counting the followers of an account with 100,000 of them means parsing ~200 chunk
headers and unioning their bitmaps, on every request. But a run's chunks change only
when a delete rewrites one, and the writer then bumps the run's ``gen`` (merges make new
runs). So a summary of one key in one run (entry count, actor bitmap, repeated actors)
stays true for as long as the run's gen is the same, and readers keep one for keys seen
with many chunks. Inactive accounts are not in the summary: they change without any
rewrite, so they are subtracted at read time as everywhere else.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable

from pyroaring import BitMap, FrozenBitMap

from smalldp.store.encoding import BlockHeader

BIG_KEY_CHUNKS = 8  # a key with this many chunks in one run is summarized
CACHE_BYTES = 32 * 1024 * 1024  # about; roaring keeps ~2 bytes per actor of a big key
Key = tuple[bytes, int]  # (target key, source id)


@dataclass(frozen=True)
class RunSummary:
    """One key's entries in one run: how many, whose, and which actors appear more than once."""

    count: int
    actors: FrozenBitMap
    extra: dict[int, int] = field(default_factory=dict)  # actor -> entries beyond the first

    @staticmethod
    def of(chunks: Iterable[bytes]) -> RunSummary:
        """Summarize the chunk blobs of one key in one run."""
        count = 0
        actors = BitMap()
        extra: dict[int, int] = {}
        for data in chunks:
            header = BlockHeader(data)
            count += header.count
            for aid, n in header.extra.items():
                extra[aid] = extra.get(aid, 0) + n
            again = actors & header.bitmap  # in an earlier chunk too: one more entry each
            for aid in again:
                extra[aid] = extra.get(aid, 0) + 1
            actors |= header.bitmap
        return RunSummary(count, FrozenBitMap(actors), extra)

    @property
    def size(self) -> int:
        return 2 * len(self.actors) + 16 * len(self.extra) + 64


class SummaryCache:
    """LRU of RunSummary by (run, gen, key), bounded in bytes; thread-safe."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lru: OrderedDict[tuple[int, int, Key], RunSummary] = OrderedDict()
        self._bytes = 0
        self._big: OrderedDict[Key, None] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def is_big(self, key: Key) -> bool:
        """Whether ``key`` was seen with many chunks (only those are summarized)."""
        return key in self._big

    def mark_big(self, key: Key) -> None:
        with self._lock:
            self._big[key] = None
            while len(self._big) > 100_000:
                self._big.popitem(last=False)

    def get(self, run: int, gen: int, key: Key) -> RunSummary | None:
        with self._lock:
            summary = self._lru.get((run, gen, key))
            if summary is None:
                self.misses += 1
                return None
            self._lru.move_to_end((run, gen, key))
            self.hits += 1
            return summary

    def put(self, run: int, gen: int, key: Key, summary: RunSummary) -> None:
        with self._lock:
            old = self._lru.pop((run, gen, key), None)
            if old is not None:
                self._bytes -= old.size
            self._lru[(run, gen, key)] = summary
            self._bytes += summary.size
            while self._bytes > self.max_bytes and len(self._lru) > 1:
                _, dropped = self._lru.popitem(last=False)
                self._bytes -= dropped.size
