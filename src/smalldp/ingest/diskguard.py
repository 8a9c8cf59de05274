"""The disk-space guard: live ingest pauses before the disk fills, and resumes by itself.

A Raspberry Pi's SD card is small and shared with the OS: a store that grows until
the filesystem is full takes journald, apt and SSH logins down with it, and SQLite
then fails every write. So before each commit live ingest asks `DiskGuard.check`
whether the data directory's filesystem still has more than the floor free:

* floor = the larger of `min_free_mb` and `min_free_percent` of the filesystem's size
  (defaults 256 MiB and 2 %: room for one batch's WAL growth, the WAL SQLite keeps
  between checkpoints, and the OS; the percentage scales it on big cards);
* below the floor ingest pauses: it stops reading the socket (TCP pushes back on the
  server; nothing is lost, the cursor commits with the data), the API keeps answering;
* it resumes once the free space is back above the floor plus a margin (an eighth of
  the floor), so that one batch's worth of wobble does not flap the state;
* a commit that fails for lack of space anyway (SQLITE_FULL, ENOSPC: a merge bigger
  than the floor, another process filling the disk, a quota) is not fatal: SQLite
  rolled the transaction back, the batch is kept and retried once the free space is
  above the floor again, and either grew by RETRY_GROWTH since the failure (someone
  made room) or a delay passed that doubles with each further failure (a failed
  commit still writes to the card, and a cap of SQLite's own, max_page_count or a
  merge bigger than the disk, would fail it again).

While paused the guard reads the filesystem's free space at most every `poll_s`
seconds (statvfs: a system call, no I/O). It only decides; live ingest waits.
Free space is `f_bavail`, what an unprivileged user may still write: smalldp runs as
a system user, so ext4's root reserve is not counted as available.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

MB = 1 << 20
DEFAULT_POLL_S = 3.0  # how often a paused ingest looks at the free space again
RETRY_MAX_S = 60.0  # longest wait between retries of a commit that failed for lack of space
RETRY_GROWTH = 16 * MB  # this much more free space than at the failure: retry without waiting
HYSTERESIS_DIVISOR = 8  # resume at floor + floor/8

# SQLITE_FULL (13) in every extended form, and the shared-memory file failing to grow
# (SQLITE_IOERR_SHMSIZE), which is how a full tmpfs can show up in WAL mode.
_SQLITE_FULL = 13
_SQLITE_IOERR_SHMSIZE = 10 | (19 << 8)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class DiskSpace:
    """One statvfs reading, in bytes."""

    total: int
    free: int  # available to unprivileged users (f_bavail)


def disk_space(path: Path) -> DiskSpace:
    """The size and free space of the filesystem holding ``path``."""
    st = os.statvfs(path)
    return DiskSpace(total=st.f_blocks * st.f_frsize, free=st.f_bavail * st.f_frsize)


def floor_bytes(total: int, min_free_mb: int, min_free_percent: int) -> int:
    """The free space below which ingest pauses: the larger of the two settings."""
    return max(min_free_mb * MB, total * min_free_percent // 100)


def is_disk_full(exc: BaseException) -> bool:
    """Whether an exception (from SQLite or the OS) means "no space left"."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:  # also look through `raise ... from`
        seen.add(id(cur))
        if isinstance(cur, sqlite3.Error):
            code = getattr(cur, "sqlite_errorcode", None)
            if code is not None and (code & 0xFF == _SQLITE_FULL or code == _SQLITE_IOERR_SHMSIZE):
                return True
            if "database or disk is full" in str(cur):
                return True
        elif isinstance(cur, OSError) and cur.errno in _NO_SPACE:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def mb(n: int) -> str:
    """Bytes as whole MiB, for messages."""
    return f"{n // MB:,}"


