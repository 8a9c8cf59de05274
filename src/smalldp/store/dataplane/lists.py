"""Lists: a list's members (the owner's listitems only), their number and set, an
actor's lists, and whether an actor is in given lists (also what list blocks in
store/dataplane/graph.py and list feeds in store/dataplane/feeds.py ask).

A list holds each account once, as the reference indexes list items (one per list and
subject: store/dataplane/base.py): the owner's oldest live listitem putting it there.
"""

from __future__ import annotations

import itertools
from typing import Iterator

from pyroaring import BitMap

from smalldp.derived import LIST, LISTITEM
from smalldp.store.dataplane.base import DataPlaneBase
from smalldp.store.encoding import Entry, did_key, key_account, key_did_account, split_target
from smalldp.store.reader import decode_cursor, encode_cursor

# A list's newest listitems whose members a list feed shows: one forward lookup each,
# ~3.3 µs on the development machine (x86, 2 cores), so ~17 ms a page at 5,000.
LIST_FEED_MEMBERS_MAX = 5000


class ListQueries(DataPlaneBase):
    """getListMembers, getActorLists, getListMembership; for bsky.Service also list counts
    and a list's member set."""

    def list_members(self, list_uri: str, limit: int, cursor: str | None) -> tuple[list[dict[str, str]], str | None]:
        """getListMembers: the owner's listitems of the list, newest first, one per member
        (its oldest live one)."""
        after = decode_cursor(cursor) if cursor else None

        def read() -> tuple[list[dict[str, str]], str | None]:
            items: list[dict[str, str]] = []
            last: Entry | None = None
            list_key = self._target_key(list_uri)
            sid = self._source_id(LISTITEM, ".subject")
            for sk, owner, member in self._list_items(list_uri, after):
                # Only when the owner has put the member in a list twice (this one or
                # another) is there a second look (the member's key is read either way).
                if list_key is None or sid is None or (owner in self._repeated(did_key(member), sid)
                                                       and self._member_items(list_key, member)[:1] != [sk]):
                    last = (sk, owner)
                    continue  # a newer listitem of a member listed at its oldest one
                if len(items) == limit:
                    return items, encode_cursor(last)  # type: ignore[arg-type]
                items.append({"uri": self._uri(owner, LISTITEM, sk), "did": self._did(member)})
                last = (sk, owner)
            return items, None
        return self._read(read)

    def _list_items(self, list_uri: str, after: Entry | None = None) -> Iterator[tuple[int, int, int]]:
        """(sort key, owner, member) of the live listitems of the list's owner that put a DID
        in the list, newest first, strictly past ``after``."""
        parts = split_target(list_uri)
        owner = self._active(parts[0]) if parts else None
        listitem = self._coll_id(LISTITEM)
        if owner is None or listitem is None:
            return
        # Only the owner's listitems count: chunks whose bitmap lacks the owner are skipped,
        # so listitems others point at the list cost nothing.
        chunks = [c for c in self._keyed(self._target_key(list_uri), LISTITEM, ".list") if owner in c.header.bitmap]
        for sk, aid in self._live(chunks, after):
            if aid != owner:
                continue
            subject = self._link_target(self._links_of(sk, aid, listitem) or [], LISTITEM, ".subject")
            member = key_did_account(subject) if subject is not None else None
            if member is not None:
                yield sk, owner, member

    def _list_member_set(self, list_uri: str) -> BitMap:
        """The accounts the list's newest LIST_FEED_MEMBERS_MAX listitems put in it."""
        return BitMap(member for _, _, member in itertools.islice(self._list_items(list_uri), LIST_FEED_MEMBERS_MAX))

    def list_counts(self, lists: list[str]) -> list[int]:
        """Per list, the live listitem records of its owner that point at it (0 for anything else)."""
        def read() -> list[int]:
            out = []
            for list_uri in lists:
                parts = split_target(list_uri)
                owner = self._active(parts[0]) if parts else None
                out.append(0 if owner is None else
                           self._tally(self._target_key(list_uri), LISTITEM, ".list", BitMap([owner]))[0])
            return out
        return self._read(read)

    def actor_lists(self, actor: str, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        """getActorLists: the actor's list records, newest first."""
        return self.authored(actor, LIST, limit, cursor)

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


    def _member_item(self, list_key: bytes, member: int) -> str:
        """The live listitem, owned by the list's author, putting ``member`` in the list
        (the oldest if several), or ""."""
        found = self._member_items(list_key, member)
        return "" if not found else self._uri(key_account(list_key), LISTITEM, found[0])  # type: ignore[arg-type]

    def _member_items(self, list_key: bytes, member: int) -> list[int]:
        """The sort keys of the live listitems of the list's author that put ``member`` in
        the list, oldest first; for each member its first listitem is found without
        reading one when the owner has put it in one list only."""
        owner = key_account(list_key)
        listitem = self._coll_id(LISTITEM)
        sid = self._source_id(LISTITEM, ".subject")
        if owner is None or owner in self.hidden or listitem is None or sid is None:
            return []
        tkey = did_key(member)
        if owner not in self._repeated(tkey, sid):  # one listitem of the owner names the member
            sk = self._oldest_entry(tkey, sid, owner)
            if sk is None:
                return []
            candidates = [sk]
        else:
            candidates = sorted(sk for chunk in self._chunks(tkey, sid) if owner in chunk.header.bitmap
                                for sk, a in chunk.entries() if a == owner)
        return [sk for sk in candidates
                if self._link_target(self._links_of(sk, owner, listitem) or [], LISTITEM, ".list") == list_key]
