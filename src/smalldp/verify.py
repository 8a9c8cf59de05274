"""Optional verification of relay firehose commits (issue 12, ``verify_commits``, off by default).

What ``CommitVerifier.verify`` checks of one ``#commit`` frame (``events_firehose`` reads the
same frames into operations; this module only says yes or no):

* **The signature.**  The frame's ``commit`` CID names a block of its ``blocks`` CAR slice (its
  sha2-256 checked by ``events_firehose.find_block``): the signed commit, a DAG-CBOR map
  ``{did, version: 3, data, rev, prev, sig}``.  ``sig`` is a 64-byte ECDSA signature (r || s,
  SHA-256) over the canonical DAG-CBOR encoding of that map without ``sig``
  (``dagcbor.encode``), made with the account's atproto signing key: the DID document's
  ``#atproto`` verification method, a secp256k1 or P-256 ``Multikey``.  Like atproto's own
  implementations it rejects high-S signatures (s > n/2), which the ECDSA maths accepts:
  a second valid encoding of the same signature would let a relay change a commit's bytes.
* **The frame against the commit.**  The commit's ``did`` is the frame's ``repo``, its ``rev``
  the frame's ``rev``, its version 3; every op is in the signed tree: each create or update's
  path leads, through the MST nodes of the CAR slice (each checked against its CID) from the
  commit's ``data`` root, to the op's CID, and each delete's path to nothing.  So a record
  taken from the frame is one the account signed (``events_firehose`` checks the record's
  bytes against the op's CID).
* **Sync 1.1 ``prevData``**, as far as one process sees: when present it must be a CID, and
  when this verifier has seen an older commit of the same repo (the last ``rev`` and ``data``
  per repo, in memory, bounded), ``prevData`` must be that commit's ``data``.  A mismatch is
  ``ChainBreak``: the commit is authentic, but a commit of that repo was missed (a gap in the
  stream) or the repo's history was rewritten.

Not checked: the op ``prev`` CIDs of updates and deletes, and that applying the ops to the
tree at ``prevData`` gives ``data`` (Sync 1.1's inversion, which needs MST insertion and
deletion on the partial tree); that the MST is well formed (key layers, order) beyond the
lookups; ``blobs``; a ``#sync`` frame's commit; and anything across a restart (the per-repo
state is memory only).  The DID document is trusted as the resolver returns it.

Use: ``CommitVerifier(resolver)``, then per message ``await verifier.verify(frame)`` (True:
a commit that verified; False: a frame with nothing to verify; ``VerifyError`` with a
``kind`` to count by); ``await verifier.prefetch(dids)`` first resolves a batch's new accounts
concurrently.  ``verify_commit_block`` checks a commit block alone (a getRepo CAR's root).
Resolvers: ``DictResolver`` (documents at hand) and ``HttpDidResolver`` (PLC directory,
did:web), both behind the ``DidResolver`` protocol.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import unquote

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from smalldp.dagcbor import CID, DecodeError, decode, encode
from smalldp.events_firehose import MalformedFrame, find_block, split_frame

__all__ = [
    "ChainBreak", "CommitVerifier", "DictResolver", "DidNotFound", "DidResolver", "HttpDidResolver", "SigningKey",
    "VerifyError", "check_commit", "is_local_host", "parse_multikey", "pds_endpoint", "signing_key",
    "verify_commit_block",
]

_V = TypeVar("_V")


class VerifyError(ValueError):
    """A commit that did not verify.  ``kind`` is a short fixed name to count by (e.g.
    ``bad_signature``, ``high_s``, ``did_mismatch``); the message says what and where."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class DidNotFound(VerifyError):
    """A DID that has no usable document, as a definite answer (kind ``unresolved``, like
    every resolution failure): the PLC directory answered 404 or 410, a did:web host a 4xx
    other than 429, the document is not this DID's JSON object, or the DID is not one
    atproto resolves.  Other failures (timeouts, transport errors, 5xx, 429) are plain
    ``VerifyError``: asking again later may succeed."""


