"""Live ingest end to end: a fake Jetstream (a real websocket server on 127.0.0.1) plays a
capture, `smalldp serve` follows it, and every answer must equal a direct import of the
same capture, which itself must equal the capture's own model. Faults on the way: closed
and stalled sockets, garbage, oversized and undecompressable frames, failover to an
instance with other timestamps, SIGKILL and SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zstandard
from prometheus_client.parser import text_string_to_metric_families

from conftest import JETSTREAM, import_json
from fake_jetstream import FakeJetstream, Fault, options_updates
from smalldp.config import Settings, load_settings
from smalldp.events import MalformedEvent, decode_event
from smalldp.service import Service
from smalldp.store.reader import Reader
from smalldp.store.schema import db_path
from smalldp.systemd import Notifier
from test_import import answers, expected_answers, query_keys, realistic_capture, write_lines

EVENTS = 3000


class Reference:
    """A capture, its clean import and that import's answers (checked against the model)."""

    def __init__(self, tmp: Path, events: int, seed: int) -> None:
        self.cap = realistic_capture(events, seed=seed, garbage=True)
        self.lines: list[str] = self.cap.lines
        self.path = write_lines(tmp / "capture.jsonl", self.lines)
        self.keys, self.targets, self.uris = query_keys(self.cap)
        clean = tmp / "clean"
        import_json(clean, [self.path])
        self.answers = answers(clean, self.keys, self.targets, self.uris)
        assert self.answers == expected_answers(self.cap, self.keys, self.targets, self.uris)

    def check(self, data_dir: Path) -> None:
        assert answers(data_dir, self.keys, self.targets, self.uris) == self.answers


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return Reference(tmp_path_factory.mktemp("ref"), EVENTS, seed=11)


def last_op_time(lines: list[str]) -> int:
    """time_us of the last line that is an event smalldp applies (where the cursor ends)."""
    for line in reversed(lines):
        try:
            if decode_event(line) is not None:
                return int(json.loads(line)["time_us"])
        except MalformedEvent:
            continue
    raise AssertionError("no event")


def shifted(lines: list[str], delta_us: int) -> list[str]:
    """The same capture as another Jetstream instance would stamp it."""
    out = []
    for line in lines:
        try:
            event = json.loads(line)
            event["time_us"] += delta_us
            out.append(json.dumps(event, separators=(",", ":")))
        except (ValueError, KeyError, TypeError):
            out.append(line)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def live_settings(data_dir: Path, endpoints: list[str], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": str(data_dir), "listen": f"127.0.0.1:{free_port()}", "jetstream": endpoints,
        "compress": False, "rewind_s": 0, "liveness_s": 30, "batch_events": 200, "batch_ms": 50,
        "backoff_max_s": 1, "log_level": "warning", "grpc_listen": "off"}
    values.update(overrides)
    return load_settings(values, env={})


async def follow(settings: Settings, last_time_us: int, timeout: float = 60) -> Service:
    """Run the service in this loop until it has committed up to ``last_time_us``, then stop it."""
    service = Service(settings, ingest=True, notifier=Notifier({}))
    task = asyncio.create_task(service.run())
    deadline = time.monotonic() + timeout
    while not (service.metrics.cursor == last_time_us and service.pending_events() == 0):
        if task.done():
            task.result()
            raise AssertionError("the service stopped on its own")
        if time.monotonic() > deadline:
            service.stop.set()
            await task
            raise AssertionError(f"not caught up: {service.metrics.health()}")
        await asyncio.sleep(0.02)
    service.stop.set()
    assert await asyncio.wait_for(task, 15) == 0
    return service


# ---------------------------------------------------------------- in-process

def test_live_ingest_equals_import_with_small_batches(tmp_path: Path, ref: Reference) -> None:
    """Batches of 64 against a server that sends as fast as it can: reading pauses while
    each commits (backpressure), and nothing may be dropped."""
    async def main() -> None:
        async with FakeJetstream(ref.lines) as server:
            settings = live_settings(tmp_path / "live", [server.url], batch_events=64)
            service = await follow(settings, last_op_time(ref.lines))
        assert len(server.connections) == 1 and "cursor" not in server.connections[0].query
        assert service.metrics.decode_errors == ref.cap.malformed
        assert service.metrics.events_committed == ref.cap.valid_events
    asyncio.run(main())
    ref.check(tmp_path / "live")


