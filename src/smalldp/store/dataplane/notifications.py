"""An account's notifications (bsky.Service GetNotifications) as a view of the backlink
index, and the identity facts the AppView's DID-document cache reads.

**What the reference does.**  The reference indexer writes a ``notification`` row when a
record is indexed (``dist/data-plane/server/indexing/plugins/*.js``); GetNotifications
lists an account's rows newest first by ``sortAt`` and drops rows whose ``reasonSubject``
record no longer exists.  Per record type:

* follow: to the subject, ``follow``, no subject (a self-follow notifies too);
* like / repost: to the subject's author, ``like`` / ``repost`` with the subject; and to
  the author of ``.via`` (a repost), ``like-via-repost`` / ``repost-via-repost`` with the
  via record; never to the liker or reposter itself;
* post: at most one notification per recipient, never to its author, first come first
  kept: ``mention`` for each facet mention DID; ``quote`` to the author of the embedded
  post (``embed.record``, or ``embed.record.record`` of a recordWithMedia) with it; then
  ``reply`` to the author of each ancestor 1..4 levels up the ``reply.parent`` chain
  (walked through posts that exist) with that ancestor;
* profile with ``joinedViaStarterPack``: ``starterpack-joined`` to the pack's author, with
  the pack, at the profile's indexing time.

**How smalldp finds them.**  The backlink index is keyed by target, and every record of
an account X has a target key starting with X's account ID in key order (store/encoding.py:
kind byte, account, collection, TID), so "everything linking to X's records" is a key
range per collection.  One query per range reads the chunks of the sources that notify:

* under X's DID key: follows (``.subject``) and post mentions (``.facets[].features
  [app.bsky.richtext.facet#mention].did``), whole;
* X's **newest NOTIFICATION_POSTS posts** (the author links ``@`` give them newest first)
  older than the cursor (plus a slack of CURSOR_SLACK_US for clocks), and the keys of
  deleted posts among them (see ``_window``): their likes, reposts
  (``.subject.uri``), replies (``.reply.parent.uri``, ``.reply.root.uri``) and quotes
  (``.embed.record.uri``, ``.embed.record.record.uri``); and, walking down the replies
  to those of them that are replies themselves, replies up to four levels below;
* X's newest NOTIFICATION_REPOSTS reposts older than the cursor: likes and reposts via them
  (``.via.uri``);
* all of X's feed generators, lists, starter packs and labeler services: likes and reposts
  of them, and profiles joining through X's starter packs (``.joinedViaStarterPack.uri``).

Each (target, source) is a newest-first stream of (sort key, account); a heap merges them,
records seen through several links are grouped, and each group becomes the reference's
notifications (rules above) as it is reached, so a page decodes little more than it shows.
A record's position is its rkey TID (its creation time at its PDS), ties by account; a
starter-pack join's is the profile's receive time.  Inactive authors are skipped, as are
notifications whose subject record is not live.  ``priority`` is "X follows the author".

**Approximate, by design** (README):

* interactions with posts older than X's newest NOTIFICATION_POSTS posts before the cursor
  (reposts: NOTIFICATION_REPOSTS) are not found, nor links to X's deleted posts older than
  its oldest live one (a quote of one, which the reference drops, may then show as the
  reply it also is; a reply whose thread root is such a post is not found);
* replies 2..4 levels down are found in threads X started (the ``.reply.root.uri`` links
  of X's posts) and below X's replies in other threads (walked down the
  ``.reply.parent.uri`` backlinks, at most DEEP_LOOKUPS_MAX keys per page, X's newest
  posts first); a reply whose root field names another thread is missed below X's roots;
* likes and reposts are found of X's posts, feed generators, lists, starter packs and
  labeler services (the reference: of any record of X's);
* records whose rkey is not a TID have no time and are left out (starter-pack joins
  excepted, at their profile's receive time: its latest update, where the reference keeps
  the first);
* a reply that breaks its thread's gate gives no reply notification, and a quote that
  breaks the quoted post's post gate no quote notification, as the reference's (decided
  when read: store/dataplane/gates.py); hidden replies are not applied (the reference
  skips reply notifications of replies the root's author hid);
* one like, repost or follow per account and subject notifies, as the reference indexes
  only the first: smalldp's first is the oldest live one by rkey, so when it is deleted
  the next one notifies (the reference then shows none);
* the reason is decided when read, from the records as they are now (the reference
  decides when it indexes the post);
* records of inactive accounts notify nothing, and an inactive account has no
  notifications (the reference keeps both; its AppView hides inactive authors);
* work per page is bounded: at most NOTIFICATION_GROUPS_MAX records examined, then the
  page ends with a cursor where it stopped; the ``priority`` filter can make such pages
  short or empty.

**Cursors** are ``<sort key>_<account>_<collection>_<place>`` (decimal), never a date
``new Date()`` reads: the AppView rewrites a cursor that parses as a date (its
``delayCursor``), and sends an ISO datetime as the first page's cursor ("now", minus
``notificationsDelayMs``), which smalldp, like the reference, reads as "older than then".
"""

