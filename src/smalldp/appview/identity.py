"""DID documents for the AppView: a bounded, expiring, single-flight cache (issue 15, 2D).

The official AppView checks a viewer's service-auth JWT with the ``#atproto`` key that
bsky.Service's ``GetIdentityByDid`` returns, finds a blob's PDS from its ``services``, and
so on.  :class:`IdentityCache` resolves DID documents through
``smalldp.verify.HttpDidResolver`` (did:plc from the ``plc_url`` directory, did:web over
HTTPS) and keeps what the RPCs answer, not the documents:

* **Bound and TTL.**  At most ``max_entries`` DIDs (least recently used dropped first; an
  entry is a few hundred bytes).  A document is served for ``ttl_s`` after it was fetched,
  then fetched again; when that refresh fails for a reason that may pass (timeout, 5xx,
  429, transport error) the old copy keeps being served, up to ``stale_s`` after it was
  fetched, and the refresh is retried ``negative_ttl_s`` later.
* **Failures** are cached for ``negative_ttl_s`` too: a definite "no document" (PLC 404 or
  410, a did:web 4xx, a document that is not the DID's or does not have the DID-document
  shape the reference checks) answers ``not_found``; a failure that may pass answers
  ``unavailable``.  Either way the directory is asked again at most once per
  ``negative_ttl_s`` per DID.
* **Single flight.**  Concurrent requests for one DID share one fetch (a separate task:
  a caller that gives up does not cancel it for the others).
* **Identity events.**  The writer keeps, per account, the order time of the identity
  event it applied last (``actor.id_us``).  A caller passes that value (read from the
  store, see ``store.dataplane.notifications.NotificationQueries.identity_state``); the
  cache remembers the value it saw when it fetched, and a higher one means the account
  announced a change after that fetch: the document is fetched again at once (a rotated
  signing key must not wait for the TTL).  Comparing the store's own values, not clocks,
  keeps this right when a PDS clock runs ahead.

**Handles** (:func:`choose_handle`).  The handle comes from the store when it is
verified both ways without any DNS or HTTPS request per call: the account's latest
``#identity`` event named it (relays pass on the handle they resolved for the account),
the store's newest claim of that handle is this DID (``getDidsByHandles``' rule), and the
DID document claims it back (an ``alsoKnownAs`` entry ``at://<handle>``, compared without
case).  Otherwise the handle is the document's first ``at://`` entry, **unverified**, which
is exactly what the reference DataPlane answers (it never verifies it either; the AppView
reads only ``keys`` and ``services`` of this RPC).  ``GetIdentityByHandle`` resolves a
handle through the store's identity events only (no DNS, no HTTPS well-known): the store
must name a DID for it and that DID's document must claim it, else ``not_found``.

**keys / services** are the JSON the reference's ``getResultFromDoc``
(``dist/data-plane/server/routes/identity.js``) builds, byte for byte: per verification
method (service) whose id has a part after ``#``, ``{"<part>": {"Type": type,
"PublicKeyMultibase": multibase or ""}}`` (services: ``{"Type": type, "URL": endpoint}``,
string endpoints only), in document order, a later duplicate id replacing the value in the
earlier one's place, serialized as ``JSON.stringify`` does (:func:`js_json`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from smalldp.verify import DidNotFound, DidResolver, HttpDidResolver, VerifyError

__all__ = [
    "Identity", "IdentityCache", "IdentityError", "choose_handle", "document_problem", "identity_from_document",
    "js_json", "keys_json", "services_json",
]

MAX_ENTRIES = 10_000
TTL_S = 3600.0  # the reference's MemoryCache: stale after an hour ...
STALE_S = 86_400.0  # ... never served after a day
NEGATIVE_TTL_S = 30.0
TIMEOUT_S = 3.0  # the reference's IdResolver timeout

_CONTEXT_V1 = "https://www.w3.org/ns/did/v1"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_SPECIAL = ("http:", "https:", "ws:", "wss:", "ftp:")
_SURROGATE = re.compile("[\ud800-\udfff]")
_C0_AND_SPACE = "".join(map(chr, range(0x21)))


class IdentityError(Exception):
    """A DID without an answer: ``code`` is ``not_found`` (definite) or ``unavailable``
    (may pass: the directory or the did:web host did not answer usefully)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Identity:
    """What the identity RPCs answer about one DID, from its DID document."""

    did: str
    aliases: tuple[str, ...]  # the document's alsoKnownAs at:// entries without "at://", in order
    keys: bytes  # JSON, as the reference builds it
    services: bytes  # JSON, as the reference builds it
    fetched_us: int  # when the document was fetched (wall clock, microseconds)

    @property
    def handle(self) -> str:
        """The document's first ``at://`` alias (the reference's ``getHandle``), or ""."""
        return self.aliases[0] if self.aliases else ""

    def claims(self, handle: str) -> bool:
        """Whether the document claims ``handle`` (compared without case)."""
        wanted = handle.lower()
        return any(alias.lower() == wanted for alias in self.aliases)


