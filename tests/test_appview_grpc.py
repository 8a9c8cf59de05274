"""bsky.Service served by `smalldp serve`: gRPC on grpc_listen, Connect on the HTTP port.

A real `smalldp serve --no-ingest` (its own process, 127.0.0.1, free ports) over a small
store made by the real Writer from Jetstream events, called by Python's grpcio, by the
official AppView's own client (``createDataPlaneClient`` from the pinned @atproto/bsky,
run by node) and over plain HTTP for Connect. Then what only an in-process server shows:
a handler's bug, the in-flight bound, deadlines, a graceful stop.

Expected answers are written out here from the reference DataPlane's shapes, never taken
from smalldp's own code.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import grpc
import psutil
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from smalldp.api.readers import READERS
from smalldp.api.server import make_app
from smalldp.appview import connect
from smalldp.appview.grpc_server import Dispatcher, GrpcServer
from smalldp.appview.proto import bsky_pb2 as pb
from smalldp.appview.rpcs.base import RpcError
from smalldp.store.writer import Writer

from bsky_node import NODE_DIR, node_or_fail
from fake_pds import FakeNetwork
from helpers_server import Events, apply, at_uri, did, tid, POST

pytestmark = pytest.mark.timeout(180)
MiB = 1 << 20
ALICE, BOB = did("alice"), did("bob")
VIEWER = did("viewer")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_store(data: Path) -> Path:
    """A small store: two accounts, a post, a reply, a like, a follow."""
    data.mkdir(parents=True, exist_ok=True)
    writer = Writer(data / "smalldp.sqlite")
    ev = Events()
    post = at_uri(ALICE, POST, tid(1))
    apply(writer, [ev.post(ALICE, tid(1), "hello"), ev.post(BOB, tid(2), "hi", reply_to=post),
                   ev.like(BOB, tid(3), post), ev.follow(BOB, tid(4), ALICE)])
    writer.close()
    return data


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("SMALLDP_") and k not in ("STATE_DIRECTORY", "NOTIFY_SOCKET")}
    clean["SMALLDP_LOG_LEVEL"] = "warning"
    return clean


def serve(data: Path, http_port: int, *args: str) -> subprocess.Popen[str]:
    """`smalldp serve` in its own process; its log goes to ``serve.log`` beside the data
    (a pipe nobody reads could fill and stall it)."""
    with (data.parent / "serve.log").open("a") as log:
        return subprocess.Popen([sys.executable, "-m", "smalldp.cli", "serve", "--data-dir", str(data),
                                 "--listen", f"127.0.0.1:{http_port}", *args],
                                env=env(), stdout=subprocess.DEVNULL, stderr=log, text=True)


def serve_log(data: Path) -> str:
    return (data.parent / "serve.log").read_text()


def request(port: int, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_healthy(proc: subprocess.Popen[str], port: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}")
        try:
            status, _, body = request(port, "GET", "/xrpc/_health")
            if status == 200:
                return json.loads(body)
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("serve did not answer /xrpc/_health")


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@dataclass
class Served:
    proc: subprocess.Popen[str]
    http: int
    grpc: int

    def call(self, method: str, req: Any, timeout: float = 10) -> Any:
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc}") as ch:
            return unary(ch, method)(req, timeout=timeout)


def unary(ch: grpc.Channel, method: str, raw: bool = False) -> Any:
    if raw:
        return ch.unary_unary(f"/bsky.Service/{method}")
    return ch.unary_unary(f"/bsky.Service/{method}",
                          request_serializer=lambda m: m.SerializeToString(),
                          response_deserializer=getattr(pb, f"{method}Response").FromString)


ALICE_KEY = "zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """serve --no-ingest over a small store; its PLC directory a fake on 127.0.0.1 that
    knows alice (nothing here may reach the internet)."""
    data = make_store(tmp_path_factory.mktemp("grpc") / "data")
    http_port, grpc_port = free_port(), free_port()
    with FakeNetwork(behaviour={ALICE: "ok"}, keys={ALICE: ALICE_KEY}) as plc:
        proc = serve(data, http_port, "--no-ingest", "--grpc-listen", f"127.0.0.1:{grpc_port}",
                     "--plc-url", f"{plc.base}/plc")
        try:
            wait_healthy(proc, http_port)
            yield Served(proc, http_port, grpc_port)
        finally:
            assert stop(proc) == 0


def test_identity_is_resolved_through_plc_url(served: Served) -> None:
    """serve gives the identity RPCs their DID-document cache, on the plc_url setting."""
    answer = served.call("GetIdentityByDid", pb.GetIdentityByDidRequest(did=ALICE))
    assert answer.did == ALICE
    assert json.loads(answer.keys) == {"atproto": {"Type": "Multikey", "PublicKeyMultibase": ALICE_KEY}}
    err = rpc_error(served.call, "GetIdentityByDid", pb.GetIdentityByDidRequest(did=BOB))
    assert err.code() == grpc.StatusCode.NOT_FOUND  # the fake directory does not know bob


def rpc_error(fn: Any, *args: Any, **kw: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kw)
    return err.value


# ------------------------------------------------------------------ gRPC, Python client


def test_ping_an_empty_rpc_and_unimplemented_ones(served: Served) -> None:
    assert served.call("Ping", pb.PingRequest()) == pb.PingResponse()
    roots = [at_uri(ALICE, POST, tid(1)), "at://did:plc:x/app.bsky.feed.post/3k", "anything"]
    answer = served.call("GetThreadMutesOnSubjects", pb.GetThreadMutesOnSubjectsRequest(
        actor_did=VIEWER, thread_roots=roots))
    assert list(answer.muted) == [False, False, False]
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc}") as ch:
        # admin writes stay unimplemented, each naming itself
        for method in ("TakedownActor", "CreateActorMute", "GetAllLabelers"):
            err = rpc_error(unary(ch, method, raw=True), b"", timeout=10)
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED and f"bsky.Service/{method}" in err.details()
        # a path outside bsky.Service: UNIMPLEMENTED naming the path
        err = rpc_error(ch.unary_unary("/other.Service/Ping"), b"", timeout=10)
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED and "/other.Service/Ping" in err.details()
        err = rpc_error(unary(ch, "NoSuchMethod", raw=True), b"", timeout=10)
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED and "NoSuchMethod" in err.details()


def test_corrupt_messages_are_invalid_argument(served: Served) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc}") as ch:
        call = unary(ch, "GetThreadMutesOnSubjects", raw=True)
        for bad in (b"\xff\xff\xff",  # not protobuf at all
                    b"\x12\x10abc",  # a length running past the end
                    b"\x0a\x02\xff\xfe"):  # actor_did (a string) that is not UTF-8
            err = rpc_error(call, bad, timeout=10)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (bad, err)
            assert "bsky.GetThreadMutesOnSubjectsRequest" in err.details()
        # a well-formed message with unknown fields is fine (proto3 keeps them aside)
        assert call(b"\x0a\x01a\xa2\x06\x01z", timeout=10) == b""


def test_message_size_cap(served: Served) -> None:
    def roots(n: int) -> pb.GetThreadMutesOnSubjectsRequest:
        return pb.GetThreadMutesOnSubjectsRequest(actor_did=VIEWER, thread_roots=[
            f"at://did:plc:{i:020d}/app.bsky.feed.post/{i:050d}" for i in range(n)])

    with grpc.insecure_channel(f"127.0.0.1:{served.grpc}") as ch:
        call = unary(ch, "GetThreadMutesOnSubjects")
        over, under = roots(40_000), roots(38_000)
        assert 4 * MiB < over.ByteSize() < 4.1 * MiB and 3.7 * MiB < under.ByteSize() < 4 * MiB
        for too_big in (over.SerializeToString(), b"\x00" * (5 * MiB)):
            err = rpc_error(unary(ch, "GetThreadMutesOnSubjects", raw=True), too_big, timeout=30)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        # just under 4 MiB is answered in full: the cap is not lower than it says
        assert len(call(under, timeout=30).muted) == 38_000


def test_http1_bytes_to_the_http2_port(served: Served) -> None:
    """grpc.aio speaks HTTP/2 only: an HTTP/1.1 request is a protocol error, the connection
    closes at once (no hang, no HTTP/1 answer), and the server goes on serving."""
    with socket.create_connection(("127.0.0.1", served.grpc), timeout=10) as sock:
        sock.sendall(b"POST /bsky.Service/Ping HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc\r\n"
                     b"TE: trailers\r\nContent-Length: 5\r\n\r\n\x00\x00\x00\x00\x00")
        started, reply = time.monotonic(), b""
        while chunk := sock.recv(65536):  # socket.timeout here would be a hang
            reply += chunk
        assert time.monotonic() - started < 5
    assert not reply.startswith(b"HTTP/")
    assert served.call("Ping", pb.PingRequest()) == pb.PingResponse()


def test_concurrent_calls(served: Served) -> None:
    """200 calls in flight on one channel, each answer its own (the length asked for)."""
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc}") as ch:
        call = unary(ch, "GetThreadMutesOnSubjects")
        futures = [call.future(pb.GetThreadMutesOnSubjectsRequest(
            actor_did=VIEWER, thread_roots=[f"at://r/{j}" for j in range(i % 50)]), timeout=60)
            for i in range(200)]
        assert [len(f.result().muted) for f in futures] == [i % 50 for i in range(200)]


# ------------------------------------------------------------------ gRPC, the AppView's own client

NODE_CLIENT = r"""
const { createDataPlaneClient, BasicHostList, Code } = require('@atproto/bsky')
const [url, httpVersion] = process.argv.slice(1)
const client = createDataPlaneClient(new BasicHostList([url]), { httpVersion })
const CALL = { timeoutMs: 10000 }
async function outcome(fn) {
  try { return { ok: await fn() } } catch (err) {
    return { error: { code: Code[err.code] ?? String(err.code), message: String(err.rawMessage ?? err.message) } }
  }
}
async function main() {
  const out = {}
  const t0 = Date.now()
  out.ping = await outcome(async () => (await client.ping({}, CALL)).toJson())
  out.ping_ms = Date.now() - t0
  if (httpVersion === '2') {
    const roots = ['at://did:plc:a/app.bsky.feed.post/1', 'at://did:plc:b/app.bsky.feed.post/2', 'x']
    out.threadMutes = await outcome(async () =>
      (await client.getThreadMutesOnSubjects({ actorDid: 'did:plc:viewer', threadRoots: roots }, CALL)).muted)
    out.bookmarks = await outcome(async () => (await client.getBookmarksByActorAndSubjects(
      { actorDid: 'did:plc:viewer', uris: roots.slice(0, 2) }, CALL)).bookmarks.map((b) => b.toJson()))
    out.activity = await outcome(async () => (await client.getActivitySubscriptionsByActorAndSubjects(
      { actorDid: 'did:plc:viewer', subjectDids: ['did:plc:a', 'did:plc:b'] }, CALL)).subscriptions.map(
      (s) => ({ actorDid: s.actorDid, namespace: s.namespace, key: s.key, subjectDid: s.subjectDid, post: s.post ?? null })))
    out.preferences = await outcome(async () =>
      (await client.getNotificationPreferences({ dids: ['did:plc:a'] }, CALL)).preferences.map((p) => p.toJson()))
    out.unimplemented = await outcome(() => client.takedownActor({ did: 'did:plc:a' }, CALL))
    out.notFound = await outcome(() => client.getSitemapPage({ type: 1, bucket: 1 }, CALL))
    out.concurrent = (await Promise.all(Array.from({ length: 64 }, (_, i) => client.getThreadMutesOnSubjects(
      { actorDid: 'did:plc:v', threadRoots: Array.from({ length: i }, (_, j) => `at://r/${j}`) }, CALL))))
      .map((r) => r.muted.length)
  }
  process.stdout.write(JSON.stringify(out) + '\n')
}
main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1) })
"""


def node_client(port: int, http_version: str) -> dict[str, Any]:
    proc = subprocess.run([node_or_fail(), "-e", NODE_CLIENT, "--", f"http://127.0.0.1:{port}", http_version],
                          cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_appviews_own_client(served: Served) -> None:
    out = node_client(served.grpc, "2")
    assert out["ping"] == {"ok": {}}
    assert out["threadMutes"] == {"ok": [False, False, False]}
    assert out["bookmarks"] == {"ok": [{}, {}]}
    none = {"actorDid": "did:plc:viewer", "namespace": "app.bsky.notification.defs#subjectActivitySubscription",
            "key": "", "subjectDid": "", "post": None}
    assert out["activity"] == {"ok": [none, none]}
    assert out["preferences"] == {"ok": [{}]}
    assert out["unimplemented"]["error"]["code"] == "Unimplemented"
    assert "TakedownActor" in out["unimplemented"]["error"]["message"]
    assert out["notFound"]["error"]["code"] == "NotFound"
    assert out["concurrent"] == list(range(64))


def test_the_appviews_client_over_http11_fails_at_once(served: Served) -> None:
    out = node_client(served.grpc, "1.1")
    assert "ok" not in out["ping"] and out["ping"]["error"]["code"] != "DeadlineExceeded", out
    assert out["ping_ms"] < 5000
    assert served.call("Ping", pb.PingRequest()) == pb.PingResponse()


# ------------------------------------------------------------------ Connect on the HTTP port

JSON = {"Content-Type": "application/json"}
PROTO = {"Content-Type": "application/proto"}


def test_connect_json_and_proto(served: Served) -> None:
    path = "/bsky.Service/GetThreadMutesOnSubjects"
    body = json.dumps({"actorDid": VIEWER, "threadRoots": ["at://a/b/c", "at://d/e/f"]}).encode()
    status, headers, reply = request(served.http, "POST", path, body, JSON)
    assert (status, headers["content-type"].split(";")[0]) == (200, "application/json")
    assert json.loads(reply) == {"muted": [False, False]}
    # proto field names too, and a charset
    body = json.dumps({"actor_did": VIEWER, "thread_roots": ["x"]}).encode()
    status, _, reply = request(served.http, "POST", path, body, {"Content-Type": "application/json; charset=utf-8"})
    assert (status, json.loads(reply)) == (200, {"muted": [False]})
    # binary in, binary out
    req = pb.GetThreadMutesOnSubjectsRequest(actor_did=VIEWER, thread_roots=["a", "b", "c"])
    status, headers, reply = request(served.http, "POST", path, req.SerializeToString(),
                                     {**PROTO, "Connect-Protocol-Version": "1"})
    assert (status, headers["content-type"]) == (200, "application/proto")
    assert list(pb.GetThreadMutesOnSubjectsResponse.FromString(reply).muted) == [False] * 3
    # an empty body is the empty message; empty answers are {}
    for headers in (JSON, PROTO):
        status, _, reply = request(served.http, "POST", "/bsky.Service/Ping", b"", headers)
        assert status == 200 and reply in (b"{}", b"")
    status, _, reply = request(served.http, "POST", "/bsky.Service/GetNotificationPreferences",
                               b'{"dids": ["did:plc:a", "did:plc:b"]}', JSON)
    assert json.loads(reply) == {"preferences": [{}, {}]}
    status, _, reply = request(served.http, "POST", "/bsky.Service/GetSitemapIndex", b"{}", JSON)
    assert status == 200 and json.loads(reply)["sitemap"]  # bytes, base64 in JSON


def connect_error(served: Served, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    status, reply_headers, reply = request(served.http, "POST", path, body, headers)
    assert reply_headers["content-type"].startswith("application/json"), (path, status, reply)
    error = json.loads(reply)
    assert set(error) == {"code", "message"} and isinstance(error["message"], str)
    return status, error


def test_connect_errors(served: Served) -> None:
    path = "/bsky.Service/GetThreadMutesOnSubjects"
    status, error = connect_error(served, "/bsky.Service/NoSuchMethod", b"{}", JSON)
    assert (status, error["code"]) == (404, "unimplemented") and "NoSuchMethod" in error["message"]
    status, error = connect_error(served, "/bsky.Service/NoSuchMethod", b"x", {"Content-Type": "text/plain"})
    assert (status, error["code"]) == (404, "unimplemented")  # the path first, as a router does
    status, error = connect_error(served, "/bsky.Service/TakedownActor", b"{}", JSON)
    assert (status, error["code"]) == (501, "unimplemented") and "TakedownActor" in error["message"]
    for bad in (b"{", b"[1]", b'{"threadRoots": "notalist"}', b'{"noSuchField": 1}', b"\xff\xfe"):
        status, error = connect_error(served, path, bad, JSON)
        assert (status, error["code"]) == (400, "invalid_argument"), bad
    status, error = connect_error(served, path, b"\xff\xff\xff", PROTO)
    assert (status, error["code"]) == (400, "invalid_argument")
    status, error = connect_error(served, path, b"0" * (4 * MiB + 1), PROTO)
    assert (status, error["code"]) == (429, "resource_exhausted")
    status, error = connect_error(served, path, b"{}", {**JSON, "Content-Encoding": "gzip"})
    assert (status, error["code"]) == (501, "unimplemented")
    status, error = connect_error(served, path, b"{}", {**JSON, "Connect-Protocol-Version": "2"})
    assert (status, error["code"]) == (400, "invalid_argument")
    status, error = connect_error(served, path, b"{}", {**JSON, "Connect-Timeout-Ms": "soon"})
    assert (status, error["code"]) == (400, "invalid_argument")
    status, error = connect_error(served, "/bsky.Service/GetSitemapPage", b"{}", JSON)
    assert (status, error["code"]) == (404, "not_found")
    for content_type in ("text/plain", "application/grpc", "application/connect+json", "application/jsonx"):
        status, headers, _ = request(served.http, "POST", path, b"{}", {"Content-Type": content_type})
        assert status == 415 and headers["accept-post"] == "application/json, application/proto", content_type
    status, _, _ = request(served.http, "POST", path, b"{}")  # no Content-Type at all
    assert status == 415
    status, _, _ = request(served.http, "GET", path)
    assert status == 405
    # a browser's preflight for a Connect POST is allowed; the call itself carries the CORS header
    status, headers, _ = request(served.http, "OPTIONS", path, headers={
        "Origin": "https://example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,connect-protocol-version"})
    assert status == 204 and "POST" in headers["access-control-allow-methods"]
    status, headers, _ = request(served.http, "POST", "/bsky.Service/Ping", b"{}", JSON)
    assert status == 200 and headers["access-control-allow-origin"] == "*"


# ------------------------------------------------------------------ health and /metrics


def rpc_samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = request(port, "GET", "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples if s.name.startswith(("smalldp_rpc", "smalldp_grpc"))}


def test_health_and_metrics_count_calls(served: Served) -> None:
    before_health = json.loads(request(served.http, "GET", "/xrpc/_health")[2])["grpc"]
    before = rpc_samples(served.http)
    for _ in range(3):
        served.call("Ping", pb.PingRequest())
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc}") as ch:
        rpc_error(unary(ch, "GetMutes", raw=True), b"\xff", timeout=10)
        rpc_error(unary(ch, "TakedownBlob", raw=True), b"", timeout=10)
    request(served.http, "POST", "/bsky.Service/GetMutes", b"{", JSON)
    request(served.http, "POST", "/bsky.Service/Ping", b"{}", JSON)
    health = json.loads(request(served.http, "GET", "/xrpc/_health")[2])["grpc"]
    assert health["listen"] == f"127.0.0.1:{served.grpc}" and health["state"] == "serving"
    assert health["calls"] - before_health["calls"] == 5
    assert health["connect_calls"] - before_health["connect_calls"] == 2
    delta = {code: n - before_health["errors"].get(code, 0) for code, n in health["errors"].items()}
    assert delta["invalid_argument"] == 2 and delta["unimplemented"] == 1
    after = rpc_samples(served.http)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("smalldp_rpc_calls_total", transport="grpc", method="Ping") == 3
    assert grew("smalldp_rpc_calls_total", transport="connect", method="Ping") == 1
    assert grew("smalldp_rpc_errors_total", transport="grpc", code="invalid_argument") == 1
    assert grew("smalldp_rpc_errors_total", transport="connect", code="invalid_argument") == 1
    assert grew("smalldp_rpc_errors_total", transport="grpc", code="unimplemented") == 1
    assert after[("smalldp_grpc_serving", ())] == 1 and after[("smalldp_rpc_in_flight", ())] == 0


def test_health_and_metrics_give_each_methods_recent_latency(served: Served) -> None:
    """/xrpc/_health's grpc.methods and /metrics' smalldp_rpc_recent_seconds: per method,
    the p50/p99 of its last calls, from a real serve."""
    for _ in range(4):
        served.call("GetLatestRev", pb.GetLatestRevRequest(actor_did=ALICE))
    health = json.loads(request(served.http, "GET", "/xrpc/_health")[2])["grpc"]
    rev = health["methods"]["GetLatestRev"]  # a sync handler: its own run on the reader thread too
    assert set(rev) == {"calls", "window", "p50_ms", "p99_ms", "run_p50_ms", "run_p99_ms"}
    assert rev["calls"] >= 4 and 4 <= rev["window"] <= rev["calls"]
    assert 0 < rev["p50_ms"] <= rev["p99_ms"] < 10_000
    # each call's run is part of its time, so each quantile of the runs is at most the calls'
    assert 0 < rev["run_p50_ms"] <= rev["p50_ms"] and rev["run_p99_ms"] <= rev["p99_ms"]
    samples = rpc_samples(served.http)
    p50 = samples[("smalldp_rpc_recent_seconds", (("method", "GetLatestRev"), ("quantile", "0.5")))]
    p99 = samples[("smalldp_rpc_recent_seconds", (("method", "GetLatestRev"), ("quantile", "0.99")))]
    assert 0 < p50 <= p99 < 10
    quantiled = {dict(labels)["method"] for name, labels in samples if name == "smalldp_rpc_recent_seconds"}
    assert quantiled == set(health["methods"])


# ------------------------------------------------------------------ serve: off, a taken port, with ingest


def test_grpc_listen_off(tmp_path: Path) -> None:
    data = make_store(tmp_path / "data")
    port = free_port()
    proc = serve(data, port, "--no-ingest", "--grpc-listen", "off")
    try:
        health = wait_healthy(proc, port)
        assert health["grpc"]["listen"] == "off" and health["grpc"]["state"] == "off"
        listening = [c.laddr.port for c in psutil.Process(proc.pid).net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN]
        assert listening == [port]  # the HTTP port only
        status, _, reply = request(port, "POST", "/bsky.Service/Ping", b"{}", JSON)
        assert (status, reply) == (200, b"{}")  # Connect answers regardless
    finally:
        assert stop(proc) == 0


def test_a_taken_grpc_port_stops_serve_with_a_clear_error(tmp_path: Path) -> None:
    """Taken by another gRPC server with grpc's defaults (SO_REUSEPORT on, as a second
    smalldp would have without so_reuseport off): serve must refuse, not share it."""
    data = make_store(tmp_path / "data")

    async def hold_and_serve() -> tuple[int, str]:
        other = grpc.aio.server()
        grpc_port = other.add_insecure_port("127.0.0.1:0")
        await other.start()
        try:
            http_port = free_port()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "smalldp.cli", "serve", "--data-dir", str(data), "--no-ingest",
                "--listen", f"127.0.0.1:{http_port}", "--grpc-listen", f"127.0.0.1:{grpc_port}",
                env=env(), stderr=asyncio.subprocess.PIPE)
            try:
                _, stderr = await asyncio.wait_for(proc.communicate(), 60)
            except TimeoutError:  # it serves: the port was shared
                proc.kill()
                await proc.wait()
                raise AssertionError("serve started on a port another gRPC server holds") from None
            assert proc.returncode == 2, stderr
            with socket.socket() as sock:  # the HTTP port was let go
                sock.bind(("127.0.0.1", http_port))
            return grpc_port, stderr.decode()
        finally:
            await other.stop(0)

    grpc_port, stderr = asyncio.run(hold_and_serve())
    assert f"cannot listen for gRPC on 127.0.0.1:{grpc_port}: Address already in use" in stderr, stderr
    assert "grpc_listen" in stderr and "Traceback" not in stderr
    # and a plain listening socket: the same
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        proc = serve(data, free_port(), "--no-ingest", "--grpc-listen", f"127.0.0.1:{taken}")
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 2 and f"127.0.0.1:{taken}: Address already in use" in serve_log(data), serve_log(data)


def test_serve_with_ingest_answers_grpc(tmp_path: Path) -> None:
    """Without --no-ingest (Jetstream unreachable: ingest retries, queries are answered)."""
    data = make_store(tmp_path / "data")
    http_port, grpc_port, dead = free_port(), free_port(), free_port()
    proc = serve(data, http_port, "--grpc-listen", f"127.0.0.1:{grpc_port}", "--jetstream",
                 f"ws://127.0.0.1:{dead}/subscribe", "--no-compress", "--admin-socket", "off")
    try:
        health = wait_healthy(proc, http_port)
        assert health["ingest"] != "disabled" and health["grpc"]["listen"] == f"127.0.0.1:{grpc_port}"
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            assert unary(ch, "Ping")(pb.PingRequest(), timeout=10) == pb.PingResponse()
    finally:
        assert stop(proc) == 0


# ------------------------------------------------------------------ in process: dispatch itself


class InProcess:
    """make_app + GrpcServer on 127.0.0.1 with a registry of the test's handlers."""

    def __init__(self, data: Path, sync: dict[str, Any], async_: dict[str, Any], **dispatcher: Any) -> None:
        self.data, self.registry, self.kw = data, (sync, async_), dispatcher

    async def __aenter__(self) -> "InProcess":
        self.app = make_app(self.data / "smalldp.sqlite")
        self.dispatcher = Dispatcher(self.app[READERS], registry=self.registry, **self.kw)
        self.app[connect.DISPATCHER] = self.dispatcher
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.http = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.grpc = GrpcServer(self.dispatcher, "127.0.0.1", 0)
        self.port = await self.grpc.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.grpc.stop(0)
        await self.runner.cleanup()

    def unary(self, method: str) -> Any:
        return self.channel.unary_unary(f"/bsky.Service/{method}")

    async def connect(self, method: str, body: bytes = b"{}", **headers: str) -> tuple[int, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        status, _, reply = await loop.run_in_executor(None, lambda: request(
            self.http, "POST", f"/bsky.Service/{method}", body, {**JSON, **headers}))
        return status, json.loads(reply)


async def aio_error(call: Any, body: bytes = b"", timeout: float = 10) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(body, timeout=timeout)
    return err.value


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("inproc") / "data")


