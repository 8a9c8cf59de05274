"""The official AppView (@atproto/bsky, pinned in conformance/node) on a DataPlane, for the
conformance and differential tests (tests/test_appview_conformance.py, scripts/conformance).

Everything runs on 127.0.0.1; nothing reaches the network (the node processes are started
with conformance/node/loopback_guard.cjs, which refuses any other address and counts it):

* ``FakePlc``: a real aiohttp server serving the DID documents of a stream's accounts, each
  with a secp256k1 ``#atproto`` key the test holds (derived from the DID), and
  ``/_handle/<handle>`` (handle -> DID, for the reference indexer's handle check);
* ``service_jwt``: a service-auth JWT (ES256K) as a PDS mints one for a logged-in viewer:
  ``iss`` the viewer's DID, ``aud`` the AppView's DID, ``lxm`` the method, ``exp``;
* ``Postgres``: a throwaway cluster (Debian's postgresql: initdb, pg_ctl) in a temp dir on a
  free port, run as the ``postgres`` user when we are root (postgres refuses root);
* ``ReferenceDataPlane``: conformance/node/dataplane.cjs, @atproto/bsky's own DataPlane
  routes over that Postgres, its IndexingService fed the stream one event at a time;
* ``SmalldpDataPlane``: ``smalldp import`` of the same stream, then ``smalldp serve
  --no-ingest`` with its gRPC port (``--grpc-listen``) and ``--plc-url`` the fake PLC;
* ``AppView``: conformance/node/appview.cjs, BskyAppView against one of them;
* ``Stream`` (what the events hold: accounts, handles, live records) and the queries and the
  field-by-field comparison of two AppViews' answers (``compare``), with ``ALLOWED``: the
  fields allowed to differ, each with its reason.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import glob
import hashlib
import json
import os
import pwd
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import aiohttp
from aiohttp import web

from thread_web import ThreadedWebServer
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "conformance" / "node"
SCRIPTS = ROOT / "scripts"
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "fixtures" / "jetstream" / "corpus_expected_v1.jsonl"

SERVER_DID = "did:web:appview.smalldp.test"  # the AppView's DID: the `aud` of viewer JWTs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- keys, JWTs

# secp256k1's group order, and half of it (a low-S signature has s <= n/2)
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58encode(data: bytes) -> str:
    value = int.from_bytes(data, "big")
    out = ""
    while value:
        value, digit = divmod(value, 58)
        out = _B58[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_for(did: str) -> ec.EllipticCurvePrivateKey:
    """The account's secp256k1 signing key, derived from its DID (so every process of a run
    agrees, and no key list needs storing)."""
    secret = int.from_bytes(hashlib.sha256(b"smalldp-conformance-key:" + did.encode()).digest(), "big")
    return ec.derive_private_key(secret % (_N - 1) + 1, ec.SECP256K1())


def multikey(key: ec.EllipticCurvePrivateKey) -> str:
    """publicKeyMultibase of a secp256k1 key: 'z' + base58btc(0xe7 0x01 + compressed point)."""
    point = key.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    return "z" + b58encode(b"\xe7\x01" + point)


def service_jwt(iss: str, aud: str, lxm: str | None, *, exp_s: int = 300,
                key: ec.EllipticCurvePrivateKey | None = None, now: float | None = None) -> str:
    """A service-auth JWT as a PDS mints it (@atproto/xrpc-server createServiceJwt):
    header {typ: JWT, alg: ES256K}; payload {iat, iss, aud, exp, lxm, jti}; signature the
    64-byte r||s (low-S) ECDSA-SHA256 of "header.payload" with the issuer's #atproto key.

    What the AppView checks (auth-verifier.js, xrpc-server verifyJwt): three parts; typ not
    at+jwt / refresh+jwt / dpop+jwt; iss, aud strings, exp a number in the future; aud ==
    its serverDid (or an alternate audience); lxm == the called method's NSID; iss a DID
    (or DID#fragment); the signature against the key GetIdentityByDid returns for iss
    (`keys.atproto`), retried once with a fresh key."""
    key = key or key_for(iss)
    iat = int(now if now is not None else time.time())
    payload: dict[str, Any] = {"iat": iat, "iss": iss, "aud": aud, "exp": iat + exp_s,
                               "jti": uuid.uuid4().hex}
    if lxm is not None:
        payload["lxm"] = lxm
    header = {"typ": "JWT", "alg": "ES256K"}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     b64url(json.dumps(payload, separators=(",", ":")).encode()))
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    if s > _N // 2:
        s = _N - s
    return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


# ----------------------------------------------------------------------------- the stream

_DID_WEB = re.compile(rb"did:web:[a-z0-9.\-%]+")
_DID_PLC = re.compile(r"did:plc:[a-z2-7]{24}")


def plc_for_web(did_web: str) -> str:
    """A did:plc standing in for a did:web (both sides would fetch https://host/... for a
    did:web: off loopback). Deterministic, 24 base32 characters."""
    digest = hashlib.sha256(did_web.encode()).digest()
    return "did:plc:" + base64.b32encode(digest).decode().lower()[:24]


def loopback_lines(lines: Iterable[bytes]) -> list[bytes]:
    """Jetstream v1 lines with every did:web rewritten to a stand-in did:plc."""
    return [_DID_WEB.sub(lambda m: plc_for_web(m.group().decode()).encode(), line) for line in lines]


def generated_lines(n_events: int, seed: int = 7, **params: Any) -> list[bytes]:
    """scripts/gen_events.py's stream (its DataPlane accounts on: viewers who follow active
    posters, long threads, lists)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    from gen_events import generate  # type: ignore[import-not-found]

    return list(generate(n_events, seed=seed, **params))


def iso_us(time_us: int) -> str:
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=time_us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond // 1000:03d}Z"


