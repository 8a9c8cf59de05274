"""Relay firehose frames (``com.atproto.sync.subscribeRepos``) decoded into typed operations.

A relay sends each event as one binary websocket message: a DAG-CBOR header
``{op, t}`` followed by a DAG-CBOR body.  ``decode_frame_firehose`` turns one such
message into the operations the Jetstream v1 path (``events.decode_event``) makes of
the same event, so the store cannot tell which wire an operation came from:

* ``#commit``: one operation per entry of ``ops``.  A create or update reads its record
  from the ``blocks`` CAR slice by the op's CID and converts it to the JSON Jetstream
  shows (CID links as ``{"$link": "bafy..."}``, bytes as ``{"$bytes": "<standard base64,
  no padding>"}``, the form of atproto's data model and of indigo's ``atproto/data``,
  which Jetstream uses).  The checks, the links and the derived links are those of
  ``events.commit_operation``, called with that JSON.
* ``#identity`` and ``#account``: ``Identity`` and ``AccountStatus``, built by the
  functions ``decode_event`` uses.
* ``#sync`` (the repo's state was reset; a mirror of it may have diverged), ``#info``
  (``OutdatedCursor``) and error frames (``FutureCursor``, ``ConsumerTooSlow``...) are
  not operations: ``SyncFrame``, ``InfoFrame`` and ``ErrorFrame`` for the caller to act on.
  A message type this module does not know is an ``UnknownFrame`` (event streams must skip
  those), with its ``seq`` when it has one.

Every frame that carries events has the relay's ``seq``: the cursor to reconnect with.

**time_us.**  Jetstream v1's ``time_us`` is when the Jetstream instance received the
event; a relay frame has no such thing.  Here ``time_us`` is the event's own ``time``
(RFC 3339, stamped upstream: the PDS for commits) in microseconds, parsed by
``timestamps.datetime_us``.  So an operation from the firehose differs from the v1 one
for the same event only in ``time_us`` (0.4 to 1.3 s earlier in the real corpus the
tests use, and in whole milliseconds), and for identity and account events ``order_us``
equals ``time_us`` (v1 falls back to its receive time only when ``time`` is unusable,
which here is an error).
That ``time`` comes from the upstream's clock: a PDS with a wrong clock gives wrong
``time_us`` values, which order nothing (commits order by ``rev``) but are stored with
the record.

**Errors.**  A frame that cannot be used at all (not DAG-CBOR, truncated, trailing
bytes, a field of the wrong type, an invalid DID, seq or time, an unknown header ``op``,
a ``tooBig`` commit whose records are not in the frame) raises ``MalformedFrame``, a
``MalformedEvent`` whose ``seq`` is the frame's when it was readable: callers count and
skip it as they do a bad Jetstream line.  A problem with one op of a commit (its block
absent from the CAR slice or not matching its CID, a record that is not valid atproto
data, an invalid rkey or collection) skips that op only: the frame's other ops are
returned, and ``OpsFrame.skipped`` holds one reason per op skipped, each what
``MalformedEvent`` would have said, for the caller to count as one bad event each (a
v1 stream would have carried one line per op).

DAG-CBOR is decoded with smalldp's own strict decoder (``smalldp.dagcbor``; every
dependency must install from wheels, and the one candidate that told CID links from byte
strings, cbrrr, has none): ``dagcbor.decode_atjson`` decodes a record straight into the
JSON form above.  Measured in scripts/bench_firehose_decode.py.  The CAR slice itself is not
decoded: ``find_block`` finds each record's block by its CID (checking its sha2-256),
so the MST nodes and the commit block around the records are never decoded.  The decoder
rejects what atproto data forbids and Go's decoder in Jetstream may let through (floats,
non-canonical map order): such a record skips its op.
"""

from __future__ import annotations

import hashlib
from typing import Any, Union

import msgspec
import orjson