def test_handler_bugs_are_internal_logged_and_counted(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    def broken(dp: Any, req: Any) -> Any:
        raise ValueError("secret detail")

    async def wrong_type(ctx: Any, req: Any) -> Any:
        return pb.GetMutesResponse()

    async def refuses(ctx: Any, req: Any) -> Any:
        raise RpcError("not_found", "no such list")

    async def main() -> None:
        async with InProcess(store, {"GetMutes": broken}, {"GetLabels": wrong_type, "GetListCount": refuses}) as s:
            for method in ("GetMutes", "GetLabels"):
                err = await aio_error(s.unary(method))
                assert err.code() == grpc.StatusCode.INTERNAL and method in err.details()
                assert "secret detail" not in err.details()
            err = await aio_error(s.unary("GetListCount"))
            assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "no such list")
            assert await s.connect("GetMutes") == (500, {"code": "internal", "message": err_message("GetMutes")})
            assert await s.connect("GetListCount") == (404, {"code": "not_found", "message": "no such list"})
            assert s.dispatcher.metrics.codes == {("grpc", "internal"): 2, ("grpc", "not_found"): 1,
                                                  ("connect", "internal"): 1, ("connect", "not_found"): 1}

    with caplog.at_level(logging.ERROR, logger="smalldp.appview.grpc_server"):
        asyncio.run(main())
    logged = [r for r in caplog.records if r.exc_info]
    assert [r.getMessage() for r in logged] == ["bsky.Service/GetMutes: internal error",
                                               "bsky.Service/GetLabels: internal error",
                                               "bsky.Service/GetMutes: internal error"]
    assert isinstance(logged[0].exc_info[1], ValueError)  # type: ignore[index]


