"""The AppView's identity: smalldp.appview.identity (the DID-document cache) and the
GetIdentityByDid / GetIdentityByHandle handlers (smalldp.appview.rpcs.identity).

A fake PLC directory (a real aiohttp server on 127.0.0.1, its own thread) serves DID
documents whose keys the test holds; it counts requests per DID and can answer 404, 500,
slowly, or a did:web document.  Nothing leaves 127.0.0.1.

* The cache: hits, TTL expiry (a fake clock), the bound, single flight (concurrent
  requests, one fetch), failures cached for a short time (404 -> not_found, 500 ->
  unavailable), a stale copy served when a refresh fails, a fetch again after an identity
  event in the store, did:web.
* The answer, byte for byte against the reference: the official AppView's own
  ``getIdentityByDid`` route (``@atproto/bsky``'s data-plane ``routes/identity.js`` with
  ``@atproto/identity``'s resolver) run under node against the same fake directory, for
  crafted documents (odd ids, duplicate ids, missing keys, object endpoints, unicode,
  control characters, lone surrogates, invalid documents) and the real corpus's documents.
* End to end: a service-auth JWT signed with the test's key (ES256K and ES256) verifies
  with the AppView's own code from smalldp's ``keys`` (``getKeyAsDidKey`` then
  ``verifyJwt`` with the AppView's ``verifySignatureWithKey``), under node.
* The handlers over a real store: the handle (verified from the store, else the
  document's), a fetch again after an identity event, GetIdentityByHandle, bad input.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import aiohttp
import pytest
import zstandard
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from smalldp.api.readers import ReaderPool
from smalldp.appview.identity import (
    Identity, IdentityCache, IdentityError, choose_handle, document_problem, js_json, keys_json, services_json,
)
from smalldp.appview.proto import bsky_pb2
from smalldp.appview.rpcs import handlers
from smalldp.appview.rpcs.base import AppViewContext, RpcError
from smalldp.store.writer import Writer
from smalldp.verify import parse_multikey

from bsky_node import NODE_DIR, node_or_fail
from conftest import JETSTREAM
from helpers_server import BASE_US, apply, did, iso
from thread_web import ThreadedWebServer

pytestmark = pytest.mark.timeout(300)
T = TypeVar("T")
_, ASYNC = handlers()
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
CURVES = {"ES256K": (ec.SECP256K1(), b"\xe7\x01"), "ES256": (ec.SECP256R1(), b"\x80\x24")}
ORDERS = {"ES256K": 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
          "ES256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551}


def b58(data: bytes) -> str:
    value = int.from_bytes(data, "big")
    out = ""
    while value:
        value, digit = divmod(value, 58)
        out = B58[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


@dataclass
class Key:
    """A signing key the test holds, and its Multikey form."""

    alg: str
    private: ec.EllipticCurvePrivateKey

    @classmethod
    def new(cls, alg: str) -> Key:
        return cls(alg, ec.generate_private_key(CURVES[alg][0]))

    @property
    def multibase(self) -> str:
        point = self.private.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
        return "z" + b58(CURVES[self.alg][1] + point)

    def jwt(self, payload: dict[str, Any]) -> str:
        """A compact JWS, low-S r||s as atproto wants."""
        def part(value: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
        signing_input = f"{part({'typ': 'JWT', 'alg': self.alg})}.{part(payload)}"
        r, s = decode_dss_signature(self.private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        n = ORDERS[self.alg]
        s = min(s, n - s)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{base64.urlsafe_b64encode(sig).decode().rstrip('=')}"


def plc_doc(did_: str, key: Key | None = None, handles: tuple[str, ...] = (), pds: str = "https://pds.example.com",
            **extra: Any) -> dict[str, Any]:
    """A DID document as the PLC directory serves one."""
    doc: dict[str, Any] = {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did_, "alsoKnownAs": [f"at://{h}" for h in handles],
        "verificationMethod": [] if key is None else [
            {"id": f"{did_}#atproto", "type": "Multikey", "controller": did_, "publicKeyMultibase": key.multibase}],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}]}
    doc.update(extra)
    return doc


# ---------------------------------------------------------------- the fake directory


@dataclass
class FakePlc(ThreadedWebServer):
    """PLC directory at ``/<did>``, and one did:web document at ``/.well-known/did.json``
    (the DID ``web_did``: did:web:localhost%3A<port>).  ``status`` overrides a DID's answer;
    ``delay_s`` holds every answer; ``requests`` counts them per DID."""

    docs: dict[str, Any] = field(default_factory=dict)  # DID -> document (any JSON)
    raw: dict[str, bytes] = field(default_factory=dict)  # DID -> body bytes served as they are
    status: dict[str, int] = field(default_factory=dict)
    web_doc: dict[str, Any] | None = None
    delay_s: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"  # at the root: the reference resolves new URL('/<did>', plcUrl)

    @property
    def web_did(self) -> str:
        return f"did:web:localhost%3A{self.port}"

    async def _answer(self, did_: str, doc: Any) -> web.Response:
        self.requests[did_] += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if did_ in self.status:
            return web.json_response({"message": "no"}, status=self.status[did_])
        if did_ in self.raw:
            return web.Response(body=self.raw[did_], content_type="application/json")
        if doc is None:
            return web.json_response({"message": "DID not registered"}, status=404)
        return web.json_response(doc)  # ASCII JSON: lone surrogates as \\udxxx, read alike by both sides

    async def plc(self, request: web.Request) -> web.Response:
        did_ = request.match_info["did"]
        return await self._answer(did_, self.docs.get(did_))

    async def web_json(self, request: web.Request) -> web.Response:
        return await self._answer(self.web_did, self.web_doc)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/.well-known/did.json", self.web_json)
        app.router.add_get("/{did}", self.plc)


@pytest.fixture
def plc() -> Iterator[FakePlc]:
    with FakePlc() as fake:
        yield fake


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(fn: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
    """Run fn(session) on a fresh loop with a fresh session."""
    async def main() -> T:
        async with aiohttp.ClientSession() as session:
            return await fn(session)
    return asyncio.run(main())


def cache_for(session: aiohttp.ClientSession, plc: FakePlc, clock: Clock | None = None, **kwargs: Any) -> IdentityCache:
    return IdentityCache(session, plc_url=plc.url, allow_local=True, web_scheme="http", clock=clock or Clock(),
                         **kwargs)


async def code_of(awaitable: Awaitable[Any]) -> str:
    """The IdentityError / RpcError code an awaitable raises."""
    try:
        await awaitable
    except (IdentityError, RpcError) as exc:
        return exc.code
    raise AssertionError("no error")


# ---------------------------------------------------------------- the cache


def test_hit_ttl_and_refresh_after_identity_event(plc: FakePlc) -> None:
    """One fetch, then hits until the TTL; a higher identity order time than the one seen
    at the fetch makes it fetch again at once; the same or an older one does not."""
    a = did("alice")
    key = Key.new("ES256K")
    plc.docs[a] = plc_doc(a, key, ("alice.test",))
    clock = Clock()

    async def main(session: aiohttp.ClientSession) -> None:
        cache = cache_for(session, plc, clock, ttl_s=60)
        first = await cache.get(a, id_us=100)
        assert first.did == a and first.handle == "alice.test" and plc.requests[a] == 1
        assert json.loads(first.keys) == {"atproto": {"Type": "Multikey", "PublicKeyMultibase": key.multibase}}
        assert json.loads(first.services) == {"atproto_pds": {"Type": "AtprotoPersonalDataServer",
                                                              "URL": "https://pds.example.com"}}
        assert abs(first.fetched_us - time.time() * 1e6) < 60e6
        for _ in range(5):
            assert await cache.get(a, id_us=100) is first
            assert await cache.get(a, id_us=99) is first  # an older event changes nothing
            assert await cache.get(a) is first  # the store without one changes nothing
        assert plc.requests[a] == 1 and cache.hits == 15
        clock.now += 59
        assert await cache.get(a, id_us=100) is first and plc.requests[a] == 1
        clock.now += 2  # past the TTL: fetched again
        second = await cache.get(a, id_us=100)
        assert plc.requests[a] == 2 and second == Identity(a, ("alice.test",), first.keys, first.services,
                                                           second.fetched_us)
        # the account announced a change (a new key): fetched again at once, not after the TTL
        new_key = Key.new("ES256")
        plc.docs[a] = plc_doc(a, new_key, ("alice2.test",))
        third = await cache.get(a, id_us=200)
        assert plc.requests[a] == 3 and third.handle == "alice2.test"
        assert json.loads(third.keys)["atproto"]["PublicKeyMultibase"] == new_key.multibase
        assert await cache.get(a, id_us=200) is third and plc.requests[a] == 3
    run(main)


def test_bound(plc: FakePlc) -> None:
    """At most max_entries DIDs; the least recently used goes first."""
    dids = [did(f"user{i}") for i in range(6)]
    for d in dids:
        plc.docs[d] = plc_doc(d, Key.new("ES256K"))

    async def main(session: aiohttp.ClientSession) -> None:
        cache = cache_for(session, plc, max_entries=3)
        for d in dids[:3]:
            await cache.get(d)
        await cache.get(dids[0])  # used again: now the newest
        await cache.get(dids[3])  # drops dids[1], the least recently used
        assert len(cache) == 3
        await cache.get(dids[0])
        await cache.get(dids[2])
        assert plc.requests[dids[0]] == 1 and plc.requests[dids[2]] == 1
        await cache.get(dids[1])
        assert plc.requests[dids[1]] == 2
        for d in dids:
            await cache.get(d)
        assert len(cache) == 3
    run(main)


def test_single_flight(plc: FakePlc) -> None:
    """Many concurrent requests for one DID make one fetch; a caller that gives up does
    not cancel it for the others."""
    a, b = did("alice"), did("bob")
    plc.docs[a] = plc_doc(a, Key.new("ES256K"))
    plc.docs[b] = plc_doc(b, Key.new("ES256K"))
    plc.delay_s = 0.3

    async def main(session: aiohttp.ClientSession) -> None:
        cache = cache_for(session, plc)
        impatient = asyncio.ensure_future(cache.get(a))
        await asyncio.sleep(0.05)
        results = asyncio.gather(*(cache.get(a) for _ in range(50)), *(cache.get(b) for _ in range(20)))
        impatient.cancel()
        got = await results
        assert {r.did for r in got[:50]} == {a} and all(r is got[0] for r in got[:50])
        assert plc.requests[a] == 1 and plc.requests[b] == 1 and cache.fetches == 2
        with pytest.raises(asyncio.CancelledError):
            await impatient
        # failures are shared too
        plc.status[did("carol")] = 500
        codes = await asyncio.gather(*(code_of(cache.get(did("carol"))) for _ in range(10)))
        assert codes == ["unavailable"] * 10 and plc.requests[did("carol")] == 1
    run(main)


def test_failures_are_cached_briefly(plc: FakePlc) -> None:
    """404 is not_found, 500 unavailable; either is remembered for negative_ttl_s (no
    request meanwhile), unless the store reports an identity event after it."""
    a, b = did("alice"), did("bob")
    plc.status[b] = 500
    clock = Clock()

    async def main(session: aiohttp.ClientSession) -> None:
        cache = cache_for(session, plc, clock, negative_ttl_s=30)
        for _ in range(3):
            assert await code_of(cache.get(a)) == "not_found"
            assert await code_of(cache.get(b)) == "unavailable"
        assert plc.requests[a] == 1 and plc.requests[b] == 1
        clock.now += 31
        plc.docs[a] = plc_doc(a, Key.new("ES256K"))
        assert (await cache.get(a)).did == a and plc.requests[a] == 2
        assert await code_of(cache.get(b)) == "unavailable" and plc.requests[b] == 2
        # a new account: not found, then its first identity event lands; asked again at once
        c = did("carol")
        assert await code_of(cache.get(c, id_us=None)) == "not_found"
        plc.docs[c] = plc_doc(c, Key.new("ES256"))
        assert (await cache.get(c, id_us=5)).did == c and plc.requests[c] == 2
    run(main)


def test_stale_copy_when_a_refresh_fails(plc: FakePlc) -> None:
    """A refresh that fails for a reason that may pass (500) keeps serving the old copy up
    to stale_s after its fetch, retrying at most once per negative_ttl_s; then unavailable.
    A definite 404 drops it."""
    a = did("alice")
    plc.docs[a] = plc_doc(a, Key.new("ES256K"))
    clock = Clock()

    async def main(session: aiohttp.ClientSession) -> None:
        cache = cache_for(session, plc, clock, ttl_s=60, stale_s=600, negative_ttl_s=30)
        first = await cache.get(a)
        plc.status[a] = 500
        clock.now += 61
        assert await cache.get(a) is first and plc.requests[a] == 2
        assert await cache.get(a) is first and plc.requests[a] == 2  # retried only after negative_ttl_s
        clock.now += 31
        assert await cache.get(a) is first and plc.requests[a] == 3
        clock.now += 600  # too old to serve
        assert await code_of(cache.get(a)) == "unavailable" and plc.requests[a] == 4
        del plc.status[a]
        clock.now += 31
        assert (await cache.get(a)).did == a
        plc.status[a] = 404
        clock.now += 61
        assert await code_of(cache.get(a)) == "not_found"
    run(main)


def test_did_web_and_unresolvable(plc: FakePlc) -> None:
    """did:web from the host's /.well-known/did.json; definite failures are not_found."""
    key = Key.new("ES256")

    async def main(session: aiohttp.ClientSession) -> None:
        cache = cache_for(session, plc)
        web_did = plc.web_did
        plc.web_doc = plc_doc(web_did, key, ("web.test",), pds=f"http://localhost:{plc.port}")
        found = await cache.get(web_did)
        assert found.handle == "web.test" and plc.requests[web_did] == 1
        assert json.loads(found.keys)["atproto"]["PublicKeyMultibase"] == key.multibase
        for bad in ["did:key:zQ3shXYZ", "did:web:example.com:path", "did:example:123"]:
            assert await code_of(cache.get(bad)) == "not_found", bad
        # a document that is not the DID's, or not a DID document, or not JSON
        mixed = did("mixed")
        plc.docs[mixed] = plc_doc(did("other"))
        assert await code_of(cache.get(mixed)) == "not_found"
        broken = did("broken")
        plc.docs[broken] = plc_doc(broken, alsoKnownAs=None)
        assert await code_of(cache.get(broken)) == "not_found"
        garbage = did("garbage")
        plc.raw[garbage] = b"{not json"
        assert await code_of(cache.get(garbage)) == "not_found"
        # a did:web host that is not there at all: a failure that may pass
        gone = "did:web:localhost%3A1"
        assert await code_of(cache.get(gone)) == "unavailable"
    run(main)


