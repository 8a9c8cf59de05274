"""decode_frame_v2: Jetstream v2 frames against v1's decode_event, hand-computed datetimes,
info/error/sync frames, and malformed input (only MalformedEvent may come out).

Expected values are computed here independently: the fixtures' own JSON (json.loads),
calendar.timegm for datetimes, or the v1 decoder on the same event.
"""

from __future__ import annotations

import calendar
import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smalldp.events import AccountStatus, DeleteRecord, Identity, MalformedEvent, PutRecord, decode_event
from smalldp.events_v2 import ErrorFrame, InfoFrame, OpFrame, UnusedFrame, decode_frame_v2
from v2wire import NS, rfc3339_us, v1_to_v2_frame

JETSTREAM = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "jetstream"
FIXTURE_FILES = ["corpus_expected_v1.jsonl", "subscribe_golden_v1.jsonl"]
FRAME_TYPES = (OpFrame, UnusedFrame, InfoFrame, ErrorFrame)
DID = "did:plc:wq4aajammjtxdomz3e23667t"
REV = "3mptbypluud2a"
T_2026 = calendar.timegm((2026, 7, 4, 12, 34, 56, 0, 0, 0)) * 1_000_000  # 2026-07-04T12:34:56Z
DROP = object()  # a mutation that removes the key
# REV decoded by hand: base32-sortable digits 2-7 -> 0-5, a-z -> 6-31.
REV_INT = int(REV.translate(str.maketrans("234567abcdefghijklmnopqrstuvwxyz", "0123456789abcdefghijklmnopqrstuv")), 32)


def frame(payload: dict[str, Any]) -> bytes:
    return json.dumps({"$type": "event", "payload": payload}).encode()


def commit(**changes: Any) -> dict[str, Any]:
    """A valid #commit payload (a create) with ``changes`` applied (DROP removes a key)."""
    payload: dict[str, Any] = {
        "$type": NS + "commit", "seq": 42, "did": DID, "time": "2026-07-04T12:34:56.123456Z",
        "rev": REV, "operation": "create", "collection": "app.bsky.feed.like",
        "rkey": "3mptbyplj5d2a", "record": {"$type": "app.bsky.feed.like", "n": 1}, "cid": "bafyx",
    }
    return apply(payload, changes)


def identity(**changes: Any) -> dict[str, Any]:
    payload = {"$type": NS + "identity", "seq": 43, "did": DID, "time": "2026-07-04T12:34:56Z",
               "identity": {"did": DID, "seq": 900, "time": "2026-07-04T12:34:55.000Z",
                            "handle": "Alice.Example.COM"}}
    return apply(payload, changes)


def account(**changes: Any) -> dict[str, Any]:
    payload = {"$type": NS + "account", "seq": 44, "did": DID, "time": "2026-07-04T12:34:56Z",
               "account": {"did": DID, "seq": 901, "time": "2026-07-04T12:34:55.000Z",
                           "active": False, "status": "takendown"}}
    return apply(payload, changes)


def sync(**changes: Any) -> dict[str, Any]:
    payload = {"$type": NS + "sync", "seq": 45, "did": DID, "time": "2026-07-04T12:34:56Z",
               "sync": {"did": DID, "rev": REV, "blocks": {"$bytes": "AAAA"}}}
    return apply(payload, changes)


