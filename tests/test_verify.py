"""smalldp.verify: the real relay frames of the corpus verify against their accounts' DID
documents (plc.directory's, captured with them); every change to one of them that a relay
could make (signature, signed data, op CIDs, repo, rev, blocks, a high-S twin of the
signature, another account's key) fails with its own error kind; commits signed here with
fresh secp256k1 and P-256 keys verify, and chain by prevData; the HTTP resolver against a
real aiohttp server on 127.0.0.1.

Oracles independent of the module: the signatures themselves (made by the accounts' PDSes or
here with ``cryptography``), base58 and multicodec encoding written here, the curve orders
from SEC 2 written again here.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zstandard
from aiohttp import ClientSession, web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from repo_builder import build_mst, car_file, cid_of, generated_records
from test_events_firehose import read_frames

from smalldp.dagcbor import CID, decode, decode_prefix, encode
from smalldp.events_firehose import car_blocks, decode_frame_firehose, find_block
from smalldp.tid import tid_to_int
from smalldp.verify import (
    ChainBreak, CommitVerifier, DictResolver, HttpDidResolver, VerifyError, check_commit,
    parse_multikey, signing_key, verify_commit_block,
)

T = TypeVar("T")
N_K1 = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # SEC 2, secp256k1
N_P256 = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # SEC 2, secp256r1
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro
    return asyncio.run(main())


def b58(data: bytes) -> str:
    value = int.from_bytes(data, "big")
    out = ""
    while value:
        value, digit = divmod(value, 58)
        out = B58[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def car(root: CID, blocks: dict[bytes, bytes]) -> bytes:
    return car_file([root.cid_bytes], list(blocks.items()))


def split(frame: bytes) -> tuple[Any, dict[str, Any]]:
    header, at = decode_prefix(frame)
    return header, decode(frame[at:])


def join(header: Any, body: dict[str, Any]) -> bytes:
    return encode(header) + encode(body)


def verify_body(verifier: CommitVerifier, body: dict[str, Any]) -> bool:
    return run(verifier.verify(join({"op": 1, "t": "#commit"}, body)))


def error_of(verifier: CommitVerifier, body: dict[str, Any]) -> VerifyError:
    with pytest.raises(VerifyError) as info:
        verify_body(verifier, body)
    return info.value


# --- the real corpus -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def read_docs(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        docs: dict[str, Any] = json.loads(zstandard.ZstdDecompressor().stream_reader(f).read())
    return docs


@pytest.fixture(scope="module")
def docs(jetstream_dir: Path) -> dict[str, Any]:
    return read_docs(jetstream_dir / "corpus_did_docs.json.zst")


@pytest.fixture(scope="module")
def commits(jetstream_dir: Path) -> list[dict[str, Any]]:
    """The decoded bodies of the corpus's #commit frames."""
    frames = read_frames(jetstream_dir / "corpus_frames.bin.zst")
    return [body for header, body in map(split, frames) if header["t"] == "#commit"]


def test_every_real_commit_verifies(jetstream_dir: Path, docs: dict[str, Any]) -> None:
    frames = read_frames(jetstream_dir / "corpus_frames.bin.zst")
    verifier = CommitVerifier(DictResolver(docs))
    results = [run(verifier.verify(frame)) for frame in frames]
    assert results.count(True) == 148 and results.count(False) == 2  # 148 commits, an identity, an account
    assert [split(f)[0]["t"] for f, ok in zip(frames, results) if not ok] == ["#identity", "#account"]
    assert len(verifier._keys) == 148 and len(verifier._last) == 148  # one key and one chain per repo
    # Every action is covered: creates, updates and deletes (a delete's path absent from the tree).
    actions = {op["action"] for f in frames for op in split(f)[1].get("ops", ())}
    assert actions == {"create", "update", "delete"}


