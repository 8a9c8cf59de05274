"""Both ways a timeline reads a segment (store/timeline.py: by time, or per author) give
the model's answers: the timeline and paging tests of test_dataplane, run with each forced."""

from __future__ import annotations

from typing import Iterator

import pytest

import smalldp.store.timeline as timeline
from test_dataplane import scenarios  # noqa: F401  - the fixture the tests below use
from test_dataplane import test_get_author_feed, test_get_timeline, test_paging_while_records_land  # noqa: F401


@pytest.fixture(autouse=True, params=[0, 10**9], ids=["by-time", "by-author"])
def segment_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(timeline, "DENSE_FACTOR", request.param)
    yield


@pytest.fixture(autouse=True, params=[4000, 1], ids=["unbounded", "one-segment-per-page"])
def segments_per_page(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """With the per-page work bound at one segment, pages come back short with a cursor
    below the bucket read: walking them must still give the model's whole timeline."""
    import smalldp.store.dataplane.feeds as feeds
    monkeypatch.setattr(feeds, "TIMELINE_SEGMENTS_MAX", request.param)
    yield