def test_live_ingest_merges_in_slices_between_batches(tmp_path: Path, ref: Reference) -> None:
    """Live ingest's writer does not merge inside apply(): the ingest loop runs merge
    slices between batches, for at most merge_ms each time, and the store still equals a
    clean import."""
    async def main() -> None:
        async with FakeJetstream(ref.lines) as server:
            settings = live_settings(tmp_path / "live", [server.url], batch_events=64, compaction_fanout=2,
                                     merge_ms=10)
            service = await follow(settings, last_op_time(ref.lines))
        metrics = service.metrics
        assert metrics.merge_slices > 0 and metrics.merge_seconds > 0
        assert 0 < metrics.merge_slice_max_s < 30
        health = metrics.health()
        assert health["merge"]["slices"] == metrics.merge_slices  # type: ignore[index]
    asyncio.run(main())
    ref.check(tmp_path / "live")


def test_server_closes_mid_stream_then_resume_without_gap(tmp_path: Path, ref: Reference) -> None:
    faults = {0: Fault(close_after=700), 1: Fault(close_after=900)}

    async def main() -> None:
        async with FakeJetstream(ref.lines, faults=faults) as server:
            service = await follow(live_settings(tmp_path / "live", [server.url]), last_op_time(ref.lines))
        conns = server.connections
        assert len(conns) == 3 and service.metrics.reconnects == 2
        # rewind_s=0: each reconnection asks for the newest event seen, not an earlier point.
        first_sent = ref.lines[:700]
        assert int(conns[1].query["cursor"][0]) == last_op_time(first_sent)
    asyncio.run(main())
    ref.check(tmp_path / "live")


def test_silent_server_is_abandoned_after_liveness_timeout(tmp_path: Path, ref: Reference) -> None:
    async def main() -> None:
        async with FakeJetstream(ref.lines, faults={0: Fault(stall_after=500)}) as server:
            settings = live_settings(tmp_path / "live", [server.url], liveness_s=1)
            service = await follow(settings, last_op_time(ref.lines))
        assert len(server.connections) == 2
        assert "nothing received" in service.metrics.last_error
    asyncio.run(main())
    ref.check(tmp_path / "live")


