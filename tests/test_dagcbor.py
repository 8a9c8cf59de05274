"""smalldp.dagcbor: hand-written byte vectors for every major type and every strictness
rule, truncations of real blocks, and a round trip against smalldp.dagcbor.encode (the encoder,
written separately from the decoder: a shared misreading would have to be made twice).

Expected values are written by hand (most vectors are RFC 8949 Appendix A's), CID strings
with base64.b32encode and bytes with base64.b64encode, never taken from the decoder.
"""

from __future__ import annotations

import base64
import math
import struct
from pathlib import Path
from typing import Any

import pytest
from dagcbor_encode import head
from hypothesis import given, settings
from hypothesis import strategies as st
from test_events_firehose import read_frames

from smalldp.dagcbor import (
    CID, MAX_DEPTH, DecodeError, cid_text, decode, decode_atjson, decode_prefix, encode, read_varint,
    write_varint,
)
from smalldp.events_firehose import find_block

SHA = bytes(range(32))
CID_BYTES = b"\x01\x71\x12\x20" + SHA  # CIDv1 dag-cbor sha2-256
RAW_CID = b"\x01\x55\x12\x20" + SHA  # CIDv1 raw (a blob)
LINK = b"\xd8\x2a\x58\x25\x00" + CID_BYTES  # tag 42, 37-byte byte string, 0x00 + CID


def b32(cid: bytes) -> str:
    return "b" + base64.b32encode(cid).decode().lower().rstrip("=")


def bad(data: bytes, *words: str) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(data)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    return info.value


# --- every major type ------------------------------------------------------------------------


@pytest.mark.parametrize("hex_, value", [
    ("00", 0), ("01", 1), ("0a", 10), ("17", 23), ("1818", 24), ("1819", 25), ("1864", 100),
    ("18ff", 255), ("190100", 256), ("1903e8", 1000), ("1a000f4240", 1000000),
    ("1a00010000", 65536), ("1b000000e8d4a51000", 1000000000000),
    ("1b0000000100000000", 2**32), ("1bffffffffffffffff", 2**64 - 1),
    ("20", -1), ("29", -10), ("37", -24), ("3818", -25), ("3863", -100), ("3903e7", -1000),
    ("3bffffffffffffffff", -2**64),
    ("40", b""), ("4401020304", b"\x01\x02\x03\x04"),
    ("60", ""), ("6161", "a"), ("6449455446", "IETF"), ("62225c", '"\\'), ("62c3bc", "\u00fc"),
    ("63e6b0b4", "\u6c34"), ("64f0908591", "\U00010151"),
    ("80", []), ("83010203", [1, 2, 3]), ("8301820203820405", [1, [2, 3], [4, 5]]),
    ("98190102030405060708090a0b0c0d0e0f101112131415161718181819", list(range(1, 26))),
    ("a0", {}), ("a26161016162820203", {"a": 1, "b": [2, 3]}),
    ("826161a161626163", ["a", {"b": "c"}]),
    ("a56161614161626142616361436164614461656145", {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}),
    ("f4", False), ("f5", True), ("f6", None),
    ("fb3ff199999999999a", 1.1), ("fbc010666666666666", -4.1), ("fb7e37e43c8800759c", 1.0e300),
    ("fb0000000000000000", 0.0),
])
def test_rfc_vectors(hex_: str, value: Any) -> None:
    got = decode(bytes.fromhex(hex_))
    assert got == value and type(got) is type(value)


