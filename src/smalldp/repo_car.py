"""Reading a whole repo from its CAR export (``com.atproto.sync.getRepo``): the core of the backfill.

A repo CAR is a CAR v1 file: ``varint(len) header`` (DAG-CBOR ``{version: 1, roots: [CID]}``),
then sections ``varint(len) CID data``.  The root is the signed commit ``{did, version: 3, data,
rev, prev, sig}``; ``data`` is the root of the repo's Merkle Search Tree, whose nodes are
``{l: CID | null, e: [{p, k, v, t}]}``: entry keys are ``collection/rkey``, each the previous
entry's first ``p`` bytes (in the same node) then ``k``; ``v`` is the record's CID and ``t``
the subtree of keys between this entry and the next.  ``RepoCar.records`` walks the tree in
order (``l``, then each entry followed by its ``t``), which is key order, and yields every
record as a ``RepoRecord``: collection, rkey, CID and the record as the JSON Jetstream shows
(``events_firehose.record_json``, so the backfill's operations equal the firehose's).

**Memory.**  The blocks stay where they are (a file, or the bytes given): a first pass streams
the CAR through a buffer of ``_CHUNK`` bytes, checks every section's CID against the sha2-256
of its data, and keeps only an index: per block the first 8 bytes of its digest and where its
section is, in two arrays grouped by the digest's top bits (``_build_index``: 20 to 24 bytes a
block, 40 to 48 while it is built, against ~100 for a dict of ints and ~300 for the block on
disk).  The walk then reads each MST node and record at its offset (``os.pread``), one at a
time.  Two CIDs sharing those 8 bytes (never by chance, possible by design) can't make a block
be found for another: both are kept, and a lookup compares the CID stored in the section with
the one asked for.  Peak memory: the index, the buffer, one block (at most ``max_block``
bytes), and the walk's stack (the tree's height times its fanout).  Measured
(scripts/bench_repo_car.py), peak RSS above the import: 7 MB for 100k records (a 30 MB CAR),
56 MB for 1M records (a 298 MB CAR).

**Errors.**  Everything that makes the repo unreadable raises a ``RepoError`` subclass saying
what and where (byte offsets, node CIDs, keys): ``MalformedCar`` (header, a section's varint or
CID, a CID other than a sha2-256 CIDv1 of dag-cbor or raw, a block larger than ``max_block``),
``TruncatedCar``, ``CidMismatch`` (a block whose data does not hash to its CID),
``MissingBlock`` (the commit or an MST node absent), ``MalformedCommit``, ``MalformedMst``
(a node's shape, a prefix longer than the previous key) and its ``BadMstKey`` (keys not
strictly increasing, or not ``collection/rkey``).  A *record* that is absent or not atproto
data does not fail the repo: the MST, checked up to the signed commit, still says the record
exists and what its CID is, so its ``RepoRecord`` comes with ``json`` None and ``problem``
saying why, for the caller to count as it counts a bad event.  A getRepo CAR is complete, so
none are expected.  The commit's signature is not checked here (that needs the DID document's
key): the caller trusts the CAR as far as it trusts where it got it from.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Iterator
from typing import Any, BinaryIO, NamedTuple

from smalldp.dagcbor import CID, DecodeError, cid_text, decode, read_varint
from smalldp.events import valid_did, valid_nsid, valid_rkey
from smalldp.events_firehose import car_section, record_json
from smalldp.tid import tid_to_int

__all__ = [
    "BadMstKey", "CidMismatch", "Commit", "MalformedCar", "MalformedCommit", "MalformedMst",
    "MissingBlock", "RepoCar", "RepoError", "RepoRecord", "TruncatedCar", "open_repo",
]

MAX_BLOCK = 8 << 20  # bytes: records are at most 1 MiB; anything far larger is not a repo block
_CHUNK = 1 << 20  # bytes read at a time by the indexing pass
_LOOKAHEAD = 256  # bytes a section's varint and CID take at most (a 36-byte CID here)
_DAG_CBOR = b"\x01\x71\x12\x20"  # CIDv1, dag-cbor, sha2-256, 32-byte digest
_RAW = b"\x01\x55\x12\x20"  # the same for raw blocks (blobs): allowed, never a node or record
_CID_SIZE = 36


class RepoError(ValueError):
    """A repo CAR that can't be read; the message says what and where."""


