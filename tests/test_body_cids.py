"""Record CIDs in the body table: the usual DAG-CBOR sha2-256 CIDv1 ("bafyrei...") is stored
as its 32-byte digest, anything else as the text it came as; either way the text reads back
exactly (store/bodies.py pack_cid / cid_of)."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smalldp.events import decode_event
from smalldp.store.bodies import cid_of, pack_cid
from smalldp.store.dataplane import DataPlaneReader
from smalldp.store.reader import Reader
from smalldp.store.writer import Writer

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "jetstream" / "corpus_expected_v1.jsonl"


def cid_text(version_codec_hash: bytes, digest: bytes) -> str:
    """The reference: multibase "b" + lowercase unpadded RFC 4648 base32 (Python's codec)."""
    return "b" + base64.b32encode(version_codec_hash + digest).decode().lower().rstrip("=")


@given(st.binary(min_size=32, max_size=32))
def test_a_dag_cbor_sha256_cid_is_stored_as_its_digest(digest: bytes) -> None:
    text = cid_text(b"\x01\x71\x12\x20", digest)
    assert text.startswith("bafyrei") and len(text) == 59
    assert pack_cid(text) == digest
    assert cid_of(digest) == text


@pytest.mark.parametrize("text", [
    cid_text(b"\x01\x55\x12\x20", bytes(range(32))),  # raw codec (a blob): "bafkrei..."
    cid_text(b"\x01\x71\x13\x40", bytes(64)),  # sha2-512
    "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",  # CIDv0
    cid_text(b"\x01\x71\x12\x20", bytes(range(32))).upper(),  # not canonical: upper case
    "bafyrei" + "1" * 52,  # not base32 ('1' is not a letter of it)
    cid_text(b"\x01\x71\x12\x20", bytes(range(32)))[:-1] + "b",  # non-zero padding bits
    "",
    None,
])
def test_any_other_cid_is_kept_as_text(text: str | None) -> None:
    assert pack_cid(text) == text
    assert cid_of(pack_cid(text)) == text


def corpus_posts() -> list[str]:
    if not CORPUS.is_file():
        pytest.skip("shared fixtures absent")
    return [line for line in CORPUS.read_text().splitlines()
            if '"collection":"app.bsky.feed.post"' in line and '"operation":"create"' in line]


def test_the_store_gives_back_every_cid_as_ingested(tmp_path: Path) -> None:
    """Real posts (their real CIDs), and one whose CID is a raw-codec one: stored as a
    32-byte blob and as text respectively, read back equal by every reader path."""
    lines = corpus_posts()
    assert len(lines) >= 5
    odd = json.loads(lines[0])
    odd["commit"]["rkey"] = "3aaaaaaaaaaa2"
    odd["commit"]["cid"] = cid_text(b"\x01\x55\x12\x20", hashlib.sha256(b"odd").digest())
    lines.append(json.dumps(odd))
    want = {}
    for line in lines:
        ev = json.loads(line)
        c = ev["commit"]
        want[f"at://{ev['did']}/{c['collection']}/{c['rkey']}"] = c["cid"]
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    writer.apply([decode_event(line) for line in lines], cursor=1)
    writer.close()

    conn = sqlite3.connect(path)
    kinds = sorted(conn.execute("SELECT typeof(cid), length(cid), count(*) FROM body GROUP BY 1, 2").fetchall())
    conn.close()
    assert kinds == [("blob", 32, len(lines) - 1), ("text", 59, 1)]
    reader = Reader(path)
    dataplane = DataPlaneReader(path)
    try:
        for uri, cid in want.items():
            assert reader.record(uri)["cid"] == cid
        got = dataplane.records(list(want))
        assert [r["cid"] for r in got] == list(want.values())
    finally:
        reader.close()
        dataplane.close()