class ChainBreak(VerifyError):
    """A validly signed commit whose ``prevData`` is not the ``data`` of the last commit seen
    of its repo: a missed commit, or rewritten history (the frame itself is authentic)."""


# --- signing keys ------------------------------------------------------------------------------

# Curve orders (SEC 2): a signature's r and s lie in [1, n-1], and atproto wants s <= n/2.
_ORDERS: Final = {
    "secp256k1": 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    "p256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}
_CURVES: Final[dict[str, ec.EllipticCurve]] = {"secp256k1": ec.SECP256K1(), "p256": ec.SECP256R1()}
# Multicodec varints of the public key types atproto uses (compressed points follow).
_MULTICODECS: Final = {b"\xe7\x01": "secp256k1", b"\x80\x24": "p256"}
# Verification method types older DID documents used: no multicodec, the curve named here.
_LEGACY_TYPES: Final = {"EcdsaSecp256k1VerificationKey2019": "secp256k1",
                        "EcdsaSecp256r1VerificationKey2019": "p256"}
_B58: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_VALUES: Final = {c: i for i, c in enumerate(_B58)}
_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())


@dataclass(frozen=True)
class SigningKey:
    """A public signing key: ``curve`` is ``secp256k1`` or ``p256``, ``point`` the point
    (checked to be on the curve) as the DID document gave it.

    The point, not a ``cryptography`` key object: such an object takes about 2 KB of memory
    (OpenSSL's), this about 0.3 KB, and building one per verification costs ~40 us of the
    ~400 us a secp256k1 verification takes.  A cache of every active account's key fits.
    """

    curve: str
    point: bytes
    multibase: str

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The key as a ``cryptography`` object."""
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[self.curve], self.point)

    def verify(self, message: bytes, sig: bytes) -> None:
        """Raise ``VerifyError`` unless ``sig`` (64 bytes r || s, low-S) signs ``message``."""
        if len(sig) != 64:
            raise VerifyError("bad_signature", f"signature of {len(sig)} bytes, not 64")
        r = int.from_bytes(sig[:32], "big")
        s = int.from_bytes(sig[32:], "big")
        n = _ORDERS[self.curve]
        if not (0 < r < n and 0 < s < n):
            raise VerifyError("bad_signature", "r or s outside [1, n-1]")
        if s > n >> 1:
            raise VerifyError("high_s", "s > n/2: atproto accepts only low-S signatures")
        try:
            self.public_key().verify(encode_dss_signature(r, s), message, _ECDSA_SHA256)
        except InvalidSignature:
            raise VerifyError("bad_signature", f"signature does not match the {self.curve} key"
                              f" {self.multibase[:16]}...") from None


def parse_multikey(multibase: str, legacy_type: str | None = None) -> SigningKey:
    """A ``publicKeyMultibase`` value: "z" + base58btc of a multicodec (secp256k1-pub 0xe7 or
    p256-pub 0x1200) and a compressed point; with ``legacy_type`` (a 2019 verification method
    type) the bytes are the bare point of that type's curve.  ``VerifyError`` (kind ``bad_key``)
    for anything else."""
    if not multibase.startswith("z"):
        raise VerifyError("bad_key", f"multibase {multibase[:8]!r}... is not base58btc ('z')")
    raw = _base58_decode(multibase[1:])
    if legacy_type is None:
        curve = _MULTICODECS.get(raw[:2])
        if curve is None:
            raise VerifyError("bad_key", f"multicodec {raw[:2].hex()} is neither secp256k1-pub (e701)"
                              " nor p256-pub (8024)")
        point = raw[2:]
        if len(point) != 33:  # atproto's Multikey holds compressed points
            raise VerifyError("bad_key", f"{curve} key of {len(point)} bytes, not a 33-byte compressed point")
    else:
        curve = _LEGACY_TYPES[legacy_type]
        point = raw
    key = SigningKey(curve, point, multibase)
    try:
        key.public_key()
    except ValueError as exc:
        raise VerifyError("bad_key", f"{curve} key is not a point of the curve: {exc}") from None
    return key


def signing_key(doc: Mapping[str, Any]) -> SigningKey:
    """The atproto signing key of a DID document: its verification method whose id ends in
    ``#atproto``.  ``VerifyError`` (``no_key``, ``bad_key``) when there is none or it is unusable."""
    methods = doc.get("verificationMethod")
    for method in methods if isinstance(methods, list) else ():
        if not isinstance(method, dict) or not str(method.get("id", "")).endswith("#atproto"):
            continue
        kind = method.get("type")
        multibase = method.get("publicKeyMultibase")
        if not isinstance(multibase, str):
            raise VerifyError("bad_key", "#atproto verification method without publicKeyMultibase")
        if kind == "Multikey":
            return parse_multikey(multibase)
        if kind in _LEGACY_TYPES:
            return parse_multikey(multibase, str(kind))
        raise VerifyError("bad_key", f"#atproto verification method of unknown type {str(kind)[:60]!r}")
    raise VerifyError("no_key", f"no #atproto verification method in the DID document of {doc.get('id')!r}")


