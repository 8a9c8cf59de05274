"""A strict DAG-CBOR decoder: what relay firehose frames and atproto records are written in.

Written from the DAG-CBOR specification (the IPLD codec: a deterministic subset of CBOR,
RFC 8949), for ``events_firehose``.  Values come out as Python values: unsigned and
negative integers as ``int``, byte strings as ``bytes``, text strings as ``str``, arrays
as ``list``, maps as ``dict`` (text keys), ``true``/``false``/``null`` as ``True``/
``False``/``None``, 64-bit floats as ``float``, and tag 42 (a CID link: a byte string
holding 0x00 then the binary CID) as ``CID``.

``decode_atjson`` is the atproto data model's JSON form instead, as Jetstream writes records:
a link is ``{"$link": "<base32 CID string>"}``, a byte string ``{"$bytes": "<standard
base64, no padding>"}``, and floats (which atproto data forbids) and maps with a ``$link``
or ``$bytes`` key (which that JSON form could not tell from a link or bytes) are errors.

Everything DAG-CBOR forbids raises ``DecodeError`` (a ``ValueError``) saying what and
where: indefinite lengths; an integer, length or tag not in its shortest form; map keys
that are not text strings, not in DAG-CBOR's order (shorter first, then bytewise) or
repeated; any tag but 42, and a tag 42 not holding a 0x00-prefixed valid CID; floats other
than 64-bit ones, NaN and the infinities; ``undefined`` and other simple values; text that is
not UTF-8; nesting deeper than ``MAX_DEPTH``; truncated input; and bytes after the item
where one whole item is expected.

``encode`` is the other direction, canonical DAG-CBOR (shortest heads, map keys shorter
first then bytewise, 64-bit floats, ``CID`` as tag 42): what a signature covers is
re-encoded with it (``smalldp.verify``), and the tests build their frames with it.

Kept plain for mypyc (``[tool.smalldp.compile] modules``) and quick interpreted: one
function per item on a ``bytes`` object and an offset, with the common small items (short
text, small integers, null, booleans) of arrays and maps decoded inline.
"""

from __future__ import annotations

import binascii
import math
import struct
from typing import Any, Final

__all__ = [
    "CID", "DecodeError", "MAX_DEPTH", "cid_text", "decode", "decode_atjson", "decode_prefix",
    "encode", "read_varint",
]

# Arrays and maps nested inside one another (a link or a scalar adds none).  Interpreted, a
# level is a Python frame: 400 leaves the interpreter's default limit (1000) room for callers.
MAX_DEPTH: Final = 400


class DecodeError(ValueError):
    """Input that is not DAG-CBOR (or, for ``decode_atjson``, not atproto data)."""


class CID:
    """A CID link (tag 42): ``cid_bytes`` is the binary CID, without the 0x00 prefix."""

    def __init__(self, cid_bytes: bytes) -> None:
        self.cid_bytes = cid_bytes

    def encode(self) -> str:
        """The string form: multibase base32 ("bafy...")."""
        return cid_text(self.cid_bytes)

    def __str__(self) -> str:
        return cid_text(self.cid_bytes)

    def __repr__(self) -> str:
        return f"CID({cid_text(self.cid_bytes)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CID) and other.cid_bytes == self.cid_bytes

    def __ne__(self, other: object) -> bool:
        return not (isinstance(other, CID) and other.cid_bytes == self.cid_bytes)

    def __hash__(self) -> int:
        return hash(self.cid_bytes)


# --- entry points ----------------------------------------------------------------------------


def decode(data: bytes | bytearray | memoryview) -> Any:
    """The one DAG-CBOR item ``data`` holds (nothing may follow it)."""
    raw = data if type(data) is bytes else bytes(data)
    value, end = _top(raw, 0, False)
    if end != len(raw):
        raise DecodeError(f"{len(raw) - end} bytes after the item (which ends at byte {end})")
    return value


def decode_atjson(data: bytes | bytearray | memoryview) -> Any:
    """Like ``decode``, into the atproto data model's JSON form (see the module docstring)."""
    raw = data if type(data) is bytes else bytes(data)
    value, end = _top(raw, 0, True)
    if end != len(raw):
        raise DecodeError(f"{len(raw) - end} bytes after the item (which ends at byte {end})")
    return value


