"""The social graph: followers, follows and blocks (derived reverse links filed under the
author, smalldp.derived), follows-following intersections, relationships and block
existence (direct or through list blocks, with the records or lists behind them),
list-block subscriptions, an account's counts, and actors by handle prefix.

Follows, blocks and list blocks are one record per (account, subject), as the reference
indexes them (store/dataplane/base.py): lists name each pair once, at its oldest live
record, and a pair's record is that one.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

from pyroaring import BitMap

from smalldp.derived import (
    AUTHOR, BLOCK, FOLLOW, GENERATOR, LIST, LISTBLOCK, LISTITEM, OUT_SUBJECT, POST, REPOST, STARTERPACK,
)
from smalldp.store.dataplane.lists import ListQueries
from smalldp.store.encoding import Entry, did_key, key_account, key_record
from smalldp.store.reader import BadCursor, decode_cursor, encode_cursor

LIST_BLOCKS_MAX = 1000  # an account's newest list blocks considered by relationships
SEARCH_SCAN_MAX = 1000  # actor rows read per search page (inactive accounts are skipped)
BLOCK_KINDS = ("blocking", "blockedBy", "blockingByList", "blockedByList")


class GraphQueries(ListQueries):
    """getFollowers, getFollows, getBlocks, getFollowsFollowing, getActorFollowsActors,
    getRelationships, getBlockExistence, getCountsForUsers (list blocks ask ListQueries);
    for bsky.Service also the blocks behind a pair, bidirectional blocks, list-block
    subscriptions and actors by handle prefix."""

    def followers(self, actor: str, limit: int, cursor: str | None) -> tuple[list[dict[str, str]], str | None]:
        """getFollowers: follow records of the actor, newest first, one per follower (its
        oldest live one)."""
        after = decode_cursor(cursor) if cursor else None

        def read() -> tuple[list[dict[str, str]], str | None]:
            aid = self._active(actor)
            if aid is None:
                return [], None
            picked, next_cursor = self._first_page(did_key(aid), FOLLOW, ".subject", after, limit)
            return [{"uri": self._uri(a, FOLLOW, sk), "actorDid": self._did(a), "subjectDid": actor}
                    for sk, a in picked], next_cursor
        return self._read(read)

    def out_edges(self, actor: str, collection: str, limit: int,
                  cursor: str | None) -> tuple[list[dict[str, str]], str | None]:
        """getFollows / getBlocks: the actor's follow or block records, newest first, one
        per subject (the oldest live one)."""
        after = decode_cursor(cursor) if cursor else None

        def read() -> tuple[list[dict[str, str]], str | None]:
            aid = self._active(actor)
            if aid is None:
                return [], None
            picked, next_cursor = self._first_page(did_key(aid), collection, OUT_SUBJECT, after, limit)
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
        """The follow or block record of ``aid`` whose subject is ``subject`` (its oldest
        live one), or ""."""
        if aid is None or subject is None:
            return ""
        sk = self._first_of(did_key(aid), collection, OUT_SUBJECT, subject)
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

    def _edge_uri_to(self, author: int | None, collection: str, subject: int | None) -> str:
        """``_edge_uri`` read from the subject's side: the subject's backlinks from the
        collection's ``.subject`` hold the same records as the author's reverse links
        (both are links of each follow or block record), entries by author. A request
        about one viewer and many accounts reads the viewer's key once this way instead
        of every account's edges."""
        if author is None or subject is None:
            return ""
        sk = self._first_of(did_key(subject), collection, ".subject", author)
        if sk is None:
            return ""
        coll = self._coll_id(collection)
        return f"at://{self._did(author)}/{collection}/{self._rkey(author, coll, sk)}"  # type: ignore[arg-type]

    def relationships(self, viewer: str, targets: list[str], *, list_uris: bool = False) -> list[dict[str, str]]:
        """getRelationships. ``blockingByList`` / ``blockedByList`` name the listblock record,
        or with ``list_uris`` the list it blocks (what bsky.Service answers).

        Follows and direct blocks either way are read from the viewer's keys (one query
        for all), so a target costs lookups in those, not a read of its own edges; list
        blocks as ``_prefetch_list_blocks`` reads them for all targets at once."""
        def read() -> list[dict[str, str]]:
            v = self._active(viewer)
            if v is not None:
                self._prefetch(did_key(v), [self._source_id(c, p) for c, p in (
                    (FOLLOW, OUT_SUBJECT), (FOLLOW, ".subject"), (BLOCK, OUT_SUBJECT), (BLOCK, ".subject"),
                    (LISTBLOCK, AUTHOR), (LISTITEM, ".subject"))])
            out = []
            accounts = [self._active(target) for target in targets]
            if v is not None:
                self._prefetch_list_blocks([(v, t) for t in accounts if t is not None], len(accounts))
            for target, t in zip(targets, accounts):
                if v is None or t is None:
                    out.append({"targetDid": target, "following": "", "followedBy": "", "blocking": "",
                                "blockedBy": "", "blockingByList": "", "blockedByList": ""})
                    continue
                which = 1 if list_uris else 0
                out.append({"targetDid": target, "following": self._edge_uri(v, FOLLOW, t),
                            "followedBy": self._edge_uri_to(t, FOLLOW, v), "blocking": self._edge_uri(v, BLOCK, t),
                            "blockedBy": self._edge_uri_to(t, BLOCK, v),
                            "blockingByList": self._list_block_ref(v, t)[which],
                            "blockedByList": self._list_block_by(t, v, len(accounts))[which]})
            return out
        return self._read(read)

    def block_existence(self, pairs: list[tuple[str, str]]) -> list[bool]:
        """getBlockExistence: a block either way, direct or through a list."""
        def read() -> list[bool]:
            self._prefetch_pairs(pairs)
            return [bool(self._pair_blocks(a, b, first=True)) for a, b in pairs]
        return self._read(read)

    def _prefetch_pairs(self, pairs: list[tuple[str, str]]) -> None:
        """What ``_pair_blocks`` reads of many pairs, a few batched queries in all: each
        a's blocks and blockers, then what list blocks either way need
        (``_prefetch_list_blocks``)."""
        active = [(a, b) for a, b in ((self._active(a), self._active(b)) for a, b in pairs)
                  if a is not None and b is not None]
        self._prefetch_many([did_key(a) for a in {a for a, _ in active}], [self._source_id(c, p) for c, p in (
            (BLOCK, OUT_SUBJECT), (BLOCK, ".subject"))])
        self._prefetch_list_blocks(active)

    def _prefetch_list_blocks(self, pairs: list[tuple[int, int]], sharing: int = 1) -> None:
        """What ``_list_block_ref(a, b)`` and ``_list_block_by(b, a, sharing)`` read of
        many pairs of active accounts, in batches rather than a query per key or record (a
        request about 100 accounts otherwise costs thousands of point reads): a's list
        blocks and memberships, b's list blocks where ``_blocker_side`` asks, then the
        records and keys of the side it picks, and b's memberships where a blocks lists."""
        listblock, listitem = self._coll_id(LISTBLOCK), self._coll_id(LISTITEM)
        if listblock is None or listitem is None:
            return  # no list block or list item was ever indexed
        blocks_sid, member_sid = self._source_id(LISTBLOCK, AUTHOR), self._source_id(LISTITEM, ".subject")
        firsts = {a for a, _ in pairs}
        self._prefetch_many([did_key(a) for a in firsts], [blocks_sid, member_sid])
        self._prefetch_many({did_key(b) for a, b in pairs if self._membership_count(a) >= sharing}, [blocks_sid])
        self._prefetch_many({did_key(b) for a, b in pairs if self._list_block_count(a)}, [member_sid])
        # a blocker's list blocks are read only where the other account is in some list
        by_blocker = {a for a, b in pairs if self._list_block_count(a) and self._membership_count(b)}
        by_member: set[int] = set()
        for a, b in pairs:
            if not self._blocker_side(b, a, sharing):
                by_member.add(a)
            elif self._list_block_count(b) and self._membership_count(a):
                by_blocker.add(b)
        self._links_many([(sk, x, listblock) for x in by_blocker for sk, _ in
                          itertools.islice(self._live(self._of(x, LISTBLOCK, AUTHOR)), LIST_BLOCKS_MAX)] +
                         [(sk, owner, listitem) for a in by_member for sk, owner in
                          self._live(self._of(a, LISTITEM, ".subject"))])
        self._prefetch_many({list_key for a in by_member for list_key in self._lists_holding(a)},
                            [self._source_id(LISTBLOCK, ".subject")])

    def _list_block_count(self, account: int) -> int:
        """The account's live list blocks (memoized per snapshot)."""
        memo_key = (did_key(account), -5)
        cached = self._memo.get(memo_key)
        if cached is None:
            cached = self._memo[memo_key] = [self._tally(did_key(account), LISTBLOCK, AUTHOR)[0]]  # type: ignore[list-item]
        return cached[0]  # type: ignore[return-value]

    def _membership_count(self, account: int) -> int:
        """The live listitems naming the account (memoized with their owners)."""
        return self._list_items_naming(account)[1]

    def _list_owners_naming(self, member: int) -> BitMap:
        """The active accounts with a listitem naming ``member`` (in any of their lists):
        a list can hold it only if its owner is one."""
        return self._list_items_naming(member)[0]

    def _list_items_naming(self, member: int) -> tuple[BitMap, int]:
        """(the owners, the number) of the live listitems naming ``member``, memoized per
        snapshot."""
        memo_key = (did_key(member), -4)
        cached = self._memo.get(memo_key)
        if cached is None:
            total, owners = self._tally(did_key(member), LISTITEM, ".subject")
            cached = self._memo[memo_key] = [owners, total]  # type: ignore[list-item]
        return cached[0], cached[1]  # type: ignore[return-value]

    def _blocker_side(self, blocker: int, blocked: int, sharing: int = 1) -> bool:
        """Whether ``_list_block_by`` reads the blocker's list blocks (exact when it has at
        most LIST_BLOCKS_MAX: ``_blocked_lists`` sees them all) rather than the lists
        holding ``blocked`` and their blockers, read once for the ``sharing`` pairs of a
        request that ask about ``blocked``: whichever reads fewer records (the member's
        side without reading the blocker's at all when it is in fewer than ``sharing``
        lists)."""
        members = self._membership_count(blocked)
        if members < sharing:
            return False
        count = self._list_block_count(blocker)
        return count <= LIST_BLOCKS_MAX and count * sharing <= members

    def _list_block_by(self, blocker: int, blocked: int, sharing: int = 1) -> tuple[str, str]:
        """The blocker's listblock of a list holding ``blocked`` and that list's uri, or
        ("", ""), read from the side ``_blocker_side`` picks: ``_list_block_ref`` (nothing
        to read for the many accounts that block no list) or ``_list_blocked_by``; both
        pick the list whose oldest live listblock is the newest."""
        if self._blocker_side(blocker, blocked, sharing):
            return self._list_block_ref(blocker, blocked)
        return self._list_blocked_by(blocked, blocker)

    def block_refs(self, pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
        """Per pair (a, b), what blocks there are between them (bsky.Service's BlockExistence):
        ``blocking`` a's block record of b, ``blockedBy`` b's of a, ``blockingByList`` the
        list through which a blocks b (a's newest listblock of a list holding b),
        ``blockedByList`` the list through which b blocks a; each a uri or ""."""
        def read() -> list[dict[str, str]]:
            self._prefetch_pairs(pairs)
            out = []
            for a, b in pairs:
                found = self._pair_blocks(a, b, first=False)
                out.append({kind: found.get(kind, "") for kind in BLOCK_KINDS})
            return out
        return self._read(read)

    def _pair_blocks(self, a_did: str, b_did: str, *, first: bool) -> dict[str, str]:
        """The blocks between two accounts by kind (BLOCK_KINDS; list kinds name the list),
        only the first one found when ``first``; empty when either account is inactive."""
        a, b = self._active(a_did), self._active(b_did)
        if a is None or b is None:
            return {}
        # Direct blocks either way are read from a's keys (its blocks and its blockers);
        # a list block from the blocker's list blocks, which most accounts do not have
        # (b's, from the lists holding a when that is cheaper: ``_list_block_by``). The
        # callers fetch all of it for every pair at once: _prefetch_pairs.
        found: dict[str, str] = {}
        for kind in BLOCK_KINDS:
            if kind == "blocking":
                uri = self._edge_uri(a, BLOCK, b)
            elif kind == "blockedBy":
                uri = self._edge_uri_to(b, BLOCK, a)
            elif kind == "blockingByList":
                uri = self._list_block_ref(a, b)[1]
            else:
                uri = self._list_block_by(b, a)[1]
            if uri:
                found[kind] = uri
                if first:
                    break
        return found

    def bidirectional_block(self, actor: str, target: str) -> str:
        """A direct block record between two accounts, either way (the actor's first), or ""."""
        def read() -> str:
            a, t = self._active(actor), self._active(target)
            if a is None or t is None:
                return ""
            return self._edge_uri(a, BLOCK, t) or self._edge_uri(t, BLOCK, a)
        return self._read(read)

    def bidirectional_block_via_list(self, actor: str, target: str) -> str:
        """The list through which one of two accounts blocks the other (the actor's first), or ""."""
        def read() -> str:
            a, t = self._active(actor), self._active(target)
            if a is None or t is None:
                return ""
            return self._list_block_ref(a, t)[1] or self._list_block_ref(t, a)[1]
        return self._read(read)

    def _list_block_ref(self, blocker: int, blocked: int) -> tuple[str, str]:
        """(the blocker's listblock of a list that contains ``blocked``, that list's uri),
        or ("", ""): the list whose listblock (the oldest live one of each list) is the
        newest."""
        owners = self._list_owners_naming(blocked)  # most lists' owners never named it: no read
        if not owners:
            return "", ""
        for sk, list_key in self._blocked_lists(blocker):
            owner = key_account(list_key)
            if owner is not None and owner in owners and self._member_item(list_key, blocked):
                return self._uri(blocker, LISTBLOCK, sk), self._target_name(list_key)
        return "", ""

    def _list_blocked_by(self, blocked: int, blocker: int) -> tuple[str, str]:
        """``_list_block_ref(blocker, blocked)`` read from the blocked account's side: the
        lists holding it (its list memberships), and per list who blocks it. A request
        about one viewer and many accounts reads those once, and an account that blocks
        none of them costs one bitmap lookup, not a read of its list blocks. (Unlike
        ``_blocked_lists`` it is not bounded to the blocker's newest LIST_BLOCKS_MAX list
        blocks: it never reads them.)"""
        lists = self._lists_holding(blocked)
        if not lists or blocker not in self._list_blockers(blocked, lists):
            return "", ""
        best: tuple[int, bytes] | None = None
        for list_key in lists:  # the list whose (oldest live) listblock by blocker is the newest
            sk = self._first_of(list_key, LISTBLOCK, ".subject", blocker)
            if sk is not None and (best is None or sk > best[0]):
                best = (sk, list_key)
        if best is None:
            return "", ""
        return self._uri(blocker, LISTBLOCK, best[0]), self._target_name(best[1])

    def _lists_holding(self, member: int) -> list[bytes]:
        """The keys of the lists a live listitem of the list's own author puts ``member``
        in (``_member_item``'s rule), memoized per snapshot."""
        memo_key = (did_key(member), -2)
        cached = self._memo.get(memo_key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        listitem = self._coll_id(LISTITEM)
        found: set[bytes] = set()
        if listitem is not None:
            for sk, owner in self._live(self._of(member, LISTITEM, ".subject")):
                list_key = self._link_target(self._links_of(sk, owner, listitem) or [], LISTITEM, ".list")
                if list_key is not None and key_record(list_key) is not None and key_account(list_key) == owner:
                    found.add(list_key)
        lists = sorted(found)
        self._memo[memo_key] = lists  # type: ignore[assignment]
        return lists

    def _list_blockers(self, member: int, lists: list[bytes]) -> BitMap:
        """The active accounts with a live listblock of any of ``lists`` (the lists holding
        ``member``), memoized per snapshot with them."""
        memo_key = (did_key(member), -3)
        cached = self._memo.get(memo_key)
        if cached is not None:
            return cached[0]  # type: ignore[return-value]
        blockers = BitMap()
        for list_key in lists:
            blockers |= self._tally(list_key, LISTBLOCK, ".subject")[1]
        self._memo[memo_key] = [blockers]  # type: ignore[list-item]
        return blockers

    def _blocked_lists(self, blocker: int) -> list[tuple[int, bytes]]:
        """(listblock sort key, list key) of an account's newest list blocks, newest first,
        each list once at its oldest live listblock (memoized per snapshot)."""
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
        oldest: dict[bytes, int] = {}
        for sk, list_key in found:  # newest first: the last one seen of a list is its oldest
            oldest[list_key] = sk
        found = [(sk, list_key) for sk, list_key in found if oldest[list_key] == sk]
        self._memo[memo_key] = found  # type: ignore[assignment]
        return found

    def counts_for_users(self, dids: list[str], *, reference: bool = False) -> dict[str, list[int]]:
        """getCountsForUsers.  With ``reference`` (bsky.Service), as the reference's
        aggregates count: followers and following include inactive accounts (only
        deleting an account removes its follows there)."""
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
                out["followers"].append(len(self._tally(did_key(aid), FOLLOW, ".subject", inactive=reference)[1]))
                out["following"].append(len(self._follow_set(aid, inactive=reference)))
                for name, coll in (("posts", POST), ("reposts", REPOST), ("lists", LIST), ("feeds", GENERATOR),
                                   ("starterPacks", STARTERPACK)):
                    out[name].append(self._tally(did_key(aid), coll, AUTHOR)[0])
            return out
        return self._read(read)

    # ------------------------------------------------------------ list-block subscriptions

    def blocklist_subscription(self, actor: str, list_uri: str) -> str:
        """The actor's listblock record of the list (its oldest live one), or ""."""
        def read() -> str:
            aid = self._active(actor)
            if aid is None:
                return ""
            sk = self._first_of(self._target_key(list_uri), LISTBLOCK, ".subject", aid)
            return "" if sk is None else self._uri(aid, LISTBLOCK, sk)
        return self._read(read)

    def blocklist_subscriptions(self, actor: str, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        """The live lists the actor blocks through listblocks, each once, ordered by the
        actor's listblock of each (its oldest live one), newest first."""
        after = decode_cursor(cursor) if cursor else None

        def read() -> tuple[list[str], str | None]:
            aid = self._active(actor)
            listblock = self._coll_id(LISTBLOCK)
            if aid is None or listblock is None:
                return [], None
            uris: list[str] = []
            last: Entry | None = None
            for sk, _ in self._live(self._of(aid, LISTBLOCK, AUTHOR), after):
                list_key = self._link_target(self._links_of(sk, aid, listblock) or [], LISTBLOCK, ".subject")
                if list_key is None or not self._is_live_list(list_key):
                    continue
                if self._first_of(list_key, LISTBLOCK, ".subject", aid) != sk:
                    continue  # a newer listblock of a list listed at its oldest one
                if len(uris) == limit:
                    return uris, encode_cursor(last)  # type: ignore[arg-type]
                uris.append(self._target_name(list_key))
                last = (sk, aid)
            return uris, None
        return self._read(read)

    def _is_live_list(self, key: bytes) -> bool:
        """Whether an at-uri key names a live app.bsky.graph.list record of an active account."""
        parts = key_record(key)
        if parts is None or parts[0] in self.hidden or self._coll_name(parts[1]) != LIST:
            return False
        sk = parts[2] if isinstance(parts[2], int) else self._sort_key(parts[0], parts[1], parts[2])
        return sk is not None and self._links_of(sk, parts[0], parts[1]) is not None

    # ------------------------------------------------------------ actor search

    def search_actors(self, prefix: str, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        """Active accounts whose handle (from identity events, lower case) starts with
        ``prefix``, in handle order (then account ID). At most SEARCH_SCAN_MAX rows are read
        per page: a page cut short by inactive accounts still carries a cursor."""
        after = decode_search_cursor(cursor) if cursor else None
        prefix = prefix.lower()

        def read() -> tuple[list[str], str | None]:
            low, low_aid = after if after is not None else (prefix, 0)
            query = "SELECT handle, aid, did FROM actor WHERE handle IS NOT NULL AND (handle, aid) > (?, ?)"
            args: list[Any] = [low, low_aid]
            upper = _prefix_upper(prefix)
            if upper is not None:
                query += " AND handle < ?"
                args.append(upper)
            if prefix:
                query += " AND handle >= ?"
                args.append(prefix)
            query += " ORDER BY handle, aid LIMIT ?"
            args.append(SEARCH_SCAN_MAX)
            rows = self.conn.execute(query, args).fetchall()
            hidden = self.hidden
            dids: list[str] = []
            for i, (handle, aid, did) in enumerate(rows):
                if aid in hidden:
                    continue
                if len(dids) == limit:
                    previous = rows[i - 1]
                    return dids, encode_search_cursor(previous[0], previous[1])
                dids.append(did)
            if len(rows) == SEARCH_SCAN_MAX:
                return dids, encode_search_cursor(rows[-1][0], rows[-1][1])
            return dids, None
        return self._read(read)


def _prefix_upper(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (None: no bound)."""
    while prefix:
        following = ord(prefix[-1]) + 1
        if 0xD800 <= following <= 0xDFFF:
            following = 0xE000  # surrogates are no characters (and no UTF-8)
        if following <= 0x10FFFF:
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


def encode_search_cursor(handle: str, aid: int) -> str:
    """An opaque cursor for a position in a handle search: after (handle, account ID)."""
    return base64.urlsafe_b64encode(f"{aid}:{handle}".encode()).decode().rstrip("=")


def decode_search_cursor(cursor: str) -> tuple[str, int]:
    """Inverse of encode_search_cursor; raises BadCursor."""
    try:
        text = base64.b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4), altchars=b"-_",
                                validate=True).decode()
        aid_text, sep, handle = text.partition(":")
        if not sep or not aid_text.isdigit() or not aid_text.isascii() or not handle:
            raise ValueError(cursor)
        return handle, int(aid_text)
    except (ValueError, UnicodeError):
        raise BadCursor("invalid cursor") from None