def test_long_strings_and_containers() -> None:
    assert decode(b"\x58\x18" + b"x" * 24) == b"x" * 24
    assert decode(b"\x78\x18" + b"y" * 24) == "y" * 24
    assert decode(b"\x79\x01\x00" + b"z" * 256) == "z" * 256
    assert decode(b"\x59\x01\x00" + bytes(256)) == bytes(256)
    keys = sorted((f"k{i:02d}" for i in range(30)))
    assert decode(b"\xb8\x1e" + b"".join(b"\x63" + k.encode() + b"\xf6" for k in keys)) == dict.fromkeys(keys)
    # values of every kind after a key: the map loop's inline paths and the general one
    data = (b"\xa8" + b"\x61a\x17" + b"\x61b\x78\x18" + b"t" * 24 + b"\x61c\xf6" + b"\x61d\xf5"
            + b"\x61e\xf4" + b"\x61f" + LINK + b"\x61g\x38\x63" + b"\x61h\x42\x00\x01")
    assert decode(data) == {"a": 23, "b": "t" * 24, "c": None, "d": True, "e": False,
                            "f": CID(CID_BYTES), "g": -100, "h": b"\x00\x01"}
    assert decode(b"\x83\xf6\x78\x18" + b"u" * 24 + b"\x80") == [None, "u" * 24, []]


def test_links() -> None:
    link = decode(LINK)
    assert isinstance(link, CID) and link.cid_bytes == CID_BYTES
    assert link == CID(CID_BYTES) and hash(link) == hash(CID(CID_BYTES)) and link != CID(RAW_CID)
    assert link.encode() == str(link) == b32(CID_BYTES)
    assert b32(CID_BYTES).startswith("bafyrei")  # the familiar prefix of dag-cbor sha2-256 CIDs
    assert decode(b"\xd8\x2a\x58\x25\x00" + RAW_CID) == CID(RAW_CID)
    v0 = b"\x12\x20" + SHA  # CIDv0: a bare multihash
    assert decode(b"\xd8\x2a\x58\x23\x00" + v0) == CID(v0)
    odd = b"\x01\x71\x13\x40" + bytes(64)  # sha2-512: the general CID parser
    assert decode(b"\xd8\x2a\x58\x45\x00" + odd) == CID(odd)
    identity = b"\x01\x55\x00\x03abc"  # an identity multihash
    assert decode(b"\xd8\x2a\x48\x00" + identity) == CID(identity)


@pytest.mark.parametrize("cid", [CID_BYTES, RAW_CID, b"\x12\x20" + SHA, b"\x01\x71\x13\x40" + bytes(64),
                                 b"\x01", b"\x01\x55\x00\x03abc", bytes(range(255))])
def test_cid_text_is_base32(cid: bytes) -> None:
    assert cid_text(cid) == b32(cid)


def test_atjson() -> None:
    data = b"\xa4" + b"\x61a" + LINK + b"\x61b\x44\xff\x00\x01\x02" + b"\x61c\x82\x41a" + LINK + b"\x61d\x40"
    assert decode_atjson(data) == {
        "a": {"$link": b32(CID_BYTES)},
        "b": {"$bytes": "/wABAg"},  # standard base64, no padding
        "c": [{"$bytes": "YQ"}, {"$link": b32(CID_BYTES)}],
        "d": {"$bytes": ""},
    }
    assert decode_atjson(b"\xa1\x65$type\x61x") == {"$type": "x"}
    for key in (b"\x65$link", b"\x66$bytes"):
        with pytest.raises(DecodeError, match="reserved"):
            decode_atjson(b"\xa1" + key + b"\x61x")
        assert decode(b"\xa1" + key + b"\x61x") == {key[1:].decode(): "x"}  # plain DAG-CBOR allows it
    for data in (b"\xfb\x3f\xf1\x99\x99\x99\x99\x99\x9a", b"\xa1\x61n\xfb\x3f\xf8\x00\x00\x00\x00\x00\x00"):
        with pytest.raises(DecodeError, match="float"):
            decode_atjson(data)


def test_decode_prefix_reads_items_back_to_back() -> None:
    data = b"\xa1\x62op\x01" + b"\x83\x01\x02\x03" + b"\x61z"
    first, at = decode_prefix(data)
    second, at2 = decode_prefix(data, at)
    third, end = decode_prefix(data, at2)
    assert (first, at, second, at2, third, end) == ({"op": 1}, 5, [1, 2, 3], 9, "z", 11)
    with pytest.raises(DecodeError, match="truncated"):
        decode_prefix(data, 11)
    with pytest.raises(DecodeError):
        decode_prefix(data, 12)