def test_garbage_truncated_and_oversized_frames_are_counted_and_skipped(tmp_path: Path,
                                                                        ref: Reference) -> None:
    valid = next(line for line in ref.lines if '"kind":"commit"' in line)
    huge = json.dumps({"did": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "time_us": 1, "kind": "commit",
                       "commit": {"rev": "3l3qo2vutsw2b", "operation": "create",
                                  "collection": "app.bsky.feed.post", "rkey": "3l3qo2vutsw2b",
                                  "record": {"text": "x" * 20_000}}})
    frames: list[str | bytes] = ["garbage", valid[: len(valid) // 2], "{}", huge, b"\x28\xb5\x2f\xfd junk"]
    fault = Fault(inject={100: frames[:3], 1000: frames[3:]})

    async def main() -> None:
        async with FakeJetstream(ref.lines, faults={0: fault}) as server:
            settings = live_settings(tmp_path / "live", [server.url], max_message_bytes=8192)
            service = await follow(settings, last_op_time(ref.lines))
        assert len(server.connections) == 1  # bad frames never cost the connection
        assert service.metrics.oversized == 1
        assert service.metrics.decode_errors == ref.cap.malformed + len(frames)
    asyncio.run(main())
    ref.check(tmp_path / "live")


@pytest.mark.parametrize("delta_s", [3, -3])
def test_failover_to_an_instance_with_other_timestamps(tmp_path: Path, ref: Reference,
                                                       delta_s: int) -> None:
    """Server A dies; B has the same events stamped ``delta_s`` apart. The rewind (5 s)
    covers the skew; B replays events already applied under new time_us, which must not
    count twice."""
    lines_b = shifted(ref.lines, delta_s * 1_000_000)

    async def main() -> None:
        async with FakeJetstream(ref.lines, faults={0: Fault(die_after=1200)}) as a, \
                FakeJetstream(lines_b) as b:
            settings = live_settings(tmp_path / "live", [a.url, b.url], rewind_s=5)
            await follow(settings, last_op_time(lines_b))
        assert len(a.connections) == 1 and len(b.connections) >= 1
        assert int(b.connections[0].query["cursor"][0]) == last_op_time(ref.lines[:1200]) - 5_000_000
    asyncio.run(main())
    ref.check(tmp_path / "live")


def _trained_dictionary(lines: list[str]) -> bytes:
    return zstandard.train_dictionary(16_384, [line.encode() for line in lines[:2000]]).as_bytes()


@pytest.mark.parametrize("which", ["legacy", "trained"])
def test_compressed_v1_stream(tmp_path: Path, ref: Reference, which: str) -> None:
    if which == "legacy":
        path = JETSTREAM / "zstd_dictionary_legacy_subscribe.zdict"
        if not path.is_file():
            pytest.skip("../shared fixtures absent")
        dictionary = path.read_bytes()
    else:
        dictionary = _trained_dictionary(ref.lines)
        path = tmp_path / "trained.zdict"
        path.write_bytes(dictionary)
    other = zstandard.ZstdCompressor(dict_data=zstandard.ZstdCompressionDict(
        zstandard.train_dictionary(4096, [b'{"other":%d,"x":"%s"}' % (i, b"y" * (i % 30)) for i in range(300)]
                                   ).as_bytes()))
    bad: list[str | bytes] = [b"\x00not zstd at all", other.compress(ref.lines[5].encode())]

    async def main() -> None:
        async with FakeJetstream(ref.lines, dictionary=dictionary,
                                 faults={0: Fault(inject={50: bad})}) as server:
            settings = live_settings(tmp_path / "live", [server.url], compress=True,
                                     zstd_dictionary=str(path))
            service = await follow(settings, last_op_time(ref.lines))
        assert server.connections[0].query["compress"] == ["true"]
        assert service.metrics.decode_errors == ref.cap.malformed + len(bad)
        # Compressed: fewer bytes on the wire than the capture's text.
        assert service.metrics.bytes_received < 0.6 * sum(len(line) for line in ref.lines)
    asyncio.run(main())
    ref.check(tmp_path / "live")


def test_v2_wire_with_the_servers_dictionary(tmp_path: Path, ref: Reference) -> None:
    dictionary = _trained_dictionary(ref.lines)
    dict_id = int.from_bytes(dictionary[4:8], "little")

    async def main() -> None:
        async with FakeJetstream(ref.lines, wire="v2", dictionary=dictionary,
                                 faults={0: Fault(close_after=800)}) as server:
            settings = live_settings(tmp_path / "live", [server.url], jetstream_wire="v2",
                                     compress=True)
            await follow(settings, last_op_time(ref.lines))
        conns = server.connections
        assert len(conns) == 2 and conns[0].query["zstdDictionary"] == [str(dict_id)]
        assert int(conns[1].query["cursor"][0]) == last_op_time(ref.lines[:800])
    asyncio.run(main())
    ref.check(tmp_path / "live")
    assert (tmp_path / "live" / f"jetstream-v2-{dict_id}.zdict").read_bytes() == dictionary


def test_health_and_metrics_while_following(tmp_path: Path, ref: Reference) -> None:
    async def main() -> None:
        async with FakeJetstream(ref.lines) as server:
            settings = live_settings(tmp_path / "live", [server.url])
            service = Service(settings, ingest=True, notifier=Notifier({}))
            task = asyncio.create_task(service.run())
            await asyncio.wait_for(service.ready.wait(), 10)
            last = last_op_time(ref.lines)
            while service.metrics.cursor != last:
                await asyncio.sleep(0.02)
            base = f"http://127.0.0.1:{service.port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/xrpc/_health") as resp:
                    health = await resp.json()
                async with http.get(base + "/metrics") as resp:
                    assert resp.status == 200
                    text = await resp.text()
            service.stop.set()
            assert await task == 0
        assert health["ingest"] == "streaming" and health["cursor"] == last
        assert health["lag_s"] > 0 and health["jetstream"]["connected"] is True
        assert health["jetstream"]["endpoint"] == server.url
        families = {f.name: f.samples[0].value for f in text_string_to_metric_families(text)}
        assert families["smalldp_ingest_events"] == ref.cap.valid_events
        assert families["smalldp_ingest_decode_errors"] == ref.cap.malformed
        assert families["smalldp_ingest_connected"] == 1
        assert families["smalldp_ingest_cursor_microseconds"] == last
        assert families["smalldp_links"] == ref.answers["links"]
    asyncio.run(main())


# ---------------------------------------------------------------- the real process

def _serve_cmd(data: Path, port: int, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "smalldp.cli", "serve", "--grpc-listen", "off", "--data-dir", str(data),
            "--listen", f"127.0.0.1:{port}", "--jetstream", url, "--no-compress", "--rewind-s", "0",
            "--batch-events", "500", "--backoff-max-s", "1", *extra]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SMALLDP_") and k not in ("STATE_DIRECTORY", "NOTIFY_SOCKET")}
    env["SMALLDP_LOG_LEVEL"] = "warning"
    env.update(extra)
    return env


async def _health(port: int) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/xrpc/_health") as resp:
                return dict(await resp.json())
    except aiohttp.ClientError:
        return None


async def _until_caught_up(port: int, last: int, proc: asyncio.subprocess.Process,
                           timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.returncode is None, "serve exited"
        health = await _health(port)
        if health and health["cursor"] == last and health["jetstream"]["queue_depth"] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not caught up: {await _health(port)}")


async def _terminate(proc: asyncio.subprocess.Process, within: float = 10) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), within)
    return time.monotonic() - started


