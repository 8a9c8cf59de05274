"""The single writer: applies a batch of operations in one transaction.

Write path, per batch:
  1. resolve DIDs to actor IDs (bounded in-memory cache, one query for the misses);
  2. fetch the forward rows of every record the batch touches (one join; creates
     land at the right edge of ``fwd`` so these pages are hot);
  3. apply the operations in order against that state: a put or delete whose rev is
     not newer than the record's stored rev is a replay and changes nothing;
  4. write: forward rows, bodies, the batch's new backlinks as a new sorted run,
     removals from the chunks that hold them, account state, the cursor;
  5. commit, then merge runs when a level is full (tiered compaction).

New links never touch existing backlink pages: they go into the new run, written in
key order.  Only deletes and updates read and rewrite existing chunks.
"""

from __future__ import annotations

import gc
import itertools
import time
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import msgspec
from pyroaring import BitMap

from smalldp.derived import POST, REPOST, is_derived, is_reverse
from smalldp.events import AccountStatus, DeleteRecord, Identity, Operation, PutRecord
from smalldp.store import timeline
from smalldp.store.backlinks import SLICE_ROWS, SqliteBacklinks
from smalldp.store.bodies import BodyCompressor
from smalldp.store.encoding import (
    Entry,
    decode_links,
    encode_links,
    encode_target,
    get_varint,
    put_varint,
    target_dids,
)
from smalldp.store.progress import Progress
from smalldp.record_bodies import DEFAULT_BODY_COLLECTIONS
from smalldp.store.purge import PurgeSweep
from smalldp.store.schema import open_writer
from smalldp.tid import tid_to_int

log = logging.getLogger(__name__)

# Entries per backlink chunk.  Measured at 10M events: 128 made deletes cheaper (ingest
# +4%) but popular counts and first pages slower (p99 3.1 -> 5.2 ms, 4.3 -> 6.7 ms).
CHUNK_ENTRIES = 512
# Forward rows the purge sweep (store/purge.py) looks at per batch, per event in the batch,
# and at least: its share of a batch's work stays fixed, and a lap of a 10M-record index
# takes ~60 batches of 20k events at import, ~15 minutes of live ingest at 1,500 events/s.
PURGE_ROWS_PER_EVENT = 8
PURGE_ROWS_MIN = 10_000
TARGET_CACHE_MAX = 200_000  # encoded target keys kept between batches
ALIAS_BASE = -(1 << 62)  # sort keys of non-TID rkeys: negative, in first-seen order


RecordKey = tuple[int, int, int]  # (sort key, actor id, collection id)
LinkList = list[tuple[int, bytes]]  # [(source id, target key)]


PAUSE_EVERY = 255  # items between pause points (a mask: every 256th)


def _no_pause() -> None:
    pass


class ActorState(msgspec.Struct, gc=False):
    """What the writer keeps of one DID.

    gc=False: it holds only numbers and strings, and the cache keeps up to half a million
    of them; tracked, they made each full collection of the cyclic GC take ~100 ms.
    """

    aid: int
    active: bool = True
    status: str | None = None
    handle: str | None = None
    acct_seq: int | None = None
    id_seq: int | None = None
    purged_rev: int | None = None  # commits up to this rev were purged (a deletion): ignored
    acct_us: int | None = None  # order time of the account event applied last (see supersedes)
    id_us: int | None = None  # order time of the identity event applied last
    dirty: bool = False


@dataclass
class BatchStats:
    """What one batch did."""

    applied: int = 0
    replays: int = 0
    links_added: int = 0
    links_removed: int = 0
    purged_actors: int = 0


