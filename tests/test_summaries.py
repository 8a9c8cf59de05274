"""Cached per-run summaries of big keys (smalldp.store.summaries) must never change an answer.

Every DataPlane differential test runs again here with every key treated as big, so
counts and intersections come from summaries; and a direct test checks that a delete
rewriting a chunk of an old run, a deactivation and a merge are all seen at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

import smalldp.store.dataplane.base as dataplane_base
from smalldp.events import decode_event
from smalldp.store.dataplane import DataPlaneReader
from smalldp.store.summaries import SummaryCache
from smalldp.store.writer import Writer
from smalldp.tid import int_to_tid, tid_from_time

from test_dataplane import *  # noqa: F401,F403  - the same differential tests, run again below
from test_dataplane import scenarios  # noqa: F401  - their fixture


@pytest.fixture(autouse=True)
def every_key_is_big(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Patched where it is read (DataPlaneBase._note_size), not in smalldp.store.summaries.
    monkeypatch.setattr(dataplane_base, "BIG_KEY_CHUNKS", 1)
    yield


BASE = 1_700_000_000_000_000
POST_URI = "at://did:plc:" + "p" * 24 + "/app.bsky.feed.post/3ke6kg3wk2222"


def did(i: int) -> str:
    return f"did:plc:{i:024d}"


def like(i: int, k: int, op: str = "create", rev_k: int | None = None) -> dict:
    rkey = int_to_tid(tid_from_time(BASE + k, 0))
    rev = int_to_tid(tid_from_time(BASE + (rev_k if rev_k is not None else k), 0))
    commit: dict = {"rev": rev, "operation": op, "collection": "app.bsky.feed.like", "rkey": rkey}
    if op == "create":
        commit["record"] = {"$type": "app.bsky.feed.like", "subject": {"uri": POST_URI, "cid": "bafyx"},
                            "createdAt": "2024-01-01T00:00:00.000Z"}
        commit["cid"] = "bafy1"
    return {"did": did(i), "time_us": BASE + k, "kind": "commit", "commit": commit}


def apply(writer: Writer, events: list[dict]) -> None:
    writer.apply([decode_event(json.dumps(e)) for e in events])


def test_summaries_follow_deletes_deactivations_and_merges(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    # Chunks of 2 entries: 40 likes make a key of 20 chunks in one run.
    writer = Writer(path, chunk_entries=2, fanout=4)
    apply(writer, [like(i, 10 * i) for i in range(1, 41)])
    cache = SummaryCache()
    # seen big, then summarized, then answered from the summary: each by a new reader, since
    # one reader answers a repeated question within a snapshot from its snapshot memo
    for _ in range(3):
        reader = DataPlaneReader(path, summaries=cache)
        assert reader.interaction_counts([POST_URI])["likes"] == [40]
    assert cache.hits >= 1
    # A delete rewrites a chunk of that run: the run's gen moves, the summary is not used.
    apply(writer, [like(7, 70, "delete", rev_k=1000), like(8, 80, "delete", rev_k=1001)])
    assert reader.interaction_counts([POST_URI])["likes"] == [38]
    # A deactivation rewrites nothing: it is subtracted at read time.
    apply(writer, [{"did": did(9), "time_us": BASE + 2000, "kind": "account",
                    "account": {"did": did(9), "active": False, "status": "deactivated", "seq": 5}}])
    assert reader.interaction_counts([POST_URI])["likes"] == [37]
    # New runs, then a full merge into a new run: the answer holds across all of them.
    for batch in range(4):
        apply(writer, [like(100 + 10 * batch + j, 3000 + 10 * batch + j) for j in range(10)])
    assert reader.interaction_counts([POST_URI])["likes"] == [77]
    writer.compact(full=True)
    assert reader.interaction_counts([POST_URI])["likes"] == [77]
    apply(writer, [{"did": did(9), "time_us": BASE + 9000, "kind": "account",
                    "account": {"did": did(9), "active": True, "seq": 6}}])
    assert reader.interaction_counts([POST_URI])["likes"] == [78]
    reader.close()
    writer.close()
