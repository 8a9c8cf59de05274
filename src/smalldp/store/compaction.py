"""What to merge next in the backlink index: a pure policy, no SQLite.

The backlink index is an LSM of runs (store/backlinks.py).  Each batch writes a run at
level 0; once ``fanout`` runs share a level they are merged into one run a level up
(tiered compaction).  A merge runs in bounded slices, each its own transaction, so
a merge of any size never stops ingest or queries for long; a merge in progress has
its output run and its inputs, and every key sits in exactly one of them.

``choose`` looks only at levels and merges in progress and says what the next slice
works on, the way fjall's ``CompactionStrategy::choose`` is kept apart from the
worker that executes it.  The executor is ``SqliteBacklinks.merge_step``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence


@dataclass(frozen=True)
class CompactionConfig:
    """The policy's settings."""

    fanout: int = 8  # runs of one level merged into one run a level up


@dataclass(frozen=True)
class MergeInProgress:
    """A merge that has begun: its output run (at ``level``) and the runs it empties."""

    output: int
    level: int
    inputs: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """The next slice's work: continue the merge into ``output``, or, with ``output``
    None, begin a merge of ``inputs`` into a new run at ``level``."""

    inputs: tuple[int, ...]
    level: int
    output: int | None = None


def choose(levels: Mapping[int, Sequence[int]], merging: Sequence[MergeInProgress],
           config: CompactionConfig, *, full: bool = False) -> Plan | None:
    """The next merge slice to run, or None when nothing is due.

    ``levels`` maps a level to its runs that take part in no merge, oldest first.
    The lowest full level comes first (small merges are quick and keep the number of
    runs a query reads low); if a merge out of that level is already under way, it
    is continued rather than a second one begun.  With nothing full, merges under way
    are continued, lowest level first.  ``full`` (`smalldp compact`): finish merges
    under way, then merge every run into one.
    """
    by_level = sorted(merging, key=lambda m: (m.level, m.output))
    if full:
        if by_level:
            return _continue(by_level[0])
        runs = sorted(run for level_runs in levels.values() for run in level_runs)
        if len(runs) < 2:
            return None
        return Plan(tuple(runs), max(level for level, rs in levels.items() if rs) + 1)
    for level in sorted(levels):
        free = levels[level]
        if len(free) < config.fanout:
            continue
        under_way = [m for m in by_level if m.level == level + 1]
        if under_way:
            return _continue(under_way[0])
        return Plan(tuple(sorted(free)[:config.fanout]), level + 1)
    if by_level:
        return _continue(by_level[0])
    return None


def _continue(merge: MergeInProgress) -> Plan:
    return Plan(merge.inputs, merge.level, merge.output)
