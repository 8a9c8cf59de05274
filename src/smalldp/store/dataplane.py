"""The DataPlane queries an AppView asks (lexicons/DATAPLANE.md), as views of the index.

Everything here reads what the writer already keeps: backlink chunks (with their actor
bitmaps) for "who links to X", the derived author and reverse links (smalldp.derived)
for "what did X write / whom does X follow", the forward index for "what does this
record link to", the timeline buckets (store/timeline.py) for home timelines, and the
bodies table for record JSON. Set questions are bitmap intersections of chunk bitmaps
with a follow set; nothing joins.

Every method works in one read transaction (Reader._read) and bounds its work: pages
of at most 100, at most 100 values per array, descendant walks and timeline bucket
scans with fixed caps.
"""

from __future__ import annotations

import base64
import datetime
import heapq
import itertools
import struct
from typing import Any, Callable, Iterable, Iterator, TypeVar

import orjson
from pyroaring import BitMap

from smalldp.derived import (
    AUTHOR, BLOCK, FOLLOW, GENERATOR, LIST, LISTBLOCK, LISTITEM, MEDIA, NO_REPLY, OUT_SUBJECT, POST,
    PROFILE, REPOST, STARTERPACK, THREAD, VIDEO,
)
from smalldp.store import timeline
from smalldp.store.summaries import BIG_KEY_CHUNKS, Key, RunSummary, SummaryCache
from smalldp.store.encoding import (
    Entry, decode_links, did_key, key_account, key_did_account, key_record, split_target,
)
from smalldp.store.reader import BadCursor, Reader, _Chunk, _iso, decode_cursor, encode_cursor
from smalldp.tid import int_to_tid, tid_to_int

LIKE = "app.bsky.feed.like"
QUOTE_PATHS = (".embed.record.uri", ".embed.record.record.uri")
FEED_FILTERS = {  # filter -> post path, and whether reposts are in
    "posts_with_replies": (AUTHOR, True),
    "posts_no_replies": (NO_REPLY, True),
    "posts_and_author_threads": (THREAD, True),
    "posts_with_media": (MEDIA, False),
    "posts_with_video": (VIDEO, False),
}
THREAD_DESCENDANTS_MAX = 1000
TIMELINE_SEGMENTS_MAX = 4000  # segments read per timeline page (one per closed one-minute bucket)
LIST_BLOCKS_MAX = 1000  # an account's newest list blocks considered by relationships
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


