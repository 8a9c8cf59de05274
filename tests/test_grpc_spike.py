"""Spike: grpcio's grpc.aio server answers the official AppView's own DataPlane client.

tests/grpc_spike_server.py (its own process, 127.0.0.1) serves bsky.Service through a generic
handler built from bsky_pb2 (no *_grpc.py stubs): GetLatestRev answers, every other method of
the service aborts UNIMPLEMENTED naming itself. conformance/node/grpc_spike_client.cjs calls
it with @atproto/bsky's createDataPlaneClient, as BskyAppView does:

* HTTP/2 (h2c with prior knowledge, the AppView's default): works.
* HTTP/1.1 (BSKY_DATAPLANE_HTTP_VERSION=1.1): does NOT work against grpc.aio, which speaks
  only HTTP/2; the client fails at once (its HTTP/1 parser meets HTTP/2 frames), no hang,
  and the server goes on serving.

Printed (pytest -s): round-trip latency of sequential unary calls, median of SPIKE_CALLS,
from node and from Python, and the server's CPU per call (its process's user+sys time over
the run). src/smalldp/appview/README-dev.md has the figures.
"""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest

from bsky_node import NODE_DIR, node_or_fail
from smalldp.appview.proto import bsky_pb2

HERE = Path(__file__).resolve().parent
SPIKE_CALLS = int(os.environ.get("SMALLDP_SPIKE_CALLS", "400"))


class Spike:
    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc, self.port = proc, port
        self.ps = psutil.Process(proc.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system


@pytest.fixture(scope="module")
def spike() -> Spike:
    proc = subprocess.Popen([sys.executable, str(HERE / "grpc_spike_server.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "grpc_spike_server.py did not report its port within 30 s"
        port = json.loads(proc.stdout.readline())["port"]
        yield Spike(proc, port)
    finally:
        proc.stdin.close()  # the server's signal to stop
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"grpc_spike_server.py exited {proc.returncode}"


def run_client(spike: Spike, http_version: str, calls: int, concurrency: int = 0) -> tuple[dict, float]:
    """grpc_spike_client.cjs's JSON, and the server CPU seconds it cost."""
    node = node_or_fail()
    before = spike.cpu()
    proc = subprocess.run([node, str(NODE_DIR / "grpc_spike_client.cjs"), spike.url, http_version,
                           str(calls), str(concurrency)],
                          cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), spike.cpu() - before


def python_call(channel: grpc.Channel, method: str = "GetLatestRev"):
    return channel.unary_unary(f"/bsky.Service/{method}",
                               request_serializer=bsky_pb2.GetLatestRevRequest.SerializeToString,
                               response_deserializer=bsky_pb2.GetLatestRevResponse.FromString)


def test_the_appviews_client_over_http2(spike: Spike) -> None:
    out, cpu = run_client(spike, "2", SPIKE_CALLS)
    assert out["first"] == {"ok": "rev-of:did:plc:spike"}, out
    # a handler's abort reaches the AppView's client as its code and message
    assert out["invalid"]["error"] == {"code": "InvalidArgument", "message": "actor_did: missing"}
    # a method of bsky.Service not implemented: unimplemented, by name
    assert out["unimplemented"]["error"]["code"] == "Unimplemented"
    assert "GetActors" in out["unimplemented"]["error"]["message"]
    lat = out["latency_us"]
    assert lat["n"] == SPIKE_CALLS and lat["median"] < 50_000
    per_call = cpu / out["calls_total"]
    print(f"\nnode {out['node']} createDataPlaneClient, HTTP/2, {lat['n']} sequential calls: "
          f"median {lat['median']:.0f} us, p90 {lat['p90']:.0f} us, p99 {lat['p99']:.0f} us; "
          f"server CPU {per_call * 1e6:.0f} us/call")
    out, cpu = run_client(spike, "2", SPIKE_CALLS, concurrency=16)
    tp = out["throughput"]
    print(f"node, HTTP/2, {tp['calls']} calls 16 in flight: {tp['calls_per_s']:.0f} calls/s "
          f"(client and server on the same cores); server CPU {cpu / out['calls_total'] * 1e6:.0f} "
          "us/call over that run's sequential and concurrent calls")


def test_the_appviews_client_over_http11_fails_at_once(spike: Spike) -> None:
    """grpc.aio speaks HTTP/2 only: BSKY_DATAPLANE_HTTP_VERSION=1.1 cannot reach it. The
    failure is immediate (not a deadline), and the server is unharmed."""
    started = time.monotonic()
    out, _ = run_client(spike, "1.1", 0)
    elapsed = time.monotonic() - started
    assert "ok" not in out["first"], f"HTTP/1.1 gRPC now works against grpc.aio: {out}"
    assert out["first"]["error"]["code"] != "DeadlineExceeded", out
    assert out["first_ms"] < 3000 and elapsed < 60
    print(f"\nnode, HTTP/1.1: {out['first']['error']} after {out['first_ms']:.0f} ms")
    with grpc.insecure_channel(f"127.0.0.1:{spike.port}") as ch:
        assert python_call(ch)(bsky_pb2.GetLatestRevRequest(actor_did="did:plc:after"),
                               timeout=10).rev == "rev-of:did:plc:after"


def test_a_python_client(spike: Spike) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{spike.port}") as ch:
        call = python_call(ch)
        req = bsky_pb2.GetLatestRevRequest(actor_did="did:plc:spike")
        assert call(req, timeout=10).rev == "rev-of:did:plc:spike"
        # a name outside bsky.Service: grpc's own UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as err:
            python_call(ch, "NoSuchMethod")(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # an undecodable request: INVALID_ARGUMENT (the server decodes it itself: left to
        # grpc's request_deserializer it would be UNKNOWN)
        raw = ch.unary_unary("/bsky.Service/GetLatestRev")
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        for _ in range(50):  # warm up, untimed
            call(req, timeout=10)
        before = spike.cpu()
        lat = []
        for _ in range(SPIKE_CALLS):
            t = time.perf_counter()
            call(req, timeout=10)
            lat.append((time.perf_counter() - t) * 1e6)
        cpu = spike.cpu() - before
    lat.sort()
    median = statistics.median(lat)
    assert median < 50_000
    print(f"\nPython grpcio {grpc.__version__} sync client, {len(lat)} sequential calls: median "
          f"{median:.0f} us, p90 {lat[int(0.9 * len(lat))]:.0f} us, p99 {lat[int(0.99 * len(lat))]:.0f} us; "
          f"server CPU {cpu / len(lat) * 1e6:.0f} us/call")
