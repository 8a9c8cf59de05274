"""Feeds: an author's feed (derived author links merged with reposts, per filter), the
home timeline and list feeds (timeline buckets, store/timeline.py, filtered by the
viewer's follow bitmap or the list's members), threads (ancestors through reply links, descendants through backlinks), and
the feed item of a post or repost.
"""

from __future__ import annotations

import heapq
from typing import Callable, Iterator

from pyroaring import BitMap

from smalldp.derived import AUTHOR, MEDIA, NO_REPLY, POST, REPOST, THREAD, VIDEO
from smalldp.store import timeline
from smalldp.store.bodies import cid_of
from smalldp.store.dataplane.base import DataPlaneBase, FeedEntry, decode_feed_cursor, encode_feed_cursor
from smalldp.store.encoding import key_record
from smalldp.store.reader import _Chunk

FEED_FILTERS = {  # filter -> post path, and whether reposts are in
    "posts_with_replies": (AUTHOR, True),
    "posts_no_replies": (NO_REPLY, True),
    "posts_and_author_threads": (THREAD, True),
    "posts_with_media": (MEDIA, False),
    "posts_with_video": (VIDEO, False),
}
THREAD_DESCENDANTS_MAX = 1000
# getThread's `above` and `below` go up to app.bsky.feed.getPostThread's parentHeight and depth
# (both 0..1000), so an AppView passes them through; the work stays bounded by the
# descendant cap and by one record lookup per ancestor level.
THREAD_LEVELS_MAX = 1000
TIMELINE_SEGMENTS_MAX = 4000  # segments read per timeline page (one per closed one-minute bucket)


