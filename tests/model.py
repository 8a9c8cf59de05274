"""A small, obviously-correct in-memory model of smalldp's index semantics.

It keeps every record with its links in plain dicts and answers queries by brute
force.  The differential tests apply the same events to it and to the real store
and require every answer to be equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smalldp.events import AccountStatus, DeleteRecord, Identity, Operation, PutRecord
from smalldp.links import extract_links
from smalldp.store.writer import ALIAS_BASE
from smalldp.tid import tid_to_int

RecordId = tuple[str, str, str]  # (did, collection, rkey)


def later(when_us: int, seq: int | None, last: tuple[int, int | None] | None) -> bool:
    """The account-event rule of DATAPLANE.md, restated: an event replaces the last applied
    one when it happened later; at the same moment a higher seq wins if both have one, an
    equal seq is the same event; without seqs the later delivery wins."""
    if last is None:
        return True
    last_us, last_seq = last
    if when_us > last_us:
        return True
    if when_us < last_us:
        return False
    return seq is None or last_seq is None or seq > last_seq


@dataclass
class ModelRecord:
    rev: int
    links: list[tuple[str, str]]  # (path, target)
    body: bytes
    cid: str | None


@dataclass
class ModelActor:
    active: bool = True
    status: str | None = None
    handle: str | None = None
    acct: tuple[int, int | None] | None = None  # (order time, seq) of the account event applied last
    ident: tuple[int, int | None] | None = None  # the same for identity events
    purged_rev: int | None = None
    latest_rev: int = 0  # the newest rev of any commit of this account delivered so far


@dataclass
class Model:
    records: dict[RecordId, ModelRecord] = field(default_factory=dict)
    revs: dict[RecordId, int] = field(default_factory=dict)  # last rev applied per record
    actors: dict[str, ModelActor] = field(default_factory=dict)
    aliases: dict[RecordId, int] = field(default_factory=dict)
    alias_next: int = ALIAS_BASE
    body_collections: frozenset[str] = frozenset({"app.bsky.feed.post", "app.bsky.actor.profile"})

    def actor(self, did: str) -> ModelActor:
        return self.actors.setdefault(did, ModelActor())

    def sort_key(self, rid: RecordId) -> int:
        tid = tid_to_int(rid[2])
        if tid is not None:
            return tid
        if rid not in self.aliases:
            self.aliases[rid] = self.alias_next
            self.alias_next += 1
        return self.aliases[rid]

    def apply(self, op: Operation) -> None:
        actor = self.actor(op.did)
        if isinstance(op, (PutRecord, DeleteRecord)):
            rid = (op.did, op.collection, op.rkey)
            self.sort_key(rid)  # first sight fixes the order of non-TID records
            actor.latest_rev = max(actor.latest_rev, op.rev)
            if actor.purged_rev is not None and op.rev <= actor.purged_rev:
                return
            if rid in self.revs and self.revs[rid] >= op.rev:
                return
            self.revs[rid] = op.rev
            if isinstance(op, PutRecord):
                self.records[rid] = ModelRecord(op.rev, extract_links(op.record), op.body, op.cid)
            else:
                self.records.pop(rid, None)
        elif isinstance(op, AccountStatus):
            if not later(op.order_us, op.seq, actor.acct):
                return
            actor.acct = (op.order_us, op.seq)
            actor.active = op.active
            actor.status = op.status
            if op.status == "deleted":
                # everything the account committed before is gone, and stays gone
                actor.purged_rev = max(actor.latest_rev, actor.purged_rev or 0)
                for rid in [r for r in self.revs if r[0] == op.did and self.revs[r] <= actor.purged_rev]:
                    self.records.pop(rid, None)
                    del self.revs[rid]
        elif isinstance(op, Identity):
            if not later(op.order_us, op.seq, actor.ident):
                return
            actor.ident = (op.order_us, op.seq)
            if op.handle is not None:
                actor.handle = op.handle

    # ------------------------------------------------------------ queries

    def visible(self, did: str) -> bool:
        return self.actor(did).active

    def linking(self, target: str, collection: str, path: str) -> list[tuple[int, str, str]]:
        """(sort key, did, rkey) of live records linking to target, newest first."""
        out = []
        for rid, rec in self.records.items():
            did, coll, rkey = rid
            if coll == collection and (path, target) in rec.links and self.visible(did):
                out.append((self.sort_key(rid), did, rkey))
        out.sort(key=lambda x: x[0], reverse=True)
        return out

    def count(self, target: str, collection: str, path: str) -> int:
        return len(self.linking(target, collection, path))

    def distinct(self, target: str, collection: str, path: str) -> set[str]:
        return {did for _, did, _ in self.linking(target, collection, path)}

    def all_links(self, target: str) -> dict[str, dict[str, tuple[int, int]]]:
        seen: dict[tuple[str, str], tuple[int, set[str]]] = {}
        for rid, rec in self.records.items():
            if not self.visible(rid[0]):
                continue
            for path, t in rec.links:
                if t == target:
                    n, dids = seen.get((rid[1], path), (0, set()))
                    seen[(rid[1], path)] = (n + 1, dids | {rid[0]})
        out: dict[str, dict[str, tuple[int, int]]] = {}
        for (coll, path), (n, dids) in seen.items():
            out.setdefault(coll, {})[path] = (n, len(dids))
        return out

    def many_to_many(self, subject: str, collection: str, path: str, other_path: str) -> list[tuple[str, int, int]]:
        groups: dict[str, tuple[int, set[str]]] = {}
        for rid, rec in self.records.items():
            if rid[1] != collection or (path, subject) not in rec.links or not self.visible(rid[0]):
                continue
            for p, t in rec.links:
                if p == other_path:
                    n, dids = groups.get(t, (0, set()))
                    groups[t] = (n + 1, dids | {rid[0]})
        return sorted((t, n, len(d)) for t, (n, d) in groups.items())

    def many_to_many_items(self, subject: str, collection: str, path: str, other_path: str,
                           dids: set[str] | None = None,
                           others: set[str] | None = None) -> list[tuple[int, RecordId, list[str]]]:
        """getManyToMany by brute force: (sort key, record, its targets at other_path in
        the record's order) for each live record linking to subject from (collection,
        path) that has any, newest first; ``dids`` / ``others``, when given, keep only
        those accounts' records / those targets. Records sharing a sort key may come in
        either order (the store breaks the tie by account ID)."""
        out = []
        for rid, rec in self.records.items():
            if rid[1] != collection or (path, subject) not in rec.links or not self.visible(rid[0]):
                continue
            if dids is not None and rid[0] not in dids:
                continue
            targets = [t for p, t in rec.links if p == other_path and (others is None or t in others)]
            if targets:
                out.append((self.sort_key(rid), rid, targets))
        out.sort(key=lambda x: x[0], reverse=True)
        return out

    def record(self, did: str, collection: str, rkey: str) -> dict[str, Any] | None:
        rec = self.records.get((did, collection, rkey))
        if rec is None or collection not in self.body_collections or not self.visible(did):
            return None
        return {"cid": rec.cid, "body": rec.body}


# ---------------------------------------------------------------- backlink index

from typing import Collection, Mapping  # noqa: E402

from smalldp.store.compaction import CompactionConfig, choose  # noqa: E402

BacklinkKey = tuple[int, bytes]  # (source id, target key), as store/backlinks.py's Key
BacklinkEntry = tuple[int, int]  # (sort key, actor id)


class ModelBacklinks:
    """The BacklinkIndex Protocol (store/backlinks.py) by brute force, for
    tests/test_storage.py: each run a plain dict of sets, a whole merge done at once."""

    def __init__(self, fanout: int = 8) -> None:
        self.config = CompactionConfig(fanout=fanout)
        self.runs_: dict[int, tuple[int, dict[BacklinkKey, set[BacklinkEntry]]]] = {}
        self.next_run = 1

    def _new_run(self, level: int, keys: dict[BacklinkKey, set[BacklinkEntry]]) -> int:
        run = self.next_run
        self.next_run += 1
        self.runs_[run] = (level, keys)
        return run

    def write_run(self, adds: Mapping[BacklinkKey, Collection[BacklinkEntry]]) -> int | None:
        keys = {key: set(entries) for key, entries in adds.items() if entries}
        if not keys:
            return None
        return self._new_run(0, keys)

    def remove(self, removes: Mapping[BacklinkKey, Collection[BacklinkEntry]]) -> None:
        # All or nothing: check every entry first.
        missing = [(key, entry) for key, entries in removes.items() for entry in entries
                   if not any(entry in keys.get(key, ()) for _, keys in self.runs_.values())]
        if missing:
            raise RuntimeError(f"backlink entries missing from the index: {missing[:5]}")
        for key, entries in removes.items():
            for entry in entries:
                for _, keys in self.runs_.values():
                    if entry in keys.get(key, ()):
                        keys[key].discard(entry)
                        if not keys[key]:
                            del keys[key]

    def entries(self, key: BacklinkKey) -> list[BacklinkEntry]:
        out: set[BacklinkEntry] = set()
        for _, keys in self.runs_.values():
            out |= keys.get(key, set())
        return sorted(out, reverse=True)

    def keys(self) -> list[BacklinkKey]:
        found = {key for _, keys in self.runs_.values() for key in keys}
        return sorted(found, key=lambda k: (k[1], k[0]))

    def runs(self) -> dict[int, int]:
        return {run: level for run, (level, _) in self.runs_.items()}

    def _step(self, full: bool) -> bool:
        levels: dict[int, list[int]] = {}
        for run in sorted(self.runs_):  # run ids grow: oldest first
            levels.setdefault(self.runs_[run][0], []).append(run)
        plan = choose(levels, [], self.config, full=full)
        if plan is None:
            return False
        merged: dict[BacklinkKey, set[BacklinkEntry]] = {}
        for run in plan.inputs:
            _, keys = self.runs_.pop(run)
            for key, entries in keys.items():
                merged.setdefault(key, set()).update(entries)
        self._new_run(plan.level, merged)
        return True

    def merge_step(self) -> bool:
        return self._step(full=False)

    def compact_all(self) -> int:
        merges = 0
        while self._step(full=True):
            merges += 1
        return merges