from smalldp.dagcbor import CID, DecodeError, decode_atjson, decode_prefix
from smalldp.dagcbor import cid_text as _cid_text
from smalldp.events import (
    Int64, MalformedEvent, Operation, account_operation, commit_operation, identity_operation,
    valid_did,
)
from smalldp.events_v2 import ErrorFrame, InfoFrame
from smalldp.tid import tid_to_int
from smalldp.timestamps import datetime_us

__all__ = [
    "ErrorFrame", "FirehoseFrame", "InfoFrame", "MalformedFrame", "OpsFrame", "SyncFrame",
    "UnknownFrame", "car_blocks", "car_section", "decode_frame_firehose", "find_block", "record_json",
    "split_frame",
]

# Result types are gc=False like the other decoders' (they hold no cycles).


class OpsFrame(msgspec.Struct, frozen=True, gc=False):
    """A ``#commit``, ``#identity`` or ``#account`` frame at stream position ``seq``.

    ``ops`` are the operations to apply, in the frame's order; ``skipped`` says why each
    op of a commit that could not be applied was left out (one reason per op).
    """

    seq: int
    ops: tuple[Operation, ...]
    skipped: tuple[str, ...] = ()


class SyncFrame(msgspec.Struct, frozen=True, gc=False):
    """A ``#sync``: the repo of ``did`` is now at revision ``rev`` whatever came before.

    Nothing to apply from the frame itself; a caller that must stay equal to the repo
    re-fetches it (``com.atproto.sync.getRepo``) when ``rev`` is newer than what it holds.
    """

    seq: int
    did: str
    rev: str
    time_us: int


class UnknownFrame(msgspec.Struct, frozen=True, gc=False):
    """A message type this module does not know (``t``); ``seq`` when its body had one."""

    kind: str
    seq: int | None


FirehoseFrame = Union[OpsFrame, SyncFrame, UnknownFrame, InfoFrame, ErrorFrame]


class MalformedFrame(MalformedEvent):
    """A firehose frame that can't be used; ``seq`` is the frame's when it could be read."""

    def __init__(self, reason: str, seq: int | None = None) -> None:
        super().__init__(reason)
        self.seq = seq


# --- wire types: the frame body, already decoded to Python values, checked by msgspec.convert


class _Header(msgspec.Struct):
    op: int
    t: str | None = None


class _Op(msgspec.Struct):
    action: str
    path: str
    cid: CID | None = None  # None for deletes


class _Commit(msgspec.Struct, rename={"too_big": "tooBig"}):
    seq: Int64
    repo: str
    rev: str
    time: str
    ops: list[_Op]
    blocks: bytes
    too_big: bool = False


class _Identity(msgspec.Struct):  # what Jetstream v1 carries verbatim as its "identity"
    seq: Int64
    did: str
    time: str
    handle: str | None = None


class _Account(msgspec.Struct):  # and as its "account"
    seq: Int64
    did: str
    time: str
    active: bool
    status: str | None = None


class _Sync(msgspec.Struct):
    seq: Int64
    did: str
    rev: str
    time: str


class _Info(msgspec.Struct):
    name: str
    message: str | None = None


class _Error(msgspec.Struct):
    error: str
    message: str | None = None


class _Seq(msgspec.Struct):  # an unknown message type's body: only its seq is of use
    seq: Int64 | None = None


_BODY_TYPES: dict[str, type[_Identity | _Account | _Sync]] = {
    "#identity": _Identity, "#account": _Account, "#sync": _Sync,
}
_CONVERT_ERRORS = (msgspec.ValidationError, TypeError)
_PASS = (bytes,)  # msgspec.convert would otherwise take a text string for bytes (as base64)
_DAG_CBOR_SHA256 = b"\x01\x71\x12\x20"  # CIDv1, dag-cbor, sha2-256, 32 bytes: every record's
_RAW_SHA256 = b"\x01\x55\x12\x20"


