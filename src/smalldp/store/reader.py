"""Read-only queries over the store: counts, pages of backlinks, distinct DIDs, records.

A Reader owns one read-only connection and is used by one thread at a time.  Each
public method runs in one read transaction, so it sees one committed snapshot while
the writer goes on.  Accounts in the inactive bitmap are subtracted at read time:
deactivating an account hides its links without rewriting them.
"""

from __future__ import annotations

import base64
import datetime
import heapq
import itertools
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import orjson
from pyroaring import BitMap

from smalldp.derived import is_derived
from smalldp.store.bodies import BodyDecompressor
from smalldp.store.encoding import (
    BlockHeader,
    Entry,
    chunk_floor,
    decode_links,
    decode_target,
    encode_target_lookup,
    iter_entries,
    split_target,
)
from smalldp.store.runfilter import Filter, RunFilters, runs_for
from smalldp.store.schema import open_reader
from smalldp.tid import int_to_tid, tid_to_int

T = TypeVar("T")
_CURSOR = struct.Struct(">qI")
_ITEM_CURSOR = struct.Struct(">qII")  # getManyToMany: 16 bytes, so no other cursor passes for one
FETCH_BATCH = 256  # linking records whose forward links are read in one query


class BadCursor(ValueError):
    """A cursor that this server did not make."""


def encode_cursor(entry: Entry) -> str:
    """An opaque, URL-safe cursor for a position in a newest-first list."""
    return base64.urlsafe_b64encode(_CURSOR.pack(*entry)).decode().rstrip("=")