def _committed_cursor(data: Path) -> int | None:
    reader = Reader(db_path(data))
    try:
        cursor = reader.stats()["cursor"]
        return None if cursor is None else int(cursor)
    finally:
        reader.close()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return Reference(tmp_path_factory.mktemp("big"), 20_000, seed=12)


def test_sigkill_mid_stream_then_restart(tmp_path: Path, big: Reference) -> None:
    rng = random.Random()
    last = last_op_time(big.lines)

    async def trial(n: int) -> None:
        data = tmp_path / f"kill{n}"
        async with FakeJetstream(big.lines) as server:
            port = free_port()
            proc = await asyncio.create_subprocess_exec(*_serve_cmd(data, port, server.url), env=_env())
            while not (h := await _health(port)) or not h["jetstream"]["events"]:
                await asyncio.sleep(0.02)
            await asyncio.sleep(rng.uniform(0.0, 0.8))
            proc.kill()
            await proc.wait()
            killed_at = _committed_cursor(data)
            proc = await asyncio.create_subprocess_exec(*_serve_cmd(data, port, server.url), env=_env())
            await _until_caught_up(port, last, proc)
            await _terminate(proc)
            assert proc.returncode == 0
        if killed_at is not None and killed_at != last:
            # The restart resumed at the committed cursor, not from the start.
            assert server.connections[1].query["cursor"] == [str(killed_at)]
        big.check(data)

    async def main() -> None:
        for n in range(2):
            await trial(n)
    asyncio.run(main())


def test_sigterm_under_full_speed_ingest_commits_and_resumes(tmp_path: Path, big: Reference) -> None:
    data = tmp_path / "live"
    last = last_op_time(big.lines)

    async def main() -> None:
        async with FakeJetstream(big.lines) as server:
            port = free_port()
            # SIGTERM commits the batch being filled; the stream is still flowing.
            cmd = _serve_cmd(data, port, server.url)
            proc = await asyncio.create_subprocess_exec(*cmd, env=_env())
            while not (h := await _health(port)) or h["jetstream"]["events"] < 2000:
                await asyncio.sleep(0.01)
            took = await _terminate(proc)
            assert proc.returncode == 0 and took < 10
            committed = _committed_cursor(data)
            assert committed is not None and committed < last  # stopped mid-stream...
            proc = await asyncio.create_subprocess_exec(*_serve_cmd(data, port, server.url), env=_env())
            await _until_caught_up(port, last, proc)
            await _terminate(proc)
        # ...and the restart asked for exactly the committed cursor: no gap.
        assert server.connections[1].query["cursor"] == [str(committed)]
    asyncio.run(main())
    big.check(data)


def test_sighup_sends_new_filters_without_reconnecting(tmp_path: Path, ref: Reference) -> None:
    config = tmp_path / "smalldp.toml"
    config.write_text('wanted_collections = ["app.bsky.feed.like"]\n')

    async def main() -> None:
        async with FakeJetstream(ref.lines) as server:
            port = free_port()
            proc = await asyncio.create_subprocess_exec(
                *_serve_cmd(tmp_path / "live", port, server.url, "--config", str(config)), env=_env())
            while not (h := await _health(port)) or not h["jetstream"]["connected"]:
                await asyncio.sleep(0.02)
            assert server.connections[0].query["wantedCollections"] == ["app.bsky.feed.like"]
            config.write_text('wanted_collections = ["app.bsky.feed.post", "app.bsky.graph.*"]\n'
                              'wanted_dids = ["did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"]\n')
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while not options_updates(server.connections[0]) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await _terminate(proc)
        assert len(server.connections) == 1
        assert options_updates(server.connections[0]) == [{
            "wantedCollections": ["app.bsky.feed.post", "app.bsky.graph.*"],
            "wantedDids": ["did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"], "maxMessageSizeBytes": 0}]
    asyncio.run(main())


