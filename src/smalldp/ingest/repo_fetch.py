"""Fetching repos for `smalldp backfill` (issue 12): names to PDSes, getRepo CARs to files.

* **Handles** resolve as ATProto says: first the DNS TXT records of ``_atproto.<handle>``
  (dnspython; the system's resolver from ``/etc/resolv.conf``, or ``dns_nameserver`` in
  tests).  The ``did=<DID>`` values with a valid DID decide: one DID (repeated or not) wins,
  several different DIDs fail the handle; other TXT strings are ignored.  No such value,
  NXDOMAIN, no answer, SERVFAIL or no answer within ``timeout_s``: then HTTPS
  (``https://<handle>/.well-known/atproto-did``).  A system without a usable resolv.conf
  resolves over HTTPS only (logged once, at debug).  The system's resolver is not asked about
  special-use names (``.test``, ``.example``, ``.invalid``, ``.localhost``..., RFC 6761):
  the public DNS never has them.  Either way the DID document must claim the handle back
  (``alsoKnownAs`` ``at://<handle>``); a DID named by DNS that does not is a failure, not a
  reason to try HTTPS.
* **DIDs** resolve with ``verify.HttpDidResolver`` (did:plc from the ``plc_url`` directory,
  did:web over HTTPS); the PDS is the document's ``#atproto_pds`` service
  (``verify.pds_endpoint``).  A PDS on ``localhost`` or an IP literal, or not https, is refused
  unless ``allow_local`` (tests, benchmarks): a DID must not aim the appliance at its own network.
* **getRepo** streams the CAR into a temporary file (``tmp_dir``, in the data directory), at
  most ``max_bytes`` (a bigger CAR is refused, by its Content-Length when it says so).
* **Politeness.**  Every request has a connect and a read timeout (``timeout_s`` without a
  byte: a stalled server fails, a slow big download does not).  429 and 503 wait for their
  ``Retry-After`` (seconds or an HTTP date, at most ``max_wait_s``), other 5xx and transport
  errors back off exponentially from ``backoff_s``; after ``retries`` retries the fetch fails.
  A host that asked to wait is not asked again by any fetch before then.

Failures raise ``FetchError`` with a reason meant for ``smalldp backfill --status``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar
from urllib.parse import urlsplit

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.rdtypes.txtbase
import dns.resolver
import orjson

from smalldp.events import valid_did, valid_handle
from smalldp.verify import DidResolver, VerifyError, is_local_host, pds_endpoint

_T = TypeVar("_T")
_CHUNK = 1 << 16  # bytes written to the temporary file at a time
_SMALL = 256 * 1024  # largest answer kept in memory (handle, listRepos page, an error's body)
HANDLE_URL = "https://{handle}/.well-known/atproto-did"
RESOLV_CONF = "/etc/resolv.conf"  # the system's DNS resolver (tests point it at a missing file)
# Special-use top-level domains (RFC 6761, 6762, 9476; ATProto's disallowed handle TLDs): the
# public DNS has no records under them, so the system's resolver is not asked.
SPECIAL_TLDS = frozenset({"test", "example", "invalid", "localhost", "local", "internal", "alt", "onion"})

log = logging.getLogger(__name__)


class FetchError(Exception):
    """A repo that can't be fetched; ``reason`` says why (HTTP status and error, timeout...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FetchPolicy:
    """Timeouts, retries and limits of every request (the backfill_* settings)."""

    timeout_s: float = 30.0
    max_bytes: int = 512 << 20
    retries: int = 4
    backoff_s: float = 0.5
    max_wait_s: float = 120.0
    allow_local: bool = False


@dataclass(frozen=True)
class FetchedRepo:
    """A getRepo CAR on disk (the caller removes ``path``)."""

    did: str
    pds: str
    path: Path
    size: int
    fetched_us: int  # wall clock when the answer began: the time_us of its operations
    document: Mapping[str, Any]  # the DID document the PDS came from (its signing key, for verify_commits)


@dataclass(frozen=True)
class ListedRepo:
    """One entry of a relay's listRepos page; ``inactive`` the status when not active."""

    did: str
    inactive: str | None


