"""decode_frame_firehose: real relay frames against Jetstream v1's lines for the same events,
and bad frames (only MalformedEvent, or a documented frame type, may come out).

The oracle is independent of the decoder under test: production Jetstream v1's JSON for
the same window (corpus_expected_v1.jsonl, through events.decode_event) and the capture's
manifest counts; other expected values are written here by hand (datetimes with
calendar.timegm, CID strings with base64.b32encode, byte strings with base64).  Bad frames
are real frames, split with smalldp.dagcbor and re-encoded after a change with the tests'
encoder (smalldp.dagcbor.encode), which gives back the relay's bytes unchanged.
"""

from __future__ import annotations

import base64
import calendar
import functools
import hashlib
import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest
import zstandard
from dagcbor_encode import uvarint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smalldp.dagcbor import CID, decode_prefix, encode
from smalldp.events import (
    AccountStatus, DeleteRecord, Identity, MalformedEvent, Operation, PutRecord, decode_event,
)
from smalldp.events_firehose import (
    ErrorFrame, InfoFrame, MalformedFrame, OpsFrame, SyncFrame, UnknownFrame, car_blocks,
    decode_frame_firehose, find_block,
)

FRAME_TYPES = (OpsFrame, SyncFrame, UnknownFrame, InfoFrame, ErrorFrame)
DID = "did:plc:wq4aajammjtxdomz3e23667t"
REV = "3mptbypluud2a"
T_2026 = calendar.timegm((2026, 7, 4, 12, 34, 56, 0, 0, 0)) * 1_000_000  # 2026-07-04T12:34:56Z
SHA256_DAG_CBOR = b"\x01\x71\x12\x20"
MULTI_OP_FRAME = 53  # the corpus frame whose commit has three creates


