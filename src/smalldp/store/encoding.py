"""Compact byte encodings of the store: varints, target keys, link lists, backlink blocks.

Everything on disk that is not a plain SQLite integer is one of these.  They are
kept small because bytes per link is what decides whether the whole network fits
on an SD card.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Iterator

from pyroaring import BitMap

from smalldp.events import valid_did, valid_nsid, valid_rkey
from smalldp.tid import int_to_tid, tid_to_int

# A block carries a serialized bitmap of its actors once it is this big, so counts
# don't have to decode every entry.
BITMAP_MIN_ENTRIES = 24

# Target key kinds (first byte).
_RAW, _URI_TID, _URI_KEY, _DID = 0, 1, 2, 3


def put_varint(out: bytearray, value: int) -> None:
    """Append an unsigned LEB128 varint."""
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def get_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Read an unsigned varint at ``pos``; return (value, next position)."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    value = byte & 0x7F
    shift = 7
    pos += 1
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def zigzag(value: int) -> int:
    """Map a signed integer to an unsigned one (small magnitudes stay small)."""
    return value << 1 if value >= 0 else ((-value) << 1) - 1


def unzigzag(value: int) -> int:
    """Inverse of ``zigzag``."""
    return value >> 1 if not value & 1 else -((value + 1) >> 1)


# ---------------------------------------------------------------- target keys

def split_target(target: str) -> tuple[str, str, str] | None:
    """Split ``at://did/collection/rkey`` into its parts, or None for other strings."""
    if not target.startswith("at://"):
        return None
    parts = target[5:].split("/")
    if len(parts) != 3:
        return None
    did, collection, rkey = parts
    if valid_did(did) and valid_nsid(collection) and valid_rkey(rkey):
        return did, collection, rkey
    return None


def target_dids(target: str) -> str | None:
    """The DID a target key will reference (so the writer can give it an ID first)."""
    if target.startswith("did:"):
        return target if valid_did(target) else None
    parts = split_target(target)
    return parts[0] if parts else None


def encode_target(target: str, aid_of: Callable[[str], int], coll_of: Callable[[str], int]) -> bytes:
    """Encode a link target as a compact key: DIDs and at-uris use integer IDs."""
    out = bytearray()
    if target.startswith("did:") and valid_did(target):
        out.append(_DID)
        put_varint(out, aid_of(target))
        return bytes(out)
    parts = split_target(target)
    if parts is None:
        return bytes((_RAW,)) + target.encode()
    did, collection, rkey = parts
    tid = tid_to_int(rkey)
    out.append(_URI_TID if tid is not None else _URI_KEY)
    put_varint(out, aid_of(did))
    put_varint(out, coll_of(collection))
    if tid is not None:
        out += tid.to_bytes(8, "big")
    else:
        out += rkey.encode()
    return bytes(out)


def encode_target_lookup(target: str, aid_of: Callable[[str], int | None],
                         coll_of: Callable[[str], int | None]) -> bytes | None:
    """Like encode_target for readers: None when an ID it needs does not exist yet."""
    missing = False

    def aid(did: str) -> int:
        nonlocal missing
        value = aid_of(did)
        if value is None:
            missing = True
            return 0
        return value

    def coll(nsid: str) -> int:
        nonlocal missing
        value = coll_of(nsid)
        if value is None:
            missing = True
            return 0
        return value

    key = encode_target(target, aid, coll)
    return None if missing else key


def decode_target(key: bytes, did_of: Callable[[int], str], nsid_of: Callable[[int], str]) -> str:
    """Inverse of encode_target."""
    kind = key[0]
    if kind == _RAW:
        return key[1:].decode()
    aid, pos = get_varint(key, 1)
    if kind == _DID:
        return did_of(aid)
    coll, pos = get_varint(key, pos)
    if kind == _URI_TID:
        rkey = int_to_tid(int.from_bytes(key[pos:pos + 8], "big"))
    else:
        rkey = key[pos:].decode()
    return f"at://{did_of(aid)}/{nsid_of(coll)}/{rkey}"


def did_key(aid: int) -> bytes:
    """The target key of a DID with account ID ``aid``."""
    out = bytearray((_DID,))
    put_varint(out, aid)
    return bytes(out)


def key_account(key: bytes) -> int | None:
    """The account ID a DID or at-uri target key names (None for other targets)."""
    if key[0] == _RAW:
        return None
    return get_varint(key, 1)[0]


def key_did_account(key: bytes) -> int | None:
    """The account ID of a DID target key (None for other targets)."""
    return get_varint(key, 1)[0] if key[0] == _DID else None


