"""Record bodies: zstd with a dictionary trained on the records themselves, or, for the
small records the AppView hydrates by the hundred (likes, reposts, follows, blocks, list
items, list blocks), a compact codec that keeps only what the rest of the store cannot
give back.

zstd: small JSON records compress poorly alone (zstd has nothing to learn from in 300
bytes); a dictionary trained on a sample of them roughly halves them again.  The first
byte of such a body names the dictionary (0: none, 1..127), so a dictionary can be
retrained later without rewriting old bodies.

Compact (first byte 0x80 | flags, see ``SMALL_RECORDS``): a record whose shape is exactly
its lexicon's (``$type``, ``createdAt``, and the fields listed, nothing else) is stored as
its createdAt (milliseconds from its rkey's time, or the text when it is not in the usual
``YYYY-MM-DDTHH:MM:SS.mmmZ`` form), each strong ref's CID as its 32-byte digest, and each
DID or at-uri as the target key the backlink index already gives it (store/encoding.py:
an account ID, a collection ID and the rkey's TID, a dozen bytes).  The JSON given back
is the same value with sorted keys and no spaces (what Jetstream sends); the record's own
CID is recomputed from its DAG-CBOR encoding, so it is stored (in the ``cid`` column)
only when that does not give the CID the record came with (checked at write time).  A
record of any other shape (an extra field, an explicit null, a CID that is not DAG-CBOR
sha2-256, a value that is not one of the record's links) is stored with zstd, as is one
that came without a CID.
"""

from __future__ import annotations

import datetime
import hashlib
import sqlite3
from typing import Any, Callable

import orjson
import zstandard

from smalldp.dagcbor import cid_text
from smalldp.store.encoding import get_varint, varint

DICT_SIZE = 32 * 1024
TRAIN_SAMPLES = 2000
LEVEL = 3
COMPACT = 0x80  # first byte of a compact body: 0x80 | flags; dictionaries are numbered below it
MAX_DICT_ID = COMPACT - 1


# A CIDv1 of a DAG-CBOR block hashed with sha2-256 (32 bytes): what nearly every record's
# CID is, "bafyrei..." in text.
DAG_CBOR_SHA256 = b"\x01\x71\x12\x20"
_CID_TEXT_LEN = 59  # "b" and 58 letters of base32 for 36 bytes


_B32_TO_INT = bytes(b"0123456789abcdefghijklmnopqrstuv"[b"abcdefghijklmnopqrstuvwxyz234567".index(b)]
                    if b in b"abcdefghijklmnopqrstuvwxyz234567" else ord("!") for b in range(256))


def pack_cid(cid: str | None) -> str | bytes | None:
    """A record's CID as the body table stores it: the 32-byte digest when the CID is the
    usual DAG-CBOR sha2-256 one (27 bytes less per record than its 59 letters), else the text
    as it came.  ``cid_of`` gives the text back exactly."""
    if cid is None or len(cid) != _CID_TEXT_LEN or not cid.startswith("bafyrei"):
        return cid
    # Lower-case RFC 4648 base32 read as one base-32 integer (its letters mapped to the
    # digits int() knows): 58 letters are 290 bits, the 36 bytes and 2 padding bits, which
    # must be 0.  Anything else (upper case, other letters) is not canonical: kept as text.
    try:
        value = int(cid[1:].encode("ascii").translate(_B32_TO_INT), 32)
    except (UnicodeEncodeError, ValueError):
        return cid
    if value & 3:
        return cid
    raw = (value >> 2).to_bytes(36, "big")
    return raw[4:] if raw[:4] == DAG_CBOR_SHA256 else cid


def cid_of(stored: str | bytes | None) -> str | None:
    """The text of a CID as ``pack_cid`` stored it."""
    if isinstance(stored, bytes):
        return cid_text(DAG_CBOR_SHA256 + stored)
    return stored


# ---------------------------------------------------------------- the compact codec

# Field kinds: a strong ref ({cid, uri}, maybe with its $type) or a link (a DID or at-uri).
REF = 1
LINK = 2
STRONG_REF = "com.atproto.repo.strongRef"
# Per collection, its fields besides $type and createdAt: (name, kind, required), in the
# order they are stored.  Flag bits of the head byte, in this order: bit 0 createdAt kept as
# text; then per field, if optional, "present"; if a ref, "has $type".
SMALL_RECORDS: dict[str, tuple[tuple[str, int, bool], ...]] = {
    "app.bsky.feed.like": (("subject", REF, True), ("via", REF, False)),
    "app.bsky.feed.repost": (("subject", REF, True), ("via", REF, False)),
    "app.bsky.graph.follow": (("subject", LINK, True), ("via", REF, False)),
    "app.bsky.graph.block": (("subject", LINK, True),),
    "app.bsky.graph.listitem": (("list", LINK, True), ("subject", LINK, True)),
    "app.bsky.graph.listblock": (("subject", LINK, True),),
}
_CREATED_TEXT = 0x01
_EPOCH = datetime.datetime(1970, 1, 1)
_SECOND = datetime.timedelta(seconds=1)
# "YYYY-MM-DDTHH:MM:SS" <-> seconds since the epoch: a stream's records share their second
# by the hundred, so these are dict hits.  Bounded: cleared when full.
_SECONDS_MAX = 4096
_second_of_text: dict[str, int] = {}
_text_of_second: dict[int, str] = {}

