"""`smalldp replay --wire firehose`: frame files and JSONL captures served as a relay's
subscribeRepos over a real websocket on 127.0.0.1, then `smalldp serve --firehose` against it.

Oracles: the fixture frame file's own bytes and seqs (read by the tests' own reader), the
v1 path's decoding of the lines a frame was made from, and `smalldp import` of a capture.
"""

from __future__ import annotations

import asyncio
import json
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from conftest import import_json
from fake_relay import seq_of
from smalldp.events import DeleteRecord, PutRecord, decode_event
from smalldp.events_firehose import ErrorFrame, InfoFrame, OpsFrame, decode_frame_firehose
from smalldp.replay_firehose import PATH, frames_from_lines, is_frame_file, iter_frames, make_relay_app, write_frame_file
from test_events_firehose import read_frames
from test_import import answers, query_keys, realistic_capture, write_lines
from test_live import _env, _health, free_port


async def served(files: list[Path], query: str, count: int, speed: float | None = None) -> list[Any]:
    """The first ``count`` messages a subscriber gets (then a close, if that came first)."""
    runner = web.AppRunner(make_relay_app(files, speed=speed))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{port}{PATH}{query}") as ws:
                out: list[Any] = []
                while len(out) < count:
                    msg = await ws.receive(timeout=10)
                    if msg.type is not WSMsgType.BINARY:
                        out.append(msg.type)
                        break
                    out.append(msg.data)
                return out
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
def corpus(jetstream_dir: Path) -> tuple[Path, list[bytes]]:
    path = jetstream_dir / "corpus_frames.bin.zst"
    return path, list(read_frames(path))


def test_frame_file_served_unchanged_with_cursors(corpus: tuple[Path, list[bytes]]) -> None:
    path, frames = corpus
    first, last = seq_of(frames[0]), seq_of(frames[-1])
    assert first is not None and last is not None
    assert asyncio.run(served([path], "", 150)) == frames
    # a relay's cursor: the frames after it
    assert asyncio.run(served([path], f"?cursor={first + 9}", 140)) == frames[10:]
    # past the last frame: FutureCursor, then the relay closes
    got = asyncio.run(served([path], f"?cursor={last + 1}", 2))
    assert decode_frame_firehose(got[0]) == ErrorFrame("FutureCursor", "Cursor in the future.")
    assert got[1] in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    # before the first: OutdatedCursor, then everything
    got = asyncio.run(served([path], f"?cursor={first - 5}", 151))
    info = decode_frame_firehose(got[0])
    assert isinstance(info, InfoFrame) and info.name == "OutdatedCursor" and got[1:] == frames


def test_paced_at_a_speed_by_the_frames_time(corpus: tuple[Path, list[bytes]]) -> None:
    path, frames = corpus
    ops = [decode_frame_firehose(f) for f in frames]
    times = [op.ops[0].time_us for op in ops if isinstance(op, OpsFrame) and op.ops]
    # Paced from the first frame: the last frame due is the one with the latest time (PDS
    # clocks make the frames' times not quite monotonic).
    ahead_s = (max(times) - times[0]) / 1e6
    assert ahead_s > 0.2
    started = time.monotonic()
    assert asyncio.run(served([path], "", 150, speed=2.0)) == frames
    assert time.monotonic() - started >= ahead_s / 2 * 0.9


def test_frame_files_written_and_read_back(tmp_path: Path, corpus: tuple[Path, list[bytes]]) -> None:
    _, frames = corpus
    for name in ("f.bin", "f.bin.zst"):
        assert write_frame_file(tmp_path / name, frames) == 150
        assert is_frame_file(tmp_path / name)
        assert list(iter_frames([tmp_path / name])) == frames
    lines = tmp_path / "c.jsonl"
    lines.write_text('{"did":"did:plc:x","time_us":1,"kind":"identity","identity":{"did":"did:plc:x"}}\n')
    assert not is_frame_file(lines)