# --- the corpus ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def read_frames(path: Path) -> tuple[bytes, ...]:
    """The raw relay frames of a zstd file of repeated [u32 LE length][frame]."""
    with path.open("rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f).read()
    out, pos = [], 0
    while pos < len(raw):
        (size,) = struct.unpack_from("<I", raw, pos)
        out.append(raw[pos + 4:pos + 4 + size])
        pos += 4 + size
    assert pos == len(raw)
    return tuple(out)


@pytest.fixture(scope="module")
def frames(jetstream_dir: Path) -> list[bytes]:
    """The corpus's 150 frames."""
    return list(read_frames(jetstream_dir / "corpus_frames.bin.zst"))


@pytest.fixture(scope="module")
def manifest(jetstream_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((jetstream_dir / "corpus_manifest.json").read_text())
    return result


@pytest.fixture(scope="module")
def oracle(jetstream_dir: Path) -> list[Operation]:
    """What the v1 path makes of production Jetstream's lines for the same window."""
    lines = (jetstream_dir / "corpus_expected_v1.jsonl").read_bytes().splitlines()
    ops = [decode_event(line) for line in lines]
    assert all(op is not None for op in ops)
    return [op for op in ops if op is not None]


def key(op: Operation) -> tuple[Any, ...]:
    """Which event an operation is: commits by (did, rev, collection, rkey), the others by seq
    (the capture matched them the same way)."""
    if isinstance(op, (PutRecord, DeleteRecord)):
        return (type(op).__name__, op.did, op.rev, op.collection, op.rkey)
    return (type(op).__name__, op.did, op.seq)


def comparable(op: Operation) -> dict[str, Any]:
    """Every field but time_us and order_us, the record as a JSON value.

    time_us is Jetstream's receive time in the oracle and the event's own time here (a
    relay frame has no receive time; see the module docstring); order_us derives from it.
    The record body is compared as JSON values: the bytes differ where Go writes JSON its
    own way (a blob's fields in struct order, "&" as \\u0026).
    """
    fields = {f: getattr(op, f) for f in op.__struct_fields__ if f not in ("time_us", "order_us")}
    if isinstance(op, PutRecord):
        fields["body"] = json.loads(op.body)
    return fields


def decode_all(frames: list[bytes]) -> list[OpsFrame]:
    results = [decode_frame_firehose(frame) for frame in frames]
    assert all(type(r) is OpsFrame for r in results)
    return results  # type: ignore[return-value]


def test_corpus_equals_the_v1_oracle(frames: list[bytes], oracle: list[Operation],
                                     manifest: dict[str, Any]) -> None:
    results = decode_all(frames)
    assert all(r.skipped == () for r in results)
    ops = [op for r in results for op in r.ops]
    # Anti-vacuity: the counts the capture tool wrote, not ones derived from either decoder.
    assert len(frames) == manifest["frames"] == 150
    def kind(op: Operation) -> str:
        if isinstance(op, PutRecord):
            return "PutRecord:create" if op.is_create else "PutRecord:update"
        return type(op).__name__
    kinds = [kind(op) for op in ops]
    assert kinds.count("PutRecord:create") == manifest["creates"] == 144
    assert kinds.count("PutRecord:update") == manifest["updates"] == 2
    assert kinds.count("DeleteRecord") == manifest["deletes"] == 4
    assert kinds.count("Identity") == manifest["identity"] == 1
    assert kinds.count("AccountStatus") == manifest["account"] == 1
    assert len(ops) == len(oracle) == manifest["v1_events"] == 152
    got = {key(op): op for op in ops}
    expected = {key(op): op for op in oracle}
    assert len(got) == len(ops) and got.keys() == expected.keys()
    for k, op in got.items():
        assert comparable(op) == comparable(expected[k]), k
    # The links (and derived links) came from the same code on the same JSON: same order too.
    assert sum(len(op.links) for op in ops if isinstance(op, PutRecord)) > 200


def test_corpus_seqs_are_the_capture_window(frames: list[bytes], manifest: dict[str, Any]) -> None:
    seqs = [r.seq for r in decode_all(frames)]
    assert seqs == list(range(manifest["seq_first"], manifest["seq_last"] + 1))


def test_corpus_time_is_the_commit_time_just_before_jetstream_received_it(
        frames: list[bytes], oracle: list[Operation]) -> None:
    expected = {key(op): op.time_us for op in oracle}
    for op in (op for r in decode_all(frames) for op in r.ops):
        # Jetstream's receive time is later than the upstream stamp, by well under a minute.
        assert 0 < expected[key(op)] - op.time_us < 60_000_000, key(op)
        assert op.time_us % 1000 == 0  # the relay's times are in milliseconds
        if isinstance(op, (Identity, AccountStatus)):
            assert op.order_us == op.time_us


def test_the_multi_op_commit_keeps_the_frame_order(frames: list[bytes]) -> None:
    (result,) = decode_all([frames[MULTI_OP_FRAME]])
    rkeys = [op.rkey for op in result.ops]  # type: ignore[union-attr]
    assert rkeys == ["3mptbyospqk2i", "3mptbyou7ls2i", "3mptbyoumc22i"]


# --- building frames with the tests' encoder ---------------------------------------------------


def split(frame: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    header, at = decode_prefix(frame)
    body, end = decode_prefix(frame, at)
    assert end == len(frame)
    return header, body


def join(header: Any, body: Any) -> bytes:
    return encode(header) + encode(body)


def sections(car: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A CAR as (header section, [(cid, data)]): a parser of this test's own, for sha2-256
    CIDv1s (all the corpus has)."""
    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = car[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, pos
    size, pos = varint(0)
    head, pos = car[:pos + size], pos + size
    out = []
    while pos < len(car):
        size, pos = varint(pos)
        assert car[pos:pos + 4] in (SHA256_DAG_CBOR, b"\x01\x55\x12\x20")
        out.append((car[pos:pos + 36], car[pos + 36:pos + size]))
        pos += size
    return head, out


def build_car(head: bytes, blocks: list[tuple[bytes, bytes]]) -> bytes:
    return head + b"".join(uvarint(len(cid) + len(data)) + cid + data for cid, data in blocks)


def car_head(root: bytes) -> bytes:
    header = encode({"roots": [CID(root)], "version": 1})
    return uvarint(len(header)) + header


def cid_of(block: bytes) -> bytes:
    return SHA256_DAG_CBOR + hashlib.sha256(block).digest()


def cid_text(cid: bytes) -> str:
    """A binary CID's string form, by hand: "b" and lowercase RFC 4648 base32, no padding."""
    return "b" + base64.b32encode(cid).decode().lower().rstrip("=")


def commit_frame(records: list[tuple[str, str, Any]], *, seq: int = 42, time: str = "2026-07-04T12:34:56.789Z",
                 extra_blocks: tuple[tuple[bytes, bytes], ...] = (), **changes: Any) -> bytes:
    """A #commit of (action, path, record) ops (record None for deletes), blocks holding
    each record, with ``changes`` applied to the body."""
    blocks, ops = list(extra_blocks), []
    for action, path, record in records:
        op: dict[str, Any] = {"action": action, "path": path, "cid": None}
        if record is not None:
            block = encode(record)
            cid = cid_of(block)
            blocks.append((cid, block))
            op["cid"] = CID(cid)
        ops.append(op)
    commit = cid_of(b"commit")
    body: dict[str, Any] = {
        "seq": seq, "repo": DID, "rev": REV, "time": time, "since": None, "rebase": False,
        "tooBig": False, "blobs": [], "commit": CID(commit), "prevData": None,
        "blocks": build_car(car_head(commit), blocks), "ops": ops,
    }
    body.update(changes)
    return join({"op": 1, "t": "#commit"}, body)


LIKE: dict[str, Any] = {"$type": "app.bsky.feed.like", "createdAt": "2026-07-04T12:34:56.000Z",
        "subject": {"cid": "bafyx", "uri": "at://did:plc:r2zybk6op3ymzpz6jhqpkoy5/app.bsky.feed.post/3mpsjbtci2c2o"}}
LIKE_LINK = (".subject.uri", "at://did:plc:r2zybk6op3ymzpz6jhqpkoy5/app.bsky.feed.post/3mpsjbtci2c2o")


def only_ops(frame: bytes) -> OpsFrame:
    result = decode_frame_firehose(frame)
    assert type(result) is OpsFrame, result
    return result


def test_reencoding_a_real_frame_is_byte_identical(frames: list[bytes]) -> None:
    # What the bad frames below rest on: the tests' encoder gives back the relay's bytes.
    for frame in frames:
        assert join(*split(frame)) == frame


def test_a_built_commit_decodes_as_written_by_hand() -> None:
    result = only_ops(commit_frame([("create", "app.bsky.feed.like/3mptbyplj5d2a", LIKE),
                                    ("delete", "app.bsky.feed.like/3mptbyplj5d2b", None)]))
    put, delete = result.ops
    assert result.seq == 42 and result.skipped == ()
    assert isinstance(put, PutRecord) and put.is_create
    assert (put.did, put.collection, put.rkey) == (DID, "app.bsky.feed.like", "3mptbyplj5d2a")
    assert put.time_us == T_2026 + 789_000  # 2026-07-04T12:34:56.789Z
    assert put.cid == cid_text(cid_of(encode(LIKE)))
    assert json.loads(put.body) == LIKE and put.links == (LIKE_LINK,)
    assert delete == DeleteRecord(DID, T_2026 + 789_000, put.rev, "app.bsky.feed.like", "3mptbyplj5d2b")


def test_links_and_bytes_are_written_as_jetstream_writes_them() -> None:
    link = cid_of(b"some blob")
    raw = SHA256_DAG_CBOR + bytes(range(32))  # a byte string shaped like a CID: still bytes
    record = {"$type": "x.example.thing", "ref": CID(link), "raw": raw, "short": b"\xff\x00\x01\x02",
              "list": [CID(link), b"a"]}
    (put,) = only_ops(commit_frame([("create", "x.example.thing/3mptbyplj5d2a", record)])).ops
    assert isinstance(put, PutRecord)
    assert json.loads(put.body) == {
        "$type": "x.example.thing",
        "ref": {"$link": cid_text(link)},
        "raw": {"$bytes": base64.b64encode(raw).decode().rstrip("=")},
        "short": {"$bytes": "/wABAg"},  # standard alphabet, no padding (indigo's RawStdEncoding)
        "list": [{"$link": cid_text(link)}, {"$bytes": "YQ"}],
    }


# --- bad input -----------------------------------------------------------------------------


def malformed(frame: Any) -> MalformedFrame:
    with pytest.raises(MalformedFrame) as info:
        decode_frame_firehose(frame)
    assert isinstance(info.value, MalformedEvent)  # what every ingest path counts and skips
    return info.value


def test_truncated_frames_are_malformed(frames: list[bytes]) -> None:
    rng = random.Random(7)
    for frame in (frames[0], frames[MULTI_OP_FRAME], frames[148], frames[149]):
        header_end = len(encode(split(frame)[0]))
        for cut in {0, 1, header_end - 1, header_end, header_end + 1, len(frame) - 1,
                    *(rng.randrange(len(frame)) for _ in range(40))}:
            malformed(frame[:cut])


def test_garbage_is_malformed() -> None:
    for data in (b"", b"\x00", b"\xff" * 64, b"hello world", bytes(range(256)), "a text message"):
        malformed(data)


def test_bytes_after_the_body_are_malformed(frames: list[bytes]) -> None:
    assert "after" in str(malformed(frames[0] + b"\x00"))


def test_an_unknown_message_type_is_skipped_with_its_seq() -> None:
    assert decode_frame_firehose(join({"op": 1, "t": "#future"}, {"seq": 7, "x": 1})) == UnknownFrame("#future", 7)
    assert decode_frame_firehose(join({"op": 1, "t": "#future"}, {"x": 1})) == UnknownFrame("#future", None)
    assert decode_frame_firehose(join({"op": 1, "t": "#future"}, [1])) == UnknownFrame("#future", None)


@pytest.mark.parametrize("header", [{"op": 2, "t": "#commit"}, {"op": 1}, {"t": "#commit"}, {"op": "1"}, [1], 1])
def test_bad_headers_are_malformed(header: Any) -> None:
    malformed(join(header, {"seq": 1}))


def test_error_frames() -> None:
    got = decode_frame_firehose(join({"op": -1}, {"error": "FutureCursor", "message": "Cursor in the future."}))
    assert got == ErrorFrame("FutureCursor", "Cursor in the future.")
    got = decode_frame_firehose(join({"op": -1}, {"error": "ConsumerTooSlow"}))
    assert got == ErrorFrame("ConsumerTooSlow", None)
    malformed(join({"op": -1}, {"message": "no error name"}))
    malformed(join({"op": -1}, {"error": 5}))


def test_info_frames() -> None:
    got = decode_frame_firehose(join({"op": 1, "t": "#info"}, {"name": "OutdatedCursor", "message": "too old"}))
    assert got == InfoFrame("OutdatedCursor", "too old")
    malformed(join({"op": 1, "t": "#info"}, {"message": "no name"}))


def test_sync_frames() -> None:
    body = {"seq": 9, "did": DID, "rev": REV, "time": "2026-07-04T12:34:56.5Z", "blocks": b"\x00"}
    assert decode_frame_firehose(join({"op": 1, "t": "#sync"}, body)) == SyncFrame(9, DID, REV, T_2026 + 500_000)
    assert malformed(join({"op": 1, "t": "#sync"}, {**body, "rev": "not-a-tid"})).seq == 9
    assert malformed(join({"op": 1, "t": "#sync"}, {**body, "did": "nobody"})).seq == 9
    malformed(join({"op": 1, "t": "#sync"}, {k: v for k, v in body.items() if k != "rev"}))


def test_identity_and_account_checks(frames: list[bytes]) -> None:
    header, body = split(frames[148])  # the corpus #identity
    assert malformed(join(header, {**body, "handle": "not a handle"})).seq == body["seq"]
    assert malformed(join(header, {**body, "time": "yesterday"})).seq == body["seq"]
    malformed(join(header, {k: v for k, v in body.items() if k != "seq"}))
    (op,) = only_ops(join(header, {**body, "handle": "Alice.Example.COM"})).ops
    assert isinstance(op, Identity) and op.handle == "alice.example.com"
    header, body = split(frames[149])  # the corpus #account
    assert malformed(join(header, {**body, "status": "asleep"})).seq == body["seq"]
    malformed(join(header, {k: v for k, v in body.items() if k != "active"}))
    (op,) = only_ops(join(header, {**body, "active": False, "status": "takendown"})).ops
    assert isinstance(op, AccountStatus) and (op.active, op.status) == (False, "takendown")


def test_a_block_missing_from_the_car_skips_only_its_op(frames: list[bytes], oracle: list[Operation]) -> None:
    header, body = split(frames[MULTI_OP_FRAME])
    head, blocks = sections(body["blocks"])
    dropped = body["ops"][1]["cid"].cid_bytes
    body["blocks"] = build_car(head, [(c, d) for c, d in blocks if c != dropped])
    result = only_ops(join(header, body))
    assert result.seq == body["seq"]
    assert [op.rkey for op in result.ops] == ["3mptbyospqk2i", "3mptbyoumc22i"]  # type: ignore[union-attr]
    (why,) = result.skipped
    assert "absent" in why and cid_text(dropped) in why and "3mptbyou7ls2i" in why
    expected = {key(op): op for op in oracle}
    for op in result.ops:
        assert comparable(op) == comparable(expected[key(op)])


def test_a_block_not_matching_its_cid_skips_its_op(frames: list[bytes]) -> None:
    header, body = split(frames[MULTI_OP_FRAME])
    head, blocks = sections(body["blocks"])
    target = body["ops"][0]["cid"].cid_bytes
    # Same length, one byte changed: the CID no longer names it.
    blocks = [(c, d[:-1] + bytes([d[-1] ^ 1]) if c == target else d) for c, d in blocks]
    body["blocks"] = build_car(head, blocks)
    result = only_ops(join(header, body))
    assert len(result.ops) == 2 and len(result.skipped) == 1 and "3mptbyospqk2i" in result.skipped[0]


def test_too_big_commits_are_malformed_with_their_seq(frames: list[bytes], manifest: dict[str, Any]) -> None:
    header, body = split(frames[0])
    error = malformed(join(header, {**body, "tooBig": True}))
    assert error.seq == manifest["seq_first"] and "tooBig" in str(error)


@pytest.mark.parametrize("change", [
    {"seq": -1}, {"seq": "1"}, {"repo": "nobody"}, {"time": "2026-07-04"}, {"ops": None},
    {"blocks": "AAAA"},  # text where bytes belong (msgspec alone would take it as base64)
    {"ops": [{"action": "create", "path": "a.b.c/d", "cid": b"\x01\x71"}]},  # bytes, not a link
])
def test_bad_commit_fields_are_malformed(frames: list[bytes], change: dict[str, Any]) -> None:
    header, body = split(frames[0])
    malformed(join(header, {**body, **change}))


def test_bad_blocks_skip_the_ops_that_need_them(frames: list[bytes]) -> None:
    header, body = split(frames[0])
    result = only_ops(join(header, {**body, "blocks": b"\x05garbage"}))
    assert result.ops == () and len(result.skipped) == 1
    # A delete needs no block.
    delete_header, delete_body = split(frames[11])
    assert len(only_ops(join(delete_header, {**delete_body, "blocks": b""})).ops) == 1


def test_bad_ops_skip_only_themselves() -> None:
    deep: Any = "x"
    for _ in range(300):  # deeper than JSON encoding goes
        deep = [deep]
    result = only_ops(commit_frame([
        ("create", "app.bsky.feed.like/3mptbyplj5d2a", LIKE),
        ("create", "app.bsky.feed.like", LIKE),  # no rkey
        ("create", "app.bsky.feed.like/bad rkey", LIKE),
        ("create", "not-an-nsid/3mptbyplj5d2b", LIKE),
        ("frobnicate", "app.bsky.feed.like/3mptbyplj5d2c", LIKE),
        ("create", "app.bsky.feed.like/3mptbyplj5d2d", None),  # no cid
        ("create", "x.example.thing/3mptbyplj5d2e", {"n": 1.5}),  # floats aren't atproto data
        ("create", "x.example.thing/3mptbyplj5d2f", [1, 2]),  # not an object
        ("create", "x.example.thing/3mptbyplj5d2g", {"deep": deep}),
        ("delete", "app.bsky.feed.like/3mptbyplj5d2h", None),
    ]))
    assert [op.rkey for op in result.ops] == ["3mptbyplj5d2a", "3mptbyplj5d2h"]  # type: ignore[union-attr]
    assert len(result.skipped) == 8
    for why, word in zip(result.skipped, ["'/'", "rkey", "collection", "operation", "without cid",
                                          "float", "object", "JSON"]):
        assert word in why, (word, why)


def test_text_that_is_not_utf8() -> None:
    block = b"\xa1\x61a\x62\xff\xfe"  # {"a": <two bytes that are not UTF-8>}, by hand
    cid = cid_of(block)
    op = {"action": "create", "path": "x.example.thing/3mptbyplj5d2a", "cid": CID(cid)}
    frame = commit_frame([], ops=[op],
                         blocks=build_car(car_head(cid_of(b"c")), [(cid, block)]))
    result = only_ops(frame)
    assert result.ops == () and len(result.skipped) == 1
    header = b"\xa2\x61t\x62\xff\xfe\x62op\x01"  # {"t": <not UTF-8>, "op": 1}
    malformed(header + encode({"seq": 1}))


def test_a_bad_rev_skips_every_op_as_v1_would() -> None:
    result = only_ops(commit_frame([("create", "app.bsky.feed.like/3mptbyplj5d2a", LIKE)] * 2, rev="nope"))
    assert result.ops == () and len(result.skipped) == 2 and all("rev" in why for why in result.skipped)


def test_a_cid_other_than_sha256_is_looked_up_in_the_car() -> None:
    block = encode(LIKE)
    cid = b"\x01\x71\x13\x40" + hashlib.sha512(block).digest()  # sha2-512
    frame = commit_frame([], ops=[{"action": "create", "path": "app.bsky.feed.like/3mptbyplj5d2a",
                                   "cid": CID(cid)}],
                         blocks=build_car(car_head(cid_of(b"c")), [(cid_of(b"other"), b"\xa0"), (cid, block)]))
    (put,) = only_ops(frame).ops
    assert isinstance(put, PutRecord) and put.cid == cid_text(cid) and put.links == (LIKE_LINK,)


def test_find_block_takes_the_section_not_the_link_in_the_mst_node(frames: list[bytes]) -> None:
    _, body = split(frames[0])
    _, blocks = sections(body["blocks"])
    cid = body["ops"][0]["cid"].cid_bytes
    expected = dict(blocks)[cid]
    assert body["blocks"].count(cid) >= 2  # the section's CID and the MST entry linking to it
    assert bytes(find_block(body["blocks"], cid) or b"") == expected
    assert {c: bytes(d) for c, d in car_blocks(body["blocks"]).items()} == dict(blocks)
    assert find_block(body["blocks"], cid_of(b"absent")) is None


# --- anything at all: a documented result or MalformedEvent, nothing else ---------------------


def check_any(data: bytes) -> None:
    try:
        result = decode_frame_firehose(data)
    except MalformedEvent:
        return
    assert isinstance(result, FRAME_TYPES)
    if isinstance(result, OpsFrame):
        assert all(isinstance(op, (PutRecord, DeleteRecord, Identity, AccountStatus)) for op in result.ops)
        assert all(isinstance(why, str) for why in result.skipped)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    check_any(data)
    check_any(encode({"op": 1, "t": "#commit"}) + data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 8))
def test_corrupted_real_frames(jetstream_dir: Path, seed: int, flips: int) -> None:
    rng = random.Random(seed)
    frames = read_frames(jetstream_dir / "corpus_frames.bin.zst")  # cached, and not in hypothesis's report
    frame = bytearray(frames[rng.choice([0, MULTI_OP_FRAME, 11, 148, 149])])
    for _ in range(flips):
        frame[rng.randrange(len(frame))] = rng.randrange(256)
    check_any(bytes(frame))