# A small record's fields: None (an optional field absent), a link's text, or a strong ref
# (CID digest, uri, whether it has its $type).
Ref = tuple[bytes, str, bool]
Field = Ref | str | None
TargetKey = Callable[[str], "bytes | None"]
TargetName = Callable[[bytes], str]


def _second_text(second: int) -> str:
    text = _text_of_second.get(second)
    if text is None:
        moment = _EPOCH + datetime.timedelta(seconds=second)  # OverflowError outside years 1..9999
        text = (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
                f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}")
        if len(_text_of_second) >= _SECONDS_MAX:
            _text_of_second.clear()
        _text_of_second[second] = text
    return text


def _text_second(text: str) -> int | None:
    """Seconds since the epoch of "YYYY-MM-DDTHH:MM:SS" in exactly that form, else None."""
    second = _second_of_text.get(text)
    if second is not None:
        return second
    if (len(text) != 19 or not text.isascii() or text[4] != "-" or text[7] != "-" or text[10] != "T"
            or text[13] != ":" or text[16] != ":"):
        return None
    digits = text[0:4] + text[5:7] + text[8:10] + text[11:13] + text[14:16] + text[17:19]
    if not digits.isdigit():
        return None
    try:
        moment = datetime.datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]),
                                   int(text[11:13]), int(text[14:16]), int(text[17:19]))
    except ValueError:
        return None
    second = (moment - _EPOCH) // _SECOND
    if len(_second_of_text) >= _SECONDS_MAX:
        _second_of_text.clear()
    _second_of_text[text] = second
    return second


def canonical_ms(text: str) -> int | None:
    """Milliseconds since the epoch of a datetime written exactly as
    ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (so that ``ms_text`` gives the same text back), else None."""
    if len(text) != 24 or text[19] != "." or text[23] != "Z":
        return None
    frac = text[20:23]
    if not (frac.isascii() and frac.isdigit()):
        return None
    second = _text_second(text[:19])
    return None if second is None else second * 1000 + int(frac)