def test_write_varint_gives_the_leb128_bytes_read_varint_reads() -> None:
    assert write_varint(0) == b"\x00"
    assert write_varint(127) == b"\x7f"
    assert write_varint(128) == b"\x80\x01"
    assert write_varint(300) == b"\xac\x02"
    for value in (1, 0x3FFF, 0x4000, 2**35 + 7, 2**63 - 1):
        data = write_varint(value)
        assert read_varint(data, 0) == (value, len(data))


def test_read_varint() -> None:
    assert read_varint(b"\x00", 0) == (0, 1)
    assert read_varint(b"\x7f", 0) == (127, 1)
    assert read_varint(b"\x80\x01", 0) == (128, 2)
    assert read_varint(b"\xff\x01", 0) == (255, 2)
    assert read_varint(b"x\xac\x02", 1) == (300, 3)
    for data in (b"", b"\x80", b"\x80\x00", b"\xff" * 9 + b"\x01"):
        with pytest.raises(DecodeError):
            read_varint(data, 0)


# --- what DAG-CBOR forbids ---------------------------------------------------------------------


@pytest.mark.parametrize("hex_", [
    "1817", "190017", "1900ff", "1a0000ffff", "1b00000000ffffffff",  # integers
    "3817", "3900ff", "3a0000ffff", "3b00000000ffffffff",  # negative integers
    "580100", "59000100", "780161", "980100", "b8016161f6",  # lengths
    "d9002a582500" + CID_BYTES.hex(),  # the tag itself: 42 takes one byte
])
def test_integers_lengths_and_tags_in_their_shortest_form(hex_: str) -> None:
    bad(bytes.fromhex(hex_), "shortest")


@pytest.mark.parametrize("hex_", ["5f4101ff", "7f6161ff", "9f01ff", "bf6161f6ff", "ff", "1f", "3f"])
def test_no_indefinite_lengths(hex_: str) -> None:
    bad(bytes.fromhex(hex_), "indefinite")


@pytest.mark.parametrize("hex_", ["1c", "1d", "1e", "3c", "5c", "7d", "9e", "bc", "dc"])
def test_reserved_additional_info(hex_: str) -> None:
    bad(bytes.fromhex(hex_), "reserved")


def test_map_keys_in_dag_cbor_order() -> None:
    assert decode(b"\xa2\x61b\x02\x62aa\x01") == {"b": 2, "aa": 1}  # shorter first, not "aa" < "b"
    bad(b"\xa2\x62aa\x01\x61b\x02", "order")
    bad(b"\xa2\x61b\x01\x61a\x02", "order")
    bad(b"\xa3\x61a\x01\x61c\x02\x61b\x03", "order")
    # equal lengths: bytewise on the UTF-8 ("z\x7f" is 7a 7f, "\u00e9" is c3 a9)
    assert decode(b"\xa2\x62z\x7f\x01\x62\xc3\xa9\x02") == {"z\x7f": 1, "\u00e9": 2}
    bad(b"\xa2\x62\xc3\xa9\x02\x62z\x7f\x01", "order")


def test_map_keys_unique() -> None:
    bad(b"\xa2\x61a\x01\x61a\x02", "repeated")
    bad(b"\xa3\x61a\x01\x61b\x01\x61b\x02", "repeated")


@pytest.mark.parametrize("key", ["01", "20", "4161", "80", "a0", "f6", "f5", LINK.hex()])
def test_map_keys_are_text(key: str) -> None:
    bad(b"\xa1" + bytes.fromhex(key) + b"\x01", "not a text string")


@pytest.mark.parametrize("hex_", ["c074323031332d30332d32315432303a30343a30305a", "c11a514b67b0", "d82b40",
                                  "d8184100", "d9d9f7a0", "c240", "d820"])
def test_no_tags_but_42(hex_: str) -> None:
    bad(bytes.fromhex(hex_), "tag")