@dataclass
class _Batch:
    """Working state of one batch before it is written."""

    records: dict[RecordKey, tuple[int, LinkList | None]] = field(default_factory=dict)
    dirty_records: set[RecordKey] = field(default_factory=set)
    bodies: dict[RecordKey, tuple[str | None, int, bytes] | None] = field(default_factory=dict)
    # backlinks keyed (source id, target key), like the links of a forward row
    adds: dict[tuple[int, bytes], set[Entry]] = field(default_factory=dict)
    removes: dict[tuple[int, bytes], set[Entry]] = field(default_factory=dict)
    new_actors: list[tuple[int, str]] = field(default_factory=list)
    timeline: list[timeline.TimelineEntry] = field(default_factory=list)  # new posts and reposts
    revs: dict[int, int] = field(default_factory=dict)  # actor ID -> newest commit rev seen
    stats: BatchStats = field(default_factory=BatchStats)
    links_added: int = 0  # counted here, not in stats, to keep add_link cheap
    links_removed: int = 0
    derived_added: int = 0  # of which derived links (smalldp.derived), not counted as links
    derived_removed: int = 0
    records_delta: int = 0  # live records gained (puts of new records) minus lost (deletes, purges)

    def add_link(self, key: tuple[int, bytes], entry: Entry) -> None:
        if self.removes:
            gone = self.removes.get(key)
            if gone is not None and entry in gone:
                gone.discard(entry)  # removed and re-added in one batch: it never left
                self.links_added += 1
                return
        added = self.adds.get(key)
        if added is None:
            self.adds[key] = {entry}
        else:
            added.add(entry)
        self.links_added += 1

    def remove_link(self, key: tuple[int, bytes], entry: Entry) -> None:
        added = self.adds.get(key)
        if added is not None and entry in added:
            added.discard(entry)  # added earlier in this batch: just forget it
        else:
            self.removes.setdefault(key, set()).add(entry)
        self.links_removed += 1