def test_systemd_ready_status_watchdog_stopping(tmp_path: Path, ref: Reference) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)

    async def main() -> list[bytes]:
        messages: list[bytes] = []
        async with FakeJetstream(ref.lines) as server:
            port = free_port()
            proc = await asyncio.create_subprocess_exec(
                *_serve_cmd(tmp_path / "live", port, server.url),
                env=_env(NOTIFY_SOCKET=path, WATCHDOG_USEC="900000"))
            # WATCHDOG_PID is unset: the watchdog is then meant for whoever reads it.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(m == b"WATCHDOG=1" for m in messages[1:]):
                try:
                    messages.append(sock.recv(4096))
                except BlockingIOError:
                    await asyncio.sleep(0.02)
            health = await _health(port)
            await _terminate(proc)
            while True:
                try:
                    messages.append(sock.recv(4096))
                except BlockingIOError:
                    break
        assert health is not None
        return messages

    messages = asyncio.run(main())
    sock.close()
    assert messages[0].startswith(b"READY=1\nSTATUS=")
    assert b"WATCHDOG=1" in messages
    assert any(m.startswith(b"STATUS=") and b"events/s" in m for m in messages)
    assert b"STOPPING=1" in messages
    assert messages.index(b"STOPPING=1") > messages.index(b"WATCHDOG=1")


def _keys_of(lines: list[bytes], limit: int = 3000) -> tuple[set[tuple[str, str, str]], set[str], list[str]]:
    """Query keys for a generated capture: every (target, collection, path) some record linked
    (capped), their targets, and some record URIs."""
    from test_import import _walk_links
    keys: set[tuple[str, str, str]] = set()
    uris: list[str] = []
    for line in lines:
        event = json.loads(line)
        commit = event.get("commit") or {}
        record = commit.get("record")
        if not isinstance(record, dict):
            continue
        if len(uris) < 200 and commit["collection"] == "app.bsky.feed.post":
            uris.append(f"at://{event['did']}/{commit['collection']}/{commit['rkey']}")
        for path, target in _walk_links(record):
            if len(keys) < limit:
                keys.add((target, commit["collection"], path))
    return keys, {k[0] for k in keys}, uris


def test_smalldp_replay_to_smalldp_serve_equals_import(tmp_path: Path) -> None:
    """The real commands end to end: `smalldp replay` a generated capture (zstd with the real
    dictionary when the fixtures are there), `smalldp serve` follows it."""
    capture = tmp_path / "capture.jsonl"
    gen = Path(__file__).resolve().parents[1] / "scripts" / "gen_events.py"
    subprocess_env = _env()
    subprocess.run([sys.executable, str(gen), "--events", "30000", "--seed", "5", "--out", str(capture)],
                   check=True, env=subprocess_env, timeout=120)
    lines = capture.read_bytes().splitlines()
    import_json(tmp_path / "clean", [capture])
    last = _committed_cursor(tmp_path / "clean")
    assert last is not None
    dictionary = JETSTREAM / "zstd_dictionary_legacy_subscribe.zdict"
    compress = ["--zstd-dictionary", str(dictionary)] if dictionary.is_file() else []

    async def main() -> None:
        rport, port = free_port(), free_port()
        replay = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "smalldp.cli", "replay", str(capture), "--listen", f"127.0.0.1:{rport}",
            *compress, env=subprocess_env, stdout=asyncio.subprocess.DEVNULL)
        try:
            cmd = _serve_cmd(tmp_path / "live", port, f"ws://127.0.0.1:{rport}/subscribe")
            if compress:
                cmd = [c for c in cmd if c != "--no-compress"] + compress
            # If replay is not listening yet, serve's reconnection loop covers it.
            serve = await asyncio.create_subprocess_exec(*cmd, env=subprocess_env)
            await _until_caught_up(port, last, serve, timeout=120)
            health = await _health(port)
            await _terminate(serve)
            assert serve.returncode == 0
        finally:
            replay.send_signal(signal.SIGTERM)
            await asyncio.wait_for(replay.wait(), 10)
        assert health is not None and health["jetstream"]["decode_errors"] == 0
        if compress:
            assert health["jetstream"]["connected"]
    asyncio.run(main())
    keys, targets, uris = _keys_of(lines)
    assert len(keys) > 1000
    assert answers(tmp_path / "live", keys, targets, uris) == answers(tmp_path / "clean", keys, targets, uris)


