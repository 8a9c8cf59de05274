"""Test helper: Jetstream v1 event lines rewritten as the equivalent Jetstream v2 frames.

Built on msgspec's generic decoding only (never on smalldp's decoders), keeping every
value except ``time_us`` byte-for-byte: the record's JSON is copied as raw bytes, so the
v2 decoder must hand back exactly the ``body`` v1 gives.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

NS = "network.bsky.jetstream.subscribeEvents#"
MAX_TIME_US = 253402300799999999  # 9999-12-31T23:59:59.999999Z: RFC 3339 has 4-digit years


def rfc3339_us(time_us: int) -> str:
    """``time_us`` (microseconds since the epoch) as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.

    Raises ValueError outside 0..MAX_TIME_US: v1 allows those, RFC 3339 can't write them.
    """
    if not 0 <= time_us <= MAX_TIME_US:
        raise ValueError(f"time_us {time_us} has no RFC 3339 form")
    seconds, micros = divmod(time_us, 1_000_000)
    t = time.gmtime(seconds)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d}Z")


def v1_to_v2_frame(line: bytes, seq: int) -> bytes:
    """One v1 event line -> the v2 ``{"$type":"event","payload":...}`` frame at stream ``seq``.

    ``time`` and ``witnessedAt`` both carry v1's ``time_us``; identity and account bodies
    are passed through as the upstream event. Raises ValueError (msgspec's errors included)
    for lines it can't convert (other kinds, time_us out of range, bad JSON), KeyError
    for a missing did, kind, time_us or commit.
    """
    event = msgspec.json.decode(line, type=dict[str, msgspec.Raw])
    kind = msgspec.json.decode(event["kind"], type=str)
    stamp = rfc3339_us(msgspec.json.decode(event["time_us"], type=int))
    payload: dict[str, Any] = {
        "$type": NS + kind, "seq": seq, "did": event["did"], "time": stamp, "witnessedAt": stamp,
    }
    if kind == "commit":
        payload.update(msgspec.json.decode(event["commit"], type=dict[str, msgspec.Raw]))
    elif kind in ("identity", "account"):
        payload[kind] = event[kind]
    else:
        raise ValueError(f"no v2 equivalent for kind {kind!r}")
    return msgspec.json.encode({"$type": "event", "payload": payload})