# --- documents -----------------------------------------------------------------------------------


def js_json(value: Any) -> bytes:
    """``Buffer.from(JSON.stringify(value))`` for JSON values of strings, objects and arrays:
    no spaces, non-ASCII as UTF-8, control characters escaped as JavaScript does (the same
    short escapes and lowercase ``\\u00xx`` as Python's), lone surrogates as ``\\udxxx``."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if _SURROGATE.search(text):  # only lone ones: json.loads joins valid pairs
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)
    return text.encode("utf-8")


def _fragment(ident: str) -> str:
    """JavaScript's ``ident.split('#').at(1)`` ("" when there is none), as a key the
    reference's object keeps: ``obj["__proto__"] = {...}`` sets the prototype, which
    ``JSON.stringify`` leaves out, so that id counts as none."""
    parts = ident.split("#")
    part = parts[1] if len(parts) > 1 else ""
    return "" if part == "__proto__" else part


def keys_json(doc: Mapping[str, Any]) -> bytes:
    """The reference's ``keys``: ``{"<id after #>": {"Type", "PublicKeyMultibase"}}``."""
    keys: dict[str, dict[str, str]] = {}
    for method in doc.get("verificationMethod") or ():
        part = _fragment(method["id"])
        if part:
            keys[part] = {"Type": method["type"], "PublicKeyMultibase": method.get("publicKeyMultibase") or ""}
    return js_json(keys)


def services_json(doc: Mapping[str, Any]) -> bytes:
    """The reference's ``services``: ``{"<id after #>": {"Type", "URL"}}``, string endpoints."""
    services: dict[str, dict[str, str]] = {}
    for service in doc.get("service") or ():
        part = _fragment(service["id"])
        if part and isinstance(service["serviceEndpoint"], str):
            services[part] = {"Type": service["type"], "URL": service["serviceEndpoint"]}
    return js_json(services)


def _is_url(value: str) -> bool:
    """Roughly ``new URL(value)`` succeeding (zod's ``url()``): after WHATWG's trimming of
    spaces and controls at the ends and of tabs and newlines inside, a scheme, and a host
    for the special schemes."""
    text = value.strip(_C0_AND_SPACE).replace("\t", "").replace("\n", "").replace("\r", "")
    if _SCHEME.match(text) is None:
        return False
    lower = text.lower()
    for scheme in _SPECIAL:
        if lower.startswith(scheme):
            rest = text[len(scheme):].lstrip("/\\")
            host = re.split(r"[/?#\\]", rest, maxsplit=1)[0].rsplit("@", 1)[-1]
            return bool(host) and not any(c in host for c in " <>^|%")
    return True


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _method_ok(value: Any) -> bool:
    return (isinstance(value, dict) and all(isinstance(value.get(k), str) for k in ("id", "type", "controller"))
            and ("publicKeyMultibase" not in value or isinstance(value["publicKeyMultibase"], str))
            and ("publicKeyJwk" not in value or isinstance(value["publicKeyJwk"], dict)))


