"""Record bodies, zstd-compressed with a dictionary trained on the records themselves.

Small JSON records compress poorly alone (zstd has nothing to learn from in 300
bytes); a dictionary trained on a sample of them roughly halves them again.  The
first byte of a stored body names the dictionary (0: none), so a dictionary can be
retrained later without rewriting old bodies.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3

import zstandard

from smalldp.dagcbor import cid_text

DICT_SIZE = 32 * 1024
TRAIN_SAMPLES = 2000
LEVEL = 3


# A CIDv1 of a DAG-CBOR block hashed with sha2-256 (32 bytes): what nearly every record's
# CID is, "bafyrei..." in text.
DAG_CBOR_SHA256 = b"\x01\x71\x12\x20"
_CID_TEXT_LEN = 59  # "b" and 58 letters of base32 for 36 bytes


def pack_cid(cid: str | None) -> str | bytes | None:
    """A record's CID as the body table stores it: the 32-byte digest when the CID is the
    usual DAG-CBOR sha2-256 one (27 bytes less per record than its 59 letters), else the text
    as it came.  ``cid_of`` gives the text back exactly."""
    if cid is None or len(cid) != _CID_TEXT_LEN or not cid.startswith("bafyrei"):
        return cid
    try:
        raw = base64.b32decode(cid[1:].upper() + "======")
    except (binascii.Error, ValueError):
        return cid
    if len(raw) != 36 or raw[:4] != DAG_CBOR_SHA256 or cid_text(raw) != cid:
        return cid  # not in canonical form: kept as sent, so it reads back the same
    return raw[4:]


def cid_of(stored: str | bytes | None) -> str | None:
    """The text of a CID as ``pack_cid`` stored it."""
    if isinstance(stored, bytes):
        return cid_text(DAG_CBOR_SHA256 + stored)
    return stored


class BodyCompressor:
    """Writer side: compresses bodies, training a dictionary once enough are seen."""

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

    def compress(self, body: bytes) -> bytes:
        """Compress one record body (call inside the writer's transaction)."""
        if self._with_dict is None:
            self._samples.append(body)
            if len(self._samples) >= TRAIN_SAMPLES:
                self._train()
        if self._with_dict is not None:
            return bytes((self._dict_id,)) + self._with_dict.compress(body)
        return b"\x00" + self._plain.compress(body)

    def _train(self) -> None:
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
    """Reader side: decompresses bodies, loading dictionaries on first use."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._by_id: dict[int, zstandard.ZstdDecompressor] = {0: zstandard.ZstdDecompressor()}

    def decompress(self, data: bytes) -> bytes:
        """The record JSON of a stored body."""
        dict_id = data[0]
        decompressor = self._by_id.get(dict_id)
        if decompressor is None:
            row = self._conn.execute("SELECT v FROM meta WHERE k=?", (f"zdict:{dict_id}",)).fetchone()
            if row is None:
                raise ValueError(f"body compressed with unknown dictionary {dict_id}")
            decompressor = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(row[0]))
            self._by_id[dict_id] = decompressor
        return decompressor.decompress(data[1:])
