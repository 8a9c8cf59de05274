"""Interactions with records: counts of likes, reposts, replies and quotes, who liked or
reposted a subject (getLikesBySubject and kin), an actor's likes or reposts of given
subjects, the likers a viewer follows (getKnownLikers, a bitmap intersection), an
actor's own likes (a bounded scan: likes have no author link), and how many accounts
joined through a starter pack.

Likes and reposts are one record per (account, subject), as the reference indexes them
(store/dataplane/base.py): who liked or reposted a subject lists each account once, at
its oldest live like (repost) of it, and an account's like of a subject is that one.
Quotes are posts: every one is listed.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import struct
import time
from typing import Any, Iterable, Iterator

import orjson
from pyroaring import BitMap

from smalldp.derived import POST, PROFILE, REPOST
from smalldp.store.dataplane.gates import GateQueries
from smalldp.store.encoding import Entry
from smalldp.store.reader import BadCursor, decode_cursor
from smalldp.timestamps import datetime_us


LIKE = "app.bsky.feed.like"
QUOTE_PATHS = (".embed.record.uri", ".embed.record.record.uri")
JOINED_VIA = ".joinedViaStarterPack.uri"  # a profile's link to the starter pack it signed up through
# Forward-index rows read per page of an actor's likes: likes carry no link to their
# author, so they are found by walking `fwd` newest first (see actor_likes). About 0.5 µs
# a row on the development machine (x86, 2 cores, 200k rows): ~5 ms a page at most.
ACTOR_LIKES_SCAN_ROWS = 10_000
# Profile bodies read per request for starter packs' joins of the last week, shared by
# the packs asked (each reads at least JOINED_WEEK_MIN): see starter_pack_counts.
JOINED_WEEK_READS = 1000
JOINED_WEEK_MIN = 10
WEEK_US = 7 * 86_400 * 1_000_000
_SCAN_CURSOR = struct.Struct(">BqII")  # (tag, sort key, account, collection): a row of fwd
_SCAN_TAG = 0x4C
_SK_MAX, _U32_MAX = (1 << 63) - 1, (1 << 32) - 1


class InteractionQueries(GateQueries):
    """getInteractionCounts, get*BySubject, get*ByActorAndSubjects, getKnownLikers."""

    def interaction_counts(self, uris: list[str], *, reference: bool = False) -> dict[str, list[int]]:
        """getInteractionCounts.  With ``reference`` (bsky.Service), as the reference's
        aggregates count: inactive accounts' likes, reposts, replies and quotes count too
        (only deleting an account removes its records there), and replies that break their
        thread's gate do not (store/dataplane/gates.py)."""
        def read() -> dict[str, list[int]]:
            out: dict[str, list[int]] = {"likes": [], "reposts": [], "replies": [], "quotes": []}
            sources = [self._source_id(c, p) for c, p in ((LIKE, ".subject.uri"), (REPOST, ".subject.uri"),
                                                          (POST, ".reply.parent.uri"),
                                                          *((POST, q) for q in QUOTE_PATHS))]
            parent_sid = sources[2]  # (POST, ".reply.parent.uri")
            tkeys = [self._target_key(uri) for uri in uris]
            self._prefetch_many(tkeys, sources)
            for tkey in tkeys:
                out["likes"].append(len(self._tally(tkey, LIKE, ".subject.uri", inactive=reference)[1]))
                out["reposts"].append(len(self._tally(tkey, REPOST, ".subject.uri", inactive=reference)[1]))
                replies = self._tally(tkey, POST, ".reply.parent.uri", inactive=reference)[0]
                if reference and replies and tkey is not None and parent_sid is not None:
                    replies -= self._gated_replies(tkey, parent_sid)
                out["replies"].append(replies)
                out["quotes"].append(sum(self._tally(tkey, POST, p, inactive=reference)[0] for p in QUOTE_PATHS))
            return out
        return self._read(read)

    def by_subject(self, subject: str, collection: str, paths: tuple[str, ...], limit: int,
                   cursor: str | None) -> tuple[list[str], str | None]:
        """getLikesBySubject / getRepostsBySubject / getQuotesBySubject: record uris, newest
        first; likes and reposts one per account (its oldest live one)."""
        after = decode_cursor(cursor) if cursor else None

        def read() -> tuple[list[str], str | None]:
            tkey = self._target_key(subject)
            if collection in (LIKE, REPOST) and len(paths) == 1:
                (path,) = paths
                picked, next_cursor = self._first_page(tkey, collection, path, after, limit)
                return [self._uri(aid, collection, sk) for sk, aid in picked], next_cursor
            streams = [self._live(self._keyed(tkey, collection, p), after) for p in paths]
            merged = heapq.merge(*streams, reverse=True) if len(streams) > 1 else streams[0]
            picked, next_cursor = self._page(_distinct(merged), limit)
            return [self._uri(aid, collection, sk) for sk, aid in picked], next_cursor
        return self._read(read)

    def actor_subjects(self, actor: str, collection: str, subjects: list[str]) -> list[str]:
        """getLikesByActorAndSubjects / getRepostsByActorAndSubjects: per subject, the
        actor's like (repost) of it (its oldest live one), or ""."""
        def read() -> list[str]:
            aid = self._active(actor)
            out = []
            tkeys = [self._target_key(subject) for subject in subjects]
            if aid is not None:
                self._prefetch_many(tkeys, [self._source_id(collection, ".subject.uri")])
            for tkey in tkeys:
                sk = self._first_of(tkey, collection, ".subject.uri", aid)
                out.append("" if sk is None else self._uri(aid, collection, sk))  # type: ignore[arg-type]
            return out
        return self._read(read)

    def actor_likes(self, actor: str, limit: int, cursor: str | None) -> tuple[list[dict[str, str]], str | None]:
        """The actor's live likes, newest first: ``{uri, subject}`` (``subject`` the liked
        uri, "" when the like names none).

        Likes have no derived author link (smalldp.derived), so this walks the forward
        index newest first, ACTOR_LIKES_SCAN_ROWS rows per page at most: a page can hold
        fewer than ``limit`` likes (even none) and still carry a cursor, which continues
        the walk where it stopped. Exact, but a store with much traffic between an
        actor's likes needs many pages to reach them."""
        after = decode_scan_cursor(cursor) if cursor else None

        def read() -> tuple[list[dict[str, str]], str | None]:
            aid = self._active(actor)
            like = self._coll_id(LIKE)
            if aid is None or like is None:
                return [], None
            start = after if after is not None else (_SK_MAX, _U32_MAX, _U32_MAX)
            rows = self.conn.execute(
                "SELECT sk, aid, coll, links IS NOT NULL FROM fwd WHERE (sk, aid, coll) < (?, ?, ?) "
                "ORDER BY sk DESC, aid DESC, coll DESC LIMIT ?", (*start, ACTOR_LIKES_SCAN_ROWS))
            likes: list[dict[str, str]] = []
            last: tuple[int, int, int] | None = None
            read_rows = 0
            for sk, a, coll, live in rows:
                read_rows += 1
                if a != aid or coll != like or not live:
                    last = (sk, a, coll)
                    continue
                if len(likes) == limit:
                    return likes, encode_scan_cursor(last)  # type: ignore[arg-type]
                subject = self._link_target(self._links_of(sk, a, coll) or [], LIKE, ".subject.uri")
                likes.append({"uri": self._uri(aid, LIKE, sk),
                              "subject": "" if subject is None else self._target_name(subject)})
                last = (sk, a, coll)
            if read_rows == ACTOR_LIKES_SCAN_ROWS and last is not None:
                return likes, encode_scan_cursor(last)
            return likes, None
        return self._read(read)

    def starter_pack_counts(self, uris: list[str], now_us: int | None = None) -> tuple[list[int], list[int]]:
        """Per starter pack: (live profiles whose ``joinedViaStarterPack`` names it, those of
        them whose own ``createdAt`` lies in the week before ``now_us``).

        The week's count reads profile bodies (when profiles keep them), the most recently
        first-seen first (a profile's rkey is "self": its sort key is an alias given in
        first-seen order, so the newest accounts come first), JOINED_WEEK_READS per
        request shared by the packs (at least JOINED_WEEK_MIN each): a pack that more
        accounts joined recently than its share counts its share's joins (a lower bound)."""
        now = time.time_ns() // 1000 if now_us is None else now_us
        share = max(JOINED_WEEK_MIN, JOINED_WEEK_READS // max(1, len(uris)))

        def read() -> tuple[list[int], list[int]]:
            all_time: list[int] = []
            week: list[int] = []
            profile = self._coll_id(PROFILE)
            for uri in uris:
                tkey = self._target_key(uri)
                all_time.append(self._tally(tkey, PROFILE, JOINED_VIA)[0])
                recent = 0
                if profile is not None:
                    for sk, aid in itertools.islice(self._live(self._keyed(tkey, PROFILE, JOINED_VIA)), share):
                        created = self._created_us(sk, aid, profile)
                        recent += created is not None and now - WEEK_US < created <= now
                week.append(recent)
            return all_time, week
        return self._read(read)

    def _created_us(self, sk: int, aid: int, coll: int) -> int | None:
        """A stored record body's ``createdAt`` in microseconds, or None."""
        row = self.conn.execute("SELECT data FROM body WHERE sk=? AND aid=? AND coll=?", (sk, aid, coll)).fetchone()
        if row is None:
            return None
        record = orjson.loads(self._bodies.decompress(row[0]))
        created = record.get("createdAt") if isinstance(record, dict) else None
        try:
            return datetime_us(created) if isinstance(created, str) else None
        except ValueError:
            return None

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


def _distinct(entries: Iterable[Entry]) -> Iterator[Entry]:
    """Drop adjacent repeats (one record found through two paths)."""
    previous = None
    for entry in entries:
        if entry != previous:
            yield entry
        previous = entry


def encode_scan_cursor(row: tuple[int, int, int]) -> str:
    """An opaque cursor for a position in a walk of the forward index: after this row."""
    return base64.urlsafe_b64encode(_SCAN_CURSOR.pack(_SCAN_TAG, *row)).decode().rstrip("=")


def decode_scan_cursor(cursor: str) -> tuple[int, int, int]:
    """Inverse of encode_scan_cursor; raises BadCursor."""
    try:
        tag, sk, aid, coll = _SCAN_CURSOR.unpack(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, struct.error):
        raise BadCursor("invalid cursor") from None
    if tag != _SCAN_TAG:
        raise BadCursor("invalid cursor")
    return sk, aid, coll
