"""Plumbing shared by the DataPlane queries (store/dataplane/): one request's chunk memo,
prefetching several sources of a target in one query, tallies of live entries and actors
(from chunks, or from per-run summaries for big keys, store/summaries.py), newest-first
walks without inactive accounts, pages and their cursors, and turning index keys back
into at-uris.

Every query module builds on :class:`DataPlaneBase`; the one method here is what several
families share: an actor's records of one author-linked collection (``authored``).
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Callable, Iterable, Iterator, TypeVar

from pyroaring import BitMap

from smalldp.derived import AUTHOR, FOLLOW, OUT_SUBJECT
from smalldp.store.summaries import BIG_KEY_CHUNKS, Key, RunSummary, SummaryCache
from smalldp.store.encoding import Entry, decode_links, did_key, split_target
from smalldp.store.reader import BadCursor, Reader, _Chunk, decode_cursor, encode_cursor
from smalldp.tid import int_to_tid, tid_to_int

_TIMELINE_CURSOR = struct.Struct(">qIB")
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
        # Chunks fetched during one request, by (target key, source): a request about 25
        # targets asks for the viewer's follows 25 times. Cleared at every read.
        self._memo: dict[tuple[bytes, int], list[_Chunk]] = {}

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
        self._memo = {}
        try:
            return super()._read(fn)
        finally:
            self._memo = {}

    def _chunks(self, tkey: bytes, sid: int) -> list[_Chunk]:
        chunks = self._memo.get((tkey, sid))
        if chunks is None:
            chunks = self._memo[(tkey, sid)] = super()._chunks(tkey, sid)
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
               dids: BitMap | None = None) -> tuple[int, BitMap]:
        """Live entries and live actors of a key (only actors in ``dids``, if given).

        Big keys are answered from per-run summaries (store/summaries.py), others from
        their chunks; both subtract inactive accounts the same way."""
        sid = self._source_id(collection, path)
        if sid is None or tkey is None:
            return 0, BitMap()
        key = (tkey, sid)
        if not self._summaries.is_big(key) or key in self._memo:
            return self._count_chunks(self._chunks(tkey, sid), dids)
        hidden = self.hidden
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
            marks = ",".join(str(run) for run in missing)  # integers only
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
        # Big keys are read from their summaries, not fetched whole.
        wanted = {sid for sid in sids if sid is not None and not self._summaries.is_big((tkey, sid))}
        if not wanted:
            return
        found: dict[int, list[_Chunk]] = {sid: [] for sid in wanted}
        marks = ",".join(str(sid) for sid in wanted)  # integers only
        for sid, run, lo, data in self.conn.execute(
                f"SELECT sid, run, lo, data FROM bl WHERE run IN ({self._runs}) AND tkey=? AND sid IN ({marks})",
                (tkey,)):
            found[sid].append(_Chunk(run, lo, data))
        for sid, chunks in found.items():
            self._memo[(tkey, sid)] = chunks
            self._note_size((tkey, sid), chunks)

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

    def _newest_of(self, chunks: list[_Chunk], aid: int) -> int | None:
        """The newest sort key among entries of account ``aid`` (chunk bitmaps skip the rest)."""
        best: int | None = None
        for chunk in chunks:
            if aid in chunk.header.bitmap:
                for sk, a in chunk.entries():
                    if a == aid and (best is None or sk > best):
                        best = sk
                        break  # entries are newest first
        return best

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
        """The links of a live record (None when it is not live)."""
        row = self.conn.execute("SELECT links FROM fwd WHERE sk=? AND aid=? AND coll=?", (sk, aid, coll)).fetchone()
        return None if row is None or row[0] is None else decode_links(row[0])

    def _link_target(self, links: list[tuple[int, bytes]], collection: str, path: str) -> bytes | None:
        sid = self._source_id(collection, path)
        for s, tkey in links:
            if s == sid:
                return tkey
        return None

    def _follow_set(self, aid: int) -> BitMap:
        """The active accounts ``aid`` follows: a union of its reverse follow chunks' bitmaps."""
        return self._tally(did_key(aid), FOLLOW, OUT_SUBJECT)[1]
