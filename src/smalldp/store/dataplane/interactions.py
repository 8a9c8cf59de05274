"""Interactions with records: counts of likes, reposts, replies and quotes, who liked or
reposted a subject (getLikesBySubject and kin), an actor's likes or reposts of given
subjects, and the likers a viewer follows (getKnownLikers, a bitmap intersection).
"""

from __future__ import annotations

import heapq
from typing import Any, Iterable, Iterator

from pyroaring import BitMap

from smalldp.derived import POST, REPOST
from smalldp.store.dataplane.base import DataPlaneBase
from smalldp.store.encoding import Entry
from smalldp.store.reader import decode_cursor


LIKE = "app.bsky.feed.like"
QUOTE_PATHS = (".embed.record.uri", ".embed.record.record.uri")


class InteractionQueries(DataPlaneBase):
    """getInteractionCounts, get*BySubject, get*ByActorAndSubjects, getKnownLikers."""

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


def _distinct(entries: Iterable[Entry]) -> Iterator[Entry]:
    """Drop adjacent repeats (one record found through two paths)."""
    previous = None
    for entry in entries:
        if entry != previous:
            yield entry
        previous = entry