def decode_prefix(data: bytes, pos: int = 0) -> tuple[Any, int]:
    """(the item starting at byte ``pos``, the offset just after it): for data that holds
    items back to back, as an event stream frame (header, then body) does."""
    if pos < 0 or pos > len(data):
        raise DecodeError(f"offset {pos} outside the {len(data)} bytes")
    return _top(data, pos, False)


def _top(data: bytes, pos: int, atjson: bool) -> tuple[Any, int]:
    try:
        return _item(data, pos, MAX_DEPTH, atjson)
    except IndexError:  # only ever a read of data[i] past its end
        raise DecodeError(f"truncated: the input ends ({len(data)} bytes) inside an item") from None
    except UnicodeDecodeError as exc:
        raise DecodeError(f"text string that is not UTF-8 ({exc.reason})") from None
    except RecursionError:  # the interpreter's limit, lower than MAX_DEPTH when called deep
        raise DecodeError("nested deeper than this interpreter's stack allows") from None


# --- items -----------------------------------------------------------------------------------


def _item(data: bytes, pos: int, depth: int, atjson: bool) -> tuple[Any, int]:
    """(value, end) of the item whose initial byte is at ``pos``; ``depth`` more arrays or
    maps may be entered.  Arrays and maps are decoded here rather than in functions of
    their own: one Python frame per level of nesting (the interpreter's recursion limit),
    one call fewer per container."""
    start = pos
    ib = data[pos]
    major = ib >> 5
    info = ib & 31
    if major == 7:
        return _simple(data, pos, info, atjson)
    if info < 24:
        arg = info
        pos += 1
    else:
        arg, pos = _argument(data, pos, info)
    if major == 3:
        end = pos + arg
        if end > len(data):
            raise _truncated(pos, arg, "text string")
        return data[pos:end].decode(), end
    if major == 5:
        if depth == 0:
            raise _too_deep(start)
        depth -= 1
        n = len(data)
        if arg > n - pos:  # an entry takes two bytes at least: don't loop on a lie
            raise _truncated(pos, arg, "map")
        out: dict[str, Any] = {}
        prev = b""
        prev_len = -1
        for _ in range(arg):
            kb = data[pos]
            if 0x60 <= kb < 0x78:  # a text key shorter than 24 bytes: nearly all
                klen = kb - 0x60
                pos += 1
            elif kb >> 5 == 3:
                klen, pos = _argument(data, pos, kb & 31)
            else:
                raise DecodeError(f"map key at byte {pos} is not a text string (initial byte 0x{kb:02x})")
            kend = pos + klen
            if kend > n:
                raise _truncated(pos, klen, "map key")
            key_bytes = data[pos:kend]
            # DAG-CBOR's order: shorter keys first, then bytewise; equal would be a repeat.
            if klen < prev_len or (klen == prev_len and key_bytes <= prev):
                if key_bytes == prev:
                    raise DecodeError(f"map key {key_bytes!r} at byte {pos} repeated")
                raise DecodeError(f"map key {key_bytes!r} at byte {pos} out of DAG-CBOR order"
                                  f" (after {prev!r}: shorter keys first, then bytewise)")
            key = key_bytes.decode()
            if atjson and (key == "$link" or key == "$bytes"):
                raise DecodeError(f"map key {key!r} at byte {pos}: reserved in atproto data")
            prev = key_bytes
            prev_len = klen
            vb = data[kend]
            if vb < 0x18:  # a small unsigned integer
                out[key] = vb
                pos = kend + 1
            elif 0x60 <= vb < 0x78:  # a short text string
                pos = kend + 1 + vb - 0x60
                if pos > n:
                    raise _truncated(kend + 1, vb - 0x60, "text string")
                out[key] = data[kend + 1:pos].decode()
            elif vb == 0x78:  # a text string of 24 to 255 bytes: times, DIDs
                size = data[kend + 1]
                pos = kend + 2 + size
                if size < 24:
                    raise _not_shortest(kend, size)
                if pos > n:
                    raise _truncated(kend + 2, size, "text string")
                out[key] = data[kend + 2:pos].decode()
            elif vb == 0xF6:
                out[key] = None
                pos = kend + 1
            elif vb == 0xF5 or vb == 0xF4:
                out[key] = vb == 0xF5
                pos = kend + 1
            elif vb == 0xD8 and data[kend + 1] == 42:  # a link
                out[key], pos = _link(data, kend + 2, atjson)
            else:
                out[key], pos = _item(data, kend, depth, atjson)
        return out, pos
    if major == 0:
        return arg, pos
    if major == 2:
        end = pos + arg
        if end > len(data):
            raise _truncated(pos, arg, "byte string")
        if atjson:
            return {"$bytes": _base64(data[pos:end])}, end
        return data[pos:end], end
    if major == 4:
        if depth == 0:
            raise _too_deep(start)
        depth -= 1
        n = len(data)
        if arg > n - pos:  # an element takes a byte at least
            raise _truncated(pos, arg, "array")
        items: list[Any] = []
        for _ in range(arg):
            vb = data[pos]
            if vb < 0x18:
                items.append(vb)
                pos += 1
            elif 0x60 <= vb < 0x78:
                end = pos + 1 + vb - 0x60
                if end > n:
                    raise _truncated(pos + 1, vb - 0x60, "text string")
                items.append(data[pos + 1:end].decode())
                pos = end
            else:
                value, pos = _item(data, pos, depth, atjson)
                items.append(value)
        return items, pos
    if major == 1:
        return -1 - arg, pos
    # major == 6: a tag, of which DAG-CBOR has one
    if arg != 42:
        raise DecodeError(f"tag {arg} at byte {start}: DAG-CBOR has only tag 42 (CID)")
    return _link(data, pos, atjson)