def test_real_keys_are_compressed_secp256k1(docs: dict[str, Any]) -> None:
    for did, doc in docs.items():
        key = signing_key(doc)
        assert key.curve == "secp256k1"
        point = key.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
        # The multibase is 'z' + base58(0xe7 0x01 + the compressed point): encoded here again.
        assert "z" + b58(b"\xe7\x01" + point) == key.multibase, did


def real_commit(commits: list[dict[str, Any]], action: str = "create") -> dict[str, Any]:
    return next(dict(c) for c in commits if [op["action"] for op in c["ops"]] == [action])


def resign(body: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """``body`` with its commit block changed by ``change`` (the signature left as it is, or
    changed by ``change``), the block re-encoded and the frame pointing to it."""
    blocks = {k: bytes(v) for k, v in car_blocks(body["blocks"]).items()}
    commit = decode(blocks.pop(body["commit"].cid_bytes))
    change(commit)
    block = encode(commit)
    cid = CID(cid_of(block))
    blocks[cid.cid_bytes] = block
    return {**body, "commit": cid, "blocks": car(cid, blocks)}


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_changed_real_commits_fail_each_with_its_kind(commits: list[dict[str, Any]], docs: dict[str, Any]) -> None:
    body = real_commit(commits)
    verifier = CommitVerifier(DictResolver(docs))
    assert verify_body(CommitVerifier(DictResolver(docs)), body)  # the unchanged frame, re-encoded, verifies

    def set_sig(sig: bytes) -> Callable[[dict[str, Any]], None]:
        return lambda commit: commit.__setitem__("sig", sig)

    sig = decode(bytes(find_block(body["blocks"], body["commit"].cid_bytes)))["sig"]  # type: ignore[arg-type]
    for bit in (0, 255, 300, 511):  # in r and in s
        assert error_of(verifier, resign(body, set_sig(flip(sig, bit)))).kind == "bad_signature"

    # The signed tree root changed: the signature no longer covers the commit.
    def flip_data(commit: dict[str, Any]) -> None:
        commit["data"] = CID(flip(commit["data"].cid_bytes, 100))
    assert error_of(verifier, resign(body, flip_data)).kind == "bad_signature"

    # An op naming another record than the signed tree holds at its path.
    op = body["ops"][0]
    bad_op = {**op, "cid": CID(flip(op["cid"].cid_bytes, 200))}
    error = error_of(verifier, {**body, "ops": [bad_op]})
    assert error.kind == "op_not_signed" and op["path"] in str(error)
    # A create turned into a delete: the path is in the tree.
    assert error_of(verifier, {**body, "ops": [{**op, "action": "delete", "cid": None}]}).kind == "op_not_signed"
    # An op the commit does not have at all.
    ghost = {**op, "path": op["path"][:-1] + ("a" if op["path"][-1] != "a" else "b")}
    assert error_of(verifier, {**body, "ops": [ghost]}).kind == "op_not_signed"
    for longer in (op["path"] + "a", op["path"] + "/"):  # a key the tree's key is a prefix of
        assert error_of(verifier, {**body, "ops": [{**op, "path": longer}]}).kind == "op_not_signed"

    # The high-S twin of the signature: valid ECDSA, refused by atproto's low-S rule.
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    assert s <= N_K1 // 2
    twin = r.to_bytes(32, "big") + (N_K1 - s).to_bytes(32, "big")
    key = signing_key(docs[body["repo"]])
    unsigned = encode({k: v for k, v in decode(bytes(find_block(body["blocks"], body["commit"].cid_bytes)))  # type: ignore[arg-type]
                       .items() if k != "sig"})
    key.public_key().verify(encode_dss_signature(r, N_K1 - s), unsigned, ec.ECDSA(hashes.SHA256()))  # maths: valid
    assert error_of(verifier, resign(body, set_sig(twin))).kind == "high_s"

    # Another account's key.
    other = next(did for did in docs if did != body["repo"])
    wrong = CommitVerifier(DictResolver({body["repo"]: docs[other]}))
    assert error_of(wrong, body).kind == "bad_signature"
    # The frame says another repo than the commit (a key that would resolve for it).
    error = error_of(verifier, {**body, "repo": other})
    assert error.kind == "did_mismatch" and body["repo"] in str(error)
    assert error_of(verifier, {**body, "rev": "3mptbypluud2b"}).kind == "rev_mismatch"
    # The commit block missing, or an MST node on the op's path missing.
    blocks = {k: bytes(v) for k, v in car_blocks(body["blocks"]).items()}
    del blocks[body["commit"].cid_bytes]
    assert error_of(verifier, {**body, "blocks": car(body["commit"], blocks)}).kind == "no_commit_block"
    blocks = {k: bytes(v) for k, v in car_blocks(body["blocks"]).items()}
    root = decode(blocks[body["commit"].cid_bytes])["data"].cid_bytes
    del blocks[root]
    assert error_of(verifier, {**body, "blocks": car(body["commit"], blocks)}).kind == "incomplete_proof"
    assert error_of(CommitVerifier(DictResolver({})), body).kind == "unresolved"


def test_real_deletes_and_updates_verify_and_their_changes_fail(commits: list[dict[str, Any]],
                                                                 docs: dict[str, Any]) -> None:
    verifier = CommitVerifier(DictResolver(docs))
    delete = real_commit(commits, "delete")
    assert verify_body(verifier, delete)
    op = delete["ops"][0]
    # A delete claimed as a create of some record: the signed tree has nothing at the path.
    fake = {**op, "action": "create", "cid": CID(b"\x01\x71\x12\x20" + bytes(32))}
    assert error_of(verifier, {**delete, "ops": [fake]}).kind == "op_not_signed"
    update = real_commit(commits, "update")
    assert verify_body(verifier, update)


# --- commits signed here -------------------------------------------------------------------------


class Account:
    """A repo with a fresh key: makes signed #commit bodies over a one-node MST."""

    def __init__(self, curve: ec.EllipticCurve, did: str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa") -> None:
        self.did = did
        self.rekey(curve)

    def rekey(self, curve: ec.EllipticCurve) -> None:
        self.private = ec.generate_private_key(curve)
        self.n = N_K1 if isinstance(curve, ec.SECP256K1) else N_P256
        codec = b"\xe7\x01" if isinstance(curve, ec.SECP256K1) else b"\x80\x24"
        point = self.private.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
        self.multibase = "z" + b58(codec + point)

    def doc(self) -> dict[str, Any]:
        return {"id": self.did, "verificationMethod": [
            {"id": f"{self.did}#atproto", "type": "Multikey", "controller": self.did,
             "publicKeyMultibase": self.multibase}]}

    def sign(self, message: bytes) -> bytes:
        r, s = decode_dss_signature(self.private.sign(message, ec.ECDSA(hashes.SHA256())))
        s = min(s, self.n - s)  # low-S, as atproto signers normalise
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def commit(self, rev: str, prev_data: CID | None, seed: int = 0) -> tuple[dict[str, Any], CID]:
        """A commit of a repo of 40 generated records (an MST of several levels, built as
        atproto lays it out), whose ops create the first record and delete a path not in it."""
        records = {path: encode(record) for path, record in generated_records(40, seed).items()}
        nodes: dict[bytes, bytes] = {}
        data = CID(build_mst({path.encode(): cid_of(block) for path, block in records.items()}, nodes))
        unsigned = {"did": self.did, "version": 3, "data": data, "rev": rev, "prev": None}
        block = encode({**unsigned, "sig": self.sign(encode(unsigned))})
        cid = CID(cid_of(block))
        path = next(iter(records))
        blocks = {cid.cid_bytes: block, **nodes, cid_of(records[path]): records[path]}
        body = {"seq": 1, "repo": self.did, "rev": rev, "since": None, "time": "2026-07-04T14:38:07.517Z",
                "commit": cid, "blocks": car(cid, blocks), "blobs": [], "rebase": False, "tooBig": False,
                "ops": [{"action": "create", "path": path, "cid": CID(cid_of(records[path]))},
                        {"action": "delete", "path": "app.bsky.feed.like/3mptbyplj5d2a", "cid": None}],
                "prevData": prev_data}
        return body, data


@pytest.mark.parametrize("curve", [ec.SECP256K1(), ec.SECP256R1()], ids=["secp256k1", "p256"])
def test_commits_signed_here_verify(curve: ec.EllipticCurve) -> None:
    account = Account(curve)
    key = signing_key(account.doc())
    assert key.curve == ("secp256k1" if isinstance(curve, ec.SECP256K1) else "p256")
    assert key.public_key().public_numbers() == account.private.public_key().public_numbers()
    body, data = account.commit("3mptbypluud2a", None)
    assert check_commit(body, key) == (account.did, data)
    assert verify_body(CommitVerifier(DictResolver({account.did: account.doc()})), body)
    # The frame decodes to a PutRecord too: it is a real frame, not only one the verifier reads.
    ops = decode_frame_firehose(join({"op": 1, "t": "#commit"}, body)).ops  # type: ignore[union-attr]
    rev = tid_to_int("3mptbypluud2a")
    assert [(type(op).__name__, op.did, op.rev) for op in ops] == [  # type: ignore[union-attr]
        ("PutRecord", account.did, rev), ("DeleteRecord", account.did, rev)]
    assert len(car_blocks(body["blocks"])) > 4  # the commit, a record, and an MST of several nodes
    # The commit block alone, as a backfill checks a getRepo CAR's root.
    block = bytes(car_blocks(body["blocks"])[body["commit"].cid_bytes])
    assert verify_commit_block(block, key, account.did)["data"] == data
    with pytest.raises(VerifyError) as info:
        verify_commit_block(block, key, "did:plc:cccccccccccccccccccccccc")
    assert info.value.kind == "did_mismatch"
    # Another key of the same curve does not verify it.
    other = Account(curve)
    assert error_of(CommitVerifier(DictResolver({account.did: other.doc()})), body).kind == "bad_signature"


def test_prev_data_chain() -> None:
    account = Account(ec.SECP256K1())
    verifier = CommitVerifier(DictResolver({account.did: account.doc()}))
    first, data1 = account.commit("3mptbypluud2a", None, seed=1)
    second, data2 = account.commit("3mptbypluud2c", data1, seed=2)
    assert verify_body(verifier, first) and verify_body(verifier, second)
    assert verifier._last[account.did] == ("3mptbypluud2c", data2.cid_bytes)
    broken, data3 = account.commit("3mptbypluud2e", data1, seed=3)  # data1, not data2: one missed
    with pytest.raises(ChainBreak) as info:
        verify_body(verifier, broken)
    assert info.value.kind == "chain_break" and str(data1) in str(info.value) and str(data2) in str(info.value)
    assert verifier._last[account.did] == ("3mptbypluud2e", data3.cid_bytes)  # the chain goes on from it
    assert verify_body(verifier, second)  # a replay (older rev): no chain check
    assert verifier._last[account.did][0] == "3mptbypluud2e"
    # A #sync resets the repo: a commit after it starts a new chain.
    run(verifier.verify(join({"op": 1, "t": "#sync"}, {"seq": 2, "did": account.did, "rev": "3mptbypluud2f",
                                                          "time": "2026-07-04T14:38:08.000Z", "blocks": b""})))
    after, _ = account.commit("3mptbypluud2g", data1, seed=4)
    assert verify_body(verifier, after)
    bad_prev = {**after, "prevData": b"\x01"}
    assert error_of(verifier, bad_prev).kind == "malformed"


def test_rotated_key_is_resolved_again() -> None:
    account = Account(ec.SECP256K1())
    docs = {account.did: account.doc()}
    verifier = CommitVerifier(DictResolver(docs))
    old, _ = account.commit("3mptbypluud2a", None)
    assert verify_body(verifier, old)
    account.rekey(ec.SECP256R1())  # the account moves to a P-256 key (its PDS rotated it)
    docs[account.did] = account.doc()
    new, _ = account.commit("3mptbypluud2c", None)
    assert verify_body(verifier, new)  # the cached secp256k1 key failed, the fresh one verified
    assert verifier._keys[account.did].curve == "p256"
    # An #identity frame drops the cached key.
    run(verifier.verify(join({"op": 1, "t": "#identity"}, {"seq": 3, "did": account.did,
                                                              "time": "2026-07-04T14:38:08.000Z"})))
    assert account.did not in verifier._keys
    # A cached key that fails while the DID no longer resolves: the signature's failure is the error.
    assert verify_body(verifier, new)
    del docs[account.did]
    account.rekey(ec.SECP256K1())
    forged, _ = account.commit("3mptbypluud2e", None)
    assert error_of(verifier, forged).kind == "bad_signature"


class SlowResolver(DictResolver):
    """A DictResolver that takes its time and counts calls and calls in flight."""

    def __init__(self, docs: dict[str, Any]) -> None:
        super().__init__(docs)
        self.calls: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def resolve(self, did: str) -> Any:
        self.calls.append(did)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        return await super().resolve(did)


def test_prefetch_and_failed_resolutions() -> None:
    accounts = [Account(ec.SECP256K1(), did=f"did:plc:{i:024d}") for i in range(10)]
    resolver = SlowResolver({a.did: a.doc() for a in accounts[:8]})  # the last two unknown
    verifier = CommitVerifier(resolver, retry_s=3600)
    run(verifier.prefetch([a.did for a in accounts] * 2, concurrency=4))
    assert sorted(resolver.calls) == sorted(a.did for a in accounts)  # once each
    assert resolver.most_in_flight == 4
    assert sorted(verifier._keys) == sorted(a.did for a in accounts[:8])
    body, _ = accounts[0].commit("3mptbypluud2a", None)
    assert verify_body(verifier, body) and len(resolver.calls) == 10  # from the cache
    unknown, _ = accounts[9].commit("3mptbypluud2a", None)
    error = error_of(verifier, unknown)
    assert error.kind == "unresolved" and "asked again 3600 s after" in str(error)
    assert len(resolver.calls) == 10  # the failure was remembered: not asked again
    verifier.retry_s = 0
    resolver.docs = {**resolver.docs, accounts[9].did: accounts[9].doc()}
    assert verify_body(verifier, unknown) and len(resolver.calls) == 11
    small = CommitVerifier(DictResolver({a.did: a.doc() for a in accounts}), max_keys=3)
    run(small.prefetch(a.did for a in accounts))
    assert len(small._keys) == 3  # bounded: the oldest dropped


def test_key_parsing_errors() -> None:
    point = Account(ec.SECP256R1()).private.public_key()
    compressed = point.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    uncompressed = point.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    assert parse_multikey("z" + b58(b"\x80\x24" + compressed)).curve == "p256"
    cases = {
        "z" + b58(b"\xed\x01" + bytes(32)): "neither secp256k1-pub",  # an ed25519 key
        "z" + b58(b"\x80\x24" + uncompressed): "not a 33-byte compressed point",
        "z" + b58(b"\xe7\x01" + b"\x02" + b"\xff" * 32): "not a point of the curve",
        "u" + b58(b"\x80\x24" + compressed): "not base58btc",
        "z0OIl": "not a base58btc character",
        "z1" + b58(b"\x80\x24" + compressed): "neither secp256k1-pub",  # a leading '1' is a zero byte
    }
    for multibase, message in cases.items():
        with pytest.raises(VerifyError, match=message) as info:
            parse_multikey(multibase)
        assert info.value.kind == "bad_key"
    # A 2019 verification method: the bare point, the curve from the type.
    legacy = {"verificationMethod": [{"id": "#atproto", "type": "EcdsaSecp256r1VerificationKey2019",
                                      "publicKeyMultibase": "z" + b58(uncompressed)}]}
    assert signing_key(legacy).public_key().public_numbers() == point.public_numbers()
    with pytest.raises(VerifyError, match="unknown type 'Ed25519VerificationKey2020'"):
        signing_key({"verificationMethod": [{"id": "did:web:x#atproto", "type": "Ed25519VerificationKey2020",
                                             "publicKeyMultibase": "z6Mk"}]})
    with pytest.raises(VerifyError, match="no #atproto") as info:
        signing_key({"id": "did:web:x", "verificationMethod": [{"id": "#other", "type": "Multikey"}]})
    assert info.value.kind == "no_key"


def test_signature_shape_checks() -> None:
    account = Account(ec.SECP256K1())
    key = signing_key(account.doc())
    message = b"message"
    sig = account.sign(message)
    key.verify(message, sig)
    for bad, kind in ((sig[:63], "bad_signature"), (bytes(32) + sig[32:], "bad_signature"),
                      (sig[:32] + N_K1.to_bytes(32, "big"), "bad_signature"),
                      (sig[:32] + (N_K1 - int.from_bytes(sig[32:], "big")).to_bytes(32, "big"), "high_s")):
        with pytest.raises(VerifyError) as info:
            key.verify(message, bad)
        assert info.value.kind == kind


# --- the HTTP resolver, against a real server on 127.0.0.1 ----------------------------------------


def test_http_resolver() -> None:
    account = Account(ec.SECP256K1(), did="did:plc:bbbbbbbbbbbbbbbbbbbbbbbb")

    async def main() -> None:
        async def plc(request: web.Request) -> web.Response:
            did = request.match_info["did"]
            if did == account.did:
                return web.json_response(account.doc())
            if did == "did:plc:slow":
                await asyncio.sleep(2)
            if did == "did:plc:other":
                return web.json_response({**account.doc()})
            return web.Response(status=404)

        async def well_known(request: web.Request) -> web.Response:
            return web.json_response({**account.doc(), "id": f"did:web:127.0.0.1%3A{port}"})

        app = web.Application()
        app.router.add_get("/.well-known/did.json", well_known)
        app.router.add_get("/{did}", plc)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with ClientSession() as session:
                resolver = HttpDidResolver(session, plc_url=f"http://127.0.0.1:{port}", timeout_s=0.5,
                                           web_scheme="http", allow_local=True)
                assert (await resolver.resolve(account.did))["verificationMethod"] == account.doc()["verificationMethod"]
                web_did = f"did:web:127.0.0.1%3A{port}"
                assert (await resolver.resolve(web_did))["id"] == web_did
                for did, message in (("did:plc:cccccccccccccccccccccccc", "HTTP 404"),
                                     ("did:plc:slow", "TimeoutError"),
                                     ("did:plc:other", "not this DID's"),
                                     ("did:key:zQ3s", "only did:plc and did:web")):
                    with pytest.raises(VerifyError, match=message) as info:
                        await resolver.resolve(did)
                    assert info.value.kind == "unresolved"
                strict = HttpDidResolver(session, plc_url=f"http://127.0.0.1:{port}")
                for did in (web_did, "did:web:localhost", "did:web:10.0.0.1", "did:web:example.com:user:alice"):
                    with pytest.raises(VerifyError, match="did:web"):
                        await strict.resolve(did)
                # The verifier through HTTP: a commit of the account verifies.
                body, _ = account.commit("3mptbypluud2a", None)
                assert await CommitVerifier(resolver).verify(join({"op": 1, "t": "#commit"}, body))
        finally:
            await runner.cleanup()

    run(main())