def err_message(method: str) -> str:
    return f"bsky.Service/{method}: internal error (logged)"


def test_sync_handlers_run_on_reader_threads_async_ones_get_the_context(store: Path) -> None:
    seen: dict[str, Any] = {}
    marker = object()

    def latest_rev(dp: Any, req: pb.GetLatestRevRequest) -> pb.GetLatestRevResponse:
        seen["sync_thread"] = threading.current_thread().name
        return pb.GetLatestRevResponse(rev=f"{type(dp).__name__}:{dp.stats()['links'] > 0}:{req.actor_did}")

    async def labels(ctx: Any, req: pb.GetLabelsRequest) -> pb.GetLabelsResponse:
        seen["service"] = ctx.services["thing"]
        seen["loop_thread"] = threading.current_thread().name
        name = await ctx.read(lambda dp: threading.current_thread().name)
        return pb.GetLabelsResponse(labels=[name.encode(), *[s.encode() for s in req.subjects]])

    async def main() -> None:
        async with InProcess(store, {"GetLatestRev": latest_rev}, {"GetLabels": labels},
                             services={"thing": marker}) as s:
            raw = await s.unary("GetLatestRev")(pb.GetLatestRevRequest(actor_did=ALICE).SerializeToString(),
                                                timeout=10)
            assert pb.GetLatestRevResponse.FromString(raw).rev == f"DataPlaneReader:True:{ALICE}"
            raw = await s.unary("GetLabels")(pb.GetLabelsRequest(subjects=["a", "b"]).SerializeToString(),
                                             timeout=10)
            labels_ = list(pb.GetLabelsResponse.FromString(raw).labels)
            assert labels_[0].startswith(b"reader") and labels_[1:] == [b"a", b"b"]

    asyncio.run(main())
    assert seen["sync_thread"].startswith("reader") and seen["service"] is marker
    assert seen["loop_thread"] == "MainThread"