def decode_frame_firehose(data: bytes | bytearray | memoryview | str) -> FirehoseFrame:
    """Decode one relay websocket message (header and body, both DAG-CBOR).

    Returns an ``OpsFrame`` (operations at a seq, and the reasons any ops were skipped),
    a ``SyncFrame``, an ``UnknownFrame``, an ``InfoFrame`` or an ``ErrorFrame``; raises
    ``MalformedFrame`` (a ``MalformedEvent``) for a frame that can't be used.
    """
    header, raw_body = split_frame(data)
    try:
        head = msgspec.convert(header, _Header)
    except _CONVERT_ERRORS as exc:
        raise MalformedFrame(f"invalid frame header: {exc}") from None
    if head.op == -1:
        try:
            error = msgspec.convert(raw_body, _Error)
        except _CONVERT_ERRORS as exc:
            raise MalformedFrame(f"invalid error frame: {exc}") from None
        return ErrorFrame(error.error, error.message)
    if head.op != 1:
        raise MalformedFrame(f"unknown frame op {head.op}")
    kind = head.t
    if kind is None:
        raise MalformedFrame("message frame without t")
    if kind == "#commit":
        return _commit(raw_body)
    if kind == "#info":
        try:
            info = msgspec.convert(raw_body, _Info)
        except _CONVERT_ERRORS as exc:
            raise MalformedFrame(f"invalid #info: {exc}") from None
        return InfoFrame(info.name, info.message)
    body_type = _BODY_TYPES.get(kind)
    if body_type is None:
        try:
            seq = msgspec.convert(raw_body, _Seq).seq
        except _CONVERT_ERRORS:
            seq = None  # a body we can't read: still a message type to skip, not an error
        return UnknownFrame(kind[:80], seq)
    try:
        body: _Identity | _Account | _Sync = msgspec.convert(raw_body, body_type, builtin_types=_PASS)
    except _CONVERT_ERRORS as exc:
        raise MalformedFrame(f"invalid {kind}: {exc}", _seq_of(raw_body)) from None
    did = body.did
    if not valid_did(did):
        raise MalformedFrame(f"invalid did {did[:80]!r}", body.seq)
    time_us = _time_us(body.time, body.seq)
    if isinstance(body, _Sync):
        if tid_to_int(body.rev) is None:
            raise MalformedFrame(f"invalid rev {body.rev[:40]!r}", body.seq)
        return SyncFrame(body.seq, did, body.rev, time_us)
    try:
        if isinstance(body, _Identity):
            op: Operation = identity_operation(did, time_us, body.seq, body.handle, body.time)
        else:
            op = account_operation(did, time_us, body.seq, body.active, body.status, body.time)
    except MalformedEvent as exc:
        raise MalformedFrame(str(exc), body.seq) from None
    return OpsFrame(body.seq, (op,))


def split_frame(data: bytes | bytearray | memoryview | str) -> tuple[Any, Any]:
    """(header, body) of one websocket message, both decoded from DAG-CBOR but not checked;
    ``MalformedFrame`` when the message is not two DAG-CBOR items back to back."""
    if isinstance(data, str):  # a text message: relays only send binary ones
        raise MalformedFrame("text message on a firehose stream")
    if not isinstance(data, bytes):
        data = bytes(data)
    # The event stream's framing: two DAG-CBOR items back to back, the header and the body.
    try:
        header, body_at = decode_prefix(data)
        if body_at == len(data):
            raise MalformedFrame("frame without a body")
        raw_body, end = decode_prefix(data, body_at)
    except DecodeError as exc:
        raise MalformedFrame(f"frame is not DAG-CBOR: {exc}") from None
    if end != len(data):
        raise MalformedFrame(f"{len(data) - end} bytes after the frame body")
    return header, raw_body


