"""A brute-force in-memory model of the DataPlane methods (lexicons/DATAPLANE.md).

It applies the same Jetstream v1 JSON events as the real store (plain dicts, parsed
here, not by smalldp's decoder) and answers every dev.smalldp DataPlane method by
scanning all records.  It shares no code with smalldp.store: the replay rules are
re-stated here from the spec and from tests/model.py.

Replay rules (as the store applies them):

* a commit applies only if its rev is newer than the last rev applied to that record
  (a delete of an unknown record still records its rev);
* an account / identity event applies only if it happened later than the last one
  applied: by its own ``time`` (or by ``time_us`` when it has none, when that does not
  parse, or when it is more than MAX_TIME_AHEAD_US ahead of ``time_us``); at an equal
  time a higher ``seq`` wins when both have one (an equal seq is the same event), and
  without seqs the later delivery wins;
* inactive means the latest applied account event said ``active: false``;
* ``status: deleted`` purges the account's records with a rev up to the newest rev of
  any commit of that account delivered before it; commits with a rev up to that are
  ignored from then on.

One record per pair: follows, blocks (per author and subject DID), likes, reposts (per
author and subject uri), list blocks (per author and list) and list items (per list and
subject) count once, as the reference's indexer keeps only the first of each pair; the
model's first is the pair's oldest live record by rkey (``oldest_per``).  Every list of
such records names that one record per pair, and a pair's record is that one.

Answers are plain JSON-like values; methods that page return the whole list (the
tests walk every cursor and compare the concatenation).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from smalldp.tid import int_to_tid, tid_from_time, tid_to_int

# Same value as smalldp.events.MAX_TIME_AHEAD_US (test_dataplane checks it).
MAX_TIME_AHEAD_US = 300_000_000

POST = "app.bsky.feed.post"
LIKE = "app.bsky.feed.like"
REPOST = "app.bsky.feed.repost"
FOLLOW = "app.bsky.graph.follow"
BLOCK = "app.bsky.graph.block"
LIST = "app.bsky.graph.list"
LISTITEM = "app.bsky.graph.listitem"
LISTBLOCK = "app.bsky.graph.listblock"
PROFILE = "app.bsky.actor.profile"
GENERATOR = "app.bsky.feed.generator"
STARTERPACK = "app.bsky.graph.starterpack"
LABELER = "app.bsky.labeler.service"
MENTION = "app.bsky.richtext.facet#mention"

# smalldp's default body_collections (smalldp/record_bodies.py DEFAULT_BODY_COLLECTIONS)
BODY_COLLECTIONS = frozenset({
    POST, PROFILE, LIST, GENERATOR, STARTERPACK, "app.bsky.feed.threadgate",
    "app.bsky.feed.postgate", "app.bsky.labeler.service",
    LIKE, REPOST, FOLLOW, BLOCK, LISTITEM, LISTBLOCK,
    "app.bsky.actor.status", "chat.bsky.actor.declaration", "app.bsky.notification.declaration",
    "com.germnetwork.declaration", "app.bsky.graph.verification"})

IMAGES = "app.bsky.embed.images"
VIDEO = "app.bsky.embed.video"
RECORD_WITH_MEDIA = "app.bsky.embed.recordWithMedia"

RecordId = tuple[str, str, str]  # (did, collection, rkey)

_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})\Z")


def iso_ms(moment: dt.datetime) -> str:
    """``2024-07-04T12:34:56.789Z`` (UTC, milliseconds truncated)."""
    moment = moment.astimezone(dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond // 1000:03d}Z"


def time_us_to_datetime(time_us: int) -> dt.datetime:
    """A UTC datetime for microseconds since the epoch (exact, no float)."""
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=time_us)


def parse_datetime(value: Any) -> dt.datetime | None:
    """An ATProto datetime string (date, time, timezone required) as a datetime, else None."""
    if not isinstance(value, str) or _DATETIME.match(value) is None or value.endswith("-00:00"):
        return None
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    main, _, rest = text.partition(".")
    if rest:  # fromisoformat wants 3 or 6 fraction digits: cut / pad to microseconds
        digits = re.match(r"[0-9]+", rest)
        assert digits is not None
        frac = digits.group(0)
        text = main + "." + (frac + "000000")[:6] + rest[len(frac):]
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def split_uri(uri: str) -> RecordId | None:
    """``at://did/collection/rkey`` -> (did, collection, rkey), else None."""
    if not isinstance(uri, str) or not uri.startswith("at://"):
        return None
    parts = uri[5:].split("/")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def uri_of(rid: RecordId) -> str:
    """The at-uri of a record id."""
    return f"at://{rid[0]}/{rid[1]}/{rid[2]}"


def _dids_in(value: Any, out: list[str]) -> None:
    """DIDs a record names (as a DID or as an at-uri's authority), in document order."""
    if isinstance(value, str):
        if value.startswith("did:"):
            out.append(value)
        elif value.startswith("at://"):
            out.append(value[5:].split("/")[0])
    elif isinstance(value, dict):
        for key, child in value.items():
            if key != "$type":
                _dids_in(child, out)
    elif isinstance(value, list):
        for child in value:
            _dids_in(child, out)


