"""A small DAG-CBOR encoder for the tests, written from the spec independently of
smalldp.dagcbor's decoder: it builds frames, records and CARs, good and bad.

``encode`` writes canonical DAG-CBOR: shortest heads, map keys shorter first then bytewise,
64-bit floats, ``smalldp.dagcbor.CID`` as tag 42 over 0x00 + the CID bytes.
``head`` writes one item head as asked, for hand-made non-canonical input.
"""

from __future__ import annotations

import struct
from typing import Any

from smalldp.dagcbor import CID


def head(major: int, arg: int, width: int | None = None) -> bytes:
    """The head of major type ``major`` with argument ``arg``: in its shortest form, or with
    ``width`` (0 for the initial byte, 1, 2, 4 or 8 argument bytes) to force another one."""
    if width is None:
        width = 0 if arg < 24 else 1 if arg < 0x100 else 2 if arg < 0x10000 else 4 if arg < 0x100000000 else 8
    if width == 0:
        assert arg < 24
        return bytes([major << 5 | arg])
    info = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | info]) + arg.to_bytes(width, "big")


def key_order(key: str) -> tuple[int, bytes]:
    raw = key.encode()
    return (len(raw), raw)


def encode(value: Any) -> bytes:
    if value is None:
        return b"\xf6"
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, float):
        return b"\xfb" + struct.pack(">d", value)
    if isinstance(value, (bytes, bytearray)):
        return head(2, len(value)) + bytes(value)
    if isinstance(value, str):
        raw = value.encode()
        return head(3, len(raw)) + raw
    if isinstance(value, (list, tuple)):
        return head(4, len(value)) + b"".join(encode(v) for v in value)
    if isinstance(value, dict):
        assert all(isinstance(k, str) for k in value)
        keys = sorted(value, key=key_order)
        return head(5, len(keys)) + b"".join(encode(k) + encode(value[k]) for k in keys)
    if isinstance(value, CID):
        return b"\xd8\x2a" + encode(b"\x00" + value.cid_bytes)
    raise TypeError(f"can't encode {type(value).__name__}")


def uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