def test_frames_made_from_lines_decode_to_the_lines_operations() -> None:
    cap = realistic_capture(800, seed=9)
    lines = [line.encode() for line in cap.lines]
    frames = list(frames_from_lines(lines))
    assert len(frames) == len(lines)
    kinds: set[str] = set()
    for n, (line, frame) in enumerate(zip(lines, frames), 1):
        expected = decode_event(line)
        result = decode_frame_firehose(frame)
        assert isinstance(result, OpsFrame) and result.seq == n and result.skipped == ()
        (op,) = result.ops
        assert type(op) is type(expected)
        kinds.add(type(op).__name__)
        if isinstance(op, (PutRecord, DeleteRecord)):
            assert op.time_us == expected.time_us  # the frame's time keeps the microseconds
            fields = [f for f in op.__struct_fields__ if f not in ("cid", "body", "links")]
            assert [getattr(op, f) for f in fields] == [getattr(expected, f) for f in fields]
            if isinstance(op, PutRecord):
                # The frame's record comes out with its keys sorted: the same links, in key order.
                assert isinstance(expected, PutRecord) and json.loads(op.body) == json.loads(expected.body)
                assert sorted(op.links) == sorted(expected.links)
        else:
            assert (op.did, op.order_us) == (expected.did, expected.order_us)  # type: ignore[union-attr]
    assert kinds == {"PutRecord", "DeleteRecord", "AccountStatus", "Identity"}


def test_cli_replay_firehose_to_serve_firehose_equals_import(tmp_path: Path) -> None:
    cap = realistic_capture(3000, seed=21)
    capture = write_lines(tmp_path / "capture.jsonl", cap.lines)
    keys, targets, _ = query_keys(cap)
    import_json(tmp_path / "imported", [capture])
    rport, sport = free_port(), free_port()
    env = _env()
    replay = subprocess.Popen([sys.executable, "-m", "smalldp.cli", "replay", "--wire", "firehose", str(capture),
                               "--listen", f"127.0.0.1:{rport}", "--log-level", "warning"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert replay.stdout is not None
        ready, _, _ = select.select([replay.stdout], [], [], 20)
        assert ready, "no start-up line"
        assert replay.stdout.readline().decode().strip() == (
            f"replaying 1 file(s) on ws://127.0.0.1:{rport}/xrpc/com.atproto.sync.subscribeRepos")

        async def main() -> dict[str, Any]:
            serve = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "smalldp.cli", "serve", "--grpc-listen", "off", "--data-dir", str(tmp_path / "live"),
                "--listen", f"127.0.0.1:{sport}", "--firehose", f"ws://127.0.0.1:{rport}",
                "--jetstream", "ws://127.0.0.1:9/subscribe", "--batch-events", "500", env=env)
            try:
                deadline = time.monotonic() + 60
                while True:
                    assert serve.returncode is None, "serve exited"
                    health = await _health(sport)
                    ingest = (health or {}).get("jetstream") or {}
                    if ingest.get("seq") == len(cap.lines) and ingest.get("queue_depth") == 0:
                        break
                    assert time.monotonic() < deadline, health
                    await asyncio.sleep(0.05)
            finally:
                serve.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(serve.wait(), 20) == 0
            return ingest

        ingest = asyncio.run(main())
    finally:
        replay.send_signal(signal.SIGTERM)
        replay.wait(timeout=10)
    assert ingest["decode_errors"] == 0 and ingest["reconnects"] == 0
    assert ingest["endpoint"] == f"ws://127.0.0.1:{rport}"
    assert answers(tmp_path / "live", keys, targets) == answers(tmp_path / "imported", keys, targets)


def test_replay_firehose_is_a_wire_tool() -> None:
    code = ("import sys, smalldp.replay_firehose; print(sorted(m for m in sys.modules "
            "if m.startswith(('smalldp.store', 'smalldp.api', 'smalldp.ingest'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
