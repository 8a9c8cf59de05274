"""Plumbing shared by the DataPlane queries (store/dataplane/): the snapshot memo,
prefetching several sources of a target in one query, tallies of live entries and actors
(from chunks, or from per-run summaries for big keys, store/summaries.py), newest-first
walks without inactive accounts, pages and their cursors, and turning index keys back
into at-uris.

Every query module builds on :class:`DataPlaneBase`; the one method here is what several
families share: an actor's records of one author-linked collection (``authored``).

**One record per (account, subject).**  The reference's indexer keeps one follow, like,
repost, block, list block and list item per pair (unique constraints on ``follow``
(creator, subjectDid), ``like`` / ``repost`` (creator, subject), ``actor_block``
(creator, subjectDid), ``list_block`` (creator, subjectUri), ``list_item`` (listUri,
subjectDid)): the first it indexed.  A later one goes to ``duplicate_record`` and is seen
nowhere; when the kept one is deleted, the duplicate indexed first takes its place.  So
lists of such records name each pair once.  smalldp keeps every live record in the index
and picks at read time: the pair's *oldest live* record by rkey (the one the reference
indexed first whenever records are indexed in the order their rkeys were minted; records
of an account whose rkeys are not TIDs sort below all TIDs).  The walks here
(``_first_page``, ``_is_first``, ``_oldest_of``) do it from what a key already holds:
the accounts with two live entries or more under a key (``_repeated``: from the per-run
summaries of a big key, else from the chunk headers' bitmaps and repeat counts) are the
only ones whose entries need a second look: an entry of such an account is its first
unless a chunk of the key below it holds the account too (the chunk bitmaps answer for
chunks wholly below; only a chunk straddling the entry's sort key is decoded).  A pair's
record (``_first_of``) is found from the lowest chunk of each run whose bitmap holds the
account.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any, Callable, Iterable, Iterator, TypeVar

from pyroaring import BitMap

from smalldp.derived import AUTHOR, FOLLOW, OUT_SUBJECT
from smalldp.store.summaries import BIG_KEY_CHUNKS, Key, RunSummary, SummaryCache
from smalldp.store.encoding import Entry, decode_links, did_key, split_target
from smalldp.store.reader import BadCursor, Reader, _Chunk, decode_cursor, encode_cursor
from smalldp.store.runfilter import key_hash, plan_reads
from smalldp.tid import int_to_tid, tid_to_int

_TIMELINE_CURSOR = struct.Struct(">qIB")
# Newer duplicates (an account's second like of one post, ...) a one-per-account page
# skips at most (``_first_page``); then the page ends, possibly short, with a cursor where
# it stopped. A skipped entry costs ~0.3 µs (the walk and two set lookups), so ~3 ms.
DUPLICATES_SKIP_MAX = 10_000
_UNSEEN = -(1 << 64)  # no sort key is this: "not looked up yet" in the _oldest memo
# Bounds of what one reader memoizes from a snapshot (DataPlaneBase.__init__): chunk bytes
# as stored (decoded entries take ~10x as much) and memoized values. A snapshot under live
# ingest lasts about a second and reaches a few MB at the AppView benchmark's load.
SNAPSHOT_MEMO_BYTES = 8 << 20
SNAPSHOT_MEMO_ITEMS = 200_000
PREFETCH_KEYS_MAX = 200  # target keys per prefetch query (SQLite's bound on parameters is far above)
FeedEntry = tuple[int, int, int]  # (sort key, author ID, kind: 0 post, 1 repost)
T = TypeVar("T")


def encode_feed_cursor(entry: FeedEntry) -> str:
    """An opaque cursor for a position in a feed."""
    return base64.urlsafe_b64encode(_TIMELINE_CURSOR.pack(*entry)).decode().rstrip("=")


def decode_feed_cursor(cursor: str) -> FeedEntry:
    """Inverse of encode_feed_cursor; raises BadCursor."""
    try:
        sk, aid, kind = _TIMELINE_CURSOR.unpack(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, struct.error):
        raise BadCursor("invalid cursor") from None
    return sk, aid, kind


class DataPlaneBase(Reader):
    """A Reader with the plumbing of the DataPlane queries (the query mixins build on it)."""

    def __init__(self, path: Any, *, summaries: SummaryCache | None = None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._summaries = summaries if summaries is not None else SummaryCache()
        # What the queries read and derive from one snapshot, kept while it lasts: the
        # writer commits about once a second (batch_ms), and the AppView asks about the
        # same keys again and again meanwhile (a view's RPCs come at once: its viewer's
        # follows, its posts' threads). All of it is a function of the snapshot, so an
        # answer is the same as without it; cleared when PRAGMA data_version says another
        # connection committed (_refresh), and when it grows past SNAPSHOT_MEMO_BYTES of
        # chunks or SNAPSHOT_MEMO_ITEMS values (a quiet store keeps its snapshot).
        # Chunks by (target key, source): a request about 25 targets asks for the
        # viewer's follows 25 times.
        self._memo: dict[tuple[bytes, int], list[_Chunk]] = {}
        self._memo_bytes = 0
        # per key, the accounts with two live entries or more under it, and per (key,
        # account) of those, the sort key of its oldest entry (None: none)
        self._repeats: dict[tuple[bytes, int], BitMap] = {}
        self._oldest: dict[tuple[bytes, int, int], int | None] = {}
        # per key, each chunk's ceiling: the floor of the next newer chunk of its run
        # (by id: the chunks are the memo's, alive as long as this; cleared together)
        self._ceilings: dict[tuple[bytes, int], dict[int, float]] = {}
        # thread gates by root key: (allow, receive time) (store/dataplane/gates.py)
        self._gates: dict[bytes, tuple[Any, int]] = {}
        # forward links and receive times of records by (sort key, account, collection):
        # a thread's gate checks ask for the same root, replies and follows many times
        self._links: dict[tuple[int, int, int], list[tuple[int, bytes]] | None] = {}
        self._received: dict[tuple[int, int, int], int | None] = {}
        # gates.py: per thread root, the posts naming it as their root; per (root, replier)
        # the earliest receive time of what lets the replier through the root's gate; per
        # post key, how many of its replies break their thread's gate
        self._thread_posts: dict[bytes, set[Entry]] = {}
        self._let_through: dict[tuple[bytes, int], int | None] = {}
        self._gated_counts: dict[tuple[bytes, int], int] = {}

    def _new_snapshot(self) -> None:
        """Forget everything memoized (it held for the snapshot it was read from)."""
        self._memo, self._repeats, self._oldest, self._ceilings, self._gates = {}, {}, {}, {}, {}
        self._links, self._received, self._thread_posts, self._let_through, self._gated_counts = {}, {}, {}, {}, {}
        self._memo_bytes = 0

    def _memo_items(self) -> int:
        return (len(self._memo) + len(self._oldest) + len(self._links) + len(self._received)
                + len(self._let_through) + len(self._gated_counts))

    def authored(self, actor: str, collection: str, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        """The actor's live records of a collection that links records to their author
        (smalldp.derived.AUTHOR_COLLECTIONS: lists, reposts, feed generators, starter
        packs, ...), newest first: getActorLists, getActorFeeds, getActorStarterPacks,
        getActorReposts."""
        after = decode_cursor(cursor) if cursor else None

        def read() -> tuple[list[str], str | None]:
            aid = self._active(actor)
            if aid is None:
                return [], None
            picked, next_cursor = self._page(self._live(self._of(aid, collection, AUTHOR), after), limit)
            return [self._uri(aid, collection, sk) for sk, _ in picked], next_cursor
        return self._read(read)

    # ------------------------------------------------------------ plumbing

    def _read(self, fn: Callable[[], T]) -> T:
        try:
            return super()._read(fn)
        finally:
            if self._memo_bytes > SNAPSHOT_MEMO_BYTES or self._memo_items() > SNAPSHOT_MEMO_ITEMS:
                self._new_snapshot()

    def _refresh(self) -> None:
        version = self._version
        super()._refresh()
        if self._version != version:  # another connection committed: a new snapshot
            self._new_snapshot()

    def _chunks(self, tkey: bytes, sid: int) -> list[_Chunk]:
        chunks = self._memo.get((tkey, sid))
        if chunks is None:
            chunks = self._memo[(tkey, sid)] = super()._chunks(tkey, sid)
            self._memo_bytes += sum(len(chunk.data) for chunk in chunks)
            self._note_size((tkey, sid), chunks)
        return chunks

    def _note_size(self, key: Key, chunks: list[_Chunk]) -> None:
        if len(chunks) >= BIG_KEY_CHUNKS and not self._summaries.is_big(key):
            per_run: dict[int, int] = {}
            for chunk in chunks:
                per_run[chunk.run] = per_run.get(chunk.run, 0) + 1
            if max(per_run.values()) >= BIG_KEY_CHUNKS:
                self._summaries.mark_big(key)

    def _tally(self, tkey: bytes | None, collection: str, path: str,
               dids: BitMap | None = None, inactive: bool = False) -> tuple[int, BitMap]:
        """Live entries and live actors of a key (only actors in ``dids``, if given).

        Big keys are answered from per-run summaries (store/summaries.py), others from
        their chunks; both subtract inactive accounts the same way (``inactive``: count
        them too, as the reference's aggregates do, but for deleted accounts whose rows
        wait for the purge sweep: ``gone``)."""
        sid = self._source_id(collection, path)
        if sid is None or tkey is None:
            return 0, BitMap()
        key = (tkey, sid)
        if not self._summaries.is_big(key) or key in self._memo:
            return self._count_chunks(self._chunks(tkey, sid), dids, inactive)
        hidden = self.gone if inactive else self.hidden
        total = 0
        actors = BitMap()
        for summary in self._run_summaries(key):
            if dids is not None:
                keep = summary.actors & dids
                if hidden:
                    keep -= hidden
                extra = summary.extra
                total += len(keep) + (sum(extra.get(a, 0) for a in keep) if extra else 0)
                actors |= keep
                continue
            total += summary.count
            if hidden:
                gone = summary.actors & hidden
                if gone:
                    total -= len(gone) + sum(summary.extra.get(a, 0) for a in gone)
            actors |= summary.actors
        if hidden:
            actors -= hidden
        return total, actors

    def _run_summaries(self, key: Key) -> list[RunSummary]:
        cache = self._summaries
        out: list[RunSummary] = []
        missing: list[int] = []
        for run, gen in self._run_gens.items():
            summary = cache.get(run, gen, key)
            if summary is None:
                missing.append(run)
            else:
                out.append(summary)
        if missing:
            blobs: dict[int, list[bytes]] = {run: [] for run in missing}
            h = key_hash(*key)
            asked = [run for run in missing if (f := self._filters.get(run)) is None or h in f]
            if asked:
                marks = ",".join(str(run) for run in asked)  # integers only
                for run, data in self.conn.execute(
                        f"SELECT run, data FROM bl WHERE run IN ({marks}) AND tkey=? AND sid=?", key):
                    blobs[run].append(data)
            for run, chunks in blobs.items():
                summary = RunSummary.of(chunks)
                cache.put(run, self._run_gens[run], key, summary)
                out.append(summary)
        return out

    def _prefetch(self, tkey: bytes | None, sids: Iterable[int | None]) -> None:
        """Fetch the chunks of several sources of one target in one query."""
        if tkey is None:
            return
        # Big keys are read from their summaries, not fetched whole; memoized ones are here.
        wanted = {sid for sid in sids if sid is not None and not self._summaries.is_big((tkey, sid))
                  and (tkey, sid) not in self._memo}
        if not wanted:
            return
        found: dict[int, list[_Chunk]] = {sid: [] for sid in wanted}
        marks = ",".join(str(sid) for sid in wanted)  # integers only
        for sid, run, lo, data in self.conn.execute(
                f"SELECT sid, run, lo, data FROM bl WHERE run IN ({self._runs_for(tkey, wanted)}) AND tkey=? "
                f"AND sid IN ({marks})",
                (tkey,)):
            found[sid].append(_Chunk(run, lo, data))
            self._memo_bytes += len(data)
        for sid, chunks in found.items():
            self._memo[(tkey, sid)] = chunks
            self._note_size((tkey, sid), chunks)

    def _prefetch_many(self, tkeys: Iterable[bytes | None], sids: Iterable[int | None]) -> None:
        """``_prefetch`` of several targets, PREFETCH_KEYS_MAX of them a query: a request
        about 25 posts asks SQLite once instead of 25 times."""
        sid_list = [sid for sid in sids if sid is not None]
        wanted: dict[bytes, set[int]] = {}
        for tkey in tkeys:
            if tkey is None or tkey in wanted:
                continue
            missing = {sid for sid in sid_list if (tkey, sid) not in self._memo
                       and not self._summaries.is_big((tkey, sid))}
            if missing:
                wanted[tkey] = missing
        keys = list(wanted)
        marks = ",".join({str(sid) for missing in wanted.values() for sid in missing})  # integers only
        for start in range(0, len(keys), PREFETCH_KEYS_MAX):
            group = keys[start:start + PREFETCH_KEYS_MAX]
            found: dict[tuple[bytes, int], list[_Chunk]] = {
                (tkey, sid): [] for tkey in group for sid in wanted[tkey]}
            # Each run asked only for the targets its filter may hold (a 3-4x smaller
            # cost in SQLite than every run asked for every target).
            for runs, tkeys in plan_reads(self._filters, {tkey: wanted[tkey] for tkey in group}):
                for tkey, sid, run, lo, data in self.conn.execute(
                        f"SELECT tkey, sid, run, lo, data FROM bl WHERE run IN ({runs}) "
                        f"AND tkey IN ({','.join('?' * len(tkeys))}) AND sid IN ({marks})", tkeys):
                    chunks = found.get((tkey, sid))
                    if chunks is not None:  # not a big key, nor a source this key did not miss
                        chunks.append(_Chunk(run, lo, data))
                        self._memo_bytes += len(data)
            for key, chunks in found.items():
                self._memo[key] = chunks
                self._note_size(key, chunks)

    def _active(self, did: str) -> int | None:
        """The account ID of an active account, else None."""
        aid = self._aid(did)
        return None if aid is None or aid in self.hidden else aid

    def _keyed(self, tkey: bytes | None, collection: str, path: str) -> list[_Chunk]:
        sid = self._source_id(collection, path)
        return [] if sid is None or tkey is None else self._chunks(tkey, sid)

    def _of(self, aid: int, collection: str, path: str) -> list[_Chunk]:
        """Chunks of derived links filed under an account (smalldp.derived)."""
        return self._keyed(did_key(aid), collection, path)

    def _live(self, chunks: list[_Chunk], after: Entry | None = None) -> Iterator[Entry]:
        """Entries newest first, past ``after``, without inactive accounts' entries."""
        hidden = self.hidden
        for entry in self._walk(chunks, after, False):
            if entry[1] not in hidden:
                yield entry

    def _page(self, entries: Iterator[Entry], limit: int) -> tuple[list[Entry], str | None]:
        picked: list[Entry] = []
        for entry in entries:
            if len(picked) == limit:
                return picked, encode_cursor(picked[-1])
            picked.append(entry)
        return picked, None

    def _rkey(self, aid: int, coll: int, sk: int) -> str:
        if sk >= 0:
            return int_to_tid(sk)
        return self.conn.execute("SELECT rkey FROM alias WHERE aid=? AND coll=? AND sk=?", (aid, coll, sk)).fetchone()[0]

    def _uri(self, aid: int, collection: str, sk: int) -> str:
        coll = self._coll_id(collection)
        assert coll is not None  # an entry of the collection exists
        return f"at://{self._did(aid)}/{collection}/{self._rkey(aid, coll, sk)}"

    # ------------------------------------------------------------ one record per pair

    def _oldest_of(self, chunks: list[_Chunk], aid: int) -> int | None:
        """The oldest sort key among entries of account ``aid`` (None: it has none): in
        each run the lowest chunk whose bitmap holds it, then the oldest of those."""
        lowest: dict[int, _Chunk] = {}
        for chunk in chunks:
            if aid in chunk.header.bitmap:
                best = lowest.get(chunk.run)
                if best is None or chunk.floor < best.floor:
                    lowest[chunk.run] = chunk
        found: int | None = None
        for chunk in lowest.values():
            for sk, a in reversed(chunk.entries()):  # oldest first
                if a == aid:
                    if found is None or sk < found:
                        found = sk
                    break
        return found

    def _repeated(self, tkey: bytes, sid: int) -> BitMap:
        """The accounts with two live entries or more under a key (in one run or across
        runs), memoized per snapshot: from the per-run summaries of a big key (cached
        across requests), else from the headers of its chunks."""
        key = (tkey, sid)
        found = self._repeats.get(key)
        if found is None:
            seen, found = BitMap(), BitMap()
            if self._summaries.is_big(key):
                for summary in self._run_summaries(key):
                    found |= seen & summary.actors
                    seen |= summary.actors
                    found.update(summary.extra)
            else:
                for chunk in self._chunks(tkey, sid):
                    header = chunk.header
                    found |= seen & header.bitmap
                    seen |= header.bitmap
                    found.update(header.extra)
            self._repeats[key] = found
        return found

    def _oldest_entry(self, tkey: bytes, sid: int, aid: int) -> int | None:
        """``_oldest_of`` the key's chunks, memoized per snapshot."""
        memo = (tkey, sid, aid)
        oldest = self._oldest.get(memo, _UNSEEN)
        if oldest == _UNSEEN:
            key = (tkey, sid)
            if key not in self._memo and self._summaries.is_big(key) \
                    and not any(aid in summary.actors for summary in self._run_summaries(key)):
                oldest = None  # a big key's run summaries say it has no entry: no chunk read
            else:
                oldest = self._oldest_of(self._chunks(tkey, sid), aid)
            self._oldest[memo] = oldest
        return oldest

    def _is_first(self, tkey: bytes, sid: int, sk: int, aid: int) -> bool:
        """Whether the live entry (sk, aid) is its account's oldest under the key: the one
        record of the pair the reference lists (module docstring)."""
        return aid not in self._repeated(tkey, sid) or not self._has_older(tkey, sid, sk, aid)

    def _has_older(self, tkey: bytes, sid: int, sk: int, aid: int) -> bool:
        """Whether account ``aid`` has a live entry under the key with a sort key below
        ``sk``: a chunk wholly below ``sk`` whose bitmap holds it says so without being
        decoded; only chunks straddling ``sk`` are (once per snapshot)."""
        chunks = self._chunks(tkey, sid)
        found = self._ceilings.get((tkey, sid))
        if found is None:
            ceilings: dict[int, float] = {}  # memoized once complete (the memo outlives a request that fails)
            by_run: dict[int, list[_Chunk]] = {}
            for chunk in chunks:
                by_run.setdefault(chunk.run, []).append(chunk)
            for run_chunks in by_run.values():
                run_chunks.sort(key=lambda c: c.floor)
                for older, newer in zip(run_chunks, run_chunks[1:] + [None]):
                    ceilings[id(older)] = math.inf if newer is None else newer.floor
            self._ceilings[(tkey, sid)] = ceilings
        else:
            ceilings = found
        straddling: list[_Chunk] = []
        for chunk in chunks:
            if chunk.floor > sk or aid not in chunk.header.bitmap:
                continue  # all newer than sk, or without the account
            if ceilings[id(chunk)] < sk:
                return True  # every entry of the chunk is at most its ceiling: below sk
            straddling.append(chunk)
        return any(a == aid and s < sk for chunk in straddling for s, a in chunk.entries())

    def _first_of(self, tkey: bytes | None, collection: str, path: str, aid: int | None) -> int | None:
        """The sort key of account ``aid``'s oldest live entry under a key, or None."""
        sid = self._source_id(collection, path)
        if sid is None or tkey is None or aid is None:
            return None
        return self._oldest_entry(tkey, sid, aid)

    def _first_page(self, tkey: bytes | None, collection: str, path: str, after: Entry | None,
                    limit: int) -> tuple[list[Entry], str | None]:
        """A page of a key's live entries newest first, one per account: each account at
        its oldest live entry (``_is_first``), strictly past ``after``. At most
        DUPLICATES_SKIP_MAX newer duplicates are skipped per page: then it ends where it
        stopped, with a cursor, possibly short (even empty)."""
        sid = self._source_id(collection, path)
        if sid is None or tkey is None:
            return [], None
        entries = self._live(self._chunks(tkey, sid), after)
        repeated = self._repeated(tkey, sid)
        if not repeated:
            return self._page(entries, limit)
        picked: list[Entry] = []
        skipped = 0
        for entry in entries:
            if entry[1] in repeated and self._has_older(tkey, sid, entry[0], entry[1]):
                skipped += 1
                if skipped >= DUPLICATES_SKIP_MAX:
                    return picked, encode_cursor(entry)
                continue
            if len(picked) == limit:
                return picked, encode_cursor(picked[-1])
            picked.append(entry)
        return picked, None

    def _sort_key(self, aid: int, coll: int, rkey: str) -> int | None:
        sk = tid_to_int(rkey)
        if sk is not None:
            return sk
        row = self.conn.execute("SELECT sk FROM alias WHERE aid=? AND coll=? AND rkey=?", (aid, coll, rkey)).fetchone()
        return None if row is None else row[0]

    def _record_key(self, uri: str) -> tuple[int, int, int] | None:
        """(sort key, account, collection) of a uri whose account is active, else None."""
        parts = split_target(uri)
        if parts is None:
            return None
        aid = self._active(parts[0])
        coll = self._coll_id(parts[1])
        if aid is None or coll is None:
            return None
        sk = self._sort_key(aid, coll, parts[2])
        return None if sk is None else (sk, aid, coll)

    def _links_of(self, sk: int, aid: int, coll: int) -> list[tuple[int, bytes]] | None:
        """The links of a live record (None when it is not live), memoized per snapshot
        (callers must not change the list)."""
        key = (sk, aid, coll)
        try:
            return self._links[key]
        except KeyError:
            pass
        row = self.conn.execute("SELECT links FROM fwd WHERE sk=? AND aid=? AND coll=?", key).fetchone()
        links = self._links[key] = None if row is None or row[0] is None else decode_links(row[0])
        return links

    def _links_many(self, keys: Iterable[tuple[int, int, int]]) -> None:
        """``_links_of`` of many records read ahead, PREFETCH_KEYS_MAX sort keys a query
        (what is not found is memoized as not live, as ``_links_of`` would)."""
        wanted = {key for key in keys if key not in self._links}
        sks = sorted({sk for sk, _, _ in wanted})
        for start in range(0, len(sks), PREFETCH_KEYS_MAX):
            part = sks[start:start + PREFETCH_KEYS_MAX]
            for sk, aid, coll, data in self.conn.execute(
                    f"SELECT sk, aid, coll, links FROM fwd WHERE sk IN ({','.join('?' * len(part))})", part):
                key = (sk, aid, coll)
                if key in wanted:
                    self._links[key] = None if data is None else decode_links(data)
                    wanted.discard(key)
        for key in wanted:
            self._links[key] = None

    def _link_target(self, links: list[tuple[int, bytes]], collection: str, path: str) -> bytes | None:
        sid = self._source_id(collection, path)
        for s, tkey in links:
            if s == sid:
                return tkey
        return None

    def _follow_set(self, aid: int, inactive: bool = False) -> BitMap:
        """The active accounts ``aid`` follows (``inactive``: and the inactive ones): a union
        of its reverse follow chunks' bitmaps."""
        return self._tally(did_key(aid), FOLLOW, OUT_SUBJECT, inactive=inactive)[1]