from __future__ import annotations

import datetime
import heapq
from dataclasses import dataclass
from typing import Iterator

from smalldp.derived import AUTHOR, FOLLOW, GENERATOR, LIST, POST, PROFILE, REPOST, STARTERPACK
from smalldp.store.dataplane.gates import GateQueries
from smalldp.store.encoding import Entry, chunk_floor, did_key, get_varint, iter_entries, key_record, varint
from smalldp.store.reader import BadCursor

LIKE = "app.bsky.feed.like"
LABELER = "app.bsky.labeler.service"
MENTION_PATH = ".facets[].features[app.bsky.richtext.facet#mention].did"
QUOTE_PATHS = (".embed.record.uri", ".embed.record.record.uri")
JOIN_PATH = ".joinedViaStarterPack.uri"

NOTIFICATION_POSTS = 1000  # the account's newest posts (older than the cursor) read per page
NOTIFICATION_REPOSTS = 200  # its newest reposts, for likes and reposts via them
NOTIFICATION_GROUPS_MAX = 5000  # notifying records examined per page, then a cursor
NOTIFICATION_JOINS_MAX = 1000  # starter-pack joins read per page
CURSOR_SLACK_US = 3_600_000_000  # posts this much newer than the cursor still count (clock skew)
REPLY_NOTIF_DEPTH = 5  # the reference's: ancestors 1..4 levels up are notified
DEEP_LOOKUPS_MAX = 300  # keys looked up per page to find replies 2..4 levels below X's replies
OTHER_COLLECTIONS = (GENERATOR, LIST, STARTERPACK, LABELER)  # records of X that get likes

# Kinds of link from a notifying record to X (or X's record).
FOLLOWED, MENTIONED, QUOTED, PARENT, ROOT, DEEP, SUBJECT, VIA, JOINED = range(9)
# Places of a record's notifications within its position (the cursor's last field): a
# like or repost of X's record comes before one via X's repost; a cursor with place 0 is
# below all of a record's notifications (a page the work bound ended).
_PLACE_SUBJECT, _PLACE_OTHER = 2, 1
_SHIFT = 10  # a TID is (microseconds << 10) | clock

Row = tuple[int, int, bytes]  # a backlink chunk: (run, lo, data)
Candidate = tuple[int, int, int, int, bytes]  # (sort key, author, collection ID, kind, target key)
Position = tuple[int, int, int, int]  # (sort key, author, collection ID, place)


@dataclass(frozen=True)
class Notification:
    """One notification: the notifying record, why, about which of the recipient's records
    (``reason_subject``, "" for none), when (microseconds), and whether the recipient
    follows the author."""

    uri: str
    reason: str
    reason_subject: str
    time_us: int
    priority: bool


@dataclass(frozen=True)
class IdentityState:
    """What the store knows of a DID's identity: the handle of its latest identity event,
    that event's order time (``actor.id_us``), and the DID whose claim of that handle is
    the newest (``getDidsByHandles``' rule; None without a handle)."""

    handle: str | None
    id_us: int | None
    handle_owner: str | None


def encode_notification_cursor(position: Position) -> str:
    """An opaque cursor for a position (decimal fields joined by ``_``)."""
    return "_".join(str(v) for v in position)