def test_big_requests_run_on_the_bulk_thread_and_do_not_hold_up_small_ones(store: Path) -> None:
    """A request of more than BULK_ITEMS items (or a GetThread) runs on the pool's bulk
    thread: while one is stuck there, small requests are still answered."""
    from smalldp.appview.grpc_server import BULK_ITEMS
    release = threading.Event()
    threads: dict[str, set[str]] = {"small": set(), "big": set()}

    def post_records(dp: Any, req: pb.GetPostRecordsRequest) -> pb.GetPostRecordsResponse:
        big = len(req.uris) > BULK_ITEMS
        threads["big" if big else "small"].add(threading.current_thread().name)
        if big:
            assert release.wait(20), "never released"
        return pb.GetPostRecordsResponse(records=[pb.Record() for _ in req.uris])

    def thread_(dp: Any, req: pb.GetThreadRequest) -> pb.GetThreadResponse:
        threads["big"].add(threading.current_thread().name)
        return pb.GetThreadResponse(uris=[req.post_uri])

    async def main() -> None:
        async with InProcess(store, {"GetPostRecords": post_records, "GetThread": thread_}, {}) as s:
            call = s.unary("GetPostRecords")
            big = asyncio.ensure_future(call(pb.GetPostRecordsRequest(uris=["at://x"] * (BULK_ITEMS + 1))
                                             .SerializeToString(), timeout=30))
            while not threads["big"]:
                await asyncio.sleep(0.01)
            for n in (1, BULK_ITEMS):  # answered while the big one waits
                raw = await call(pb.GetPostRecordsRequest(uris=["at://x"] * n).SerializeToString(), timeout=10)
                assert len(pb.GetPostRecordsResponse.FromString(raw).records) == n
            assert not big.done()
            release.set()
            assert len(pb.GetPostRecordsResponse.FromString(await big).records) == BULK_ITEMS + 1
            raw = await s.unary("GetThread")(pb.GetThreadRequest(post_uri="at://y").SerializeToString(), timeout=10)
            assert list(pb.GetThreadResponse.FromString(raw).uris) == ["at://y"]

    asyncio.run(main())
    assert threads["big"] and all(name.startswith("reader_bulk") for name in threads["big"]), threads
    assert threads["small"] and not any(name.startswith("reader_bulk") for name in threads["small"]), threads


