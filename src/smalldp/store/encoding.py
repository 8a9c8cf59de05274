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

from smalldp.events import _did_ok, _nsid_ok, valid_did, valid_nsid, valid_rkey
from smalldp.tid import int_to_tid, tid_to_int

# A block carries a serialized bitmap of its actors once it is this big, so counts
# don't have to decode every entry.
BITMAP_MIN_ENTRIES = 24

# Target key kinds (first byte).
_RAW, _URI_TID, _URI_KEY, _DID = 0, 1, 2, 3
_RAW_BYTE, _URI_TID_BYTE, _URI_KEY_BYTE, _DID_BYTE = b"\x00", b"\x01", b"\x02", b"\x03"


# Varints are written from tables: _LOW[v] is the whole varint of v < 2**14 (one or two
# bytes), _PAIR[v] the two continued bytes of a 14-bit group. Writing a TID-sized value
# (9 bytes) is then four table lookups instead of nine loop turns (about 2.5x faster).
_LOW = [bytes((v,)) if v < 0x80 else bytes(((v & 0x7F) | 0x80, v >> 7)) for v in range(1 << 14)]
_PAIR = [bytes(((v & 0x7F) | 0x80, (v >> 7) | 0x80)) for v in range(1 << 14)]


def varint(value: int) -> bytes:
    """The unsigned LEB128 varint of ``value`` (ValueError for a negative one)."""
    if value < 0x4000:
        if value < 0:
            raise ValueError(f"varint of a negative value: {value}")
        return _LOW[value]
    out = _PAIR[value & 0x3FFF]
    value >>= 14
    while value >= 0x4000:
        out += _PAIR[value & 0x3FFF]
        value >>= 14
    return out + _LOW[value]


def put_varint(out: bytearray, value: int) -> None:
    """Append an unsigned LEB128 varint."""
    out += varint(value)


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
    # The memos first (a dict lookup, no call): the same DIDs and collections recur.
    if (_did_ok.get(did) or valid_did(did)) and (_nsid_ok.get(collection) or valid_nsid(collection)) \
            and valid_rkey(rkey):
        return did, collection, rkey
    return None


def target_dids(target: str) -> str | None:
    """The DID a target key will reference (so the writer can give it an ID first)."""
    if target.startswith("did:"):
        return target if _did_ok.get(target) or valid_did(target) else None
    parts = split_target(target)
    return parts[0] if parts else None


def encode_target(target: str, aid_of: Callable[[str], int], coll_of: Callable[[str], int]) -> bytes:
    """Encode a link target as a compact key: DIDs and at-uris use integer IDs."""
    if target.startswith("did:") and (_did_ok.get(target) or valid_did(target)):
        return _DID_BYTE + varint(aid_of(target))
    parts = split_target(target)
    if parts is None:
        return _RAW_BYTE + target.encode()
    did, collection, rkey = parts
    tid = tid_to_int(rkey)
    # aid_of before coll_of, as always: either may assign an ID.
    if tid is not None:
        return _URI_TID_BYTE + varint(aid_of(did)) + varint(coll_of(collection)) + tid.to_bytes(8, "big")
    return _URI_KEY_BYTE + varint(aid_of(did)) + varint(coll_of(collection)) + rkey.encode()


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
    return _DID_BYTE + varint(aid)


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
    low = _LOW
    parts: list[bytes] = []
    for sid, tkey in links:
        size = len(tkey)
        parts += (low[sid] if 0 <= sid < 0x4000 else varint(sid),
                  low[size] if size < 0x4000 else varint(size), tkey)
    return b"".join(parts)


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
    low = _LOW
    if n == 1:  # the common case in fresh runs: header 1, no duplicates, no bitmap
        sk, aid = entries[0]
        z = sk << 1 if sk >= 0 else ((-sk) << 1) - 1
        if 0x100000000000000 <= z < 0x400000000000000000:  # 2**56 <= z < 2**70: a TID's 9 bytes
            pair = _PAIR
            head = (b"\x01\x00\x00" + pair[z & 0x3FFF] + pair[z >> 14 & 0x3FFF] + pair[z >> 28 & 0x3FFF]
                    + pair[z >> 42 & 0x3FFF] + low[z >> 56])
        else:
            head = b"\x01\x00\x00" + varint(z)
        return head + (low[aid] if 0 <= aid < 0x4000 else varint(aid))
    parts = [low[n] if n < 0x4000 else varint(n)]
    aids = [aid for _, aid in entries]
    distinct = set(aids)
    if len(distinct) != n:
        extra = [(aid, c - 1) for aid, c in Counter(aids).items() if c > 1]
        parts.append(varint(len(extra)))
        for aid, c in sorted(extra):
            parts += (varint(aid), varint(c))
    else:
        parts.append(b"\x00")
    if n >= BITMAP_MIN_ENTRIES:
        bitmap = BitMap(distinct).serialize()
        parts += (varint(len(bitmap)), bitmap)
    else:
        parts.append(b"\x00")
    if n:
        prev, aid = entries[0]
        parts += (varint(prev << 1 if prev >= 0 else ((-prev) << 1) - 1),
                  low[aid] if 0 <= aid < 0x4000 else varint(aid))
        for i in range(1, n):
            sk, aid = entries[i]
            delta = prev - sk  # >= 0 (sorted); varint raises on a negative one
            parts += (low[delta] if 0 <= delta < 0x4000 else varint(delta),
                      low[aid] if 0 <= aid < 0x4000 else varint(aid))
            prev = sk
    return b"".join(parts)