def ms_text(ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` of milliseconds since the epoch."""
    second, milli = divmod(ms, 1000)
    return f"{_second_text(second)}.{milli:03d}Z"


def base_ms(sk: int, indexed_us: int) -> int:
    """What a compact body's createdAt counts from: its rkey's time when the rkey is a TID
    (sort key >= 0), else the time it was indexed."""
    return (sk >> 10) // 1000 if sk >= 0 else indexed_us // 1000


def _zigzag(value: int) -> int:
    return value << 1 if value >= 0 else ((-value) << 1) - 1


def _unzigzag(value: int) -> int:
    return value >> 1 if not value & 1 else -((value + 1) >> 1)


def encode_small(nsid: str, record: Any, base: int, target_key: TargetKey) -> tuple[bytes, list[Field], str] | None:
    """The compact body of ``record`` (the parsed JSON of a record of ``nsid``), with its
    fields and createdAt, or None when the record is not exactly its lexicon's shape, a CID
    is not a DAG-CBOR sha2-256 one, or a DID or uri has no target key (``target_key``: the
    writer's keys of the links it just extracted from the record)."""
    schema = SMALL_RECORDS.get(nsid)
    if schema is None or not isinstance(record, dict) or record.get("$type") != nsid:
        return None
    created = record.get("createdAt")
    if not isinstance(created, str):
        return None
    flags = 0
    out = bytearray(b"\x00")
    ms = canonical_ms(created)
    if ms is None:
        raw = created.encode()
        flags |= _CREATED_TEXT
        out += varint(len(raw))
        out += raw
    else:
        out += varint(_zigzag(ms - base))
    bit = 2
    present = 2
    fields: list[Field] = []
    for name, kind, required in schema:
        value = record.get(name)
        if not required:
            if value is not None:
                flags |= bit
            bit <<= 1
        if value is None:
            if required or name in record:  # a required field missing, or an explicit null
                return None
            if kind == REF:
                bit <<= 1
            fields.append(None)
            continue
        present += 1
        if kind == REF:
            if not isinstance(value, dict):
                return None
            typed = "$type" in value
            if typed:
                if value["$type"] != STRONG_REF or len(value) != 3:
                    return None
                flags |= bit
            elif len(value) != 2:
                return None
            bit <<= 1
            cid, uri = value.get("cid"), value.get("uri")
            if not isinstance(cid, str) or not isinstance(uri, str):
                return None
            digest = pack_cid(cid)
            key = target_key(uri)
            if not isinstance(digest, bytes) or key is None:
                return None
            out += digest
            out += varint(len(key))
            out += key
            fields.append((digest, uri, typed))
        else:
            if not isinstance(value, str):
                return None
            key = target_key(value)
            if key is None:
                return None
            out += varint(len(key))
            out += key
            fields.append(value)
    if len(record) != present:
        return None  # fields the lexicon does not name
    out[0] = COMPACT | flags
    return bytes(out), fields, created


def decode_small(nsid: str, data: bytes, base: int, target_name: TargetName) -> tuple[list[Field], str]:
    """The fields and createdAt of a compact body (ValueError if it is not one)."""
    schema = SMALL_RECORDS.get(nsid)
    if schema is None or not data or not data[0] & COMPACT:
        raise ValueError(f"not a compact body of {nsid}")
    flags = data[0] & ~COMPACT
    value, pos = get_varint(data, 1)
    if flags & _CREATED_TEXT:
        created = data[pos:pos + value].decode()
        pos += value
    else:
        created = ms_text(base + _unzigzag(value))
    bit = 2
    fields: list[Field] = []
    for _, kind, required in schema:
        present = True
        if not required:
            present = bool(flags & bit)
            bit <<= 1
        typed = False
        digest = b""
        if kind == REF:
            typed = bool(flags & bit)
            bit <<= 1
        if not present:
            fields.append(None)
            continue
        if kind == REF:
            digest = data[pos:pos + 32]
            pos += 32
        size, pos = get_varint(data, pos)
        key = data[pos:pos + size]
        if len(key) != size or size == 0:
            raise ValueError(f"truncated compact body of {nsid}")
        pos += size
        text = target_name(key)
        fields.append((digest, text, typed) if kind == REF else text)
    if pos != len(data) or flags >= bit:
        raise ValueError(f"malformed compact body of {nsid}")
    return fields, created


def _ref(uri: str, typed: bool, cid: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cid": cid, "uri": uri}
    if typed:
        out["$type"] = STRONG_REF
    return out


def small_record(nsid: str, fields: list[Field], created: str) -> dict[str, Any]:
    """The record (JSON value) of a compact body's fields."""
    out: dict[str, Any] = {"$type": nsid, "createdAt": created}
    for (name, kind, _), value in zip(SMALL_RECORDS[nsid], fields):
        if value is None:
            continue
        if isinstance(value, tuple):
            digest, uri, typed = value
            out[name] = _ref(uri, typed, cid_text(DAG_CBOR_SHA256 + digest))
        else:
            out[name] = value
    return out


# The keys a small record may have, in DAG-CBOR's canonical order (shorter first, then
# bytewise): what small_cbor writes them in, with no sort per record.
_TOP_ORDER = ("via", "list", "$type", "subject", "createdAt")
_REF_ORDER = ("cid", "uri", "$type")


def _cbor_text(out: bytearray, text: str) -> None:
    raw = text.encode()
    size = len(raw)
    if size < 24:
        out.append(0x60 | size)
    elif size < 0x100:
        out.append(0x78)
        out.append(size)
    elif size < 0x10000:
        out.append(0x79)
        out += size.to_bytes(2, "big")
    else:
        out.append(0x7A)
        out += size.to_bytes(4, "big")
    out += raw


def _cbor_map(out: bytearray, value: dict[str, Any], order: tuple[str, ...]) -> None:
    out.append(0xA0 | len(value))  # small records' maps have at most 5 keys
    for key in order:
        item = value.get(key)
        if item is None:
            continue
        _cbor_text(out, key)
        if isinstance(item, str):
            _cbor_text(out, item)
        else:
            _cbor_map(out, item, _REF_ORDER)


def small_cbor(record: dict[str, Any]) -> bytes:
    """The canonical DAG-CBOR of a small record (``encode_small`` accepted it, or
    ``small_record`` made it): what ``dagcbor.encode`` gives, without its generic dispatch
    and key sort (tests check they agree)."""
    out = bytearray()
    _cbor_map(out, record, _TOP_ORDER)
    return bytes(out)


def small_cid(nsid: str, fields: list[Field], created: str) -> str:
    """The CID of the record of a compact body's fields: sha2-256 of its DAG-CBOR (a strong
    ref's cid is a string there, format cid, not a CID link)."""
    digest = hashlib.sha256(small_cbor(small_record(nsid, fields, created))).digest()
    return cid_text(DAG_CBOR_SHA256 + digest)


def record_json(record: dict[str, Any]) -> bytes:
    """A record's JSON as compact bodies give it back: keys sorted, no spaces."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


# ---------------------------------------------------------------- writing and reading


class BodyCompressor:
    """Writer side: encodes bodies (compact when they fit, else zstd, training a dictionary
    once enough are seen)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        row = conn.execute("SELECT max(CAST(substr(k, 7) AS INTEGER)) FROM meta WHERE k LIKE 'zdict:%'").fetchone()
        self._dict_id = row[0] or 0
        self._plain = zstandard.ZstdCompressor(level=LEVEL)
        self._with_dict: zstandard.ZstdCompressor | None = None
        if self._dict_id:
            data = conn.execute("SELECT v FROM meta WHERE k=?", (f"zdict:{self._dict_id}",)).fetchone()[0]
            self._with_dict = zstandard.ZstdCompressor(level=LEVEL, dict_data=zstandard.ZstdCompressionDict(data))
        self._samples: list[bytes | bytearray | memoryview] = []

    def encode(self, sk: int, nsid: str, cid: str | None, time_us: int, body: bytes,
               target_key: TargetKey) -> tuple[str | bytes | None, bytes]:
        """(what the ``cid`` column holds, what ``data`` holds) for a record body.

        Compact when the record is a small one (``encode_small``: exactly its lexicon's
        shape, so it reads back as the same JSON value): then the CID is stored only when it
        is not the one its DAG-CBOR encoding gives (None: recompute it).  A record without a
        CID is never compact (None there means none)."""
        if cid is not None and nsid in SMALL_RECORDS:
            try:
                record = orjson.loads(body)
            except orjson.JSONDecodeError:
                record = None
            small = encode_small(nsid, record, base_ms(sk, time_us), target_key)
            if small is not None:
                # The record holds strings only (encode_small checked its shape): its DAG-CBOR
                # is what its author's repo hashed, unless that was not canonical.
                packed = pack_cid(cid)
                recomputed = hashlib.sha256(small_cbor(record)).digest()
                return (None if packed == recomputed else packed), small[0]
        return pack_cid(cid), self.compress(body)

    def compress(self, body: bytes) -> bytes:
        """Compress one record body with zstd (call inside the writer's transaction)."""
        if self._with_dict is None:
            self._samples.append(body)
            if len(self._samples) >= TRAIN_SAMPLES:
                self._train()
        if self._with_dict is not None:
            return bytes((self._dict_id,)) + self._with_dict.compress(body)
        return b"\x00" + self._plain.compress(body)

    def _train(self) -> None:
        if self._dict_id >= MAX_DICT_ID:
            self._samples = []
            return
        try:
            trained = zstandard.train_dictionary(DICT_SIZE, self._samples)
        except zstandard.ZstdError:
            # Too little variety to train on: keep sampling.
            self._samples = self._samples[-TRAIN_SAMPLES // 2:]
            return
        self._dict_id += 1
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES(?, ?)", (f"zdict:{self._dict_id}", trained.as_bytes()))
        self._with_dict = zstandard.ZstdCompressor(level=LEVEL, dict_data=trained)
        self._samples = []

    def reset(self) -> None:
        """Forget state that may not have been committed (after a rollback)."""
        self.__init__(self._conn)  # type: ignore[misc]


class BodyDecompressor:
    """Reader side: decodes bodies, loading dictionaries on first use."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._by_id: dict[int, zstandard.ZstdDecompressor] = {0: zstandard.ZstdDecompressor()}

    def decompress(self, data: bytes) -> bytes:
        """The record JSON of a zstd body."""
        dict_id = data[0]
        decompressor = self._by_id.get(dict_id)
        if decompressor is None:
            if dict_id & COMPACT:
                raise ValueError("a compact body: read it with BodyDecompressor.read")
            row = self._conn.execute("SELECT v FROM meta WHERE k=?", (f"zdict:{dict_id}",)).fetchone()
            if row is None:
                raise ValueError(f"body compressed with unknown dictionary {dict_id}")
            decompressor = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(row[0]))
            self._by_id[dict_id] = decompressor
        return decompressor.decompress(data[1:])

    def read(self, sk: int, nsid: str, stored_cid: str | bytes | None, indexed_us: int, data: bytes,
             target_name: TargetName) -> tuple[bytes, str | None]:
        """(record JSON, CID text or None) of a body row: zstd bodies give the JSON as it
        came; compact ones the same value with sorted keys and the CID recomputed unless
        stored.  ``target_name`` turns a target key back into its DID or at-uri
        (Reader._target_name)."""
        if data and data[0] & COMPACT:
            fields, created = decode_small(nsid, data, base_ms(sk, indexed_us), target_name)
            record = small_record(nsid, fields, created)
            if stored_cid is not None:
                return record_json(record), cid_of(stored_cid)
            return record_json(record), cid_text(DAG_CBOR_SHA256 + hashlib.sha256(small_cbor(record)).digest())
        return self.decompress(data), cid_of(stored_cid)
