"""The store's byte encodings (varints, link lists, backlink blocks, target keys) against
small, obviously correct reference implementations written here.

The fast versions in smalldp.store.encoding use tables and inlined loops; what they
write must stay byte for byte what these straightforward ones write (a store written
before must read the same, and a new one must be identical).
"""

from __future__ import annotations

from collections import Counter

from hypothesis import example, given, settings
from hypothesis import strategies as st
from pyroaring import BitMap

from smalldp.store import encoding
from smalldp.store.encoding import (
    BITMAP_MIN_ENTRIES,
    BlockHeader,
    decode_block,
    decode_links,
    did_key,
    encode_block,
    encode_links,
    encode_target,
    get_varint,
    iter_entries,
    put_varint,
    split_target,
    target_dids,
    varint,
)

# ---------------------------------------------------------------- references


def ref_varint(value: int) -> bytes:
    """LEB128, seven bits at a time, low group first."""
    assert value >= 0
    out = []
    while True:
        group = value & 0x7F
        value >>= 7
        if value:
            out.append(group | 0x80)
        else:
            out.append(group)
            return bytes(out)


def ref_zigzag(value: int) -> int:
    return 2 * value if value >= 0 else -2 * value - 1


def ref_encode_block(entries: list[tuple[int, int]]) -> bytes:
    """The block format as documented: count, duplicates, bitmap (big blocks), entries."""
    out = ref_varint(len(entries))
    counts = Counter(aid for _, aid in entries)
    extra = sorted((aid, c - 1) for aid, c in counts.items() if c > 1)
    out += ref_varint(len(extra))
    for aid, c in extra:
        out += ref_varint(aid) + ref_varint(c)
    if len(entries) >= BITMAP_MIN_ENTRIES:
        bitmap = BitMap(counts).serialize()
        out += ref_varint(len(bitmap)) + bitmap
    else:
        out += ref_varint(0)
    for i, (sk, aid) in enumerate(entries):
        out += ref_varint(ref_zigzag(sk) if i == 0 else entries[i - 1][0] - sk) + ref_varint(aid)
    return out


def ref_encode_links(links: list[tuple[int, bytes]]) -> bytes:
    return b"".join(ref_varint(sid) + ref_varint(len(tkey)) + tkey for sid, tkey in links)


# ---------------------------------------------------------------- strategies

# Values around every length boundary of a varint (7-bit groups) and of the tables (14 bits).
_EDGES = sorted({0, 1, 127, 128, 255, 256, 16383, 16384, 16385, 2**21 - 1, 2**21, 2**28 - 1, 2**28,
                 2**35, 2**42 - 1, 2**42, 2**49, 2**56 - 1, 2**56, 2**62, 2**63 - 1, 2**63, 2**64 - 1,
                 2**64, 2**70 - 1, 2**70, 2**77, 2**100 + 12345})
unsigned = st.one_of(st.sampled_from(_EDGES), st.integers(0, 2**14), st.integers(0, 2**64),
                     st.integers(0, 2**90))
# Sort keys: TIDs (2**60 and up), small negative aliases, anything in between.
sort_keys = st.one_of(st.integers(2**60, 2**63 - 1), st.integers(-5000, -1), st.integers(-(2**40), 2**63 - 1),
                      st.sampled_from([0, 1, -1, 63, 64, -64, -65, 8191, 8192, -8192, -8193, 2**63 - 1]))
# Actor IDs fit a roaring bitmap (32 bits); a few values make duplicates likely.
actor_ids = st.one_of(st.integers(0, 5), st.sampled_from([127, 128, 16383, 16384, 2**32 - 1]),
                      st.integers(0, 2**32 - 1))