def decode_cursor(cursor: str) -> Entry:
    """Inverse of encode_cursor; raises BadCursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        sk, aid = _CURSOR.unpack(raw)
    except (ValueError, struct.error):
        raise BadCursor("invalid cursor") from None
    return sk, aid


@dataclass
class LinkRecord:
    """One linking record."""

    did: str
    collection: str
    rkey: str


@dataclass
class Page:
    """A page of a list: the live total, the items, and the cursor of the next page."""

    total: int
    items: list[Any]
    cursor: str | None


class _Chunk:
    __slots__ = ("run", "floor", "data", "_header", "_entries")

    def __init__(self, run: int, lo: int, data: bytes) -> None:
        self.run, self.data = run, data
        self.floor = chunk_floor(lo)  # every entry's sort key is >= this
        self._header: BlockHeader | None = None
        self._entries: list[Entry] | None = None

    @property
    def header(self) -> BlockHeader:
        if self._header is None:
            self._header = BlockHeader(self.data)
        return self._header

    def entries(self) -> list[Entry]:
        if self._entries is None:
            header = self.header
            self._entries = list(iter_entries(self.data, header.body, header.count))
        return self._entries


class Reader:
    """Queries on one read-only connection."""

    def __init__(self, path: Path, *, cache_mb: int = 64, mmap_mb: int = 0,
                 filters: RunFilters | None = None) -> None:
        self.conn = open_reader(path, cache_mb, mmap_mb)
        self._bodies = BodyDecompressor(self.conn)
        self._version = -1
        self._runs = "NULL"
        self._run_gens: dict[int, int] = {}  # run -> gen, read at each new snapshot
        # the key filters of those runs (store/runfilter.py), shared with other readers
        self._run_filters = filters if filters is not None else RunFilters()
        self._filters: dict[int, Filter | None] = {}
        self._run_count = 0
        self.hidden = BitMap()
        # deleted accounts whose rows the purge sweep has not removed yet (store/purge.py)
        self.gone = BitMap()
        self._sources: dict[tuple[str, str], int] = {}
        self._source_names: dict[int, tuple[str, str]] = {}
        self._colls: dict[str, int] = {}
        self._coll_names: dict[int, str] = {}
        self._dids: dict[int, str] = {}
        self._aids: dict[str, int] = {}

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    # ------------------------------------------------------------ snapshot plumbing

    def _read(self, fn: Callable[[], T]) -> T:
        self.conn.execute("BEGIN")
        try:
            self._refresh()
            return fn()
        finally:
            self.conn.execute("COMMIT")

    def _refresh(self) -> None:
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return
        self._version = version
        self._run_gens = dict(self.conn.execute("SELECT run, gen FROM run"))
        runs = [str(r) for r in self._run_gens]
        self._run_count = len(runs)
        self._runs = ",".join(runs) or "NULL"  # inlined into queries: integers only
        self._filters = self._run_filters.of_runs(self.conn, self._run_gens)
        row = self.conn.execute("SELECT v FROM meta WHERE k='hidden'").fetchone()
        self.hidden = BitMap.deserialize(row[0]) if row and row[0] else BitMap()
        self.gone = BitMap(aid for (aid,) in self.conn.execute("SELECT aid FROM purge WHERE reconcile=0")) & self.hidden
        if len(self._dids) > 200_000:
            self._dids.clear()
        if len(self._aids) > 200_000:
            self._aids.clear()

    def _coll_id(self, nsid: str) -> int | None:
        cid = self._colls.get(nsid)
        if cid is None:
            row = self.conn.execute("SELECT cid FROM coll WHERE nsid=?", (nsid,)).fetchone()
            if row is None:
                return None
            cid = self._colls[nsid] = row[0]
            self._coll_names[cid] = nsid
        return cid

    def _coll_name(self, cid: int) -> str:
        name = self._coll_names.get(cid)
        if name is None:
            name = self.conn.execute("SELECT nsid FROM coll WHERE cid=?", (cid,)).fetchone()[0]
            self._coll_names[cid] = name
            self._colls[name] = cid
        return name

    def _source_id(self, collection: str, path: str) -> int | None:
        sid = self._sources.get((collection, path))
        if sid is None:
            cid = self._coll_id(collection)
            if cid is None:
                return None
            row = self.conn.execute("SELECT sid FROM source WHERE coll=? AND path=?", (cid, path)).fetchone()
            if row is None:
                return None
            sid = self._sources[(collection, path)] = row[0]
            self._source_names[sid] = (collection, path)
        return sid

    def _source_name(self, sid: int) -> tuple[str, str]:
        name = self._source_names.get(sid)
        if name is None:
            cid, path = self.conn.execute("SELECT coll, path FROM source WHERE sid=?", (sid,)).fetchone()
            name = (self._coll_name(cid), path)
            self._source_names[sid] = name
            self._sources[name] = sid
        return name

    def _aid(self, did: str) -> int | None:
        aid = self._aids.get(did)  # an account's ID never changes once given: safe to keep
        if aid is None:
            row = self.conn.execute("SELECT aid FROM actor WHERE did=?", (did,)).fetchone()
            if row is None:
                return None
            aid = self._aids[did] = row[0]
        return aid

    def _did(self, aid: int) -> str:
        did = self._dids.get(aid)
        if did is None:
            did = self._dids[aid] = self.conn.execute("SELECT did FROM actor WHERE aid=?", (aid,)).fetchone()[0]
        return did

    def _load_dids(self, aids: Iterable[int]) -> None:
        missing = [a for a in set(aids) if a not in self._dids]
        for start in range(0, len(missing), 500):
            part = missing[start:start + 500]
            self._dids.update(self.conn.execute(
                f"SELECT aid, did FROM actor WHERE aid IN ({','.join('?' * len(part))})", part))

    def _target_key(self, target: str) -> bytes | None:
        return encode_target_lookup(target, self._aid, self._coll_id)

    def _chunks(self, tkey: bytes, sid: int) -> list[_Chunk]:
        return [_Chunk(run, lo, data) for run, lo, data in self.conn.execute(
            f"SELECT run, lo, data FROM bl WHERE run IN ({self._runs_for(tkey, (sid,))}) AND tkey=? AND sid=?",
            (tkey, sid))]

    def _runs_for(self, tkey: bytes, sids: Iterable[int]) -> str:
        """The runs that may hold the target key under one of the sources, as an SQL
        list of integers."""
        return runs_for(self._filters, tkey, sids)

    def _locate(self, target: str, collection: str, path: str) -> list[_Chunk]:
        sid = self._source_id(collection, path)
        tkey = self._target_key(target)
        if sid is None or tkey is None:
            return []
        return self._chunks(tkey, sid)

    def _rkeys(self, coll: int, entries: list[Entry]) -> list[str]:
        out = []
        for sk, aid in entries:
            if sk >= 0:
                out.append(int_to_tid(sk))
            else:
                out.append(self.conn.execute("SELECT rkey FROM alias WHERE aid=? AND coll=? AND sk=?",
                                             (aid, coll, sk)).fetchone()[0])
        return out

    # ------------------------------------------------------------ counting

    def _count_chunks(self, chunks: list[_Chunk], dids: BitMap | None = None,
                      inactive: bool = False) -> tuple[int, BitMap]:
        """Live links and the bitmap of live linking actors over some chunks (with
        ``inactive``, inactive accounts' links too, but for deleted accounts' rows still
        waiting for the purge sweep)."""
        hidden = self.gone if inactive else self.hidden
        total = 0
        actors = BitMap()
        for chunk in chunks:
            header = chunk.header
            bitmap = header.bitmap
            if dids is not None:
                keep = bitmap & dids
                if hidden:
                    keep -= hidden
                total += len(keep) + sum(header.extra.get(a, 0) for a in keep) if header.extra else len(keep)
                actors |= keep
                continue
            total += header.count
            if hidden:
                gone = bitmap & hidden
                if gone:
                    total -= len(gone) + sum(header.extra.get(a, 0) for a in gone)
            actors |= bitmap
        if hidden:
            actors -= hidden
        return total, actors

    def count(self, target: str, collection: str, path: str, dids: Iterable[str] = ()) -> int:
        """Live links to ``target`` from ``collection`` at ``path`` (``path`` with its leading dot)."""
        return self._read(lambda: self._count(target, collection, path, dids)[0])

    def distinct_count(self, target: str, collection: str, path: str) -> int:
        """Distinct live accounts linking to ``target`` from (collection, path)."""
        return self._read(lambda: len(self._count(target, collection, path, ())[1]))

    def _count(self, target: str, collection: str, path: str, dids: Iterable[str]) -> tuple[int, BitMap]:
        return self._count_chunks(self._locate(target, collection, path), self._did_filter(dids))

    def _did_filter(self, dids: Iterable[str]) -> BitMap | None:
        dids = list(dids)
        if not dids:
            return None
        return BitMap(aid for aid in (self._aid(d) for d in dids) if aid is not None)

    # ------------------------------------------------------------ listing

    def backlinks(self, target: str, collection: str, path: str, *, dids: Iterable[str] = (),
                  limit: int = 100, cursor: str | None = None, reverse: bool = False) -> Page:
        """A page of records linking to ``target``: newest first (``reverse``: oldest first)."""
        after = decode_cursor(cursor) if cursor else None
        return self._read(lambda: self._backlinks(target, collection, path, list(dids), limit, after, reverse))

    def _backlinks(self, target: str, collection: str, path: str, dids: list[str], limit: int,
                   after: Entry | None, reverse: bool) -> Page:
        chunks = self._locate(target, collection, path)
        wanted = self._did_filter(dids)
        if wanted is not None and not wanted:
            return Page(0, [], None)  # only accounts never seen (or not DIDs): nothing to walk
        total, _ = self._count_chunks(chunks, wanted)
        picked: list[Entry] = []
        more = False
        for entry in self._walk(chunks, after, reverse):
            if entry[1] in self.hidden or (wanted is not None and entry[1] not in wanted):
                continue
            if len(picked) == limit:
                more = True
                break
            picked.append(entry)
        coll = self._coll_id(collection)
        self._load_dids(aid for _, aid in picked)
        rkeys = self._rkeys(coll, picked) if coll is not None else []
        items = [LinkRecord(self._dids[aid], collection, rkey) for (_, aid), rkey in zip(picked, rkeys)]
        return Page(total, items, encode_cursor(picked[-1]) if more and picked else None)

    def _walk(self, chunks: list[_Chunk], after: Entry | None, reverse: bool) -> Iterator[Entry]:
        """Entries of all runs merged newest first (or oldest first), strictly past ``after``."""
        by_run: dict[int, list[_Chunk]] = {}
        for chunk in chunks:
            by_run.setdefault(chunk.run, []).append(chunk)
        streams = [self._run_stream(sorted(c, key=lambda ch: ch.floor, reverse=True), after, reverse)
                   for c in by_run.values()]
        return heapq.merge(*streams, reverse=not reverse)

    @staticmethod
    def _run_stream(chunks: list[_Chunk], after: Entry | None, reverse: bool) -> Iterator[Entry]:
        # chunks newest first; chunk i holds sort keys in [floor of i, floor of i-1)
        if reverse:
            for i in range(len(chunks) - 1, -1, -1):
                if after is not None and i > 0 and chunks[i - 1].floor <= after[0]:
                    continue  # everything here is older than the cursor
                for entry in reversed(chunks[i].entries()):
                    if after is None or entry > after:
                        yield entry
        else:
            for chunk in chunks:
                if after is not None and chunk.floor > after[0]:
                    continue  # everything here is newer than the cursor
                header = chunk.header
                # Lazily: a first page needs only the first entries of each run's chunk.
                for entry in iter_entries(chunk.data, header.body, header.count):
                    if after is None or entry < after:
                        yield entry

    def distinct_dids(self, target: str, collection: str, path: str, *, limit: int = 100,
                      cursor: str | None = None) -> Page:
        """A page of distinct live accounts linking to ``target``, newest-seen account first.

        Ordered by account ID (the order smalldp first saw each account), descending,
        which a bitmap gives for free and new links can't disturb.
        """
        before = decode_cursor(cursor)[1] if cursor else None
        return self._read(lambda: self._distinct_dids(target, collection, path, limit, before))

    def _distinct_dids(self, target: str, collection: str, path: str, limit: int,
                       before: int | None) -> Page:
        _, actors = self._count(target, collection, path, ())
        if before is None:
            end = len(actors)
        else:
            end = actors.rank(before - 1) if before > 0 else 0
        start = max(0, end - limit)
        picked = [actors[i] for i in range(end - 1, start - 1, -1)]
        self._load_dids(picked)
        cursor = encode_cursor((0, picked[-1])) if start > 0 and picked else None
        return Page(len(actors), [self._dids[a] for a in picked], cursor)

    # ------------------------------------------------------------ whole-target views

    def all_links(self, target: str) -> dict[str, dict[str, tuple[int, int]]]:
        """For every (collection, path) linking to ``target``: (live records, distinct accounts)."""
        return self._read(lambda: self._all_links(target))

    def _all_links(self, target: str) -> dict[str, dict[str, tuple[int, int]]]:
        tkey = self._target_key(target)
        if tkey is None:
            return {}
        by_sid: dict[int, list[_Chunk]] = {}
        for sid, run, lo, data in self.conn.execute(
                f"SELECT sid, run, lo, data FROM bl WHERE run IN ({self._runs}) AND tkey=?", (tkey,)):
            by_sid.setdefault(sid, []).append(_Chunk(run, lo, data))
        out: dict[str, dict[str, tuple[int, int]]] = {}
        for sid in sorted(by_sid):
            collection, path = self._source_name(sid)
            if is_derived(path):  # the DataPlane's own views, not links of the records
                continue
            total, actors = self._count_chunks(by_sid[sid])
            if total:
                out.setdefault(collection, {})[path] = (total, len(actors))
        return out

    def many_to_many(self, subject: str, collection: str, path: str, path_to_other: str, *,
                     dids: Iterable[str] = (), other_subjects: Iterable[str] = (), limit: int = 100,
                     cursor: str | None = None) -> tuple[list[tuple[str, int, int]], str | None]:
        """Group the records linking to ``subject`` by what they link to at ``path_to_other``.

        Returns [(other subject, records, distinct accounts)] ordered by other subject,
        and the cursor of the next page (the last subject, opaque).
        """
        after = _decode_text_cursor(cursor) if cursor else None
        return self._read(lambda: self._many_to_many(subject, collection, path, path_to_other,
                                                      list(dids), list(other_subjects), limit, after))

    def _many_to_many(self, subject: str, collection: str, path: str, path_to_other: str,
                      dids: list[str], others: list[str], limit: int,
                      after: str | None) -> tuple[list[tuple[str, int, int]], str | None]:
        chunks = self._locate(subject, collection, path)
        other_sid = self._source_id(collection, path_to_other)
        coll = self._coll_id(collection)
        if not chunks or other_sid is None or coll is None:
            return [], None
        wanted = self._did_filter(dids)
        wanted_keys = None
        if others:
            wanted_keys = {k for k in (self._target_key(o) for o in others) if k is not None}
        groups: dict[bytes, tuple[list[int], BitMap]] = {}
        entries = [e for c in chunks for e in c.entries()
                   if e[1] not in self.hidden and (wanted is None or e[1] in wanted)]
        for (_, aid), links in self._forward_links(coll, entries).items():
            for sid, tkey in links:
                if sid == other_sid and (wanted_keys is None or tkey in wanted_keys):
                    group = groups.setdefault(tkey, ([0], BitMap()))
                    group[0][0] += 1
                    group[1].add(aid)
        named = sorted((self._target_name(tkey), g[0][0], len(g[1])) for tkey, g in groups.items())
        if after is not None:
            named = [n for n in named if n[0] > after]
        page = named[:limit]
        next_cursor = None
        if len(named) > limit and page:
            next_cursor = base64.urlsafe_b64encode(page[-1][0].encode()).decode().rstrip("=")
        return page, next_cursor

    def many_to_many_items(self, subject: str, collection: str, path: str, path_to_other: str, *,
                           dids: Iterable[str] = (), other_subjects: Iterable[str] = (), limit: int = 100,
                           cursor: str | None = None) -> tuple[list[tuple[LinkRecord, str]], str | None]:
        """The records linking to ``subject`` at ``path``, each with what it links to at
        ``path_to_other``: [(linking record, other subject)] and the next page's cursor.

        Records newest first by rkey time (as ``backlinks``), a record's other links in
        the record's own order; records of inactive accounts are left out. The cursor
        is (sort key, account, index of the last link given) packed, so a page may end
        inside a record with several other links and the next one resumes there.
        """
        after = _decode_item_cursor(cursor) if cursor else None
        return self._read(lambda: self._many_to_many_items(subject, collection, path, path_to_other, list(dids),
                                                            list(other_subjects), limit, after))

    def _many_to_many_items(self, subject: str, collection: str, path: str, path_to_other: str,
                            dids: list[str], others: list[str], limit: int,
                            after: tuple[int, int, int] | None) -> tuple[list[tuple[LinkRecord, str]], str | None]:
        chunks = self._locate(subject, collection, path)
        other_sid = self._source_id(collection, path_to_other)
        coll = self._coll_id(collection)
        if not chunks or other_sid is None or coll is None or limit == 0:
            return [], None
        wanted = self._did_filter(dids)
        wanted_keys = {k for k in map(self._target_key, others) if k is not None} if others else None
        if (wanted is not None and not wanted) or (wanted_keys is not None and not wanted_keys):
            return [], None  # a filter nothing can pass: no need to walk
        # (sk, aid + 1) as the walk's bound: the walk gives entries strictly past it, so the
        # cursor's own record comes first, and its links up to the cursor's index are skipped.
        walk = self._walk(chunks, None if after is None else (after[0], after[1] + 1), False)
        hits: list[tuple[Entry, int, bytes]] = []  # (entry, index in its record's links, other key)
        while len(hits) <= limit:  # one hit past the page says whether there is a next page
            batch = list(itertools.islice(walk, FETCH_BATCH))
            if not batch:
                break
            live = [e for e in batch if e[1] not in self.hidden and (wanted is None or e[1] in wanted)]
            links = self._forward_links(coll, live)
            for entry in live:
                for index, (sid, tkey) in enumerate(links.get(entry, ())):
                    if sid != other_sid or (wanted_keys is not None and tkey not in wanted_keys):
                        continue
                    if after is not None and entry == after[:2] and index <= after[2]:
                        continue
                    hits.append((entry, index, tkey))
        page = hits[:limit]
        self._load_dids(aid for (_, aid), _, _ in page)
        rkeys = self._rkeys(coll, [entry for entry, _, _ in page])
        items = [(LinkRecord(self._dids[entry[1]], collection, rkey), self._target_name(tkey))
                 for (entry, _, tkey), rkey in zip(page, rkeys)]
        next_cursor = None
        if len(hits) > limit:
            (sk, aid), index, _ = page[-1]
            next_cursor = base64.urlsafe_b64encode(_ITEM_CURSOR.pack(sk, aid, index)).decode().rstrip("=")
        return items, next_cursor

    def _forward_links(self, coll: int, entries: list[Entry]) -> dict[Entry, list[tuple[int, bytes]]]:
        """The forward links of some records of one collection, by (sort key, account)."""
        out: dict[Entry, list[tuple[int, bytes]]] = {}
        for start in range(0, len(entries), 300):
            part = entries[start:start + 300]
            values = ",".join("(?,?,?)" for _ in part)
            params = [x for sk, aid in part for x in (sk, aid, coll)]
            # A join from the keys, not `(sk, aid, coll) IN (VALUES ...)`: SQLite 3.40 runs that
            # as a scan of the whole forward index (165 ms for 300 keys on a 2M-event store,
            # 0.6 ms this way).
            for sk, aid, links in self.conn.execute(
                    f"WITH k(sk, aid, coll) AS (VALUES {values}) SELECT f.sk, f.aid, f.links FROM k "
                    "CROSS JOIN fwd f ON f.sk = k.sk AND f.aid = k.aid AND f.coll = k.coll", params):
                if links is not None:
                    out[(sk, aid)] = decode_links(links)
        return out

    def _target_name(self, tkey: bytes) -> str:
        return decode_target(tkey, self._did, self._coll_name)

    # ------------------------------------------------------------ records and state

    def record(self, uri: str) -> dict[str, Any] | None:
        """A live record by at-uri, or None (unknown, deleted, or its account inactive).

        Always {uri, rev, links, bodyKept}: the forward index holds every record's rev and
        links. With the body (the body_collections setting) also cid, indexedAt and value;
        those are stored only with bodies (a CID for every like would cost ~36 bytes each).
        """
        parts = split_target(uri)
        if parts is None:
            return None
        return self._read(lambda: self._record(uri, *parts))

    def _record(self, uri: str, did: str, collection: str, rkey: str) -> dict[str, Any] | None:
        aid = self._aid(did)
        coll = self._coll_id(collection)
        if aid is None or coll is None or aid in self.hidden:
            return None
        sk = tid_to_int(rkey)
        if sk is None:
            row = self.conn.execute("SELECT sk FROM alias WHERE aid=? AND coll=? AND rkey=?",
                                    (aid, coll, rkey)).fetchone()
            if row is None:
                return None
            sk = row[0]
        row = self.conn.execute("SELECT rev, links FROM fwd WHERE sk=? AND aid=? AND coll=?",
                                (sk, aid, coll)).fetchone()
        if row is None or row[1] is None:  # never seen, or a tombstone (deleted)
            return None
        rev, links = row
        out: dict[str, Any] = {"uri": uri}
        body = self.conn.execute("SELECT cid, indexed_us, data FROM body WHERE sk=? AND aid=? AND coll=?",
                                 (sk, aid, coll)).fetchone()
        if body is not None:
            stored_cid, indexed_us, data = body
            value, cid = self._bodies.read(sk, collection, stored_cid, indexed_us, data, self._target_name)
            if cid is not None:  # the lexicon: absent when Jetstream sent none
                out["cid"] = cid
            out["indexedAt"] = _iso(indexed_us)
            out["value"] = orjson.loads(value)
        out["rev"] = int_to_tid(rev + sk)  # stored relative to the sort key (store/writer.py)
        out["links"] = [{"path": path, "target": self._target_name(tkey)}
                        for path, tkey in ((self._source_name(sid)[1], tkey) for sid, tkey in decode_links(links))
                        if not is_derived(path)]  # smalldp's own views, not fields of the record
        out["bodyKept"] = body is not None
        return out

    def actor_state(self, did: str) -> dict[str, Any] | None:
        """Account state of a DID: {did, active, status, handle}, or None if never seen."""
        def read() -> dict[str, Any] | None:
            row = self.conn.execute("SELECT active, status, handle FROM actor WHERE did=?", (did,)).fetchone()
            if row is None:
                return None
            return {"did": did, "active": bool(row[0]), "status": row[1], "handle": row[2]}
        return self._read(read)

    def stats(self) -> dict[str, Any]:
        """Cursor, live links, runs and actor counts."""
        def read() -> dict[str, Any]:
            meta = dict(self.conn.execute("SELECT k, v FROM meta WHERE k IN ('cursor', 'links')"))
            return {
                "cursor": meta.get("cursor"),
                "links": meta.get("links", 0),
                "runs": self._run_count,
                "inactive_accounts": len(self.hidden),
            }
        return self._read(read)

    def overview(self) -> dict[str, int | None]:
        """Cheap store-wide figures (for the JSON hello at /): accounts (max account ID),
        live records and links (the writer's counters), backlink chunks over all runs,
        runs, inactive accounts, and the first and last committed event's time_us."""
        def read() -> dict[str, int | None]:
            meta: dict[str, Any] = dict(self.conn.execute(
                "SELECT k, v FROM meta WHERE k IN ('cursor', 'links', 'records', 'started_at')"))
            accounts = self.conn.execute("SELECT max(aid) FROM actor").fetchone()[0]
            blocks = self.conn.execute("SELECT sum(blocks) FROM run").fetchone()[0]

            def number(value: Any) -> int | None:
                return None if value is None else int(value)
            return {"accounts": accounts or 0, "records": number(meta.get("records")),
                    "links": number(meta.get("links")) or 0, "blocks": blocks or 0, "runs": self._run_count,
                    "inactive_accounts": len(self.hidden), "started_at": number(meta.get("started_at")),
                    "cursor": number(meta.get("cursor"))}
        return self._read(read)


def _decode_text_cursor(cursor: str) -> str:
    """Inverse of the many-to-many cursor (the last subject, base64url); raises BadCursor."""
    try:
        subject = base64.b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4),
                                   altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeError):
        raise BadCursor("invalid cursor") from None
    # Any text orders the groups; only what no group can be named is refused. (Not "is a
    # link": a store written before URI normalization may hold targets that no longer are.)
    if not subject or "\x00" in subject:
        raise BadCursor("invalid cursor")
    return subject


def _decode_item_cursor(cursor: str) -> tuple[int, int, int]:
    """Inverse of the getManyToMany cursor: (sort key, account, link index); raises BadCursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        sk, aid, index = _ITEM_CURSOR.unpack(raw)
    except (ValueError, struct.error):
        raise BadCursor("invalid cursor") from None
    return sk, aid, index


def _iso(time_us: int) -> str:
    moment = datetime.datetime.fromtimestamp(time_us / 1e6, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_us % 1_000_000 // 1000:03d}Z"

