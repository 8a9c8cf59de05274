"""`smalldp backfill` handed to a running `smalldp serve` over its admin socket, while live
ingest goes on: a fake Jetstream (a real websocket server on 127.0.0.1) feeds the serve, a
fake PLC/PDS (real HTTP on 127.0.0.1) serves the CARs, and the answers must equal the model
of the rules (tests/test_backfill.py's ``Model``), whatever the interleaving of the two.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fake_jetstream import FakeJetstream
from fake_pds import FakeNetwork
from repo_builder import build_repo, generated_records
from smalldp.events import decode_event
from smalldp.ingest.live import IngestStopped
from smalldp.service import Service
from smalldp.store.reader import Reader
from smalldp.store.schema import db_path
from smalldp.store.writer import Writer
from smalldp.systemd import Notifier
from smalldp.tid import int_to_tid, tid_to_int
from test_backfill import (LIKE, POST, Model, check_against, did_of, finish, like, live_event, post,
                           record_cids, rkey, status)
from test_live import free_port, live_settings

R = tid_to_int("3migo7fijwi2k")
assert R is not None
FILLER_SUBJECT = "at://did:plc:fillerfillerfillerfiller/app.bsky.feed.post/3kfillerpost2"


@pytest.fixture
def sock_dir() -> Any:
    """A short directory for admin sockets (pytest's tmp paths can pass the 107-byte limit)."""
    with tempfile.TemporaryDirectory(prefix="sdp") as path:
        yield Path(path)


# ---------------------------------------------------------------- the writer's side


def test_an_older_commit_applied_during_a_backfill_is_swept_by_its_reconcile(tmp_path: Path) -> None:
    """An account never seen before: not stale when its backfill begins, but a live commit
    below the CAR's rev lands between the backfill's batches; the reconcile must sweep it."""
    did = did_of(7)
    writer = Writer(db_path(tmp_path), purge_rows=3)
    assert writer.watch_backfill(did, R) is False  # nothing of it stored
    car = {f"{LIKE}/{rkey(i)}": like(i) for i in range(4)}
    model = Model()
    writer.apply([decode_event(live_event(did, R, p, v, 10 + n)) for n, (p, v) in enumerate(list(car.items())[:2])])
    older = f"{LIKE}/{rkey(50)}"  # absent from the CAR: deleted before R, its create arrives late
    writer.apply([decode_event(live_event(did, R - 7, older, like(50), 20))], cursor=20)
    model.live(R - 7, older, like(50))
    writer.apply([decode_event(live_event(did, R, p, v, 30 + n)) for n, (p, v) in enumerate(list(car.items())[2:])])
    writer.reconcile(did, R, False)
    model.backfill(R, car)
    assert writer.purges.reconciles == set(writer.purges.queue) and len(writer.purges) == 1
    writer.finish_purges()
    writer.close()
    check_against(tmp_path, did, model)
    assert older not in record_cids(tmp_path, did)


def test_an_unwatched_account_queues_no_reconcile(tmp_path: Path) -> None:
    """The watch ends with the reconcile (or the failure): later older commits of the account
    are the purged_rev rule's business, and another account's never counted."""
    did, other = did_of(8), did_of(9)
    writer = Writer(db_path(tmp_path))
    writer.watch_backfill(did, R)
    writer.apply([decode_event(live_event(other, R - 9, f"{LIKE}/{rkey(1)}", like(1), 5))], cursor=5)
    writer.unwatch_backfill(did)
    writer.apply([decode_event(live_event(did, R - 8, f"{LIKE}/{rkey(2)}", like(2), 6))], cursor=6)
    writer.watch_backfill(did, R)
    writer.reconcile(did, R, False)
    assert len(writer.purges) == 0
    writer.close()


# ---------------------------------------------------------------- the ingest thread's jobs


def test_jobs_run_on_the_ingest_thread_and_fail_once_it_stopped(tmp_path: Path) -> None:
    lines = [live_event(did_of(20 + i), R + i, f"{POST}/{rkey(i)}", post(f"p{i}"), 1_000 + i) for i in range(50)]

    async def main() -> None:
        async with FakeJetstream(lines) as jet:
            settings = live_settings(tmp_path, [jet.url], admin_socket="off")
            service = Service(settings, ingest=True, notifier=Notifier({}))
            task = asyncio.create_task(service.run())
            await asyncio.wait_for(service.ready.wait(), 30)
            live = service._live
            assert live is not None
            did = did_of(99)
            op = decode_event(live_event(did, R, f"{POST}/{rkey(500)}", post("from a job"), 5))

            def job(writer: Writer) -> tuple[str, int]:
                writer.apply([op])
                return threading.current_thread().name, len(writer.actors)

            name, _ = await asyncio.wrap_future(live.submit(job))
            assert name == "ingest"
            failing = live.submit(lambda writer: 1 // 0)
            with pytest.raises(ZeroDivisionError):
                await asyncio.wrap_future(failing)
            while service.metrics.cursor != 1_049:
                await asyncio.sleep(0.02)
            service.stop.set()
            assert await asyncio.wait_for(task, 30) == 0
            late = live.submit(lambda writer: None)
            with pytest.raises(IngestStopped):
                late.result(timeout=1)
            reader = Reader(db_path(tmp_path))
            try:
                record = reader.record(f"at://{did}/{POST}/{rkey(500)}")
                assert record is not None and record["value"]["text"] == "from a job"
                assert reader.record(f"at://{did_of(20)}/{POST}/{rkey(0)}") is not None
            finally:
                reader.close()

    asyncio.run(main())


# ---------------------------------------------------------------- the real processes


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SMALLDP_") and k not in ("STATE_DIRECTORY", "NOTIFY_SOCKET")}
    env["SMALLDP_LOG_LEVEL"] = "warning"
    return env


def _serve(data: Path, port: int, url: str, sock: Path, net: FakeNetwork, *extra: str) -> list[str]:
    return [sys.executable, "-m", "smalldp.cli", "serve", "--grpc-listen", "off", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
            "--jetstream", url, "--no-compress", "--rewind-s", "0", "--batch-events", "100", "--batch-ms", "100",
            "--backoff-max-s", "1", "--admin-socket", str(sock), "--plc-url", f"{net.base}/plc", *extra]


def _backfill(data: Path, sock: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "smalldp.cli", "backfill", "--data-dir", str(data), "--admin-socket", str(sock),
            *args]


async def _health(port: int) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/xrpc/_health") as resp:
                return dict(await resp.json())
    except aiohttp.ClientError:
        return None


async def _until(port: int, proc: asyncio.subprocess.Process, ready: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.returncode is None, "serve exited"
        health = await _health(port)
        if health is not None and ready(health):
            return health
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out: {await _health(port)}")


async def _run(cmd: list[str], timeout: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*cmd, env=_env(), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _stream(a: str, b: str) -> tuple[list[str], Model, Model, int]:
    """Filler likes of many accounts, with commits of ``a`` (seen before the backfill) and
    ``b`` (never seen before it) spread through: below and above R, on records the CARs
    have and records they do not.  None at R itself: a commit at the CAR's own rev counts
    only if it comes first, so the outcome would depend on the interleaving."""
    events: list[tuple[str, int, str, dict[str, Any] | None]] = [
        (a, R - 50, f"{LIKE}/{rkey(500)}", like(500)), (a, R - 40, f"{LIKE}/{rkey(3)}", like(3)),
        (a, R - 30, f"{POST}/{rkey(101)}", post("old text")), (a, R - 20, f"{LIKE}/{rkey(4)}", None),
        (b, R - 25, f"{LIKE}/{rkey(1500)}", like(1500)), (a, R + 10, f"{LIKE}/{rkey(600)}", like(600)),
        (b, R - 15, f"{LIKE}/{rkey(1003)}", None), (a, R + 20, f"{POST}/{rkey(102)}", post("edited later")),
        (b, R + 5, f"{LIKE}/{rkey(1600)}", like(1600)), (a, R + 1, f"{LIKE}/{rkey(7)}", None),
        (b, R - 5, f"{POST}/{rkey(1100)}", post("older b")), (a, R + 30, f"{LIKE}/{rkey(5)}", None),
        (b, R + 40, f"{POST}/{rkey(1101)}", post("newer b")), (a, R - 4, f"{LIKE}/{rkey(6)}", None),
        (b, R - 3, f"{LIKE}/{rkey(1700)}", like(1700)), (a, R + 41, f"{LIKE}/{rkey(701)}", like(701)),
    ]
    models = {a: Model(), b: Model()}
    lines: list[str] = []
    time_us = 1_000_000
    per_gap = 120  # filler likes between two commits of a or b
    for did, rev, path, value in events:
        for _ in range(per_gap):
            time_us += 1_000
            n = time_us // 1_000
            lines.append(json.dumps({"did": did_of(10_000 + n % 300), "time_us": time_us, "kind": "commit",
                                     "commit": {"rev": int_to_tid(R + n), "operation": "create",
                                                "collection": LIKE, "rkey": int_to_tid((R + n) << 1),
                                                "record": {"$type": LIKE, "createdAt": "2026-07-04T12:34:56.789Z",
                                                           "subject": {"uri": FILLER_SUBJECT,
                                                                       "cid": "bafyreigr42szav77jmphd52ku6fqxq3vxqzcqmix53hqiklw33b4otwmdy"}}}}))
        time_us += 1_000
        lines.append(live_event(did, rev, path, value, time_us))
    return lines, models[a], models[b], time_us


def test_backfill_through_a_running_serve_agrees_with_live_ingest(tmp_path: Path, sock_dir: Path) -> None:
    a, b = did_of(100), did_of(101)
    car_a = {f"{LIKE}/{rkey(i)}": like(i) for i in range(20)} | {
        f"{POST}/{rkey(100 + i)}": post(f"car post {i}") for i in range(5)}
    car_a |= generated_records(1500, seed=3)  # a few batches of backfill_batch_records
    car_b = {f"{LIKE}/{rkey(1000 + i)}": like(1000 + i) for i in range(10)} | {
        f"{POST}/{rkey(1100)}": post("car b")}
    lines, model_a, model_b, last = _stream(a, b)
    early = [json.loads(line) for line in lines[:700]]  # what serve has committed before the backfill
    data, sock = tmp_path / "data", sock_dir / "admin.sock"
    port = free_port()

    async def main() -> dict[str, Any]:
        with FakeNetwork(cars={a: build_repo(car_a, did=a, rev=int_to_tid(R)).car(),
                               b: build_repo(car_b, did=b, rev=int_to_tid(R)).car()}) as net:
            net.delay_s = 0.3
            async with FakeJetstream(lines, pace_s=0.003) as jet:
                serve = await asyncio.create_subprocess_exec(*_serve(data, port, jet.url, sock, net), env=_env())
                try:
                    await _until(port, serve, lambda h: (h["cursor"] or 0) >= early[-1]["time_us"])
                    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
                    backfill = asyncio.create_task(_run(_backfill(
                        data, sock, "--allow-local", "--backfill-batch-records", "200", "--json", a, b)))
                    running = await _until(port, serve, lambda h: (h.get("backfill") or {}).get("state") == "running")
                    events_then = running["jetstream"]["events"]
                    code, out, err = await backfill
                    assert code == 0, out + err
                    assert "handing the backfill to the running smalldp serve" in err
                    summary = json.loads(out)
                    assert (summary["done"], summary["failed"]) == (2, 0), summary
                    assert summary["records"] == len(car_a) + len(car_b)
                    health = await _health(port)
                    assert health is not None and health["backfill"]["state"] == "done"
                    assert health["backfill"]["summary"]["done"] == 2
                    # live ingest went on while the backfill ran: commits in between
                    assert health["jetstream"]["events"] > events_then, (events_then, health["jetstream"])
                    status_code, status_out, _ = await _run(_backfill(data, sock, "--status"))
                    assert status_code == 0 and "smalldp serve: backfill done: 2/2 repos" in status_out
                    await _until(port, serve, lambda h: h["cursor"] == last and h["jetstream"]["queue_depth"] == 0)
                finally:
                    if serve.returncode is None:
                        serve.send_signal(signal.SIGTERM)
                    assert await asyncio.wait_for(serve.wait(), 30) == 0
                assert not sock.exists(), "the socket outlived the service"
                return summary

    asyncio.run(main())
    for line in lines:
        event = json.loads(line)
        did = event["did"]
        if did in (a, b):
            commit = event["commit"]
            path = f"{commit['collection']}/{commit['rkey']}"
            (model_a if did == a else model_b).live(tid_to_int(commit["rev"]) or 0, path, commit.get("record"))
    model_a.backfill(R, car_a)
    model_b.backfill(R, car_b)
    for did, model in ((a, model_a), (b, model_b)):
        # The order of live commits and backfill does not change the model's answer, so
        # this holds however they interleaved; after the sweep has gone round:
        finish(data)
        check_against(data, did, model)
    reader = Reader(db_path(data))
    try:
        assert reader.count(FILLER_SUBJECT, LIKE, ".subject.uri") == len(lines) - 16
    finally:
        reader.close()
    assert status(data) == {a: ("done", None), b: ("done", None)}


def test_serve_stopped_mid_backfill_then_again_resumes_to_a_clean_runs_result(
        tmp_path: Path, sock_dir: Path) -> None:
    cars = {did_of(i): build_repo(generated_records(200, seed=40 + i), did=did_of(i)).car() for i in range(8)}
    names = sorted(cars)
    lines = [live_event(did_of(200 + i), R + i, f"{POST}/{rkey(i)}", post(f"p{i}"), 1_000 + i) for i in range(20)]
    data, sock, clean = tmp_path / "data", sock_dir / "admin.sock", tmp_path / "clean"

    async def main() -> None:
        with FakeNetwork(cars=cars) as net:
            code, out, err = await _run([sys.executable, "-m", "smalldp.cli", "backfill", "--data-dir", str(clean),
                                         "--plc-url", f"{net.base}/plc", "--allow-local", *names])
            assert code == 0, out + err
            async with FakeJetstream(lines) as jet:
                port = free_port()
                net.delay_s = 0.6
                serve = await asyncio.create_subprocess_exec(*_serve(data, port, jet.url, sock, net,
                                                                     "--backfill-concurrency", "1"), env=_env())
                await _until(port, serve, lambda h: h["cursor"] == 1_019)
                backfill = asyncio.create_task(_run(_backfill(data, sock, "--allow-local", *names)))
                await _until(port, serve, lambda h: (h.get("backfill") or {}).get("summary", {}).get("done", 0) >= 2)
                # a second one is refused while this one runs, saying why
                code, out, err = await _run(_backfill(data, sock, "--allow-local", did_of(0)))
                assert code == 1 and "a backfill is already running" in err, out + err
                serve.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(serve.wait(), 30) == 0
                code, out, err = await backfill
                assert code == 1 and "smalldp serve stopped during the backfill" in err, out + err
                states = {s for s, _ in status(data).values()}
                assert "done" in states and states & {"queued", "running"}, states
                net.delay_s = 0
                serve = await asyncio.create_subprocess_exec(*_serve(data, port, jet.url, sock, net), env=_env())
                try:
                    await _until(port, serve, lambda h: h["cursor"] == 1_019)
                    code, out, err = await _run(_backfill(data, sock, "--allow-local", "--json", *names))
                    assert code == 0, out + err
                    assert json.loads(out)["skipped"] >= 2  # the repos done before the stop are not fetched again
                finally:
                    serve.send_signal(signal.SIGTERM)
                    assert await asyncio.wait_for(serve.wait(), 30) == 0

    asyncio.run(main())
    assert status(data) == status(clean)
    for did in names:
        assert record_cids(data, did) == record_cids(clean, did)


def test_the_admin_socket_refuses_bad_requests_and_cancels(tmp_path: Path, sock_dir: Path) -> None:
    cars = {did_of(i): build_repo(generated_records(50, seed=i), did=did_of(i)).car() for i in range(6)}
    data, sock = tmp_path / "data", sock_dir / "admin.sock"

    async def call(method: str, route: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as http:
            async with http.request(method, f"http://x{route}", **kwargs) as resp:
                return resp.status, dict(await resp.json())

    async def main() -> None:
        with FakeNetwork(cars=cars) as net:
            async with FakeJetstream([]) as jet:
                port = free_port()
                serve = await asyncio.create_subprocess_exec(*_serve(data, port, jet.url, sock, net), env=_env())
                try:
                    await _until(port, serve, lambda h: True)
                    status_code, idle = await call("GET", "/backfill")
                    assert status_code == 200 and idle["state"] == "idle" and idle["id"] == 0
                    for body in (b"not json", b"[]", b'{"names": []}', b'{"names": "did:plc:x"}',
                                 b'{"names": ["x"], "relay": "https://r"}', b'{"names": ["x"], "refetch": "yes"}',
                                 b'{"names": ["x"], "settings": {"data_dir": "/"}}',
                                 b'{"names": ["x"], "settings": {"backfill_concurrency": "0"}}'):
                        code, reply = await call("POST", "/backfill", data=body)
                        assert code == 400 and set(reply) == {"error", "message"}, (body, reply)
                    health = await _health(port)
                    assert health is not None and "backfill" not in health  # none was started
                    net.delay_s = 0.5
                    code, started = await call("POST", "/backfill", json={
                        "names": sorted(cars), "allow_local": True, "settings": {"backfill_concurrency": "1"}})
                    assert code == 202 and started["state"] == "running"
                    await _until(port, serve, lambda h: h["backfill"]["summary"]["done"] >= 1)
                    code, out, err = await _run(_backfill(data, sock, "--cancel"))
                    assert code == 0 and "cancelled the running backfill" in out, out + err
                    code, after = await call("GET", "/backfill")
                    assert after["state"] == "cancelled" and after["summary"]["done"] < len(cars)
                    code, out, err = await _run(_backfill(data, sock, "--cancel"))
                    assert code == 0 and "no backfill was running" in out
                    # the service is unharmed: it answers, and takes the next backfill
                    net.delay_s = 0
                    code, out, err = await _run(_backfill(data, sock, "--allow-local", "--json", *sorted(cars)))
                    assert code == 0 and json.loads(out)["done"] + json.loads(out)["skipped"] == len(cars), out + err
                finally:
                    serve.send_signal(signal.SIGTERM)
                    assert await asyncio.wait_for(serve.wait(), 30) == 0

    asyncio.run(main())
    assert {s for s, _ in status(data).values()} == {"done"}


def test_a_socket_path_too_long_is_refused_at_start_with_the_reason(tmp_path: Path) -> None:
    long_path = tmp_path / ("x" * 120) / "admin.sock"
    with FakeNetwork() as net:
        proc = asyncio.run(_run(_serve(tmp_path / "data", free_port(), "ws://127.0.0.1:9/subscribe", long_path, net),
                                timeout=60))
    code, _, err = proc
    assert code == 2 and "longer than the 107 a Unix socket allows" in err, err
