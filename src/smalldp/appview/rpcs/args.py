"""Checking bsky.Service request fields before a handler asks the store (no handlers here).

The rules, for every family that uses them:

* **Scalars** a request is about (``actor_did``, ``list_uri``, ``post_uri``, a subject's
  uri) must have their syntax: a DID, or an at-uri whose authority is a DID or a handle
  (``at://alice.test/...`` is well-formed and names nothing smalldp stores: the answer
  is empty, as the reference DataPlane's SQL finds no row). Anything else is
  ``invalid_argument`` naming the field.
* **Arrays** (``target_dids``, ``refs``, ``pairs``, ``dids``, ``list_uris``) are built by
  the AppView from records it read off the network, so one odd value must not fail a
  whole view: a value that is not a DID or at-uri gets the empty entry at its position
  (the reference answers the same for it). Only their length is bounded: at most
  ITEMS_MAX values (a thread of 1,000 replies hydrates a few thousand), else
  ``invalid_argument``.
* **limit**: 0 (unset) means LIMIT_DEFAULT (the reference reads 0 as "no limit", which
  smalldp never allows); 1..LIMIT_MAX as given (the AppView's own lexicons cap its
  limits at 100); anything else is ``invalid_argument``.
* **cursor**: "" means none; a cursor the method did not make (smalldp's cursors are
  opaque, checked when decoded: ``BadCursor``), or longer than CURSOR_MAX characters, is
  ``invalid_argument``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from smalldp.appview.proto import bsky_pb2
from smalldp.appview.rpcs.base import RpcError
from smalldp.events import valid_did, valid_handle
from smalldp.links import MAX_LINK_LENGTH, is_at_uri
from smalldp.store.reader import BadCursor

T = TypeVar("T")
ITEMS_MAX = 10_000
LIMIT_DEFAULT = 50
LIMIT_MAX = 100
CURSOR_MAX = 512
TEXT_MAX = 1000  # search terms


def invalid(field: str, message: str) -> RpcError:
    """An ``invalid_argument`` error about one request field."""
    return RpcError("invalid_argument", f"{field}: {message}")


def _show(value: str) -> str:
    return repr(value[:80] + ("..." if len(value) > 80 else ""))


def is_did(value: str) -> bool:
    """DID syntax, at most MAX_LINK_LENGTH characters."""
    return len(value) <= MAX_LINK_LENGTH and valid_did(value)


def is_at_uri_syntax(value: str) -> bool:
    """An at-uri (smalldp.links' rule) whose authority is a DID or a handle."""
    if not is_at_uri(value):
        return False
    authority = value[5:].split("/", 1)[0]
    return valid_did(authority) or valid_handle(authority)


def did(value: str, field: str) -> str:
    """A required DID field, or ``invalid_argument``."""
    if not value:
        raise invalid(field, "required (a DID)")
    if not is_did(value):
        raise invalid(field, f"not a DID: {_show(value)}")
    return value


def at_uri(value: str, field: str) -> str:
    """A required at-uri field, or ``invalid_argument``."""
    if not value:
        raise invalid(field, "required (an at-uri)")
    if not is_at_uri_syntax(value):
        raise invalid(field, f"not an at-uri (at://DID-or-handle/...): {_show(value)}")
    return value


def limit(value: int, field: str = "limit") -> int:
    """A page size: 0 is LIMIT_DEFAULT, 1..LIMIT_MAX as given, else ``invalid_argument``."""
    if value == 0:
        return LIMIT_DEFAULT
    if not 1 <= value <= LIMIT_MAX:
        raise invalid(field, f"must be 1..{LIMIT_MAX} (0: {LIMIT_DEFAULT}), got {value}")
    return value


def cursor(value: str, field: str = "cursor") -> str | None:
    """An opaque cursor: None for "", ``invalid_argument`` when too long (its content is
    checked where it is decoded: wrap the store call in ``cursor_errors``)."""
    if not value:
        return None
    if len(value) > CURSOR_MAX:
        raise invalid(field, f"not a cursor of this method (longer than {CURSOR_MAX} characters)")
    return value


@contextmanager
def cursor_errors(field: str = "cursor") -> Iterator[None]:
    """Turn the store's BadCursor into ``invalid_argument``."""
    try:
        yield
    except BadCursor:
        raise invalid(field, "not a cursor of this method") from None


def items(values: Sequence[T], field: str) -> list[T]:
    """An array field as a list, ``invalid_argument`` past ITEMS_MAX values."""
    if len(values) > ITEMS_MAX:
        raise invalid(field, f"at most {ITEMS_MAX} values, got {len(values)}")
    return list(values)


def dids(values: Sequence[str], field: str) -> list[str]:
    """An array of DIDs; values that are not DIDs become "" (they match nothing)."""
    return [v if is_did(v) else "" for v in items(values, field)]


def uris(values: Iterable[str]) -> list[str]:
    """at-uris; values that are not at-uris become "" (they match nothing)."""
    return [v if is_at_uri_syntax(v) else "" for v in values]


def ref_uris(refs: Sequence[bsky_pb2.RecordRef], field: str) -> list[str]:
    """The uris of an array of RecordRefs (their cids are ignored, as the reference does)."""
    return uris(ref.uri for ref in items(refs, field))


def text(value: str, field: str) -> str:
    """A free-text field of at most TEXT_MAX characters."""
    if len(value) > TEXT_MAX:
        raise invalid(field, f"at most {TEXT_MAX} characters")
    return value


def timestamp_ms(ms: int) -> Timestamp:
    """A Timestamp of milliseconds since the epoch (what the reference's ``Timestamp.fromDate``
    makes: whole milliseconds)."""
    seconds, milli = divmod(ms, 1000)
    return Timestamp(seconds=seconds, nanos=milli * 1_000_000)


def timestamp_us(time_us: int) -> Timestamp:
    """A Timestamp of microseconds since the epoch, cut to whole milliseconds: the AppView's
    client reads nanos rounding *up* (``Math.ceil``), so 12.345678 ms would show as 13."""
    return timestamp_ms(time_us // 1000)