def _decode_entries(data: bytes, pos: int, count: int) -> list[Entry]:
    """``count`` entries from ``pos`` (the varint reads inlined: this is the hot loop)."""
    entries: list[Entry] = []
    if count <= 0:
        return entries
    append = entries.append
    # The first sort key, zigzagged (a TID's takes 9 bytes); then the actor.
    byte = data[pos]
    pos += 1
    value = byte & 0x7F
    shift = 7
    while byte >= 0x80:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
    sk = value >> 1 if not value & 1 else -((value + 1) >> 1)
    byte = data[pos]
    pos += 1
    value = byte & 0x7F
    shift = 7
    while byte >= 0x80:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
    append((sk, value))
    for _ in range(count - 1):
        # The sort key's distance to the previous one, then the actor.
        byte = data[pos]
        pos += 1
        value = byte & 0x7F
        shift = 7
        while byte >= 0x80:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
        sk -= value
        byte = data[pos]
        pos += 1
        if byte < 0x80:
            append((sk, byte))
            continue
        value = byte & 0x7F
        shift = 7
        while byte >= 0x80:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
        append((sk, value))
    return entries


class BlockHeader:
    """The parsed header of a block: enough for counts without touching entries."""

    __slots__ = ("count", "extra", "bitmap", "body")

    def __init__(self, data: bytes) -> None:
        if data[0] < 0x80 and data[1] == 0 and data[2] == 0:  # few entries, no duplicates, no bitmap
            self.count = count = data[0]
            self.extra: dict[int, int] = {}
            self.body = 3
            self.bitmap: BitMap = BitMap([aid for _, aid in _decode_entries(data, 3, count)])
            return
        self.count, pos = get_varint(data, 0)
        ndup, pos = get_varint(data, pos)
        self.extra = {}
        for _ in range(ndup):
            aid, pos = get_varint(data, pos)
            c, pos = get_varint(data, pos)
            self.extra[aid] = c
        size, pos = get_varint(data, pos)
        if size:
            self.bitmap = BitMap.deserialize(data[pos:pos + size])
            pos += size
        else:
            self.bitmap = BitMap([aid for _, aid in _decode_entries(data, pos, self.count)])
        self.body = pos


def iter_entries(data: bytes, pos: int, count: int) -> Iterator[Entry]:
    """Yield a block's entries newest first, starting at the entry area ``pos``.

    Lazy: a reader's first page needs only the first entries of each chunk."""
    sk = 0
    for i in range(count):
        byte = data[pos]
        pos += 1
        value = byte & 0x7F
        shift = 7
        while byte >= 0x80:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
        if i:
            sk -= value
        else:
            sk = value >> 1 if not value & 1 else -((value + 1) >> 1)
        byte = data[pos]
        pos += 1
        if byte < 0x80:
            yield sk, byte
            continue
        value = byte & 0x7F
        shift = 7
        while byte >= 0x80:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
        yield sk, value


def decode_block(data: bytes) -> list[Entry]:
    """All entries of a block, newest first."""
    if data[0] < 0x80 and data[1] == 0 and data[2] == 0:  # no duplicates, no bitmap: entries at 3
        return _decode_entries(data, 3, data[0])
    count, pos = get_varint(data, 0)
    ndup, pos = get_varint(data, pos)
    for _ in range(2 * ndup):
        pos = get_varint(data, pos)[1]
    size, pos = get_varint(data, pos)
    return _decode_entries(data, pos + size, count)


def record_rkey(sk: int) -> str | None:
    """The rkey a non-negative sort key stands for (negative keys are aliases)."""
    return int_to_tid(sk) if sk >= 0 else None