class Writer:
    """Owns the only read-write connection; everything that changes the file goes here."""

    def __init__(self, path: Path, *, cache_mb: int = 64, mmap_mb: int = 0,
                 actor_cache: int = 500_000, fanout: int = 8, chunk_entries: int = CHUNK_ENTRIES,
                 body_collections: Sequence[str] = DEFAULT_BODY_COLLECTIONS,
                 merge_slices: int | None = None, merge_slice_rows: int = SLICE_ROWS,
                 purge_rows: int | None = None) -> None:
        self.path = path
        self.conn = open_writer(path, cache_mb, mmap_mb)
        self.actor_cache_max = actor_cache
        self.chunk_entries = chunk_entries
        # Merge slices apply() runs after its commit: None, until no merge is due (import,
        # tools); 0, none: live ingest runs them itself between batches (merge_steps).
        self.merge_slices = merge_slices
        # Forward rows the purge sweep looks at per batch (None: PURGE_ROWS_PER_EVENT per
        # event, at least PURGE_ROWS_MIN; tests set a few, to keep sweeps under way).
        self.purge_rows = purge_rows
        self.backlinks = SqliteBacklinks(self.conn, fanout=fanout, chunk_entries=chunk_entries,
                                         slice_rows=merge_slice_rows)
        self._body_exact = {c for c in body_collections if not c.endswith(".*")}
        self._body_prefixes = tuple(c[:-1] for c in body_collections if c.endswith(".*"))
        self._keeps_body: dict[int, bool] = {}
        self._pause: Callable[[], None] = _no_pause
        # Backfills under way (did -> the CAR's rev) and those of them that had an older
        # commit applied meanwhile (live ingest through a running serve): see watch_backfill.
        self._backfills: dict[str, int] = {}
        self._backfills_stale: set[str] = set()
        self._load()

    @property
    def pause(self) -> Callable[[], None]:
        """Called every few hundred items of work, between statements: live ingest uses it
        to step aside while queries are answered (see smalldp.priority)."""
        return self._pause

    @pause.setter
    def pause(self, pause: Callable[[], None]) -> None:
        self._pause = self.backlinks.pause = pause

    @property
    def merging_since(self) -> float | None:
        """time.monotonic() when the running merge slice began (None: none is running)."""
        return self.backlinks.merging_since

    # ------------------------------------------------------------ state

    def _load(self) -> None:
        conn = self.conn
        self.colls: dict[str, int] = dict(conn.execute("SELECT nsid, cid FROM coll"))
        self.coll_names = {cid: nsid for nsid, cid in self.colls.items()}
        self._post_coll = self.colls.get(POST, -1)  # set by coll_id when first seen
        self._repost_coll = self.colls.get(REPOST, -1)
        self.sources: dict[tuple[int, str], int] = {
            (coll, path): sid for sid, coll, path in conn.execute("SELECT sid, coll, path FROM source")}
        # per collection, path -> source id: the create path looks a source up per link
        self._paths: dict[int, dict[str, int]] = {}
        for (coll, path), sid in self.sources.items():
            self._paths.setdefault(coll, {})[path] = sid
        self.reverse_sids = {sid for (_, path), sid in self.sources.items() if is_reverse(path)}
        self.derived_sids = {sid for (_, path), sid in self.sources.items() if is_derived(path)}
        self._author_tkeys: dict[int, bytes] = {}
        self.next_aid = (conn.execute("SELECT max(aid) FROM actor").fetchone()[0] or 0) + 1
        self.alias_next = self._meta("alias_next", ALIAS_BASE)
        self.links_live = self._meta("links", 0)
        self.records_live = self._meta("records", 0)  # live records (forward rows that are not tombstones)
        hidden = self._meta("hidden", None)
        self.hidden = BitMap.deserialize(hidden) if hidden else BitMap()
        self.backlinks.load()
        self.purges = PurgeSweep(conn)
        self.actors: dict[str, ActorState] = {}
        self._tkeys: dict[str, bytes] = {}  # target string -> key: hot targets recur constantly
        self.bodies = BodyCompressor(conn)
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS q(sk INTEGER, aid INTEGER, coll INTEGER)")

    def _meta(self, key: str, default: Any) -> Any:
        row = self.conn.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return default if row is None else row[0]

    def meta(self, key: str) -> Any:
        """A value from the meta table (None when absent)."""
        return self._meta(key, None)

    @property
    def cursor(self) -> int | None:
        """time_us of the newest event committed."""
        value = self._meta("cursor", None)
        return None if value is None else int(value)

    def close(self) -> None:
        """Checkpoint and close the connection.  Purges under way are left as they stand:
        their sweep goes on from there when the store is next opened (finishing them here
        would be a scan of the whole forward index, minutes at network scale, in the way of
        a service's stop)."""
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()

    def finish_purges(self) -> int:
        """Remove the rows of every deleted account (and every backfill's stale rows) still
        queued now, in one transaction (one scan of the whole forward index); returns how
        many accounts that was."""
        queued = len(self.purges)
        if queued:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                batch = _Batch()
                self._purge(list(self.purges.queue), batch)
                self._write_backlinks(batch)
                self._write_meta({})
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        return queued

    # ------------------------------------------------------------ IDs

    def coll_id(self, nsid: str) -> int:
        """The integer of a collection NSID, assigned on first sight."""
        cid = self.colls.get(nsid)
        if cid is None:
            cid = len(self.colls) + 1
            self.conn.execute("INSERT INTO coll VALUES(?, ?)", (cid, nsid))
            self.colls[nsid] = cid
            self.coll_names[cid] = nsid
            if nsid == POST:
                self._post_coll = cid
            elif nsid == REPOST:
                self._repost_coll = cid
        return cid

    def source_id(self, coll: int, path: str) -> int:
        """The integer of a (collection, path) pair, assigned on first sight."""
        sid = self.sources.get((coll, path))
        if sid is None:
            sid = len(self.sources) + 1
            self.conn.execute("INSERT INTO source VALUES(?, ?, ?)", (sid, coll, path))
            self.sources[(coll, path)] = sid
            self._paths.setdefault(coll, {})[path] = sid
            if is_reverse(path):
                self.reverse_sids.add(sid)
            if is_derived(path):
                self.derived_sids.add(sid)
        return sid

    def _add(self, batch: _Batch, link: tuple[int, bytes], entry: Entry) -> None:
        if link[0] in self.derived_sids:
            batch.derived_added += 1
        batch.add_link(*self._edge(link, entry))

    def _remove(self, batch: _Batch, link: tuple[int, bytes], entry: Entry) -> None:
        if link[0] in self.derived_sids:
            batch.derived_removed += 1
        batch.remove_link(*self._edge(link, entry))

    def _edge(self, link: tuple[int, bytes], entry: Entry) -> tuple[tuple[int, bytes], Entry]:
        """Where a link of the record ``entry`` is filed: (source, target) with the record,
        or, for reverse links (smalldp.derived), (source, author) with the subject's account."""
        sid, tkey = link
        if sid not in self.reverse_sids:
            return link, entry
        sk, aid = entry
        author = self._author_tkeys.get(aid)
        if author is None:
            out = bytearray(tkey[:1])  # the DID kind byte: a reverse link's target is a DID
            put_varint(out, aid)
            author = self._author_tkeys[aid] = bytes(out)
        return (sid, author), (sk, get_varint(tkey, 1)[0])

    def _resolve_actors(self, dids: Iterable[str], batch: _Batch) -> None:
        missing = [did for did in dids if did not in self.actors]
        for start in range(0, len(missing), 500):
            chunk = missing[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                    "SELECT did, aid, active, status, handle, acct_seq, id_seq, purged_rev, acct_us, id_us "
                    f"FROM actor WHERE did IN ({marks})", chunk):
                self.actors[row[0]] = ActorState(row[1], bool(row[2]), *row[3:])
        for did in missing:
            if did not in self.actors:
                self.actors[did] = ActorState(self.next_aid)
                batch.new_actors.append((self.next_aid, did))
                self.next_aid += 1

    def _aid(self, did: str) -> int:
        return self.actors[did].aid

    def _alias(self, aid: int, coll: int, rkey: str) -> int:
        """The sort key of a non-TID rkey: negative, assigned in first-seen order."""
        row = self.conn.execute("SELECT sk FROM alias WHERE aid=? AND coll=? AND rkey=?",
                                (aid, coll, rkey)).fetchone()
        if row is not None:
            return row[0]
        sk = self.alias_next
        self.alias_next += 1
        self.conn.execute("INSERT INTO alias VALUES(?, ?, ?, ?)", (aid, coll, rkey, sk))
        return sk

    def _keeps_body_of(self, coll: int) -> bool:
        keep = self._keeps_body.get(coll)
        if keep is None:
            nsid = self.coll_names[coll]
            keep = nsid in self._body_exact or nsid.startswith(self._body_prefixes)
            self._keeps_body[coll] = keep
        return keep

    # ------------------------------------------------------------ the batch

    def apply(self, ops: Iterable[Operation], cursor: int | None = None,
              meta: dict[str, object] | None = None) -> BatchStats:
        """Apply operations in order, in one transaction with the cursor and ``meta``; then
        run ``merge_slices`` merge slices (see merge_steps)."""
        paused = _pause_gc()
        try:
            return self._apply_batch(list(ops), cursor, meta)
        finally:
            _resume_gc(paused)

    def _apply_batch(self, ops: list[Operation], cursor: int | None,
                     meta: dict[str, object] | None) -> BatchStats:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            batch = _Batch()
            self._apply(ops, batch)
            self._write(batch)
            # Deleted accounts wait (hidden) for the sweep to pass over their rows; one that
            # is active again is purged at once, before its old rows can show.
            self._purge(self._purge_now(), batch)
            if self.purges:
                rows = self.purge_rows or max(PURGE_ROWS_MIN, PURGE_ROWS_PER_EVENT * len(ops))
                batch.stats.purged_actors += len(self.purges.step(rows, self._dropper(batch)))
            self._write_backlinks(batch)
            batch.stats.links_added = batch.links_added - batch.derived_added
            batch.stats.links_removed = batch.links_removed - batch.derived_removed
            values = dict(meta or {})
            if cursor is not None:
                values["cursor"] = cursor
            if ops:  # when indexing began (the JSON hello's started_at): set once, by the first batch
                conn.execute("INSERT OR IGNORE INTO meta VALUES('started_at', ?)", (ops[0].time_us,))
            self._write_meta(values)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._load()  # drop caches that may hold uncommitted state
            raise
        self._trim_actor_cache()
        if self.merge_slices != 0:
            self.merge_steps(slices=self.merge_slices)
        return batch.stats

    def _purge_now(self) -> list[int]:
        """Queued deleted accounts that are active again: purge before they show.  Not the
        reconciles (backfilled accounts, never hidden): the sweep takes their stale rows."""
        reconciles = self.purges.reconciles
        return [aid for aid in self.purges.queue if aid not in self.hidden and aid not in reconciles]

    def has_commits(self, did: str) -> bool:
        """Whether a commit of ``did`` was ever applied here (it may have records stored)."""
        return self.conn.execute("SELECT 1 FROM actor JOIN actor_rev USING(aid) WHERE did=?",
                                 (did,)).fetchone() is not None

    def watch_backfill(self, did: str, rev: int) -> bool:
        """A backfill of ``did`` at ``rev`` begins: returns whether a commit of it was applied
        before (``has_commits``), and from now until ``reconcile`` notes whether a commit
        below ``rev`` is applied (live ingest, between the backfill's batches): such a commit
        leaves rows the CAR may not have, so its reconcile sweeps them as if stale."""
        self._backfills[did] = rev
        self._backfills_stale.discard(did)
        return self.has_commits(did)

    def unwatch_backfill(self, did: str) -> None:
        """The backfill of ``did`` failed: stop watching it."""
        self._backfills.pop(did, None)
        self._backfills_stale.discard(did)

    def reconcile(self, did: str, rev: int, stale: bool,
                  statements: Sequence[tuple[str, tuple[Any, ...]]] = ()) -> None:
        """Finish a backfill of ``did`` from its repo at ``rev`` (its records already applied
        as puts at ``rev``), in one transaction with ``statements`` (the caller's state).

        Commits up to ``rev`` are ignored from now on (``purged_rev``, as after a deletion:
        the CAR holds their effect, and a late older commit must not bring back a record the
        CAR no longer has).  With ``stale`` (the account may hold rows from before), the
        rows still below ``rev`` are the records absent from the CAR: a reconcile entry of
        the purge sweep removes them (store/purge.py), the account staying visible."""
        stale = stale or did in self._backfills_stale
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            batch = _Batch()
            self._resolve_actors([did], batch)
            actor = self.actors[did]
            if batch.new_actors:
                conn.executemany("INSERT INTO actor(aid, did) VALUES(?, ?)", batch.new_actors)
            if actor.purged_rev is None or actor.purged_rev < rev:
                actor.purged_rev = rev
                conn.execute("UPDATE actor SET purged_rev=? WHERE aid=?", (rev, actor.aid))
            if stale:
                self.purges.add(actor.aid, rev - 1, reconcile=True)
            for sql, params in statements:
                conn.execute(sql, params)
            conn.execute("COMMIT")
            self.unwatch_backfill(did)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._load()
            raise

    def _apply(self, ops: list[Operation], batch: _Batch) -> None:
        # Pass 1: links, DIDs, collections.  DIDs in first-seen order: new accounts get
        # their IDs in that order, which distinct-DID lists follow.
        dids: dict[str, None] = {}
        tkeys = self._tkeys
        prepared: list[tuple[Operation, Sequence[tuple[str, str]]]] = []
        pause = self.pause
        for i, op in enumerate(ops):
            if not i & PAUSE_EVERY:
                pause()
            dids[op.did] = None
            links: Sequence[tuple[str, str]] = ()
            if type(op) is PutRecord:
                links = op.links
                for _, target in links:
                    if target not in tkeys:  # a cached key already holds its IDs
                        did = target_dids(target)
                        if did is not None:
                            dids[did] = None
            prepared.append((op, links))
        self._resolve_actors(dids, batch)

        # Pass 2: record keys, and the stored state of every record touched.
        keys: list[RecordKey | None] = []
        actors = self.actors
        colls = self.colls
        for op, _ in prepared:
            kind = type(op)
            if kind is PutRecord or kind is DeleteRecord:
                aid = actors[op.did].aid
                coll = colls.get(op.collection) or self.coll_id(op.collection)  # type: ignore[union-attr]
                sk = tid_to_int(op.rkey)  # type: ignore[union-attr]
                if sk is None:
                    sk = self._alias(aid, coll, op.rkey)  # type: ignore[union-attr]
                keys.append((sk, aid, coll))
            else:
                keys.append(None)
        self._fetch_records({k for k in keys if k is not None}, batch)

        # Pass 3: apply in order.
        for i, ((op, links), key) in enumerate(zip(prepared, keys)):
            if not i & PAUSE_EVERY:
                pause()
            if key is not None:
                self._apply_record(op, links, key, batch)  # type: ignore[arg-type]
            elif type(op) is AccountStatus:
                self._apply_account(op, batch)
            elif type(op) is Identity:
                self._apply_identity(op, batch)

    def _fetch_records(self, keys: set[RecordKey], batch: _Batch) -> None:
        conn = self.conn
        conn.execute("DELETE FROM q")
        conn.executemany("INSERT INTO q VALUES(?, ?, ?)", keys)
        for sk, aid, coll, rev, links in conn.execute(
                "SELECT f.sk, f.aid, f.coll, f.rev, f.links FROM q "
                "JOIN fwd f ON f.sk = q.sk AND f.aid = q.aid AND f.coll = q.coll"):
            batch.records[(sk, aid, coll)] = (rev + sk, None if links is None else decode_links(links))

    def _apply_record(self, op: PutRecord | DeleteRecord, links: Sequence[tuple[str, str]],
                      key: RecordKey, batch: _Batch) -> None:
        sk, aid, coll = key
        if batch.revs.get(aid, 0) < op.rev:
            batch.revs[aid] = op.rev
        purged_rev = self.actors[op.did].purged_rev
        if purged_rev is not None and op.rev <= purged_rev:
            batch.stats.replays += 1
            return
        current = batch.records.get(key)
        if current is not None and current[0] >= op.rev:
            batch.stats.replays += 1  # this record already reflects a newer or equal commit
            return
        backfills = self._backfills
        if backfills and op.rev < backfills.get(op.did, 0):
            self._backfills_stale.add(op.did)
        entry = (sk, aid)
        old: LinkList = (current[1] or []) if current is not None else []
        was_live = current is not None and current[1] is not None
        derived = self.derived_sids
        if type(op) is PutRecord:
            new: LinkList = []
            tkeys = self._tkeys
            paths = self._paths.get(coll)
            for path, target in links:
                tkey = tkeys.get(target)
                if tkey is None:
                    tkey = tkeys[target] = encode_target(target, self._aid, self.coll_id)
                sid = paths.get(path) if paths is not None else None
                if sid is None:
                    sid = self.source_id(coll, path)
                    paths = self._paths[coll]
                new.append((sid, tkey))
            if len(new) > 1:
                new = list(dict.fromkeys(new))  # two paths may name one target: still one link each
            if old:
                kept = set(new)
                for link in old:
                    if link not in kept:
                        self._remove(batch, link, entry)
                previous = set(old)
                for link in new:
                    if link not in previous:
                        self._add(batch, link, entry)
            else:  # a new record (or one re-created after a delete): every post has links
                if batch.removes:
                    for link in new:
                        if link[0] in derived:
                            self._add(batch, link, entry)
                        else:
                            batch.add_link(link, entry)
                else:  # the same with add_link inlined: the create path, most of all events
                    adds = batch.adds
                    for link in new:
                        if link[0] in derived:
                            self._add(batch, link, entry)
                            continue
                        added = adds.get(link)
                        if added is None:
                            adds[link] = {entry}
                        else:
                            added.add(entry)
                        batch.links_added += 1
                if coll == self._post_coll or coll == self._repost_coll:
                    batch.timeline.append((sk, aid, timeline.KIND_POST if coll == self._post_coll
                                           else timeline.KIND_REPOST))
            batch.records[key] = (op.rev, new)
            if not was_live:
                batch.records_delta += 1
            if self._keeps_body_of(coll):
                batch.bodies[key] = (op.cid, op.time_us, op.body)  # type: ignore[union-attr]
        else:
            for link in old:
                self._remove(batch, link, entry)
            batch.records[key] = (op.rev, None)
            if was_live:
                batch.records_delta -= 1
            if self._keeps_body_of(coll):
                batch.bodies[key] = None
        batch.dirty_records.add(key)
        batch.stats.applied += 1

    def _apply_account(self, op: AccountStatus, batch: _Batch) -> None:
        actor = self.actors[op.did]
        if not supersedes(op.order_us, op.seq, actor.acct_us, actor.acct_seq):
            batch.stats.replays += 1  # an older state than the one applied (a replay, or late)
            return
        actor.acct_us, actor.acct_seq = op.order_us, op.seq
        actor.active = op.active
        actor.status = op.status
        if op.active:
            self.hidden.discard(actor.aid)
        else:
            self.hidden.add(actor.aid)
        if op.status == "deleted":
            # Purge what the account had: every commit seen so far (replays of them stay
            # ignored), not a clock window, so an account that comes back keeps what it
            # writes from then on, however soon.
            seen = max(self._latest_rev(actor.aid), batch.revs.get(actor.aid, 0))
            actor.purged_rev = max(seen, actor.purged_rev or 0)
            self.purges.add(actor.aid, actor.purged_rev)
        actor.dirty = True
        batch.stats.applied += 1

    def _latest_rev(self, aid: int) -> int:
        row = self.conn.execute("SELECT rev FROM actor_rev WHERE aid=?", (aid,)).fetchone()
        return 0 if row is None else int(row[0])

    def _apply_identity(self, op: Identity, batch: _Batch) -> None:
        actor = self.actors[op.did]
        if not supersedes(op.order_us, op.seq, actor.id_us, actor.id_seq):
            batch.stats.replays += 1
            return
        actor.id_us, actor.id_seq = op.order_us, op.seq
        if op.handle is not None:
            actor.handle = op.handle
        actor.dirty = True
        batch.stats.applied += 1

    # ------------------------------------------------------------ writing

    def _write(self, batch: _Batch) -> None:
        conn = self.conn
        if batch.new_actors:
            conn.executemany("INSERT INTO actor(aid, did) VALUES(?, ?)", batch.new_actors)
        dirty = [a for a in self.actors.values() if a.dirty]
        if dirty:
            conn.executemany(
                "UPDATE actor SET active=?, status=?, handle=?, acct_seq=?, id_seq=?, purged_rev=?, acct_us=?, "
                "id_us=? WHERE aid=?",
                [(int(a.active), a.status, a.handle, a.acct_seq, a.id_seq, a.purged_rev, a.acct_us, a.id_us, a.aid)
                 for a in dirty])
            for a in dirty:
                a.dirty = False
        rows = []
        for key in sorted(batch.dirty_records):
            rev, links = batch.records[key]
            # rev is stored relative to the sort key: both are TIDs of about the same moment
            rows.append((*key, rev - key[0], None if links is None else encode_links(links)))
        conn.executemany("INSERT OR REPLACE INTO fwd VALUES(?, ?, ?, ?, ?)", rows)
        if batch.timeline:
            timeline.write_entries(conn, batch.timeline)
        if batch.revs:
            conn.executemany("INSERT INTO actor_rev VALUES(?, ?) ON CONFLICT(aid) DO UPDATE "
                             "SET rev=excluded.rev WHERE excluded.rev > rev", list(batch.revs.items()))
        puts, deletes = [], []
        target_key = self._tkeys.get  # the keys of this batch's link targets (compact bodies use them)
        for key in sorted(batch.bodies):
            value = batch.bodies[key]
            if value is None:
                deletes.append(key)
            else:
                cid, time_us, body = value
                stored_cid, data = self.bodies.encode(key[0], self.coll_names[key[2]], cid, time_us, body, target_key)
                puts.append((*key, stored_cid, time_us, data))
        if puts:
            conn.executemany("INSERT OR REPLACE INTO body VALUES(?, ?, ?, ?, ?, ?)", puts)
        if deletes:
            conn.executemany("DELETE FROM body WHERE sk=? AND aid=? AND coll=?", deletes)

    def _write_backlinks(self, batch: _Batch) -> None:
        self.backlinks.remove(batch.removes)
        adds = batch.adds
        self.backlinks.write_run(adds)
        self.records_live += batch.records_delta
        batch.records_delta = 0
        derived = self.derived_sids  # the DataPlane's views are not counted as links
        self.links_live += (sum(len(e) for k, e in adds.items() if k[0] not in derived)
                            - sum(len(e) for k, e in batch.removes.items() if k[0] not in derived))
        batch.adds.clear()
        batch.removes.clear()

    def _write_meta(self, values: dict[str, object]) -> None:
        values = dict(values)
        values["alias_next"] = self.alias_next
        values["links"] = self.links_live
        values["records"] = self.records_live
        values["hidden"] = self.hidden.serialize()
        self.conn.executemany("INSERT OR REPLACE INTO meta VALUES(?, ?)", list(values.items()))

    def _purge(self, aids: list[int], batch: _Batch) -> None:
        """Remove every record, body and link of deleted accounts now (one full scan)."""
        if aids:
            self.purges.purge_now(aids, self._dropper(batch))
            batch.stats.purged_actors += len(aids)

    def _dropper(self, batch: _Batch) -> Callable[[int, int, int, bytes | None], None]:
        """What the purge does with each row it removes: its links leave the backlinks."""
        def drop(sk: int, aid: int, coll: int, links: bytes | None) -> None:
            if links is not None:
                batch.records_delta -= 1
                for link in decode_links(links):
                    self._remove(batch, link, (sk, aid))
        return drop

    def _trim_actor_cache(self) -> None:
        if len(self._tkeys) > TARGET_CACHE_MAX:
            self._tkeys.clear()
        excess = len(self.actors) - self.actor_cache_max
        if excess > 0:
            # Drop the oldest fifth (dicts keep insertion order): cheap and good enough,
            # the hot DIDs come straight back from the actor table.
            drop = excess + self.actor_cache_max // 5
            for did in list(itertools.islice(self.actors, drop)):
                del self.actors[did]

    # ------------------------------------------------------------ compaction

    def stop_merging(self) -> None:
        """At shutdown, from any thread: start no merge slice, and abort a running one (its
        own transaction rolls back; nothing committed is lost, the merge goes on next time)."""
        self.backlinks.stop()

    def merge_steps(self, budget_s: float | None = None, slices: int | None = None) -> int:
        """Run merge slices (store/compaction.py picks them) until none is due, ``budget_s``
        seconds have gone or ``slices`` have run; returns the slices run.  Each slice is its
        own short transaction, so a merge of any size never holds the writer for long."""
        deadline = None if budget_s is None else time.monotonic() + budget_s
        done = 0
        paused = _pause_gc()
        try:
            while (slices is None or done < slices) and self.backlinks.merge_step():
                done += 1
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            _resume_gc(paused)
        return done

    def compact(self, full: bool = False, progress: Progress | None = None) -> int:
        """Run every merge that is due (or, with ``full``, remove the rows of the deleted
        accounts still queued and merge every run into one, reporting to ``progress``);
        returns the merge slices run."""
        if full:  # everything tidy: deleted accounts' rows gone too, then one run
            self.finish_purges()
            return self.backlinks.compact_all(progress)
        return self.merge_steps()


