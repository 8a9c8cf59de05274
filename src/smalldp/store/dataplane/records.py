"""Records and actors: record bodies with their dates (getRecords, and the AppView's
Get*Records), whether a post has gates, actors with their profile, DIDs by handle, an
actor's latest rev.

A record is readable when it is live (its latest operation a create or update), its author
is active, and its collection keeps bodies (the ``body_collections`` setting): the body
table holds its JSON and CID (store/bodies.py: zstd, or the compact codec of likes, reposts,
follows, blocks, list items and list blocks).  Records written by a smalldp from before
that codec (schema 6 and earlier) or while their collection was not in
``body_collections`` have no body: they read as absent, as a deleted record does.
"""

from __future__ import annotations

import datetime
from typing import Any, NamedTuple

import orjson

from smalldp.derived import PROFILE
from smalldp.store.dataplane.gates import GateQueries
from smalldp.store.encoding import key_record, split_target
from smalldp.store.reader import _iso
from smalldp.tid import int_to_tid

THREADGATE = "app.bsky.feed.threadgate"
POSTGATE = "app.bsky.feed.postgate"
LABELER = "app.bsky.labeler.service"
POST = "app.bsky.feed.post"
# What getActors reads of an account besides its state, each at rkey "self".
STATUS = "app.bsky.actor.status"
CHAT_DECLARATION = "chat.bsky.actor.declaration"
NOTIFICATION_DECLARATION = "app.bsky.notification.declaration"
GERM_DECLARATION = "com.germnetwork.declaration"
ACTOR_RECORDS = (PROFILE, STATUS, CHAT_DECLARATION, NOTIFICATION_DECLARATION, GERM_DECLARATION)
ACTOR_BATCH = 500  # accounts (DIDs, IDs, sort keys) a query of actor_records reads (SQLite: 32,766 variables)


class StoredRecord(NamedTuple):
    """A live record's body as the store keeps it."""

    json: bytes  # its JSON (as received; compact bodies: the same value, keys sorted)
    cid: str  # "" when none is known (Jetstream sent none)
    indexed_us: int  # receive time (time_us) of the event that wrote this version


class ActorRow(NamedTuple):
    """An account as the actor table keeps it."""

    active: bool
    status: str | None  # the latest account event's status (None: none given)
    handle: str | None  # from the latest identity event that named one
    seen: bool  # a commit or an identity event of the account itself was applied
    id_us: int | None  # order time of the identity event applied last (the DID cache's refresh mark)
    handle_owner: str | None  # the DID whose claim of ``handle`` is the newest (getDidsByHandles' rule)