def _get(value: Any, *path: str) -> Any:
    """value[path[0]][path[1]]... or None when any step is missing / not an object."""
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


@dataclass
class Rec:
    """One record's current version."""

    rev: int
    value: dict[str, Any]
    cid: str | None
    time_us: int


@dataclass
class Actor:
    """What the model knows of one DID."""

    active: bool = True
    status: str | None = None
    handle: str | None = None
    acct: tuple[int, int | None] | None = None  # (when, seq) of the account event applied last
    ident: tuple[int, int | None] | None = None  # (when, seq) of the identity event applied last
    purged_rev: int | None = None
    latest_rev: int | None = None


@dataclass
class FeedItem:
    """An item of getAuthorFeed / getTimeline with its sort position."""

    sk: int
    aid: int
    item: dict[str, str]


@dataclass
class AppViewModel:
    """Records and actors in plain dicts; every DataPlane method by brute force."""

    records: dict[RecordId, Rec] = field(default_factory=dict)
    revs: dict[RecordId, int] = field(default_factory=dict)  # last rev applied per record
    actors: dict[str, Actor] = field(default_factory=dict)
    order: dict[str, int] = field(default_factory=dict)  # DID -> account ID (first sight)

    # ------------------------------------------------------------ applying events

    def _see(self, did: str) -> Actor:
        if did not in self.order:
            self.order[did] = len(self.order) + 1
        return self.actors.setdefault(did, Actor())

    def apply(self, event: dict[str, Any]) -> None:
        """Apply one Jetstream v1 event (a decoded JSON document)."""
        did = event["did"]
        actor = self._see(did)
        kind = event["kind"]
        if kind == "commit":
            commit = event["commit"]
            if "record" in commit:
                found: list[str] = []
                _dids_in(commit["record"], found)
                for other in found:
                    self._see(other)
            rev = tid_to_int(commit["rev"])
            assert rev is not None
            actor.latest_rev = max(rev, actor.latest_rev or 0)
            rid = (did, commit["collection"], commit["rkey"])
            if actor.purged_rev is not None and rev <= actor.purged_rev:
                return
            if rid in self.revs and self.revs[rid] >= rev:
                return
            self.revs[rid] = rev
            if commit["operation"] in ("create", "update"):
                self.records[rid] = Rec(rev, commit["record"], commit.get("cid"), event["time_us"])
            else:
                self.records.pop(rid, None)
        elif kind == "account":
            account = event["account"]
            when = _when(account, event["time_us"])
            if not _later(when, account.get("seq"), actor.acct):
                return
            actor.acct = (when, account.get("seq"))
            actor.active = bool(account["active"])
            actor.status = account.get("status")
            if actor.status == "deleted":
                actor.purged_rev = max(actor.latest_rev or 0, actor.purged_rev or 0)
                for rid in [r for r in self.revs if r[0] == did and self.revs[r] <= actor.purged_rev]:
                    self.records.pop(rid, None)
                    del self.revs[rid]
        elif kind == "identity":
            identity = event["identity"]
            when = _when(identity, event["time_us"])
            if not _later(when, identity.get("seq"), actor.ident):
                return
            actor.ident = (when, identity.get("seq"))
            if identity.get("handle") is not None:
                actor.handle = identity["handle"].lower()

    def apply_all(self, events: Iterable[dict[str, Any]]) -> None:
        """Apply events in order."""
        for event in events:
            self.apply(event)

    # ------------------------------------------------------------ basics

    def active(self, did: str) -> bool:
        """Unknown DIDs count as active (they simply have no records)."""
        actor = self.actors.get(did)
        return actor is None or actor.active

    def aid(self, did: str) -> int:
        """The account ID (first-sight order); unseen DIDs sort after every seen one."""
        return self.order.get(did, 1 << 40)

    def sk(self, rid: RecordId) -> tuple[int, int]:
        """Sort position: rkey as a TID, ties by account ID (both descending = newest first)."""
        value = tid_to_int(rid[2])
        assert value is not None, f"the model orders TID rkeys only: {rid}"
        return value, self.aid(rid[0])

    def live(self, collection: str | None = None, did: str | None = None) -> list[tuple[RecordId, Rec]]:
        """Live records (author active), optionally of one collection and/or one author."""
        return [(rid, rec) for rid, rec in self.records.items()
                if (collection is None or rid[1] == collection) and (did is None or rid[0] == did)
                and self.active(rid[0])]

    def newest_first(self, rids: Iterable[RecordId]) -> list[RecordId]:
        """Records sorted newest first (rkey TID, then account ID, descending)."""
        return sorted(rids, key=self.sk, reverse=True)

    def oldest_per(self, keyed: Iterable[tuple[RecordId, Any]]) -> list[RecordId]:
        """Of (record, pair) items, each pair's oldest record (lowest rkey TID): the one
        record of a pair the reference indexes."""
        best: dict[Any, RecordId] = {}
        for rid, pair in keyed:
            if pair not in best or self.sk(rid) < self.sk(best[pair]):
                best[pair] = rid
        return list(best.values())

    def get_record(self, uri: str) -> Rec | None:
        """The live record at uri, or None."""
        rid = split_uri(uri)
        if rid is None or not self.active(rid[0]):
            return None
        return self.records.get(rid)

    # edges: (record id, author, subject DID) of live follows / blocks with an active subject

    def edges(self, collection: str) -> list[tuple[RecordId, str, str]]:
        """Live follow/block records whose subject is active."""
        out = []
        for rid, rec in self.live(collection):
            subject = rec.value.get("subject")
            if isinstance(subject, str) and self.active(subject):
                out.append((rid, rid[0], subject))
        return out

    def first_edge(self, collection: str, actor: str, subject: str) -> str:
        """The oldest live edge record actor -> subject (the pair's record), or ""."""
        rids = [rid for rid, a, s in self.edges(collection) if a == actor and s == subject]
        return uri_of(min(rids, key=self.sk)) if rids else ""

    def follows_of(self, viewer: str) -> set[str]:
        """Accounts the viewer follows (live follow, active subject)."""
        return {s for _, a, s in self.edges(FOLLOW) if a == viewer}

    # ------------------------------------------------------------ Records

    def get_records(self, uris: list[str]) -> list[dict[str, Any] | None]:
        """getRecords."""
        out: list[dict[str, Any] | None] = []
        for uri in uris:
            rec = self.get_record(uri)
            rid = split_uri(uri)
            if rec is None or rid is None or rid[1] not in BODY_COLLECTIONS:
                out.append(None)
                continue
            indexed = time_us_to_datetime(rec.time_us)
            created = parse_datetime(rec.value.get("createdAt"))
            sorted_at = indexed if created is None or indexed < created else created
            out.append({"uri": uri, "cid": rec.cid or "", "record": rec.value, "indexedAt": iso_ms(indexed),
                        "createdAt": rec.value.get("createdAt") if created is not None else None,
                        "sortedAt": iso_ms(sorted_at)})
        return out

    # ------------------------------------------------------------ Interactions

    def _subject_uri(self, rec: Rec) -> Any:
        return _get(rec.value, "subject", "uri")

    def _of(self, collection: str, inactive: bool = False, gone: frozenset[str] = frozenset()
            ) -> list[tuple[RecordId, Rec]]:
        """Live records of a collection; with ``inactive`` inactive authors' too, but for
        the authors in ``gone``."""
        if not inactive:
            return self.live(collection)
        return [(rid, rec) for rid, rec in self.records.items() if rid[1] == collection and rid[0] not in gone]

    def _likers(self, collection: str, uri: str, inactive: bool = False,
                gone: frozenset[str] = frozenset()) -> list[RecordId]:
        return [rid for rid, rec in self._of(collection, inactive, gone) if self._subject_uri(rec) == uri]

    def _quoters(self, uri: str, inactive: bool = False, gone: frozenset[str] = frozenset()) -> list[RecordId]:
        return [rid for rid, rec in self._of(POST, inactive, gone)
                if _get(rec.value, "embed", "record", "uri") == uri
                or _get(rec.value, "embed", "record", "record", "uri") == uri]

    def _repliers(self, uri: str, inactive: bool = False, gone: frozenset[str] = frozenset()) -> list[RecordId]:
        return [rid for rid, rec in self._of(POST, inactive, gone) if _get(rec.value, "reply", "parent", "uri") == uri]

    def get_interaction_counts(self, uris: list[str], inactive: bool = False,
                               gone: Iterable[str] = ()) -> dict[str, list[int]]:
        """getInteractionCounts: likes/reposts count accounts, replies/quotes records; with
        ``inactive`` (bsky.Service, as the reference's aggregates) inactive accounts'
        records count too, but for those of the accounts in ``gone`` (deleted ones whose
        rows smalldp's purge sweep has yet to remove: the reference removed them at once).
        Thread gates, which bsky.Service's reply counts apply, are not modelled
        (test_appview_graph_feeds.test_thread_gate_violations has them)."""
        out = frozenset(gone)
        return {
            "likes": [len({rid[0] for rid in self._likers(LIKE, u, inactive, out)}) for u in uris],
            "reposts": [len({rid[0] for rid in self._likers(REPOST, u, inactive, out)}) for u in uris],
            "replies": [len(self._repliers(u, inactive, out)) for u in uris],
            "quotes": [len(self._quoters(u, inactive, out)) for u in uris],
        }

    def get_likes_by_subject(self, subject: str) -> list[str]:
        """getLikesBySubject, all pages: each liker's oldest like of the subject."""
        return [uri_of(r) for r in self.newest_first(self.oldest_per((rid, rid[0])
                                                                     for rid in self._likers(LIKE, subject)))]

    def get_reposts_by_subject(self, subject: str) -> list[str]:
        """getRepostsBySubject, all pages: each reposter's oldest repost of the subject."""
        return [uri_of(r) for r in self.newest_first(self.oldest_per((rid, rid[0])
                                                                     for rid in self._likers(REPOST, subject)))]

    def get_quotes_by_subject(self, subject: str) -> list[str]:
        """getQuotesBySubject, all pages."""
        return [uri_of(r) for r in self.newest_first(self._quoters(subject))]

    def _by_actor_and_subjects(self, collection: str, actor: str, subjects: list[str]) -> list[str]:
        out = []
        for subject in subjects:
            rids = [rid for rid in self._likers(collection, subject) if rid[0] == actor]
            out.append(uri_of(min(rids, key=self.sk)) if rids else "")
        return out

    def get_likes_by_actor_and_subjects(self, actor: str, subjects: list[str]) -> list[str]:
        """getLikesByActorAndSubjects."""
        return self._by_actor_and_subjects(LIKE, actor, subjects)

    def get_reposts_by_actor_and_subjects(self, actor: str, subjects: list[str]) -> list[str]:
        """getRepostsByActorAndSubjects."""
        return self._by_actor_and_subjects(REPOST, actor, subjects)

    def get_known_likers(self, viewer: str, subjects: list[str]) -> list[tuple[str, set[str]]]:
        """getKnownLikers without the limit: (subject, the full set of known likers)."""
        followed = self.follows_of(viewer) if self.active(viewer) else set()
        return [(s, {rid[0] for rid in self._likers(LIKE, s)} & followed) for s in subjects]

    # ------------------------------------------------------------ Graph

    def _edge_items(self, collection: str, *, actor: str | None = None,
                    subject: str | None = None) -> list[dict[str, str]]:
        found = {rid: (a, s) for rid, a, s in self.edges(collection)
                 if (actor is None or a == actor) and (subject is None or s == subject)}
        return [{"uri": uri_of(rid), "actorDid": found[rid][0], "subjectDid": found[rid][1]}
                for rid in self.newest_first(self.oldest_per(found.items()))]

    def get_followers(self, actor: str) -> list[dict[str, str]]:
        """getFollowers, all pages."""
        return self._edge_items(FOLLOW, subject=actor)

    def get_follows(self, actor: str) -> list[dict[str, str]]:
        """getFollows, all pages."""
        return self._edge_items(FOLLOW, actor=actor)

    def get_blocks(self, actor: str) -> list[str]:
        """getBlocks, all pages."""
        return [item["uri"] for item in self._edge_items(BLOCK, actor=actor)]

    def get_follows_following(self, viewer: str, targets: list[str]) -> list[tuple[str, set[str]]]:
        """getFollowsFollowing: (target, set of accounts the viewer follows that follow it)."""
        followed = self.follows_of(viewer) if self.active(viewer) else set()
        edges = self.edges(FOLLOW)
        return [(t, {a for _, a, s in edges if s == t and a in followed}) for t in targets]

    def get_actor_follows_actors(self, actor: str, targets: list[str]) -> list[str]:
        """getActorFollowsActors."""
        return [self.first_edge(FOLLOW, actor, t) for t in targets]

    def _list_contains(self, list_uri: str, member: str) -> bool:
        """A live listitem of the list's owner puts member in the list."""
        owner = split_uri(list_uri)
        if owner is None:
            return False
        return any(rec.value.get("list") == list_uri and rec.value.get("subject") == member
                   for _, rec in self.live(LISTITEM, owner[0]))

    def _list_block_rid(self, blocker: str, blocked: str) -> RecordId | None:
        """Of the blocker's live listblocks of lists containing blocked, each list's oldest
        (the pair's record), the newest; or None.

        A list block is a block: invisible when the blocked account is inactive."""
        if not self.active(blocked):
            return None
        rids = self.oldest_per((rid, rec.value["subject"]) for rid, rec in self.live(LISTBLOCK, blocker)
                               if self._list_contains(_get(rec.value, "subject"), blocked))
        return self.newest_first(rids)[0] if rids else None

    def list_block(self, blocker: str, blocked: str) -> str:
        """The uri of that listblock (_list_block_rid), or ""."""
        rid = self._list_block_rid(blocker, blocked)
        return "" if rid is None else uri_of(rid)

    def list_block_list(self, blocker: str, blocked: str) -> str:
        """The list that listblock (_list_block_rid) blocks, or ""."""
        rid = self._list_block_rid(blocker, blocked)
        return "" if rid is None else self.records[rid].value["subject"]

    def get_relationships(self, viewer: str, targets: list[str], list_uris: bool = False) -> list[dict[str, str]]:
        """getRelationships; with ``list_uris`` the by-list fields name the list (bsky.Service)
        instead of the listblock record (dev.smalldp)."""
        by_list = self.list_block_list if list_uris else self.list_block
        return [{"targetDid": t,
                 "following": self.first_edge(FOLLOW, viewer, t),
                 "followedBy": self.first_edge(FOLLOW, t, viewer),
                 "blocking": self.first_edge(BLOCK, viewer, t),
                 "blockedBy": self.first_edge(BLOCK, t, viewer),
                 "blockingByList": by_list(viewer, t),
                 "blockedByList": by_list(t, viewer)} for t in targets]

    def get_block_existence(self, pairs: list[tuple[str, str]]) -> list[bool]:
        """getBlockExistence."""
        return [bool(self.first_edge(BLOCK, a, b) or self.first_edge(BLOCK, b, a)
                     or self.list_block(a, b) or self.list_block(b, a)) for a, b in pairs]

    def get_block_refs(self, pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
        """bsky.Service's BlockExistence per pair (a, b): block records both ways, and the
        lists through which a blocks b / b blocks a."""
        return [{"blocking": self.first_edge(BLOCK, a, b), "blockedBy": self.first_edge(BLOCK, b, a),
                 "blockingByList": self.list_block_list(a, b), "blockedByList": self.list_block_list(b, a)}
                for a, b in pairs]

    def get_bidirectional_block(self, actor: str, target: str) -> str:
        """A block record either way: the actor's of the target, else the target's of the actor."""
        return self.first_edge(BLOCK, actor, target) or self.first_edge(BLOCK, target, actor)

    def get_bidirectional_block_via_list(self, actor: str, target: str) -> str:
        """The list through which the actor blocks the target, else the other way, or ""."""
        return self.list_block_list(actor, target) or self.list_block_list(target, actor)

    def get_blocklist_subscription(self, actor: str, list_uri: str) -> str:
        """The actor's oldest live listblock whose subject is the list (live or not), or ""."""
        rids = [rid for rid, rec in self.live(LISTBLOCK, actor) if rec.value.get("subject") == list_uri]
        return uri_of(min(rids, key=self.sk)) if rids else ""

    def get_blocklist_subscriptions(self, actor: str) -> list[str]:
        """All pages: the live lists the actor has a live listblock of, each once, ordered by
        the actor's oldest listblock of each, newest first."""
        oldest: dict[str, tuple[int, int]] = {}
        for rid, rec in self.live(LISTBLOCK, actor):
            subject = rec.value.get("subject")
            if not isinstance(subject, str):
                continue
            target = split_uri(subject)
            if target is None or target[1] != LIST or self.get_record(subject) is None:
                continue
            oldest[subject] = min(oldest.get(subject, self.sk(rid)), self.sk(rid))
        return sorted(oldest, key=lambda list_uri: oldest[list_uri], reverse=True)

    def get_counts_for_users(self, dids: list[str], inactive: bool = False,
                             gone: Iterable[str] = ()) -> dict[str, list[int]]:
        """getCountsForUsers (zeros for an inactive account); with ``inactive``
        (bsky.Service, as the reference's aggregates) followers and following count
        inactive accounts too, but for those in ``gone`` (deleted, rows yet to be purged)."""
        if inactive:
            out = set(gone)
            edges = [(rid, rid[0], rec.value["subject"]) for rid, rec in self.records.items()
                     if rid[1] == FOLLOW and isinstance(rec.value.get("subject"), str)
                     and rid[0] not in out and rec.value["subject"] not in out]
        else:
            edges = self.edges(FOLLOW)

        def records(collection: str, d: str) -> int:
            return len(self.live(collection, d))

        return {
            "followers": [len({a for _, a, s in edges if s == d}) if self.active(d) else 0 for d in dids],
            "following": [len({s for _, a, s in edges if a == d}) if self.active(d) else 0 for d in dids],
            "posts": [records(POST, d) for d in dids],
            "reposts": [records(REPOST, d) for d in dids],
            "lists": [records(LIST, d) for d in dids],
            "feeds": [records(GENERATOR, d) for d in dids],
            "starterPacks": [records(STARTERPACK, d) for d in dids],
        }

    # ------------------------------------------------------------ Actors

    def get_actors(self, dids: list[str]) -> list[dict[str, Any] | None]:
        """getActors.  ``profileCid`` when there is no profile is "" or null (the spec
        does not say); tests compare it with that latitude."""
        out: list[dict[str, Any] | None] = []
        for d in dids:
            actor = self.actors.get(d)
            if actor is None:
                out.append(None)
                continue
            profile = self.get_record(uri_of((d, PROFILE, "self")))
            out.append({"did": d, "handle": actor.handle,
                        "status": "active" if actor.active else actor.status,
                        "profile": None if profile is None else profile.value,
                        "profileCid": None if profile is None else (profile.cid or "")})
        return out

    def get_dids_by_handles(self, handles: list[str]) -> list[set[str]]:
        """getDidsByHandles: per handle, the set of acceptable answers.

        Handles resolve whatever the account's status.  Several DIDs may claim one
        handle at once (the spec does not say which wins): any of them is accepted."""
        out = []
        for h in handles:
            claim = {d for d, a in self.actors.items() if a.handle is not None and a.handle == h.lower()}
            out.append(claim or {""})
        return out

    def get_latest_rev(self, actor: str) -> str:
        """getLatestRev: the newest rev seen from an active actor, else ""."""
        state = self.actors.get(actor)
        if state is None or not state.active or state.latest_rev is None:
            return ""
        return int_to_tid(state.latest_rev)

    # ------------------------------------------------------------ Feeds

    def _post_cid(self, uri: Any) -> str:
        rec = self.get_record(uri) if isinstance(uri, str) else None
        rid = split_uri(uri) if isinstance(uri, str) else None
        if rec is None or rid is None or rid[1] != POST:
            return ""
        return rec.cid or ""

    def _feed_items(self, authors: set[str], filter_: str = "posts_with_replies",
                    actor: str = "", reposted_post: bool = False) -> list[dict[str, str]]:
        items: list[tuple[tuple[int, int], dict[str, str]]] = []
        for rid, rec in self.live(POST):
            if rid[0] not in authors:
                continue
            value = rec.value
            reply = value.get("reply") is not None
            embed = value.get("embed")
            etype = _get(embed, "$type")
            mtype = _get(embed, "media", "$type") if etype == RECORD_WITH_MEDIA else None
            if filter_ == "posts_no_replies" and reply:
                continue
            if filter_ == "posts_and_author_threads" and reply:
                root = split_uri(_get(value, "reply", "root", "uri"))
                if root is None or root[0] != actor or root[1] != POST:
                    continue
            if filter_ == "posts_with_media" and IMAGES not in (etype, mtype):
                continue
            if filter_ == "posts_with_video" and VIDEO not in (etype, mtype):
                continue
            items.append((self.sk(rid), {"uri": uri_of(rid), "cid": rec.cid or "", "repost": "", "repostCid": ""}))
        if filter_ not in ("posts_with_media", "posts_with_video"):
            for rid, rec in self.live(REPOST):
                if rid[0] not in authors:
                    continue
                subject = self._subject_uri(rec)
                target = split_uri(subject) if isinstance(subject, str) else None
                if reposted_post and (target is None or target[1] != POST or target not in self.records):
                    continue  # author feeds: only reposts of a post that exists (its author active or not)
                items.append((self.sk(rid), {"uri": subject, "cid": self._post_cid(subject),
                                             "repost": uri_of(rid), "repostCid": ""}))
        items.sort(key=lambda x: x[0], reverse=True)
        return [item for _, item in items]

    def get_author_feed(self, actor: str, filter_: str = "posts_with_replies") -> list[dict[str, str]]:
        """getAuthorFeed, all pages."""
        return self._feed_items({actor}, filter_, actor, reposted_post=True)

    def get_timeline(self, viewer: str) -> list[dict[str, str]]:
        """getTimeline, all pages."""
        if not self.active(viewer):
            return []
        return self._feed_items(self.follows_of(viewer) | {viewer})

    def get_thread(self, uri: str, above: int = 10, below: int = 6) -> list[str]:
        """getThread."""
        if self.get_record(uri) is None or (split_uri(uri) or ("", "", ""))[1] != POST:
            return []
        ancestors: list[str] = []
        seen = {uri}  # each post once: a reply cycle stops where it comes back
        current = uri
        for _ in range(above):
            parent = _get(self.get_record(current).value, "reply", "parent", "uri")  # type: ignore[union-attr]
            if not isinstance(parent, str) or parent in seen or self.get_record(parent) is None \
                    or (split_uri(parent) or ("", "", ""))[1] != POST:
                break
            ancestors.append(parent)
            seen.add(parent)
            current = parent
        children: dict[str, list[RecordId]] = {}
        for rid, rec in self.live(POST):
            parent = _get(rec.value, "reply", "parent", "uri")
            if isinstance(parent, str):
                children.setdefault(parent, []).append(rid)
        descendants: list[str] = []
        level = [uri]
        for _ in range(below):
            nxt = []
            for node in level:
                for child in (uri_of(r) for r in self.newest_first(children.get(node, []))):
                    if child not in seen:
                        seen.add(child)
                        nxt.append(child)
            descendants += nxt
            level = nxt
        return ancestors[::-1] + [uri] + descendants[:1000]

    # ------------------------------------------------------------ Lists

    def get_list_members(self, list_uri: str) -> list[dict[str, Any]]:
        """getListMembers, all pages: each member's oldest listitem."""
        owner = split_uri(list_uri)
        if owner is None:
            return []
        rids = self.oldest_per((rid, str(rec.value.get("subject"))) for rid, rec in self.live(LISTITEM, owner[0])
                               if rec.value.get("list") == list_uri)
        return [{"uri": uri_of(r), "did": self.records[r].value.get("subject")} for r in self.newest_first(rids)]

    def get_actor_lists(self, actor: str) -> list[str]:
        """getActorLists, all pages."""
        return [uri_of(r) for r in self.newest_first(rid for rid, _ in self.live(LIST, actor))]

    def get_list_membership(self, actor: str, lists: list[str]) -> list[str]:
        """getListMembership: oldest listitem of the list's owner putting actor in it, or ""."""
        out = []
        for list_uri in lists:
            owner = split_uri(list_uri)
            if owner is None or not self.active(actor):
                out.append("")
                continue
            rids = [rid for rid, rec in self.live(LISTITEM, owner[0])
                    if rec.value.get("list") == list_uri and rec.value.get("subject") == actor]
            out.append(uri_of(min(rids, key=self.sk)) if rids else "")
        return out

    def get_list_counts(self, lists: list[str]) -> list[int]:
        """Per list, the owner's live listitem records pointing at it (0 when the owner is
        inactive or the value names no record)."""
        out = []
        for list_uri in lists:
            owner = split_uri(list_uri)
            out.append(0 if owner is None else
                       sum(1 for _, rec in self.live(LISTITEM, owner[0]) if rec.value.get("list") == list_uri))
        return out

    def list_members_set(self, list_uri: str) -> set[str]:
        """The DIDs the owner's live listitems of the list name."""
        return {item["did"] for item in self.get_list_members(list_uri)
                if isinstance(item["did"], str) and item["did"].startswith("did:")}

    def get_list_feed(self, list_uri: str) -> list[dict[str, str]]:
        """bsky.Service GetListFeed, all pages: posts (no reposts) by the list's members."""
        return [item for item in self._feed_items(self.list_members_set(list_uri)) if not item["repost"]]

    # ------------------------------------------------------------ bsky.Service extras

    def get_actor_records(self, actor: str, collection: str) -> list[str]:
        """The actor's live records of a collection, newest first, all pages."""
        return [uri_of(r) for r in self.newest_first(rid for rid, _ in self.live(collection, actor))]

    def get_actor_likes(self, actor: str) -> list[dict[str, str]]:
        """GetActorLikes, all pages: {uri, subject} of the actor's live likes, newest first
        (subject "" when the like's subject.uri is no string)."""
        out = []
        for rid in self.newest_first(rid for rid, _ in self.live(LIKE, actor)):
            subject = self._subject_uri(self.records[rid])
            out.append({"uri": uri_of(rid), "subject": subject if isinstance(subject, str) else ""})
        return out

    def get_starter_pack_counts(self, uris: list[str], now_us: int) -> tuple[list[int], list[int]]:
        """Per starter pack: live profiles whose joinedViaStarterPack.uri names it, and those
        whose createdAt lies in the week before now_us."""
        week_us = 7 * 86_400 * 1_000_000
        now = time_us_to_datetime(now_us)
        week_ago = time_us_to_datetime(now_us - week_us)
        all_time, week = [], []
        for uri in uris:
            joined = [rec for _, rec in self.live(PROFILE) if _get(rec.value, "joinedViaStarterPack", "uri") == uri]
            all_time.append(len(joined))
            created = [parse_datetime(rec.value.get("createdAt")) for rec in joined]
            week.append(sum(1 for c in created if c is not None and week_ago < c <= now))
        return all_time, week

    def search_actors(self, prefix: str) -> list[tuple[str, str]]:
        """(handle, did) of active accounts whose handle starts with prefix (any case), by handle."""
        prefix = prefix.lower()
        return sorted((a.handle, d) for d, a in self.actors.items()
                      if a.active and a.handle is not None and a.handle.startswith(prefix))

    # ------------------------------------------------------------ Notifications

    def get_notifications(self, actor: str, post_floor: int = 0, repost_floor: int = 0) -> list[dict[str, Any]]:
        """GetNotifications, all pages: {uri, reason, reasonSubject, timeUs, priority},
        newest first (rkey time, then account; a like or repost of the actor's record before
        one via its repost; a starter-pack join at its profile's receive time).

        The reference's rules (store/dataplane/notifications.py), with smalldp's documented
        limits: only the actor's posts (reposts) whose rkey time is >= post_floor
        (repost_floor) are looked at, as if the others did not exist; replies more than one
        level down count in threads the actor started and below the actor's own replies.  A
        like, repost or follow counts only as its author's oldest one of that subject (the
        reference indexes the first).  The reason is decided first; a notification whose
        subject record is not live is then dropped."""
        if actor not in self.actors or not self.active(actor):
            return []
        follows = self.follows_of(actor)
        found: list[tuple[tuple[int, int, int], dict[str, Any]]] = []

        def mine(uri: Any, collections: tuple[str, ...]) -> bool:
            rid = split_uri(uri)
            if rid is None or rid[0] != actor or rid[1] not in collections:
                return False
            floor = post_floor if rid[1] == POST else repost_floor if rid[1] == REPOST else 0
            return tid_to_int(rid[2]) is None or tid_to_int(rid[2]) >= floor  # type: ignore[operator]

        def add(rid: RecordId, time: int, place: int, reason: str, subject: str | None) -> None:
            if subject is not None and self.get_record(subject) is None:
                return
            found.append(((time << 10 if rid[1] == PROFILE else tid_to_int(rid[2]),  # type: ignore[arg-type]
                           self.aid(rid[0]), place),
                          {"uri": uri_of(rid), "reason": reason, "reasonSubject": subject or "", "timeUs": time,
                           "priority": rid[0] in follows}))

        for rid, rec in self.live():
            author, collection, rkey = rid
            value = rec.value
            if collection == PROFILE:
                pack = _get(value, "joinedViaStarterPack", "uri")
                if rkey == "self" and mine(pack, (STARTERPACK,)):
                    add(rid, rec.time_us, 1, "starterpack-joined", pack)
                continue
            if tid_to_int(rkey) is None:
                continue
            time = tid_to_int(rkey) >> 10  # type: ignore[operator]
            if collection == FOLLOW:
                if value.get("subject") == actor and not self._older_twin(rid, "subject"):  # a self-follow too
                    add(rid, time, 1, "follow", None)
                continue
            if author == actor:
                continue
            if collection in (LIKE, REPOST):
                if self._older_twin(rid, "subject", "uri"):
                    continue  # the reference indexes one like (repost) per account and subject
                name = "like" if collection == LIKE else "repost"
                subject = _get(value, "subject", "uri")
                if mine(subject, (POST, GENERATOR, LIST, STARTERPACK, LABELER)):
                    add(rid, time, 2, name, subject)
                via = _get(value, "via", "uri")
                if mine(via, (REPOST,)):
                    add(rid, time, 1, f"{name}-via-repost", via)
            elif collection == POST:
                mentioned = [feature.get("did") for facet in (value.get("facets") or []) if isinstance(facet, dict)
                             for feature in (facet.get("features") or []) if isinstance(feature, dict)
                             and feature.get("$type") == MENTION]
                quoted = _get(value, "embed", "record", "uri")
                if not isinstance(quoted, str):
                    quoted = _get(value, "embed", "record", "record", "uri")
                parent = _get(value, "reply", "parent", "uri")
                if actor in mentioned:
                    add(rid, time, 1, "mention", None)
                elif mine(quoted, (POST,)):
                    add(rid, time, 1, "quote", quoted)
                elif mine(parent, (POST,)):
                    add(rid, time, 1, "reply", parent)
                elif mine(_get(value, "reply", "root", "uri"), (POST,)) or \
                        self._under_reply_of(actor, parent, post_floor):
                    ancestor = self._reply_ancestor(actor, parent)
                    if ancestor is not None:
                        add(rid, time, 1, "reply", ancestor)
        found.sort(key=lambda item: item[0], reverse=True)
        return [item for _, item in found]

    def _older_twin(self, rid: RecordId, *path: str) -> bool:
        """Whether the author has another live record of the collection with the same value
        at ``path`` and an older rkey (the reference indexes only the first)."""
        value = _get(self.records[rid].value, *path)
        sk = tid_to_int(rid[2])
        return any(other[0] == rid[0] and tid_to_int(other[2]) is not None and sk is not None
                   and tid_to_int(other[2]) < sk and _get(rec.value, *path) == value  # type: ignore[operator]
                   for other, rec in self.live(rid[1], rid[0]) if other != rid)

    def _under_reply_of(self, actor: str, parent: Any, floor: int) -> bool:
        """Whether a reply whose parent is ``parent`` lies 2..4 levels below a post of the
        actor that is a reply itself (rkey time >= floor), through live posts: smalldp
        finds those by walking down from the actor's replies."""
        for height in range(1, 5):
            rid = split_uri(parent)
            rec = self.get_record(parent) if rid is not None and rid[1] == POST else None
            if rec is None or rid is None:
                return False
            up = _get(rec.value, "reply", "parent", "uri")
            if height >= 2 and rid[0] == actor and isinstance(up, str) and \
                    (tid_to_int(rid[2]) or 0) >= floor:
                return True
            parent = up
        return False

    def _reply_ancestor(self, actor: str, parent: Any) -> str | None:
        """The actor's nearest post 1..4 levels up from a reply whose parent is ``parent``,
        through live posts only, or None."""
        for _ in range(4):
            rid = split_uri(parent)
            rec = self.get_record(parent) if rid is not None and rid[1] == POST else None
            if rec is None:
                return None
            if rid[0] == actor:  # type: ignore[index]
                return parent  # type: ignore[no-any-return]
            parent = _get(rec.value, "reply", "parent", "uri")
        return None


def _when(body: dict[str, Any], time_us: int) -> int:
    """When an account or identity event happened: its ``time`` if usable, else ``time_us``."""
    text = body.get("time")
    if isinstance(text, str):
        try:
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return time_us
        if moment.tzinfo is not None:
            delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
            when = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
            if when <= time_us + MAX_TIME_AHEAD_US:
                return when
    return time_us


def _later(when: int, seq: int | None, last: tuple[int, int | None] | None) -> bool:
    if last is None or when != last[0]:
        return last is None or when > last[0]
    return seq is None or last[1] is None or seq > last[1]
