"""getManyToMany over HTTP against the brute-force model: every page walk, every filter.

The random histories are test_differential's (duplicates, replays, updates, deletes,
account deactivation and deletion). Each example is applied to the model and to a real
store in a few batches; a real server on 127.0.0.1 then answers getManyToMany for every
target, page size and a spread of filters, and each walk of its pages must give exactly
the model's items: records newest first by rkey time, a record's other links together
and in the record's order (so a cursor may stop inside a record), nothing twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smalldp.events import decode_event
from smalldp.store.writer import Writer

from helpers_server import GET_MANY, ServerThread
from model import Model, RecordId
from test_differential import DIDS, POSTS, REVS, RKEYS, SPELLINGS, URLS, dids, events, times

SUBJECTS = [POSTS[0], POSTS[4], URLS[0], DIDS[4]]
TARGETS = SUBJECTS + [DIDS[0], URLS[2]]  # queried: the subjects and some that are only other links

pytestmark = pytest.mark.timeout(600)

THING = "com.example.thing"
OTHER_PATHS = ["items[com.example.item].ref", "items[]", "subject.uri"]
UNSPELL = {v: k for k, v in SPELLINGS.items()}  # a target -> another spelling of it


@st.composite
def things(draw: st.DrawFn) -> dict[str, Any]:
    """A put of a com.example.thing: one of few subjects, up to four other links."""
    items = draw(st.lists(st.one_of(
        st.builds(lambda d: {"$type": "com.example.item", "ref": d}, dids),
        st.sampled_from(URLS + list(SPELLINGS))), max_size=4))
    record = {"$type": THING, "subject": {"uri": draw(st.sampled_from(SUBJECTS + [UNSPELL[URLS[0]]]))},
              "items": items}
    return {"did": draw(dids), "time_us": draw(times), "kind": "commit", "commit": {
        "rev": draw(st.sampled_from(REVS)), "operation": draw(st.sampled_from(["create", "update"])),
        "collection": THING, "rkey": draw(st.sampled_from(RKEYS)), "record": record, "cid": "bafything"}}


@st.composite
def thing_deletes(draw: st.DrawFn) -> dict[str, Any]:
    return {"did": draw(dids), "time_us": draw(times), "kind": "commit", "commit": {
        "rev": draw(st.sampled_from(REVS)), "operation": "delete", "collection": THING,
        "rkey": draw(st.sampled_from(RKEYS))}}


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[int]]:
    """Mostly things (so pages are full and records have several other links), some
    deletes of them, and test_differential's events (account events among them)."""
    stream = draw(st.lists(st.one_of(things(), things(), things(), thing_deletes(), events()),
                           min_size=10, max_size=60))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=3))))
    return stream, cuts


def walk(server: ServerThread, params: list[tuple[str, str]], limit: int) -> list[tuple[RecordId, str]]:
    """Every page of one query, concatenated: [(linking record, other subject)]."""
    out: list[tuple[RecordId, str]] = []
    cursor = None
    for _ in range(500):
        query = [*params, ("limit", str(limit))] + ([] if cursor is None else [("cursor", cursor)])
        reply = server.get(GET_MANY, query)
        assert reply.status == 200, (query, reply.status, reply.body[:300])
        body: dict[str, Any] = reply.json
        assert set(body) == {"items", "cursor"}
        assert len(body["items"]) <= limit
        for item in body["items"]:
            record = item["linkRecord"]
            out.append(((record["did"], record["collection"], record["rkey"]), item["otherSubject"]))
        cursor = body["cursor"]
        if cursor is None:
            return out
        assert len(body["items"]) == limit  # a cursor only after a full page
    raise AssertionError("no last page")


def assert_walk_matches(got: list[tuple[RecordId, str]], want: list[tuple[int, RecordId, list[str]]],
                        context: object) -> None:
    """``got`` is the model's items: the records in newest-first order (ties in any
    order), each once, with its other subjects together and in the record's order."""
    grouped: list[tuple[RecordId, list[str]]] = []
    for rid, other in got:
        if grouped and grouped[-1][0] == rid:
            grouped[-1][1].append(other)
        else:
            grouped.append((rid, [other]))
    by_rid = {rid: (sk, targets) for sk, rid, targets in want}
    assert len({rid for rid, _ in grouped}) == len(grouped), ("a record came back in two places", context, got)
    assert {rid for rid, _ in grouped} == set(by_rid), (context, got, want)
    for rid, others in grouped:
        assert others == by_rid[rid][1], (context, rid, others, by_rid[rid][1])
    keys = [by_rid[rid][0] for rid, _ in grouped]
    assert keys == sorted(keys, reverse=True), (context, got)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(history=histories(), limit=st.integers(1, 3), data=st.data())
def test_get_many_to_many_equals_model(tmp_path_factory: pytest.TempPathFactory, history: Any, limit: int,
                                       data: st.DataObject) -> None:
    stream, cuts = history
    path = Path(tmp_path_factory.mktemp("m2m")) / "db.sqlite"
    model = Model()
    writer = Writer(path, fanout=2, chunk_entries=2)
    ops = [decode_event(json.dumps(e)) for e in stream]
    bounds = [0, *cuts, len(ops)]
    for start, end in zip(bounds, bounds[1:]):
        for op in ops[start:end]:
            model.apply(op)
        writer.apply(ops[start:end], cursor=end)
    try:
        with ServerThread(path) as server:
            for subject in TARGETS:
                for other_path in OTHER_PATHS:
                    base = [("subject", subject), ("source", f"{THING}:subject.uri"), ("pathToOther", other_path)]
                    want = model.many_to_many_items(subject, THING, ".subject.uri", "." + other_path)
                    assert_walk_matches(walk(server, base, limit), want, (subject, other_path))
                    if subject in UNSPELL:  # another spelling of the subject: the same target
                        respelled = [("subject", UNSPELL[subject]), *base[1:]]
                        assert_walk_matches(walk(server, respelled, limit), want, (UNSPELL[subject], other_path))
            # filters: accounts (an unknown value is a filter nothing passes, an empty one none)
            # and other subjects (any spelling), on a few drawn queries
            for _ in range(6):
                subject = data.draw(st.sampled_from(TARGETS), label="subject")
                other_path = data.draw(st.sampled_from(OTHER_PATHS), label="pathToOther")
                dids = data.draw(st.lists(st.sampled_from([*DIDS, "foo", ""]), max_size=3), label="linkDid")
                others = data.draw(st.lists(st.sampled_from([*TARGETS, *SPELLINGS, "nope"]), max_size=3),
                                   label="otherSubject")
                params = [("subject", subject), ("source", f"{THING}:subject.uri"), ("pathToOther", other_path),
                          *[("linkDid", d) for d in dids], *[("otherSubject", o) for o in others]]
                kept_dids = {d for d in dids if d} or None
                kept_others = {SPELLINGS.get(o, o) for o in others} or None
                want = model.many_to_many_items(subject, THING, ".subject.uri", "." + other_path,
                                                dids=kept_dids, others=kept_others)
                assert_walk_matches(walk(server, params, limit), want, params)
    finally:
        writer.close()