class RepoFetcher:
    """Resolves names and fetches repos over one aiohttp session, politely (module docstring)."""

    def __init__(self, session: aiohttp.ClientSession, resolver: DidResolver, tmp_dir: Path,
                 policy: FetchPolicy = FetchPolicy(), handle_url: str = HANDLE_URL,
                 dns_nameserver: tuple[str, int] | None = None) -> None:
        self.session = session
        self.resolver = resolver
        self.tmp_dir = tmp_dir
        self.policy = policy
        self.handle_url = handle_url  # tests point it at a local server
        self.dns_nameserver = dns_nameserver  # (host, port) of the DNS server (tests); None: the system's
        self._dns: dns.asyncresolver.Resolver | None = None
        self._dns_tried = False  # _dns made, or found impossible (no usable resolv.conf)
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.timeout_s,
                                             sock_read=policy.timeout_s)
        self._not_before: dict[str, float] = {}  # host -> monotonic time it asked us to wait for
        self.retried = 0  # requests repeated (429, 5xx, transport errors), for the summary

    # --- names ---------------------------------------------------------------------------

    async def resolve_handle(self, handle: str) -> str:
        """The DID ``handle`` names, checked both ways (the document claims the handle)."""
        handle = handle.lower()
        if not valid_handle(handle):
            raise FetchError(f"{handle[:80]!r} is neither a DID nor a handle")
        did = await self._dns_did(handle)
        source = f"DNS TXT _atproto.{handle}"
        if did is None:
            url = self.handle_url.format(handle=handle)
            body = await self._request(url, None, _read_small)
            did = body.decode("utf-8", "replace").strip()
            if not valid_did(did):
                raise FetchError(f"handle {handle}: {url} does not answer a DID")
            source = url
        doc = await self._document(did)
        aka = doc.get("alsoKnownAs")
        if not isinstance(aka, list) or f"at://{handle}" not in aka:
            raise FetchError(f"handle {handle}: the DID document of {did} (named by {source}) does not claim it")
        return did

    async def _dns_did(self, handle: str) -> str | None:
        """The DID of ``handle``'s ``_atproto`` TXT records, or None: then HTTPS decides."""
        resolver = self._dns_resolver(handle)
        if resolver is None:
            return None
        name = f"_atproto.{handle}."
        try:
            answer = await resolver.resolve(name, "TXT")
        except (dns.exception.DNSException, OSError) as exc:  # NXDOMAIN, NoAnswer, timeout, SERVFAIL...
            log.debug("handle %s: no DID in DNS (%s: %s), trying HTTPS", handle, type(exc).__name__, exc)
            return None
        dids = set()
        for rdata in answer:
            if isinstance(rdata, dns.rdtypes.txtbase.TXTBase):
                text = b"".join(rdata.strings).decode("utf-8", "replace").strip()
                if text.startswith("did=") and valid_did(did := text[4:].strip()):
                    dids.add(did)
        if len(dids) > 1:
            listed = ", ".join(sorted(dids))
            raise FetchError(f"handle {handle}: DNS TXT {name[:-1]} names {len(dids)} different DIDs "
                             f"({listed[:300]})")
        if not dids:
            log.debug("handle %s: no did= value in the TXT records of %s, trying HTTPS", handle, name)
        return dids.pop() if dids else None

    def _dns_resolver(self, handle: str) -> dns.asyncresolver.Resolver | None:
        """The DNS resolver to ask about ``handle``, or None (HTTPS only); made once."""
        if self.dns_nameserver is None and handle.rsplit(".", 1)[-1] in SPECIAL_TLDS:
            return None
        if not self._dns_tried:
            self._dns_tried = True
            try:
                if self.dns_nameserver is None:
                    resolver = dns.asyncresolver.Resolver(filename=RESOLV_CONF)
                else:
                    resolver = dns.asyncresolver.Resolver(configure=False)
                    resolver.nameservers = [self.dns_nameserver[0]]
                    resolver.port = self.dns_nameserver[1]
            except dns.resolver.NoResolverConfiguration as exc:
                log.debug("no DNS resolver (%s): handles resolve over HTTPS only", exc)
                return None
            resolver.lifetime = self.policy.timeout_s  # the whole query, retransmissions included
            self._dns = resolver
        return self._dns

    async def _document(self, did: str) -> dict[str, Any]:
        try:
            return dict(await self.resolver.resolve(did))
        except VerifyError as exc:
            detail = str(exc).removeprefix(f"{exc.kind}: ")
            raise FetchError(f"DID does not resolve: {detail}") from None

    async def pds_of(self, did: str) -> str:
        """The PDS base URL of ``did``, from its DID document."""
        return self._pds_in(await self._document(did))

    def _pds_in(self, document: Mapping[str, Any]) -> str:
        endpoint = pds_endpoint(document)
        if endpoint is None:
            raise FetchError("DID document has no #atproto_pds service")
        parts = urlsplit(endpoint)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise FetchError(f"PDS endpoint {endpoint[:120]!r} is not an http(s) URL")
        if not self.policy.allow_local and (parts.scheme != "https" or is_local_host(parts.hostname)):
            raise FetchError(f"PDS endpoint {endpoint[:120]!r} is local or not https")
        return endpoint.rstrip("/")

    # --- repos -------------------------------------------------------------------------------

    async def fetch_repo(self, did: str) -> FetchedRepo:
        """Download ``did``'s repo (com.atproto.sync.getRepo) into a temporary file."""
        document = await self._document(did)
        pds = self._pds_in(document)
        url = f"{pds}/xrpc/com.atproto.sync.getRepo"
        fd, name = tempfile.mkstemp(prefix="getRepo-", suffix=".car", dir=self.tmp_dir)
        os.close(fd)
        path = Path(name)
        started = [0]

        async def download(resp: aiohttp.ClientResponse) -> int:
            started[0] = time.time_ns() // 1000
            cap = self.policy.max_bytes
            if resp.content_length is not None and resp.content_length > cap:
                raise FetchError(f"CAR of {resp.content_length:,} bytes is over the {cap:,}-byte cap")
            size = 0
            with path.open("wb") as out:  # again from the start on a retry
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                    if size > cap:
                        raise FetchError(f"CAR over the {cap:,}-byte cap (stopped reading)")
                    out.write(chunk)
            return size

        try:
            size = await self._request(url, {"did": did}, download)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return FetchedRepo(did, pds, path, size, started[0], document)

    async def list_repos(self, relay: str) -> AsyncIterator[list[ListedRepo]]:
        """Every repo a relay lists (com.atproto.sync.listRepos), a page at a time."""
        url = relay.rstrip("/") + "/xrpc/com.atproto.sync.listRepos"
        cursor: str | None = None
        while True:
            params = {"limit": "1000"} if cursor is None else {"limit": "1000", "cursor": cursor}
            page = _json_object(await self._request(url, params, _read_small), url)
            repos = page.get("repos")
            if not isinstance(repos, list):
                raise FetchError(f"listRepos at {url}: no repos list")
            listed = []
            for repo in repos:
                did = repo.get("did") if isinstance(repo, dict) else None
                if isinstance(did, str) and valid_did(did):
                    active = repo.get("active", True)
                    status = repo.get("status") or "inactive"
                    listed.append(ListedRepo(did, None if active is not False else f"{status} on the relay"))
            yield listed
            next_cursor = page.get("cursor")
            if not repos or not isinstance(next_cursor, str) or next_cursor == cursor:
                return
            cursor = next_cursor

    # --- one polite request ------------------------------------------------------------------

    async def _request(self, url: str, params: dict[str, str] | None,
                       consume: Callable[[aiohttp.ClientResponse], Awaitable[_T]]) -> _T:
        """GET ``url`` and hand a 200 answer to ``consume``, retrying as the module says."""
        policy = self.policy
        host = urlsplit(url).netloc
        attempt = 0
        while True:
            wait_until = self._not_before.get(host, 0.0)
            if wait_until > time.monotonic():
                await asyncio.sleep(wait_until - time.monotonic())
            backoff = policy.backoff_s * (2 ** attempt)
            try:
                async with self.session.get(url, params=params, timeout=self.timeout,
                                            allow_redirects=False) as resp:
                    if resp.status == 200:
                        return await consume(resp)
                    if resp.status != 429 and resp.status < 500:
                        raise FetchError(f"HTTP {resp.status}{await _xrpc_error(resp)} from {host}")
                    why = f"HTTP {resp.status}{await _xrpc_error(resp)} from {host}"
                    if resp.status in (429, 503):
                        asked = _retry_after(resp.headers.get("Retry-After"))
                        if asked is not None:
                            if asked > policy.max_wait_s:
                                raise FetchError(f"{why}: Retry-After {asked:.0f} s is over {policy.max_wait_s:.0f} s")
                            backoff = asked
                            self._not_before[host] = time.monotonic() + asked
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                why = f"{type(exc).__name__} from {host}" + (f": {exc}" if str(exc) else "")
            if attempt >= policy.retries:
                raise FetchError(why + (f" ({attempt + 1} tries)" if attempt else ""))
            attempt += 1
            self.retried += 1
            await asyncio.sleep(backoff)


async def _read_small(resp: aiohttp.ClientResponse) -> bytes:
    body = await resp.content.read(_SMALL + 1)
    if len(body) > _SMALL:
        raise FetchError(f"answer from {resp.url.host} larger than {_SMALL:,} bytes")
    return body


def _json_object(body: bytes, url: str) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FetchError(f"{url}: answer is not JSON") from None
    if not isinstance(value, dict):
        raise FetchError(f"{url}: answer is not a JSON object")
    return value


async def _xrpc_error(resp: aiohttp.ClientResponse) -> str:
    """' RepoTakendown: message' from an XRPC error body, or ''."""
    try:
        value = orjson.loads(await resp.content.read(4096))
    except (orjson.JSONDecodeError, aiohttp.ClientError, asyncio.TimeoutError):
        return ""
    if not isinstance(value, dict) or not isinstance(value.get("error"), str):
        return ""
    message = value.get("message")
    return f" {value['error'][:80]}" + (f": {message[:200]}" if isinstance(message, str) and message else "")


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (a number or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
