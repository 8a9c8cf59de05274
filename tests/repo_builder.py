"""A small repo builder for the tests: {path: record} -> a repo CAR as ``getRepo`` exports one.

The Merkle Search Tree follows atproto's repository spec (and @atproto/repo's layout): a key's
layer is the number of leading zero 2-bit chunks of sha256(key) (fanout 4); a node at layer L
holds the keys of layer L in order, ``l`` the subtree of the keys before the first of them and
each entry's ``t`` the subtree of the keys between it and the next, each subtree a node at layer
L - 1 (one with only ``l`` when no key of that range is at L - 1); the root is at the highest
layer of any key, and an empty repo is one empty node.  Entry keys are prefix-compressed against
the previous entry of the same node.  tests/test_repo_car.py checks this against the real export
in the fixtures (the real records' (path, CID) pairs give the real commit's ``data`` CID and its
very nodes) and against atproto's published MST interop vectors (deeper trees, in the first format).

Blocks are encoded with ``smalldp.dagcbor.encode`` (canonical DAG-CBOR); the commit's ``sig`` is
64 zero bytes unless given (the reader does not check signatures).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dagcbor_encode import uvarint

from smalldp.dagcbor import CID, encode
from smalldp.tid import int_to_tid

DID = "did:plc:53iucmf5ldftgqyf2ac7hmhd"
REV = "3migo7fijwi2k"


def cid_of(block: bytes) -> bytes:
    """The binary CID of a DAG-CBOR block: CIDv1, dag-cbor, sha2-256."""
    return b"\x01\x71\x12\x20" + hashlib.sha256(block).digest()


def car_file(roots: list[bytes], blocks: list[tuple[bytes, bytes]]) -> bytes:
    """A CAR v1 file: the header (``roots``, binary CIDs), then one section per (cid, data)."""
    header = encode({"roots": [CID(r) for r in roots], "version": 1})
    return uvarint(len(header)) + header + b"".join(uvarint(len(c) + len(d)) + c + d for c, d in blocks)


def key_layer(key: bytes, bits: int = 2) -> int:
    """The MST layer of ``key``: leading zero bits of its sha256, counted in 2-bit chunks
    (``bits`` 4: the fanout 16 of the first atproto repos)."""
    digest = int.from_bytes(hashlib.sha256(key).digest(), "big")
    return (256 - digest.bit_length()) // bits


def build_mst(entries: Mapping[bytes, bytes], nodes: dict[bytes, bytes], *, layer_bits: int = 2,
              text_keys: bool = False) -> bytes:
    """The root CID of the MST of ``entries`` (key -> value CID, both bytes); every node's
    (CID -> block) goes into ``nodes``.  ``layer_bits=4, text_keys=True`` is the tree's first
    format (fanout 16, key suffixes as text), which the published interop vectors use."""
    layers = {key: key_layer(key, layer_bits) for key in entries}
    keys = sorted(entries)

    def node(run: list[bytes], layer: int) -> bytes:
        left: CID | None = None
        out: list[dict[str, Any]] = []
        below: list[bytes] = []
        prev = b""

        def subtree() -> CID | None:
            return CID(node(below, layer - 1)) if below else None

        for key in run:
            if layers[key] < layer:
                below.append(key)
                continue
            sub = subtree()
            if out:
                out[-1]["t"] = sub
            else:
                left = sub
            below = []
            p = 0
            while p < min(len(prev), len(key)) and prev[p] == key[p]:
                p += 1
            out.append({"k": key[p:].decode() if text_keys else key[p:], "p": p, "t": None, "v": CID(entries[key])})
            prev = key
        sub = subtree()
        if out:
            out[-1]["t"] = sub
        else:
            left = sub
        block = encode({"e": out, "l": left})
        cid = cid_of(block)
        nodes[cid] = block
        return cid

    return node(keys, max(layers.values(), default=0))


@dataclass
class Repo:
    """A built repo: its blocks by kind, ready to be written as a CAR (``car()``)."""

    records: dict[str, bytes]  # path -> record CID
    commit_cid: bytes
    commit_block: bytes
    data_cid: bytes
    nodes: dict[bytes, bytes]  # MST node CID -> block
    blocks: dict[bytes, bytes] = field(default_factory=dict)  # record CID -> block

    def car(self, seed: int | None = 0, drop: frozenset[bytes] = frozenset()) -> bytes:
        """The repo as a CAR: the commit first, then the nodes and records shuffled with
        ``seed`` (None: nodes in tree order, then records), leaving out the CIDs in ``drop``."""
        rest = list(self.nodes.items()) + list(self.blocks.items())
        if seed is not None:
            random.Random(seed).shuffle(rest)
        sections = [(self.commit_cid, self.commit_block)] + rest
        return car_file([self.commit_cid], [(c, d) for c, d in sections if c not in drop])


def build_repo(records: Mapping[str, Any], did: str = DID, rev: str = REV, sig: bytes = bytes(64)) -> Repo:
    """The repo holding ``records`` (path -> record value), its commit signed with ``sig``."""
    blocks: dict[bytes, bytes] = {}
    cids: dict[str, bytes] = {}
    for path, record in records.items():
        block = encode(record)
        cid = cid_of(block)
        blocks[cid] = block
        cids[path] = cid
    repo = repo_of_cids(cids, did, rev, sig)
    repo.blocks = blocks
    return repo


def repo_of_cids(cids: Mapping[str, bytes], did: str = DID, rev: str = REV, sig: bytes = bytes(64)) -> Repo:
    """The repo's MST and commit for ``cids`` (path -> record CID), without record blocks."""
    nodes: dict[bytes, bytes] = {}
    data = build_mst({path.encode(): cid for path, cid in cids.items()}, nodes)
    commit = encode({"did": did, "version": 3, "data": CID(data), "rev": rev, "prev": None, "sig": sig})
    return Repo(dict(cids), cid_of(commit), commit, data, nodes)


COLLECTIONS = ("app.bsky.feed.like", "app.bsky.feed.post", "app.bsky.graph.follow", "app.bsky.feed.repost")


def generated_records(n: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``n`` plausible records (likes, posts, follows, reposts) at TID rkeys, by path."""
    rng = random.Random(seed)
    out: dict[str, dict[str, Any]] = {}
    tid = 1_751_600_000_000_000 << 10
    subject = "at://did:plc:r2zybk6op3ymzpz6jhqpkoy5/app.bsky.feed.post/"
    while len(out) < n:
        tid += rng.randrange(1 << 10, 1 << 30)
        collection = rng.choice(COLLECTIONS)
        rkey = int_to_tid(tid)
        created = "2026-07-04T12:34:56.789Z"
        record: dict[str, Any]
        if collection == "app.bsky.feed.post":
            record = {"$type": collection, "createdAt": created, "langs": ["en"],
                      "text": f"post number {len(out)} " + "x" * rng.randrange(100)}
        elif collection == "app.bsky.graph.follow":
            record = {"$type": collection, "createdAt": created, "subject": f"did:plc:{rng.getrandbits(120):030x}"[:32]}
        else:
            record = {"$type": collection, "createdAt": created,
                      "subject": {"cid": "bafyreigr42szav77jmphd52ku6fqxq3vxqzcqmix53hqiklw33b4otwmdy",
                                  "uri": subject + int_to_tid(tid - rng.randrange(1 << 40))}}
        out[f"{collection}/{rkey}"] = record
    return out
