"""`smalldp serve --firehose`: following relays' subscribeRepos over real websockets on
127.0.0.1 (tests/fake_relay.py), end to end through the Service.

The oracle for the real frames is production Jetstream's lines for the same window
(corpus_expected_v1.jsonl), fed to another store through the Jetstream path: every answer
but those about time must be equal. Generated frames (smalldp.replay_firehose.event_frame)
are checked against `smalldp import` of the capture they were made from. Faults: restarts
(resume by seq), failover to a relay with other seqs, bad frames, FutureCursor,
ConsumerTooSlow, OutdatedCursor.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import import_json
from fake_jetstream import FakeJetstream
from fake_relay import FakeRelay, RelayFault, error_frame, info_frame, seq_of
from smalldp.config import Settings, load_settings
from smalldp.dagcbor import encode
from smalldp.events import PutRecord, decode_event
from smalldp.ingest.firehose import relay_key
from smalldp.replay_firehose import frames_from_lines
from smalldp.service import Service
from smalldp.store.dataplane import DataPlaneReader
from smalldp.store.schema import db_path
from smalldp.systemd import Notifier
from test_events_firehose import MULTI_OP_FRAME, build_car, join, read_frames, sections, split
from test_import import answers, query_keys, realistic_capture, write_lines
from test_live import follow, free_port, last_op_time, live_settings

GUARD_JETSTREAM = "ws://127.0.0.1:9/subscribe"  # never used: firehose wins; nothing leaves the machine


def relay_settings(data_dir: Path, relays: list[str], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": str(data_dir), "listen": f"127.0.0.1:{free_port()}", "firehose": relays,
        "jetstream": [GUARD_JETSTREAM], "liveness_s": 30, "batch_events": 40, "batch_ms": 50,
        "backoff_max_s": 1, "log_level": "warning", "grpc_listen": "off"}
    values.update(overrides)
    return load_settings(values, env={})


def committed(data_dir: Path, key: str) -> Any:
    """A meta value as committed (read through its own read-only connection)."""
    path = db_path(data_dir)
    if not path.exists():
        return None
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
        try:
            row = conn.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        except sqlite3.OperationalError:  # the store is still being created
            return None
    return None if row is None else row[0]


async def run_until(settings: Settings, done: Callable[[Service], bool], timeout: float = 60) -> Service:
    """Run the service until ``done(service)``, then stop it (SIGTERM's path)."""
    service = Service(settings, ingest=True, notifier=Notifier({}))
    task = asyncio.create_task(service.run())
    deadline = time.monotonic() + timeout
    while not done(service):
        if task.done():
            task.result()
            raise AssertionError("the service stopped on its own")
        if time.monotonic() > deadline:
            service.stop.set()
            await task
            raise AssertionError(f"not there in time: {service.metrics.health()}")
        await asyncio.sleep(0.02)
    service.stop.set()
    assert await asyncio.wait_for(task, 15) == 0
    return service


def seq_committed(data_dir: Path, relay: FakeRelay, seq: int) -> Callable[[Service], bool]:
    key = relay_key(relay.url)
    return lambda service: committed(data_dir, key) == seq and service.pending_events() == 0


# ---------------------------------------------------------------- the real corpus


def corpus_answers(data_dir: Path, lines: list[bytes]) -> dict[Any, Any]:
    """Every answer about the corpus's events that does not depend on time_us."""
    ops = [op for op in map(decode_event, lines) if op is not None]
    keys = {(target, op.collection, path) for op in ops if isinstance(op, PutRecord) for path, target in op.links}
    targets = {k[0] for k in keys}
    uris = sorted({f"at://{op.did}/{op.collection}/{op.rkey}" for op in ops if hasattr(op, "rkey")})
    dids = sorted({op.did for op in ops})
    out = answers(data_dir, keys, targets)
    reader = DataPlaneReader(db_path(data_dir))
    try:
        # Reader.record in full but indexedAt, which is the event's time_us.
        out["record"] = [None if r is None else {k: v for k, v in r.items() if k != "indexedAt"}
                         for r in map(reader.record, uris)]
        out["actors"] = [reader.actor_state(d) for d in dids]
        out["latest_rev"] = [reader.latest_rev(d) for d in dids]
        out["records"] = [None if r is None else (r["uri"], r["cid"], r["record"], r["createdAt"])
                          for r in reader.records(uris)]
    finally:
        reader.close()
    return out


def corpus_lines(jetstream_dir: Path) -> list[bytes]:
    return (jetstream_dir / "corpus_expected_v1.jsonl").read_bytes().splitlines()


async def jetstream_store(data_dir: Path, lines: list[bytes]) -> None:
    """``lines`` through the Jetstream path (FakeJetstream -> Service) into ``data_dir``."""
    text = [line.decode() for line in lines]
    async with FakeJetstream(text) as js:
        await follow(live_settings(data_dir, [js.url]), last_op_time(text))


def test_corpus_frames_answer_as_the_jetstream_lines(tmp_path: Path, jetstream_dir: Path) -> None:
    frames = list(read_frames(jetstream_dir / "corpus_frames.bin.zst"))
    manifest = json.loads((jetstream_dir / "corpus_manifest.json").read_text())
    lines = corpus_lines(jetstream_dir)

    async def main() -> Service:
        await jetstream_store(tmp_path / "js", lines)
        async with FakeRelay(frames) as relay:
            return await run_until(relay_settings(tmp_path / "fh", [relay.url]),
                                   seq_committed(tmp_path / "fh", relay, manifest["seq_last"]))

    service = asyncio.run(main())
    health = service.metrics.health()
    assert health["events"] == manifest["v1_events"] == 152 and health["decode_errors"] == 0
    assert health["reconnects"] == 0 and health["seq"] == manifest["seq_last"]
    got, expected = corpus_answers(tmp_path / "fh", lines), corpus_answers(tmp_path / "js", lines)
    assert got == expected
    # Anti-vacuity: the answers hold the corpus (counts the manifest gives, not the program).
    assert sum(r is not None for r in expected["records"]) > 10
    assert sum(r is not None and "cid" in r for r in expected["record"]) > 10
    assert sum(v[0] for k, v in expected.items() if isinstance(k, tuple) and k[0] == "q") > 100
    (account,) = [json.loads(line) for line in lines if b'"kind":"account"' in line]
    dids = sorted({json.loads(line)["did"] for line in lines})
    state = expected["actors"][dids.index(account["did"])]
    assert state is not None and state["active"] == account["account"]["active"]


def test_bad_frames_are_counted_and_skipped_and_the_connection_survives(tmp_path: Path,
                                                                        jetstream_dir: Path) -> None:
    frames = list(read_frames(jetstream_dir / "corpus_frames.bin.zst"))
    lines = corpus_lines(jetstream_dir)
    # Frame 53's second create loses its block: only that op is skipped.
    header, body = split(frames[MULTI_OP_FRAME])
    head, blocks = sections(body["blocks"])
    dropped = body["ops"][1]
    body["blocks"] = build_car(head, [(c, d) for c, d in blocks if c != dropped["cid"].cid_bytes])
    frames[MULTI_OP_FRAME] = join(header, body)
    gone_rkey = dropped["path"].split("/")[1]
    reference = [line for line in lines if f'"rkey":"{gone_rkey}"'.encode() not in line]
    assert len(reference) == len(lines) - 1
    h0, b0 = split(frames[0])
    too_big = join(h0, {**b0, "tooBig": True, "rev": "3mptbypluud2z"})
    sync = encode({"op": 1, "t": "#sync"}) + encode(
        {"seq": b0["seq"], "did": b0["repo"], "rev": b0["rev"], "time": b0["time"], "blocks": b""})
    unknown = encode({"op": 1, "t": "#brandNew"}) + encode({"seq": b0["seq"]})
    inject: dict[int, list[bytes | str]] = {
        0: [info_frame("OutdatedCursor", "Requested cursor exceeded limit. Possibly missing events")],
        5: [b"\xff\x00 not cbor", "a text message"],
        20: [too_big, frames[30][:200]],  # a tooBig commit, a truncated frame
        40: [sync, unknown],
    }

    async def main() -> Service:
        await jetstream_store(tmp_path / "js", reference)
        async with FakeRelay(frames, faults={0: RelayFault(inject=inject)}) as relay:
            return await run_until(relay_settings(tmp_path / "fh", [relay.url]),
                                   seq_committed(tmp_path / "fh", relay, seq_of(frames[-1]) or -1))

    service = asyncio.run(main())
    health = service.metrics.health()
    # garbage, text, tooBig, truncated, the op without its block: five, counted by hand
    assert health["decode_errors"] == 5
    assert health["sync_events"] == 1 and health["possible_gaps"] == 1  # the OutdatedCursor
    assert health["reconnects"] == 0 and health["events"] == 151
    assert corpus_answers(tmp_path / "fh", lines) == corpus_answers(tmp_path / "js", lines)


# ---------------------------------------------------------------- generated frames


class Generated:
    """A realistic capture, its frames (seq = line number) and its import's answers."""

    def __init__(self, tmp: Path, events: int, seed: int) -> None:
        cap = realistic_capture(events, seed=seed)
        self.lines = cap.lines
        self.frames = list(frames_from_lines(line.encode() for line in self.lines))
        assert len(self.frames) == len(self.lines)
        self.keys, self.targets, _ = query_keys(cap)
        import_json(tmp / "clean", [write_lines(tmp / "capture.jsonl", self.lines)])
        self.answers = self.of(tmp / "clean")
        assert self.answers["links"] > 1000

    def of(self, data_dir: Path) -> dict[Any, Any]:
        # No records: a generated frame names its record by the CID of its own encoding.
        return answers(data_dir, self.keys, self.targets)


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    return Generated(tmp_path_factory.mktemp("gen"), 1500, seed=5)


def renumbered(frames: list[bytes], offset: int) -> list[bytes]:
    """The same events as another relay numbers them."""
    out = []
    for frame in frames:
        header, body = split(frame)
        out.append(join(header, {**body, "seq": body["seq"] + offset}))
    return out


def test_restart_resumes_by_seq_without_loss_or_duplicates(tmp_path: Path, gen: Generated) -> None:
    data = tmp_path / "data"
    k = 600

    async def main() -> FakeRelay:
        async with FakeRelay(gen.frames, faults={0: RelayFault(stall_after=k)}) as relay:
            await run_until(relay_settings(data, [relay.url]), seq_committed(data, relay, k))
            assert committed(data, relay_key(relay.url)) == k
            await run_until(relay_settings(data, [relay.url]), seq_committed(data, relay, len(gen.frames)))
            return relay

    relay = asyncio.run(main())
    first, second = relay.connections
    assert first.cursor is None and first.seqs == list(range(1, k + 1))
    assert second.cursor == str(k)  # the committed seq, not a time and not a rewind
    assert second.seqs == list(range(k + 1, len(gen.frames) + 1))  # each frame exactly once overall
    assert gen.of(data) == gen.answers


def test_failover_to_another_relay_joins_its_live_tip_and_never_sends_a_foreign_seq(
        tmp_path: Path, gen: Generated) -> None:
    data = tmp_path / "data"
    offset = 5_000_000  # relay B numbers the same events from here
    b_frames = renumbered(gen.frames, offset)

    async def main() -> tuple[FakeRelay, FakeRelay, Service]:
        async with FakeRelay(gen.frames, faults={0: RelayFault(die_after=500)}) as a, FakeRelay(b_frames) as b:
            service = await run_until(relay_settings(data, [a.url, b.url]),
                                      seq_committed(data, b, offset + len(gen.frames)))
            return a, b, service

    a, b, service = asyncio.run(main())
    assert [c.cursor for c in a.connections] == [None]
    # B is joined at its live tip: no cursor (A's seq means nothing there). This fake's tip
    # starts at its first frame, so nothing is missed here; a real tip would have a gap.
    assert [c.cursor for c in b.connections] == [None]
    assert service.metrics.possible_gaps == 1
    assert committed(data, relay_key(a.url)) == 500
    assert gen.of(data) == gen.answers


def test_going_back_to_a_relay_resumes_from_its_own_seq(tmp_path: Path, gen: Generated) -> None:
    """A -> B -> A: the second time on A, its own seq from the first time."""
    data = tmp_path / "data"
    offset = 5_000_000
    b_frames = renumbered(gen.frames, offset)

    async def main() -> tuple[FakeRelay, FakeRelay]:
        # A closes after 300 frames; retried at once (it was working), it closes with
        # nothing sent: on to B, joined at its tip; B closes after 900 and then fails too:
        # back to A, from A's own seq.
        a_faults = {0: RelayFault(close_after=300), 1: RelayFault(close_after=0)}
        b_faults = {0: RelayFault(close_after=900), 1: RelayFault(close_after=0)}
        async with FakeRelay(gen.frames, faults=a_faults) as a, FakeRelay(b_frames, faults=b_faults) as b:
            await run_until(relay_settings(data, [a.url, b.url]), seq_committed(data, a, len(gen.frames)),
                            timeout=90)
            return a, b

    a, b = asyncio.run(main())
    assert [c.cursor for c in a.connections] == [None, "300", "300"]
    assert [c.cursor for c in b.connections] == [None, str(offset + 900)]
    assert committed(data, relay_key(b.url)) == offset + 900
    assert gen.of(data) == gen.answers


def test_consumer_too_slow_reconnects_from_the_last_seq(tmp_path: Path, gen: Generated) -> None:
    data = tmp_path / "data"
    slow = error_frame("ConsumerTooSlow", "Stream consumer too slow")

    async def main() -> tuple[FakeRelay, Service]:
        async with FakeRelay(gen.frames, faults={0: RelayFault(error_after=(700, slow))}) as relay:
            service = await run_until(relay_settings(data, [relay.url]), seq_committed(data, relay, len(gen.frames)))
            return relay, service

    relay, service = asyncio.run(main())
    assert [c.cursor for c in relay.connections] == [None, "700"]
    assert service.metrics.reconnects == 1 and "ConsumerTooSlow" in service.metrics.last_error
    assert service.metrics.possible_gaps == 0
    assert gen.of(data) == gen.answers


def test_future_cursor_drops_the_relays_seq_and_joins_its_live_tip(tmp_path: Path, gen: Generated) -> None:
    """The relay lost its state: it now numbers from 1 again, below the seq we hold."""
    data = tmp_path / "data"
    ahead = renumbered(gen.frames[:800], 10_000)  # the relay as it was: seqs 10,001..10,800

    async def main() -> tuple[FakeRelay, Service]:
        async with FakeRelay(ahead) as relay:
            await run_until(relay_settings(data, [relay.url]), seq_committed(data, relay, 10_800))
            relay.frames = gen.frames  # reset: seqs 1..N
            service = await run_until(relay_settings(data, [relay.url]), seq_committed(data, relay, len(gen.frames)))
            return relay, service

    relay, service = asyncio.run(main())
    assert [c.cursor for c in relay.connections] == [None, "10800", None]
    assert service.metrics.reconnects == 1 and "FutureCursor" in service.metrics.last_error
    assert service.metrics.possible_gaps == 1
    assert gen.of(data) == gen.answers


def test_client_side_filters_and_the_position_past_filtered_frames(tmp_path: Path, gen: Generated) -> None:
    """A relay has no filters: wanted_collections applies to the decoded frames, and the seq
    past the frames left out is still committed (a restart does not fetch them again)."""
    data = tmp_path / "data"

    # The stream ends with a frame the filter leaves out (a like sent again, as seq N+1),
    # after a pause in which everything before it is committed.
    like = next(i for i in range(len(gen.lines) - 1, 0, -1) if '"app.bsky.feed.like"' in gen.lines[i])
    frames = gen.frames + renumbered([gen.frames[like]], len(gen.frames) - like)
    assert seq_of(frames[-1]) == len(gen.frames) + 1

    async def main() -> Service:
        async with FakeRelay(frames, faults={0: RelayFault(pause={len(gen.frames): 0.5})}) as relay:
            return await run_until(relay_settings(data, [relay.url], wanted_collections=["app.bsky.graph.*"]),
                                   seq_committed(data, relay, len(gen.frames) + 1))

    service = asyncio.run(main())
    wanted = [line for line in gen.lines if '"kind":"commit"' not in line or '"collection":"app.bsky.graph.' in line]
    assert service.metrics.events_committed == len(wanted) < len(gen.lines)
    import_json(tmp_path / "graph", [write_lines(tmp_path / "graph.jsonl", wanted)])
    assert gen.of(data) == gen.of(tmp_path / "graph")


def test_wanted_dids_filter_every_kind_of_event_as_jetstream_does(tmp_path: Path, gen: Generated) -> None:
    data = tmp_path / "data"
    counts: dict[str, int] = {}
    for line in gen.lines:
        event = json.loads(line)
        if event["kind"] != "commit":
            counts[event["did"]] = counts.get(event["did"], 0) + 1
    wanted = sorted(counts, key=lambda d: -counts[d])[:3]  # accounts with account/identity events

    async def main() -> Service:
        async with FakeRelay(gen.frames) as relay:
            return await run_until(relay_settings(data, [relay.url], wanted_dids=wanted),
                                   seq_committed(data, relay, len(gen.frames)))

    service = asyncio.run(main())
    kept = [line for line in gen.lines if json.loads(line)["did"] in wanted]
    assert service.metrics.events_committed == len(kept) and sum(counts[d] for d in wanted) > 0
    import_json(tmp_path / "some", [write_lines(tmp_path / "some.jsonl", kept)])
    assert gen.of(data) == gen.of(tmp_path / "some")


def test_firehose_setting_wins_over_jetstream_and_is_validated(tmp_path: Path) -> None:
    from smalldp.config import ConfigError
    from smalldp.service import client_options
    settings = relay_settings(tmp_path, ["wss://relay1.example.com", "ws://127.0.0.1:1"])
    options = client_options(settings)
    assert options.wire == "firehose" and options.compress is False
    assert options.endpoints == ("wss://relay1.example.com", "ws://127.0.0.1:1")
    assert client_options(load_settings({"jetstream": [GUARD_JETSTREAM]}, env={})).wire == "v1"
    with pytest.raises(ConfigError, match="firehose"):
        load_settings({"firehose": ["https://relay.example.com"]}, env={})
    env = load_settings({}, env={"SMALLDP_FIREHOSE": "wss://a.example.com,wss://b.example.com"})
    assert env.firehose == ("wss://a.example.com", "wss://b.example.com")


def test_sigkill_mid_stream_then_restart_resumes_from_the_committed_seq(tmp_path: Path) -> None:
    """`smalldp serve --firehose` killed while it ingests: the seq committed with the data is
    where the next run resumes, and the store ends equal to the capture's import."""
    import signal
    import sys

    from test_live import _env, _health

    (tmp_path / "ref").mkdir()
    generated = Generated(tmp_path / "ref", 6000, seed=8)
    data = tmp_path / "data"

    async def serve(relay: FakeRelay, port: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "smalldp.cli", "serve", "--grpc-listen", "off", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
            "--firehose", relay.url, "--jetstream", GUARD_JETSTREAM, "--batch-events", "200", "--batch-ms", "50",
            "--backoff-max-s", "1", env=_env())

    async def main() -> tuple[FakeRelay, int]:
        # The first connection sends slowly enough to be killed in the middle.
        pause = {i: 0.002 for i in range(0, len(generated.frames), 10)}
        async with FakeRelay(generated.frames, faults={0: RelayFault(pause=pause)}) as relay:
            port = free_port()
            first = await serve(relay, port)
            deadline = time.monotonic() + 60
            while not (committed(data, relay_key(relay.url)) or 0) > 1000:
                assert first.returncode is None and time.monotonic() < deadline
                await asyncio.sleep(0.02)
            first.send_signal(signal.SIGKILL)
            await first.wait()
            killed_at = committed(data, relay_key(relay.url))
            assert 1000 < killed_at < len(generated.frames)
            second = await serve(relay, port)
            try:
                while committed(data, relay_key(relay.url)) != len(generated.frames):
                    assert second.returncode is None and time.monotonic() < deadline + 60, await _health(port)
                    await asyncio.sleep(0.05)
            finally:
                second.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(second.wait(), 20) == 0
            return relay, killed_at

    relay, killed_at = asyncio.run(main())
    first_conn, second_conn = relay.connections
    assert second_conn.cursor == str(killed_at)  # what was committed, not what was received
    assert first_conn.seqs[-1] > killed_at  # the kill lost received, uncommitted frames...
    assert second_conn.seqs == list(range(killed_at + 1, len(generated.frames) + 1))  # ...sent again once
    assert generated.of(data) == generated.answers


# ---------------------------------------------------------------- verify_commits


def test_verify_commits_skips_commits_that_do_not_verify_and_applies_the_rest(
        tmp_path: Path, jetstream_dir: Path) -> None:
    """The corpus frames with verify_commits on and a fake PLC directory on 127.0.0.1 serving
    the corpus's DID documents, but one account's with another account's signing key (a
    forged commit's view): that account's commits are skipped, every other one verifies and
    is applied, and the store answers as the Jetstream lines without that account's commits."""
    import zstandard
    from aiohttp import web

    frames = list(read_frames(jetstream_dir / "corpus_frames.bin.zst"))
    manifest = json.loads((jetstream_dir / "corpus_manifest.json").read_text())
    lines = corpus_lines(jetstream_dir)
    with (jetstream_dir / "corpus_did_docs.json.zst").open("rb") as f:
        docs: dict[str, Any] = json.loads(zstandard.ZstdDecompressor().stream_reader(f).read())
    commits_by_did: dict[str, int] = {}
    for frame in frames:
        header, body = split(frame)
        if header.get("t") == "#commit":
            commits_by_did[body["repo"]] = commits_by_did.get(body["repo"], 0) + 1
    victim, other = sorted(d for d, n in commits_by_did.items() if n == 1)[:2]
    forged = dict(docs[victim], verificationMethod=docs[other]["verificationMethod"])
    served = dict(docs, **{victim: forged})
    kept = [line for line in lines
            if not (json.loads(line)["did"] == victim and json.loads(line)["kind"] == "commit")]
    assert len(lines) - len(kept) == 1

    async def plc(request: web.Request) -> web.Response:
        doc = served.get(request.match_info["did"])
        return web.json_response(doc) if doc is not None else web.Response(status=404)

    async def main() -> Service:
        await jetstream_store(tmp_path / "js", kept)
        app = web.Application()
        app.router.add_get("/{did}", plc)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with FakeRelay(frames) as relay:
                settings = relay_settings(tmp_path / "fh", [relay.url], verify_commits=True,
                                          plc_url=f"http://127.0.0.1:{port}")
                return await run_until(settings, seq_committed(tmp_path / "fh", relay, manifest["seq_last"]))
        finally:
            await runner.cleanup()

    service = asyncio.run(main())
    verify = service.metrics.health()["verify"]
    assert verify == {"verified": sum(commits_by_did.values()) - 1, "failures": 1, "chain_breaks": 0}
    assert corpus_answers(tmp_path / "fh", lines) == corpus_answers(tmp_path / "js", lines)
