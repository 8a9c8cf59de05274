"""The purge sweep (store/purge.py): deleted accounts' rows leave the forward index a few
rows per batch, and exactly the right ones.

A real Writer on a real SQLite file; the expected rows come from a plain model: every
record as (account, rkey) -> (rev, deleted or not), and per deleted account the rev of
its deletion.  The checks after every batch:
  * rows of accounts never deleted, and rows written after a deletion, are never removed;
  * an account leaves the queue only when none of its rows up to the deletion's rev is left;
  * every queued account leaves the queue within one lap of the sweep (plus a batch).
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from smalldp.events import decode_event
from smalldp.store.check import check_store
from smalldp.store.writer import Writer
from smalldp.tid import int_to_tid, tid_to_int

from helpers_server import BASE_US, did, iso, tid

POST, LIKE = "app.bsky.feed.post", "app.bsky.feed.like"


class History:
    """Builds events and keeps what the store should hold."""

    def __init__(self, seed: int, accounts: int) -> None:
        self.rng = random.Random(seed)
        self.dids = [did(f"acct{i}") for i in range(accounts)]
        self.clock = 0
        self.seq = 31_000_000_000
        self.records: dict[tuple[str, str], int] = {}  # (did, rkey) -> rev of the live record
        self.deleted: dict[str, int] = {}  # did -> newest rev seen when it was deleted
        self.newest: dict[str, int] = {}  # did -> newest rev seen

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def create(self, who: str) -> str:
        t = self.tick()
        rkey, rev = tid(t), tid(t)
        collection = self.rng.choice([POST, LIKE])
        record = ({"text": "x", "createdAt": iso(BASE_US)} if collection == POST else
                  {"subject": {"uri": f"at://{self.rng.choice(self.dids)}/{POST}/{tid(1)}", "cid": "bafyreib"},
                   "createdAt": iso(BASE_US)})
        self.records[(who, collection + "/" + rkey)] = rev_of(t)
        self.newest[who] = rev_of(t)
        return json.dumps({"did": who, "time_us": BASE_US + t, "kind": "commit", "commit": {
            "rev": rev, "operation": "create", "collection": collection, "rkey": rkey, "record": record}})

    def account(self, who: str, active: bool, status: str | None) -> str:
        t = self.tick()
        self.seq += 1
        if status == "deleted":
            self.deleted[who] = self.newest.get(who, 0)
        body: dict = {"did": who, "active": active, "seq": self.seq}
        if status is not None:
            body["status"] = status
        return json.dumps({"did": who, "time_us": BASE_US + t, "kind": "account", "account": body})


def stored(path: Path) -> dict[tuple[str, str], int]:
    """(did, collection/rkey) -> rev of every forward row (rev is stored relative to sk)."""
    conn = sqlite3.connect(path)
    out = {(who, f"{nsid}/{int_to_tid(sk)}"): rev for who, nsid, sk, rev in conn.execute(
        "SELECT a.did, c.nsid, f.sk, f.rev + f.sk FROM fwd f JOIN actor a USING (aid) JOIN coll c ON c.cid = f.coll")}
    conn.close()
    return out


def rev_of(t: int) -> int:
    value = tid_to_int(tid(t))
    assert value is not None
    return value


@pytest.mark.parametrize("seed", range(6))
def test_sweep_removes_exactly_the_deleted_rows_within_a_lap(tmp_path: Path, seed: int) -> None:
    h = History(seed, accounts=12)
    # More rows per batch than a batch can add (at most 6 creates): as in production, where a
    # batch sweeps 8 rows per event and an event adds at most one, the sweep outruns the
    # index's growth, so a lap ends.
    rows_per_batch = [7, 8, 12][seed % 3]
    path = tmp_path / "db.sqlite"
    writer = Writer(path, purge_rows=rows_per_batch)
    lap_batches: dict[str, int] = {}  # deleted account -> batches since it was queued
    saw_queue = 0
    for _ in range(60):
        lines = [h.create(h.rng.choice(h.dids)) for _ in range(h.rng.randint(1, 6))]
        if h.rng.random() < 0.3:
            who = h.rng.choice(h.dids)
            lines.append(h.account(who, False, "deleted"))
            lap_batches[who] = 0
        writer.apply([decode_event(line) for line in lines], cursor=BASE_US + h.clock)
        saw_queue += len(writer.purges)
        have = stored(path)
        queued = {writer.conn.execute("SELECT did FROM actor WHERE aid=?", (aid,)).fetchone()[0]
                  for aid in writer.purges.queue}
        for key, rev in h.records.items():
            who = key[0]
            gone = who in h.deleted and rev <= h.deleted[who]
            if not gone:
                assert have.get(key) == rev, (key, "a row that must stay is missing")
            elif who not in queued:
                assert key not in have, (key, "left the queue with a row still there")
        assert set(have) <= set(h.records)
        rows = len(have)
        for who in list(lap_batches):
            if who in queued:
                lap_batches[who] += 1
                # A lap: the rows, at what the sweep gains on the growth per batch, plus the
                # batch that wraps round.
                assert lap_batches[who] <= rows // (rows_per_batch - 6) + 3, (who, "sweep did not finish its lap")
            else:
                del lap_batches[who]
    assert saw_queue > 0  # sweeps really were under way across batches
    queued = set(writer.purges.queue)
    writer.close()  # leaves the sweep where it stands: it goes on when the store is next opened
    writer = Writer(path, purge_rows=rows_per_batch)
    assert set(writer.purges.queue) == queued
    assert writer.finish_purges() == len(queued)  # what `smalldp compact` does first
    assert not writer.purges
    writer.close()
    have = stored(path)
    assert not any(who in h.deleted and rev <= h.deleted[who] for (who, _), rev in have.items())
    assert check_store(path).ok


def test_the_sweep_resumes_where_its_last_commit_left_it(tmp_path: Path) -> None:
    h = History(7, accounts=4)
    path = tmp_path / "db.sqlite"
    writer = Writer(path, purge_rows=1)
    writer.apply([decode_event(h.create(who)) for who in h.dids * 5], cursor=BASE_US + h.clock)
    victim = h.dids[0]
    writer.apply([decode_event(h.account(victim, False, "deleted"))], cursor=BASE_US + h.clock)
    writer.apply([], cursor=BASE_US + h.clock)
    place = (writer.purges.lap, writer.purges.at, dict(writer.purges.queue))
    assert place[2]
    writer.conn.close()  # a crash: no close(), nothing finished
    writer = Writer(path, purge_rows=1)
    assert (writer.purges.lap, writer.purges.at, dict(writer.purges.queue)) == place
    for _ in range(40):
        if not writer.purges:
            break
        writer.apply([], cursor=BASE_US + h.clock)
    assert not writer.purges
    assert {who for who, _ in stored(path)} == set(h.dids[1:])
    writer.close()


def test_a_newer_deletion_of_a_queued_account_sweeps_what_it_wrote_meanwhile(tmp_path: Path) -> None:
    """Deleted, back, writing, deleted again before the first sweep ended: the second
    deletion's rev covers the rows written in between, and they go too."""
    h = History(8, accounts=3)
    path = tmp_path / "db.sqlite"
    writer = Writer(path, purge_rows=1)
    who = h.dids[0]
    writer.apply([decode_event(h.create(d)) for d in h.dids * 4], cursor=BASE_US + h.clock)
    writer.apply([decode_event(h.account(who, False, "deleted"))], cursor=BASE_US + h.clock)
    # Back (purged at once: an active account's old rows must not show), writes, deleted again.
    writer.apply([decode_event(h.account(who, True, None))], cursor=BASE_US + h.clock)
    assert not [k for k in stored(path) if k[0] == who]
    writer.apply([decode_event(h.create(who)) for _ in range(3)], cursor=BASE_US + h.clock)
    assert len([k for k in stored(path) if k[0] == who]) == 3
    writer.apply([decode_event(h.account(who, False, "deleted"))], cursor=BASE_US + h.clock)
    for _ in range(40):
        if not writer.purges:
            break
        writer.apply([], cursor=BASE_US + h.clock)
    assert not writer.purges
    assert not [k for k in stored(path) if k[0] == who]
    assert len(stored(path)) == 8
    writer.close()
    assert check_store(path).ok