class DataPlaneReader(Reader):
    """A Reader that also answers the DataPlane methods."""

    def __init__(self, path: Any, *, summaries: SummaryCache | None = None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._summaries = summaries if summaries is not None else SummaryCache()
        # Chunks fetched during one request, by (target key, source): a request about 25
        # targets asks for the viewer's follows 25 times. Cleared at every read.
        self._memo: dict[tuple[bytes, int], list[_Chunk]] = {}

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

    # ------------------------------------------------------------ records

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
        return {"uri": uri, "cid": cid or "", "record": record, "indexedAt": _iso(indexed_us),
                "createdAt": created if created_at is not None else None, "sortedAt": sorted_at}

    # ------------------------------------------------------------ interactions

    def interaction_counts(self, uris: list[str]) -> dict[str, list[int]]:
        """getInteractionCounts."""
        def read() -> dict[str, list[int]]:
            out: dict[str, list[int]] = {"likes": [], "reposts": [], "replies": [], "quotes": []}
            sources = [self._source_id(c, p) for c, p in ((LIKE, ".subject.uri"), (REPOST, ".subject.uri"),
                                                          (POST, ".reply.parent.uri"),
                                                          *((POST, q) for q in QUOTE_PATHS))]
            for uri in uris:
                tkey = self._target_key(uri)
                self._prefetch(tkey, sources)
                out["likes"].append(len(self._tally(tkey, LIKE, ".subject.uri")[1]))
                out["reposts"].append(len(self._tally(tkey, REPOST, ".subject.uri")[1]))
                out["replies"].append(self._tally(tkey, POST, ".reply.parent.uri")[0])
                out["quotes"].append(sum(self._tally(tkey, POST, p)[0] for p in QUOTE_PATHS))
            return out
        return self._read(read)

    def by_subject(self, subject: str, collection: str, paths: tuple[str, ...], limit: int,
                   cursor: str | None) -> tuple[list[str], str | None]:
        """getLikesBySubject / getRepostsBySubject / getQuotesBySubject: record uris, newest first."""
        after = decode_cursor(cursor) if cursor else None

        def read() -> tuple[list[str], str | None]:
            tkey = self._target_key(subject)
            streams = [self._live(self._keyed(tkey, collection, p), after) for p in paths]
            merged = heapq.merge(*streams, reverse=True) if len(streams) > 1 else streams[0]
            picked, next_cursor = self._page(_distinct(merged), limit)
            return [self._uri(aid, collection, sk) for sk, aid in picked], next_cursor
        return self._read(read)

    def actor_subjects(self, actor: str, collection: str, subjects: list[str]) -> list[str]:
        """getLikesByActorAndSubjects / getRepostsByActorAndSubjects."""
        def read() -> list[str]:
            aid = self._active(actor)
            out = []
            for subject in subjects:
                sk = None if aid is None else self._newest_of(
                    self._keyed(self._target_key(subject), collection, ".subject.uri"), aid)
                out.append("" if sk is None else self._uri(aid, collection, sk))  # type: ignore[arg-type]
            return out
        return self._read(read)

    def known_likers(self, viewer: str, subjects: list[str], limit: int) -> list[dict[str, Any]]:
        """getKnownLikers: per subject, likers the viewer follows."""
        def read() -> list[dict[str, Any]]:
            aid = self._active(viewer)
            follows = self._follow_set(aid) if aid is not None else BitMap()
            out = []
            for subject in subjects:
                likers = BitMap() if not follows else self._tally(
                    self._target_key(subject), LIKE, ".subject.uri", follows)[1]
                picked = list(likers[:limit]) if len(likers) > limit else list(likers)
                self._load_dids(picked)
                out.append({"subject": subject, "dids": [self._dids[a] for a in picked], "count": len(likers)})
            return out
        return self._read(read)

    # ------------------------------------------------------------ graph

    def followers(self, actor: str, limit: int, cursor: str | None) -> tuple[list[dict[str, str]], str | None]:
        """getFollowers: follow records of the actor, newest first."""
        after = decode_cursor(cursor) if cursor else None

        def read() -> tuple[list[dict[str, str]], str | None]:
            aid = self._active(actor)
            if aid is None:
                return [], None
            picked, next_cursor = self._page(self._live(self._keyed(did_key(aid), FOLLOW, ".subject"), after), limit)
            return [{"uri": self._uri(a, FOLLOW, sk), "actorDid": self._did(a), "subjectDid": actor}
                    for sk, a in picked], next_cursor
        return self._read(read)

    def out_edges(self, actor: str, collection: str, limit: int,
                  cursor: str | None) -> tuple[list[dict[str, str]], str | None]:
        """getFollows / getBlocks: the actor's follow or block records, newest first."""
        after = decode_cursor(cursor) if cursor else None

        def read() -> tuple[list[dict[str, str]], str | None]:
            aid = self._active(actor)
            if aid is None:
                return [], None
            picked, next_cursor = self._page(self._live(self._of(aid, collection, OUT_SUBJECT), after), limit)
            coll = self._coll_id(collection)
            return [{"uri": f"at://{actor}/{collection}/{self._rkey(aid, coll, sk)}",  # type: ignore[arg-type]
                     "actorDid": actor, "subjectDid": self._did(subject)} for sk, subject in picked], next_cursor
        return self._read(read)

    def follows_following(self, viewer: str, targets: list[str]) -> list[dict[str, Any]]:
        """getFollowsFollowing: per target, accounts the viewer follows that follow it."""
        def read() -> list[dict[str, Any]]:
            aid = self._active(viewer)
            follows = self._follow_set(aid) if aid is not None else BitMap()
            out = []
            for target in targets:
                target_aid = self._active(target)
                known = BitMap()
                if follows and target_aid is not None:
                    known = self._tally(did_key(target_aid), FOLLOW, ".subject", follows)[1]
                self._load_dids(known)
                out.append({"targetDid": target, "dids": [self._dids[a] for a in known]})
            return out
        return self._read(read)

    def _edge_uri(self, aid: int | None, collection: str, subject: int | None) -> str:
        """The newest follow or block record of ``aid`` whose subject is ``subject``, or ""."""
        if aid is None or subject is None:
            return ""
        sk = self._newest_of(self._of(aid, collection, OUT_SUBJECT), subject)
        if sk is None:
            return ""
        coll = self._coll_id(collection)
        return f"at://{self._did(aid)}/{collection}/{self._rkey(aid, coll, sk)}"  # type: ignore[arg-type]

    def actor_follows_actors(self, actor: str, targets: list[str]) -> list[str]:
        """getActorFollowsActors."""
        def read() -> list[str]:
            aid = self._active(actor)
            return [self._edge_uri(aid, FOLLOW, self._active(t)) for t in targets]
        return self._read(read)

    def relationships(self, viewer: str, targets: list[str]) -> list[dict[str, str]]:
        """getRelationships."""
        def read() -> list[dict[str, str]]:
            v = self._active(viewer)
            out = []
            for target in targets:
                t = self._active(target)
                if v is not None and t is not None:
                    self._prefetch_edges(t)
                if v is None or t is None:
                    out.append({"targetDid": target, "following": "", "followedBy": "", "blocking": "",
                                "blockedBy": "", "blockingByList": "", "blockedByList": ""})
                    continue
                out.append({"targetDid": target, "following": self._edge_uri(v, FOLLOW, t),
                            "followedBy": self._edge_uri(t, FOLLOW, v), "blocking": self._edge_uri(v, BLOCK, t),
                            "blockedBy": self._edge_uri(t, BLOCK, v), "blockingByList": self._list_block(v, t),
                            "blockedByList": self._list_block(t, v)})
            return out
        return self._read(read)

    def _prefetch_edges(self, aid: int) -> None:
        """One query for an account's follows, blocks, list blocks and list memberships."""
        self._prefetch(did_key(aid), [self._source_id(c, p) for c, p in (
            (FOLLOW, OUT_SUBJECT), (BLOCK, OUT_SUBJECT), (LISTBLOCK, AUTHOR), (LISTITEM, ".subject"))])

    def block_existence(self, pairs: list[tuple[str, str]]) -> list[bool]:
        """getBlockExistence: a block either way, direct or through a list."""
        def read() -> list[bool]:
            out = []
            for a_did, b_did in pairs:
                a, b = self._active(a_did), self._active(b_did)
                for aid in (a, b):
                    if aid is not None and (did_key(aid), -1) not in self._memo:
                        self._prefetch_edges(aid)
                out.append(a is not None and b is not None and bool(
                    self._edge_uri(a, BLOCK, b) or self._edge_uri(b, BLOCK, a)
                    or self._list_block(a, b) or self._list_block(b, a)))
            return out
        return self._read(read)

    def _list_block(self, blocker: int, blocked: int) -> str:
        """The blocker's listblock of a list that contains ``blocked``, or ""."""
        for sk, list_key in self._blocked_lists(blocker):
            if self._member_item(list_key, blocked):
                return self._uri(blocker, LISTBLOCK, sk)
        return ""

    def _blocked_lists(self, blocker: int) -> list[tuple[int, bytes]]:
        """(listblock sort key, list key) of an account's newest list blocks (memoized per request)."""
        memo_key = (did_key(blocker), -1)
        cached = self._memo.get(memo_key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        listblock = self._coll_id(LISTBLOCK)
        found: list[tuple[int, bytes]] = []
        for sk, _ in itertools.islice(self._live(self._of(blocker, LISTBLOCK, AUTHOR)), LIST_BLOCKS_MAX):
            links = self._links_of(sk, blocker, listblock)  # type: ignore[arg-type]
            list_key = self._link_target(links or [], LISTBLOCK, ".subject")
            if list_key is not None and key_record(list_key) is not None:
                found.append((sk, list_key))
        self._memo[memo_key] = found  # type: ignore[assignment]
        return found

    def _member_item(self, list_key: bytes, member: int) -> str:
        """The live listitem, owned by the list's author, putting ``member`` in the list, or ""."""
        owner = key_account(list_key)
        listitem = self._coll_id(LISTITEM)
        if owner is None or owner in self.hidden or listitem is None:
            return ""
        found: list[int] = []
        for chunk in self._keyed(did_key(member), LISTITEM, ".subject"):
            if owner in chunk.header.bitmap:
                found += [sk for sk, a in chunk.entries() if a == owner]
        for sk in sorted(found, reverse=True):  # the newest listitem when there are several
            if self._link_target(self._links_of(sk, owner, listitem) or [], LISTITEM, ".list") == list_key:
                return self._uri(owner, LISTITEM, sk)
        return ""

    def counts_for_users(self, dids: list[str]) -> dict[str, list[int]]:
        """getCountsForUsers."""
        def read() -> dict[str, list[int]]:
            names = ("followers", "following", "posts", "reposts", "lists", "feeds", "starterPacks")
            out: dict[str, list[int]] = {name: [] for name in names}
            for did in dids:
                aid = self._active(did)
                if aid is None:
                    for name in names:
                        out[name].append(0)
                    continue
                self._prefetch(did_key(aid), [self._source_id(c, p) for c, p in (
                    (FOLLOW, ".subject"), (FOLLOW, OUT_SUBJECT), (POST, AUTHOR), (REPOST, AUTHOR), (LIST, AUTHOR),
                    (GENERATOR, AUTHOR), (STARTERPACK, AUTHOR))])
                out["followers"].append(len(self._tally(did_key(aid), FOLLOW, ".subject")[1]))
                out["following"].append(len(self._follow_set(aid)))
                for name, coll in (("posts", POST), ("reposts", REPOST), ("lists", LIST), ("feeds", GENERATOR),
                                   ("starterPacks", STARTERPACK)):
                    out[name].append(self._tally(did_key(aid), coll, AUTHOR)[0])
            return out
        return self._read(read)

    # ------------------------------------------------------------ actors

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
                row = self.conn.execute("SELECT did FROM actor WHERE handle=? ORDER BY id_seq IS NULL, id_seq DESC, "
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

    # ------------------------------------------------------------ feeds

    def author_feed(self, actor: str, limit: int, cursor: str | None,
                    filter: str) -> tuple[list[dict[str, str]], str | None]:
        """getAuthorFeed."""
        after = decode_feed_cursor(cursor) if cursor else None
        post_path, with_reposts = FEED_FILTERS[filter]

        def read() -> tuple[list[dict[str, str]], str | None]:
            aid = self._active(actor)
            if aid is None:
                return [], None
            streams = [self._feed_stream(self._of(aid, POST, post_path), timeline.KIND_POST, after)]
            if with_reposts:
                streams.append(self._feed_stream(self._of(aid, REPOST, AUTHOR), timeline.KIND_REPOST, after))
            items: list[dict[str, str]] = []
            last: FeedEntry | None = None
            for entry in heapq.merge(*streams, reverse=True):
                if len(items) == limit:
                    return items, encode_feed_cursor(last)  # type: ignore[arg-type]
                item = self._feed_item(entry)
                if item is not None:
                    items.append(item)
                    last = entry
            return items, None
        return self._read(read)

    def _feed_stream(self, chunks: list[_Chunk], kind: int, after: FeedEntry | None) -> Iterator[FeedEntry]:
        # Derived author links: every entry's account is the author, so the cursor's sort
        # key and kind place it (entries of one key never share a sort key).
        start = None if after is None else ((after[0] + 1, 0) if kind < after[2] else (after[0], 0))
        for sk, aid in self._live(chunks, start):
            yield sk, aid, kind

    def _feed_item(self, entry: FeedEntry) -> dict[str, str] | None:
        """A feed item for a post or repost entry, or None when the record is not live."""
        sk, aid, kind = entry
        collection = POST if kind == timeline.KIND_POST else REPOST
        coll = self._coll_id(collection)
        if coll is None or aid in self.hidden:
            return None
        links = self._links_of(sk, aid, coll)
        if links is None:
            return None
        uri = f"at://{self._did(aid)}/{collection}/{self._rkey(aid, coll, sk)}"
        if kind == timeline.KIND_POST:
            return {"uri": uri, "cid": self._cid(sk, aid, coll), "repost": "", "repostCid": ""}
        subject = self._link_target(links, REPOST, ".subject.uri")
        parts = key_record(subject) if subject is not None else None
        if parts is None or subject is None:
            return {"uri": "", "cid": "", "repost": uri, "repostCid": ""}
        s_aid, s_coll, s_rkey = parts
        s_sk = s_rkey if isinstance(s_rkey, int) else self._sort_key(s_aid, s_coll, s_rkey)
        cid = "" if s_sk is None or s_aid in self.hidden else self._cid(s_sk, s_aid, s_coll)
        return {"uri": self._target_name(subject), "cid": cid, "repost": uri, "repostCid": ""}

    def _cid(self, sk: int, aid: int, coll: int) -> str:
        row = self.conn.execute("SELECT cid FROM body WHERE sk=? AND aid=? AND coll=?", (sk, aid, coll)).fetchone()
        return (row[0] or "") if row else ""

    def timeline(self, viewer: str, limit: int, cursor: str | None) -> tuple[list[dict[str, str]], str | None]:
        """getTimeline: posts and reposts of the viewer's follows and the viewer, newest first."""
        after = decode_feed_cursor(cursor) if cursor else None

        def read() -> tuple[list[dict[str, str]], str | None]:
            aid = self._active(viewer)
            if aid is None:
                return [], None
            authors = self._follow_set(aid)
            authors.add(aid)
            authors -= self.hidden
            start = timeline.bucket_of(after[0]) if after is not None else 1 << 40
            items: list[dict[str, str]] = []
            last: FeedEntry | None = None
            segments_read = 0
            for bucket, segments in timeline.buckets_before(self.conn, start):
                for entry in timeline.newest_first(segments, authors, after):
                    if len(items) == limit:
                        return items, encode_feed_cursor(last)  # type: ignore[arg-type]
                    item = self._feed_item(entry)
                    if item is not None:
                        items.append(item)
                        last = entry
                segments_read += len(segments)
                if segments_read >= TIMELINE_SEGMENTS_MAX:
                    # Work bound reached: continue below this bucket on the next page.
                    return items, encode_feed_cursor((timeline.bucket_floor(bucket), 0, 0))
            return items, None
        return self._read(read)

    def thread(self, uri: str, above: int, below: int) -> list[str]:
        """getThread: ancestors (root-most first), the post, then descendants breadth-first."""
        def read() -> list[str]:
            key = self._record_key(uri)
            if key is None or self._coll_name(key[2]) != POST:
                return []
            links = self._links_of(*key)
            if links is None:
                return []
            ancestors: list[str] = []
            seen = {key}
            for _ in range(above):
                parent = self._link_target(links, POST, ".reply.parent.uri")
                parts = key_record(parent) if parent is not None else None
                if parts is None or parent is None or parts[0] in self.hidden:
                    break
                p_sk = parts[2] if isinstance(parts[2], int) else self._sort_key(parts[0], parts[1], parts[2])
                p_key = None if p_sk is None else (p_sk, parts[0], parts[1])
                if p_key is None or p_key in seen or self._coll_name(parts[1]) != POST:
                    break
                links = self._links_of(*p_key)
                if links is None:
                    break
                seen.add(p_key)
                ancestors.append(self._target_name(parent))
            ancestors.reverse()
            out = ancestors + [uri]
            level = [uri]
            found = 0
            for _ in range(below):
                next_level = []
                for parent_uri in level:
                    for sk, aid in self._live(self._keyed(self._target_key(parent_uri), POST, ".reply.parent.uri")):
                        if found == THREAD_DESCENDANTS_MAX:
                            return out
                        child = self._uri(aid, POST, sk)
                        out.append(child)
                        next_level.append(child)
                        found += 1
                level = next_level
                if not level:
                    break
            return out
        return self._read(read)

    # ------------------------------------------------------------ lists

    def list_members(self, list_uri: str, limit: int, cursor: str | None) -> tuple[list[dict[str, str]], str | None]:
        """getListMembers: the owner's listitems of the list, newest first."""
        after = decode_cursor(cursor) if cursor else None

        def read() -> tuple[list[dict[str, str]], str | None]:
            parts = split_target(list_uri)
            owner = self._active(parts[0]) if parts else None
            listitem = self._coll_id(LISTITEM)
            if owner is None or listitem is None:
                return [], None
            items: list[dict[str, str]] = []
            last: Entry | None = None
            # Only the owner's listitems count: chunks whose bitmap lacks the owner are skipped,
            # so listitems others point at the list cost nothing.
            chunks = [c for c in self._keyed(self._target_key(list_uri), LISTITEM, ".list") if owner in c.header.bitmap]
            for sk, aid in self._live(chunks, after):
                if aid != owner:
                    continue
                subject = self._link_target(self._links_of(sk, aid, listitem) or [], LISTITEM, ".subject")
                member = key_did_account(subject) if subject is not None else None
                if member is None:
                    continue
                if len(items) == limit:
                    return items, encode_cursor(last)  # type: ignore[arg-type]
                items.append({"uri": self._uri(aid, LISTITEM, sk), "did": self._did(member)})
                last = (sk, aid)
            return items, None
        return self._read(read)

    def actor_lists(self, actor: str, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        """getActorLists: the actor's list records, newest first."""
        after = decode_cursor(cursor) if cursor else None

        def read() -> tuple[list[str], str | None]:
            aid = self._active(actor)
            if aid is None:
                return [], None
            picked, next_cursor = self._page(self._live(self._of(aid, LIST, AUTHOR), after), limit)
            return [self._uri(aid, LIST, sk) for sk, _ in picked], next_cursor
        return self._read(read)

    def list_membership(self, actor: str, lists: list[str]) -> list[str]:
        """getListMembership: per list, the listitem putting the actor in it, or ""."""
        def read() -> list[str]:
            aid = self._active(actor)
            out = []
            for list_uri in lists:
                list_key = self._target_key(list_uri)
                out.append("" if aid is None or list_key is None else self._member_item(list_key, aid))
            return out
        return self._read(read)


def _distinct(entries: Iterable[Entry]) -> Iterator[Entry]:
    """Drop adjacent repeats (one record found through two paths)."""
    previous = None
    for entry in entries:
        if entry != previous:
            yield entry
        previous = entry


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