def test_in_flight_bound_and_the_query_gate(store: Path) -> None:
    from smalldp.priority import QueryGate
    gate = QueryGate()
    release = asyncio.Event

    async def main() -> None:
        go = release()

        async def waits(ctx: Any, req: Any) -> Any:
            await go.wait()
            return pb.PingResponse()

        async with InProcess(store, {}, {"Ping": waits}, max_in_flight=4, gate=gate) as s:
            calls = [asyncio.ensure_future(s.unary("Ping")(b"", timeout=20)) for _ in range(4)]
            while s.dispatcher.metrics.in_flight < 4:
                await asyncio.sleep(0.01)
            assert gate.active == 4  # live ingest steps aside while calls are answered
            err = await aio_error(s.unary("Ping"))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "4" in err.details()
            status, error = await s.connect("Ping")
            assert (status, error["code"]) == (429, "resource_exhausted")
            go.set()
            assert await asyncio.gather(*calls) == [b""] * 4
            assert gate.active == 0 and s.dispatcher.metrics.in_flight == 0
            assert await s.unary("Ping")(b"", timeout=10) == b""

    asyncio.run(main())


def test_deadlines(store: Path) -> None:
    """Connect-Timeout-Ms is deadline_exceeded (504); a gRPC client's deadline cancels the
    call on the server (counted as cancelled)."""
    async def slow(ctx: Any, req: Any) -> Any:
        await asyncio.sleep(10)
        return pb.PingResponse()

    async def main() -> None:
        async with InProcess(store, {}, {"Ping": slow}) as s:
            started = time.monotonic()
            status, error = await s.connect("Ping", **{"Connect-Timeout-Ms": "200"})
            assert (status, error["code"]) == (504, "deadline_exceeded")
            assert 0.15 < time.monotonic() - started < 5
            assert s.dispatcher.metrics.codes == {("connect", "deadline_exceeded"): 1}
            err = await aio_error(s.unary("Ping"), timeout=0.2)
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            while s.dispatcher.metrics.in_flight:
                await asyncio.sleep(0.01)
            assert s.dispatcher.metrics.codes[("grpc", "cancelled")] == 1

    asyncio.run(main())