def _simple(data: bytes, pos: int, info: int, atjson: bool) -> tuple[Any, int]:
    """Major type 7 at ``pos``: false, true, null, or a 64-bit float."""
    if info == 20:
        return False, pos + 1
    if info == 21:
        return True, pos + 1
    if info == 22:
        return None, pos + 1
    if info == 27:
        if atjson:
            raise DecodeError(f"float at byte {pos}: floats are not atproto data")
        if pos + 9 > len(data):
            raise _truncated(pos + 1, 8, "float")
        value: float = struct.unpack_from(">d", data, pos + 1)[0]
        if not math.isfinite(value):
            raise DecodeError(f"float {value} at byte {pos}: DAG-CBOR has no NaN or infinities")
        return value, pos + 9
    if info == 25 or info == 26:
        raise DecodeError(f"{16 if info == 25 else 32}-bit float at byte {pos}: DAG-CBOR floats are 64-bit")
    if info == 23:
        raise DecodeError(f"undefined at byte {pos}: not in DAG-CBOR")
    if info == 31:
        raise DecodeError(f"break at byte {pos}: DAG-CBOR has no indefinite lengths")
    if info == 24:
        raise DecodeError(f"simple value {data[pos + 1]} at byte {pos}: not in DAG-CBOR")
    raise DecodeError(f"simple value {info} at byte {pos}: not in DAG-CBOR")


def _link(data: bytes, pos: int, atjson: bool) -> tuple[Any, int]:
    """The byte string of a tag 42 at ``pos``, as a CID."""
    ib = data[pos]
    if ib >> 5 != 2:
        raise DecodeError(f"tag 42 at byte {pos} holds initial byte 0x{ib:02x}, not a byte string")
    if (ib & 31) < 24:
        size = ib & 31
        start = pos + 1
    else:
        size, start = _argument(data, pos, ib & 31)
    end = start + size
    if end > len(data):
        raise _truncated(start, size, "CID")
    if size < 2 or data[start] != 0:
        raise DecodeError(f"tag 42 at byte {pos}: a CID link is 0x00 then a CID")
    cid = data[start + 1:end]
    if not (size == 37 and (cid[:4] == _DAG_CBOR_SHA256 or cid[:4] == _RAW_SHA256)) and not _valid_cid(cid):
        raise DecodeError(f"tag 42 at byte {pos}: not a valid CID ({cid[:8].hex()}...)")
    if atjson:
        return {"$link": cid_text(cid)}, end
    return CID(cid), end


