"""`smalldp import`: JSONL captures (plain or .zst) into the store, batch by batch.

Each batch commits with the file position it reached, so an import that is killed
resumes where its last commit ended; events replayed from before that point would
change nothing anyway (the store ignores what it has already applied).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TextIO

import orjson

from smalldp.captures import open_capture
from smalldp.events import MalformedEvent, Operation, decode_event
from smalldp.store.writer import Writer

log = logging.getLogger(__name__)
LOGGED_BAD_LINES = 100  # per file; after that only every 1000th is logged


@dataclass
class ImportSummary:
    """Totals of one import run."""

    events: int = 0
    skipped: int = 0
    ignored: int = 0  # well-formed events of kinds smalldp has no use for
    links_added: int = 0
    links_removed: int = 0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"events": self.events, "skipped": self.skipped, "ignored": self.ignored,
                "links_added": self.links_added, "links_removed": self.links_removed,
                "seconds": round(self.seconds, 3), "events_per_s": round(self.events_per_s, 1)}


def _position_key(path: Path) -> str:
    return f"import:{path.resolve()}"


class Progress:
    """A one-line progress display on a terminal; silent otherwise."""

    def __init__(self, stream: TextIO = sys.stderr, interval: float = 0.5) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.interval = interval
        self._last = 0.0

    def update(self, name: str, done_bytes: int, total_bytes: int, events: int, started: float,
               force: bool = False) -> None:
        """Redraw the line (at most every ``interval`` seconds unless ``force``)."""
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.interval):
            return
        self._last = now
        rate = events / max(now - started, 1e-9)
        where = f"{100.0 * done_bytes / total_bytes:5.1f}%" if total_bytes else f"{done_bytes / 1e6:,.0f} MB"
        self.stream.write(f"\r{name}: {where}  {events:,} events  {rate:,.0f} events/s   ")
        self.stream.flush()

    def done(self) -> None:
        """End the progress line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def import_files(writer: Writer, paths: list[Path], *, batch_events: int = 20_000,
                 restart: bool = False, progress: Progress | None = None,
                 on_batch: Callable[[ImportSummary], None] | None = None) -> ImportSummary:
    """Import capture files in order; returns the totals."""
    summary = ImportSummary()
    started = time.monotonic()
    progress = progress or Progress()
    cursor = [0]  # newest time_us of this run, across files, so the cursor never steps back
    for path in paths:
        _import_file(writer, path, batch_events, restart, progress, summary, started, on_batch, cursor)
    summary.seconds = time.monotonic() - started
    return summary


def _import_file(writer: Writer, path: Path, batch_events: int, restart: bool, progress: Progress,
                 summary: ImportSummary, started: float,
                 on_batch: Callable[[ImportSummary], None] | None, newest: list[int]) -> None:
    stat = path.stat()
    key = _position_key(path)
    resume = 0
    if not restart:
        saved = writer.meta(key)
        if saved:
            state = orjson.loads(saved)  # type: ignore[arg-type]
            if state.get("size") == stat.st_size and state.get("mtime_ns") == stat.st_mtime_ns:
                resume = int(state["offset"])
                if resume:
                    log.info("%s: resuming after byte %d (line %d)", path, resume, state.get("line", 0))
    bad_lines = 0
    with open_capture(path) as stream:
        offset = 0
        line_no = 0
        if resume:
            # Skip what committed batches already covered (a .zst stream can't seek).
            while offset < resume:
                line = stream.readline()
                if not line:
                    break
                offset += len(line)
                line_no += 1
        ops: list[Operation] = []
        pending = 0  # lines read since the last commit
        for line in stream:
            offset += len(line)
            line_no += 1
            pending += 1
            if line.strip():
                try:
                    op = decode_event(line)
                except MalformedEvent as exc:
                    summary.skipped += 1
                    bad_lines += 1
                    if bad_lines <= LOGGED_BAD_LINES or bad_lines % 1000 == 0:
                        log.warning("%s line %d: skipped malformed event: %s", path, line_no, exc)
                    op = None
                else:
                    if op is None:
                        summary.ignored += 1
                if op is not None:
                    ops.append(op)
                    if op.time_us > newest[0]:
                        newest[0] = op.time_us
            if pending >= batch_events:
                _commit(writer, ops, newest[0] or None, key, stat, offset, line_no, summary)
                ops, pending = [], 0
                if on_batch is not None:
                    on_batch(summary)
                progress.update(path.name, offset, 0 if path.suffix == ".zst" else stat.st_size,
                                summary.events, started)
        _commit(writer, ops, newest[0] or None, key, stat, offset, line_no, summary)
        if on_batch is not None:
            on_batch(summary)
    progress.update(path.name, stat.st_size, stat.st_size, summary.events, started, force=True)
    progress.done()
    if bad_lines:
        log.warning("%s: %d malformed events skipped", path, bad_lines)


def _commit(writer: Writer, ops: list[Operation], cursor: int | None, key: str, stat: os.stat_result,
            offset: int, line_no: int, summary: ImportSummary) -> None:
    position = orjson.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                             "offset": offset, "line": line_no}).decode()
    stats = writer.apply(ops, cursor=cursor, meta={key: position})
    summary.events += len(ops)
    summary.links_added += stats.links_added
    summary.links_removed += stats.links_removed


def iter_lines(path: Path) -> Iterator[bytes]:
    """Every line of a capture (used by tools and tests)."""
    with open_capture(path) as stream:
        yield from stream