class MalformedCar(RepoError):
    """Not a CAR v1 file of sha2-256 blocks: its header, a section's framing, or a CID."""


class TruncatedCar(RepoError):
    """The file ends inside its header or a section."""


class CidMismatch(RepoError):
    """A block whose data does not hash to its CID."""


class MissingBlock(RepoError):
    """The commit or an MST node is not in the CAR."""


class MalformedCommit(RepoError):
    """The root block is not a version 3 signed commit."""


class MalformedMst(RepoError):
    """An MST node that is not one: its fields, or a prefix longer than the previous key."""


class BadMstKey(MalformedMst):
    """MST keys not strictly increasing in walk order, or a key that is not collection/rkey."""


class Commit(NamedTuple):
    """The repo's signed commit (the CAR's root); CIDs in their string form."""

    did: str
    version: int
    data: str  # the MST root
    rev: str
    prev: str | None
    sig: bytes
    cid: str  # the commit block's own CID


class RepoRecord(NamedTuple):
    """One record of the repo: ``json`` is the record as Jetstream shows it (UTF-8 JSON,
    keys sorted), or None when its block is absent or not atproto data (``problem`` says)."""

    collection: str
    rkey: str
    cid: str
    json: bytes | None
    problem: str | None = None


class RepoCar:
    """An indexed repo CAR (see the module docstring); ``open_repo`` makes one.

    ``commit`` is read and checked on opening; ``records()`` walks the MST.  Close it (or use
    it as a context manager) to close the file it reads from.
    """

    def __init__(self, source: bytes | str | os.PathLike[str], max_block: int = MAX_BLOCK) -> None:
        self._data: bytes | None = None
        self._fd = -1
        # The index (see _build_index): per block, the first 8 bytes of its digest as an int
        # and where its section is (offset << 32 | size), grouped by their top bits.
        self._keys = array("Q")
        self._spots = array("Q")
        self._starts = array("I", [0, 0])
        self._shift = 63
        self._max_block = min(max_block, 0xFFFFFFFF)  # a section's size is packed in 32 bits
        self._mst_root = b""
        if isinstance(source, (bytes, bytearray, memoryview)):
            source = bytes(source)
            self._data = source
            self._index_blocks(None, source)
        else:
            self._fd = os.open(source, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                with os.fdopen(os.dup(self._fd), "rb", buffering=0) as stream:
                    self._index_blocks(stream, b"")
            except BaseException:
                self.close()
                raise
        self.blocks = len(self._keys)  # sections in the CAR
        try:
            self.commit = self._read_commit()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the file (nothing to do for bytes); records() can't be used afterwards."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RepoCar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the indexing pass ------------------------------------------------------------------

    def _index_blocks(self, stream: BinaryIO | None, buf: bytes) -> None:
        """Index every section of the CAR, read from ``stream`` (or all in ``buf``), checking
        each block against its CID; sets ``self._roots``."""
        base = 0  # file offset of buf[0]
        eof = stream is None

        def more(need: int, pos: int) -> tuple[bytes, int]:
            """buf from pos on with at least ``need`` bytes (or all that is left) after pos."""
            nonlocal base, eof
            if eof or len(buf) - pos >= need:
                return buf, pos
            assert stream is not None
            parts = [buf[pos:]]
            have = len(buf) - pos
            while have < need:
                chunk = stream.read(max(_CHUNK, need - have))
                if not chunk:
                    eof = True
                    break
                parts.append(chunk)
                have += len(chunk)
            base += pos
            return b"".join(parts), 0

        buf, pos = more(_LOOKAHEAD, 0)
        try:
            size, at = read_varint(buf, 0)
        except DecodeError as exc:
            if eof and len(buf) < 9 and all(b >= 0x80 for b in buf):
                raise TruncatedCar(f"the file ends ({len(buf)} bytes) inside the CAR header's length") from None
            raise MalformedCar(f"CAR header length: {exc}") from None
        if size == 0 or size > _CHUNK:
            raise MalformedCar(f"CAR header of {size} bytes")
        buf, pos = more(at + size, 0)
        if at + size > len(buf):
            raise TruncatedCar(f"the file ends ({len(buf)} bytes) inside the {size}-byte CAR header")
        try:
            header = decode(buf[at:at + size])
        except DecodeError as exc:
            raise MalformedCar(f"CAR header is not DAG-CBOR: {exc}") from None
        roots = header.get("roots") if isinstance(header, dict) else None
        if not isinstance(header, dict) or type(header.get("version")) is not int or header["version"] != 1 \
                or not isinstance(roots, list) \
                or not all(isinstance(r, CID) for r in roots):
            raise MalformedCar(f"CAR header is not {{version: 1, roots: [CID...]}}: {str(header)[:200]}")
        self._roots: list[CID] = roots
        pos = at + size
        keys = self._keys
        spots = self._spots
        limit = self._max_block
        while True:
            buf, pos = more(_LOOKAHEAD, pos)
            if pos == len(buf):
                break
            where = base + pos
            try:
                cid_at, data_at, end = car_section(buf, pos)
            except ValueError as bad:  # not "exc": mypyc types a name by its first binding (DecodeError)
                if eof and _cut_short(buf[pos:]):
                    raise TruncatedCar(f"the file ends inside the section at byte {where} ({bad})") from None
                raise MalformedCar(f"section at byte {where}: {bad}") from None
            if end - pos > limit:
                raise MalformedCar(f"section at byte {where} of {end - pos} bytes (more than {limit})")
            if end > len(buf):
                buf, pos = more(end - pos, pos)
                cid_at, data_at, end = car_section(buf, pos)
                if end > len(buf):
                    raise TruncatedCar(f"the file ends ({base + len(buf)} bytes) inside the section at"
                                       f" byte {where} of {end - pos} bytes")
            cid = buf[cid_at:data_at]
            prefix = cid[:4]
            if data_at - cid_at != _CID_SIZE or (prefix != _DAG_CBOR and prefix != _RAW):
                raise MalformedCar(f"block at byte {where}: CID {cid.hex()[:80]} is not a sha2-256 CIDv1"
                                   " of dag-cbor or raw")
            if hashlib.sha256(memoryview(buf)[data_at:end]).digest() != cid[4:]:
                raise CidMismatch(f"block at byte {where}: its data does not hash to its CID {cid_text(cid)}")
            keys.append(int.from_bytes(cid[4:12], "little"))
            spots.append((base + cid_at) << 32 | (end - cid_at))
            pos = end
        self._build_index()

    def _build_index(self) -> None:
        """Group the blocks by the top bits of their key, as many groups as blocks or up to
        twice as many (a counting sort): ``_starts[g]`` is where group g starts in ``_keys``
        and ``_spots``.  16 bytes a block and 4 or 8 a group, against ~100 for a dict of
        ints; digests are uniform, so a lookup scans one or two entries.  Two CIDs with the
        same first 8 digest bytes are both kept: a lookup checks the CID in the section."""
        keys = self._keys
        spots = self._spots
        n = len(keys)
        bits = max(1, (n - 1).bit_length())
        shift = 64 - bits
        starts = array("I", bytes(4 * ((1 << bits) + 1)))
        for key in keys:
            starts[(key >> shift) + 1] += 1
        total = 0
        for group in range(len(starts)):
            total += starts[group]
            starts[group] = total
        fill = array("I", starts)
        sorted_keys = array("Q", bytes(8 * n))
        sorted_spots = array("Q", bytes(8 * n))
        for key, spot in zip(keys, spots):
            group = key >> shift
            at = fill[group]
            fill[group] = at + 1
            sorted_keys[at] = key
            sorted_spots[at] = spot
        self._keys, self._spots, self._starts, self._shift = sorted_keys, sorted_spots, starts, shift

    # --- reading blocks ---------------------------------------------------------------------

    def _block(self, cid: bytes) -> bytes | None:
        """The data of the block ``cid`` names, or None when the CAR has none."""
        key = int.from_bytes(cid[4:12], "little")
        group = key >> self._shift
        keys = self._keys
        for at in range(self._starts[group], self._starts[group + 1]):
            if keys[at] == key:
                section = self._section(self._spots[at])
                if section[:_CID_SIZE] == cid:
                    return section[_CID_SIZE:]
        return None  # (or only other CIDs sharing those 8 digest bytes: never by chance)

    def _section(self, packed: int) -> bytes:
        """The CID and data of the section ``packed`` (offset << 32 | size) locates."""
        offset = packed >> 32
        size = packed & 0xFFFFFFFF
        if self._data is not None:
            section = self._data[offset:offset + size]
        else:
            if self._fd < 0:
                raise ValueError("RepoCar is closed")
            section = os.pread(self._fd, size, offset)
            if len(section) != size:
                raise TruncatedCar(f"the file shrank: block at byte {offset} no longer there")
        return section

    def _read_commit(self) -> Commit:
        if len(self._roots) != 1:
            raise MalformedCar(f"CAR header has {len(self._roots)} roots, a repo export has one (its commit)")
        cid = self._roots[0].cid_bytes
        name = cid_text(cid)
        block = self._block(cid)
        if block is None:
            raise MissingBlock(f"the commit {name} (the CAR's root) is not in the CAR")
        try:
            value = decode(block)
        except DecodeError as exc:
            raise MalformedCommit(f"commit {name} is not DAG-CBOR: {exc}") from None
        if not isinstance(value, dict):
            raise MalformedCommit(f"commit {name} is not a map")
        did, version, data, rev = value.get("did"), value.get("version"), value.get("data"), value.get("rev")
        prev, sig = value.get("prev"), value.get("sig")
        if version != 3:
            raise MalformedCommit(f"commit {name} has version {version!r}; only version 3 repos are read")
        if not isinstance(did, str) or not valid_did(did):
            raise MalformedCommit(f"commit {name} has an invalid did {str(did)[:80]!r}")
        if not isinstance(rev, str) or tid_to_int(rev) is None:
            raise MalformedCommit(f"commit {name} has an invalid rev {str(rev)[:40]!r}")
        if not isinstance(data, CID) or data.cid_bytes[:4] != _DAG_CBOR:
            raise MalformedCommit(f"commit {name}: data {data!r} is not the CID of an MST node")
        if prev is not None and not isinstance(prev, CID):
            raise MalformedCommit(f"commit {name}: prev {prev!r} is neither null nor a CID")
        if not isinstance(sig, bytes):
            raise MalformedCommit(f"commit {name} has no sig bytes")
        self._mst_root = data.cid_bytes
        return Commit(did, 3, data.encode(), rev, prev.encode() if prev is not None else None, sig, name)

    def commit_block(self) -> bytes:
        """The signed commit's block as it is in the CAR (for its signature check)."""
        block = self._block(self._roots[0].cid_bytes)
        assert block is not None  # read on opening
        return block

    # --- the MST walk ------------------------------------------------------------------------

    def records(self) -> Iterator[RepoRecord]:
        """Every record of the repo, in MST order (which is key order: collection, then rkey).

        Raises a ``RepoError`` (``MissingBlock``, ``MalformedMst``, ``BadMstKey``) as soon as
        the walk meets one: records already yielded were read from a tree checked up to there.
        """
        for key, cid in self._walk():
            text = key.decode("ascii", "replace")
            collection, slash, rkey = text.partition("/")
            if not slash or not valid_nsid(collection) or not valid_rkey(rkey) or not key.isascii():
                raise BadMstKey(f"MST key {text[:200]!r} is not collection/rkey")
            name = cid_text(cid)
            block = self._block(cid) if cid[:4] == _DAG_CBOR else None
            if block is None:
                problem = ("absent from the CAR" if cid[:4] == _DAG_CBOR else "not a dag-cbor CID")
                yield RepoRecord(collection, rkey, name, None, f"record {name} of {text!r}: {problem}")
                continue
            if not block or block[0] >> 5 != 5:  # records are maps: check before converting
                yield RepoRecord(collection, rkey, name, None, f"record {name} of {text!r}: not a map")
                continue
            try:
                json = record_json(block)
            except ValueError as exc:
                yield RepoRecord(collection, rkey, name, None, f"record {name} of {text!r}: {exc}")
                continue
            yield RepoRecord(collection, rkey, name, json)

    def _walk(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, record CID) of every MST entry in order, keys checked strictly increasing.

        An explicit stack rather than recursion: a crafted tree may be deeper than Python's
        stack.  Items are a node's CID (bytes) or an entry (a tuple), pushed in reverse.
        """
        stack: list[Any] = [self._mst_root]
        last = b""
        first = True
        root = True
        while stack:
            item = stack.pop()
            if type(item) is tuple:
                key = item[0]
                if not first and key <= last:
                    raise BadMstKey(f"MST key {key[:200]!r} after {last[:200]!r}: keys must strictly increase"
                                    f" (in node {CID(item[2])})")
                first = False
                last = key
                yield key, item[1]
                continue
            stack.extend(reversed(self._node(item, root)))
            root = False

    def _node(self, cid: bytes, root: bool) -> list[Any]:
        """The items of the MST node ``cid`` in walk order: its left subtree, then each entry
        (key, value CID, node CID) followed by its right subtree (CIDs as bytes)."""
        block = self._block(cid) if cid[:4] == _DAG_CBOR else None
        name = CID(cid)  # formatted as text only in an error message
        if block is None:
            raise MissingBlock(f"MST node {name} is not in the CAR")
        try:
            node = decode(block)
        except DecodeError as exc:
            raise MalformedMst(f"MST node {name} is not DAG-CBOR: {exc}") from None
        if not isinstance(node, dict) or len(node) != 2 or not isinstance(node.get("e"), list) or "l" not in node:
            raise MalformedMst(f"MST node {name} is not {{e: [...], l: CID | null}}")
        left = node["l"]
        entries: list[Any] = node["e"]
        items: list[Any] = []
        if left is not None:
            if not isinstance(left, CID):
                raise MalformedMst(f"MST node {name}: l is neither null nor a CID")
            items.append(left.cid_bytes)
        elif not entries and not root:
            # Only an empty repo's root has neither entries nor a left subtree.
            raise MalformedMst(f"MST node {name} is empty (no entries, no left subtree) and not the root")
        prev = b""
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or len(entry) != 4:
                raise MalformedMst(f"MST node {name}, entry {i}: not {{p, k, v, t}}")
            p, k, v, t = entry.get("p"), entry.get("k"), entry.get("v"), entry.get("t", 0)
            if type(p) is not int or not isinstance(k, bytes) or not isinstance(v, CID) \
                    or not (t is None or isinstance(t, CID)):
                raise MalformedMst(f"MST node {name}, entry {i}: p int, k bytes, v CID, t CID or null expected")
            if p > len(prev) or (i == 0 and p != 0):
                raise MalformedMst(f"MST node {name}, entry {i}: prefix {p} longer than the previous key")
            prev = prev[:p] + k
            items.append((prev, v.cid_bytes, cid))
            if t is not None:
                items.append(t.cid_bytes)
        return items


def open_repo(source: bytes | str | os.PathLike[str], max_block: int = MAX_BLOCK) -> RepoCar:
    """Index the repo CAR ``source`` (a file's path, or the CAR's bytes) and read its commit.

    Raises a ``RepoError`` when the CAR or its commit can't be read (see the module
    docstring); ``OSError`` when the file can't be.
    """
    return RepoCar(source, max_block)


def _cut_short(rest: bytes) -> bool:
    """Whether the unreadable section head ``rest`` (all that is left of the file) would read
    with more bytes after it: a truncated file, rather than a malformed one.  The bytes tried
    end a varint cut short, then complete a dag-cbor CIDv1 cut anywhere."""
    for k in range(6):
        try:
            car_section(rest + (b"\x01" + _DAG_CBOR)[k:] + bytes(_LOOKAHEAD), 0)
        except ValueError:
            continue
        return True
    return False