def document_problem(doc: Mapping[str, Any]) -> str | None:
    """What makes ``doc`` fail the reference's DID-document schema (``@atproto/common-web``'s
    ``didDocument``, which its resolver checks before anything reads the document), or None.

    Absent optional fields are fine; present ones must have their type (JSON null is not
    absent)."""
    if not isinstance(doc.get("id"), str):
        return "id is not a string"
    if "@context" in doc:
        context = doc["@context"]
        if context != _CONTEXT_V1 and not (_strings(context) and all(_is_url(c) for c in context)):
            return "@context is neither the DID v1 context nor a list of URLs"
    if "alsoKnownAs" in doc and not _strings(doc["alsoKnownAs"]):
        return "alsoKnownAs is not a list of strings"
    methods = doc.get("verificationMethod", [])
    if "verificationMethod" in doc and not (isinstance(methods, list) and all(map(_method_ok, methods))):
        return "verificationMethod is not a list of verification methods"
    auth = doc.get("authentication", [])
    if "authentication" in doc and not (isinstance(auth, list)
                                        and all(isinstance(a, str) or _method_ok(a) for a in auth)):
        return "authentication is not a list of ids or verification methods"
    services = doc.get("service", [])
    if "service" in doc and not (isinstance(services, list) and all(
            isinstance(s, dict) and isinstance(s.get("id"), str) and isinstance(s.get("type"), str)
            and isinstance(s.get("serviceEndpoint"), (str, dict)) for s in services)):
        return "service is not a list of services"
    return None


def identity_from_document(did: str, doc: Mapping[str, Any], fetched_us: int) -> Identity:
    """The Identity of a resolved document (``DidNotFound`` when it fails the schema)."""
    problem = document_problem(doc)
    if problem is not None:
        raise DidNotFound("unresolved", f"{did}: DID document: {problem}")
    aliases = tuple(a[5:] for a in doc.get("alsoKnownAs") or () if a.startswith("at://"))
    return Identity(did, aliases, keys_json(doc), services_json(doc), fetched_us)


def choose_handle(identity: Identity, store_handle: str | None, store_owner: str | None) -> str:
    """The handle GetIdentityByDid answers (module docstring): the store's, when its newest
    claim is this DID and the document claims it back; else the document's first alias."""
    if store_handle and store_owner == identity.did and identity.claims(store_handle):
        return store_handle
    return identity.handle


# --- the cache -----------------------------------------------------------------------------------


@dataclass
class _Entry:
    identity: Identity | None  # None: a cached failure (error says which)
    error: IdentityError | None
    at: float  # monotonic time of the fetch (or failure) this entry holds
    id_us: int | None  # the store's identity order time when that fetch started
    retry_at: float = 0.0  # a failed refresh of a positive entry: not before this