def _commit(raw_body: Any) -> OpsFrame:
    try:
        commit = msgspec.convert(raw_body, _Commit, builtin_types=_PASS)
    except _CONVERT_ERRORS as exc:
        raise MalformedFrame(f"invalid #commit: {exc}", _seq_of(raw_body)) from None
    seq = commit.seq
    did = commit.repo
    if not valid_did(did):
        raise MalformedFrame(f"invalid did {did[:80]!r}", seq)
    if commit.too_big:
        # The records are not in the frame (relays no longer send these since Sync 1.1):
        # only a re-fetch of the repo would have them. Jetstream drops such a commit too.
        raise MalformedFrame(f"tooBig commit of {did} at rev {commit.rev[:40]!r}: records not in the frame",
                             seq)
    time_us = _time_us(commit.time, seq)
    car = commit.blocks
    ops: list[Operation] = []
    skipped: list[str] = []
    rev = commit.rev
    for op in commit.ops:
        collection, slash, rkey = op.path.partition("/")
        if not slash:
            skipped.append(f"op path without '/' {op.path[:80]!r}")
            continue
        action = op.action
        record = _NO_RECORD
        cid_text: str | None = None
        if action == "create" or action == "update":
            cid = op.cid
            if cid is None:
                skipped.append(f"{action} of {op.path[:80]!r} without cid")
                continue
            cid_bytes = cid.cid_bytes
            cid_text = _cid_text(cid_bytes)
            if _is_sha256(cid_bytes):
                block = find_block(car, cid_bytes)
            else:  # a CID find_block can't check (none seen yet): the CAR's sections
                try:
                    block = car_blocks(car).get(cid_bytes)
                except ValueError as exc:
                    skipped.append(f"block {cid_text} of {op.path[:80]!r}: invalid blocks CAR: {exc}")
                    continue
            if block is None:
                skipped.append(f"block {cid_text} of {op.path[:80]!r} absent from the CAR slice"
                               " (or not matching its CID)")
                continue
            try:
                record = msgspec.Raw(record_json(block))
            except ValueError as exc:
                skipped.append(f"record {cid_text} of {op.path[:80]!r}: {exc}")
                continue
        try:
            ops.append(commit_operation(did, time_us, rev, action, collection, rkey, record, cid_text))
        except MalformedEvent as exc:
            skipped.append(str(exc))
    return OpsFrame(seq, tuple(ops), tuple(skipped))


_NO_RECORD = msgspec.Raw(b"")


def record_json(block: bytes | memoryview) -> bytes:
    """A record's DAG-CBOR block as the JSON Jetstream shows (links ``$link``, bytes
    ``$bytes``); ValueError when it is not atproto data (floats, a ``$link`` or ``$bytes``
    key, non-canonical DAG-CBOR, trailing bytes, nesting deeper than JSON encoding goes).
    """
    try:
        value = decode_atjson(block)
    except DecodeError as exc:
        raise ValueError(f"not atproto DAG-CBOR: {exc}") from None
    try:
        # Keys sorted: Jetstream writes records with Go's encoding of maps, which sorts
        # them, so most records have the same bytes from either wire (not those with a
        # blob, a Go struct written "ref" before "mimeType", nor with "<", ">" or "&",
        # which Go writes as \u003c, \u003e and \u0026).
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:  # nested deeper than orjson goes (254 levels)
        raise ValueError(f"record not encodable as JSON: {exc}") from None


def find_block(car: bytes, cid: bytes) -> memoryview | None:
    """The data of the block named by ``cid`` (a sha2-256 CID) in a CAR file, or None.

    Rather than walking the CAR section by section (most of a commit's blocks are MST
    nodes, and the records come near the end), this finds the CID's bytes and takes the section
    that follows when its data hashes to the CID: what is returned is the block whatever
    else the bytes hold (the CID also appears inside the MST node that links to it).
    """
    digest = cid[4:]
    width = len(cid)
    end = len(car)
    at = car.find(cid)
    while at >= 0:
        # A section is varint(len(cid) + len(data)), cid, data: its varint is the 1-4 bytes
        # before ``at`` (4 reach 256 MiB), and only the right one gives data of this digest.
        for k in (1, 2, 3, 4):
            if at - k < 0 or (k > 1 and car[at - k] < 0x80):
                break
            size, after = _varint(car, at - k)
            stop = at + size
            if after == at and size > width and stop <= end:
                data = memoryview(car)[at + width:stop]
                if hashlib.sha256(data).digest() == digest:
                    return data
        at = car.find(cid, at + 1)
    return None