def apply(payload: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        key = {"witnessedAt_": "witnessedAt", "type_": "$type"}.get(key, key)
        if value is DROP:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def time_us_of(time: str, **changes: Any) -> int:
    result = decode_frame_v2(frame(commit(time=time, **changes)))
    assert isinstance(result, OpFrame)
    return result.op.time_us


def outcome(decode: Any, data: bytes) -> Any:
    try:
        return decode(data)
    except MalformedEvent:
        return "malformed"


# ------------------------------------------------------------------ real events, v1 vs v2

def fixture_lines() -> list[bytes]:
    if not JETSTREAM.is_dir():
        pytest.skip(f"real Jetstream fixtures not found at {JETSTREAM}")
    return [line for name in FIXTURE_FILES for line in (JETSTREAM / name).read_bytes().splitlines()]


def test_fixture_events_decode_like_v1() -> None:
    lines = fixture_lines()
    assert len(lines) == 162  # 152 + 10: every line of both captures
    seen: set[str] = set()
    for i, line in enumerate(lines):
        seq = 10**12 + i
        result = decode_frame_v2(v1_to_v2_frame(line, seq))
        v1 = decode_event(line)
        assert v1 is not None and result == OpFrame(seq, v1)
        op: Any = result.op
        raw = json.loads(line)
        assert op.time_us == raw["time_us"] and op.did == raw["did"]
        if raw["kind"] == "commit":
            c = raw["commit"]
            assert (op.collection, op.rkey) == (c["collection"], c["rkey"])
            if "record" in c:
                assert op.record == c["record"]
            seen.add(c["operation"])
        else:
            assert op.seq == raw[raw["kind"]]["seq"]  # the relay's seq, as in v1
            seen.add(raw["kind"])
    assert seen == {"create", "update", "delete", "identity", "account"}


def test_str_input_same_as_bytes() -> None:
    for line in fixture_lines()[:20]:
        data = v1_to_v2_frame(line, 5)
        assert decode_frame_v2(data.decode()) == decode_frame_v2(data)


# ------------------------------------------------------------------ generated events, v1 vs v2

SORTABLE = "234567abcdefghijklmnopqrstuvwxyz"
TIDS = st.builds(str.__add__, st.sampled_from("234567ab"), st.text(SORTABLE, min_size=12, max_size=12))
DIDS = st.one_of(
    st.builds("did:plc:{}".format, st.text("abcdefghijklmnopqrstuvwxyz234567", min_size=24, max_size=24)),
    st.builds("did:web:{}.example.com".format, st.text(string.ascii_lowercase, min_size=1, max_size=9)),
)
COLLECTIONS = st.sampled_from(["app.bsky.feed.like", "app.bsky.feed.post", "com.example.fooBar", "a.b"])
RKEYS = TIDS | st.text(string.ascii_letters + string.digits + "._:~-", min_size=1, max_size=20).filter(
    lambda s: s not in (".", ".."))
HANDLES = st.sampled_from(["alice.bsky.social", "Bob.Example.COM", "x.y", "a-b.c-d.org"])
STATUSES = st.sampled_from(["takendown", "suspended", "deleted", "deactivated", "desynchronized", "throttled"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
RECORDS = st.dictionaries(st.text(max_size=8), JSON, max_size=4)
TIME_US = st.integers(0, 253402300799999999)  # up to 9999-12-31T23:59:59.999999Z
SEQ = st.integers(0, 2**63 - 1)


def optional(d: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    if value is not DROP:
        d[key] = value
    return d


def v1_events(did: Any, rev: Any, collection: Any, rkey: Any, operation: Any, record: Any,
              handle: Any, status: Any, upstream_seq: Any) -> Any:
    """v1 event lines built from these strategies (valid or not, as the caller chooses)."""
    commit_ = st.builds(
        lambda did, t, rev, op, coll, rkey, rec, cid: {
            "did": did, "time_us": t, "kind": "commit",
            "commit": optional(optional({"rev": rev, "operation": op, "collection": coll, "rkey": rkey},
                                        "record", rec), "cid", cid)},
        did, TIME_US, rev, operation, collection, rkey, record, st.just(DROP) | st.text(max_size=5))
    identity_ = st.builds(
        lambda did, t, seq, handle: {
            "did": did, "time_us": t, "kind": "identity",
            "identity": optional(optional({"did": did, "time": "2026-01-01T00:00:00Z"}, "seq", seq),
                                 "handle", handle)},
        did, TIME_US, upstream_seq, handle)
    account_ = st.builds(
        lambda did, t, seq, active, status: {
            "did": did, "time_us": t, "kind": "account",
            "account": optional(optional({"did": did, "active": active}, "seq", seq), "status", status)},
        did, TIME_US, upstream_seq, st.booleans(), status)
    return st.one_of(commit_, identity_, account_).map(lambda e: json.dumps(e, ensure_ascii=False).encode())


VALID_EVENTS = v1_events(
    DIDS, TIDS, COLLECTIONS, RKEYS,
    st.sampled_from(["create", "update", "delete"]), RECORDS,  # deletes ignore the record
    st.just(DROP) | HANDLES, st.just(DROP) | STATUSES, st.just(DROP) | SEQ)
ANY_EVENTS = v1_events(
    DIDS | st.sampled_from(["", "did:", "DID:plc:x", "did:plc:", "did:plc:a b"]),
    TIDS | st.sampled_from(["", "3abc", "zzzzzzzzzzzzz", "3LBCDEFGHIJ22", "3lbcdefghij2!"]),
    COLLECTIONS | st.sampled_from(["", "app", "app..like", "1app.bsky", "app.bsky.like!"]),
    RKEYS | st.sampled_from([".", "..", "", "a/b", "a b"]),
    st.sampled_from(["create", "update", "delete", "", "upsert"]),
    st.just(DROP) | RECORDS | JSON,
    st.just(DROP) | HANDLES | st.sampled_from(["", "alice", "-a.com", "a..b", 7]),
    st.just(DROP) | STATUSES | st.sampled_from(["", "banned", "Deleted", None]),
    st.just(DROP) | st.integers(-3, 2**63 + 3))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(line=VALID_EVENTS, seq=SEQ)
def test_generated_valid_events_decode_like_v1(line: bytes, seq: int) -> None:
    v1 = decode_event(line)
    assert isinstance(v1, (PutRecord, DeleteRecord, AccountStatus, Identity))
    assert v1.time_us == json.loads(line)["time_us"]
    assert decode_frame_v2(v1_to_v2_frame(line, seq)) == OpFrame(seq, v1)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(line=ANY_EVENTS, seq=SEQ)
def test_generated_events_valid_or_not_agree_with_v1(line: bytes, seq: int) -> None:
    v1 = outcome(decode_event, line)
    v2 = outcome(decode_frame_v2, v1_to_v2_frame(line, seq))
    assert v2 == ("malformed" if v1 == "malformed" else OpFrame(seq, v1))


# ------------------------------------------------------------------ datetimes

@pytest.mark.parametrize("text, expected", [
    ("1970-01-01T00:00:00Z", 0),
    ("1970-01-01T00:00:00.000001Z", 1),
    ("2026-07-04T12:34:56.123456Z", T_2026 + 123456),
    ("2026-07-04T12:34:56Z", T_2026),
    ("2026-07-04T12:34:56.1Z", T_2026 + 100000),
    ("2026-07-04T12:34:56.12Z", T_2026 + 120000),
    ("2026-07-04T12:34:56.123Z", T_2026 + 123000),
    ("2026-07-04T12:34:56.1234567Z", T_2026 + 123456),  # past microseconds: truncated
    ("2026-07-04T12:34:56.999999999Z", T_2026 + 999999),  # not rounded into the next second
    ("2026-07-04T12:34:56+02:00", T_2026 - 2 * 3600 * 1_000_000),
    ("2026-07-04T12:34:56.5-05:30", T_2026 + 5 * 3600 * 1_000_000 + 30 * 60 * 1_000_000 + 500000),
    ("2026-07-04T12:34:56+00:00", T_2026),
    ("2026-07-04T12:34:56.123456-00:00", T_2026 + 123456),
    ("2024-02-29T23:59:59.999999Z", calendar.timegm((2024, 2, 29, 23, 59, 59, 0, 0, 0)) * 10**6 + 999999),
    ("1970-01-01T01:00:00+01:00", 0),
    ("9999-12-31T23:59:59.999999Z", calendar.timegm((9999, 12, 31, 23, 59, 59, 0, 0, 0)) * 10**6 + 999999),
])
def test_datetimes(text: str, expected: int) -> None:
    assert time_us_of(text) == expected
    assert time_us_of(text) == expected  # again: the second time may take the cached path


def test_same_second_different_tails() -> None:
    # The first call caches the second; later ones with other tails must not trust the cache.
    assert time_us_of("2031-05-06T07:08:09.000001Z") == calendar.timegm((2031, 5, 6, 7, 8, 9)) * 10**6 + 1
    assert time_us_of("2031-05-06T07:08:09.654321Z") == calendar.timegm((2031, 5, 6, 7, 8, 9)) * 10**6 + 654321
    assert time_us_of("2031-05-06T07:08:09.654321+01:00") == calendar.timegm((2031, 5, 6, 6, 8, 9)) * 10**6 + 654321
    for bad in ["2031-05-06T07:08:09.65432xZ", "2031-05-06T07:08:09.٦٥٤٣٢١Z", "2031-05-06T07:08:09.+12345Z",
                "2031-05-06T07:08:09.1_2345Z", "2031-05-06T07:08:09.654321z", "2031-05-06T07:08:09.654321"]:
        with pytest.raises(MalformedEvent, match="datetime"):
            decode_frame_v2(frame(commit(time=bad)))


@pytest.mark.parametrize("text", [
    "", "2026-07-04", "2026-07-04T12:34:56", "2026-07-04T12:34Z", "2026-07-04T12:34:56.Z",
    "2026-07-04T12:34:56.1234567890Z", "2026-07-04t12:34:56Z", "2026-07-04 12:34:56Z",
    "2026-07-04T12:34:56+0200", "2026-07-04T12:34:56+02", "2026-07-04T24:00:00Z", "2026-07-04T12:60:00Z",
    "2026-07-04T12:34:60Z", "2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "0000-01-01T00:00:00Z",
    "2026-07-04T12:34:56+24:00", "2026-07-04T12:34:56+02:60", "２０２６-07-04T12:34:56Z",
    "1969-12-31T23:59:59.999999Z", "1970-01-01T00:30:00+01:00", " 2026-07-04T12:34:56Z",
    "2026-07-04T12:34:56Z ", "+2026-07-04T12:34:56Z",
])
def test_bad_datetimes(text: str) -> None:
    with pytest.raises(MalformedEvent, match="datetime"):
        decode_frame_v2(frame(commit(time=text)))
    with pytest.raises(MalformedEvent, match="datetime"):  # in witnessedAt too
        decode_frame_v2(frame(commit(witnessedAt_=text)))


@pytest.mark.parametrize("make", [commit, identity, account])
def test_witnessed_at_wins_over_time(make: Any) -> None:
    witnessed = "2026-07-04T12:35:00.000007Z"
    with_both = decode_frame_v2(frame(make(time="2026-07-04T12:34:56.5Z", witnessedAt_=witnessed)))
    only_time = decode_frame_v2(frame(make(time="2026-07-04T12:34:56.5Z")))
    assert isinstance(with_both, OpFrame) and isinstance(only_time, OpFrame)
    assert with_both.op.time_us == T_2026 + 4 * 1_000_000 + 7
    assert only_time.op.time_us == T_2026 + 500000


def test_rfc3339_helper() -> None:
    assert rfc3339_us(0) == "1970-01-01T00:00:00.000000Z"
    assert rfc3339_us(T_2026 + 123456) == "2026-07-04T12:34:56.123456Z"
    assert rfc3339_us(253402300799999999) == "9999-12-31T23:59:59.999999Z"
    for out_of_range in (-1, 253402300800000000, 2**63 - 1):
        with pytest.raises(ValueError):
            rfc3339_us(out_of_range)


# ------------------------------------------------------------------ each kind of frame

def test_operations_from_hand_written_frames() -> None:
    assert abs((REV_INT >> 10) - T_2026) < 2 * 86400 * 10**6  # a TID's top bits: its time in us
    assert decode_frame_v2(frame(commit())) == OpFrame(42, PutRecord(
        DID, T_2026 + 123456, REV_INT,
        "app.bsky.feed.like", "3mptbyplj5d2a", "bafyx", b'{"$type": "app.bsky.feed.like", "n": 1}',
        (), True))
    update = decode_frame_v2(frame(commit(operation="update", cid=DROP)))
    assert isinstance(update, OpFrame) and isinstance(update.op, PutRecord)
    assert update.op.is_create is False and update.op.cid is None
    delete = decode_frame_v2(frame(commit(operation="delete", record=DROP, cid=DROP)))
    assert isinstance(delete, OpFrame) and isinstance(delete.op, DeleteRecord)
    assert (delete.seq, delete.op.collection, delete.op.rkey) == (42, "app.bsky.feed.like", "3mptbyplj5d2a")
    assert decode_frame_v2(frame(identity())) == OpFrame(43, Identity(DID, T_2026, 900, "alice.example.com", T_2026 - 10**6))
    no_handle = identity(identity={"did": DID, "seq": 902, "time": "2026-07-04T12:34:55Z"})
    assert decode_frame_v2(frame(no_handle)) == OpFrame(43, Identity(DID, T_2026, 902, None, T_2026 - 10**6))
    assert decode_frame_v2(frame(account())) == OpFrame(44, AccountStatus(DID, T_2026, 901, False, "takendown", T_2026 - 10**6))
    active = account(account={"did": DID, "seq": 903, "time": "2026-07-04T12:34:55Z", "active": True})
    assert decode_frame_v2(frame(active)) == OpFrame(44, AccountStatus(DID, T_2026, 903, True, None, T_2026 - 10**6))


def test_info_error_sync_and_unknown_kinds() -> None:
    info = {"$type": NS + "info", "name": "OutdatedCursor", "message": "cursor too old"}
    assert decode_frame_v2(frame(info)) == InfoFrame("OutdatedCursor", "cursor too old")
    assert decode_frame_v2(frame({"$type": NS + "info", "name": "FutureCursor"})) == InfoFrame("FutureCursor", None)
    error = {"$type": "error", "error": "ConsumerTooSlow", "message": "bye"}
    assert decode_frame_v2(json.dumps(error)) == ErrorFrame("ConsumerTooSlow", "bye")
    assert decode_frame_v2(b'{"error":"ConsumerTooSlow","$type":"error"}') == ErrorFrame("ConsumerTooSlow", None)
    assert decode_frame_v2(frame(sync())) == UnusedFrame(45, NS + "sync")
    later = {"$type": NS + "somethingNew", "seq": 46, "whatever": [1, 2]}
    assert decode_frame_v2(frame(later)) == UnusedFrame(46, NS + "somethingNew")
    # the payload's $type need not come first
    assert decode_frame_v2(b'{"payload":{"seq":47,"x":1,"$type":"com.example.other#thing"},"$type":"event"}') \
        == UnusedFrame(47, "com.example.other#thing")


# ------------------------------------------------------------------ malformed frames

BIG = 2**63
MALFORMED: list[tuple[str, Any, str]] = [
    ("bad json", b'{"$type":"event","payload":', ""),
    ("bad utf-8", b'{"$type":"error","error":"\xff\xfe"}', ""),
    ("not an object", b"[1,2]", ""),
    ("empty", b"", ""),
    ("no $type", json.dumps({"payload": commit()}).encode(), ""),
    ("unknown frame type", json.dumps({"$type": "hello", "payload": commit()}).encode(), ""),
    ("no payload", b'{"$type":"event"}', ""),
    ("payload not object", b'{"$type":"event","payload":[]}', ""),
    ("payload without $type", frame(commit(type_=DROP)), ""),
    ("error without error", b'{"$type":"error","message":"x"}', ""),
    ("error not a string", b'{"$type":"error","error":5}', ""),
    ("info without name", frame({"$type": NS + "info", "message": "m"}), ""),
    ("unknown kind without seq", frame({"$type": NS + "later"}), ""),
    ("unknown kind, negative seq", frame({"$type": NS + "later", "seq": -1}), ""),
    ("sync without seq", frame(sync(seq=DROP)), ""),
    ("sync not an object", frame(sync(sync=[1])), ""),
    ("sync bad did", frame(sync(did="nope")), "invalid did"),
    ("sync bad time", frame(sync(time="yesterday")), "datetime"),
    ("identity without identity", frame(identity(identity=DROP)), ""),
    ("account without account", frame(account(account=DROP)), ""),
    ("account without active", frame(account(account={"did": DID, "seq": 1})), ""),
    ("account active not bool", frame(account(account={"active": 1})), ""),
    ("unknown status", frame(account(account={"active": False, "status": "banned"})), "unknown account status"),
    ("status not a string", frame(account(account={"active": False, "status": 3})), ""),
    ("upstream seq too big", frame(account(account={"active": True, "seq": BIG})), ""),
    ("upstream seq negative", frame(identity(identity={"seq": -1})), ""),
    ("bad handle", frame(identity(identity={"seq": 1, "handle": "not a handle"})), "invalid handle"),
    ("handle not a string", frame(identity(identity={"seq": 1, "handle": ["a.b"]})), ""),
    ("identity bad did", frame(identity(did="did:plc:")), "invalid did"),
    ("identity bad time", frame(identity(time=12)), ""),
    ("account missing time", frame(account(time=DROP)), ""),
    ("account bad witnessedAt", frame(account(witnessedAt_="2026-07-04T12:34:56")), "datetime"),
    ("identity bad witnessedAt", frame(identity(witnessedAt_="2026-07-04T12:34:56")), "datetime"),
    ("bad witnessedAt type", frame(commit(witnessedAt_=5)), ""),
    ("bad time, good witnessedAt", frame(commit(time="nope", witnessedAt_="2026-07-04T12:34:56Z")), "datetime"),
]
for field in ["seq", "did", "time", "rev", "operation", "collection", "rkey"]:
    MALFORMED.append((f"commit without {field}", frame(commit(**{field: DROP})), ""))
    MALFORMED.append((f"commit {field} null", frame(commit(**{field: None})), ""))
MALFORMED += [
    ("seq negative", frame(commit(seq=-1)), ""),
    ("seq 2**63", frame(commit(seq=BIG)), ""),
    ("seq huge", frame(commit(seq=10**30)), ""),
    ("seq float", frame(commit(seq=1.5)), ""),
    ("seq string", frame(commit(seq="42")), ""),
    ("did invalid", frame(commit(did="did:plc:a b")), "invalid did"),
    ("did not a did", frame(commit(did="at://x")), "invalid did"),
    ("rev invalid", frame(commit(rev="3MPTBYPLUUD2A")), "invalid rev"),
    ("rev too long", frame(commit(rev=REV + "2")), "invalid rev"),
    ("collection invalid", frame(commit(collection="app")), "invalid collection"),
    ("rkey dot", frame(commit(rkey=".")), "invalid rkey"),
    ("rkey dotdot", frame(commit(rkey="..")), "invalid rkey"),
    ("rkey slash", frame(commit(rkey="a/b")), "invalid rkey"),
    ("operation unknown", frame(commit(operation="upsert")), "unknown operation"),
    ("create without record", frame(commit(record=DROP)), "without record"),
    ("update without record", frame(commit(operation="update", record=DROP)), "without record"),
    ("record null", frame(commit(record=None)), "not a JSON object"),
    ("record a list", frame(commit(record=[{"a": 1}])), "not a JSON object"),
    ("record a string", frame(commit(record="{}")), "not a JSON object"),
    ("cid not a string", frame(commit(cid=1)), ""),
    ("time before 1970", frame(commit(time="1969-12-31T23:59:59Z")), "before 1970"),
    ("time not a string", frame(commit(time=1783175888085434)), ""),
]


@pytest.mark.parametrize("data, reason", [(d, r) for _, d, r in MALFORMED], ids=[n for n, _, _ in MALFORMED])
def test_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason or None) as info:
        decode_frame_v2(data)
    assert str(info.value)  # always a reason
    if data != b'{"$type":"error","error":"\xff\xfe"}':  # as str it would be valid
        with pytest.raises(MalformedEvent, match=reason or None):
            decode_frame_v2(data.decode())


def test_delete_ignores_record_like_v1() -> None:
    result = decode_frame_v2(frame(commit(operation="delete", record=[1])))
    assert isinstance(result, OpFrame) and isinstance(result.op, DeleteRecord)


def only_frames_or_malformed(data: bytes | str) -> None:
    try:
        result = decode_frame_v2(data)
    except MalformedEvent as exc:
        assert str(exc)
        return
    assert isinstance(result, FRAME_TYPES)


@settings(max_examples=500)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    only_frames_or_malformed(data)


@settings(max_examples=500)
@given(value=JSON)
def test_arbitrary_json(value: Any) -> None:
    only_frames_or_malformed(json.dumps(value).encode())
    only_frames_or_malformed(frame(value) if isinstance(value, dict) else json.dumps(value))


BASES = [commit(), commit(operation="delete", record=DROP), identity(), account(), sync(),
         {"$type": NS + "info", "name": "OutdatedCursor"}]


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(BASES), data=st.data())
def test_mutated_frames(base: dict[str, Any], data: Any) -> None:
    payload = json.loads(json.dumps(base))  # a private copy
    for _ in range(data.draw(st.integers(1, 3))):
        target = payload
        nested = [k for k in ("identity", "account", "sync") if isinstance(payload.get(k), dict)]
        if nested and data.draw(st.booleans()):
            target = payload[data.draw(st.sampled_from(nested))]
        key = data.draw(st.sampled_from(sorted(target) + ["seq", "witnessedAt", "handle", "status", "x"]))
        if data.draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = data.draw(JSON | st.integers(-2**70, 2**70) | st.text() | TIDS | DIDS)
    only_frames_or_malformed(frame(payload))
    whole = data.draw(st.sampled_from(["event", "error", "", None]))
    only_frames_or_malformed(json.dumps({"$type": whole, "payload": payload, "error": payload.get("name")}))
