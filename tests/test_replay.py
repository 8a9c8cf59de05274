"""`smalldp replay`: a Jetstream v1 websocket server over JSONL captures.

Real servers on 127.0.0.1 (the app from ``make_replay_app`` under an aiohttp AppRunner, or the
real `smalldp replay` process) and real aiohttp websocket clients. Every expected list of
events is computed here from the capture lines with plain ``json`` and list filtering,
never from the replay module's own helpers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence
from urllib.parse import urlencode

import aiohttp
import pytest
import zstandard
from aiohttp import WSMsgType, web

from smalldp.replay import (
    MAX_REQUEST_LINE,
    EventFilter,
    decode_head,
    iter_events,
    make_replay_app,
)

pytestmark = pytest.mark.timeout(60)

SHARED = Path(__file__).resolve().parents[2] / "shared"
JETSTREAM = SHARED / "fixtures" / "jetstream"
LEGACY_DICT = JETSTREAM / "zstd_dictionary_legacy_subscribe.zdict"
CORPUS = JETSTREAM / "corpus_expected_v1.jsonl"
BASE_US = 1_783_175_888_000_000
QUIET_S = 0.2  # how long "no further message" is waited for

LIKE = "app.bsky.feed.like"
POST = "app.bsky.feed.post"
FOLLOW = "app.bsky.graph.follow"
BLOCK = "app.bsky.graph.block"
# Starts with "app.bsky.graph" but not "app.bsky.graph.": a prefix filter must not take it.
GRAPHICAL = "app.bsky.graphical.thing"
OTHER = "com.example.fancy.record"
COLLECTIONS = [LIKE, POST, FOLLOW, BLOCK, GRAPHICAL, OTHER, "app.bsky.actor.profile"]


def did(n: int) -> str:
    return f"did:plc:{n:024d}"


DIDS = [did(n) for n in range(12)]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---------------------------------------------------------------- captures built here


def make_events(count: int, seed: int = 1, start_us: int = BASE_US, step_us: int = 1000) -> list[dict[str, Any]]:
    """Jetstream v1 events: commits of several collections, identity and account events.

    time_us mostly grows by step_us, sometimes repeats (equal time_us) and sometimes steps
    back a little, as real captures do."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    t = start_us
    for i in range(count):
        roll = rng.random()
        if roll < 0.15:
            pass  # same time_us as the previous event
        elif roll < 0.2:
            t -= step_us // 2
        else:
            t += step_us
        repo = rng.choice(DIDS)
        kind_roll = rng.random()
        if kind_roll < 0.08:
            events.append({"did": repo, "time_us": t, "kind": "identity",
                           "identity": {"did": repo, "handle": f"user{i}.example.com", "seq": i,
                                        "time": "2026-07-04T14:38:07.500Z"}})
        elif kind_roll < 0.16:
            events.append({"did": repo, "time_us": t, "kind": "account",
                           "account": {"active": bool(i % 2), "did": repo, "seq": i,
                                       "time": "2026-07-04T14:38:07.500Z"}})
        else:
            collection = rng.choice(COLLECTIONS)
            commit: dict[str, Any] = {"rev": f"3mptbyp{i:06d}", "operation": "create",
                                      "collection": collection, "rkey": f"3mptbyp{i:06d}"}
            if rng.random() < 0.1:
                commit["operation"] = "delete"
            else:
                # Non-ASCII text: the server must pass the bytes through unchanged.
                text = "héllo wörld 🦋 " * rng.randint(0, 12) + str(i)
                commit["record"] = {"$type": collection, "text": text, "createdAt": "2026-07-04T14:38:07.468Z"}
                commit["cid"] = f"bafyrei{i:020d}"
            events.append({"did": repo, "time_us": t, "kind": "commit", "commit": commit})
    return events


