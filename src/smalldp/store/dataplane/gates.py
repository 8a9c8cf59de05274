"""Thread gates and post gates: whether a reply breaks the gate of its thread (bsky.Service's
``PostRecordMeta.violates_thread_gate``), reply counts without such replies, and whether a
quote breaks the quoted post's embedding rules (``violates_embedding_rules``).

**What the reference does.**  When its indexer indexes a reply it reads the thread root's
``app.bsky.feed.threadgate`` (the root author's gate record at the root's rkey) and the
root post, and decides once (``violatesThreadGate`` in
``dist/data-plane/server/util.js``, ``parseThreadGate`` in ``dist/views/util.js``), from
what it has indexed by then:

* the root's author may always reply; no gate, or a gate without ``allow``: anyone may;
* ``allow: []``: nobody else may;
* else the replier may when a rule lets it: ``mentionRule`` (the root post mentions the
  replier in a facet), ``followingRule`` (the root author follows the replier),
  ``followerRule`` (the replier follows the root author), ``listRule`` (the replier is
  in one of the lists: a list item of the list names it).

A reply that breaks the gate keeps the flag: the AppView then shows it in no thread and
with no ``reply`` context in feeds, and the reference leaves it out of its parent's
``replyCount`` and sends no reply notifications for it.

**What smalldp does.**  The same rules, decided when read, from what the store holds, with
"by then" kept by receive times (the ``time_us`` of the event that wrote each record, as
the reference indexes events in the order they come): the gate counts only when it was
received no later than the reply, and a follow or list item only when it was (the pair's
record: its oldest live one, store/dataplane/base.py).  Differences that remain: a gate
updated after the reply (hiding a reply updates it) counts from its update only: smalldp
keeps the latest version's receive time, not the first's (its ``createdAt`` is no better:
clients may rewrite it, and gen_events' updates set it to the root's time, before the gate
existed); a follow or list item deleted since no longer lets the reply through (the
reference kept its decision); records without a stored body (a collection outside
``body_collections``) count whenever they exist.  Mentions are read from the root post's
links.

**Post gates** the same way: the reference decides, when it indexes a post that embeds a
post (``app.bsky.embed.record``, or the record of a ``recordWithMedia``), whether the
quoted post's ``app.bsky.feed.postgate`` (its author's, at its rkey) has a
``disableRule`` among its ``embeddingRules`` (``validatePostEmbed``, ``parsePostgate``),
unless the quoting author is the quoted post's; the AppView then shows the embed detached
and the reference sends no quote notification.  smalldp decides when read, counting the
post gate only when it was received no later than the quote (an updated post gate:
as an updated thread gate).
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from smalldp.derived import FOLLOW, OUT_SUBJECT, POST
from smalldp.store.dataplane.lists import ListQueries
from smalldp.store.encoding import Entry, did_key, key_record

THREADGATE = "app.bsky.feed.threadgate"
POSTGATE = "app.bsky.feed.postgate"
QUOTE_PATHS = (".embed.record.uri", ".embed.record.record.uri")
MENTION_PATH = ".facets[].features[app.bsky.richtext.facet#mention].did"
RULE = "app.bsky.feed.threadgate#"
# Replies of one post checked against their thread's gate when counting them (each is a
# few lookups): past this many, the rest count as replies (a lower bound on the ones left
# out).
GATED_REPLIES_MAX = 1000
RECEIVED_BATCH = 500  # receive times read per query (SQLite allows 32,766 variables)
ALWAYS = -(1 << 62)  # "received" before any moment: a mention, or a record without a body
_UNSEEN = 1 << 63  # not a receive time: "not looked up yet" in the _let_through memo
_NO_GATE: tuple[Any, int] = (None, 0)


class GateQueries(ListQueries):
    """Thread-gate decisions (module docstring), memoized per snapshot."""

    def _gate_of(self, root: bytes) -> tuple[Any, int]:
        """The thread gate of the post a root key names: (its ``allow`` value, its receive
        time), or (None, 0) when there is none (no live gate record of the root's author
        at the root's rkey naming the root in ``post``, or no stored body)."""
        found = self._gates.get(root)
        if found is not None:
            return found
        found = _NO_GATE
        parts = key_record(root)
        gate = self._coll_id(THREADGATE)
        if parts is not None and gate is not None:
            owner, _, rkey = parts
            sk = rkey if isinstance(rkey, int) else self._sort_key(owner, gate, rkey)
            links = None if sk is None else self._links_of(sk, owner, gate)
            if sk is not None and links is not None and self._link_target(links, THREADGATE, ".post") == root:
                row = self.conn.execute("SELECT cid, indexed_us, data FROM body WHERE sk=? AND aid=? AND coll=?",
                                        (sk, owner, gate)).fetchone()
                if row is not None:
                    json, _ = self._bodies.read(sk, THREADGATE, row[0], row[1], row[2], self._target_name)
                    record = orjson.loads(json)
                    found = (record.get("allow") if isinstance(record, dict) else None, row[1])
        self._gates[root] = found
        return found

    def _violates_embedding_rules(self, sk: int, aid: int, links: list[tuple[int, bytes]],
                                  received_us: int | None = None) -> bool:
        """Whether the live post (sk, aid) with these links, received at ``received_us``
        (None: read it), quotes a post whose post gate forbids embedding it (module
        docstring)."""
        gate = self._coll_id(POSTGATE)
        if gate is None:
            return False
        for path in QUOTE_PATHS:
            quoted = self._link_target(links, POST, path)
            parts = None if quoted is None else key_record(quoted)
            if quoted is None or parts is None or parts[0] == aid or self._coll_name(parts[1]) != POST:
                continue
            owner, _, rkey = parts
            g_sk = rkey if isinstance(rkey, int) else self._sort_key(owner, gate, rkey)
            g_links = None if g_sk is None else self._links_of(g_sk, owner, gate)
            if g_sk is None or g_links is None or self._link_target(g_links, POSTGATE, ".post") != quoted:
                continue
            row = self.conn.execute("SELECT cid, indexed_us, data FROM body WHERE sk=? AND aid=? AND coll=?",
                                    (g_sk, owner, gate)).fetchone()
            if row is None:
                continue
            if received_us is None:
                post = self._coll_id(POST)
                received_us = None if post is None else self._indexed_us(sk, aid, post)
            if received_us is not None and row[1] > received_us:
                continue  # the post gate came after the quote
            json, _ = self._bodies.read(g_sk, POSTGATE, row[0], row[1], row[2], self._target_name)
            record = orjson.loads(json)
            rules = record.get("embeddingRules") if isinstance(record, dict) else None
            if isinstance(rules, list) and any(isinstance(rule, dict) and
                                               rule.get("$type") == "app.bsky.feed.postgate#disableRule"
                                               for rule in rules):
                return True
        return False

    def _indexed_us(self, sk: int, aid: int, coll: int) -> int | None:
        """When the stored version of a record was received, or None without a body
        (memoized per snapshot)."""
        key = (sk, aid, coll)
        try:
            return self._received[key]
        except KeyError:
            pass
        row = self.conn.execute("SELECT indexed_us FROM body WHERE sk=? AND aid=? AND coll=?", key).fetchone()
        received = self._received[key] = None if row is None else int(row[0])
        return received

    def _prefetch_received(self, coll: int, records: list[tuple[int, int]]) -> None:
        """Read the receive times of many records of one collection in few queries (the
        replies a reply count checks), into ``_indexed_us``' memo."""
        missing = [(sk, aid) for sk, aid in records if (sk, aid, coll) not in self._received]
        for start in range(0, len(missing), RECEIVED_BATCH):
            part = missing[start:start + RECEIVED_BATCH]
            sks = sorted({sk for sk, _ in part})
            found = {(sk, aid): received for sk, aid, received in self.conn.execute(
                f"SELECT sk, aid, indexed_us FROM body WHERE sk IN ({','.join('?' * len(sks))}) AND coll=?",
                (*sks, coll))}
            for sk, aid in part:
                received = found.get((sk, aid))
                self._received[(sk, aid, coll)] = None if received is None else int(received)

    def _received_by(self, sk: int | None, aid: int, collection: str, moment: int) -> bool:
        """Whether a live record (sort key ``sk``, None: none) was received by ``moment``
        (one without a stored body counts as received)."""
        if sk is None:
            return False
        coll = self._coll_id(collection)
        received = None if coll is None else self._indexed_us(sk, aid, coll)
        return received is None or received <= moment

    def _violates_thread_gate(self, sk: int, aid: int, links: list[tuple[int, bytes]],
                              received_us: int | None = None) -> bool:
        """Whether the live post (sk, aid) with these links, received at ``received_us``
        (None: read it), is a reply that breaks its thread's gate (module docstring)."""
        root = self._link_target(links, POST, ".reply.root.uri")
        parts = None if root is None else key_record(root)
        if root is None or parts is None or parts[0] == aid:
            return False
        return self._breaks_gate(root, sk, aid, received_us)

    def _breaks_gate(self, root: bytes, sk: int, aid: int, received_us: int | None) -> bool:
        """``_violates_thread_gate`` of the post (sk, aid), a reply in the thread of ``root``
        (a post key of another account than ``aid``'s)."""
        allow, gate_us = self._gate_of(root)
        if not isinstance(allow, list):
            return False
        if received_us is None:
            post = self._coll_id(POST)
            received_us = None if post is None else self._indexed_us(sk, aid, post)
        if received_us is not None and gate_us > received_us:
            return False  # the gate came after the reply: the reference indexed the reply first
        moment = received_us if received_us is not None else 1 << 62
        memo = (root, aid)
        earliest = self._let_through.get(memo, _UNSEEN)
        if earliest == _UNSEEN:
            earliest = self._let_through[memo] = self._earliest_pass(root, allow, aid)
        return earliest is None or earliest > moment

    def _earliest_pass(self, root: bytes, allow: list[Any], aid: int) -> int | None:
        """The earliest receive time of what lets account ``aid`` reply in the thread of
        ``root`` under the gate's ``allow`` rules (module docstring): a mention of it in the
        root post, or a record without a stored body, counts as received at ALWAYS; None
        when nothing does (the rules are the same for every reply of the account in the
        thread: only the moment each reply was received differs, so this is asked once per
        account and thread)."""
        parts = key_record(root)
        assert parts is not None  # _violates_thread_gate checked it
        owner, root_coll, rkey = parts
        kinds = {rule.get("$type") for rule in allow if isinstance(rule, dict)}
        lists: list[str] = [rule["list"] for rule in allow if isinstance(rule, dict)
                            and rule.get("$type") == RULE + "listRule" and isinstance(rule.get("list"), str)]
        if RULE + "mentionRule" in kinds:
            root_sk = rkey if isinstance(rkey, int) else self._sort_key(owner, root_coll, rkey)
            root_links = None if root_sk is None else self._links_of(root_sk, owner, root_coll)
            mention = self._source_id(POST, MENTION_PATH)
            if root_links is not None and (mention, did_key(aid)) in root_links:
                return ALWAYS
        times: list[int] = []
        if RULE + "followingRule" in kinds:
            times.extend(self._received_at(self._first_of(did_key(owner), FOLLOW, OUT_SUBJECT, aid), owner, FOLLOW))
        if RULE + "followerRule" in kinds:
            times.extend(self._received_at(self._first_of(did_key(aid), FOLLOW, OUT_SUBJECT, owner), aid, FOLLOW))
        for list_uri in lists:
            list_key = self._target_key(list_uri)
            list_parts = None if list_key is None else key_record(list_key)
            if list_key is None or list_parts is None:
                continue
            items = self._member_items(list_key, aid)
            if items:
                times.extend(self._received_at(items[0], list_parts[0], "app.bsky.graph.listitem"))
        return min(times, default=None)

    def _received_at(self, sk: int | None, aid: int, collection: str) -> list[int]:
        """[when a live record (sort key ``sk``; None: none) was received], ALWAYS for one
        without a stored body (it counts whenever it exists), [] without a record."""
        if sk is None:
            return []
        coll = self._coll_id(collection)
        received = None if coll is None else self._indexed_us(sk, aid, coll)
        return [ALWAYS if received is None else received]

    def _gated_replies(self, tkey: bytes, sid: int) -> int:
        """How many live replies under a post's ``.reply.parent.uri`` key (inactive
        accounts' too: what the reference's replyCount counts) break their thread's gate:
        none unless the post's thread (its own root, or itself) has a gate; then each of
        its newest GATED_REPLIES_MAX replies is checked.

        A reply that names the same root is known to from the root's ``.reply.root.uri``
        backlinks (one walk, memoized per snapshot), so its links are not read; its
        receive time is read with the others' in a few queries, and what lets its author
        through the gate once per author (``_earliest_pass``). Only a reply naming another
        root takes the long way. Memoized per snapshot: a timeline asks again and again
        about the same busy thread."""
        found = self._gated_counts.get((tkey, sid))
        if found is None:
            found = self._gated_counts[(tkey, sid)] = self._count_gated(tkey, sid)
        return found

    def _count_gated(self, tkey: bytes, sid: int) -> int:
        """``_gated_replies``, counted."""
        parts = key_record(tkey)
        post = self._coll_id(POST)
        if parts is None or post is None:
            return 0
        aid, coll, rkey = parts
        sk = rkey if isinstance(rkey, int) else self._sort_key(aid, coll, rkey)
        links = None if sk is None else self._links_of(sk, aid, coll)
        root = None if links is None else self._link_target(links, POST, ".reply.root.uri")
        thread_root = root if root is not None else tkey
        if not isinstance(self._gate_of(thread_root)[0], list):
            return 0
        gone = self.gone
        replies = [(r_sk, r_aid) for r_sk, r_aid in
                   itertools.islice(self._walk(self._chunks(tkey, sid), None, False), GATED_REPLIES_MAX)
                   if r_aid not in gone]  # a deleted account's, not counted
        in_thread = self._thread_of(thread_root)
        owner = key_record(thread_root)[0]  # type: ignore[index]  # _gate_of found a gate of a record key
        self._prefetch_received(post, [reply for reply in replies if reply in in_thread])
        broken = 0
        for reply in replies:
            r_sk, r_aid = reply
            if reply in in_thread:  # live, its root is thread_root
                broken += r_aid != owner and self._breaks_gate(thread_root, r_sk, r_aid, None)
                continue
            r_links = self._links_of(r_sk, r_aid, post)
            if r_links is not None and self._violates_thread_gate(r_sk, r_aid, r_links):
                broken += 1
        return broken

    def _thread_of(self, root: bytes) -> set[Entry]:
        """The posts (sort key, account) naming ``root`` as their thread root, inactive
        accounts' too (memoized per snapshot)."""
        found = self._thread_posts.get(root)
        if found is None:
            sid = self._source_id(POST, ".reply.root.uri")
            found = set() if sid is None else set(self._walk(self._chunks(root, sid), None, False))
            self._thread_posts[root] = found
        return found
