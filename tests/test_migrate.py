"""Stores written by earlier releases (schema 2 to 5) are upgraded in place, never refused.

An earlier layout is made by taking a current store back to it: dropping the purge table's
`reconcile` and the backfill table that schema 6 added and writing version 5 (the release
before backfill); dropping also the purge
table's `lap` and `start` that schema 5 added and writing version 4 (the release before
the purge sweep); dropping also the merge table schema 4 added and writing version 3 (the
release before merges in slices); dropping also the columns schema 3 added and writing
version 2 (the release before issue 10: its actor table had `acct_seq, id_seq,
purged_rev` and nothing after them).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from smalldp.config import load_settings
from smalldp.events import decode_event
from smalldp.service import Service
from smalldp.store.check import check_store
from smalldp.store.dataplane import DataPlaneReader
from smalldp.store.schema import SCHEMA_VERSION, db_path, upgrade_in_place
from smalldp.store.writer import Writer
from smalldp.systemd import Notifier
from smalldp.tid import tid_to_int

from helpers_server import BASE_US, did, iso, tid
from test_live import free_port

A, B = did("alpha"), did("beta")


def event(repo: str, kind: str, body: dict, time_us: int) -> str:
    return json.dumps({"did": repo, "time_us": time_us, "kind": kind, kind: {"did": repo, **body}})


def tid_int(i: int) -> int:
    value = tid_to_int(tid(i))
    assert value is not None
    return value


def back_to_schema_5(conn: sqlite3.Connection) -> None:
    """Take the store back to the layout before schema 6: no purge.reconcile, no backfill
    table (nor schema 8's runkeys)."""
    conn.execute("DROP TABLE runkeys")
    conn.execute("ALTER TABLE purge DROP COLUMN reconcile")
    conn.execute("DROP TABLE backfill")
    assert [row[1] for row in conn.execute("PRAGMA table_info(purge)")] == ["aid", "rev", "lap", "start"]


def back_to_schema_4(conn: sqlite3.Connection) -> None:
    """Take the purge table back to the layout before schema 5: (aid, rev)."""
    back_to_schema_5(conn)
    conn.execute("ALTER TABLE purge DROP COLUMN lap")
    conn.execute("ALTER TABLE purge DROP COLUMN start")
    assert [row[1] for row in conn.execute("PRAGMA table_info(purge)")] == ["aid", "rev"]


def old_store(data_dir: Path) -> Path:
    """A schema-2 store: A deactivated at seq 31e9, B named old.example.com."""
    path = db_path(data_dir)
    writer = Writer(path)
    writer.apply([decode_event(event(A, "account", {"active": False, "status": "deactivated",
                                                    "seq": 31_000_000_000}, BASE_US)),
                  decode_event(event(B, "identity", {"handle": "old.example.com", "seq": 31_000_000_001},
                                     BASE_US + 1))], cursor=BASE_US + 1)
    writer.close()
    conn = sqlite3.connect(path)
    back_to_schema_4(conn)
    conn.execute("DROP TABLE merge")
    conn.execute("ALTER TABLE actor DROP COLUMN acct_us")
    conn.execute("ALTER TABLE actor DROP COLUMN id_us")
    conn.execute("UPDATE meta SET v=2 WHERE k='schema'")
    conn.commit()
    columns = [row[1] for row in conn.execute("PRAGMA table_info(actor)")]
    assert columns == ["aid", "did", "active", "status", "handle", "acct_seq", "id_seq", "purged_rev"]
    conn.close()
    return path


def schema_of(path: Path) -> tuple[int, list[str]]:
    conn = sqlite3.connect(path)
    version = int(conn.execute("SELECT v FROM meta WHERE k='schema'").fetchone()[0])
    columns = [row[1] for row in conn.execute("PRAGMA table_info(actor)")]
    conn.close()
    return version, columns


def test_writer_upgrades_a_schema_2_store_in_place(tmp_path: Path) -> None:
    path = old_store(tmp_path)
    assert check_store(path).ok  # a backup from the previous release still passes `smalldp check`
    writer = Writer(path)
    assert schema_of(path) == (SCHEMA_VERSION, ["aid", "did", "active", "status", "handle", "acct_seq",
                                                "id_seq", "purged_rev", "acct_us", "id_us"])
    # What was there is kept; the next events follow the new rule (a far lower seq applies).
    reader = DataPlaneReader(path)
    assert reader.actor_state(A) == {"did": A, "active": False, "status": "deactivated", "handle": None}
    writer.apply([decode_event(event(A, "account", {"active": True, "seq": 5, "time": iso(BASE_US)},
                                     BASE_US + 10))], cursor=BASE_US + 10)
    assert reader.actor_state(A)["active"] is True  # type: ignore[index]
    assert reader.dids_by_handles(["old.example.com"]) == [B]
    reader.close()
    writer.close()
    assert check_store(path).ok
    Writer(path).close()  # opening again changes nothing
    assert schema_of(path)[0] == SCHEMA_VERSION


def test_writer_upgrades_a_schema_3_store_and_merges_its_runs_in_slices(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    post = f"at://{A}/app.bsky.feed.post/{tid(0, 1)}"
    writer = Writer(path, fanout=64)  # the runs stay unmerged, as a big store of the release has them
    likers = [did(f"liker{i}") for i in range(40)]
    for batch in range(8):
        lines = [json.dumps({"did": liker, "time_us": BASE_US + batch * 100 + i, "kind": "commit", "commit": {
            "rev": tid(batch * 100 + i), "operation": "create",
            "collection": "app.bsky.feed.like", "rkey": tid(batch * 100 + i),
            "record": {"subject": {"uri": post, "cid": "bafyreib"}}}})
            for i, liker in enumerate(likers[batch * 5:batch * 5 + 5])]
        writer.apply([decode_event(line) for line in lines], cursor=BASE_US + batch * 100 + 99)
    writer.close()
    conn = sqlite3.connect(path)
    back_to_schema_4(conn)
    conn.execute("DROP TABLE merge")
    conn.execute("UPDATE meta SET v=3 WHERE k='schema'")
    conn.commit()
    assert conn.execute("SELECT count(*) FROM run").fetchone()[0] == 8
    conn.close()
    assert check_store(path).ok
    writer = Writer(path, fanout=2, merge_slice_rows=1)  # opening upgrades it; the next batch merges
    assert schema_of(path)[0] == SCHEMA_VERSION
    reader = DataPlaneReader(path)
    assert reader.count(post, "app.bsky.feed.like", ".subject.uri") == 40
    writer.apply([], cursor=BASE_US + 1000)
    assert writer.backlinks.runs() and len(writer.backlinks.runs()) == 1
    assert reader.count(post, "app.bsky.feed.like", ".subject.uri") == 40
    assert {r.did for r in reader.backlinks(post, "app.bsky.feed.like", ".subject.uri", limit=100).items} \
        == set(likers)
    reader.close()
    writer.close()
    assert check_store(path).ok


def test_a_schema_4_store_with_queued_purges_upgrades_and_sweeps_them(tmp_path: Path) -> None:
    """A deleted account queued by the release before the sweep (purge rows without a
    place) joins the sweep when the store opens; its rows go, the others' stay."""
    path = db_path(tmp_path)
    writer = Writer(path)
    posts = [json.dumps({"did": who, "time_us": BASE_US + i, "kind": "commit", "commit": {
        "rev": tid(i), "operation": "create", "collection": "app.bsky.feed.post", "rkey": tid(i),
        "record": {"text": "x", "createdAt": iso(BASE_US)}}}) for i, who in enumerate([A, B, A, B])]
    writer.apply([decode_event(line) for line in posts], cursor=BASE_US + 10)
    # The sweep stands past every row, so the deletion's batch sweeps none of A's rows.
    writer.purges.at = tid_int(3) + 1
    writer.apply([decode_event(event(A, "account", {"active": False, "status": "deleted",
                                                    "seq": 31_000_000_000}, BASE_US + 20))],
                 cursor=BASE_US + 20)
    assert len(writer.purges) == 1  # queued, not yet swept
    writer.conn.close()  # not close(): that would finish the purge
    conn = sqlite3.connect(path)
    back_to_schema_4(conn)
    conn.execute("DELETE FROM meta WHERE k IN ('purge_lap', 'purge_at')")
    conn.execute("UPDATE meta SET v=4 WHERE k='schema'")
    conn.commit()
    assert conn.execute("SELECT count(*) FROM fwd").fetchone()[0] == 4
    conn.close()
    writer = Writer(path)
    assert schema_of(path)[0] == SCHEMA_VERSION
    assert len(writer.purges) == 1
    writer.apply([], cursor=BASE_US + 30)  # the whole (small) index in one slice: a lap
    assert len(writer.purges) == 0
    conn = sqlite3.connect(path)
    owners = [row[0] for row in conn.execute("SELECT a.did FROM fwd f JOIN actor a USING (aid)")]
    assert sorted(owners) == [B, B]
    assert conn.execute("SELECT count(*) FROM purge").fetchone()[0] == 0
    conn.close()
    writer.close()
    assert check_store(path).ok


def test_a_schema_5_store_upgrades_its_queued_purges_stay_deletions(tmp_path: Path) -> None:
    """Schema 6 adds purge.reconcile (backfill) and the backfill table: a deletion queued
    before stays a deletion (an account active again is still purged at once)."""
    path = db_path(tmp_path)
    writer = Writer(path)
    writer.apply([decode_event(json.dumps({"did": A, "time_us": BASE_US, "kind": "commit", "commit": {
        "rev": tid(1), "operation": "create", "collection": "app.bsky.feed.post", "rkey": tid(1),
        "record": {"text": "x", "createdAt": iso(BASE_US)}}}))], cursor=BASE_US)
    writer.purges.at = tid_int(1) + 1  # past A's row: the deletion's batch leaves it queued
    writer.apply([decode_event(event(A, "account", {"active": False, "status": "deleted", "seq": 31_000_000_000},
                                     BASE_US + 20))], cursor=BASE_US + 20)
    writer.conn.close()
    conn = sqlite3.connect(path)
    back_to_schema_5(conn)
    conn.execute("UPDATE meta SET v=5 WHERE k='schema'")
    conn.commit()
    conn.close()
    writer = Writer(path)
    assert schema_of(path)[0] == SCHEMA_VERSION
    assert len(writer.purges) == 1 and not writer.purges.reconciles
    assert writer.conn.execute("SELECT count(*) FROM backfill").fetchone()[0] == 0
    # active again before the sweep came round: a deletion is purged at once, as before
    writer.apply([decode_event(event(A, "account", {"active": True, "seq": 31_000_000_001}, BASE_US + 30))],
                 cursor=BASE_US + 30)
    assert len(writer.purges) == 0
    assert writer.conn.execute("SELECT count(*) FROM fwd").fetchone()[0] == 0
    writer.close()
    assert check_store(path).ok


def test_a_store_from_a_newer_smalldp_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    Writer(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET v=99 WHERE k='schema'")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="schema version 99.*newer smalldp"):
        upgrade_in_place(path)


def test_serve_without_ingest_upgrades_the_store_it_reads(tmp_path: Path) -> None:
    """`smalldp serve --no-ingest` on a schema-2 store: upgraded first, so queries that read
    the new columns (getDidsByHandles) answer instead of failing."""
    old_store(tmp_path)
    port = free_port()
    settings = load_settings({"data_dir": str(tmp_path), "listen": f"127.0.0.1:{port}",
                              "log_level": "warning", "grpc_listen": "off"}, env={})

    async def main() -> dict:
        service = Service(settings, ingest=False, notifier=Notifier({}))
        task = asyncio.create_task(service.run())
        try:
            deadline = time.monotonic() + 30
            async with aiohttp.ClientSession() as session:
                while True:
                    assert not task.done(), task.result()
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/xrpc/dev.smalldp.getDidsByHandles",
                                               params={"handles": "old.example.com"}) as resp:
                            assert resp.status == 200, await resp.text()
                            return await resp.json()
                    except aiohttp.ClientConnectorError:
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.05)
        finally:
            service.stop.set()
            assert await asyncio.wait_for(task, 15) == 0

    assert asyncio.run(main()) == {"dids": [B]}
    assert schema_of(db_path(tmp_path))[0] == SCHEMA_VERSION
