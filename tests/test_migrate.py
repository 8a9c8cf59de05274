"""A store written by the previous release (schema 2) is upgraded in place, never refused.

The previous layout is made by taking a current store back to it (dropping the columns
schema 3 added and writing version 2), which is exactly what the release before this one
wrote: its actor table had `acct_seq, id_seq, purged_rev` and nothing after them.
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

from helpers_server import BASE_US, did, iso
from test_live import free_port

A, B = did("alpha"), did("beta")


def event(repo: str, kind: str, body: dict, time_us: int) -> str:
    return json.dumps({"did": repo, "time_us": time_us, "kind": kind, kind: {"did": repo, **body}})


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
                              "log_level": "warning"}, env={})

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
