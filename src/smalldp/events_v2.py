"""Jetstream v2 frames (``network.bsky.jetstream.subscribeEvents``) decoded into typed operations.

Each websocket text message is one JSON object: ``{"$type":"event","payload":{...}}`` or
``{"$type":"error","error":...,"message"?}``.  The payload is a msgspec tagged union on its
``$type``, so the whole frame decodes in one C call; the syntax checks and the operation
types are the v1 ones from ``events.py``.  ``decode_frame_v2`` returns one ``Frame`` or raises
``MalformedEvent`` with a reason, exactly like ``events.decode_event``.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any, Union

import msgspec

from smalldp.events import (
    ACCOUNT_STATUSES, AccountBody, AccountStatus, Identity, IdentityBody, Int64, MalformedEvent,
    Operation, commit_operation, valid_did, valid_handle,
)

NS = "network.bsky.jetstream.subscribeEvents#"

# Result types are gc=False (3% faster decode, measured): one per event, holding no cycles.


class OpFrame(msgspec.Struct, frozen=True, gc=False):
    """An event smalldp applies: ``op`` (a v1 operation type) at stream position ``seq``."""

    seq: int
    op: Operation


class UnusedFrame(msgspec.Struct, frozen=True, gc=False):
    """A well-formed event smalldp has no use for (``#sync``, future kinds): only ``seq`` counts."""

    seq: int
    kind: str  # the payload's $type


class InfoFrame(msgspec.Struct, frozen=True, gc=False):
    """Server information (``OutdatedCursor``, ``FutureCursor``...): no seq, nothing to apply."""

    name: str
    message: str | None


class ErrorFrame(msgspec.Struct, frozen=True, gc=False):
    """An error the server sends just before it closes the connection."""

    error: str
    message: str | None


Frame = Union[OpFrame, UnusedFrame, InfoFrame, ErrorFrame]


class _Event(msgspec.Struct, tag_field="$type", kw_only=True):
    seq: Int64
    did: str
    time: str  # datetimes stay strings: msgspec rounds past 6 fractional digits, we truncate
    witnessed_at: str | None = msgspec.field(default=None, name="witnessedAt")


class _Commit(_Event, tag=NS + "commit"):
    rev: str
    operation: str
    collection: str
    rkey: str
    record: msgspec.Raw = msgspec.Raw(b"")
    cid: str | None = None


class _IdentityEvent(_Event, tag=NS + "identity"):
    identity: IdentityBody


class _AccountEvent(_Event, tag=NS + "account"):
    account: AccountBody


class _SyncEvent(_Event, tag=NS + "sync"):
    sync: dict[str, Any]  # rare; decoded only to check it is an object


class _Info(msgspec.Struct, tag_field="$type", tag=NS + "info"):
    name: str
    message: str | None = None


class _EventFrame(msgspec.Struct, tag_field="$type", tag="event"):
    payload: Union[_Commit, _IdentityEvent, _AccountEvent, _SyncEvent, _Info]


class _ErrorFrame(msgspec.Struct, tag_field="$type", tag="error"):
    error: str
    message: str | None = None


class _PeekPayload(msgspec.Struct):
    type: str = msgspec.field(name="$type")
    seq: Int64 | None = None


class _Peek(msgspec.Struct):  # only read after a failed decode, to spot payload kinds added later
    type: str = msgspec.field(name="$type")
    payload: _PeekPayload | None = None


_KNOWN = frozenset(NS + k for k in ("commit", "identity", "account", "sync", "info"))
_decoder = msgspec.json.Decoder(Union[_EventFrame, _ErrorFrame])
_peek_decoder = msgspec.json.Decoder(_Peek)
_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)

# RFC 3339 as atproto writes it: uppercase T and Z, 0-9 fractional digits, +-HH:MM offsets;
# no leap second (Go, which Jetstream is written in, rejects them too).
_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])"
    r"(?:\.([0-9]{1,9}))?(?:Z|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))\Z"
)
_EPOCH_DAY = date(1970, 1, 1).toordinal()
# "YYYY-MM-DDTHH:MM:SS" -> its microseconds since the epoch (as UTC). A live stream's events
# share their second by the thousand, so the usual "...SS.ffffffZ" costs a dict hit.
_second_us: dict[str, int] = {}