def car_blocks(car: bytes) -> dict[bytes, memoryview]:
    """The blocks of a CAR v1 file, by CID bytes, without decoding (nor checking) any.

    The header (roots) is skipped: ops name the blocks they need.  ValueError when the
    file is truncated or a CID can't be read.
    """
    view = memoryview(car)
    end = len(car)
    size, pos = _varint(car, 0)
    pos += size
    if size == 0 or pos > end:
        raise ValueError("truncated CAR header")
    blocks: dict[bytes, memoryview] = {}
    while pos < end:
        cid_at, data_at, stop = car_section(car, pos)
        if stop > end:
            raise ValueError("truncated CAR block")
        blocks[car[cid_at:data_at]] = view[data_at:stop]
        pos = stop
    return blocks


def car_section(data: bytes, pos: int) -> tuple[int, int, int]:
    """(where its CID starts, where its data starts, where it ends) of the CAR v1 section
    ``varint(len(cid) + len(data)) cid data`` at ``pos``, reading only its varint and CID.

    The one reader of CAR sections: ``car_blocks`` here and ``repo_car`` (which streams a
    file through a buffer) both use it.  The end may lie past ``len(data)``: a caller
    holding the whole CAR calls that truncated, one reading a stream reads on.
    ValueError when the varint or the CID can't be read (truncated, not a CIDv1 or v0) or
    the section is shorter than its CID.
    """
    size, cid_at = _varint(data, pos)
    data_at = _cid_end(data, cid_at)
    end = cid_at + size
    if data_at > end:
        raise ValueError(f"CAR section at byte {pos} shorter than its CID")
    return cid_at, data_at, end


def _is_sha256(cid: bytes) -> bool:
    """A CIDv1 (dag-cbor or raw) of a sha2-256 digest: every record's CID."""
    prefix = cid[:4]
    return (prefix == _DAG_CBOR_SHA256 or prefix == _RAW_SHA256) and len(cid) == 36


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the unsigned LEB128 varint at ``pos``."""
    value = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _cid_end(data: bytes, pos: int) -> int:
    """Where the binary CID starting at ``pos`` ends (any CIDv1, or a CIDv0)."""
    prefix = data[pos:pos + 4]
    if prefix == _DAG_CBOR_SHA256 or prefix == _RAW_SHA256:  # nearly every block
        return pos + 36
    if data[pos:pos + 2] == b"\x12\x20":  # CIDv0: a bare sha2-256 multihash
        return pos + 34
    version, pos = _varint(data, pos)
    if version != 1:
        raise ValueError(f"unsupported CID version {version}")
    _, pos = _varint(data, pos)  # codec
    _, pos = _varint(data, pos)  # multihash function
    length, pos = _varint(data, pos)
    return pos + length


def _time_us(text: str, seq: int) -> int:
    # Relays write milliseconds ("...:07.517Z"); datetime_us has a fast path for the
    # microseconds Jetstream writes, and the same instant in that form takes it.
    if len(text) == 24 and text[19] == "." and text[23] == "Z":
        text = text[:23] + "000Z"
    try:
        return datetime_us(text)
    except ValueError as exc:
        raise MalformedFrame(str(exc), seq) from None


def _seq_of(raw_body: Any) -> int | None:
    """The body's seq for an error report, when it is one."""
    seq = raw_body.get("seq") if isinstance(raw_body, dict) else None
    return seq if type(seq) is int and 0 <= seq < 1 << 63 else None
