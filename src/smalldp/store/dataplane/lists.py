"""Lists: a list's members (the owner's listitems only), an actor's lists, and whether
an actor is in given lists (also what list blocks in store/dataplane/graph.py ask).
"""

from __future__ import annotations

from smalldp.derived import AUTHOR, LIST, LISTITEM
from smalldp.store.dataplane.base import DataPlaneBase
from smalldp.store.encoding import Entry, did_key, key_account, key_did_account, split_target
from smalldp.store.reader import decode_cursor, encode_cursor


class ListQueries(DataPlaneBase):
    """getListMembers, getActorLists, getListMembership."""

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