def test_dictionary_missing_at_start_is_fetched_again_later(tmp_path: Path, ref: Reference,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """No dictionary at boot (say, no network yet): run uncompressed, and compress on a
    later connection once the dictionary can be had."""
    from smalldp.ingest import jetstream
    monkeypatch.setattr(jetstream, "DICTIONARY_RETRY_S", 0.0)
    dictionary = _trained_dictionary(ref.lines)
    path = tmp_path / "later.zdict"

    async def main() -> None:
        async with FakeJetstream(ref.lines, dictionary=dictionary,
                                 faults={0: Fault(close_after=1000)}) as server:
            settings = live_settings(tmp_path / "live", [server.url], compress=True,
                                     zstd_dictionary=str(path))
            service = Service(settings, ingest=True, notifier=Notifier({}))
            task = asyncio.create_task(service.run())
            while not server.connections:
                await asyncio.sleep(0.01)
            path.write_bytes(dictionary)
            last = last_op_time(ref.lines)
            while service.metrics.cursor != last or service.pending_events():
                assert not task.done()
                await asyncio.sleep(0.02)
            service.stop.set()
            assert await task == 0
        assert "compress" not in server.connections[0].query
        assert server.connections[1].query["compress"] == ["true"]
    asyncio.run(main())
    ref.check(tmp_path / "live")


def test_a_store_that_cannot_grow_pauses_ingest_until_it_can(tmp_path: Path, ref: Reference) -> None:
    """SQLite refuses to grow the file (a real SQLITE_FULL, from max_page_count): ingest
    pauses instead of failing, keeps the rolled-back batch and retries it; once the store
    can grow again it resumes by itself, and nothing is lost or applied twice."""
    from smalldp.ingest.diskguard import DiskGuard
    from smalldp.ingest.live import LiveIngest
    from smalldp.ingest.metrics import IngestMetrics
    from smalldp.service import client_options, open_writer

    grow = threading.Event()

    def small_writer(settings: Settings) -> Any:
        writer = open_writer(settings)
        pages = writer.conn.execute("PRAGMA page_count").fetchone()[0]
        writer.conn.execute(f"PRAGMA max_page_count={pages + 12}")

        def pause() -> None:
            # Runs on the ingest thread inside Writer.apply: "space returns".
            if grow.is_set():
                writer.conn.execute("PRAGMA max_page_count=1073741823")
        writer.pause = pause
        return writer

    async def main() -> tuple[LiveIngest, dict[str, Any], int]:
        async with FakeJetstream(ref.lines) as server:
            settings = live_settings(tmp_path / "live", [server.url])
            metrics = IngestMetrics()
            # No free-space floor (this disk has room): only the failed commits pause.
            guard = DiskGuard(tmp_path / "live", min_free_mb=0, min_free_percent=0, poll_s=0.05,
                              retry_max_s=0.2)
            live = LiveIngest(lambda: small_writer(settings), client_options(settings), metrics,
                              batch_events=200, batch_ms=50, data_dir=tmp_path / "live", disk_guard=guard)
            live.start()
            deadline = time.monotonic() + 60
            while guard.full_failures < 3:  # several retries, each rolled back
                assert not live.wait_done(0), live.error
                assert time.monotonic() < deadline, metrics.health()
                await asyncio.sleep(0.02)
            paused = metrics.health()
            committed = metrics.events_committed
            assert _committed_cursor(tmp_path / "live") == metrics.cursor
            grow.set()
            last = last_op_time(ref.lines)
            while not (metrics.cursor == last and live.pending() == 0):
                assert not live.wait_done(0), live.error
                assert time.monotonic() < deadline, metrics.health()
                await asyncio.sleep(0.02)
            live.stop()
            assert await asyncio.get_running_loop().run_in_executor(None, live.wait_done, 30)
            return live, paused, committed

    live, paused, committed = asyncio.run(main())
    assert paused["state"] == "paused" and paused["paused_reason"].startswith("disk full")
    assert "database or disk is full" in paused["paused_reason"]
    assert 0 < committed < live.metrics.events_committed
    assert live.error is None and live.metrics.state == "stopped"
    # Each event committed once: a rolled-back batch was not counted, and is not missing.
    assert live.metrics.events_committed == ref.cap.valid_events
    assert live.metrics.disk_full_failures >= 3 and live.metrics.paused_reason == ""
    ref.check(tmp_path / "live")