def _time_us(text: str) -> int:
    base = _second_us.get(text[:19])
    if (base is not None and len(text) == 27 and text[26] == "Z" and text[19] == "."
            and text.isascii()):
        frac = text[20:26]
        if frac.isdigit():  # ASCII digits only (isascii above): int() would take "+1_234"
            return base + int(frac)
    return _time_us_slow(text)


def _time_us_slow(text: str) -> int:
    match = _DATETIME.match(text)
    if match is None:
        raise MalformedEvent(f"invalid datetime {text[:40]!r}")
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = match.groups()
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_DAY
    except ValueError:
        raise MalformedEvent(f"invalid datetime {text[:40]!r}") from None
    local_us = (days * 86400 + int(hour) * 3600 + int(minute) * 60 + int(second)) * 1_000_000
    if local_us >= 0:  # cached only when non-negative, so the fast path never yields < 0
        if len(_second_us) >= 4096:
            _second_us.clear()
        _second_us[text[:19]] = local_us
    us = local_us + (int(frac[:6].ljust(6, "0")) if frac else 0)  # truncated, like Go's UnixMicro
    if sign:
        offset_us = (int(off_h) * 60 + int(off_m)) * 60_000_000
        us += -offset_us if sign == "+" else offset_us
    if us < 0:
        raise MalformedEvent(f"datetime before 1970 {text[:40]!r}")
    return us


def decode_frame_v2(data: bytes | str) -> Frame:
    """Decode one Jetstream v2 websocket message (``xrpc.v1.json`` framing).

    Returns an ``OpFrame`` (an operation and its stream seq), an ``UnusedFrame`` (a
    well-formed event of a kind smalldp ignores, with its seq), an ``InfoFrame`` or an
    ``ErrorFrame``; raises MalformedEvent for anything else.
    """
    try:
        frame = _decoder.decode(data)
    except _ERRORS as exc:
        return _unknown_kind(data, str(exc))
    if type(frame) is _ErrorFrame:
        return ErrorFrame(frame.error, frame.message)
    p = frame.payload
    if type(p) is _Info:
        return InfoFrame(p.name, p.message)
    did = p.did
    if not valid_did(did):
        raise MalformedEvent(f"invalid did {did[:80]!r}")
    time_us = _time_us(p.time)  # checked even when witnessedAt wins: it is a required field
    if p.witnessed_at is not None:  # when this instance saw it: what v1's time_us meant
        time_us = _time_us(p.witnessed_at)
    if type(p) is _SyncEvent:
        return UnusedFrame(p.seq, NS + "sync")
    if type(p) is _Commit:
        return OpFrame(p.seq, _commit(p, time_us))
    if type(p) is _AccountEvent:
        account = p.account
        status = account.status
        if status is not None and status not in ACCOUNT_STATUSES:
            raise MalformedEvent(f"unknown account status {status[:40]!r}")
        return OpFrame(p.seq, AccountStatus(did, time_us, account.seq, account.active, status))
    handle = p.identity.handle
    if handle is not None and not valid_handle(handle):
        raise MalformedEvent(f"invalid handle {handle[:80]!r}")
    handle = handle.lower() if handle else None
    return OpFrame(p.seq, Identity(did, time_us, p.identity.seq, handle))


def _unknown_kind(data: bytes | str, reason: str) -> Frame:
    # Event streams must skip message kinds they don't know; a payload $type outside _KNOWN
    # with a valid seq is such a kind. Everything else that failed to decode is malformed.
    try:
        peek = _peek_decoder.decode(data)
    except _ERRORS:
        raise MalformedEvent(reason) from None
    p = peek.payload
    if peek.type == "event" and p is not None and p.type not in _KNOWN and p.seq is not None:
        return UnusedFrame(p.seq, p.type)
    raise MalformedEvent(reason)


def _commit(p: _Commit, time_us: int) -> Operation:
    return commit_operation(p.did, time_us, p.rev, p.operation, p.collection, p.rkey, p.record, p.cid)