def decode_notification_cursor(cursor: str) -> Position:
    """A position from our cursor, or from an ISO 8601 datetime (the AppView's first-page
    cursor, the reference's cursor format): just before that moment.  Raises BadCursor."""
    parts = cursor.split("_")
    if len(parts) == 4 and all(p.isdigit() and p.isascii() and len(p) <= 20 for p in parts):
        sk, aid, coll, place = map(int, parts)
        if sk < 1 << 63 and aid < 1 << 32 and coll < 1 << 32 and place <= _PLACE_SUBJECT:
            return sk, aid, coll, place
        raise BadCursor("invalid cursor")
    if len(cursor) > 64 or "T" not in cursor:
        raise BadCursor("invalid cursor")
    try:
        moment = datetime.datetime.fromisoformat(cursor.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadCursor("invalid cursor") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    delta = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    time_us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return max(0, min(time_us, (1 << 53) - 1)) << _SHIFT, 0, 0, 0


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key above every key starting with ``prefix`` (its last byte is a
    varint's last byte, below 0x80, so it can be incremented)."""
    return prefix[:-1] + bytes((prefix[-1] + 1,))


class NotificationQueries(GateQueries):
    """GetNotifications, and the identity facts of a DID (for the AppView's DID cache)."""

    # ------------------------------------------------------------ identity facts

    def identity_state(self, did: str) -> IdentityState | None:
        """The store's identity facts of ``did``, or None for a DID it never saw."""
        def read() -> IdentityState | None:
            row = self.conn.execute("SELECT handle, id_us FROM actor WHERE did=?", (did,)).fetchone()
            if row is None:
                return None
            handle, id_us = row
            owner = None
            if handle is not None:
                # the newest claim by order time, as dids_by_handles
                found = self.conn.execute("SELECT did FROM actor WHERE handle=? ORDER BY id_us IS NULL, id_us DESC, "
                                          "aid DESC LIMIT 1", (handle,)).fetchone()
                owner = found[0] if found else None
            return IdentityState(handle, id_us, owner)
        return self._read(read)

    # ------------------------------------------------------------ notifications

    def notifications(self, actor: str, limit: int, cursor: str | None,
                      priority: bool = False) -> tuple[list[Notification], str | None]:
        """GetNotifications: ``actor``'s notifications newest first, at most ``limit``, and
        the cursor of the next page (None at the end).  ``priority``: only those whose
        author the actor follows.  Raises BadCursor."""
        after = decode_notification_cursor(cursor) if cursor else None

        def read() -> tuple[list[Notification], str | None]:
            x = self._active(actor)
            if x is None:
                return [], None
            return self._notifications(x, limit, after, priority)
        return self._read(read)

    def _notifications(self, x: int, limit: int, after: Position | None,
                       only_priority: bool) -> tuple[list[Notification], str | None]:
        # Streams start at the cursor's (sort key, account) inclusive, so the record at the
        # cursor is seen whole; its notifications at or above the cursor are then skipped.
        start: Entry | None = None if after is None else (after[0], after[1] + 1)
        streams = self._streams(x, start, after)
        follows = self._follow_set(x)
        live: dict[bytes, bool] = {}
        out: list[Notification] = []
        last: Position | None = None
        examined: tuple[int, int, int] | None = None  # the last record examined
        count = 0
        for (sk, aid, coll), links in _groups(heapq.merge(*streams, reverse=True)):
            if after is None or (sk, aid, coll) < after[:3]:  # the cursor's own record is not new work
                count += 1
            if count > NOTIFICATION_GROUPS_MAX and examined is not None:
                # Work bound: the next page goes on below the last record examined.
                return out, encode_notification_cursor((*examined, 0))
            examined = (sk, aid, coll)
            for place, reason, subject in self._reasons(x, sk, aid, coll, links):
                position = (sk, aid, coll, place)
                if after is not None and position >= after:
                    continue
                if subject is not None and not self._subject_live(subject, live):
                    continue
                followed = aid in follows
                if only_priority and not followed:
                    continue
                if len(out) == limit:
                    assert last is not None
                    return out, encode_notification_cursor(last)
                out.append(Notification(self._notifier_uri(sk, aid, coll), reason,
                                        "" if subject is None else self._target_name(subject),
                                        self._time_us(sk, aid, coll), followed))
                last = position
        return out, None

    # ------------------------------------------------------------ candidate streams

    def _streams(self, x: int, start: Entry | None, after: Position | None) -> list[Iterator[Candidate]]:
        """Every newest-first stream of records that may notify X (module docstring)."""
        streams: list[Iterator[Candidate]] = []
        mine = did_key(x)
        streams += self._range_streams(mine, _prefix_end(mine), [(FOLLOW, ".subject", FOLLOWED),
                                                                 (POST, MENTION_PATH, MENTIONED)], start)
        upper = None if after is None else after[0] + (CURSOR_SLACK_US << _SHIFT)
        post_sources = [(LIKE, ".subject.uri", SUBJECT), (REPOST, ".subject.uri", SUBJECT),
                        (POST, ".reply.parent.uri", PARENT), (POST, ".reply.root.uri", ROOT),
                        *((POST, path, QUOTED) for path in QUOTE_PATHS)]
        via_sources = [(LIKE, ".via.uri", VIA), (REPOST, ".via.uri", VIA)]
        for collection, sources, window in ((POST, post_sources, NOTIFICATION_POSTS),
                                            (REPOST, via_sources, NOTIFICATION_REPOSTS)):
            span = self._window(x, collection, upper, window)
            if span is None:
                continue
            kinds, found = self._range_rows(span[0], span[1], sources)
            streams += [self._candidates(rows, start, *kinds[sid], tkey) for (tkey, sid), rows in found.items()]
            if collection == POST:
                parent_sid = self._source_id(POST, ".reply.parent.uri")
                children = {tkey: rows for (tkey, sid), rows in found.items() if sid == parent_sid}
                if children and parent_sid is not None:
                    streams.append(self._deep_replies(x, children, kinds[parent_sid][0], parent_sid, start))
        other_sources = [(LIKE, ".subject.uri", SUBJECT), (REPOST, ".subject.uri", SUBJECT)]
        for collection in OTHER_COLLECTIONS:
            coll = self._coll_id(collection)
            if coll is None:
                continue
            for kind_byte in (b"\x01", b"\x02"):  # rkeys that are TIDs, and the others
                prefix = kind_byte + varint(x) + varint(coll)
                streams += self._range_streams(prefix, _prefix_end(prefix), other_sources, start)
                if collection == STARTERPACK:
                    streams.append(self._joins(prefix, _prefix_end(prefix), start))
        return streams

    def _window(self, x: int, collection: str, upper: int | None, size: int) -> tuple[bytes, bytes] | None:
        """The key range of X's records of a collection (TID rkeys) from its ``size``-th
        newest live one below ``upper`` (its oldest live one when it has fewer) up to
        ``upper`` (None: no bound), or None when it has no live one there.

        Keys of records not live in the range are read too: a link to one still decides a
        post's reason (the reference decided it when it indexed the post), and the
        notification then goes with its dead subject.  Below the oldest live record they
        are not: an account's posts from before smalldp followed the network are targets
        without records (their likes were seen, not them), often hundreds of them, and
        every notification about them would be dropped anyway."""
        coll = self._coll_id(collection)
        if coll is None:
            return None
        last: int | None = None
        count = 0
        for sk, _ in self._live(self._of(x, collection, AUTHOR), None if upper is None else (upper, 0)):
            if sk < 0:
                break  # non-TID rkeys (aliases) sort last and have no time
            last = sk
            count += 1
            if count == size:
                break
        if last is None:
            return None
        prefix = b"\x01" + varint(x) + varint(coll)
        high = _prefix_end(prefix) if upper is None else prefix + min(upper, (1 << 64) - 1).to_bytes(8, "big")
        return prefix + last.to_bytes(8, "big"), high

    def _range_streams(self, low: bytes, high: bytes, sources: list[tuple[str, str, int]],
                       start: Entry | None) -> list[Iterator[Candidate]]:
        """One stream per (target key, source) found in [low, high) for these sources."""
        kinds, found = self._range_rows(low, high, sources)
        return [self._candidates(rows, start, *kinds[sid], tkey) for (tkey, sid), rows in found.items()]

    def _range_rows(self, low: bytes, high: bytes, sources: list[tuple[str, str, int]]
                    ) -> tuple[dict[int, tuple[int, int]], dict[tuple[bytes, int], list[Row]]]:
        """The chunks of every (target key, source) in [low, high) for these sources, in one
        query; and per source ID its (collection ID, kind)."""
        kinds: dict[int, tuple[int, int]] = {}
        for collection, path, kind in sources:
            sid = self._source_id(collection, path)
            coll = self._coll_id(collection)
            if sid is not None and coll is not None:
                kinds[sid] = (coll, kind)
        found: dict[tuple[bytes, int], list[Row]] = {}
        if not kinds:
            return kinds, found
        marks = ",".join(str(sid) for sid in kinds)  # integers only
        for tkey, sid, run, lo, data in self.conn.execute(
                f"SELECT tkey, sid, run, lo, data FROM bl WHERE run IN ({self._runs}) AND tkey >= ? AND tkey < ? "
                f"AND sid IN ({marks})", (low, high)):
            found.setdefault((tkey, sid), []).append((run, lo, data))
        return kinds, found

    def _deep_replies(self, x: int, children: dict[bytes, list[Row]], post: int, parent_sid: int,
                      start: Entry | None) -> Iterator[Candidate]:
        """Replies 2..4 levels below X's posts that are replies themselves (in threads X did
        not start: below X's thread roots, ``.reply.root.uri`` finds them), newest first.

        Breadth first down the ``.reply.parent.uri`` backlinks, from X's newest posts, at
        most DEEP_LOOKUPS_MAX keys per page; ``_reasons`` then walks each one back up to X's
        nearest post (the reference's rule)."""
        hidden = self.hidden
        found: list[Candidate] = []
        seen: set[bytes] = set()
        budget = DEEP_LOOKUPS_MAX
        for mine in sorted(children, reverse=True):  # X's newest posts first
            parts = key_record(mine)
            if parts is None or not isinstance(parts[2], int):
                continue
            links = self._links_of(parts[2], x, post)
            if links is None or self._link_target(links, POST, ".reply.parent.uri") is None:
                continue  # not live, or a thread root
            level = [e for e in _newest_first(children[mine], None) if e[0] >= 0 and e[1] not in hidden]
            for _ in range(2, REPLY_NOTIF_DEPTH):
                below: list[Entry] = []
                for sk, aid in level:
                    key = b"\x01" + varint(aid) + varint(post) + sk.to_bytes(8, "big")
                    if key in seen:
                        continue
                    if budget == 0:
                        return _below(found, start)
                    budget -= 1
                    seen.add(key)
                    rows: list[Row] = self.conn.execute(
                        f"SELECT run, lo, data FROM bl WHERE run IN ({self._runs_for(key, (parent_sid,))}) "
                        "AND tkey=? AND sid=?", (key, parent_sid)).fetchall()
                    for e in (_newest_first(rows, None) if rows else ()):
                        if e[0] >= 0 and e[1] not in hidden:
                            below.append(e)
                            found.append((e[0], e[1], post, DEEP, mine))
                level = below
                if not level:
                    break
        return _below(found, start)

    def _candidates(self, rows: list[Row], start: Entry | None, coll: int, kind: int,
                    tkey: bytes) -> Iterator[Candidate]:
        """A key's live entries below ``start``, newest first, as candidates (records whose
        rkey is not a TID, which sort last, end the stream)."""
        hidden = self.hidden
        for sk, aid in _newest_first(rows, start):
            if sk < 0:
                return
            if aid not in hidden:
                yield sk, aid, coll, kind, tkey

    def _joins(self, low: bytes, high: bytes, start: Entry | None) -> Iterator[Candidate]:
        """Profiles (rkey ``self``) joined through X's starter packs in [low, high), at their
        receive time (their rkey has none), newest first; at most NOTIFICATION_JOINS_MAX."""
        sid = self._source_id(PROFILE, JOIN_PATH)
        coll = self._coll_id(PROFILE)
        if sid is None or coll is None:
            return iter(())
        found: list[Candidate] = []
        hidden = self.hidden
        for tkey, run, lo, data in self.conn.execute(
                f"SELECT tkey, run, lo, data FROM bl WHERE run IN ({self._runs}) AND tkey >= ? AND tkey < ? "
                f"AND sid = {sid}", (low, high)):
            for sk, aid in _entries(data):
                if aid in hidden or len(found) >= NOTIFICATION_JOINS_MAX:
                    continue
                row = self.conn.execute(
                    "SELECT b.indexed_us FROM alias a JOIN body b ON b.sk=a.sk AND b.aid=a.aid AND b.coll=a.coll "
                    "WHERE a.aid=? AND a.coll=? AND a.rkey='self' AND a.sk=?", (aid, coll, sk)).fetchone()
                if row is not None:
                    position = row[0] << _SHIFT
                    if start is None or (position, aid) < start:
                        found.append((position, aid, coll, JOINED, tkey))
        found.sort(reverse=True)
        return iter(found)

    # ------------------------------------------------------------ deciding

    def _reasons(self, x: int, sk: int, aid: int, coll: int,
                 links: list[tuple[int, bytes]]) -> list[tuple[int, str, bytes | None]]:
        """The notifications (place, reason, subject key) one record gives X, by the
        reference's rules (module docstring), from the links that made it a candidate."""
        kinds = {kind: tkey for kind, tkey in reversed(links)}  # the first link of each kind
        if FOLLOWED in kinds:
            if not self._first_link(kinds[FOLLOWED], FOLLOW, ".subject", sk, aid):
                return []  # a second follow of X by one account (the reference keeps the first)
            return [(_PLACE_OTHER, "follow", None)]
        if JOINED in kinds:
            return [(_PLACE_OTHER, "starterpack-joined", kinds[JOINED])]
        if aid == x:
            return []  # likes, reposts and posts never notify their own author
        name = self._coll_name(coll)
        if name in (LIKE, REPOST):
            reason = "like" if name == LIKE else "repost"
            subject = kinds.get(SUBJECT)
            if subject is None:  # only via X's repost: the subject is someone else's
                own = self._links_of(sk, aid, coll)
                subject = None if own is None else self._link_target(own, name, ".subject.uri")
            if subject is not None and not self._first_link(subject, name, ".subject.uri", sk, aid):
                return []  # not the account's first like (repost) of the subject: the reference ignores it
            out: list[tuple[int, str, bytes | None]] = []
            if SUBJECT in kinds:
                out.append((_PLACE_SUBJECT, reason, kinds[SUBJECT]))
            if VIA in kinds:
                out.append((_PLACE_OTHER, f"{reason}-via-repost", kinds[VIA]))
            return out
        if MENTIONED in kinds:
            return [(_PLACE_OTHER, "mention", None)]
        if QUOTED in kinds:
            own = self._links_of(sk, aid, coll)
            if own is not None and not self._violates_embedding_rules(sk, aid, own):
                return [(_PLACE_OTHER, "quote", kinds[QUOTED])]
            # a quote the post gate forbids notifies nothing as a quote (the reference), but
            # may as a reply
        if PARENT in kinds or ROOT in kinds or DEEP in kinds:
            own = self._links_of(sk, aid, coll)
            if own is None or self._violates_thread_gate(sk, aid, own):
                return []  # the reference sends no reply notification for a reply breaking the gate
        if PARENT in kinds:
            return [(_PLACE_OTHER, "reply", kinds[PARENT])]
        if ROOT in kinds or DEEP in kinds:
            ancestor = self._reply_ancestor(x, sk, aid, coll)
            return [] if ancestor is None else [(_PLACE_OTHER, "reply", ancestor)]
        return []

    def _reply_ancestor(self, x: int, sk: int, aid: int, post: int) -> bytes | None:
        """The key of X's nearest post 2..4 levels up a reply's parent chain, walked through
        live posts (the reference's ancestors), or None."""
        links = self._links_of(sk, aid, post)
        for _ in range(1, REPLY_NOTIF_DEPTH):
            if links is None:
                return None
            parent = self._link_target(links, POST, ".reply.parent.uri")
            parts = None if parent is None else key_record(parent)
            if parent is None or parts is None or parts[1] != post or parts[0] in self.hidden:
                return None
            p_sk = parts[2] if isinstance(parts[2], int) else self._sort_key(parts[0], post, parts[2])
            links = None if p_sk is None else self._links_of(p_sk, parts[0], post)
            if links is None:
                return None  # the chain stops at a post that is not live
            if parts[0] == x:
                return parent
        return None

    def _first_link(self, tkey: bytes, collection: str, path: str, sk: int, aid: int) -> bool:
        """Whether the record at (sk, aid) is its author's oldest live one of (collection,
        path) linking to ``tkey``: the one like, repost or follow of the pair the reference
        indexes (base.py)."""
        sid = self._source_id(collection, path)
        return sid is None or self._is_first(tkey, sid, sk, aid)

    def _subject_live(self, tkey: bytes, memo: dict[bytes, bool]) -> bool:
        """Whether the record a target key names is live (memoised per page)."""
        live = memo.get(tkey)
        if live is None:
            parts = key_record(tkey)
            live = False
            if parts is not None and parts[0] not in self.hidden:
                aid, coll, rk = parts
                sk = rk if isinstance(rk, int) else self._sort_key(aid, coll, rk)
                live = sk is not None and self._links_of(sk, aid, coll) is not None
            memo[tkey] = live
        return live

    def _notifier_uri(self, sk: int, aid: int, coll: int) -> str:
        collection = self._coll_name(coll)
        if collection == PROFILE:
            return f"at://{self._did(aid)}/{PROFILE}/self"
        return self._uri(aid, collection, sk)

    def _time_us(self, sk: int, aid: int, coll: int) -> int:
        return sk >> _SHIFT


def _below(candidates: list[Candidate], start: Entry | None) -> Iterator[Candidate]:
    """Candidates below ``start``, newest first."""
    out = [c for c in candidates if start is None or (c[0], c[1]) < start]
    out.sort(reverse=True)
    return iter(out)


def _entries(data: bytes) -> Iterator[Entry]:
    """A chunk's entries newest first, decoded lazily; its header is skipped, not parsed
    (its actor bitmap is not needed to walk it)."""
    if data[0] < 0x80 and data[1] == 0 and data[2] == 0:  # few entries, no duplicates, no bitmap
        return iter_entries(data, 3, data[0])
    count, pos = get_varint(data, 0)
    extra, pos = get_varint(data, pos)
    for _ in range(2 * extra):
        pos = get_varint(data, pos)[1]
    size, pos = get_varint(data, pos)
    return iter_entries(data, pos + size, count)


def _newest_first(rows: list[Row], start: Entry | None) -> Iterator[Entry]:
    """The entries of one key's chunks (every run) merged newest first, strictly below
    ``start``.  In a run, chunk i holds sort keys in [its floor, the floor of chunk i-1):
    chunks wholly at or above ``start`` are skipped undecoded."""
    if len(rows) == 1:
        merged: Iterator[Entry] = _entries(rows[0][2])
    else:
        by_run: dict[int, list[tuple[int, bytes]]] = {}
        for run, lo, data in rows:
            by_run.setdefault(run, []).append((lo, data))
        streams = [_run_entries(chunks, start) for chunks in by_run.values()]
        merged = streams[0] if len(streams) == 1 else heapq.merge(*streams, reverse=True)
    if start is None:
        return merged
    return (entry for entry in merged if entry < start)


def _run_entries(chunks: list[tuple[int, bytes]], start: Entry | None) -> Iterator[Entry]:
    chunks.sort(key=lambda chunk: chunk_floor(chunk[0]), reverse=True)
    for lo, data in chunks:
        if start is not None and chunk_floor(lo) > start[0]:
            continue  # everything here is newer than the cursor
        yield from _entries(data)


def _groups(candidates: Iterator[Candidate]) -> Iterator[tuple[tuple[int, int, int], list[tuple[int, bytes]]]]:
    """Consecutive candidates of one record (sort key, author, collection), with the
    (kind, target key) of each link that brought it."""
    key: tuple[int, int, int] | None = None
    links: list[tuple[int, bytes]] = []
    for sk, aid, coll, kind, tkey in candidates:
        if (sk, aid, coll) != key:
            if key is not None:
                yield key, links
            key = (sk, aid, coll)
            links = []
        links.append((kind, tkey))
    if key is not None:
        yield key, links

