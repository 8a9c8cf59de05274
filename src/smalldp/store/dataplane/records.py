"""Records and actors: record bodies with their dates (getRecords), actors with their
profile, DIDs by handle, an actor's latest rev.
"""

from __future__ import annotations

import datetime
from typing import Any

import orjson

from smalldp.derived import PROFILE
from smalldp.store.bodies import cid_of
from smalldp.store.dataplane.base import DataPlaneBase
from smalldp.store.reader import _iso
from smalldp.tid import int_to_tid


class RecordQueries(DataPlaneBase):
    """getRecords, getActors, getDidsByHandles, getLatestRev."""

    def records(self, uris: list[str]) -> list[dict[str, Any] | None]:
        """getRecords."""
        return self._read(lambda: [self._full_record(uri) for uri in uris])

    def _full_record(self, uri: str) -> dict[str, Any] | None:
        key = self._record_key(uri)
        if key is None:
            return None
        row = self.conn.execute("SELECT cid, indexed_us, data FROM body WHERE sk=? AND aid=? AND coll=?", key).fetchone()
        if row is None:
            return None
        cid, indexed_us, data = row
        record = orjson.loads(self._bodies.decompress(data))
        created = record.get("createdAt") if isinstance(record, dict) else None
        created_at = _parse_datetime(created) if isinstance(created, str) else None
        indexed_at = datetime.datetime.fromtimestamp(indexed_us / 1e6, tz=datetime.timezone.utc)
        sorted_at = _iso(indexed_us) if created_at is None or created_at >= indexed_at else _iso_dt(created_at)
        return {"uri": uri, "cid": cid_of(cid) or "", "record": record, "indexedAt": _iso(indexed_us),
                "createdAt": created if created_at is not None else None, "sortedAt": sorted_at}

    def actors(self, dids: list[str]) -> list[dict[str, Any] | None]:
        """getActors."""
        def read() -> list[dict[str, Any] | None]:
            out: list[dict[str, Any] | None] = []
            for did in dids:
                row = self.conn.execute("SELECT active, status, handle FROM actor WHERE did=?", (did,)).fetchone()
                if row is None:
                    out.append(None)
                    continue
                active, status, handle = row
                profile = self._full_record(f"at://{did}/{PROFILE}/self") if active else None
                out.append({"did": did, "handle": handle, "status": "active" if active else (status or "inactive"),
                            "profile": profile["record"] if profile else None,
                            "profileCid": profile["cid"] if profile else None})
            return out
        return self._read(read)

    def dids_by_handles(self, handles: list[str]) -> list[str]:
        """getDidsByHandles: the DID that most recently claimed each handle, or ""."""
        def read() -> list[str]:
            out = []
            for handle in handles:
                # The newest claim by order time (seqs of different relays don't compare).
                row = self.conn.execute("SELECT did FROM actor WHERE handle=? ORDER BY id_us IS NULL, id_us DESC, "
                                        "aid DESC LIMIT 1", (handle.lower(),)).fetchone()
                out.append(row[0] if row else "")
            return out
        return self._read(read)

    def latest_rev(self, actor: str) -> str:
        """getLatestRev."""
        def read() -> str:
            aid = self._active(actor)
            row = None if aid is None else self.conn.execute("SELECT rev FROM actor_rev WHERE aid=?", (aid,)).fetchone()
            return "" if row is None else int_to_tid(row[0])
        return self._read(read)


def _parse_datetime(value: str) -> datetime.datetime | None:
    """An ATProto datetime (ISO 8601 with a timezone), or None."""
    if len(value) > 64 or "T" not in value:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _iso_dt(moment: datetime.datetime) -> str:
    moment = moment.astimezone(datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