def test_js_json() -> None:
    """js_json writes what JSON.stringify writes (checked against node in the reference test)."""
    assert js_json({"a": {"b": "c"}}) == b'{"a":{"b":"c"}}'
    assert js_json({"x": "\u00e9\u2028\x7f\x01\n\"\\"}) == '{"x":"\u00e9\u2028\x7f\\u0001\\n\\"\\\\"}'.encode()
    assert js_json({"s": "a\ud800b"}) == b'{"s":"a\\ud800b"}'
    assert js_json({}) == b"{}"


def test_choose_handle() -> None:
    """The store's handle when its newest claim is this DID and the document claims it;
    else the document's first at:// alias."""
    a = did("alice")
    identity = Identity(a, ("Alice.Test", "old.test"), b"{}", b"{}", 0)
    assert choose_handle(identity, "alice.test", a) == "alice.test"
    assert choose_handle(identity, "old.test", a) == "old.test"
    assert choose_handle(identity, "other.test", a) == "Alice.Test"  # not claimed by the document
    assert choose_handle(identity, "alice.test", did("bob")) == "Alice.Test"  # someone claimed it later
    assert choose_handle(identity, None, None) == "Alice.Test"
    assert choose_handle(Identity(a, (), b"{}", b"{}", 0), "alice.test", a) == ""