def test_graceful_stop(store: Path) -> None:
    async def slow(ctx: Any, req: Any) -> Any:
        await asyncio.sleep(0.5)
        return pb.PingResponse()

    async def main() -> None:
        async with InProcess(store, {}, {"Ping": slow}) as s:
            call = asyncio.ensure_future(s.unary("Ping")(b"", timeout=20))
            while s.dispatcher.metrics.in_flight < 1:
                await asyncio.sleep(0.01)
            await s.grpc.stop(grace=5)  # the call under way finishes
            assert await call == b""
            assert s.dispatcher.metrics.state == "stopped"
            err = await aio_error(s.unary("Ping"))
            assert err.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(main())


def test_recent_latency_quantiles_in_process(store: Path) -> None:
    """The ring holds each method's answered calls, refused ones (the in-flight bound) left
    out; the quantiles are of what it holds."""
    async def main() -> None:
        delays = iter([0.3] + [0.01] * 20)

        async def timed(ctx: Any, req: Any) -> Any:
            await asyncio.sleep(next(delays))
            return pb.PingResponse()

        async with InProcess(store, {}, {"Ping": timed}, max_in_flight=1) as s:
            slow = asyncio.ensure_future(s.unary("Ping")(b"", timeout=20))
            while s.dispatcher.metrics.in_flight < 1:
                await asyncio.sleep(0.01)
            refused = await aio_error(s.unary("Ping"))
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await slow
            for _ in range(20):
                await s.unary("Ping")(b"", timeout=20)
            methods = s.dispatcher.metrics.health()["methods"]
            assert methods["Ping"]["calls"] == 22 and methods["Ping"]["window"] == 21  # the refusal not timed
            assert 10 <= methods["Ping"]["p50_ms"] < 200  # twenty calls of 10 ms
            assert methods["Ping"]["p99_ms"] >= 300  # the slow one: index int(21 * 0.99) = 20 of 21
            assert "run_p50_ms" not in methods["Ping"]  # an async handler: no reader-thread run

    asyncio.run(main())