def _pause_gc() -> bool:
    """Stop automatic cyclic garbage collection for one batch or merge; True if it was on.

    A batch holds millions of short-lived containers (operations, link lists, entries) at
    once; each automatic collection during it rescans all of them and promotes them, only
    for reference counting to free them when the batch ends (py-spy of a compiled import:
    6.7% of the time in the collector; README "Benchmark" has the figures with and without).
    Cycles made meanwhile are not lost: collection resumes after the batch, with them still
    in its youngest generation."""
    enabled = gc.isenabled()
    if enabled:
        gc.disable()
    return enabled


def _resume_gc(paused: bool) -> None:
    if paused:
        gc.enable()


def supersedes(when_us: int, seq: int | None, last_us: int | None, last_seq: int | None) -> bool:
    """Whether an account (or identity) event replaces the state the last applied one set.

    Events order by when they happened (``order_us``: the event's own upstream ``time``,
    see smalldp.events.order_time_us), so a failover to a Jetstream instance fed by another
    relay, whose ``seq`` values are unrelated, orders them right, and a replayed older
    event never undoes a newer one.  At the same moment the relay's ``seq`` decides when
    both events have one (an equal seq is the same event again); without, the later
    delivery wins.  A store from before order times were kept (``last_us`` None) takes
    the next event as it comes.
    """
    if last_us is None or when_us != last_us:
        return last_us is None or when_us > last_us
    if seq is not None and last_seq is not None:
        return seq > last_seq
    return True
