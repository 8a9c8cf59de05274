"""The compaction policy (store/compaction.py) on its own: levels and merges in, a plan out.

Every expected plan is written by hand; no SQLite, no index.
"""

from __future__ import annotations

from smalldp.store.compaction import CompactionConfig, MergeInProgress, Plan, choose

FANOUT3 = CompactionConfig(fanout=3)


def test_nothing_due() -> None:
    assert choose({}, [], FANOUT3) is None
    assert choose({0: []}, [], FANOUT3) is None
    assert choose({0: [1, 2], 1: [3, 4], 2: [5]}, [], FANOUT3) is None


def test_a_full_level_is_merged_a_level_up() -> None:
    assert choose({0: [4, 5, 6]}, [], FANOUT3) == Plan((4, 5, 6), 1)
    assert choose({0: [1], 2: [7, 8, 9]}, [], FANOUT3) == Plan((7, 8, 9), 3)


def test_the_lowest_full_level_first() -> None:
    levels = {2: [1, 2, 3], 1: [10, 11, 12], 0: [20, 21]}
    assert choose(levels, [], FANOUT3) == Plan((10, 11, 12), 2)
    levels = {2: [1, 2, 3], 1: [10, 11, 12], 0: [20, 21, 22]}
    assert choose(levels, [], FANOUT3) == Plan((20, 21, 22), 1)


def test_the_oldest_fanout_runs_of_a_level() -> None:
    assert choose({0: [3, 4, 5, 6, 7]}, [], FANOUT3) == Plan((3, 4, 5), 1)
    assert choose({0: [1, 2, 3, 4, 5, 6, 7, 8, 9]}, [], CompactionConfig(fanout=8)) \
        == Plan((1, 2, 3, 4, 5, 6, 7, 8), 1)
    assert choose({1: [2, 9]}, [], CompactionConfig(fanout=2)) == Plan((2, 9), 2)


def test_default_fanout_is_8() -> None:
    assert choose({0: list(range(1, 8))}, [], CompactionConfig()) is None
    assert choose({0: list(range(1, 9))}, [], CompactionConfig()) == Plan(tuple(range(1, 9)), 1)


def test_a_merge_out_of_a_full_level_is_continued_not_begun_again() -> None:
    # Runs 1-3 are being merged into 10 (level 1); 4-6 filled level 0 meanwhile.
    merging = [MergeInProgress(output=10, level=1, inputs=(1, 2, 3))]
    assert choose({0: [4, 5, 6]}, merging, FANOUT3) == Plan((1, 2, 3), 1, 10)
    # Level 1 full too, with nothing under way out of it: level 0 still comes first.
    assert choose({0: [4, 5, 6], 1: [7, 8, 9]}, merging, FANOUT3) == Plan((1, 2, 3), 1, 10)


def test_a_full_level_above_a_merge_under_way_is_begun() -> None:
    # Level 0 is not full; level 1 is, and nothing is merging out of it.
    merging = [MergeInProgress(output=10, level=1, inputs=(1, 2, 3))]
    assert choose({0: [11], 1: [7, 8, 9]}, merging, FANOUT3) == Plan((7, 8, 9), 2)
    # With a merge out of level 1 under way as well, that one is continued.
    merging.append(MergeInProgress(output=12, level=2, inputs=(4, 5, 6)))
    assert choose({0: [11], 1: [7, 8, 9]}, merging, FANOUT3) == Plan((4, 5, 6), 2, 12)


def test_merges_under_way_continued_lowest_level_first() -> None:
    merging = [MergeInProgress(output=30, level=3, inputs=(20, 21, 22)),
               MergeInProgress(output=12, level=1, inputs=(4, 5, 6)),
               MergeInProgress(output=25, level=2, inputs=(7, 8, 9))]
    assert choose({0: [31]}, merging, FANOUT3) == Plan((4, 5, 6), 1, 12)
    assert choose({}, merging[:1], FANOUT3) == Plan((20, 21, 22), 3, 30)
    assert choose({0: [31, 32]}, [merging[0], merging[2]], FANOUT3) == Plan((7, 8, 9), 2, 25)


def test_full_finishes_merges_under_way_first() -> None:
    merging = [MergeInProgress(output=30, level=3, inputs=(20, 21, 22)),
               MergeInProgress(output=12, level=1, inputs=(4, 5, 6))]
    levels = {0: [31, 32, 33], 1: [13]}
    assert choose(levels, merging, FANOUT3, full=True) == Plan((4, 5, 6), 1, 12)
    assert choose(levels, merging[:1], FANOUT3, full=True) == Plan((20, 21, 22), 3, 30)


def test_full_merges_every_run_into_one_a_level_above_the_highest() -> None:
    levels = {0: [9], 2: [3], 1: [6, 5]}
    assert choose(levels, [], FANOUT3, full=True) == Plan((3, 5, 6, 9), 3)
    # Not limited by the fanout, and only levels holding runs count for "highest".
    levels = {0: [1, 2, 3, 4, 5], 4: []}
    assert choose(levels, [], FANOUT3, full=True) == Plan((1, 2, 3, 4, 5), 1)


def test_full_with_one_run_or_none_is_nothing() -> None:
    assert choose({}, [], FANOUT3, full=True) is None
    assert choose({0: []}, [], FANOUT3, full=True) is None
    assert choose({5: [17]}, [], FANOUT3, full=True) is None
    assert choose({0: [], 2: [17]}, [], FANOUT3, full=True) is None
