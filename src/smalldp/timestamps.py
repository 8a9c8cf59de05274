"""ATProto datetimes (RFC 3339 as atproto writes them) as microseconds since the epoch.

Jetstream v2 stamps every event with strings like ``2026-07-04T14:38:07.877123Z``, and
account and identity events carry the upstream ``time`` of the change: both are parsed
here.  Go's ``UnixMicro`` semantics: fractional digits past the sixth are truncated.
"""

from __future__ import annotations

import re
from datetime import date

# Uppercase T and Z, 0-9 fractional digits, +-HH:MM offsets; no leap second (Go, which
# Jetstream and the relays are written in, rejects them too).
_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])"
    r"(?:\.([0-9]{1,9}))?(?:Z|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))\Z"
)
_EPOCH_DAY = date(1970, 1, 1).toordinal()
# "YYYY-MM-DDTHH:MM:SS" -> its microseconds since the epoch (as UTC). A live stream's events
# share their second by the thousand, so the usual "...SS.ffffffZ" costs a dict hit.
_second_us: dict[str, int] = {}


def datetime_us(text: str) -> int:
    """Microseconds since the epoch of an atproto datetime; ValueError if it is not one
    (or lies before 1970)."""
    base = _second_us.get(text[:19])
    if (base is not None and len(text) == 27 and text[26] == "Z" and text[19] == "."
            and text.isascii()):
        frac = text[20:26]
        if frac.isdigit():  # ASCII digits only (isascii above): int() would take "+1_234"
            return base + int(frac)
    return _datetime_us_slow(text)


def _datetime_us_slow(text: str) -> int:
    match = _DATETIME.match(text)
    if match is None:
        raise ValueError(f"invalid datetime {text[:40]!r}")
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = match.groups()
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_DAY
    except ValueError:
        raise ValueError(f"invalid datetime {text[:40]!r}") from None
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
        raise ValueError(f"datetime before 1970 {text[:40]!r}")
    return us