def line_of(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def write_capture(path: Path, lines: Sequence[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def parsed(lines: Sequence[bytes]) -> list[tuple[bytes, dict[str, Any]]]:
    return [(line, json.loads(line)) for line in lines]


def collection_of(event: dict[str, Any]) -> str | None:
    return event["commit"]["collection"] if event["kind"] == "commit" else None


# ---------------------------------------------------------------- server and client helpers


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT/subscribe
    runner: web.AppRunner

    def ws_url(self, params: Sequence[tuple[str, str]] = ()) -> str:
        query = urlencode(list(params))
        return self.url + ("?" + query if query else "")


@asynccontextmanager
async def replay_server(files: list[Path], **kwargs: Any) -> AsyncIterator[Server]:
    """The real replay app on 127.0.0.1:<ephemeral port>."""
    app = make_replay_app(files, **kwargs)
    runner = web.AppRunner(app, access_log=None, max_line_size=MAX_REQUEST_LINE)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield Server(f"http://127.0.0.1:{port}/subscribe", runner)
    finally:
        await runner.cleanup()


async def read_text(ws: aiohttp.ClientWebSocketResponse, n: int, timeout: float = 10) -> list[bytes]:
    """The next n messages, which must be text, as UTF-8 bytes."""
    out: list[bytes] = []
    for _ in range(n):
        msg = await ws.receive(timeout=timeout)
        assert msg.type is WSMsgType.TEXT, (msg.type, msg.data, len(out))
        out.append(msg.data.encode())
    return out


async def assert_quiet(ws: aiohttp.ClientWebSocketResponse, seconds: float = QUIET_S) -> None:
    """Nothing more arrives (and the server does not close) within ``seconds``."""
    with pytest.raises(asyncio.TimeoutError):
        msg = await ws.receive(timeout=seconds)
        raise AssertionError(f"unexpected message {msg.type} {str(msg.data)[:200]}")
    assert not ws.closed


async def fetch(files: list[Path], params: Sequence[tuple[str, str]], count: int, **kwargs: Any) -> list[bytes]:
    """Connect with params, read ``count`` events, check nothing more comes."""
    async with replay_server(files, **kwargs) as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url(params)) as ws:
            got = await read_text(ws, count)
            await assert_quiet(ws)
            return got


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    lines = [line_of(e) for e in make_events(600)]
    return write_capture(tmp_path_factory.mktemp("cap") / "capture.jsonl", lines), lines


# ---------------------------------------------------------------- order, cursor, filters


def test_all_events_in_order_without_cursor(capture: tuple[Path, list[bytes]]) -> None:
    path, lines = capture
    assert run(fetch([path], [], len(lines))) == lines


def test_real_corpus_bytes_unchanged() -> None:
    if not CORPUS.is_file():
        pytest.skip(f"real Jetstream capture not found at {CORPUS}")
    lines = [line.rstrip(b"\n") for line in CORPUS.read_bytes().splitlines(keepends=True) if line.strip()]
    assert len(lines) > 100
    assert run(fetch([CORPUS], [], len(lines))) == lines


def test_cursor_includes_equal_time_us(capture: tuple[Path, list[bytes]]) -> None:
    path, lines = capture
    events = parsed(lines)
    times = [e["time_us"] for _, e in events]
    # A time_us shared by two consecutive events in the middle of the capture.
    k = next(i for i in range(len(times) // 2, len(times)) if times[i] == times[i - 1])
    cursor = times[k]
    expected = [line for line, e in events if e["time_us"] >= cursor]
    assert sum(1 for line, e in events if e["time_us"] == cursor) >= 2
    assert 0 < len(expected) < len(lines)
    assert run(fetch([path], [("cursor", str(cursor))], len(expected))) == expected
    after = [line for line, e in events if e["time_us"] >= cursor + 1]
    assert len(after) < len(expected)
    assert run(fetch([path], [("cursor", str(cursor + 1))], len(after))) == after
    # Before the capture: everything; after it: nothing, and the connection stays open.
    assert run(fetch([path], [("cursor", "0")], len(lines))) == lines
    assert run(fetch([path], [("cursor", str(max(times) + 1))], 0)) == []


def test_wanted_collections_exact_and_prefix(capture: tuple[Path, list[bytes]]) -> None:
    path, lines = capture
    expected = [line for line, e in parsed(lines)
                if e["kind"] != "commit" or collection_of(e) == LIKE
                or collection_of(e).startswith("app.bsky.graph.")]  # type: ignore[union-attr]
    kinds = {collection_of(json.loads(line)) for line in expected}
    assert {LIKE, FOLLOW, BLOCK, None} <= kinds and GRAPHICAL not in kinds and POST not in kinds
    params = [("wantedCollections", LIKE), ("wantedCollections", "app.bsky.graph.*")]
    assert run(fetch([path], params, len(expected))) == expected


def test_wanted_dids(capture: tuple[Path, list[bytes]]) -> None:
    path, lines = capture
    wanted = {DIDS[1], DIDS[5]}
    expected = [line for line, e in parsed(lines) if e["kind"] != "commit" or e["did"] in wanted]
    assert any(json.loads(line)["did"] not in wanted for line in expected)  # identity/account of others
    params = [("wantedDids", d) for d in sorted(wanted)]
    assert run(fetch([path], params, len(expected))) == expected


def test_identity_and_account_always_pass(capture: tuple[Path, list[bytes]]) -> None:
    path, lines = capture
    expected = [line for line, e in parsed(lines) if e["kind"] in ("identity", "account")]
    assert {json.loads(line)["kind"] for line in expected} == {"identity", "account"}
    # A collection and a DID no commit has: only identity and account events are left.
    params = [("wantedCollections", "org.nothing.here"), ("wantedDids", did(999))]
    assert run(fetch([path], params, len(expected))) == expected
    params = [("wantedCollections", "org.nothing.*")]
    assert run(fetch([path], params, len(expected))) == expected


def test_combined_filters_and_max_message_size(capture: tuple[Path, list[bytes]]) -> None:
    path, lines = capture
    limit = sorted(len(line) for line in lines)[len(lines) // 2]
    expected = [line for line, e in parsed(lines) if len(line) <= limit]
    assert 0 < len(expected) < len(lines)
    assert run(fetch([path], [("maxMessageSizeBytes", str(limit))], len(expected))) == expected
    assert run(fetch([path], [("maxMessageSizeBytes", "0")], len(lines))) == lines
    expected = [line for line, e in parsed(lines) if len(line) <= limit and (
        e["kind"] != "commit" or (e["did"] == DIDS[2] and collection_of(e) in (POST, LIKE)))]
    params = [("maxMessageSizeBytes", str(limit)), ("wantedDids", DIDS[2]),
              ("wantedCollections", POST), ("wantedCollections", LIKE), ("cursor", str(BASE_US + 100_000))]
    expected = [line for line in expected if json.loads(line)["time_us"] >= BASE_US + 100_000]
    assert run(fetch([path], params, len(expected))) == expected


def test_several_files_in_order_including_zst(tmp_path: Path) -> None:
    lines = [line_of(e) for e in make_events(300, seed=7)]
    first = write_capture(tmp_path / "a.jsonl", lines[:100])
    middle = tmp_path / "b.jsonl.zst"
    # Two zstd frames in one file, as `cat a.zst b.zst` gives.
    cctx = zstandard.ZstdCompressor()
    middle.write_bytes(cctx.compress(b"".join(x + b"\n" for x in lines[100:150]))
                       + cctx.compress(b"".join(x + b"\n" for x in lines[150:200])))
    last = write_capture(tmp_path / "c.jsonl", lines[200:])
    files = [first, middle, last]
    assert run(fetch(files, [], len(lines))) == lines
    cursor = json.loads(lines[120])["time_us"]
    expected = [line for line in lines if json.loads(line)["time_us"] >= cursor]
    assert run(fetch(files, [("cursor", str(cursor))], len(expected))) == expected


def test_malformed_lines_are_logged_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = [line_of(e) for e in make_events(4, seed=3)]
    content = [
        good[0],
        b"this is not json",                                 # line 2
        good[1],
        b'{"did":"' + DIDS[0].encode() + b'","kind":"commit"}',  # line 4: no time_us
        b"",
        b"   ",
        b'{"time_us":"12","kind":"commit"}',                 # line 7: time_us not an integer
        b'{"time_us":5,"kind":"commit","x":"\xff\xfe"}',   # line 8: not UTF-8
        good[2],
        b'{"time_us":6,"kind":"commit"} trailing',           # line 10
        good[3],
    ]
    path = write_capture(tmp_path / "bad.jsonl", content)
    with caplog.at_level(logging.WARNING, logger="smalldp.replay"):
        assert run(fetch([path], [], 4)) == good
    warned = " ".join(r.getMessage() for r in caplog.records if r.name == "smalldp.replay")
    for lineno in (2, 4, 7, 8, 10):
        assert f"line {lineno}:" in warned
    for lineno in (1, 3, 5, 6, 9, 11):
        assert f"line {lineno}:" not in warned


# ---------------------------------------------------------------- options_update and requireHello


def gapped_capture(tmp_path: Path, groups: int, per_group: int, gap_us: int) -> tuple[Path, list[list[bytes]]]:
    """Groups of events 1 us apart, groups gap_us apart: a paced replay pauses between groups."""
    out: list[list[bytes]] = []
    for g in range(groups):
        events = make_events(per_group, seed=11 + g, start_us=BASE_US + g * gap_us, step_us=2)
        out.append([line_of(e) for e in events])
    return write_capture(tmp_path / "gapped.jsonl", [x for group in out for x in group]), out


def keep(lines: list[bytes], want: Callable[[dict[str, Any]], bool]) -> list[bytes]:
    return [line for line in lines if want(json.loads(line))]


def test_options_update_replaces_filters_mid_stream(tmp_path: Path) -> None:
    # speed 10 and 5 s gaps: 0.5 s of wall time between groups for the update to land.
    path, (a, b, c) = gapped_capture(tmp_path, 3, 80, 5_000_000)
    want_a = keep(a, lambda e: e["kind"] != "commit" or collection_of(e) == LIKE)
    new_dids = [DIDS[0], DIDS[3], DIDS[4]]
    want_b = keep(b, lambda e: e["kind"] != "commit" or (
        collection_of(e) in (FOLLOW, POST) and e["did"] in new_dids))
    want_c = list(c)  # the second update clears every filter
    assert want_b != keep(b, lambda e: e["kind"] != "commit" or collection_of(e) == LIKE)

    async def body() -> None:
        async with replay_server([path], speed=10.0) as server, aiohttp.ClientSession() as session:
            async with session.ws_connect(server.ws_url([("wantedCollections", LIKE)])) as ws:
                assert await read_text(ws, len(want_a)) == want_a
                await ws.send_str(json.dumps({"type": "options_update", "payload": {
                    "wantedCollections": [FOLLOW, POST], "wantedDids": new_dids}}))
                assert await read_text(ws, len(want_b)) == want_b
                await ws.send_str(json.dumps({"type": "options_update", "payload": {}}))
                assert await read_text(ws, len(want_c)) == want_c
                await assert_quiet(ws)

    run(body())


def test_invalid_options_update_is_ignored(tmp_path: Path) -> None:
    path, (a, b) = gapped_capture(tmp_path, 2, 80, 5_000_000)
    original = lambda e: e["kind"] != "commit" or collection_of(e) == LIKE  # noqa: E731
    want_a, want_b = keep(a, original), keep(b, original)
    bad_messages = [
        "not json at all",
        json.dumps({"type": "options_update", "payload": {"wantedCollections": ["not a collection!"]}}),
        json.dumps({"type": "options_update", "payload": {"wantedDids": ["nobody"]}}),
        json.dumps({"type": "options_update", "payload": {"maxMessageSizeBytes": -5}}),
        json.dumps({"type": "options_update", "payload": {"wantedCollections": "app.bsky.feed.post"}}),
        json.dumps({"type": "options_update", "payload": {
            "wantedDids": [did(n) for n in range(10_001)]}}),
        json.dumps({"type": "options_update"}),
        # Another type, even with a valid payload, changes nothing.
        json.dumps({"type": "something_else", "payload": {"wantedCollections": [FOLLOW]}}),
    ]

    async def body() -> None:
        async with replay_server([path], speed=10.0) as server, aiohttp.ClientSession() as session:
            async with session.ws_connect(server.ws_url([("wantedCollections", LIKE)])) as ws:
                assert await read_text(ws, len(want_a)) == want_a
                for message in bad_messages:
                    await ws.send_str(message)
                await ws.send_bytes(b'{"type":"options_update","payload":{}}')
                assert await read_text(ws, len(want_b)) == want_b
                await assert_quiet(ws)

    run(body())


def test_require_hello_waits_for_options(capture: tuple[Path, list[bytes]]) -> None:
    path, lines = capture
    expected = keep(lines, lambda e: e["kind"] != "commit" or collection_of(e) == POST)

    async def body() -> None:
        async with replay_server([path]) as server, aiohttp.ClientSession() as session:
            async with session.ws_connect(server.ws_url([("requireHello", "true")])) as ws:
                await assert_quiet(ws)  # nothing before the hello
                await ws.send_str("garbage")  # not a hello either
                await assert_quiet(ws)
                await ws.send_str(json.dumps({"type": "options_update", "payload": {"wantedCollections": [POST]}}))
                assert await read_text(ws, len(expected)) == expected
                await assert_quiet(ws)

    run(body())


# ---------------------------------------------------------------- compression


async def fetch_frames(files: list[Path], dictionary: bytes, count: int, *,
                       params: Sequence[tuple[str, str]] = (), headers: dict[str, str] | None = None) -> list[bytes]:
    async with replay_server(files, dictionary=dictionary) as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url(params), headers=headers) as ws:
            frames = []
            for _ in range(count):
                msg = await ws.receive(timeout=10)
                assert msg.type is WSMsgType.BINARY, (msg.type, msg.data)
                frames.append(msg.data)
            await assert_quiet(ws)
            return frames


def train_dictionary(lines: list[bytes]) -> bytes:
    samples: list[Any] = list(lines)  # zstandard's stubs want list[bytes | bytearray | memoryview]
    return zstandard.train_dictionary(8192, samples).as_bytes()


def check_frames(frames: list[bytes], lines: list[bytes], dictionary: bytes) -> None:
    """Each frame is one zstd frame with its content size, made with the dictionary, and
    decompresses to the capture line."""
    zdict = zstandard.ZstdCompressionDict(dictionary)
    dctx = zstandard.ZstdDecompressor(dict_data=zdict)
    assert len(frames) == len(lines)
    for frame, line in zip(frames, lines):
        params = zstandard.get_frame_parameters(frame)
        assert params.content_size == len(line)
        assert params.dict_id == zdict.dict_id() != 0
        dobj = dctx.decompressobj()
        assert dobj.decompress(frame) == line
        assert dobj.eof and dobj.unused_data == b""  # exactly one frame per message


def test_compression_with_the_real_dictionary(capture: tuple[Path, list[bytes]]) -> None:
    if not LEGACY_DICT.is_file() or not CORPUS.is_file():
        pytest.skip(f"real Jetstream fixtures not found at {JETSTREAM}")
    dictionary = LEGACY_DICT.read_bytes()
    path, lines = capture
    corpus = [line for line in CORPUS.read_bytes().split(b"\n") if line.strip()]
    files = [CORPUS, path]
    frames = run(fetch_frames(files, dictionary, len(corpus) + len(lines), params=[("compress", "true")]))
    check_frames(frames, corpus + lines, dictionary)
    # The header asks for it too; filters apply to compressed streams the same way.
    expected = [line for line in corpus + lines if json.loads(line)["kind"] != "commit"
                or json.loads(line)["commit"]["collection"] == LIKE]
    frames = run(fetch_frames(files, dictionary, len(expected), params=[("wantedCollections", LIKE)],
                              headers={"Socket-Encoding": "zstd"}))
    check_frames(frames, expected, dictionary)


def test_compression_with_a_trained_dictionary(tmp_path: Path) -> None:
    lines = [line_of(e) for e in make_events(2000, seed=5)]
    trained = train_dictionary(lines)
    path = write_capture(tmp_path / "cap.jsonl", lines)
    frames = run(fetch_frames([path], trained, len(lines), params=[("compress", "true")]))
    check_frames(frames, lines, trained)
    # Compression actually happened, and helped (the dictionary matters on small messages).
    assert sum(map(len, frames)) < sum(map(len, lines)) / 2


def test_compression_without_dictionary_is_refused(capture: tuple[Path, list[bytes]]) -> None:
    path, _ = capture

    async def body() -> None:
        async with replay_server([path]) as server, aiohttp.ClientSession() as session:
            async with session.get(server.ws_url([("compress", "true")])) as resp:
                assert resp.status == 400
                body = await resp.json()
            assert body["error"] == "InvalidRequest" and "--zstd-dictionary" in body["message"]
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(server.url, headers={"Socket-Encoding": "zstd"})
            assert info.value.status == 400

    run(body())


# ---------------------------------------------------------------- bad parameters


BAD_PARAMS: list[list[tuple[str, str]]] = [
    [("cursor", "abc")],
    [("cursor", "1.5")],
    [("cursor", "99999999999999999999")],
    [("wantedCollections", "not a collection")],
    [("wantedCollections", "app")],
    [("wantedCollections", "app.bsky.*.x")],
    [("wantedCollections", "")],
    [("wantedCollections", f"com.example.c{n}") for n in range(101)],
    [("wantedDids", "nobody")],
    [("wantedDids", did(1)), ("wantedDids", "did:PLC:x")],
    [("wantedDids", did(n)) for n in range(10_001)],
    [("maxMessageSizeBytes", "-1")],
    [("maxMessageSizeBytes", "lots")],
]


def test_bad_params_get_400_before_upgrade(capture: tuple[Path, list[bytes]]) -> None:
    path, lines = capture

    async def body() -> None:
        async with replay_server([path]) as server, aiohttp.ClientSession() as session:
            for params in BAD_PARAMS:
                async with session.get(server.ws_url(params)) as resp:
                    assert resp.status == 400, params[:2]
                    assert resp.content_type == "application/json"
                    answer = await resp.json()
                assert answer["error"] == "InvalidRequest" and answer["message"], params[:2]
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await session.ws_connect(server.ws_url(params))
                assert info.value.status == 400
            # The limits themselves are allowed (duplicates count once).
            ok = ([("wantedCollections", f"com.example.c{n}") for n in range(100)]
                  + [("wantedCollections", "com.example.c0")]
                  + [("wantedDids", did(n)) for n in range(10_000)])
            async with session.ws_connect(server.ws_url(ok)) as ws:
                expected = [x for x in lines if json.loads(x)["kind"] != "commit"]
                assert await read_text(ws, len(expected)) == expected
            # Good parameters but no websocket upgrade: 400 as well.
            async with session.get(server.url) as resp:
                assert resp.status == 400 and (await resp.json())["error"] == "InvalidRequest"

    run(body())


def test_event_filter_validation() -> None:
    with pytest.raises(ValueError, match="collection"):
        EventFilter(["app.bsky.feed.like", "bad collection"])
    with pytest.raises(ValueError, match="too many wanted collections"):
        EventFilter([f"com.example.c{n}" for n in range(101)])
    with pytest.raises(ValueError, match="too many wanted DIDs"):
        EventFilter((), [did(n) for n in range(10_001)])
    with pytest.raises(ValueError, match="DID"):
        EventFilter((), ["did:plc:"])
    with pytest.raises(ValueError, match="maxMessageSizeBytes"):
        EventFilter((), (), -1)


# ---------------------------------------------------------------- live-tail idling, pacing, shutdown


def test_connection_stays_open_after_last_event_and_shutdown_closes_it(capture: tuple[Path, list[bytes]]) -> None:
    path, lines = capture

    async def body() -> None:
        async with replay_server([path]) as server, aiohttp.ClientSession() as session:
            ws = await session.ws_connect(server.url)
            assert await read_text(ws, len(lines)) == lines
            with pytest.raises(asyncio.TimeoutError):
                await ws.receive(timeout=0.5)
            assert not ws.closed
            # Stopping the server closes the idle connection with 1001, promptly.
            started = time.monotonic()
            cleanup = asyncio.create_task(server.runner.cleanup())
            msg = await ws.receive(timeout=5)
            assert msg.type is WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.GOING_AWAY
            await asyncio.wait_for(cleanup, 5)
            assert time.monotonic() - started < 5
            await ws.close()

    run(body())


def test_client_vanishing_mid_stream_leaves_others_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Big enough that the first client's stream is still being written when it goes away.
    lines = [line_of(e) for e in make_events(3000, seed=17)] * 16  # about 24 MB, far more than socket buffers
    path = write_capture(tmp_path / "cap.jsonl", lines)

    async def body() -> None:
        async with replay_server([path]) as server, aiohttp.ClientSession() as session:
            # A bare websocket handshake over asyncio streams, read a little, then a reset.
            port = server.runner.addresses[0][1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         b"Sec-WebSocket-Version: 13\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            assert len(await reader.read(65536)) > 0  # events are flowing
            other = await session.ws_connect(server.url)
            writer.transport.abort()  # no close frame
            assert await read_text(other, len(lines)) == lines
            await assert_quiet(other)
            await other.close()
            await asyncio.sleep(0.1)  # let the server notice both

    with caplog.at_level(logging.INFO, logger="smalldp.replay"):
        run(body())
    records = [r for r in caplog.records if r.name == "smalldp.replay"]
    assert not [r for r in records if r.levelno >= logging.ERROR], [r.getMessage() for r in records]
    closed = sorted(r.getMessage() for r in records if " closed: " in r.getMessage())
    assert len(closed) == 2 and any(f" closed: {len(lines)} events sent" in m for m in closed), closed
    # The vanished client got only what the socket buffers held: the file is streamed, not queued.
    assert min(int(m.split(" closed: ")[1].split()[0]) for m in closed) < len(lines) // 2, closed


def test_speed_paces_by_time_us(tmp_path: Path) -> None:
    events = make_events(3, seed=9)
    for i, e in enumerate(events):
        e["time_us"] = BASE_US + i * 200_000  # 0.2 s apart
    lines = [line_of(e) for e in events]
    path = write_capture(tmp_path / "paced.jsonl", lines)

    async def body() -> float:
        async with replay_server([path], speed=2.0) as server, aiohttp.ClientSession() as session:
            async with session.ws_connect(server.url) as ws:
                assert await read_text(ws, 1) == lines[:1]
                started = time.monotonic()
                assert await read_text(ws, 2) == lines[1:]
                return time.monotonic() - started

    # 0.4 s of capture at speed 2 is 0.2 s; a generous lower bound only.
    assert run(body()) >= 0.15


# ---------------------------------------------------------------- public helpers


def test_iter_events_and_filter_match_a_plain_computation(capture: tuple[Path, list[bytes]], tmp_path: Path) -> None:
    path, lines = capture
    extra = write_capture(tmp_path / "extra.jsonl", [b"", b"{broken", *lines[:5]])
    cursor = json.loads(lines[200])["time_us"]
    wanted = EventFilter([POST, "app.bsky.graph.*"], [DIDS[0], DIDS[1], DIDS[2]])
    expected = [(e["time_us"], line) for line, e in parsed(lines + lines[:5])
                if e["time_us"] >= cursor and (e["kind"] != "commit" or (
                    e["did"] in DIDS[:3] and (collection_of(e) == POST
                                              or collection_of(e).startswith("app.bsky.graph."))))]  # type: ignore[union-attr]
    assert list(iter_events([path, extra], cursor=cursor, event_filter=wanted)) == expected
    assert [raw for _, raw in iter_events([path])] == lines
    for line, e in parsed(lines):
        head = decode_head(line)
        assert head.time_us == e["time_us"] and head.did == e["did"] and head.kind == e["kind"]
        assert EventFilter([LIKE]).matches(head, len(line)) == (e["kind"] != "commit" or collection_of(e) == LIKE)
    with pytest.raises(ValueError):
        decode_head(b'{"did":"x"}')


# ---------------------------------------------------------------- the command


def cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    from smalldp.cli import main
    for name in list(os.environ):
        if name.startswith("SMALLDP_"):
            monkeypatch.delenv(name)
    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_cli_rejects_bad_input(capture: tuple[Path, list[bytes]], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = capture
    cases = [
        (["replay", str(tmp_path / "missing.jsonl")], "missing.jsonl"),
        (["replay", str(path), str(tmp_path / "gone.jsonl.zst")], "gone.jsonl.zst"),
        (["replay", "--speed", "fast", str(path)], "--speed"),
        (["replay", "--speed", "0", str(path)], "--speed"),
        (["replay", "--speed", "-2", str(path)], "--speed"),
        (["replay", "--speed", "nan", str(path)], "--speed"),
        (["replay", "--listen", "nowhere", str(path)], "--listen"),
        (["replay", "--listen", "127.0.0.1:70000", str(path)], "--listen"),
        (["replay", "--zstd-dictionary", str(tmp_path / "no.zdict"), str(path)], "no.zdict"),
        (["replay", "--zstd-dictionary", str(tmp_path), str(path)], "dictionary"),
    ]
    for args, mention in cases:
        capsys.readouterr()
        assert cli(args, monkeypatch) == 2, args
        err = capsys.readouterr().err
        assert mention in err and "smalldp replay" in err, (args, err)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    lines = [line_of(e) for e in make_events(500, seed=13)]
    path = write_capture(tmp_path / "cap.jsonl", lines)
    trained = tmp_path / "dict.zdict"
    trained.write_bytes(train_dictionary(lines))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMALLDP_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "smalldp.cli", "replay", str(path), "--listen", f"127.0.0.1:{port}",
         "--zstd-dictionary", str(trained), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "no start-up line"
        first = proc.stdout.readline().decode().strip()
        assert first == f"replaying 1 file(s) on ws://127.0.0.1:{port}/subscribe"

        async def body() -> aiohttp.WSMessage:
            url = f"http://127.0.0.1:{port}/subscribe"
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(url + "?cursor=" + str(json.loads(lines[10])["time_us"])) as ws:
                    expected = [x for x in lines if json.loads(x)["time_us"] >= json.loads(lines[10])["time_us"]]
                    assert await read_text(ws, 5) == expected[:5]
                async with session.ws_connect(url + "?compress=true") as zws:
                    frames = [(await zws.receive(timeout=10)).data for _ in range(len(lines))]
                    check_frames(frames, lines, trained.read_bytes())
                    await assert_quiet(zws)
                    # SIGTERM with this idle connection open: it is closed with 1001.
                    proc.send_signal(signal.SIGTERM)
                    return await zws.receive(timeout=10)

        msg = run(body())
        assert msg.type is WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.GOING_AWAY
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode() if proc.stderr else ""
    assert "Traceback" not in err, err


def test_replay_does_not_import_the_store_or_the_api() -> None:
    code = ("import sys, smalldp.replay; print(sorted(m for m in sys.modules "
            "if m.startswith(('smalldp.store', 'smalldp.api', 'smalldp.ingest'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
