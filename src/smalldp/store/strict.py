"""Strict decoding of the stored formats, for check_store (store/check.py).

The reader's decoders (store/encoding.py, store/timeline.py) trust what the writer
wrote and decode as fast as they can; these check every byte instead: a header that
disagrees with its entries, entries out of order, a truncated link list are errors
(ChunkError, ValueError), not short reads.
"""

from __future__ import annotations

import struct
from collections import Counter

from pyroaring import BitMap

from smalldp.store import timeline
from smalldp.store.encoding import BITMAP_MIN_ENTRIES, get_varint, unzigzag


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
    if len(data) != 8 + size + 17 * n:
        raise ValueError(f"{len(data)} bytes, the header ({n} entries, bitmap {size}) says {8 + size + 17 * n}")
    segment = timeline.Segment(data)  # raises on a bitmap that does not deserialize
    entries = list(segment.all_entries())
    if segment.bitmap != BitMap(aid for _, aid, _ in entries):
        raise ValueError("bitmap does not match the entries' authors")
    order = [(aid, -sk, -kind) for sk, aid, kind in entries]
    if any(not a < b for a, b in zip(order, order[1:])):
        raise ValueError("entries not sorted by author, then newest first, without repeats")
    if any(kind not in (timeline.KIND_POST, timeline.KIND_REPOST) for _, _, kind in entries):
        raise ValueError("unknown entry kind")
    by_time = list(segment.by_time(segment.bitmap, None))
    if by_time != sorted(entries, reverse=True):
        raise ValueError("the time order does not list the entries newest first")
    return entries


def decode_links_strict(data: bytes) -> list[tuple[int, bytes]]:
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