@dataclass
class Stream:
    """A stream of Jetstream v1 events and what it holds, for choosing what to ask and for
    sanity checks. The replay here is deliberately simple (arrival order, no rev checks):
    good enough to say "this follow exists", not a model of either DataPlane."""

    lines: list[bytes]
    handles: dict[str, str] = field(default_factory=dict)  # DID -> handle (identity events, else made up)
    dids: set[str] = field(default_factory=set)  # every DID the stream names anywhere
    actors: set[str] = field(default_factory=set)  # DIDs with events of their own
    deleted: set[str] = field(default_factory=set)  # accounts whose last status is deleted
    live: dict[str, dict[str, Any]] = field(default_factory=dict)  # at-uri -> record
    counts: Counter = field(default_factory=Counter)

    @classmethod
    def of(cls, lines: Iterable[bytes]) -> Stream:
        s = cls(loopback_lines(lines))
        by_did: dict[str, set[str]] = defaultdict(set)
        for raw in s.lines:
            s.dids.update(_DID_PLC.findall(raw.decode()))
            e = json.loads(raw)
            did, kind = e["did"], e["kind"]
            s.actors.add(did)
            s.counts[kind] += 1
            if kind == "identity":
                handle = e["identity"].get("handle")
                if handle:
                    s.handles[did] = handle.lower()
            elif kind == "account":
                acc = e["account"]
                if not acc.get("active") and acc.get("status") == "deleted":
                    s.deleted.add(did)
                    for uri in by_did.pop(did, set()):
                        s.live.pop(uri, None)
                else:
                    s.deleted.discard(did)
            else:
                c = e["commit"]
                uri = f"at://{did}/{c['collection']}/{c['rkey']}"
                s.counts[f"{c['collection']} {c['operation']}"] += 1
                if c["operation"] == "delete":
                    s.live.pop(uri, None)
                    by_did[did].discard(uri)
                else:
                    s.live[uri] = c["record"]
                    by_did[did].add(uri)
        taken = set(s.handles.values())
        for did in sorted(s.dids):
            if did not in s.handles:
                handle = f"{did[8:20]}.smalldp.test"
                if handle not in taken:
                    s.handles[did] = handle
                    taken.add(handle)
        # a handle two accounts claim: the later claim in the stream keeps it (the reference's
        # indexHandle takes it away from the earlier holder); the earlier gets a made-up one
        owners: dict[str, str] = {}
        for did, handle in s.handles.items():
            owners[handle] = did
        for did, handle in list(s.handles.items()):
            if owners[handle] != did:
                s.handles[did] = f"{did[8:20]}.smalldp.test"
        return s

    def write(self, path: Path) -> Path:
        path.write_bytes(b"".join(line + b"\n" for line in self.lines))
        return path

    # what exists (for choosing queries and for sanity checks)

    def records(self, collection: str) -> Iterator[tuple[str, dict[str, Any]]]:
        marker = f"/{collection}/"
        for uri, rec in self.live.items():
            if marker in uri:
                yield uri, rec

    def follows_of(self, did: str) -> set[str]:
        return {rec["subject"] for uri, rec in self.records("app.bsky.graph.follow")
                if uri.startswith(f"at://{did}/") and isinstance(rec.get("subject"), str)}

    def followers_of(self, did: str) -> set[str]:
        return {uri.split("/")[2] for uri, rec in self.records("app.bsky.graph.follow")
                if rec.get("subject") == did}

    def blocking(self, a: str, b: str) -> bool:
        """Does ``a`` block ``b``: a live block record, or a live listblock of a list with a
        live listitem of ``b``."""
        for uri, rec in self.records("app.bsky.graph.block"):
            if uri.startswith(f"at://{a}/") and rec.get("subject") == b:
                return True
        lists = {rec.get("subject") for uri, rec in self.records("app.bsky.graph.listblock")
                 if uri.startswith(f"at://{a}/")}
        return any(rec.get("list") in lists and rec.get("subject") == b
                   for _, rec in self.records("app.bsky.graph.listitem"))

    def pair_rkeys(self, collection: str) -> dict[tuple[str, str], list[str]]:
        """(author, subject) -> the rkeys of the author's live records of ``collection``
        naming that subject (a DID, or ``.subject.uri``), oldest first (TIDs sort as
        strings); memoized."""
        memo = self.__dict__.setdefault("_pairs", {})
        if collection not in memo:
            pairs: dict[tuple[str, str], list[str]] = defaultdict(list)
            for uri, rec in self.records(collection):
                subject = rec.get("subject")
                if isinstance(subject, dict):
                    subject = subject.get("uri")
                if isinstance(subject, str):
                    pairs[(uri.split("/")[2], subject)].append(uri.rsplit("/", 1)[1])
            memo[collection] = {pair: sorted(rkeys) for pair, rkeys in pairs.items()}
        return memo[collection]  # type: ignore[no-any-return]

    def subjects(self, collection: str) -> Counter:
        """subject at-uri -> how many live records of ``collection`` point at it."""
        return Counter(rec["subject"]["uri"] for _, rec in self.records(collection)
                       if isinstance(rec.get("subject"), dict) and "uri" in rec["subject"])


# ----------------------------------------------------------------------------- fake PLC

@dataclass
class FakePlc(ThreadedWebServer):
    """DID documents for every DID of a stream, on 127.0.0.1, in its own thread and loop.

    ``GET /<did>``: the document (alsoKnownAs at://<handle>, a #atproto Multikey from
    ``key_for(did)``, #atproto_pds this server); 404 for a DID it does not know.
    ``GET /_handle/<handle>``: the DID as text (the reference indexer's handle check).
    ``GET /xrpc/com.atproto.sync.getLatestCommit``: RepoNotFound for a deleted account (the
    reference's deleteActor asks the PDS whether the repo is really gone), else a commit.
    ``requests`` counts what was asked, by route."""

    handles: dict[str, str]  # DID -> handle; its keys are the DIDs known
    deleted: set[str] = field(default_factory=set)
    port: int = 0
    requests: Counter = field(default_factory=Counter)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def doc(self, did: str) -> dict[str, Any]:
        return {
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1",
                         "https://w3id.org/security/suites/secp256k1-2019/v1"],
            "id": did,
            "alsoKnownAs": [f"at://{self.handles[did]}"],
            "verificationMethod": [{"id": f"{did}#atproto", "type": "Multikey", "controller": did,
                                    "publicKeyMultibase": multikey(key_for(did))}],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                         "serviceEndpoint": self.url}],
        }

    async def _doc(self, request: web.Request) -> web.Response:
        did = request.match_info["did"]
        self.requests["doc"] += 1
        if did not in self.handles:
            return web.json_response({"message": f"DID not registered: {did}"}, status=404)
        return web.json_response(self.doc(did))

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests["handle"] += 1
        handle = request.match_info["handle"].lower()
        for did, h in self.handles.items():
            if h == handle:
                return web.Response(text=did)
        return web.Response(status=404, text="no such handle")

    async def _latest_commit(self, request: web.Request) -> web.Response:
        self.requests["getLatestCommit"] += 1
        did = request.query.get("did", "")
        if did in self.deleted or did not in self.handles:
            return web.json_response({"error": "RepoNotFound", "message": f"Could not find repo: {did}"},
                                     status=400)
        return web.json_response({"cid": "bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua",
                                  "rev": "3l3qo2vutsw2b"})

    runner_options = {"access_log": None}

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/_handle/{handle}", self._handle)
        app.router.add_get("/xrpc/com.atproto.sync.getLatestCommit", self._latest_commit)
        app.router.add_get("/{did:did:[^/]+}", self._doc)


# ----------------------------------------------------------------------------- processes

class HarnessError(AssertionError):
    pass


def node_bin() -> str:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "@atproto" / "bsky" / "package.json").is_file():
        raise HarnessError("node or @atproto/bsky missing: run scripts/_node_deps.sh (Debian's nodejs, "
                           "npm ci in conformance/node)")
    return node