class RecordQueries(GateQueries):
    """getRecords, the AppView's Get*Records, post gates, getActors, getDidsByHandles,
    getLatestRev."""

    def records(self, uris: list[str]) -> list[dict[str, Any] | None]:
        """getRecords."""
        return self._read(lambda: [self._full_record(uri) for uri in uris])

    def stored_records(self, uris: list[str], collection: str | None = None) -> list[StoredRecord | None]:
        """The body of each live record, position-aligned with ``uris``; None where there is
        none (not live, unknown, an inactive author, no body kept, an at-uri that does not
        parse, or with ``collection`` given, a uri of another collection)."""
        return self._read(lambda: [self._stored(uri, collection) for uri in uris])

    def _stored(self, uri: str, collection: str | None = None) -> StoredRecord | None:
        parts = split_target(uri)
        if parts is None or (collection is not None and parts[1] != collection):
            return None
        key = self._record_key(uri)
        return None if key is None else self._stored_at(*key)

    def _stored_at(self, sk: int, aid: int, coll: int) -> StoredRecord | None:
        row = self.conn.execute("SELECT cid, indexed_us, data FROM body WHERE sk=? AND aid=? AND coll=?",
                                (sk, aid, coll)).fetchone()
        if row is None:
            return None
        stored_cid, indexed_us, data = row
        json, cid = self._bodies.read(sk, self._coll_name(coll), stored_cid, indexed_us, data, self._target_name)
        return StoredRecord(json, cid or "", indexed_us)

    def _full_record(self, uri: str) -> dict[str, Any] | None:
        stored = self._stored(uri)
        if stored is None:
            return None
        record = orjson.loads(stored.json)
        created = record.get("createdAt") if isinstance(record, dict) else None
        created_at = _parse_datetime(created) if isinstance(created, str) else None
        indexed_us = stored.indexed_us
        indexed_at = datetime.datetime.fromtimestamp(indexed_us / 1e6, tz=datetime.timezone.utc)
        sorted_at = _iso(indexed_us) if created_at is None or created_at >= indexed_at else _iso_dt(created_at)
        return {"uri": uri, "cid": stored.cid, "record": record, "indexedAt": _iso(indexed_us),
                "createdAt": created if created_at is not None else None, "sortedAt": sorted_at}

    def post_gates(self, uris: list[str]) -> list[tuple[bool, bool]]:
        """(has a thread gate, has a post gate) per uri, position-aligned.

        A post has a gate when a live ``app.bsky.feed.threadgate`` (``.postgate``) record of
        its author sits at the post's rkey and names the post in ``post``: what the reference
        DataPlane requires of a gate before it marks the post (it rejects a gate whose rkey or
        author differ from its post's).  False for a uri that is not a live post."""
        return self._read(lambda: [self._post_gates(uri) for uri in uris])

    def stored_posts(self, uris: list[str]) -> tuple[list[StoredRecord | None], list[tuple[bool, bool, bool, bool]]]:
        """``stored_records(uris, POST)`` and per uri (has a thread gate, has a post gate,
        is a reply that breaks its thread's gate, quotes a post whose post gate forbids it:
        store/dataplane/gates.py) in one read."""
        def read() -> tuple[list[StoredRecord | None], list[tuple[bool, bool, bool, bool]]]:
            # read ahead in a few queries what the loop below asks one record at a time:
            # the posts' bodies and forward links, and their gates' (a gate sits at its
            # post's rkey)
            keys = [self._record_key(uri) if (parts := split_target(uri)) is not None and parts[1] == POST
                    else None for uri in uris]
            posts = [key for key in keys if key is not None]
            gate_colls = [coll for coll in (self._coll_id(THREADGATE), self._coll_id(POSTGATE)) if coll is not None]
            self._links_many(posts + [(sk, aid, coll) for sk, aid, _ in posts if sk >= 0 for coll in gate_colls])
            bodies = self._stored_many(posts)
            stored = [None if key is None else bodies.get(key) for key in keys]
            meta = []
            for uri, body in zip(uris, stored):
                thread, post = self._post_gates(uri)
                key = None if body is None else self._record_key(uri)
                links = None if key is None else self._links_of(*key)
                if key is None or links is None or body is None:
                    meta.append((thread, post, False, False))
                    continue
                meta.append((thread, post, self._violates_thread_gate(key[0], key[1], links, body.indexed_us),
                             self._violates_embedding_rules(key[0], key[1], links, body.indexed_us)))
            return stored, meta
        return self._read(read)

    def _post_gates(self, uri: str) -> tuple[bool, bool]:
        parts = split_target(uri)
        if parts is None or parts[1] != POST:
            return False, False
        key = self._record_key(uri)
        if key is None or self._links_of(*key) is None:
            return False, False
        return self._gated(key, parts[2], THREADGATE), self._gated(key, parts[2], POSTGATE)

    def _gated(self, post: tuple[int, int, int], rkey: str, gate: str) -> bool:
        sk, aid, post_coll = post
        coll = self._coll_id(gate)
        if coll is None:
            return False
        gate_sk = self._sort_key(aid, coll, rkey)
        links = None if gate_sk is None else self._links_of(gate_sk, aid, coll)
        if links is None:
            return False
        target = self._link_target(links, gate, ".post")
        return target is not None and key_record(target) == (aid, post_coll, sk if sk >= 0 else rkey)

    def actor_rows(self, dids: list[str]) -> list[ActorRow | None]:
        """Each DID's account state, position-aligned; None for a DID smalldp never saw."""
        return self._read(lambda: self._actor_rows(dids))

    def _actor_rows(self, dids: list[str]) -> list[ActorRow | None]:
        """``actor_rows`` in the read under way: ACTOR_BATCH DIDs a query (a thread view
        asks about a thousand accounts at once)."""
        found: dict[str, ActorRow] = {}
        wanted = sorted({did for did in dids if did})
        for start in range(0, len(wanted), ACTOR_BATCH):
            part = wanted[start:start + ACTOR_BATCH]
            for did, aid, *row in self.conn.execute(
                    "SELECT a.did, a.aid, a.active, a.status, a.handle, a.id_us IS NOT NULL OR a.id_seq IS NOT NULL "
                    "OR a.handle IS NOT NULL OR r.rev IS NOT NULL, a.id_us, "
                    # the newest claim of the handle, by order time, as dids_by_handles
                    "CASE WHEN a.handle IS NULL THEN NULL ELSE (SELECT b.did FROM actor b WHERE b.handle = a.handle "
                    "ORDER BY b.id_us IS NULL, b.id_us DESC, b.aid DESC LIMIT 1) END "
                    f"FROM actor a LEFT JOIN actor_rev r USING(aid) WHERE a.did IN ({','.join('?' * len(part))})",
                    part):
                self._aids[did] = aid  # an account's ID never changes once given (Reader._aid)
                found[did] = ActorRow(bool(row[0]), row[1], row[2], bool(row[3]), row[4], row[5])
        return [found.get(did) for did in dids]

    def actor_records(self, dids: list[str], handle_hints: dict[str, str] | None = None) -> tuple[
            list[tuple[ActorRow | None, list[StoredRecord | None], bool]], dict[str, str]]:
        """Per DID, in one read: its account state (None: never seen), its live
        ``ACTOR_RECORDS`` at rkey ``self`` in that order (None where there is none, all
        None for an inactive account), and whether it has a live labeler service record.
        Also, in the same read, the DID that claimed each handle of ``handle_hints`` (DID ->
        a handle, lower case) latest (dids_by_handles' rule), for the accounts whose own
        handle is another one: GetActors gives an account the handle of its DID document
        only when no other account claims it (rpcs/actors.py).

        Batched: the rows, the records' sort keys (rkey ``self`` is an alias) and their
        bodies are read ACTOR_BATCH accounts a query."""
        def read() -> tuple[list[tuple[ActorRow | None, list[StoredRecord | None], bool]], dict[str, str]]:
            rows = self._actor_rows(dids)
            colls = [self._coll_id(nsid) for nsid in ACTOR_RECORDS]
            labeler = self._coll_id(LABELER)
            aids: dict[str, int] = {}
            for did, row in zip(dids, rows):
                # the uris the records have must parse (a DID that is not one names nothing)
                if row is not None and did not in aids and split_target(f"at://{did}/{PROFILE}/self") is not None:
                    aid = self._active(did)  # an inactive account's records read as none
                    if aid is not None:
                        aids[did] = aid
            selfs = self._self_sort_keys(sorted(set(aids.values())),
                                         [coll for coll in (*colls, labeler) if coll is not None])
            bodies = self._stored_many([(sk, aid, coll) for (aid, coll), sk in selfs.items() if coll != labeler])
            out: list[tuple[ActorRow | None, list[StoredRecord | None], bool]] = []
            for did, row in zip(dids, rows):
                aid = aids.get(did)
                if row is None or aid is None:
                    out.append((row, [None] * len(ACTOR_RECORDS), False))
                    continue
                found: list[StoredRecord | None] = []
                for coll in colls:
                    sk = None if coll is None else selfs.get((aid, coll))
                    found.append(None if sk is None or coll is None else bodies.get((sk, aid, coll)))
                label_sk = None if labeler is None else selfs.get((aid, labeler))
                out.append((row, found, label_sk is not None and labeler is not None
                            and self._links_of(label_sk, aid, labeler) is not None))
            asked = sorted({hint for did, row in zip(dids, rows) if row is not None
                            and (hint := (handle_hints or {}).get(did)) is not None and hint != row.handle})
            return out, dict(zip(asked, self._dids_by_handles(asked)))
        return self._read(read)

    def _self_sort_keys(self, aids: list[int], colls: list[int]) -> dict[tuple[int, int], int]:
        """(account, collection) -> the sort key of its record at rkey ``self``, where there
        is one (an alias: ``self`` is no TID)."""
        out: dict[tuple[int, int], int] = {}
        if not colls:
            return out
        marks = ",".join(str(coll) for coll in colls)  # integers only
        for start in range(0, len(aids), ACTOR_BATCH):
            part = aids[start:start + ACTOR_BATCH]
            for aid, coll, sk in self.conn.execute(
                    f"SELECT aid, coll, sk FROM alias WHERE aid IN ({','.join('?' * len(part))}) "
                    f"AND coll IN ({marks}) AND rkey='self'", part):
                out[(aid, coll)] = sk
        return out

    def _stored_many(self, keys: list[tuple[int, int, int]]) -> dict[tuple[int, int, int], StoredRecord]:
        """``_stored_at`` of many records: those with a body, by (sort key, account, collection)."""
        out: dict[tuple[int, int, int], StoredRecord] = {}
        wanted = set(keys)
        sks = sorted({sk for sk, _, _ in keys})
        for start in range(0, len(sks), ACTOR_BATCH):
            part = sks[start:start + ACTOR_BATCH]
            for sk, aid, coll, stored_cid, indexed_us, data in self.conn.execute(
                    "SELECT sk, aid, coll, cid, indexed_us, data FROM body "
                    f"WHERE sk IN ({','.join('?' * len(part))})", part):
                if (sk, aid, coll) in wanted:
                    json, cid = self._bodies.read(sk, self._coll_name(coll), stored_cid, indexed_us, data,
                                                  self._target_name)
                    out[(sk, aid, coll)] = StoredRecord(json, cid or "", indexed_us)
        return out

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
        return self._read(lambda: self._dids_by_handles(handles))

    def _dids_by_handles(self, handles: list[str]) -> list[str]:
        out = []
        for handle in handles:
            # The newest claim by order time (seqs of different relays don't compare).
            row = self.conn.execute("SELECT did FROM actor WHERE handle=? ORDER BY id_us IS NULL, id_us DESC, "
                                    "aid DESC LIMIT 1", (handle.lower(),)).fetchone()
            out.append(row[0] if row else "")
        return out

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
