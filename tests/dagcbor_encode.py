"""Test helpers for hand-made DAG-CBOR: item heads in a chosen (non-canonical) width and
multiformats varints.  Canonical encoding is ``smalldp.dagcbor.encode`` (the one encoder).
"""

from __future__ import annotations

from smalldp.dagcbor import write_varint


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


# CAR sections' and CIDs' varints: the package's writer (tests/test_dagcbor.py checks it
# against read_varint and hand-written bytes).
uvarint = write_varint