# ---------------------------------------------------------------- against the reference, under node


def crafted_docs(keys: dict[str, Key]) -> dict[str, Any]:
    """DID -> document (or None: 404) for the odd cases the reference's route builds."""
    k1, p256 = keys["ES256K"], keys["ES256"]

    def vm(ident: str, type_: str = "Multikey", **extra: Any) -> dict[str, Any]:
        return {"id": ident, "type": type_, "controller": "did:plc:whoever", **extra}

    docs: dict[str, Any] = {}

    def add(name: str, **fields: Any) -> None:
        d = did(name)
        docs[d] = {"id": d, **fields}

    add("plain", alsoKnownAs=["at://plain.test"], verificationMethod=[vm("#atproto", publicKeyMultibase=k1.multibase)],
        service=[{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://pds.test"}])
    add("twokeys", verificationMethod=[vm(f"{did('twokeys')}#atproto", publicKeyMultibase=p256.multibase),
                                       vm("#atproto_label", "EcdsaSecp256k1VerificationKey2019",
                                          publicKeyMultibase=k1.multibase)])
    add("oddids", alsoKnownAs=["https://example.com", "at://second.test", "at://third.test"],
        verificationMethod=[vm("noHash", publicKeyMultibase="zA"), vm("#", publicKeyMultibase="zB"),
                            vm("a#b#c", publicKeyMultibase="zC"), vm("#dup", publicKeyMultibase="zFirst"),
                            vm("#other", publicKeyMultibase="zO"), vm("#dup", publicKeyMultibase="zSecond"),
                            vm("#nokey", publicKeyJwk={"kty": "EC"}), vm("#emptykey", publicKeyMultibase=""),
                            vm("#__proto__", publicKeyMultibase="zProto"), vm("#constructor", publicKeyMultibase="zC2"),
                            vm("#toString", publicKeyMultibase="zT")],
        service=[{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": {"uri": "x"}},
                 {"id": "nohash", "type": "X", "serviceEndpoint": "https://a.test"},
                 {"id": "#bsky_notif", "type": "BskyNotificationService", "serviceEndpoint": "not a url"},
                 {"id": "#dup", "type": "A", "serviceEndpoint": "https://1.test"},
                 {"id": "#dup", "type": "B", "serviceEndpoint": "https://2.test"},
                 {"id": "#__proto__", "type": "P", "serviceEndpoint": "https://p.test"}])
    add("unicode", alsoKnownAs=["at://ünï.test"],
        verificationMethod=[vm("#k\u00e9y", "T\u00ffpe \"quoted\" \\back\\ \u2028 \x01\x1f\x7f \ud83d\ude00",
                               publicKeyMultibase="z\t\n")],
        service=[{"id": "#s", "type": "\u0000nul", "serviceEndpoint": "https://x.test/\u00e9"}])
    add("surrogate", verificationMethod=[vm("#lone", "a\ud800b\udc00c", publicKeyMultibase="z")])
    add("empty")
    add("context", **{"@context": "https://www.w3.org/ns/did/v1"})
    add("nullaka", alsoKnownAs=None)
    add("novmcontroller", verificationMethod=[{"id": "#atproto", "type": "Multikey", "publicKeyMultibase": "z"}])
    add("badservice", service={"id": "#x"})
    add("badcontext", **{"@context": ["not a url"]})
    add("numbertype", verificationMethod=[vm("#atproto", publicKeyMultibase=5)])
    docs[did("missing")] = None
    return docs


NODE_ROUTE = r"""
const { IdResolver } = require('@atproto/identity');
const route = require('@atproto/bsky/dist/data-plane/server/routes/identity.js').default;
const { plcUrl, dids } = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const service = route(undefined, new IdResolver({ plcUrl, timeout: 5000 }));
(async () => {
  const out = {};
  for (const did of dids) {
    try {
      const res = await service.getIdentityByDid({ did });
      out[did] = { did: res.did, handle: res.handle ?? '', keys: Buffer.from(res.keys).toString('base64'),
                   services: Buffer.from(res.services).toString('base64') };
    } catch (err) {
      out[did] = { error: err.code === 5 ? 'not_found' : 'error', message: String(err.message).slice(0, 200) };
    }
  }
  process.stdout.write(JSON.stringify(out));
})();
"""


def run_node(script: str, payload: Any) -> Any:
    node = node_or_fail()
    proc = subprocess.run([node, "-e", script], cwd=NODE_DIR, input=json.dumps(payload), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_answers_equal_the_references_route(plc: FakePlc) -> None:
    """For every document, smalldp's keys, services and handle are the bytes the
    reference's route gives; a DID it does not find (404) is not_found for both; a
    document it rejects as malformed (an error other than NotFound there) is not_found."""
    keys = {alg: Key.new(alg) for alg in CURVES}
    docs = crafted_docs(keys)
    corpus = JETSTREAM / "corpus_did_docs.json.zst"
    if corpus.is_file():
        with corpus.open("rb") as f:
            docs.update(json.loads(zstandard.ZstdDecompressor().stream_reader(f).read()))
    for d, doc in docs.items():
        if doc is not None:
            plc.docs[d] = doc
    plc.docs[did("plain")]["alsoKnownAs"] = ["at://plain.test"]
    web_doc = {"id": plc.web_did, "alsoKnownAs": ["at://web.test"],
               "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": plc.web_did,
                                       "publicKeyMultibase": keys["ES256"].multibase}]}
    plc.web_doc = web_doc
    everyone = sorted(docs) + [plc.web_did]
    reference = run_node(NODE_ROUTE, {"plcUrl": plc.url, "dids": everyone})

    async def main(session: aiohttp.ClientSession) -> dict[str, Any]:
        cache = cache_for(session, plc)
        out: dict[str, Any] = {}
        for d in everyone:
            try:
                got = await cache.get(d)
            except IdentityError as exc:
                out[d] = exc.code
            else:
                out[d] = got
        return out
    ours = run(main)
    valid = 0
    for d in everyone:
        ref, got = reference[d], ours[d]
        if "error" in ref:
            assert got == "not_found", (d, ref, got)
            continue
        assert isinstance(got, Identity), (d, ref, got)
        assert base64.b64decode(ref["keys"]) == got.keys, (d, got.keys)
        assert base64.b64decode(ref["services"]) == got.services, (d, got.services)
        assert ref["handle"] == got.handle and ref["did"] == got.did == d
        valid += 1
    assert valid >= 8 + (148 if corpus.is_file() else 0)
    # the malformed ones really are malformed for the reference (not a lookup failure)
    for name in ("nullaka", "novmcontroller", "badservice", "badcontext", "numbertype"):
        assert reference[did(name)]["error"] == "error", name
        assert document_problem(docs[did(name)]) is not None
    assert reference[did("missing")]["error"] == "not_found"
    assert json.loads(ours[did("oddids")].keys) == {
        "b": {"Type": "Multikey", "PublicKeyMultibase": "zC"},
        "dup": {"Type": "Multikey", "PublicKeyMultibase": "zSecond"},
        "other": {"Type": "Multikey", "PublicKeyMultibase": "zO"},
        "nokey": {"Type": "Multikey", "PublicKeyMultibase": ""},
        "emptykey": {"Type": "Multikey", "PublicKeyMultibase": ""},
        "constructor": {"Type": "Multikey", "PublicKeyMultibase": "zC2"},
        "toString": {"Type": "Multikey", "PublicKeyMultibase": "zT"}}
    assert keys_json(docs[did("plain")]) == ours[did("plain")].keys
    assert services_json(docs[did("plain")]) == ours[did("plain")].services


NODE_JWT = r"""
const { getKeyAsDidKey, unpackIdentityKeys } = require('@atproto/bsky/dist/data-plane/client/util.js');
const { verifySignatureWithKey } = require('@atproto/bsky/dist/auth-verifier.js');
const { verifyJwt } = require('@atproto/xrpc-server');
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
(async () => {
  const out = [];
  for (const { keys, jwt, aud } of cases) {
    const didKey = getKeyAsDidKey(unpackIdentityKeys(Buffer.from(keys, 'base64')), { id: 'atproto' });
    try {
      const payload = await verifyJwt(jwt, aud, null, async () => didKey, verifySignatureWithKey);
      out.push({ ok: true, iss: payload.iss, didKey });
    } catch (err) {
      out.push({ ok: false, error: String(err.message), didKey });
    }
  }
  process.stdout.write(JSON.stringify(out));
})();
"""


def test_service_auth_jwt_verifies_with_our_keys(plc: FakePlc) -> None:
    """The AppView's own JWT check, fed smalldp's GetIdentityByDid keys, accepts a token
    signed by the account's key and refuses one signed by another key."""
    aud = "did:web:appview.test"
    cases, expect = [], []
    for alg in CURVES:
        key, stranger = Key.new(alg), Key.new(alg)
        d = did(f"jwt{alg.lower()}")
        plc.docs[d] = plc_doc(d, key, (f"{alg.lower()}.test",))
        payload = {"iss": d, "aud": aud, "exp": int(time.time()) + 60, "iat": int(time.time()),
                   "lxm": "app.bsky.actor.getProfile", "jti": "x"}

        async def fetch(session: aiohttp.ClientSession, d: str = d) -> Identity:
            return await cache_for(session, plc).get(d)
        identity = run(fetch)
        assert parse_multikey(json.loads(identity.keys)["atproto"]["PublicKeyMultibase"])
        for signer, ok in ((key, True), (stranger, False)):
            cases.append({"keys": base64.b64encode(identity.keys).decode(), "jwt": signer.jwt(payload), "aud": aud})
            expect.append((ok, d))
    results = run_node(NODE_JWT, cases)
    for (ok, d), result in zip(expect, results, strict=True):
        assert result["didKey"].startswith("did:key:z"), result
        assert result["ok"] is ok, result
        if ok:
            assert result["iss"] == d


# ---------------------------------------------------------------- the handlers over a store


def identity_event(d: str, handle: str | None, when_us: int, seq: int) -> dict[str, Any]:
    body: dict[str, Any] = {"did": d, "seq": seq, "time": iso(when_us)}
    if handle is not None:
        body["handle"] = handle
    return {"did": d, "time_us": when_us + 1000, "kind": "identity", "identity": body}


def test_handlers_over_a_store(plc: FakePlc, tmp_path: Path) -> None:
    """GetIdentityByDid and GetIdentityByHandle as the gRPC server calls them (the cache in
    ctx.services["identity"], the store through ctx.read)."""
    a, b, c = did("alice"), did("bob"), did("carol")
    key_a = Key.new("ES256K")
    plc.docs[a] = plc_doc(a, key_a, ("Alice.Test", "alice.example.com"))
    plc.docs[b] = plc_doc(b, Key.new("ES256"), ("bob.test",))
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    apply(writer, [identity_event(a, "alice.example.com", BASE_US + 1_000_000, 1),
                   identity_event(b, "notbob.test", BASE_US + 2_000_000, 1),
                   identity_event(c, "carol.test", BASE_US + 3_000_000, 1)])
    pool = ReaderPool(path, threads=2)
    by_did, by_handle = ASYNC["GetIdentityByDid"], ASYNC["GetIdentityByHandle"]

    async def main(session: aiohttp.ClientSession) -> None:
        cache = cache_for(session, plc, ttl_s=3600)
        ctx = AppViewContext(read=reads(pool), services={"identity": cache})
        got = await by_did(ctx, bsky_pb2.GetIdentityByDidRequest(did=a))
        assert isinstance(got, bsky_pb2.GetIdentityByDidResponse)
        assert got.did == a and got.handle == "alice.example.com"  # the store's, claimed by the document
        assert json.loads(got.keys) == {"atproto": {"Type": "Multikey", "PublicKeyMultibase": key_a.multibase}}
        assert got.updated.seconds > 1_700_000_000
        got_b = await by_did(ctx, bsky_pb2.GetIdentityByDidRequest(did=b))
        assert got_b.handle == "bob.test"  # the store's is not claimed: the document's, as the reference
        assert plc.requests[a] == 1
        await by_did(ctx, bsky_pb2.GetIdentityByDidRequest(did=a))
        assert plc.requests[a] == 1
        # an identity event lands (a rotated key): the next call fetches again
        key_a2 = Key.new("ES256")
        plc.docs[a] = plc_doc(a, key_a2, ("alice.example.com",))
        apply(writer, [identity_event(a, "alice.example.com", BASE_US + 5_000_000, 2)])
        got = await by_did(ctx, bsky_pb2.GetIdentityByDidRequest(did=a))
        assert plc.requests[a] == 2
        assert json.loads(got.keys)["atproto"]["PublicKeyMultibase"] == key_a2.multibase
        await by_did(ctx, bsky_pb2.GetIdentityByDidRequest(did=a))
        assert plc.requests[a] == 2
        # a replayed older identity event changes nothing
        apply(writer, [identity_event(a, "alice.example.com", BASE_US + 4_000_000, 2)])
        await by_did(ctx, bsky_pb2.GetIdentityByDidRequest(did=a))
        assert plc.requests[a] == 2
        # not found: no document (carol is in the store, not in the directory)
        for d in (c, did("nobody")):
            assert await code_of(by_did(ctx, bsky_pb2.GetIdentityByDidRequest(did=d))) == "not_found"
        # by handle: the store names the DID, the document must claim the handle back
        got_h = await by_handle(ctx, bsky_pb2.GetIdentityByHandleRequest(handle="Alice.Example.com"))
        assert isinstance(got_h, bsky_pb2.GetIdentityByHandleResponse)
        assert (got_h.did, got_h.handle) == (a, "alice.example.com") and got_h.keys == got.keys
        assert await code_of(by_handle(ctx, bsky_pb2.GetIdentityByHandleRequest(handle="notbob.test"))) == \
            "not_found"  # bob's document does not claim it
        assert await code_of(by_handle(ctx, bsky_pb2.GetIdentityByHandleRequest(handle="bob.test"))) == \
            "not_found"  # no identity event named it
        assert await code_of(by_handle(ctx, bsky_pb2.GetIdentityByHandleRequest(handle="carol.test"))) == \
            "not_found"  # no document
        # bad input
        for request in (bsky_pb2.GetIdentityByDidRequest(did=""), bsky_pb2.GetIdentityByDidRequest(did="alice")):
            assert await code_of(by_did(ctx, request)) == "invalid_argument"
        for request in (bsky_pb2.GetIdentityByHandleRequest(handle=""),
                        bsky_pb2.GetIdentityByHandleRequest(handle="not a handle")):
            assert await code_of(by_handle(ctx, request)) == "invalid_argument"
        # a server without the identity service
        bare = AppViewContext(read=reads(pool), services={})
        assert await code_of(by_did(bare, bsky_pb2.GetIdentityByDidRequest(did=a))) == "unavailable"
        # the directory down, nothing cached: unavailable
        plc.status[b] = 503
        fresh = AppViewContext(read=reads(pool), services={"identity": cache_for(session, plc)})
        assert await code_of(by_did(fresh, bsky_pb2.GetIdentityByDidRequest(did=b))) == "unavailable"
    try:
        run(main)
    finally:
        pool.close()
        writer.close()


def reads(pool: ReaderPool) -> Any:
    """``AppViewContext.read`` on a ReaderPool's threads: ``fn(reader, *args)``."""
    async def read(fn: Any, *args: Any) -> Any:
        return await pool.run(lambda reader: fn(reader, *args))
    return read