class DiskGuard:
    """Decides, before each commit, whether live ingest may write (see the module doc).

    Used by the ingest thread only; the HTTP side sees its state through IngestMetrics.
    """

    def __init__(self, path: Path, *, min_free_mb: int, min_free_percent: int,
                 poll_s: float = DEFAULT_POLL_S, retry_max_s: float = RETRY_MAX_S,
                 space: Callable[[Path], DiskSpace] = disk_space,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.min_free_mb = min_free_mb
        self.min_free_percent = min_free_percent
        self.poll_s = poll_s
        self.retry_max_s = retry_max_s
        self._space = space
        self._clock = clock
        self.reason = ""  # why ingest is paused; "" while it is not
        self.last: DiskSpace | None = None  # the newest reading
        self.floor = 0  # bytes; recomputed from each reading's total (a resized filesystem)
        self.pauses = 0  # times ingest paused, for /metrics
        self.full_failures = 0  # commits that failed for lack of space, for /metrics
        self._failures = 0  # consecutive ones: the retry delay doubles with each
        self._retry_at = 0.0
        self._free_at_failure = 0
        self._failure = ""  # what the last failed commit said
        self._next_poll = 0.0
        self._unreadable_logged = False

    @property
    def paused(self) -> bool:
        """Whether ingest should not commit now."""
        return bool(self.reason)

    def resume_at(self) -> int:
        """Free bytes needed to resume: the floor plus a margin against flapping."""
        return self.floor + self.floor // HYSTERESIS_DIVISOR

    def read(self) -> DiskSpace | None:
        """Read the free space now (None when the filesystem cannot be read)."""
        try:
            space = self._space(self.path)
        except OSError as exc:
            # Not a reason to stop: a commit that really cannot write fails on its own.
            if not self._unreadable_logged:
                self._unreadable_logged = True
                log.warning("cannot read the free space of %s (%s); the disk guard only reacts "
                            "to failed writes until it can", self.path, exc)
            return None
        self.last = space
        self.floor = floor_bytes(space.total, self.min_free_mb, self.min_free_percent)
        return space

    def check(self) -> bool:
        """True when a commit may go ahead now; otherwise ``reason`` says why not.

        While paused, the filesystem is read at most every ``poll_s`` seconds."""
        now = self._clock()
        if self.reason and now < self._next_poll:
            return False
        space = self.read()
        if self.reason:
            self._next_poll = now + self.poll_s
            if now < self._retry_at:  # look again when the retry is due, not a poll later
                self._next_poll = min(self._next_poll, self._retry_at)
            if space is not None and space.free < self.resume_at():
                self.reason = self._low_reason(space, waiting=True)
                return False
            grew = space is not None and space.free >= self._free_at_failure + RETRY_GROWTH
            if now < self._retry_at and not grew:
                self.reason = self._full_reason(space, self._retry_at - now)
                return False
            self._retry_at = 0.0
            log.info("ingest resumes (%s MB free)", "?" if space is None else mb(space.free))
            self.reason = ""
            return True
        if space is not None and space.free < self.floor:
            self._pause(self._low_reason(space, waiting=False), now)
            log.warning("ingest paused: %s (it resumes by itself above %s MB)", self.reason,
                        mb(self.resume_at()))
            return False
        return True

    def commit_failed(self, exc: BaseException) -> None:
        """A commit failed for lack of space (``is_disk_full``): pause, retry later."""
        now = self._clock()
        self._failures += 1
        self.full_failures += 1
        delay = min(self.retry_max_s, self.poll_s * 2 ** (self._failures - 1))
        self._retry_at = now + delay
        self._failure = str(exc)[:120]
        space = self.read()
        self._free_at_failure = space.free if space is not None else 0
        self._pause(self._full_reason(space, delay), now)
        if self._failures > 1:
            log.warning("commit failed again for lack of space; retrying in %.0f s", delay)
        else:
            log.warning("ingest paused: %s", self.reason)

    def committed(self) -> None:
        """A commit went through: the next lack of space starts the retry delay afresh."""
        self._failures = 0

    # ------------------------------------------------------------ reasons

    def _pause(self, reason: str, now: float) -> None:
        if not self.reason:
            self.pauses += 1
        self.reason = reason
        self._next_poll = min(now + self.poll_s, max(now, self._retry_at))

    def _low_reason(self, space: DiskSpace, *, waiting: bool) -> str:
        text = f"disk space: {mb(space.free)} MB free, below the {mb(self.floor)} MB floor"
        if waiting and space.free >= self.floor:
            text = (f"disk space: {mb(space.free)} MB free, waiting for {mb(self.resume_at())} MB "
                    f"(the {mb(self.floor)} MB floor and a margin)")
        return text

    def _full_reason(self, space: DiskSpace | None, retry_in: float) -> str:
        free = "free space unknown" if space is None else f"{mb(space.free)} MB free"
        why = f" ({self._failure})" if self._failure else ""
        return f"disk full: a commit failed for lack of space{why}, {free}; retrying in {retry_in:.0f} s"