def _argument(data: bytes, pos: int, info: int) -> tuple[int, int]:
    """(argument, offset after the head) of the head at ``pos`` whose additional info is
    ``info`` >= 24; the argument must need the bytes it takes (the shortest form)."""
    if info == 24:
        if pos + 2 > len(data):
            raise _truncated(pos + 1, 1, "argument")
        value = data[pos + 1]
        if value < 24:
            raise _not_shortest(pos, value)
        return value, pos + 2
    if info == 25:
        end = pos + 3
        minimum = 0x100
    elif info == 26:
        end = pos + 5
        minimum = 0x10000
    elif info == 27:
        end = pos + 9
        minimum = 0x100000000
    elif info == 31:
        raise DecodeError(f"indefinite length at byte {pos}: DAG-CBOR lengths are definite")
    else:
        raise DecodeError(f"reserved additional info {info} at byte {pos}")
    if end > len(data):
        raise _truncated(pos + 1, end - pos - 1, "argument")
    value = int.from_bytes(data[pos + 1:end], "big")
    if value < minimum:
        raise _not_shortest(pos, value)
    return value, end


def _truncated(pos: int, size: int, what: str) -> DecodeError:
    return DecodeError(f"truncated: {what} at byte {pos} of {size} bytes or entries runs past the input")


def _not_shortest(pos: int, value: int) -> DecodeError:
    return DecodeError(f"{value} at byte {pos} not in its shortest form (DAG-CBOR requires it)")


def _too_deep(pos: int) -> DecodeError:
    return DecodeError(f"nested deeper than {MAX_DEPTH} arrays and maps at byte {pos}")


# --- encoding --------------------------------------------------------------------------------


def encode(value: Any) -> bytes:
    """``value`` as canonical DAG-CBOR: the Python values ``decode`` gives (``int``, ``bytes``,
    ``str``, ``list`` or ``tuple``, ``dict`` with text keys, ``True``/``False``/``None``,
    finite ``float``, ``CID``); TypeError for anything else, ValueError for what DAG-CBOR
    can't hold (NaN, infinities, integers outside 64 bits, non-text map keys)."""
    out = bytearray()
    _encode_into(out, value, MAX_DEPTH)
    return bytes(out)


def _encode_into(out: bytearray, value: Any, depth: int) -> None:
    # bool before int: True is an int to isinstance.
    if value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif isinstance(value, int):
        if value >= 0:
            _head(out, 0, value)
        else:
            _head(out, 1, -1 - value)
    elif isinstance(value, str):
        raw = value.encode()
        _head(out, 3, len(raw))
        out += raw
    elif isinstance(value, (bytes, bytearray, memoryview)):
        _head(out, 2, len(value))
        out += value
    elif isinstance(value, CID):
        _head(out, 6, 42)
        _head(out, 2, len(value.cid_bytes) + 1)
        out.append(0)
        out += value.cid_bytes
    elif isinstance(value, (list, tuple, dict)):
        if depth == 0:
            raise ValueError(f"nested deeper than {MAX_DEPTH} arrays and maps")
        if isinstance(value, dict):
            keys: list[tuple[int, bytes, Any]] = []
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValueError(f"map key {key!r} is not a text string")
                raw_key = key.encode()
                keys.append((len(raw_key), raw_key, item))
            keys.sort(key=_key_order)  # DAG-CBOR's order: shorter first, then bytewise
            _head(out, 5, len(keys))
            for size, raw_key, item in keys:
                _head(out, 3, size)
                out += raw_key
                _encode_into(out, item, depth - 1)
        else:
            _head(out, 4, len(value))
            for item in value:
                _encode_into(out, item, depth - 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"float {value}: DAG-CBOR has no NaN or infinities")
        out.append(0xFB)
        out += struct.pack(">d", value)
    else:
        raise TypeError(f"can't encode {type(value).__name__} as DAG-CBOR")


def _key_order(entry: tuple[int, bytes, Any]) -> tuple[int, bytes]:
    return entry[0], entry[1]