@pytest.mark.parametrize("data", [
    b"\xd8\x2a\x60",  # a text string
    b"\xd8\x2a\x01",  # an integer
    b"\xd8\x2a\x40",  # empty
    b"\xd8\x2a\x41\x00",  # 0x00 and no CID
    b"\xd8\x2a\x58\x25\x01" + CID_BYTES[:-1] + b"\x00" + b"",  # no 0x00 prefix
    b"\xd8\x2a\x58\x24" + CID_BYTES,  # no 0x00 prefix either
    b"\xd8\x2a\x58\x26\x00" + CID_BYTES + b"\x00",  # bytes after the digest
    b"\xd8\x2a\x58\x24\x00" + CID_BYTES[:-1],  # digest short
    b"\xd8\x2a\x43\x00\x02\x71",  # CID version 2
    b"\xd8\x2a\x46\x00\x01\x71\x12\x80\x00",  # a varint not in its shortest form
])
def test_links_are_0x00_and_a_valid_cid(data: bytes) -> None:
    bad(data, "tag 42")


@pytest.mark.parametrize("hex_, word", [
    ("f93c00", "16-bit"), ("fa3f800000", "32-bit"),
    ("fb7ff8000000000000", "NaN"), ("fb7ff0000000000000", "NaN"), ("fbfff0000000000000", "NaN"),
    ("f7", "undefined"), ("f0", "simple value"), ("e0", "simple value"), ("f3", "simple value"),
    ("f820", "simple value"), ("f8ff", "simple value"), ("fc", "simple value"), ("fe", "simple value"),
])
def test_floats_64_bit_finite_and_no_other_simple_values(hex_: str, word: str) -> None:
    bad(bytes.fromhex(hex_), word)


@pytest.mark.parametrize("data", [b"\x00\x00", b"\xa0\x00", b"\x61a\x61b", b"\x80\xff", LINK + b"\x00"])
def test_one_item_only(data: bytes) -> None:
    bad(data, "after")
    with pytest.raises(DecodeError, match="after"):
        decode_atjson(data)


@pytest.mark.parametrize("data", [b"\x62\xff\xfe", b"\x62\xc0\x80", b"\x63\xed\xa0\x80", b"\x61\x80",
                                  b"\xa1\x62\xff\xfe\x01", b"\x81\x62\xc3\x28"])
def test_text_is_utf8(data: bytes) -> None:
    bad(data, "UTF-8")


@pytest.mark.parametrize("data", [b"", b"\x18", b"\x19\x01", b"\x1b" + bytes(7), b"\x42\x00", b"\x62a",
                                  b"\x78\x20abc", b"\x82\x01", b"\xa1", b"\xa1\x61a", b"\xa1\x78\x18abc",
                                  b"\xa1\x61a\x78", b"\xa1\x61a\x78\x20", b"\xa1\x61a\x62x", b"\xd8", b"\xd8\x2a",
                                  b"\xa1\x61a\xd8", b"\xfb\x00", b"\x81\x63ab", b"\x9b" + b"\xff" * 8,
                                  b"\xbb" + b"\xff" * 8, b"\x5b" + b"\xff" * 8])
def test_truncated_input(data: bytes) -> None:
    bad(data, "truncated")


def test_nesting_limit() -> None:
    assert decode(b"\x81" * MAX_DEPTH + b"\x00") == _nested(MAX_DEPTH)
    bad(b"\x81" * (MAX_DEPTH + 1) + b"\x00", "nested deeper")
    bad(b"\xa1\x61a" * (MAX_DEPTH + 1) + b"\x00", "nested deeper")
    bad(b"\x81" * 100_000, "nested deeper")  # never a RecursionError
    # links and scalars don't count: a link at the deepest level is fine
    assert decode(b"\x81" * MAX_DEPTH + LINK) == _nested(MAX_DEPTH, CID(CID_BYTES))