def _base58_decode(text: str) -> bytes:
    value = 0
    for char in text:
        digit = _B58_VALUES.get(char)
        if digit is None:
            raise VerifyError("bad_key", f"{char!r} is not a base58btc character")
        value = value * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))  # each leading '1' is a zero byte
    return b"\x00" * zeros + value.to_bytes((value.bit_length() + 7) // 8, "big")


# --- commits -------------------------------------------------------------------------------------

_MAX_MST_DEPTH: Final = 128  # a real tree is a handful of levels; this only bounds a bad one


def check_commit(body: Mapping[str, Any], key: SigningKey) -> tuple[str, CID]:
    """Verify a decoded ``#commit`` frame body with the account's ``key`` (everything in the
    module docstring but ``prevData`` against earlier commits); (repo, the commit's ``data``
    CID) when it verifies, ``VerifyError`` otherwise."""
    repo = body.get("repo")
    rev = body.get("rev")
    commit_cid = body.get("commit")
    car = body.get("blocks")
    if not isinstance(repo, str) or not isinstance(rev, str):
        raise VerifyError("malformed", "#commit without a text repo and rev")
    if not isinstance(commit_cid, CID) or not isinstance(car, bytes):
        raise VerifyError("malformed", f"#commit of {repo} without a commit CID and blocks")
    if body.get("tooBig"):
        raise VerifyError("too_big", f"tooBig commit of {repo}: its blocks are not in the frame")
    block = find_block(car, commit_cid.cid_bytes)
    if block is None:
        raise VerifyError("no_commit_block", f"commit block {commit_cid} of {repo} absent from the CAR slice"
                          " (or not matching its CID)")
    prev_data = body.get("prevData")
    if prev_data is not None and not isinstance(prev_data, CID):
        raise VerifyError("malformed", f"prevData of {repo} is not a CID")
    data = verify_commit_block(block, key, repo, rev)["data"]
    ops = body.get("ops")
    if not isinstance(ops, list):
        raise VerifyError("malformed", f"#commit of {repo} without ops")
    for op in ops:
        path = op.get("path") if isinstance(op, dict) else None
        if not isinstance(path, str):
            raise VerifyError("malformed", f"op of {repo} without a path")
        found = _mst_get(car, data.cid_bytes, path.encode())
        want = op.get("cid") if op.get("action") != "delete" else None
        if (found is None) != (want is None) or (isinstance(want, CID) and want.cid_bytes != found):
            raise VerifyError("op_not_signed", f"{op.get('action')!s:.8} of {path[:80]!r}: the signed tree"
                              f" has {'nothing' if found is None else CID(found)} there, the op {want}")
    return repo, data


def verify_commit_block(block: bytes | memoryview, key: SigningKey, did: str,
                        rev: str | None = None) -> dict[str, Any]:
    """The signed commit ``block`` holds (DAG-CBOR ``{did, version: 3, data, rev, prev, sig}``),
    once checked to be ``did``'s (at ``rev`` when given) and signed with ``key``; ``VerifyError``
    otherwise.  The firehose's check, and the one a backfill makes of a getRepo CAR's root."""
    try:
        commit = decode(block)
    except DecodeError as exc:
        raise VerifyError("malformed", f"commit block of {did}: {exc}") from None
    if not isinstance(commit, dict):
        raise VerifyError("malformed", f"commit block of {did} is not a map")
    sig = commit.get("sig")
    if not isinstance(sig, bytes) or not isinstance(commit.get("data"), CID) or commit.get("version") != 3:
        raise VerifyError("malformed", f"commit of {did} is not a version 3 commit with sig and data")
    # Before the signature: the frame's account may have a key that verifies another's commit.
    if commit.get("did") != did:
        raise VerifyError("did_mismatch", f"commit of {str(commit.get('did'))[:80]!r} given as {did}'s")
    if rev is not None and commit.get("rev") != rev:
        raise VerifyError("rev_mismatch", f"commit rev {str(commit.get('rev'))[:20]!r}, frame rev {rev[:20]!r}")
    # What was signed: the same map without sig, canonical DAG-CBOR (the decoder accepted only
    # canonical input, so every other field re-encodes to the bytes the signer had).
    key.verify(encode({k: v for k, v in commit.items() if k != "sig"}), sig)
    return commit


def _mst_get(car: bytes, root: bytes, key: bytes) -> bytes | None:
    """The CID (bytes) the MST rooted at ``root`` holds for ``key``, or None when it has none;
    ``VerifyError`` when a node on the way is not in the CAR slice or not an MST node."""
    node_cid = root
    for _ in range(_MAX_MST_DEPTH):
        block = find_block(car, node_cid)
        if block is None:
            raise VerifyError("incomplete_proof", f"MST node {CID(node_cid)} absent from the CAR slice"
                              " (or not matching its CID)")
        try:
            node = decode(block)
            subtree = node["l"]  # keys before the first entry
            prev = b""
            for entry in node["e"]:
                # Each entry's key is p bytes of the one before, then k.
                entry_key = prev[:entry["p"]] + entry["k"]
                if key == entry_key:
                    return bytes(entry["v"].cid_bytes)
                if key < entry_key:
                    break
                subtree = entry["t"]  # keys between this entry and the next
                prev = entry_key
            if subtree is None:
                return None
            node_cid = subtree.cid_bytes
        except (DecodeError, KeyError, TypeError, AttributeError) as exc:
            raise VerifyError("bad_mst", f"MST node {CID(node_cid)}: not a valid node ({exc!r:.80})") from None
    raise VerifyError("bad_mst", f"MST deeper than {_MAX_MST_DEPTH} levels")


# --- resolving DIDs ------------------------------------------------------------------------------


class DidResolver(Protocol):
    """Gives a DID's current DID document (JSON object), or raises ``VerifyError``
    (kind ``unresolved``) when it can't."""

    async def resolve(self, did: str) -> Mapping[str, Any]:
        """The DID document of ``did``."""
        ...


class DictResolver:
    """DID documents from a dict (tests, fixtures, a preloaded set)."""

    def __init__(self, docs: Mapping[str, Mapping[str, Any]]) -> None:
        self.docs = docs

    async def resolve(self, did: str) -> Mapping[str, Any]:
        """The document stored for ``did``."""
        doc = self.docs.get(did)
        if doc is None:
            raise VerifyError("unresolved", f"no DID document for {did}")
        return doc


def is_local_host(name: str) -> bool:
    """Whether a URL's host name is ``localhost`` or an IP address literal: hosts a DID (its
    did:web host, its PDS endpoint) must not name, or a DID could make the appliance request
    its own network."""
    return name == "localhost" or name.replace(".", "").isdigit() or ":" in name or name.startswith("[")


def pds_endpoint(doc: Mapping[str, Any]) -> str | None:
    """The account's PDS URL: the ``serviceEndpoint`` of the DID document's ``#atproto_pds``
    service (its id written ``#atproto_pds`` or ``<did>#atproto_pds``), or None."""
    services = doc.get("service")
    if not isinstance(services, list):
        return None
    did = doc.get("id")
    for service in services:
        if not isinstance(service, dict):
            continue
        ident = service.get("id")
        if ident == "#atproto_pds" or (isinstance(did, str) and ident == f"{did}#atproto_pds"):
            endpoint = service.get("serviceEndpoint")
            return endpoint if isinstance(endpoint, str) else None
    return None


class HttpDidResolver:
    """did:plc from a PLC directory (``plc_url``/<did>), did:web from
    https://<host>/.well-known/did.json, each request within ``timeout_s``.

    Keys are cached by ``CommitVerifier``, so this asks once per DID (and again after a
    ``#identity`` frame or a signature that fails with the cached key).  did:web hosts that are
    ``localhost`` or an IP address literal are refused unless ``allow_local`` (tests): a
    DID must not make the appliance request its own network.
    """

    def __init__(self, session: aiohttp.ClientSession, *, plc_url: str = "https://plc.directory",
                 timeout_s: float = 5.0, max_bytes: int = 256 * 1024, web_scheme: str = "https",
                 allow_local: bool = False) -> None:
        self.session = session
        self.plc_url = plc_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_bytes = max_bytes
        self.web_scheme = web_scheme
        self.allow_local = allow_local

    async def resolve(self, did: str) -> Mapping[str, Any]:
        """Fetch and parse the DID document of ``did``; its ``id`` must be ``did``.

        ``DidNotFound`` when the answer is definite (see there), ``VerifyError`` otherwise."""
        if did.startswith("did:plc:"):
            url = f"{self.plc_url}/{did}"
        elif did.startswith("did:web:"):
            host = unquote(did[8:])  # a port is written %3A
            if ":" in did[8:] or "/" in host or not host:
                raise DidNotFound("unresolved", f"{did[:80]}: atproto's did:web is a bare host")
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
            if not self.allow_local and is_local_host(name):
                raise DidNotFound("unresolved", f"{did[:80]}: did:web host is local or an IP address")
            url = f"{self.web_scheme}://{host}/.well-known/did.json"
        else:
            raise DidNotFound("unresolved", f"{did[:80]}: only did:plc and did:web are atproto DIDs")
        try:
            async with self.session.get(url, timeout=self.timeout, allow_redirects=False) as resp:
                if resp.status != 200:
                    gone = resp.status in (404, 410) if did.startswith("did:plc:") else \
                        400 <= resp.status < 500 and resp.status != 429
                    raise (DidNotFound if gone else VerifyError)("unresolved", f"{did}: HTTP {resp.status} from {url}")
                raw = await resp.content.read(self.max_bytes + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise VerifyError("unresolved", f"{did}: {type(exc).__name__} from {url}: {exc}") from None
        if len(raw) > self.max_bytes:
            raise DidNotFound("unresolved", f"{did}: DID document larger than {self.max_bytes} bytes")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise DidNotFound("unresolved", f"{did}: DID document is not JSON") from None
        if not isinstance(doc, dict) or doc.get("id") != did:
            raise DidNotFound("unresolved", f"{did}: the document at {url} is not this DID's")
        return doc


# --- the verifier ----------------------------------------------------------------------------------


class CommitVerifier:
    """Verifies firehose frames, caching each DID's signing key and each repo's last commit.

    ``max_keys`` and ``max_repos`` bound the two caches (oldest dropped first; about 0.4 and
    0.3 KB an entry).  A cached key that fails a signature is resolved again once (the account
    may have rotated its key); an ``#identity`` frame drops the DID's key and a ``#sync`` the
    repo's last commit.  A DID whose resolution failed is not asked again for ``retry_s``
    (its commits fail ``unresolved`` meanwhile): a directory that is down is not asked at the
    stream's rate.  One verifier per stream, used from one event loop.
    """

    def __init__(self, resolver: DidResolver, *, max_keys: int = 200_000, max_repos: int = 200_000,
                 retry_s: float = 300.0) -> None:
        self.resolver = resolver
        self.max_keys = max_keys
        self.max_repos = max_repos
        self.retry_s = retry_s
        self._keys: dict[str, SigningKey] = {}
        self._failed: dict[str, float] = {}  # DID -> when resolving it last failed (monotonic)
        self._last: dict[str, tuple[str, bytes]] = {}  # repo -> (rev, data CID) of its newest commit

    async def verify(self, frame: bytes) -> bool:
        """Verify one websocket message: True for a ``#commit`` that verified, False for any
        other frame (nothing to verify); ``VerifyError`` (``ChainBreak`` for a prevData
        mismatch) for a commit that did not."""
        try:
            header, body = split_frame(frame)
        except MalformedFrame as exc:
            raise VerifyError("malformed", str(exc)) from None
        kind = header.get("t") if isinstance(header, dict) else None
        if not isinstance(body, dict):
            return False
        if kind == "#commit":
            await self.verify_commit(body)
            return True
        did = body.get("did")
        if kind == "#identity" and isinstance(did, str):
            self._keys.pop(did, None)  # the handle or the key may have changed: ask again
        elif kind == "#sync" and isinstance(did, str):
            self._last.pop(did, None)  # the repo was reset: its next commit starts a new chain
        return False

    async def verify_commit(self, body: Mapping[str, Any]) -> None:
        """Verify a decoded ``#commit`` body (``check_commit`` with the repo's key, then the
        ``prevData`` chain); ``VerifyError`` or ``ChainBreak`` when it does not verify."""
        repo = body.get("repo")
        if not isinstance(repo, str):
            raise VerifyError("malformed", "#commit without a repo")
        key = self._keys.get(repo)
        cached = key is not None
        if key is None:
            key = await self._resolve(repo)
        try:
            _, data = check_commit(body, key)
        except VerifyError as exc:
            if exc.kind != "bad_signature" or not cached:
                raise
            try:
                fresh = await self._resolve(repo)  # a rotated key: retry once with the current one
            except VerifyError:
                raise exc from None
            if fresh == key:
                raise
            _, data = check_commit(body, fresh)
        self._chain(repo, str(body.get("rev")), data, body.get("prevData"))

    async def prefetch(self, dids: Iterable[str], concurrency: int = 16) -> None:
        """Resolve the keys of ``dids`` not cached yet, ``concurrency`` at a time, so that a
        batch of frames waits for its new accounts' documents together rather than one after
        the other.  Failures are not raised here: they are remembered, and the DID's commits
        fail ``unresolved``."""
        missing = {did for did in dids if did not in self._keys}
        gate = asyncio.Semaphore(concurrency)

        async def one(did: str) -> None:
            async with gate:
                try:
                    await self._resolve(did)
                except VerifyError:
                    pass

        await asyncio.gather(*(one(did) for did in missing))

    async def _resolve(self, did: str) -> SigningKey:
        failed_at = self._failed.get(did)
        if failed_at is not None and time.monotonic() - failed_at < self.retry_s:
            raise VerifyError("unresolved", f"{did}: resolving it failed {time.monotonic() - failed_at:.0f} s ago;"
                              f" asked again {self.retry_s:.0f} s after")
        try:
            key = signing_key(await self.resolver.resolve(did))
        except VerifyError:
            _put(self._failed, did, time.monotonic(), self.max_keys)
            raise
        self._failed.pop(did, None)
        _put(self._keys, did, key, self.max_keys)
        return key

    def _chain(self, repo: str, rev: str, data: CID, prev_data: Any) -> None:
        last = self._last.get(repo)
        if last is not None and rev <= last[0]:
            return  # a replay (a reconnect rewinds the cursor): older than what we hold
        _put(self._last, repo, (rev, data.cid_bytes), self.max_repos)
        if last is not None and isinstance(prev_data, CID) and prev_data.cid_bytes != last[1]:
            raise ChainBreak("chain_break", f"prevData {prev_data} of {repo} at {rev} is not the data"
                             f" {CID(last[1])} of its commit {last[0]}")


def _put(cache: dict[str, _V], key: str, value: _V, limit: int) -> None:
    """Set ``cache[key]`` as its newest entry, dropping the oldest beyond ``limit``."""
    cache.pop(key, None)
    if len(cache) >= limit:
        del cache[next(iter(cache))]
    cache[key] = value