class NodeProcess:
    """A conformance/node script with loopback_guard.cjs preloaded: started with an
    environment, ready when it prints its JSON line on stdout, stopped by closing its
    stdin. Its stderr goes to ``log``."""

    script = ""

    def __init__(self, env: dict[str, str], log: Path, timeout: float = 120) -> None:
        self.log = log
        full = {k: v for k, v in os.environ.items()
                if not k.startswith(("BSKY_", "SMALLDP_", "REF_", "LOG_")) and k not in ("NODE_ENV", "MOD_SERVICE_DID")}
        full.update(env)
        started = time.monotonic()
        with log.open("ab") as err:
            self.proc = subprocess.Popen([node_bin(), "-r", "./loopback_guard.cjs", self.script], cwd=NODE_DIR,
                                         env=full, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise HarnessError(f"{self.script} did not start within {timeout:.0f} s "
                               f"(exit {self.proc.returncode}):\n{self.log_tail()}")
        self.info: dict[str, Any] = json.loads(line)
        self.port: int = self.info["port"]
        self.start_s = time.monotonic() - started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def blocked(self) -> list[str]:
        """What loopback_guard.cjs refused (should be nothing)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.startswith("loopback_guard: blocked")]

    def stop(self) -> int:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AppView(NodeProcess):
    """BskyAppView (conformance/node/appview.cjs) against ``dataplane_url``."""

    script = "appview.cjs"

    def __init__(self, dataplane_url: str, plc_url: str, log: Path, *, http_version: str = "2",
                 validate: bool = True, server_did: str = SERVER_DID) -> None:
        self.server_did = server_did
        super().__init__({
            "BSKY_DATAPLANE_URLS": dataplane_url,
            "BSKY_DATAPLANE_HTTP_VERSION": http_version,
            "BSKY_DID_PLC_URL": plc_url,
            "BSKY_SERVER_DID": server_did,
            # a fixed service key: only used to sign what the AppView itself sends out
            "BSKY_SERVICE_SIGNING_KEY": hashlib.sha256(b"smalldp-conformance-appview").hexdigest(),
            "BSKY_PORT": "0",
            "SMALLDP_APPVIEW_VALIDATE": "1" if validate else "0",
            # the AppView's own log (pino) of warnings and errors: why a view answered 500
            "LOG_ENABLED": "true", "LOG_LEVEL": "warn", "LOG_DESTINATION": str(log.with_suffix(".pino.log")),
        }, log)
        self.pino_log = log.with_suffix(".pino.log")

    def errors(self, n: int = 20) -> list[str]:
        """The last ``n`` errors the AppView logged, shortened: message, nsid, cause."""
        out = []
        try:
            lines = self.pino_log.read_text(errors="replace").splitlines()
        except OSError:
            return out
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("level", 0) >= 50:
                err = rec.get("err") or {}
                out.append(f"{rec.get('msg')}: {err.get('type', '')} {err.get('message', '')}".strip()[:400])
        return out[-n:]


class ReferenceDataPlane(NodeProcess):
    """@atproto/bsky's DataPlane (conformance/node/dataplane.cjs) on ``db_url``, after
    indexing ``events`` one at a time. It speaks gRPC over HTTP/1.1 only: its AppView
    needs http_version '1.1'."""

    script = "dataplane.cjs"

    def __init__(self, db_url: str, plc_url: str, events: Path, log: Path, timeout: float = 1800) -> None:
        super().__init__({"REF_DB_URL": db_url, "REF_PLC_URL": plc_url, "REF_EVENTS": str(events),
                          "REF_PORT": "0"}, log, timeout=timeout)
        self.indexed: dict[str, Any] = self.info.get("indexed") or {}


# ----------------------------------------------------------------------------- Postgres

def postgres_bindir() -> Path | None:
    """Debian's /usr/lib/postgresql/<major>/bin (the newest), else initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class Postgres:
    """A throwaway cluster: initdb in a temp dir, pg_ctl start on 127.0.0.1:<free port> with
    its socket in the data dir, durability off (fsync, synchronous_commit, full_page_writes:
    a test database). Postgres refuses to run as root, so under root (CI) the cluster
    belongs to the ``postgres`` user Debian's package creates (else ``nobody``) and its
    commands run as that user."""

    def __init__(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise HarnessError("no PostgreSQL (initdb) here: scripts/_system_deps.sh installs Debian's postgresql")
        self.bindir = bindir
        self.user: tuple[int, int] | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.user = (pw.pw_uid, pw.pw_gid)
                break
            if self.user is None:
                raise HarnessError("running as root and no postgres/nobody user to run PostgreSQL as")
        self.dir = Path(tempfile.mkdtemp(prefix="smalldp-pg-"))
        if self.user:
            os.chown(self.dir, *self.user)
        self.data = self.dir / "data"
        self.port = free_port()
        self.log = self.dir / "postgres.log"
        self.started = False

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        kw: dict[str, Any] = {}
        if self.user:
            kw = {"user": self.user[0], "group": self.user[1], "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "TZ": "UTC",
               "HOME": str(self.dir)}
        proc = subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=timeout, cwd=self.dir, env=env, **kw)
        if proc.returncode != 0:
            raise HarnessError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}\n"
                               f"{self.log.read_text() if self.log.exists() else ''}")
        return proc

    def start(self) -> Postgres:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")
        self.started = True
        return self

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if self.started:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
            finally:
                self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Postgres:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- smalldp