def _nested(depth: int, leaf: Any = 0) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def test_huge_declared_lengths_fail_quickly() -> None:
    for data in (b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00", b"\xbb\x7f" + b"\xff" * 7, b"\x5b" + b"\x7f" + bytes(7)):
        bad(data, "truncated")


# --- real blocks ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_items(jetstream_dir: Path) -> list[bytes]:
    """Items of real frames: a few frames' headers and bodies, and their record blocks."""
    frames = read_frames(jetstream_dir / "corpus_frames.bin.zst")
    items: list[bytes] = []
    for frame in (frames[0], frames[53], frames[148], frames[149]):
        _, at = decode_prefix(frame)
        items += [frame[:at], frame[at:]]
        if decode(frame[:at]).get("t") == "#commit":
            body = decode(frame[at:])
            for op in (op for op in body["ops"] if op["cid"] is not None):
                block = find_block(body["blocks"], op["cid"].cid_bytes)
                assert block is not None
                items.append(bytes(block))
    return items


def test_real_records_decode_to_what_their_cids_name(real_items: list[bytes]) -> None:
    records = [item for item in real_items if b"\x65$type" in item and b"\x64repo" not in item]
    assert len(records) == 4  # frame 0's record, and frame 53's three
    for block in records:
        value = decode_atjson(block)
        assert isinstance(value, dict) and isinstance(value["$type"], str)
        assert encode(decode(block)) == block  # canonical: the encoder gives the same bytes back


def test_truncated_at_every_offset(real_items: list[bytes]) -> None:
    for item in real_items:
        decode(item)
        for cut in range(len(item)) if len(item) < 2000 else range(0, len(item), 7):
            with pytest.raises(DecodeError):
                decode(item[:cut])
            with pytest.raises(DecodeError):
                decode_atjson(item[:cut])


def test_corrupted_real_blocks_raise_only_decode_error(real_items: list[bytes]) -> None:
    import random

    rng = random.Random(11)
    for item in real_items:
        for _ in range(200):
            data = bytearray(item)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            for fn in (decode, decode_atjson):
                try:
                    fn(bytes(data))
                except DecodeError:
                    pass


# --- round trip -------------------------------------------------------------------------------

cids = st.builds(lambda digest, raw: CID((b"\x01\x55\x12\x20" if raw else b"\x01\x71\x12\x20") + digest),
                 st.binary(min_size=32, max_size=32), st.booleans())
scalars = (st.none() | st.booleans() | st.integers(-2**64, 2**64 - 1) | st.text() | st.binary()
           | st.floats(allow_nan=False, allow_infinity=False) | cids)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=6), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(value=values)
def test_round_trip(value: Any) -> None:
    data = encode(value)
    got = decode(data)
    assert got == value
    assert encode(got) == data
    assert decode_prefix(data + b"\xf6") == (value, len(data))


def test_encode_vectors_and_what_it_refuses() -> None:
    # RFC 8949 Appendix A vectors, and DAG-CBOR's key order (shorter first: "b" before "aa").
    assert encode(0) == b"\x00" and encode(23) == b"\x17" and encode(24) == b"\x18\x18"
    assert encode(1000000) == b"\x1a\x00\x0f\x42\x40" and encode(-1000) == b"\x39\x03\xe7"
    assert encode(2**64 - 1) == b"\x1b" + b"\xff" * 8 and encode(-2**64) == b"\x3b" + b"\xff" * 8
    assert encode({"aa": 1, "b": 2}) == b"\xa2\x61b\x02\x62aa\x01"
    assert encode(CID(CID_BYTES)) == LINK
    assert encode(1.1) == bytes.fromhex("fb3ff199999999999a")
    for bad, error in ((2**64, ValueError), (-2**64 - 1, ValueError), (math.nan, ValueError),
                       (math.inf, ValueError), ({1: 2}, ValueError), ({1, 2}, TypeError)):
        with pytest.raises(error):
            encode(bad)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64))
def test_anything_is_a_value_or_decode_error(data: bytes) -> None:
    for fn in (decode, decode_atjson):
        try:
            fn(data)
        except DecodeError:
            pass


def test_floats_keep_their_bits() -> None:
    for x in (0.1, -0.0, 5e-324, 1.7976931348623157e308):
        got = decode(b"\xfb" + struct.pack(">d", x))
        assert got == x and math.copysign(1, got) == math.copysign(1, x)

