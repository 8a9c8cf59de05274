"""The social graph: followers, follows and blocks (derived reverse links filed under the
author, smalldp.derived), follows-following intersections, relationships and block
existence (direct or through list blocks), and an account's counts.
"""

from __future__ import annotations

import itertools
from typing import Any

from pyroaring import BitMap

from smalldp.derived import (
    AUTHOR, BLOCK, FOLLOW, GENERATOR, LIST, LISTBLOCK, LISTITEM, OUT_SUBJECT, POST, REPOST, STARTERPACK,
)
from smalldp.store.dataplane.lists import ListQueries
from smalldp.store.encoding import did_key, key_record
from smalldp.store.reader import decode_cursor

LIST_BLOCKS_MAX = 1000  # an account's newest list blocks considered by relationships


class GraphQueries(ListQueries):
    """getFollowers, getFollows, getBlocks, getFollowsFollowing, getActorFollowsActors,
    getRelationships, getBlockExistence, getCountsForUsers (list blocks ask ListQueries)."""

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