def test_run_time_apart_from_waiting_for_the_reader_thread(store: Path) -> None:
    """Two calls of a sync handler at once on the one reader thread: the second waits for
    the first. Its time counts the wait, its run does not."""
    def slow_rev(dp: Any, req: Any) -> Any:
        time.sleep(0.05)
        return pb.GetLatestRevResponse()

    async def main() -> None:
        async with InProcess(store, {"GetLatestRev": slow_rev}, {}) as s:
            await asyncio.gather(*(s.unary("GetLatestRev")(b"", timeout=20) for _ in range(2)))
            rev = s.dispatcher.metrics.health()["methods"]["GetLatestRev"]
            assert rev["window"] == 2 and rev["run_p50_ms"] >= 50
            # the later call took both runs: at least the longest run plus 50 ms
            assert rev["p99_ms"] - rev["run_p99_ms"] >= 45, rev

    asyncio.run(main())


def test_recent_latency_ring_is_bounded_and_exposed() -> None:
    """RpcMetrics alone: the ring keeps the last LATENCY_WINDOW durations of each method,
    nearest-rank quantiles, paths outside bsky.Service not kept; /metrics parses."""
    from smalldp.api.metrics import exposition
    from smalldp.appview.grpc_server import LATENCY_WINDOW, UNKNOWN_METHOD, RpcMetrics

    m = RpcMetrics()
    for i in range(LATENCY_WINDOW + 100):  # the first 100 (the slowest) fall out of the ring
        m.record("grpc", "GetTimeline", "ok", 10.0 if i < 100 else (i - 100) / 1000)
    m.record("connect", "GetActors", "not_found", 0.002)
    m.record("grpc", UNKNOWN_METHOD, "unimplemented", 0.001)
    m.record("grpc", "GetActors", "resource_exhausted", 0.0, timed=False)
    m.record("grpc", "GetLatestRev", "ok", 0.004, ran=0.001)
    health = m.health()["methods"]
    assert health["GetLatestRev"] == {"calls": 1, "window": 1, "p50_ms": 4.0, "p99_ms": 4.0,
                                      "run_p50_ms": 1.0, "run_p99_ms": 1.0}
    n = LATENCY_WINDOW
    assert health["GetTimeline"] == {"calls": n + 100, "window": n, "p50_ms": float(n // 2),
                                     "p99_ms": float(int(n * 0.99))}
    assert health["GetActors"] == {"calls": 2, "window": 1, "p50_ms": 2.0, "p99_ms": 2.0}
    assert UNKNOWN_METHOD not in health
    families = {f.name: f for f in text_string_to_metric_families(exposition(m.samples()))}
    recent = families["smalldp_rpc_recent_seconds"]
    assert recent.type == "gauge"
    values = {(s.labels["method"], s.labels["quantile"]): s.value for s in recent.samples}
    assert values == {("GetActors", "0.5"): 0.002, ("GetActors", "0.99"): 0.002,
                      ("GetLatestRev", "0.5"): 0.004, ("GetLatestRev", "0.99"): 0.004,
                      ("GetTimeline", "0.5"): (n // 2) / 1000, ("GetTimeline", "0.99"): int(n * 0.99) / 1000}
    run = families["smalldp_rpc_recent_run_seconds"]
    assert run.type == "gauge" and {(s.labels["method"], s.labels["quantile"]): s.value for s in run.samples} == {
        ("GetLatestRev", "0.5"): 0.001, ("GetLatestRev", "0.99"): 0.001}