class SmalldpDataPlane:
    """``smalldp import`` of the stream into ``workdir/data``, then ``smalldp serve
    --no-ingest`` answering bsky.Service on a free gRPC port (HTTP/2), resolving DIDs
    through the fake PLC. Its log is ``workdir/serve.log``."""

    def __init__(self, events: Path, plc_url: str, workdir: Path, timeout: float = 120) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "serve.log"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SMALLDP_") and k not in ("STATE_DIRECTORY", "NOTIFY_SOCKET")}
        env["SMALLDP_LOG_LEVEL"] = "warning"
        started = time.monotonic()
        imp = subprocess.run([sys.executable, "-m", "smalldp.cli", "import", "--json", "--data-dir", str(self.data),
                              str(events)], env=env, capture_output=True, text=True, timeout=1800)
        if imp.returncode != 0:
            raise HarnessError(f"smalldp import exited {imp.returncode}:\n{imp.stdout}\n{imp.stderr}")
        self.import_s = time.monotonic() - started
        self.imported = json.loads(imp.stdout.strip().splitlines()[-1])
        self.http_port, self.grpc_port = free_port(), free_port()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "smalldp.cli", "serve", "--data-dir", str(self.data), "--no-ingest",
                 "--listen", f"127.0.0.1:{self.http_port}", "--grpc-listen", f"127.0.0.1:{self.grpc_port}",
                 "--plc-url", plc_url],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise HarnessError(f"smalldp serve exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.grpc_port), timeout=1):
                    pass
                with socket.create_connection(("127.0.0.1", self.http_port), timeout=1):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise HarnessError(f"smalldp serve did not open its ports in {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)
        self.start_s = time.monotonic() - started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> SmalldpDataPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- queries

@dataclass(frozen=True)
class Query:
    """One XRPC GET to an AppView: ``name`` identifies it across DataPlanes; ``viewer`` (a
    DID) makes it a logged-in request (Authorization: Bearer <service JWT>, lxm = nsid);
    ``page2`` also asks for the next page with the cursor the first answer gave; ``walk``
    follows every cursor to the end (at most WALK_PAGES pages)."""

    name: str
    nsid: str
    params: tuple[tuple[str, str], ...]
    viewer: str | None = None
    page2: bool = False
    walk: bool = False


# Views whose lists are walked to the end (every cursor) and compared as a whole, in any
# order (ORDER_FREE); at most this many pages each.
WALKED = ("app.bsky.graph.getFollowers", "app.bsky.graph.getFollows", "app.bsky.feed.getLikes",
          "app.bsky.feed.getRepostedBy")
WALK_PAGES = 200

MAIN_VIEWS = ("app.bsky.actor.getProfile", "app.bsky.graph.getFollowers", "app.bsky.graph.getFollows",
              "app.bsky.feed.getAuthorFeed", "app.bsky.feed.getPostThread", "app.bsky.feed.getLikes",
              "app.bsky.feed.getRepostedBy", "app.bsky.feed.getTimeline",
              "app.bsky.notification.listNotifications")


@dataclass
class Subjects:
    """What a plan asks about, chosen from a Stream (each list in a fixed order)."""

    viewers: list[str]
    actors: list[str]
    posts: list[str]
    notified: list[str]  # accounts whose notifications are listed (as themselves)


def choose_subjects(stream: Stream, viewers: list[str], n_actors: int = 6, n_posts: int = 6) -> Subjects:
    """The stream's busiest corners: most-followed and most-posting accounts, a profile
    owner, a deleted account, a never-seen DID; most-liked, -reposted and -replied posts, a
    quote, a deep reply, a deleted post. Ties broken by name so a plan is reproducible."""
    def top(counter: Counter, n: int, exclude: Iterable[str] = ()) -> list[str]:
        skip = set(exclude)
        return [k for k, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])) if k not in skip][:n]

    present = stream.actors - stream.deleted  # accounts with events of their own, not deleted
    followers = Counter(rec["subject"] for _, rec in stream.records("app.bsky.graph.follow")
                        if isinstance(rec.get("subject"), str) and rec["subject"] in present)
    posters = Counter(uri.split("/")[2] for uri, _ in stream.records("app.bsky.feed.post"))
    profiles = sorted(uri.split("/")[2] for uri, _ in stream.records("app.bsky.actor.profile"))
    actors: list[str] = []
    for did in (top(followers, max(1, n_actors // 2)) + top(posters, max(1, n_actors // 2), actors) +
                profiles[:1] + sorted(stream.deleted)[:1] + ["did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"]):
        if did not in actors:
            actors.append(did)
    posts_live = {uri for uri, _ in stream.records("app.bsky.feed.post")}
    likes = stream.subjects("app.bsky.feed.like")
    reposts = stream.subjects("app.bsky.feed.repost")
    replies = Counter(rec["reply"]["parent"]["uri"] for _, rec in stream.records("app.bsky.feed.post")
                      if isinstance(rec.get("reply"), dict))
    quotes = sorted(uri for uri, rec in stream.records("app.bsky.feed.post")
                    if isinstance(rec.get("embed"), dict) and "record" in rec["embed"])
    deep = sorted(uri for uri, rec in stream.records("app.bsky.feed.post")
                  if isinstance(rec.get("reply"), dict) and rec["reply"]["parent"]["uri"] != rec["reply"]["root"]["uri"])
    live = Counter({u: n for u, n in likes.items() if u in posts_live})
    posts: list[str] = []
    deleted_posts = sorted(u for u in set(likes) | set(replies) if "/app.bsky.feed.post/" in u
                           and u not in posts_live and u.split("/")[2] in stream.actors)
    for uri in (top(live, max(1, n_posts // 2)) +
                top(Counter({u: n for u, n in reposts.items() if u in posts_live}), 2) +
                top(Counter({u: n for u, n in replies.items() if u in posts_live}), 2) +
                quotes[:1] + deep[-1:] + deleted_posts[:1]):
        if uri not in posts:
            posts.append(uri)
    liked_authors: Counter = Counter()
    for uri, n in live.items():
        liked_authors[uri.split("/")[2]] += n
    notified = list(viewers)
    for did in top(followers, 1) + top(liked_authors, 1):
        if did not in notified:
            notified.append(did)
    return Subjects(list(viewers), actors, posts, notified)


def plan(subjects: Subjects, limit: int = 25) -> list[Query]:
    """Every main view over the subjects, anonymous and as the first viewer; lists paged."""
    queries: list[Query] = []
    who = [None, subjects.viewers[0]] if subjects.viewers else [None]
    lim = ("limit", str(limit))

    def add(nsid: str, params: tuple[tuple[str, str], ...], viewer: str | None, page2: bool = False,
            tag: str = "") -> None:
        short = nsid.rsplit(".", 1)[1]
        label = ",".join(f"{k}={v}" for k, v in params if k != "limit")
        queries.append(Query(f"{short}({label}){tag} as {viewer or 'anonymous'}", nsid, params, viewer, page2,
                             walk=nsid in WALKED))

    for viewer in who:
        for actor in subjects.actors:
            add("app.bsky.actor.getProfile", (("actor", actor),), viewer)
            add("app.bsky.graph.getFollowers", (("actor", actor), lim), viewer)
            add("app.bsky.graph.getFollows", (("actor", actor), lim), viewer)
            add("app.bsky.feed.getAuthorFeed", (("actor", actor), lim), viewer, True)
            add("app.bsky.feed.getAuthorFeed", (("actor", actor), ("filter", "posts_no_replies"), lim), viewer)
        for uri in subjects.posts:
            add("app.bsky.feed.getPostThread", (("uri", uri),), viewer)
            add("app.bsky.feed.getLikes", (("uri", uri), lim), viewer)
            add("app.bsky.feed.getRepostedBy", (("uri", uri), lim), viewer)
    for viewer in subjects.viewers:
        add("app.bsky.feed.getTimeline", (lim,), viewer, True)
    for viewer in subjects.notified:
        add("app.bsky.notification.listNotifications", (lim,), viewer, True)
    return queries


@dataclass
class Answer:
    status: int
    body: Any  # parsed JSON, or the text when it is not JSON
    ms: float


class AppViewClient:
    """Sequential GETs over one keep-alive connection (timings are the AppView's, not a
    connection setup's)."""

    def __init__(self, url: str, server_did: str = SERVER_DID, timeout: float = 60) -> None:
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self._new = lambda: http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.conn = self._new()
        self.server_did = server_did

    def get(self, nsid: str, params: Iterable[tuple[str, str]], viewer: str | None = None) -> Answer:
        from urllib.parse import urlencode

        headers = {"Accept": "application/json"}
        if viewer:
            headers["Authorization"] = "Bearer " + service_jwt(viewer, self.server_did, nsid)
        path = f"/xrpc/{nsid}?{urlencode(list(params))}"
        for attempt in (0, 1):
            started = time.perf_counter()
            try:
                self.conn.request("GET", path, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except (OSError, ConnectionError) as err:  # a dropped keep-alive connection: once more
                self.conn.close()
                self.conn = self._new()
                if attempt:
                    return Answer(0, f"{type(err).__name__}: {err}", 0.0)
        ms = (time.perf_counter() - started) * 1000
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        return Answer(resp.status, body, ms)

    def run(self, q: Query) -> list[Answer]:
        """The query's answer; with ``page2`` and a cursor, also the next page's; with
        ``walk`` every next page while there is a cursor and the page was not empty (the
        reference gives a cursor after its last item), at most WALK_PAGES."""
        out = [self.get(q.nsid, q.params, q.viewer)]
        pages = WALK_PAGES if q.walk else 2 if q.page2 else 1
        while len(out) < pages:
            last = out[-1]
            if last.status != 200 or not isinstance(last.body, dict) or not last.body.get("cursor") or \
                    (len(out) > 1 and not any(v for v in last.body.values() if isinstance(v, list))):
                break
            out.append(self.get(q.nsid, (*q.params, ("cursor", last.body["cursor"])), q.viewer))
        return out

    def close(self) -> None:
        self.conn.close()


def ask(url: str, queries: list[Query], server_did: str = SERVER_DID) -> dict[str, list[Answer]]:
    client = AppViewClient(url, server_did)
    try:
        return {q.name: client.run(q) for q in queries}
    finally:
        client.close()


def latencies(url: str, nsid: str, params: Iterable[tuple[str, str]], viewer: str | None, n: int,
              warmup: int = 5, server_did: str = SERVER_DID) -> dict[str, float]:
    """``n`` sequential calls after ``warmup``: p50, p95, max in ms (all must answer 200)."""
    client = AppViewClient(url, server_did)
    params = list(params)
    try:
        times = []
        for i in range(warmup + n):
            a = client.get(nsid, params, viewer)
            if a.status != 200:
                raise HarnessError(f"{nsid} {params} answered {a.status}: {str(a.body)[:300]}")
            if i >= warmup:
                times.append(a.ms)
    finally:
        client.close()
    times.sort()
    return {"n": n, "p50": times[len(times) // 2], "p95": times[min(n - 1, int(n * 0.95))], "max": times[-1]}


# ----------------------------------------------------------------------------- comparing

# Fields allowed to differ between the AppView on the reference DataPlane and on smalldp,
# by normalised path (list positions as [], fnmatch patterns), each with its reason.
# README (src/smalldp/appview/README-dev.md) explains each.
ALLOWED: dict[str, str] = {
    "cursor": "opaque to the AppView and its clients: each DataPlane encodes its own position; "
              "after the last item the reference still gives one (its next page is empty), "
              "a DataPlane may give none (compare() leaves cursors out of a query's whole answer)",
}

# Lists compared as sets of their items (sorted by identity first, then field by field),
# over a query's whole walk (WALKED: every page, concatenated): which items and what each
# says must agree, not their order. Each with its reason; conformance/README.md explains.
# smalldp's own order is checked against the stream instead (rkey_order).
ORDER_FREE: dict[str, str] = {
    key: "the reference orders by sortAt, the earlier of createdAt and the time it indexed the "
         "record (then by CID), smalldp by the rkey's TID: near-simultaneous records (the same "
         "createdAt millisecond, or indexed before their createdAt) come out in another order; "
         "sortAt depends on when an AppView indexed a record, so two reference AppViews fed at "
         "different times disagree too"
    for key in ("followers", "follows", "likes", "repostedBy")
}


def _identity(item: Any) -> str | None:
    """What a list element is about: a post/notification uri, an actor's did."""
    if not isinstance(item, dict):
        return None
    post = item.get("post")
    if isinstance(post, dict) and isinstance(post.get("uri"), str):
        reason = item.get("reason")
        by = reason.get("by", {}).get("did") if isinstance(reason, dict) else None
        return post["uri"] + (f" reposted by {by}" if by else "")
    for key in ("uri", "did"):
        if isinstance(item.get(key), str):
            return item[key]
    actor = item.get("actor")
    if isinstance(actor, dict) and isinstance(actor.get("did"), str):
        return actor["did"]
    return None


def normalise(path: str) -> str:
    return re.sub(r"\[[^\]]*\]", "[]", path)


def diff(ref: Any, other: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Where two JSON values differ: (path, reference value, other value). Lists of things
    with an identity (uri, did) are matched by it: who is missing, extra or out of order is
    one difference at the list's path, then the common elements are compared."""
    MISSING = "<absent>"
    if isinstance(ref, dict) and isinstance(other, dict):
        out = []
        for key in list(ref) + [k for k in other if k not in ref]:
            sub = f"{path}.{key}" if path else key
            if key not in other:
                out.append((sub, ref[key], MISSING))
            elif key not in ref:
                out.append((sub, MISSING, other[key]))
            else:
                out.extend(diff(ref[key], other[key], sub))
        return out
    if isinstance(ref, list) and isinstance(other, list):
        ids_r, ids_o = [_identity(x) for x in ref], [_identity(x) for x in other]
        if ref and all(ids_r) and all(ids_o) and len(set(ids_r)) == len(ids_r) and len(set(ids_o)) == len(ids_o):
            out = []
            if ids_r != ids_o:
                only_r = [i for i in ids_r if i not in set(ids_o)]
                only_o = [i for i in ids_o if i not in set(ids_r)]
                common = [i for i in ids_r if i in set(ids_o)]
                what = {"only_reference": only_r, "only_other": only_o}
                if common != [i for i in ids_o if i in set(ids_r)]:
                    what["order_reference"] = common
                    what["order_other"] = [i for i in ids_o if i in set(ids_r)]
                out.append((f"{path}[*]", what, f"{len(ids_r)} vs {len(ids_o)} items"))
            by_o = dict(zip(ids_o, other))
            for ident, item in zip(ids_r, ref):
                if ident in by_o:
                    out.extend(diff(item, by_o[ident], f"{path}[{ident}]"))
            return out
        out = []
        for i, (a, b) in enumerate(zip(ref, other)):
            out.extend(diff(a, b, f"{path}[{i}]"))
        if len(ref) != len(other):
            out.append((f"{path}[len]", len(ref), len(other)))
        return out
    if ref != other or type(ref) is not type(other):
        return [(path, ref, other)]
    return []


def allowed(path: str, allow: dict[str, str] = ALLOWED) -> str | None:
    import fnmatch

    norm = normalise(path)
    for pattern, reason in allow.items():
        if fnmatch.fnmatchcase(norm, pattern) or fnmatch.fnmatchcase(norm, "*." + pattern):
            return reason
    return None


@dataclass
class Comparison:
    """Two AppViews' answers to one plan, compared."""

    queries: int = 0
    equal: int = 0
    differing: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # query -> its differences
    allowed_counts: Counter = field(default_factory=Counter)  # normalised path -> times allowed
    paths: Counter = field(default_factory=Counter)  # normalised path -> queries where it differs
    # queries the reference could not answer (5xx): not compared. Known: 0.0.221's
    # GetRelationships and GetBlockExistence fail ("more than one row returned by a
    # subquery") when an account of the pair blocks a list holding the other twice, or two
    # lists holding it (even anonymous: getFollowers checks blocks between the listed)
    reference_errors: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"queries": self.queries, "equal": self.equal, "differing": len(self.differing),
                "reference_errors": self.reference_errors,
                "differing_paths": dict(self.paths.most_common()),
                "allowed": {p: {"times": n, "reason": allowed(p) or ""} for p, n in self.allowed_counts.items()},
                "differences": self.differing}

    def report(self, max_queries: int = 15, max_lines: int = 12, other: str = "smalldp") -> str:
        lines = [f"{self.equal} of {self.queries} answers equal field by field "
                 f"(allowed differences: {dict(self.allowed_counts) or 'none'}; "
                 f"{len(self.reference_errors)} the reference could not answer, not compared)"]
        if self.paths:
            lines.append("differing fields (normalised path: queries): " +
                         ", ".join(f"{p}: {n}" for p, n in self.paths.most_common(20)))
        for name, diffs in list(self.differing.items())[:max_queries]:
            lines.append(f"--- {name}")
            for d in diffs[:max_lines]:
                lines.append(f"    {d['path']}: reference {_short(d['reference'])} | {other} {_short(d['other'])}")
            if len(diffs) > max_lines:
                lines.append(f"    ... {len(diffs) - max_lines} more")
        if len(self.differing) > max_queries:
            lines.append(f"... {len(self.differing) - max_queries} more queries differ")
        return "\n".join(lines)


def _short(value: Any, n: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= n else text[:n] + "..."


def canonical(body: Any) -> Any:
    """An answer with the order nobody defines made definite:

    * notifications with equal ``indexedAt``: the reference pages them by sortAt alone
      (IsoSortAtKey), so Postgres returns ties in any order (two reference builds disagree);
      sorted by uri;
    * ``viewer.knownFollowers.followers`` anywhere: the reference's GetFollowsFollowing has
      no ORDER BY; sorted by DID, and when ``count`` exceeds what is shown, which ones are
      shown is arbitrary too, so only the count is kept;
    * feed items (author feeds, timelines) with equal times (``reason.indexedAt`` of a
      repost, else ``post.indexedAt``: the sortAt each DataPlane's order is by, to the
      millisecond): the reference breaks such ties by CID, smalldp by the rkey's
      microseconds; sorted by identity (smalldp's own order is checked by rkey_order)."""
    if isinstance(body, dict):
        known = body.get("knownFollowers")
        if isinstance(known, dict) and isinstance(known.get("followers"), list):
            shown = known["followers"]
            if isinstance(known.get("count"), int) and known["count"] > len(shown):
                shown = [f"{len(shown)} of {known['count']}, chosen arbitrarily"]
            else:
                shown = sorted(shown, key=lambda f: str(f.get("did")) if isinstance(f, dict) else str(f))
            body = {**body, "knownFollowers": {**known, "followers": shown}}
        body = {k: canonical(v) if isinstance(v, (dict, list)) else v for k, v in body.items()}
    elif isinstance(body, list):
        return [canonical(x) if isinstance(x, (dict, list)) else x for x in body]
    if isinstance(body, dict) and isinstance(body.get("notifications"), list):
        body = {**body, "notifications": _ties_sorted(body["notifications"], lambda n: n.get("indexedAt"),
                                                      lambda n: str(n.get("uri")))}
    if isinstance(body, dict) and isinstance(body.get("feed"), list) and \
            all(isinstance(item, dict) for item in body["feed"]):
        body = {**body, "feed": _ties_sorted(body["feed"], _feed_time, lambda item: str(_identity(item)))}
    return body


def _feed_time(item: dict[str, Any]) -> Any:
    """A feed item's time as the AppView shows it: its repost's, else its post's indexedAt."""
    reason = item.get("reason")
    if isinstance(reason, dict) and reason.get("indexedAt"):
        return reason["indexedAt"]
    post = item.get("post")
    return post.get("indexedAt") if isinstance(post, dict) else None


def _ties_sorted(items: list[Any], time: Any, ident: Any) -> list[Any]:
    """``items`` with each run of equal ``time(item)`` sorted by ``ident(item)``."""
    out: list[Any] = []
    i = 0
    while i < len(items):
        j = i
        while j < len(items) and time(items[j]) == time(items[i]):
            j += 1
        out.extend(sorted(items[i:j], key=ident))
        i = j
    return out


def whole(pages: list[Answer]) -> Any:
    """A query's answer over all the pages asked (one, two, or a whole walk): the first
    page's body with each list the concatenation of every page's, and no cursor (opaque:
    ALLOWED). Pages split a list wherever each DataPlane's page ends (the reference gives
    a cursor, then an empty page, after its last item; smalldp no cursor), so the whole is
    what a client that reads the pages sees; an error page is not merged (its status is
    compared)."""
    first = pages[0].body
    if not isinstance(first, dict) or any(a.status != 200 or not isinstance(a.body, dict) for a in pages):
        return first
    body = {k: v for k, v in first.items() if k != "cursor"}
    for page in pages[1:]:
        for key, value in page.body.items():
            if isinstance(value, list) and isinstance(body.get(key), list):
                body[key] = body[key] + value
    return body


def order_free(body: Any, keys: dict[str, str] = ORDER_FREE) -> Any:
    """The body with its top-level ORDER_FREE lists sorted by their items' identity."""
    if not isinstance(body, dict):
        return body
    return {k: sorted(v, key=lambda x: str(_identity(x))) if k in keys and isinstance(v, list) else v
            for k, v in body.items()}


def compare(ref: dict[str, list[Answer]], other: dict[str, list[Answer]],
            allow: dict[str, str] = ALLOWED, unordered: dict[str, str] = ORDER_FREE) -> Comparison:
    """Each query's whole answer (``whole``: its pages concatenated) on the reference and on
    the other side, field by field (``diff``), after ``canonical`` and, for the
    ``unordered`` lists, ``order_free``; page statuses compared one by one."""
    cmp = Comparison()
    for name, ref_pages in ref.items():
        cmp.queries += 1
        other_pages = other.get(name, [])
        diffs: list[dict[str, Any]] = []
        failed = [a for a in ref_pages if a.status >= 500 or a.status == 0]
        if failed:
            cmp.queries -= 1
            cmp.reference_errors[name] = f"{failed[0].status}: {_short(failed[0].body)}"
            continue
        for page, (a, b) in enumerate(zip(ref_pages, other_pages)):
            if a.status != b.status:
                diffs.append({"path": f"page{page + 1}:status", "reference": a.status, "other": b.status,
                              "bodies": [a.body, b.body]})
        common = min(len(ref_pages), len(other_pages))
        for pages, mine, theirs in ((ref_pages, "reference", "other"), (other_pages, "other", "reference")):
            for page in range(common, len(pages)):  # a page only this side had (the other gave no cursor)
                if pages[page].status != 200:
                    diffs.append({"path": f"page{page + 1}:status", mine: pages[page].status,
                                  theirs: "<no such page>", "bodies": [pages[page].body]})
        if not other_pages:
            diffs.append({"path": "pages", "reference": len(ref_pages), "other": 0})
        elif not diffs:
            a_body = order_free(canonical(whole(ref_pages)), unordered)
            b_body = order_free(canonical(whole(other_pages)), unordered)
            for path, x, y in diff(a_body, b_body):
                why = allowed(path, allow)
                if why:
                    cmp.allowed_counts[normalise(path)] += 1
                else:
                    diffs.append({"path": path, "reference": x, "other": y})
        if diffs:
            cmp.differing[name] = diffs
            for p in {normalise(re.sub(r"^page\d+:", "", d["path"])) for d in diffs}:
                cmp.paths[p] += 1
        else:
            cmp.equal += 1
    return cmp


# ----------------------------------------------------------------------------- the stacks

@contextlib.contextmanager
def reference_appview(events: Path, plc: FakePlc, workdir: Path,
                      validate: bool = True) -> Iterator[tuple[AppView, dict[str, Any]]]:
    """Postgres, @atproto/bsky's DataPlane with ``events`` indexed, and the AppView on it
    (HTTP/1.1: the reference DataPlane speaks nothing else). Yields the AppView and the
    timings/facts of the build."""
    started = time.monotonic()
    with Postgres() as pg:
        pg_s = time.monotonic() - started
        with ReferenceDataPlane(pg.url, plc.url, events, workdir / "reference-dataplane.log") as dp:
            with AppView(dp.url, plc.url, workdir / "reference-appview.log", http_version="1.1",
                         validate=validate) as av:
                info = {"postgres_start_s": round(pg_s, 2), "dataplane_start_s": round(dp.start_s, 2),
                        "indexed": dp.indexed, "appview_start_s": round(av.start_s, 2),
                        "build_s": round(time.monotonic() - started, 2), "bsky": av.info.get("version")}
                try:
                    yield av, info
                finally:
                    info["blocked"] = dp.blocked() + av.blocked()


@contextlib.contextmanager
def smalldp_appview(events: Path, plc: FakePlc, workdir: Path,
                    validate: bool = True) -> Iterator[tuple[AppView, dict[str, Any]]]:
    """``smalldp import`` + ``smalldp serve --no-ingest`` (gRPC on a free port) and the
    AppView on it over HTTP/2, the AppView's default."""
    started = time.monotonic()
    with SmalldpDataPlane(events, plc.url, workdir / "smalldp") as dp:
        with AppView(dp.url, plc.url, workdir / "smalldp-appview.log", http_version="2", validate=validate) as av:
            info = {"import_s": round(dp.import_s, 2), "imported": dp.imported,
                    "dataplane_start_s": round(dp.start_s, 2), "appview_start_s": round(av.start_s, 2),
                    "build_s": round(time.monotonic() - started, 2)}
            try:
                yield av, info
            finally:
                info["blocked"] = av.blocked()


# ----------------------------------------------------------------------------- sanity

_TID = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}\Z")


def _feed_rkey_order(items: list[Any]) -> list[str]:
    """A feed newest first by the rkey of each item's record (its repost's, else its
    post's) as a TID; equal TIDs in any order, non-TID rkeys unordered."""
    problems: list[str] = []
    previous: str | None = None
    for position, item in enumerate(items):
        reason = item.get("reason") if isinstance(item, dict) else None
        uri = reason.get("uri") if isinstance(reason, dict) else (item.get("post") or {}).get("uri")
        rkey = uri.rsplit("/", 1)[1] if isinstance(uri, str) else ""
        if not _TID.match(rkey):
            previous = None
            continue
        if previous is not None and rkey > previous:
            problems.append(f"feed[{position}] {uri} (rkey {rkey}) after rkey {previous}: not newest first by rkey")
        previous = rkey
    return problems


def rkey_order(q: Query, answers: list[Answer], stream: Stream) -> list[str]:
    """smalldp's order of the ORDER_FREE lists, judged from the stream: each listed account
    stands for its pair's record (the follow, like or repost linking it and the subject),
    which must be the pair's oldest live record in the stream (the one the reference
    indexes), and the whole walk must be newest first by that record's rkey as a TID
    (equal TIDs in any order: smalldp breaks ties by its account IDs). For getLikes the
    item's ``createdAt`` must be that record's. Author feeds and timelines: newest first
    by the rkey of each item's repost, else its post. Empty when all is well (or for
    another view). Not a check of the reference, which orders by sortAt (ORDER_FREE,
    and feed ties in ``canonical``)."""
    params = dict(q.params)
    bodies = [a.body for a in answers if a.status == 200 and isinstance(a.body, dict)]
    if q.nsid == "app.bsky.graph.getFollowers":
        collection, key = "app.bsky.graph.follow", "followers"
        pairs = [(x.get("did"), params["actor"]) for b in bodies for x in b.get(key, [])]
    elif q.nsid == "app.bsky.graph.getFollows":
        collection, key = "app.bsky.graph.follow", "follows"
        pairs = [(params["actor"], x.get("did")) for b in bodies for x in b.get(key, [])]
    elif q.nsid == "app.bsky.feed.getLikes":
        collection, key = "app.bsky.feed.like", "likes"
        pairs = [(x.get("actor", {}).get("did"), params["uri"]) for b in bodies for x in b.get(key, [])]
    elif q.nsid == "app.bsky.feed.getRepostedBy":
        collection, key = "app.bsky.feed.repost", "repostedBy"
        pairs = [(x.get("did"), params["uri"]) for b in bodies for x in b.get(key, [])]
    elif q.nsid in ("app.bsky.feed.getAuthorFeed", "app.bsky.feed.getTimeline"):
        return _feed_rkey_order([x for b in bodies for x in b.get("feed", [])])
    else:
        return []
    items = [x for b in bodies for x in b.get(key, [])]
    index = stream.pair_rkeys(collection)
    problems: list[str] = []
    previous: tuple[str, str] | None = None
    for position, ((author, subject), item) in enumerate(zip(pairs, items)):
        rkeys = index.get((str(author), str(subject)))
        if not rkeys:
            problems.append(f"[{position}] {author}: no live {collection} of {subject} in the stream")
            continue
        rkey = rkeys[0]
        if key == "likes":
            created = stream.live[f"at://{author}/{collection}/{rkey}"].get("createdAt")
            if item.get("createdAt") != created:
                problems.append(f"[{position}] {author}: createdAt {item.get('createdAt')}, its oldest like's is "
                                f"{created} (rkey {rkey})")
        if not _TID.match(rkey):
            previous = None  # no time to order by
            continue
        if previous is not None and rkey > previous[0]:
            problems.append(f"[{position}] {author} (rkey {rkey}) after {previous[1]} (rkey {previous[0]}): "
                            f"not newest first by rkey")
        previous = (rkey, str(author))
    return problems

NOTIFICATION_REASONS = {"like", "repost", "follow", "mention", "reply", "quote", "starterpack-joined",
                        "verified", "unverified", "like-via-repost", "repost-via-repost", "subscribed-post"}


def expected_status(q: Query, stream: Stream) -> int:
    """200, or 400 where the subject does not exist (an actor without events of its own or
    deleted, a post not live): what the AppView answers then (InvalidRequest / NotFound)."""
    params = dict(q.params)
    if "actor" in params:
        actor = params["actor"]
        if actor not in stream.actors or actor in stream.deleted:
            return 400
        if q.nsid == "app.bsky.feed.getAuthorFeed" and q.viewer and (
                stream.blocking(q.viewer, actor) or stream.blocking(actor, q.viewer)):
            return 400  # BlockedActor / BlockedByActor
        return 200
    if q.nsid == "app.bsky.feed.getPostThread":
        return 200 if params["uri"] in stream.live and params["uri"].split("/")[2] not in stream.deleted else 400
    return 200


def sanity(q: Query, answers: list[Answer], stream: Stream) -> list[str]:
    """What is wrong with an AppView's answers to ``q``, judged from the stream alone (not
    from another DataPlane): the status, and that everything listed is what was asked for
    and exists in the stream. Empty when all is well."""
    problems: list[str] = []
    want = expected_status(q, stream)
    first = answers[0]
    if first.status != want:
        return [f"status {first.status} (expected {want}): {_short(first.body, 300)}"]
    if want != 200:
        if not (isinstance(first.body, dict) and
                first.body.get("error") in ("InvalidRequest", "NotFound", "BlockedActor", "BlockedByActor")):
            problems.append(f"error body {_short(first.body)}")
        return problems
    for page in answers[1:]:
        if page.status != 200:
            problems.append(f"page 2: status {page.status}: {_short(page.body, 300)}")
    params = dict(q.params)
    bodies = [a.body for a in answers if a.status == 200 and isinstance(a.body, dict)]
    if len(bodies) != len(answers):
        return problems + ["a body is not a JSON object"]

    def items(key: str) -> list[Any]:
        return [x for b in bodies for x in b.get(key, [])]

    nsid, viewer = q.nsid, q.viewer
    if nsid == "app.bsky.actor.getProfile":
        b, actor = bodies[0], params["actor"]
        if b.get("did") != actor:
            problems.append(f"did {b.get('did')} != {actor}")
        if b.get("handle") != stream.handles.get(actor):
            problems.append(f"handle {b.get('handle')} != {stream.handles.get(actor)}")
        for k in ("followersCount", "followsCount", "postsCount"):
            if not isinstance(b.get(k), int) or b[k] < 0:
                problems.append(f"{k} {b.get(k)!r}")
        if stream.followers_of(actor) & (stream.actors - stream.deleted) and not b.get("followersCount"):
            problems.append("followersCount 0 but the stream has live followers")
        if viewer and "viewer" not in b:
            problems.append("no viewer state for a logged-in request")
        if viewer and actor in stream.follows_of(viewer) and not b.get("viewer", {}).get("following") \
                and not stream.blocking(viewer, actor) and not stream.blocking(actor, viewer):
            problems.append("viewer follows the actor but viewer.following is empty")
    elif nsid in ("app.bsky.graph.getFollowers", "app.bsky.graph.getFollows"):
        actor = params["actor"]
        key = "followers" if nsid.endswith("getFollowers") else "follows"
        truth = stream.followers_of(actor) if key == "followers" else stream.follows_of(actor)
        listed = [x.get("did") for x in items(key)]
        if bodies[0].get("subject", {}).get("did") != actor:
            problems.append(f"subject {bodies[0].get('subject', {}).get('did')} != {actor}")
        if not set(listed) <= truth:
            problems.append(f"{key} not in the stream: {sorted(set(listed) - truth)[:5]}")
        if len(listed) != len(set(listed)):
            problems.append(f"{key} listed twice: {[d for d, n in Counter(listed).items() if n > 1][:5]}")
        if truth & (stream.actors - stream.deleted) and not listed:
            problems.append(f"no {key}, the stream has {len(truth & stream.actors)} live ones")
    elif nsid == "app.bsky.feed.getAuthorFeed":
        actor = params["actor"]
        for it in items("feed"):
            post, reason = it.get("post", {}), it.get("reason") or {}
            if post.get("author", {}).get("did") != actor and reason.get("by", {}).get("did") != actor:
                problems.append(f"item {post.get('uri')} neither by nor reposted by {actor}")
            if post.get("uri") not in stream.live:
                problems.append(f"item {post.get('uri')} is not a live post of the stream")
            if params.get("filter") == "posts_no_replies" and "reply" in post.get("record", {}) \
                    and not reason:
                problems.append(f"reply {post.get('uri')} in posts_no_replies")
        wanted = [u for u, rec in stream.records("app.bsky.feed.post") if u.startswith(f"at://{actor}/")
                  and (params.get("filter") != "posts_no_replies" or "reply" not in rec)]
        if not items("feed") and wanted:
            problems.append(f"empty feed but the actor has {len(wanted)} live posts of this filter")
    elif nsid == "app.bsky.feed.getPostThread":
        thread = bodies[0].get("thread", {})
        if thread.get("post", {}).get("uri") != params["uri"]:
            problems.append(f"thread.post.uri {thread.get('post', {}).get('uri')} != {params['uri']}")
        for reply in thread.get("replies", []):
            parent = reply.get("post", {}).get("record", {}).get("reply", {}).get("parent", {}).get("uri")
            if reply.get("$type") == "app.bsky.feed.defs#threadViewPost" and parent != params["uri"]:
                problems.append(f"reply {reply.get('post', {}).get('uri')} has parent {parent}")
    elif nsid in ("app.bsky.feed.getLikes", "app.bsky.feed.getRepostedBy"):
        uri = params["uri"]
        if nsid.endswith("getLikes"):
            truth = {u.split("/")[2] for u, r in stream.records("app.bsky.feed.like")
                     if r.get("subject", {}).get("uri") == uri}
            listed = [x.get("actor", {}).get("did") for x in items("likes")]
        else:
            truth = {u.split("/")[2] for u, r in stream.records("app.bsky.feed.repost")
                     if r.get("subject", {}).get("uri") == uri}
            listed = [x.get("did") for x in items("repostedBy")]
        if bodies[0].get("uri") != uri:
            problems.append(f"uri {bodies[0].get('uri')} != {uri}")
        if len(listed) != len(set(listed)):  # one like (repost) per account and subject
            problems.append(f"listed twice: {[d for d, n in Counter(listed).items() if n > 1][:5]}")
        if not set(listed) <= truth:
            problems.append(f"actors without a live record in the stream: {sorted(set(listed) - truth)[:5]}")
        if truth & (stream.actors - stream.deleted) and not listed and uri in stream.live:
            problems.append(f"nobody listed, the stream has {len(truth)}")
    elif nsid == "app.bsky.feed.getTimeline":
        assert viewer
        follows = stream.follows_of(viewer) | {viewer}
        feed = items("feed")
        for it in feed:
            post, reason = it.get("post", {}), it.get("reason") or {}
            if post.get("author", {}).get("did") not in follows and reason.get("by", {}).get("did") not in follows:
                problems.append(f"item {post.get('uri')} by {post.get('author', {}).get('did')}, not followed")
        if not feed:
            problems.append(f"empty timeline for a viewer following {len(follows) - 1}")
    elif nsid == "app.bsky.notification.listNotifications":
        assert viewer
        notes = items("notifications")
        for n in notes:
            if n.get("reason") not in NOTIFICATION_REASONS:
                problems.append(f"reason {n.get('reason')!r}")
            if n.get("author", {}).get("did") == viewer:
                problems.append(f"a notification of the viewer's own record {n.get('uri')}")
            subject = n.get("reasonSubject")
            if subject and not subject.startswith(f"at://{viewer}/"):
                problems.append(f"reasonSubject {subject} is not the viewer's")
            if n.get("uri") not in stream.live:
                problems.append(f"notification record {n.get('uri')} is not live in the stream")
        if not notes and stream.followers_of(viewer) & (stream.actors - stream.deleted):
            problems.append("no notifications, though the viewer has followers")
    return problems