def _head(out: bytearray, major: int, arg: int) -> None:
    """The head of major type ``major`` with argument ``arg`` in its shortest form."""
    if arg < 24:
        out.append(major << 5 | arg)
    elif arg < 0x100:
        out.append(major << 5 | 24)
        out.append(arg)
    elif arg < 0x10000:
        out.append(major << 5 | 25)
        out += arg.to_bytes(2, "big")
    elif arg < 0x100000000:
        out.append(major << 5 | 26)
        out += arg.to_bytes(4, "big")
    elif arg < 0x10000000000000000:
        out.append(major << 5 | 27)
        out += arg.to_bytes(8, "big")
    else:
        raise ValueError(f"integer {arg} does not fit DAG-CBOR's 64 bits")


# --- CIDs ------------------------------------------------------------------------------------

_DAG_CBOR_SHA256: Final = b"\x01\x71\x12\x20"  # CIDv1, dag-cbor, sha2-256, 32 bytes
_RAW_SHA256: Final = b"\x01\x55\x12\x20"  # CIDv1, raw (blobs), sha2-256, 32 bytes


def _valid_cid(cid: bytes) -> bool:
    """A binary CID: v1 (version, codec, multihash code, digest length, digest) or v0 (a
    bare sha2-256 multihash), its varints minimal, the digest all that follows."""
    if len(cid) == 36 and (cid[:4] == _DAG_CBOR_SHA256 or cid[:4] == _RAW_SHA256):
        return True
    if len(cid) == 34 and cid[0] == 0x12 and cid[1] == 0x20:
        return True
    try:
        version, pos = read_varint(cid, 0)
        if version != 1:
            return False
        _, pos = read_varint(cid, pos)  # codec
        _, pos = read_varint(cid, pos)  # multihash function
        size, pos = read_varint(cid, pos)
    except DecodeError:
        return False
    return pos + size == len(cid)


def write_varint(value: int) -> bytes:
    """``value`` (>= 0) as a multiformats unsigned varint (LEB128, shortest form), as CAR
    sections and CIDs hold it: what read_varint reads."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, offset after it) of the multiformats unsigned varint at ``pos``: LEB128, at
    most 9 bytes, in its shortest form."""
    value = 0
    shift = 0
    start = pos
    while True:
        if pos >= len(data):
            raise DecodeError(f"truncated varint at byte {start}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and pos - start > 1:
                raise DecodeError(f"varint at byte {start} not in its shortest form")
            return value, pos
        shift += 7
        if shift >= 63:
            raise DecodeError(f"varint at byte {start} longer than 9 bytes")


_B32_LETTERS: Final = bytes.maketrans(bytes(range(32)), b"abcdefghijklmnopqrstuvwxyz234567")
_SPREADS: dict[int, list[tuple[int, int, int]]] = {}


def cid_text(cid: bytes) -> str:
    """A binary CID's string form: "b" and its lowercase unpadded RFC 4648 base32 ("bafy...").

    The CID as one integer whose 5-bit groups are moved apart into bytes (a few big-integer
    shifts and masks, ``_spread``), then made letters by ``bytes.translate``: 3 times quicker
    interpreted than a loop over 5-byte chunks.
    """
    groups = (len(cid) * 8 + 4) // 5
    steps = _SPREADS.get(len(cid))
    if steps is None:
        steps = _spread(groups)
        if len(_SPREADS) < 64:
            _SPREADS[len(cid)] = steps
    x = int.from_bytes(cid, "big") << (groups * 5 - len(cid) * 8)
    for move, mask, keep in steps:
        x = (x & keep) | ((x & mask) << move)
    return "b" + x.to_bytes(groups, "big").translate(_B32_LETTERS).decode("ascii")


def _spread(groups: int) -> list[tuple[int, int, int]]:
    """Steps (shift, moved bits, kept bits) taking group i of 5 bits from bit 5i to bit 8i:
    i is a sum of powers of two 2**k, and each step moves the groups whose i has 2**k by
    3 * 2**k bits, the largest first (so no group lands on one yet to move)."""
    position = [5 * i for i in range(groups)]
    steps: list[tuple[int, int, int]] = []
    for k in range(max(1, (groups - 1).bit_length()) - 1, -1, -1):
        mask = 0
        for i in range(groups):
            if i >> k & 1:
                mask |= 31 << position[i]
                position[i] += 3 << k
        steps.append((3 << k, mask, ~mask))
    return steps


def _base64(data: bytes) -> str:
    """Standard base64 without padding, as atproto's JSON writes bytes."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").decode("ascii")
