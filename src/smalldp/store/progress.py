"""Progress reports of long maintenance commands (backup, restore, check_store).

A command reports (phase, units done, units total or None) through a callback; the
:class:`Throttle` keeps that to one report every PROGRESS_EVERY_S seconds, so a copy or
check of a 100 GB file does not flood the terminal.
"""

from __future__ import annotations

import time
from typing import Callable

# Progress callback: (phase, units done, units total or None).  Called at most every
# PROGRESS_EVERY_S seconds, plus once at the end of a phase.
Progress = Callable[[str, int, "int | None"], None]
PROGRESS_EVERY_S = 1.0


class Throttle:
    """Calls a progress callback at most every PROGRESS_EVERY_S seconds."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.next = time.monotonic() + PROGRESS_EVERY_S
        self.shown: set[str] = set()  # phases reported at least once

    def __call__(self, phase: str, done: int, total: int | None = None, *, final: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        # A phase's final report only closes progress already shown: small files, which
        # finish within the first interval, print nothing but the summary.
        if (final and phase in self.shown) or (not final and now >= self.next):
            self.next = now + PROGRESS_EVERY_S
            self.shown.add(phase)
            self.progress(phase, done, total)
