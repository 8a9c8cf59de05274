"""What check_store (store/check.py) reports: problems, the report, names for messages.

A problem has a stable kind for machines and a sentence for people; the sentence names
records, accounts and targets as at-uris and DIDs (:class:`Names` turns the index's
integer IDs back into them, with a few lookups per problem, never per row).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from smalldp.store.encoding import decode_target, get_varint
from smalldp.tid import int_to_tid

_DID_KIND = 3

Fact = tuple[int, bytes, int, int]  # (source id, target key, sort key, actor id) as filed in bl


@dataclass
class Problem:
    """One inconsistency: a stable ``kind`` for machines, a sentence for people."""

    kind: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


@dataclass
class CheckReport:
    """What :func:`check_store` found: the first ``limit`` problems and counts by kind."""

    path: str
    limit: int
    problems: list[Problem] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    stats: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    integrity: str = "skipped"  # "integrity_check", "quick_check" or "skipped"

    @property
    def ok(self) -> bool:
        return not self.counts

    def add(self, kind: str, message: str) -> None:
        """Record a problem (all are counted; the first ``limit`` are kept)."""
        self.counts[kind] += 1
        if len(self.problems) < self.limit:
            self.problems.append(Problem(kind, message))

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "integrity": self.integrity,
                "problems": [p.as_dict() for p in self.problems],
                "problem_counts": dict(sorted(self.counts.items())), "stats": self.stats,
                "seconds": round(self.seconds, 3)}

    def text(self) -> str:
        """A readable report."""
        lines = [f"{self.path}: " + ("consistent" if self.ok else
                                     f"{sum(self.counts.values()):,} problem(s)")]
        scanned = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in self.stats.items())
        lines.append(f"  checked ({self.integrity}): {scanned} in {self.seconds:,.1f} s")
        if not self.ok:
            lines.append("  by kind: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.counts.items())))
            shown = len(self.problems)
            lines.append(f"  first {shown}:" if shown < sum(self.counts.values()) else "  problems:")
            lines += [f"  - [{p.kind}] {p.message}" for p in self.problems]
        return "\n".join(lines)


class Names:
    """Turns IDs back into DIDs, NSIDs and at-uris for messages (a few lookups per problem)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.nsids: dict[int, str] = dict(conn.execute("SELECT cid, nsid FROM coll"))
        self.sources: dict[int, tuple[int, str]] = {
            sid: (coll, path) for sid, coll, path in conn.execute("SELECT sid, coll, path FROM source")}

    def did(self, aid: int) -> str:
        row = self.conn.execute("SELECT did FROM actor WHERE aid=?", (aid,)).fetchone()
        return row[0] if row else f"<actor {aid}>"

    def nsid(self, cid: int) -> str:
        return self.nsids.get(cid, f"<collection {cid}>")

    def source(self, sid: int) -> str:
        coll, path = self.sources.get(sid, (0, f"<source {sid}>"))
        return f"{self.nsid(coll)}:{path}"

    def record(self, sk: int, aid: int, coll: int) -> str:
        if sk >= 0:
            rkey = int_to_tid(sk)
        else:
            row = self.conn.execute("SELECT rkey FROM alias WHERE aid=? AND coll=? AND sk=?",
                                    (aid, coll, sk)).fetchone()
            rkey = row[0] if row else f"<alias {sk}>"
        return f"at://{self.did(aid)}/{self.nsid(coll)}/{rkey}"

    def target(self, tkey: bytes) -> str:
        try:
            return decode_target(tkey, self.did, self.nsid)
        except (IndexError, UnicodeDecodeError, ValueError):
            return f"<undecodable key {tkey.hex()}>"

    def fact(self, fact: Fact, reverse: bool) -> str:
        """A link fact in words: which record links to what, through which source."""
        sid, tkey, sk, aid = fact
        coll = self.sources.get(sid, (0, ""))[0]
        if reverse:  # filed under the author's DID key, the subject's account in the entry
            author = get_varint(tkey, 1)[0] if tkey[:1] == bytes((_DID_KIND,)) else 0
            return (f"{self.record(sk, author, coll)} -> {self.did(aid)} "
                    f"(reverse link {self.source(sid)})")
        return f"{self.record(sk, aid, coll)} -> {self.target(tkey)} ({self.source(sid)})"