def _sorted_entries(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return sorted(pairs, reverse=True)


entry_lists = st.lists(st.tuples(sort_keys, actor_ids), min_size=0, max_size=40).map(_sorted_entries)


def _block_sizes(n: int) -> st.SearchStrategy[list[tuple[int, int]]]:
    return st.lists(st.tuples(sort_keys, actor_ids), min_size=n, max_size=n).map(_sorted_entries)


sized_blocks = st.sampled_from([1, 2, 23, 24, 25, 600]).flatmap(_block_sizes)


# ---------------------------------------------------------------- varints


@given(unsigned)
@example(0)
@example(127)
@example(128)
@example(2**63 - 1)
@example(2**200)
def test_varint_matches_reference(value: int) -> None:
    expected = ref_varint(value)
    assert varint(value) == expected
    out = bytearray(b"xy")
    put_varint(out, value)
    assert bytes(out) == b"xy" + expected
    assert get_varint(b"ab" + expected + b"\x05", 2) == (value, 2 + len(expected))


def test_every_table_value_matches_reference() -> None:
    for value in range(2**15):
        assert varint(value) == ref_varint(value)


def test_negative_varint_is_refused() -> None:
    for value in (-1, -128, -(2**40)):
        try:
            varint(value)
        except ValueError:
            pass
        else:
            raise AssertionError(f"varint({value}) did not raise")


# ---------------------------------------------------------------- blocks


def _check_block(entries: list[tuple[int, int]]) -> None:
    data = encode_block(entries)
    assert data == ref_encode_block(entries)
    assert decode_block(data) == entries
    header = BlockHeader(data)
    assert header.count == len(entries)
    counts = Counter(aid for _, aid in entries)
    assert header.extra == {aid: c - 1 for aid, c in counts.items() if c > 1}
    assert header.bitmap == BitMap(counts)
    assert list(iter_entries(data, header.body, header.count)) == entries


@given(entry_lists)
@settings(max_examples=400)
def test_block_matches_reference(entries: list[tuple[int, int]]) -> None:
    _check_block(entries)


@given(sized_blocks)
@settings(max_examples=150)
def test_block_sizes_around_the_bitmap_threshold(entries: list[tuple[int, int]]) -> None:
    _check_block(entries)


@given(sort_keys, actor_ids)
@example(0, 0)
@example(-1, 127)
@example(2**63 - 1, 128)
@example(2**55, 2**32 - 1)
@example(2**56 // 2, 16384)  # zigzag 2**56: the first 9-byte value
def test_one_entry_block(sk: int, aid: int) -> None:
    _check_block([(sk, aid)])


@given(st.integers(2**60, 2**63 - 1), st.lists(actor_ids, min_size=1, max_size=30))
def test_equal_sort_keys_and_duplicate_actors(sk: int, aids: list[int]) -> None:
    _check_block(_sorted_entries([(sk, aid) for aid in aids]))


def test_block_edge_cases() -> None:
    _check_block([])
    _check_block([(5, 7)] * 3)  # the same entry three times: two extra links of actor 7
    _check_block([(-1, 1), (-2, 1)])
    _check_block(_sorted_entries([(2**62 + i * 1000, i % 7) for i in range(600)]))
    _check_block(_sorted_entries([(2**62 + i, 2**32 - 1 - i) for i in range(25)]))


def test_unsorted_entries_are_refused_like_before() -> None:
    # A negative delta can't be written: the reference refuses it too (assert), the old
    # bytearray code raised ValueError.
    try:
        encode_block([(1, 1), (5, 2)])
    except ValueError:
        pass
    else:
        raise AssertionError("unsorted entries were encoded")


# ---------------------------------------------------------------- link lists and target keys


links_lists = st.lists(st.tuples(unsigned, st.binary(min_size=0, max_size=300)), max_size=6)


@given(links_lists)
@example([(0, b""), (127, b"\x00" * 127), (128, b"\x01" * 128), (16384, b"x" * 200)])
def test_links_match_reference(links: list[tuple[int, bytes]]) -> None:
    data = encode_links(links)
    assert data == ref_encode_links(links)
    assert decode_links(data) == links


@given(unsigned)
def test_did_key(aid: int) -> None:
    assert did_key(aid) == b"\x03" + ref_varint(aid)


def ref_encode_target(target: str, aid_of, coll_of) -> bytes:  # type: ignore[no-untyped-def]
    from smalldp.events import valid_did, valid_nsid, valid_rkey
    from smalldp.tid import tid_to_int

    if target.startswith("did:") and valid_did(target):
        return b"\x03" + ref_varint(aid_of(target))
    parts = target[5:].split("/") if target.startswith("at://") else []
    if len(parts) == 3 and valid_did(parts[0]) and valid_nsid(parts[1]) and valid_rkey(parts[2]):
        did, coll, rkey = parts
        tid = tid_to_int(rkey)
        head = ref_varint(aid_of(did)) + ref_varint(coll_of(coll))
        if tid is not None:
            return b"\x01" + head + tid.to_bytes(8, "big")
        return b"\x02" + head + rkey.encode()
    return b"\x00" + target.encode()


_TARGETS = [
    "did:plc:z72i7hdynmk6r22z27h6tvur", "did:web:example.com", "did:PLC:x", "did:plc:", "did:plc:a b",
    "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post/3lbcdefghij22",
    "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.actor.profile/self",
    "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post/zzzzzzzzzzzzz",  # TID-shaped, too big
    "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post/.",
    "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post",
    "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post/3lbcdefghij22/more",
    "at://not-a-did/app.bsky.feed.post/3lbcdefghij22", "at://did:plc:abc/NOTNSID/3lbcdefghij22",
    "https://example.com/a", "mailto:someone@example.com", "at://",
]
targets = st.one_of(st.sampled_from(_TARGETS), st.text(max_size=60),
                    st.builds(lambda did, coll, rkey: f"at://{did}/{coll}/{rkey}",
                              st.sampled_from(["did:plc:abc", "did:web:x.y", "bad"]),
                              st.sampled_from(["app.bsky.feed.post", "a.b", "x"]),
                              st.text("234567abcdefghijklmnopqrstuvwxyz.:~_-0189AZ", min_size=0, max_size=15)))


@given(targets, st.integers(0, 2**40), st.integers(0, 2**20))
def test_target_keys_match_reference(target: str, aid: int, coll: int) -> None:
    calls: list[str] = []

    def aid_of(did: str) -> int:
        calls.append("aid:" + did)
        return aid

    def coll_of(nsid: str) -> int:
        calls.append("coll:" + nsid)
        return coll

    expected_calls: list[str] = []

    def ref_aid(did: str) -> int:
        expected_calls.append("aid:" + did)
        return aid

    def ref_coll(nsid: str) -> int:
        expected_calls.append("coll:" + nsid)
        return coll

    try:
        expected: bytes | None = ref_encode_target(target, ref_aid, ref_coll)
    except UnicodeEncodeError:
        expected = None
    try:
        got: bytes | None = encode_target(target, aid_of, coll_of)
    except UnicodeEncodeError:
        got = None
    assert got == expected
    assert calls == expected_calls  # the same IDs asked for, in the same order
    if expected is not None and expected[0] in (1, 2):
        parts = split_target(target)
        assert parts is not None and target_dids(target) == parts[0]
    elif expected is not None and expected[0] == 3:
        assert target_dids(target) == target
    elif expected is not None:
        assert target_dids(target) is None and split_target(target) is None


def test_module_tables_are_what_they_say() -> None:
    assert len(encoding._LOW) == len(encoding._PAIR) == 2**14
    assert all(len(b) == 2 and b[0] & 0x80 and b[1] & 0x80 for b in encoding._PAIR)