class IdentityCache:
    """DID -> Identity, bounded, expiring, single-flight, refreshed after identity events.

    Construct it on the event loop that serves the RPCs, with the server's
    ``aiohttp.ClientSession`` and the ``plc_url`` setting::

        IdentityCache(session, plc_url=settings.plc_url)

    and put it in ``AppViewContext.services["identity"]``.  ``resolver`` replaces the
    HTTP resolver (tests); ``allow_local`` / ``web_scheme`` are HttpDidResolver's (tests:
    a did:web on 127.0.0.1 over http); ``clock`` is the monotonic clock (tests).
    The session belongs to the caller, which closes it.
    """

    def __init__(self, session: aiohttp.ClientSession | None, *, plc_url: str = "https://plc.directory",
                 max_entries: int = MAX_ENTRIES, ttl_s: float = TTL_S, stale_s: float = STALE_S,
                 negative_ttl_s: float = NEGATIVE_TTL_S, timeout_s: float = TIMEOUT_S,
                 resolver: DidResolver | None = None, allow_local: bool = False, web_scheme: str = "https",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if resolver is None:
            if session is None:
                raise ValueError("IdentityCache needs an aiohttp session or a resolver")
            resolver = HttpDidResolver(session, plc_url=plc_url, timeout_s=timeout_s, allow_local=allow_local,
                                       web_scheme=web_scheme)
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.resolver = resolver
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.stale_s = max(stale_s, ttl_s)
        self.negative_ttl_s = negative_ttl_s
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Identity]] = {}
        # counters (for tests and metrics): answers from the cache, fetches started, fetches failed
        self.hits = 0
        self.fetches = 0
        self.failures = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry (fetches under way still complete and are kept)."""
        self._entries.clear()

    async def get(self, did: str, id_us: int | None = None) -> Identity:
        """The Identity of ``did``; ``id_us`` is the store's ``actor.id_us`` for it (None when
        the store has none).  Raises IdentityError."""
        found = self.cached(did, id_us)
        if isinstance(found, Identity):
            return found
        if isinstance(found, IdentityError):
            raise IdentityError(found.code, found.message)
        task = self._inflight.get(did)
        if task is None:
            task = asyncio.ensure_future(self._fetch(did, id_us))
            self._inflight[did] = task
            task.add_done_callback(lambda done: self._done(did, done))
        return await asyncio.shield(task)

    def cached(self, did: str, id_us: int | None = None) -> Identity | IdentityError | None:
        """What ``get`` answers from the cache, without a fetch and without a coroutine (a
        view's GetActors asks about dozens to a thousand accounts, nearly all cached): the
        Identity, the cached failure (``get`` raises it), or None when ``get`` would fetch."""
        entry = self._entries.get(did)
        if entry is None:
            return None
        now = self.clock()
        newer_event = id_us is not None and (entry.id_us is None or id_us > entry.id_us)
        if entry.identity is not None:
            fresh = now - entry.at < self.ttl_s and not newer_event
            # a refresh failed a moment ago: serve the copy we have until the retry
            waiting = entry.retry_at > now and now - entry.at < self.stale_s
            if fresh or waiting:
                self._entries.move_to_end(did)
                self.hits += 1
                return entry.identity
        elif now - entry.at < self.negative_ttl_s and not newer_event:
            self._entries.move_to_end(did)
            self.hits += 1
            assert entry.error is not None
            return entry.error
        return None

    def handle_hint(self, did: str) -> str | None:
        """The handle the DID's cached document gives (its first ``at://`` alias, lower
        case), whether or not the entry is fresh; None without one. GetActors reads the
        owners of such handles with the accounts, in one read."""
        entry = self._entries.get(did)
        return None if entry is None or entry.identity is None else entry.identity.handle.lower()

    def _done(self, did: str, task: asyncio.Future[Identity]) -> None:
        if self._inflight.get(did) is task:
            del self._inflight[did]
        if not task.cancelled():
            task.exception()  # retrieved: an error nobody awaited is not logged as lost

    async def _fetch(self, did: str, id_us: int | None) -> Identity:
        self.fetches += 1
        try:
            doc = await self.resolver.resolve(did)
            identity = identity_from_document(did, doc, time.time_ns() // 1000)
        except DidNotFound as exc:
            self.failures += 1
            error = IdentityError("not_found", f"identity not found: {exc}")
            self._put(did, _Entry(None, error, self.clock(), id_us))
            raise error from None
        except VerifyError as exc:
            self.failures += 1
            now = self.clock()
            old = self._entries.get(did)
            if old is not None and old.identity is not None and now - old.at < self.stale_s:
                old.retry_at = now + self.negative_ttl_s  # keep serving it; ask again later
                return old.identity
            error = IdentityError("unavailable", f"identity unavailable: {exc}")
            self._put(did, _Entry(None, error, now, id_us))
            raise error from None
        self._put(did, _Entry(identity, None, self.clock(), id_us))
        return identity

    def _put(self, did: str, entry: _Entry) -> None:
        self._entries[did] = entry
        self._entries.move_to_end(did)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