class FeedQueries(DataPlaneBase):
    """getAuthorFeed, getTimeline, getThread; for bsky.Service also list feeds."""

    # A list's member set, from ListQueries (DataPlaneReader combines both mixins).
    _list_member_set: Callable[[str], BitMap]

    def author_feed(self, actor: str, limit: int, cursor: str | None,
                    filter: str) -> tuple[list[dict[str, str]], str | None]:
        """getAuthorFeed: the actor's posts (per filter) and reposts, newest first. A repost
        is left out unless it reposts a post that exists (live, whatever its author's
        status), as the reference's author feed joins its feed items with its posts (its
        timeline does not: there, and in timelines here, the AppView drops such items)."""
        after = decode_feed_cursor(cursor) if cursor else None
        post_path, with_reposts = FEED_FILTERS[filter]

        def read() -> tuple[list[dict[str, str]], str | None]:
            aid = self._active(actor)
            if aid is None:
                return [], None
            streams = [self._feed_stream(self._of(aid, POST, post_path), timeline.KIND_POST, after)]
            if with_reposts:
                streams.append(self._feed_stream(self._of(aid, REPOST, AUTHOR), timeline.KIND_REPOST, after))
            items, last = self._feed_page(heapq.merge(*streams, reverse=True), limit, reposted_post=True)
            return items, None if last is None else encode_feed_cursor(last)
        return self._read(read)

    def _feed_page(self, entries: Iterator[FeedEntry], limit: int,
                   reposted_post: bool = False) -> tuple[list[dict[str, str]], FeedEntry | None]:
        """Items for entries (newest first) until ``limit`` live ones; with the last entry
        shown when more follow, else None. ``reposted_post``: reposts of anything but an
        existing post are left out."""
        items: list[dict[str, str]] = []
        last: FeedEntry | None = None
        for entry in entries:
            if len(items) == limit:
                return items, last
            item = self._feed_item(entry, reposted_post)
            if item is not None:
                items.append(item)
                last = entry
        return items, None

    def _feed_stream(self, chunks: list[_Chunk], kind: int, after: FeedEntry | None) -> Iterator[FeedEntry]:
        # Derived author links: every entry's account is the author, so the cursor's sort
        # key and kind place it (entries of one key never share a sort key).
        start = None if after is None else ((after[0] + 1, 0) if kind < after[2] else (after[0], 0))
        for sk, aid in self._live(chunks, start):
            yield sk, aid, kind

    def _feed_item(self, entry: FeedEntry, reposted_post: bool = False) -> dict[str, str] | None:
        """A feed item for a post or repost entry, or None when the record is not live (with
        ``reposted_post``, also for a repost of anything but an existing post)."""
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
            return None if reposted_post else {"uri": "", "cid": "", "repost": uri, "repostCid": ""}
        s_aid, s_coll, s_rkey = parts
        s_sk = s_rkey if isinstance(s_rkey, int) else self._sort_key(s_aid, s_coll, s_rkey)
        if reposted_post and (s_sk is None or self._coll_name(s_coll) != POST or
                              self._links_of(s_sk, s_aid, s_coll) is None):
            return None
        # The reposted *post's* cid: a repost of anything else (a list, ...) names none.
        live = s_sk is not None and s_aid not in self.hidden and self._coll_name(s_coll) == POST
        cid = self._cid(s_sk, s_aid, s_coll) if live else ""  # type: ignore[arg-type]
        return {"uri": self._target_name(subject), "cid": cid, "repost": uri, "repostCid": ""}

    def _cid(self, sk: int, aid: int, coll: int) -> str:
        row = self.conn.execute("SELECT cid FROM body WHERE sk=? AND aid=? AND coll=?", (sk, aid, coll)).fetchone()
        return (cid_of(row[0]) or "") if row else ""

    def timeline(self, viewer: str, limit: int, cursor: str | None) -> tuple[list[dict[str, str]], str | None]:
        """getTimeline: posts and reposts of the viewer's follows and the viewer, newest first."""
        after = decode_feed_cursor(cursor) if cursor else None

        def read() -> tuple[list[dict[str, str]], str | None]:
            aid = self._active(viewer)
            if aid is None:
                return [], None
            authors = self._follow_set(aid)
            authors.add(aid)
            return self._timeline_page(authors, limit, after, posts_only=False)
        return self._read(read)

    def list_feed(self, list_uri: str, limit: int, cursor: str | None) -> tuple[list[dict[str, str]], str | None]:
        """A list's feed: posts (no reposts) by the accounts the list's owner put in it (its
        newest LIST_FEED_MEMBERS_MAX listitems), newest first, read from the timeline
        buckets as getTimeline is."""
        after = decode_feed_cursor(cursor) if cursor else None
        return self._read(lambda: self._timeline_page(self._list_member_set(list_uri), limit, after, posts_only=True))

    def _timeline_page(self, authors: BitMap, limit: int, after: FeedEntry | None,
                       posts_only: bool) -> tuple[list[dict[str, str]], str | None]:
        """A page of the live posts and reposts (``posts_only``: posts) of ``authors`` from the
        timeline buckets, newest first, strictly past ``after``; at most TIMELINE_SEGMENTS_MAX
        segments read, a page the bound cut short carrying a cursor below its last bucket."""
        authors = authors - self.hidden
        if not authors:
            return [], None
        start = 1 << 40
        if after is not None:
            # A work-bound cursor (bucket floor, 0, 0) continues below that bucket:
            # account IDs start at 1, so no entry of it can be older than the cursor.
            start = timeline.bucket_of(after[0] - 1 if after[1:] == (0, 0) else after[0])
        stopped: list[FeedEntry] = []  # where the work bound ended the walk, if it did

        def entries() -> Iterator[FeedEntry]:
            segments_read = 0
            for bucket, segments in timeline.buckets_before(self.conn, start):
                for entry in timeline.newest_first(segments, authors, after):
                    if not posts_only or entry[2] == timeline.KIND_POST:
                        yield entry
                segments_read += len(segments)
                if segments_read >= TIMELINE_SEGMENTS_MAX:
                    # Work bound reached: the next page continues below this bucket.
                    stopped.append((timeline.bucket_floor(bucket), 0, 0))
                    return

        items, last = self._feed_page(entries(), limit)
        if last is None and stopped:
            last = stopped[0]
        return items, None if last is None else encode_feed_cursor(last)

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
            post = key[2]
            replies = self._source_id(POST, ".reply.parent.uri")
            for _ in range(below):
                next_level = []
                parents = [self._target_key(parent_uri) for parent_uri in level]
                self._prefetch_many(parents, [replies])  # a level's replies in one query per 200 posts
                for parent in parents:
                    for sk, aid in self._live(self._keyed(parent, POST, ".reply.parent.uri")):
                        if (sk, aid, post) in seen:
                            # A reply cycle (a post replying to itself, or to one of its own
                            # replies): list each post once, or a deep `below` repeats it.
                            continue
                        if found == THREAD_DESCENDANTS_MAX:
                            return out
                        seen.add((sk, aid, post))
                        child = self._uri(aid, POST, sk)
                        out.append(child)
                        next_level.append(child)
                        found += 1
                level = next_level
                if not level:
                    break
            return out
        return self._read(read)