def key_record(key: bytes) -> tuple[int, int, int | str] | None:
    """(account ID, collection ID, TID sort key or non-TID rkey) of an at-uri key, else None."""
    kind = key[0]
    if kind != _URI_TID and kind != _URI_KEY:
        return None
    aid, pos = get_varint(key, 1)
    coll, pos = get_varint(key, pos)
    if kind == _URI_TID:
        return aid, coll, int.from_bytes(key[pos:pos + 8], "big")
    return aid, coll, key[pos:].decode()


# ---------------------------------------------------------------- forward link lists

def encode_links(links: list[tuple[int, bytes]]) -> bytes:
    """A record's links as (source id, target key) pairs."""
    out = bytearray()
    for sid, tkey in links:
        put_varint(out, sid)
        put_varint(out, len(tkey))
        out += tkey
    return bytes(out)


def decode_links(data: bytes) -> list[tuple[int, bytes]]:
    """Inverse of encode_links."""
    links = []
    pos = 0
    end = len(data)
    while pos < end:
        sid, pos = get_varint(data, pos)
        size, pos = get_varint(data, pos)
        links.append((sid, data[pos:pos + size]))
        pos += size
    return links


# ---------------------------------------------------------------- backlink blocks
#
# A block holds the entries of one (target, source) in one run: (sort key, actor id)
# pairs, newest first.  Header: entry count, duplicate actors (actor -> extra links),
# and, for big blocks, a serialized roaring bitmap of actors.

Entry = tuple[int, int]  # (sort key, actor id)


def chunk_floor(lo: int) -> int | float:
    """The lowest sort key a chunk keyed ``lo`` may hold: 0 marks a run's oldest chunk."""
    return -math.inf if lo == 0 else lo


def encode_block(entries: list[Entry]) -> bytes:
    """Encode entries already sorted newest first (sort key, then actor, descending)."""
    n = len(entries)
    if n == 1:  # the common case in fresh runs
        out = bytearray(b"\x01\x00\x00")
        put_varint(out, zigzag(entries[0][0]))
        put_varint(out, entries[0][1])
        return bytes(out)
    out = bytearray()
    put_varint(out, n)
    aids = [aid for _, aid in entries]
    distinct = set(aids)
    if len(distinct) != n:
        extra = [(aid, c - 1) for aid, c in Counter(aids).items() if c > 1]
        put_varint(out, len(extra))
        for aid, c in sorted(extra):
            put_varint(out, aid)
            put_varint(out, c)
    else:
        out.append(0)
    if n >= BITMAP_MIN_ENTRIES:
        bitmap = BitMap(distinct).serialize()
        put_varint(out, len(bitmap))
        out += bitmap
    else:
        out.append(0)
    prev = None
    for sk, aid in entries:
        if prev is None:
            put_varint(out, zigzag(sk))
        else:
            put_varint(out, prev - sk)
        put_varint(out, aid)
        prev = sk
    return bytes(out)


class BlockHeader:
    """The parsed header of a block: enough for counts without touching entries."""

    __slots__ = ("count", "extra", "bitmap", "body")

    def __init__(self, data: bytes) -> None:
        self.count, pos = get_varint(data, 0)
        ndup, pos = get_varint(data, pos)
        self.extra: dict[int, int] = {}
        for _ in range(ndup):
            aid, pos = get_varint(data, pos)
            c, pos = get_varint(data, pos)
            self.extra[aid] = c
        size, pos = get_varint(data, pos)
        if size:
            self.bitmap: BitMap = BitMap.deserialize(data[pos:pos + size])
            pos += size
        else:
            self.bitmap = BitMap(aid for _, aid in iter_entries(data, pos, self.count))
        self.body = pos


def iter_entries(data: bytes, pos: int, count: int) -> Iterator[Entry]:
    """Yield a block's entries newest first, starting at the entry area ``pos``."""
    prev = 0
    for i in range(count):
        value, pos = get_varint(data, pos)
        sk = unzigzag(value) if i == 0 else prev - value
        aid, pos = get_varint(data, pos)
        prev = sk
        yield sk, aid


def decode_block(data: bytes) -> list[Entry]:
    """All entries of a block, newest first."""
    header = BlockHeader(data)
    return list(iter_entries(data, header.body, header.count))


def record_rkey(sk: int) -> str | None:
    """The rkey a non-negative sort key stands for (negative keys are aliases)."""
    return int_to_tid(sk) if sk >= 0 else None
