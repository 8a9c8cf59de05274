"""smalldp.repo_car: reading a whole repo from its getRepo CAR export (issue 12's backfill).

The oracle is a real export in the fixtures (corpus_repo.car, with indigo's listing of its
records and its commit); generated repos come from tests/repo_builder.py, whose MST layout is
checked against that real export first.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from dagcbor_encode import uvarint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from repo_builder import DID, REV, build_mst, build_repo, car_file, cid_of, generated_records, repo_of_cids

from smalldp.dagcbor import CID, cid_text, encode, read_varint
from smalldp.events_firehose import car_blocks
from smalldp.repo_car import (
    BadMstKey, CidMismatch, MalformedCar, MalformedCommit, MalformedMst, MissingBlock, RepoError,
    RepoRecord, TruncatedCar, open_repo,
)

ROOT = Path(__file__).resolve().parents[1]
LIKE = {"$type": "app.bsky.feed.like", "createdAt": "2026-07-04T12:34:56.000Z",
        "subject": {"cid": "bafyx", "uri": "at://did:plc:r2zybk6op3ymzpz6jhqpkoy5/app.bsky.feed.post/3mpsjbtci2c2o"}}


def cid_bytes(text: str) -> bytes:
    """A "b..." CID string back to bytes, by hand (base32, no padding)."""
    body = text[1:].upper()
    return base64.b32decode(body + "=" * (-len(body) % 8))


def read_all(source: bytes | Path) -> list[RepoRecord]:
    with open_repo(source) as repo:
        return list(repo.records())


def as_dict(records: list[RepoRecord]) -> dict[str, Any]:
    assert all(r.problem is None and r.json is not None for r in records), [r.problem for r in records]
    return {f"{r.collection}/{r.rkey}": orjson.loads(r.json or b"") for r in records}


# --- the real export ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(jetstream_dir: Path) -> Path:
    return jetstream_dir / "corpus_repo.car"


@pytest.fixture(scope="module")
def expected_rows(jetstream_dir: Path) -> list[tuple[str, str]]:
    text = (jetstream_dir / "corpus_car_expected_records.tsv").read_text()
    return [(path, cid) for path, cid in (line.split("\t") for line in text.splitlines())]


@pytest.fixture(scope="module")
def expected_commit(jetstream_dir: Path) -> dict[str, str]:
    text = (jetstream_dir / "corpus_car_expected_commit.txt").read_text()
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def test_the_real_export_lists_as_indigo_lists_it(corpus: Path, expected_rows: list[tuple[str, str]],
                                                  expected_commit: dict[str, str]) -> None:
    with open_repo(corpus) as repo:
        records = list(repo.records())
        commit = repo.commit
    # Same paths, same CIDs, same order: MST order is key order.
    assert [(f"{r.collection}/{r.rkey}", r.cid) for r in records] == expected_rows
    assert commit.did == expected_commit["DID"]
    assert commit.data == expected_commit["Data CID"]
    assert commit.rev == expected_commit["Revision"]
    assert commit.prev is None and expected_commit["Prev CID"] == "<nil>"
    assert commit.version == 3 == int(expected_commit["ATProto Repo Spec Version"])
    assert len(commit.sig) == 64


def test_the_real_records_are_jetstream_json_of_their_collection(corpus: Path) -> None:
    records = read_all(corpus)
    assert records and all(r.problem is None for r in records)
    # No exceptions in this export: every record's $type is its collection.
    assert all(orjson.loads(r.json or b"")["$type"] == r.collection for r in records)
    profile = orjson.loads(records[0].json or b"")
    assert records[0].collection == "app.bsky.actor.profile" and "$link" in profile["avatar"]["ref"]


def test_bytes_and_file_read_the_same(corpus: Path) -> None:
    assert read_all(corpus.read_bytes()) == read_all(corpus)


def test_the_builder_lays_out_the_mst_as_the_real_export(corpus: Path, expected_rows: list[tuple[str, str]],
                                                         expected_commit: dict[str, str]) -> None:
    repo = repo_of_cids({path: cid_bytes(cid) for path, cid in expected_rows})
    assert cid_text(repo.data_cid) == expected_commit["Data CID"]
    # Node for node: the real export's MST blocks are exactly the builder's.
    real = {c: bytes(d) for c, d in car_blocks(corpus.read_bytes()).items()}
    assert all(real[cid] == block for cid, block in repo.nodes.items())


# The interop vectors of atproto's MST (@atproto/repo's tests/mst.test.ts, "MST Interop Known
# Maps" and "Edge Cases"; indigo's mst/mst_interop_test.go): root CIDs of key sets, every value
# the CID below.  They predate fanout 4 and byte-string keys (the layout rules are the same), so
# the builder makes them in that first format; they cover what the 23 real records don't: a
# subtree two layers down (nodes with only a left subtree), a key two layers above the rest.
INTEROP_VALUE = "bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454"
_R = "com.example.record/"
INTEROP_VECTORS = [
    ("bafyreidaftbr35xhh4lzmv5jcoeufqjh75ohzmz6u56v7n2ippbtxdgqqe", ["asdf"]),
    ("bafyreid4g5smj6ukhrjasebt6myj7wmtm2eijouteoyueoqgoh6vm5jkae", [_R + "9ba1c7247ede"]),
    ("bafyreiecb33zh7r2sc3k2wthm6exwzfktof63kmajeildktqc25xj6qzx4",
     ["asdf", "88bfafc7", "2a92d355", "app.bsky.feed.post/454397e440ec", "app.bsky.feed.post/9adeb165882c"]),
    ("bafyreihuyj2vzb2vjw3yhxg6dy25achg5fmre6gg5m6fjtxn64bqju4dee",
     [_R + k for k in "40c73105b48f e99bf3ced34b 893e6c08b450 9cd8b6c0cc02 cbe72d33d12a a15e33ba0f6c".split()]),
    ("bafyreibmijjc63mekkjzl3v2pegngwke5u6cu66g75z6uw27v64bc6ahqi",
     [_R + k for k in "40c73105b48f e99bf3ced34b 893e6c08b450 9cd8b6c0cc02 cbe72d33d12a".split()]),
    ("bafyreiagt55jzvkenoa4yik77dhomagq2uj26ix4cijj7kd2py2u3s43ve",
     [_R + k for k in ("403e2aeebfdb 40c73105b48f 645787eb4316 7ca4e61d6fbc 893e6c08b450 9cd8b6c0cc02"
                       " cbe72d33d12a dbea731be795 e2ef555433f2 e99bf3ced34b f728ba61e4b6").split()]),
    ("bafyreiddrz7qbvfattp5dzzh4ldohsaobatsg7f5l6awxnmuydewq66qoa",
     [_R + k for k in ("403e2aeebfdb 40c73105b48f 645787eb4316 7ca4e61d6fbc 893e6c08b450 9ba1c7247ede"
                       " 9cd8b6c0cc02 cbe72d33d12a dbea731be795 e2ef555433f2 e99bf3ced34b f728ba61e4b6").split()]),
    ("bafyreicivoa3p3ttcebdn2zfkdzenkd2uk3gxxlaz43qvueeip6yysvq2m", [_R + "403e2aeebfdb", _R + "cbe72d33d12a"]),
    ("bafyreidwoqm6xlewxzhrx6ytbyhsazctlv72txtmnd4au6t53z2vpzn7wa",
     [_R + "403e2aeebfdb", _R + "cbe72d33d12a", _R + "9ba1c7247ede"]),
    ("bafyreiapru27ce4wdlylk5revtr3hewmxhmt3ek5f2ypioiivmdbv5igrm",
     [_R + "403e2aeebfdb", _R + "cbe72d33d12a", _R + "9ba1c7247ede", _R + "fae7a851fbeb"]),
]


@pytest.mark.parametrize("root, keys", INTEROP_VECTORS)
def test_the_builder_gives_the_interop_vectors(root: str, keys: list[str]) -> None:
    value = cid_bytes(INTEROP_VALUE)
    entries = {key.encode(): value for key in keys}
    assert cid_text(build_mst(entries, {}, layer_bits=4, text_keys=True)) == root


def test_the_empty_tree_is_the_known_empty_root() -> None:
    assert cid_text(build_mst({}, {})) == "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"


# --- generated repos ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_generated_repos_read_back(n: int) -> None:
    records = generated_records(n, seed=n)
    repo = build_repo(records)
    assert as_dict(read_all(repo.car())) == records
    assert as_dict(read_all(repo.car(seed=None))) == records  # block order doesn't matter


def test_a_20k_record_repo_reads_back_from_a_file(tmp_path: Path) -> None:
    records = generated_records(20_000, seed=7)
    repo = build_repo(records)
    path = tmp_path / "repo.car"
    path.write_bytes(repo.car(seed=3))
    with open_repo(path) as car:
        assert car.commit.did == DID and car.commit.rev == REV and car.commit.data == cid_text(repo.data_cid)
        got = list(car.records())
    assert [f"{r.collection}/{r.rkey}" for r in got] == sorted(records)
    assert as_dict(got) == records
    assert {f"{r.collection}/{r.rkey}": r.cid for r in got} == {p: cid_text(c) for p, c in repo.records.items()}


_NSID = st.sampled_from(["app.bsky.feed.like", "app.bsky.feed.post", "a.b", "com.example.x-y", "A.b.C"])
_RKEY = st.text("abcdefghijklmnopqrstuvwxyz234567ABCZ0189.-_:~", min_size=1, max_size=40).filter(
    lambda k: k not in (".", ".."))


@settings(max_examples=150, deadline=None)
@given(paths=st.sets(st.tuples(_NSID, _RKEY).map("/".join), max_size=300))
def test_any_key_set_reads_back(paths: set[str]) -> None:
    records = {path: {"$type": path.partition("/")[0], "n": i} for i, path in enumerate(sorted(paths))}
    repo = build_repo(records)
    got = read_all(repo.car(seed=len(paths)))
    assert [f"{r.collection}/{r.rkey}" for r in got] == sorted(paths, key=str.encode)
    assert as_dict(got) == records


def test_identical_records_share_a_block() -> None:
    records = {f"app.bsky.feed.like/3mptbyplj5d2{c}": LIKE for c in "abcdefg"}
    repo = build_repo(records)
    assert len(repo.blocks) == 1
    assert as_dict(read_all(repo.car())) == records


def test_a_deep_chain_of_nodes_needs_no_recursion() -> None:
    # 3000 nodes of only a left subtree above one entry: deeper than Python's stack.
    leaf = encode({"e": [{"k": b"app.bsky.feed.like/3mptbyplj5d2a", "p": 0, "t": None,
                          "v": CID(cid_of(encode(LIKE)))}], "l": None})
    blocks = [(cid_of(leaf), leaf), (cid_of(encode(LIKE)), encode(LIKE))]
    top = cid_of(leaf)
    for _ in range(3000):
        node = encode({"e": [], "l": CID(top)})
        top = cid_of(node)
        blocks.append((top, node))
    got = read_all(car_of_mst(top, blocks))
    assert [r.rkey for r in got] == ["3mptbyplj5d2a"]


# --- what a reader must refuse --------------------------------------------------------------


def commit_block(mst_root: bytes, **changes: Any) -> bytes:
    commit = {"did": DID, "version": 3, "data": CID(mst_root), "rev": REV, "prev": None, "sig": bytes(64)}
    commit.update(changes)
    return encode(commit)


def car_of_mst(root: bytes, blocks: list[tuple[bytes, bytes]], **changes: Any) -> bytes:
    commit = commit_block(root, **changes)
    return car_file([cid_of(commit)], [(cid_of(commit), commit), *blocks])


def small_repo() -> Any:
    return build_repo({f"app.bsky.feed.like/3mptbyplj5d{i:02d}": {**LIKE, "n": i} for i in range(40)})


def test_a_flipped_byte_in_any_block_is_a_cid_mismatch() -> None:
    repo = small_repo()
    car = repo.car()
    for cid, block in [*repo.nodes.items(), *repo.blocks.items(), (repo.commit_cid, repo.commit_block)]:
        section = car.index(cid + block) - len(uvarint(len(cid) + len(block)))
        at = section + len(uvarint(len(cid) + len(block))) + len(cid) + len(block) // 2
        bad = car[:at] + bytes([car[at] ^ 1]) + car[at + 1:]
        with pytest.raises(CidMismatch, match=f"block at byte {section}: .*{cid_text(cid)}"):
            open_repo(bad)


def test_every_truncation_is_reported() -> None:
    repo = build_repo({"app.bsky.feed.like/3mptbyplj5d2a": LIKE, "app.bsky.feed.post/3mptbyplj5d2b": LIKE})
    car = repo.car()
    boundaries = {len(car)}
    pos = 0
    while pos < len(car):  # where each section ends (the header is one)
        size, pos = read_varint(car, pos)
        pos += size
        boundaries.add(pos)
    for cut in range(len(car)):
        if cut in boundaries:
            continue  # a whole number of sections: blocks missing, not a truncated file
        with pytest.raises(TruncatedCar, match="the file ends"):
            open_repo(car[:cut])


def test_a_truncated_file_is_reported(tmp_path: Path) -> None:
    car = build_repo(generated_records(3000)).car()
    path = tmp_path / "cut.car"
    path.write_bytes(car[:len(car) - 100])
    with pytest.raises(TruncatedCar, match="the file ends"):
        open_repo(path)


def test_a_missing_node_fails_the_walk() -> None:
    repo = small_repo()
    assert len(repo.nodes) > 1
    for cid in repo.nodes:
        with open_repo(repo.car(drop=frozenset([cid]))) as car:
            with pytest.raises(MissingBlock, match=f"MST node {cid_text(cid)} is not in the CAR"):
                list(car.records())


def test_a_missing_commit_fails_opening() -> None:
    repo = small_repo()
    with pytest.raises(MissingBlock, match="commit"):
        open_repo(repo.car(drop=frozenset([repo.commit_cid])))


def test_a_missing_record_is_reported_for_that_record_only() -> None:
    repo = small_repo()
    path, cid = sorted(repo.records.items())[5]
    got = read_all(repo.car(drop=frozenset([cid])))
    assert len(got) == 40
    bad = [r for r in got if r.problem is not None]
    assert [(f"{r.collection}/{r.rkey}", r.cid, r.json) for r in bad] == [(path, cid_text(cid), None)]
    assert "absent from the CAR" in (bad[0].problem or "")


def test_records_that_are_not_atproto_data_are_reported_one_by_one() -> None:
    records = {"x.example.thing/a": {"n": 1.5}, "x.example.thing/b": [1, 2], "x.example.thing/c": {"$type": "x"}}
    got = read_all(build_repo(records).car())
    assert [r.rkey for r in got] == ["a", "b", "c"]
    assert "float" in (got[0].problem or "") and "not a map" in (got[1].problem or "") and got[2].problem is None


@pytest.mark.parametrize("path", ["nope", "app.bsky.feed.like/", "/3mptbyplj5d2a", "not_an_nsid/3mptbyplj5d2a",
                                  "app.bsky.feed.like/bad key", "app.bsky.feed.like/a/b", "app.bsky.feed.like/é",
                                  "app.bsky.feed.like/.."])
def test_a_key_that_is_not_collection_rkey(path: str) -> None:
    records = {path: LIKE, "app.bsky.feed.post/3mptbyplj5d2a": LIKE}
    with open_repo(build_repo(records).car()) as car, pytest.raises(BadMstKey, match="is not collection/rkey"):
        list(car.records())


def entry(key: bytes, value: bytes, p: int = 0, t: bytes | None = None) -> dict[str, Any]:
    return {"k": key, "p": p, "t": CID(t) if t else None, "v": CID(value)}


def test_keys_out_of_order_in_a_node() -> None:
    rec = encode(LIKE)
    node = encode({"e": [entry(b"app.bsky.feed.post/b", cid_of(rec)), entry(b"app.bsky.feed.like/a", cid_of(rec))],
                   "l": None})
    with open_repo(car_of_mst(cid_of(node), [(cid_of(node), node), (cid_of(rec), rec)])) as car:
        with pytest.raises(BadMstKey, match="keys must strictly increase"):
            list(car.records())


def test_keys_out_of_order_across_nodes_and_repeated() -> None:
    rec = encode(LIKE)
    for left_key in (b"app.bsky.feed.like/z", b"app.bsky.feed.like/m"):  # after, equal to the entry
        left = encode({"e": [entry(left_key, cid_of(rec))], "l": None})
        root = encode({"e": [entry(b"app.bsky.feed.like/m", cid_of(rec))], "l": CID(cid_of(left))})
        blocks = [(cid_of(root), root), (cid_of(left), left), (cid_of(rec), rec)]
        with open_repo(car_of_mst(cid_of(root), blocks)) as car:
            records = car.records()
            assert next(records).rkey == left_key.decode().partition("/")[2]
            with pytest.raises(BadMstKey, match="strictly increase"):
                next(records)


@pytest.mark.parametrize("node, why", [
    ({"e": "x", "l": None}, "is not {e"),
    ({"e": [], "l": None, "x": 1}, "is not {e"),
    ({"e": [{"k": b"a.b/c", "p": 0, "t": None}], "l": None}, "entry 0: not"),
    ({"e": [{"k": "a.b/c", "p": 0, "t": None, "v": None}], "l": None}, "entry 0: p int"),
    ({"e": [{"k": b"a.b/c", "p": 1, "t": None, "v": CID(cid_of(b"\xa0"))}], "l": None}, "prefix 1"),
    ({"e": [], "l": b"not a cid"}, "l is neither"),
])
def test_malformed_nodes(node: dict[str, Any], why: str) -> None:
    block = encode(node)
    root = encode({"e": [], "l": CID(cid_of(block))})  # node is not the root: an empty one is wrong too
    with open_repo(car_of_mst(cid_of(root), [(cid_of(root), root), (cid_of(block), block)])) as car:
        with pytest.raises(MalformedMst, match=why):
            list(car.records())


def test_an_empty_node_below_the_root() -> None:
    empty = encode({"e": [], "l": None})
    root = encode({"e": [], "l": CID(cid_of(empty))})
    with open_repo(car_of_mst(cid_of(root), [(cid_of(root), root), (cid_of(empty), empty)])) as car:
        with pytest.raises(MalformedMst, match="is empty"):
            list(car.records())


@pytest.mark.parametrize("changes, why", [
    ({"version": 2}, "version 2"), ({"version": True}, "version True"), ({"did": "nope"}, "invalid did"),
    ({"rev": "not-a-tid"}, "invalid rev"), ({"sig": "text"}, "no sig"), ({"prev": "x"}, "prev"),
    ({"data": b"x"}, "data"),
])
def test_malformed_commits(changes: dict[str, Any], why: str) -> None:
    empty = encode({"e": [], "l": None})
    with pytest.raises(MalformedCommit, match=why):
        open_repo(car_of_mst(cid_of(empty), [(cid_of(empty), empty)], **changes))


def test_malformed_cars() -> None:
    repo = small_repo()
    car = repo.car()
    header = encode({"roots": [CID(repo.commit_cid)], "version": 1})
    rest = car[len(uvarint(len(header))) + len(header):]

    def with_header(value: Any) -> bytes:
        raw = encode(value)
        return uvarint(len(raw)) + raw + rest

    cases: list[tuple[bytes, type[RepoError], str]] = [
        (b"", TruncatedCar, "header"),
        (b"\x05ab", TruncatedCar, "inside the 5-byte CAR header"),
        (b"\x00", MalformedCar, "header of 0 bytes"),
        (b"\x02\xff\xff" + rest, MalformedCar, "not DAG-CBOR"),
        (with_header({"roots": [CID(repo.commit_cid)], "version": 2}), MalformedCar, "version: 1"),
        (with_header({"roots": [], "version": 1}), MalformedCar, "0 roots"),
        (with_header({"roots": [CID(repo.commit_cid)] * 2, "version": 1}), MalformedCar, "2 roots"),
        (with_header([1]), MalformedCar, "version: 1"),
    ]
    # A block under a CID other than a sha2-256 CIDv1 of dag-cbor or raw.
    sha512 = b"\x01\x71\x13\x40" + hashlib.sha512(b"\xa0").digest()
    cidv0 = b"\x12\x20" + hashlib.sha256(b"\xa0").digest()
    for odd in (sha512, cidv0):
        cases.append((car + uvarint(len(odd) + 1) + odd + b"\xa0", MalformedCar, "not a sha2-256 CIDv1"))
    cases.append((car + b"\x10\x07\x07", MalformedCar, "section at byte"))  # CID version 7
    for data, error, why in cases:
        with pytest.raises(error, match=why):
            open_repo(data)


def test_a_block_bigger_than_the_limit() -> None:
    car = small_repo().car()
    with pytest.raises(MalformedCar, match="more than 100"):
        open_repo(car, max_block=100)
    open_repo(car, max_block=1000).close()


def test_a_raw_block_with_the_digest_of_a_node_can_stand_neither_for_it_nor_in_its_way() -> None:
    # Same digest, other codec: the index's 8-byte digest keys collide, so this is the
    # path two colliding CIDs take.
    repo = small_repo()
    raw = {b"\x01\x55" + cid[2:]: block for cid, block in repo.nodes.items()}
    records = repo.car()
    commit_section_end = records.index(repo.commit_cid + repo.commit_block) + len(repo.commit_cid + repo.commit_block)
    raw_sections = b"".join(uvarint(len(c) + len(d)) + c + d for c, d in raw.items())
    before = records[:commit_section_end] + raw_sections + records[commit_section_end:]
    after = records + raw_sections
    for car in (before, after):
        assert as_dict(read_all(car)) == as_dict(read_all(records))
    only_raw = car_file([repo.commit_cid], [(repo.commit_cid, repo.commit_block), *raw.items(),
                                            *repo.blocks.items()])
    with open_repo(only_raw) as car, pytest.raises(MissingBlock, match="MST node"):
        list(car.records())


def test_a_record_bigger_than_the_read_chunk(tmp_path: Path) -> None:
    # The indexing pass reads the file 1 MiB at a time: a block longer than that is read whole.
    records = {"x.example.big/a": {"text": "x" * (3 << 20)}, "x.example.big/b": {"n": 1}}
    path = tmp_path / "big.car"
    path.write_bytes(build_repo(records).car())
    assert as_dict(read_all(path)) == records
    with pytest.raises(MalformedCar, match="more than"):
        open_repo(path, max_block=1 << 20)


def test_a_closed_file_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "r.car"
    path.write_bytes(small_repo().car())
    repo = open_repo(path)
    records = repo.records()
    repo.close()
    with pytest.raises(ValueError, match="closed"):
        next(records)


def test_the_benchmark_runs(tmp_path: Path, jetstream_dir: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_repo_car.py"), "--records", "300",
                          "--reps", "1", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, check=True,
                         env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    result = json.loads(out.stdout)
    assert result["corpus"]["records"] == 23 and result["generated"]["records"] == 300
    assert result["generated"]["records_per_s"]["median"] > 0
