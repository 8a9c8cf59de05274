"""Modest log volume: repetitive ingest messages are counted and summarised.

On a Pi the journal lives on the SD card, so a message that repeats (a reconnect storm
against a flapping endpoint, a stream of malformed events, a disk-space pause that
comes and goes) must not write a line per occurrence. `RepeatFilter`, a logging filter
on the ingest loggers, lets the first `burst` messages of each kind (logger and
message template: "jetstream %s: %s; reconnecting to %s in %.1f s" is one kind,
whatever its arguments) through in each `window_s`, counts the rest, and
writes one summary line per kind and window with the count and the last one.
Errors and worse always pass: they are rare and each one matters.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

WINDOW_S = 60.0
BURST = 5
INGEST_LOGGERS = ("smalldp.ingest.jetstream", "smalldp.ingest.firehose", "smalldp.ingest.stream",
                  "smalldp.ingest.live", "smalldp.ingest.diskguard",
                  "smalldp.ingest.zdict")
_SUMMARY = "%d more like %r in the last %.0f s; the last: %s"


@dataclass
class _Kind:
    """One message template's window."""

    started: float
    level: int
    count: int = 0
    suppressed: int = 0
    last: str = ""


class RepeatFilter(logging.Filter):
    """Passes at most ``burst`` messages of a kind per ``window_s``; summarises the rest."""

    def __init__(self, burst: int = BURST, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()  # the ingest thread and the main loop both log
        self._kinds: dict[tuple[str, str], _Kind] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """logging's hook: False drops the record."""
        if record.levelno >= logging.ERROR or getattr(record, "summary", False):
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        ended: _Kind | None = None
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None or now - kind.started >= self.window_s:
                ended = kind if kind is not None and kind.suppressed else None
                self._kinds[key] = _Kind(started=now, level=record.levelno, count=1)
            else:
                kind.count += 1
                if kind.count > self.burst:
                    kind.suppressed += 1
                    kind.last = record.getMessage()[:300]
                    return False
        if ended is not None:  # outside the lock: emitting comes back through this filter
            self._emit(key, ended)
        return True

    def flush(self, *, force: bool = False) -> int:
        """Write the summaries of windows that have ended (all of them with ``force``);
        returns how many. Called every few seconds by live ingest, and at its end."""
        now = self._clock()
        done: list[tuple[tuple[str, str], _Kind]] = []
        with self._lock:
            for key, kind in list(self._kinds.items()):
                if force or now - kind.started >= self.window_s:
                    del self._kinds[key]
                    if kind.suppressed:
                        done.append((key, kind))
        for key, kind in done:
            self._emit(key, kind)
        return len(done)

    def _emit(self, key: tuple[str, str], kind: _Kind) -> None:
        name, template = key
        logging.getLogger(name).log(kind.level, _SUMMARY, kind.suppressed, template, self.window_s,
                                    kind.last, extra={"summary": True})


REPEATS = RepeatFilter()


def install(names: tuple[str, ...] = INGEST_LOGGERS, repeat_filter: RepeatFilter = REPEATS) -> None:
    """Put the filter on the ingest loggers (once; calling again changes nothing)."""
    for name in names:
        logger = logging.getLogger(name)
        if repeat_filter not in logger.filters:
            logger.addFilter(repeat_filter)
