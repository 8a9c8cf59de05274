"""The parts of live ingest on their own: queue, URLs, dictionaries, systemd, /metrics text.

Real sockets throughout: a unix datagram socket plays systemd, a local aiohttp server on
127.0.0.1 plays the dictionary's upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import zstandard
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from smalldp.api.metrics import exposition
from smalldp.ingest import zdict
from smalldp.ingest.jetstream import ClientOptions, Filters, options_update, subscribe_url
from smalldp.ingest.metrics import IngestMetrics
from smalldp.systemd import Notifier

SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "jetstream"
LEGACY = SHARED / "zstd_dictionary_legacy_subscribe.zdict"


def legacy_bytes() -> bytes:
    if not LEGACY.is_file():
        pytest.skip("../shared fixtures absent")
    return LEGACY.read_bytes()


# ---------------------------------------------------------------- URLs

def test_v1_url_filters_cursor_compression() -> None:
    opts = ClientOptions(endpoints=("wss://js.example",), filters=Filters(
        ("app.bsky.feed.like", "app.bsky.graph.*"), ("did:plc:aaaa", "did:web:b.example")))
    url, hello = subscribe_url("wss://js.example", opts, 1_700_000_000_000_000, 42)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("wss", "js.example", "/subscribe")
    query = parse_qs(parts.query)
    assert query["wantedCollections"] == ["app.bsky.feed.like", "app.bsky.graph.*"]
    assert query["wantedDids"] == ["did:plc:aaaa", "did:web:b.example"]
    assert query["cursor"] == ["1700000000000000"] and query["compress"] == ["true"]
    assert not hello
    url, _ = subscribe_url("ws://h:1/custom/path?x=1", ClientOptions(endpoints=("x",)), None, None)
    parts = urlsplit(url)
    assert parts.path == "/custom/path" and parse_qs(parts.query) == {"x": ["1"]}


def test_v1_many_dids_go_in_a_hello_message() -> None:
    dids = tuple(f"did:plc:{i:024d}" for i in range(101))
    opts = ClientOptions(endpoints=("ws://h",), filters=Filters((), dids))
    url, hello = subscribe_url("ws://h", opts, None, None)
    query = parse_qs(urlsplit(url).query)
    assert hello and query["requireHello"] == ["true"] and "wantedDids" not in query
    import json
    message = json.loads(options_update(opts.filters))
    assert message["type"] == "options_update"
    assert message["payload"]["wantedDids"] == list(dids)
    assert message["payload"]["wantedCollections"] == []


def test_v2_url() -> None:
    opts = ClientOptions(endpoints=("wss://v2.example",), wire="v2",
                         filters=Filters(("app.bsky.feed.post",), ("did:plc:aaaa",)))
    url, hello = subscribe_url("wss://v2.example", opts, 1_783_000_000_000_000, 20260811)
    parts = urlsplit(url)
    assert parts.path == "/xrpc/network.bsky.jetstream.subscribeEvents" and not hello
    query = parse_qs(parts.query)
    assert query == {"collections": ["app.bsky.feed.post"], "dids": ["did:plc:aaaa"],
                     "zstdDictionary": ["20260811"], "cursor": ["1783000000000000"]}


# ---------------------------------------------------------------- dictionaries

class DictServer:
    """A real HTTP server on 127.0.0.1 serving one body at every path."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.hits = 0

    async def __aenter__(self) -> str:
        async def handler(request: web.Request) -> web.Response:
            self.hits += 1
            return web.Response(body=self.body)
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def test_legacy_dictionary_fetch_check_and_cache(tmp_path: Path) -> None:
    good = legacy_bytes()
    assert hashlib.sha256(good).hexdigest() == zdict.LEGACY_SHA256

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = DictServer(b"\x37\xa4\x30\xec" + os.urandom(1000))  # right magic, wrong bytes
        async with server as base:
            with pytest.raises(zdict.DictionaryError, match="sha256"):
                await loop.run_in_executor(None, zdict.legacy_dictionary, tmp_path, "", base + "/d")
        assert not (tmp_path / zdict.LEGACY_CACHE_NAME).exists()  # a bad download is not cached
        server = DictServer(good)
        async with server as base:
            got = await loop.run_in_executor(None, zdict.legacy_dictionary, tmp_path, "", base + "/d")
        assert got == good and server.hits == 1
        assert (tmp_path / zdict.LEGACY_CACHE_NAME).read_bytes() == good
        # Cached: no server needed any more.
        got = await loop.run_in_executor(None, zdict.legacy_dictionary, tmp_path, "",
                                         "http://127.0.0.1:9/unreachable")
        assert got == good
    asyncio.run(main())


def test_legacy_dictionary_errors_name_the_cause(tmp_path: Path) -> None:
    with pytest.raises(zdict.DictionaryError, match="cannot fetch"):
        zdict.legacy_dictionary(tmp_path, "", "http://127.0.0.1:9/nothing-listens-here")
    with pytest.raises(zdict.DictionaryError, match="cannot read"):
        zdict.legacy_dictionary(tmp_path, str(tmp_path / "missing.zdict"))
    other = tmp_path / "other.zdict"
    trained = zstandard.train_dictionary(4096, [b'{"n":%d,"t":"%s"}' % (i, b"ab" * (i % 40)) for i in range(500)])
    other.write_bytes(trained.as_bytes())
    # A local dictionary of the user's choice is used as given (with a warning)...
    assert zdict.legacy_dictionary(tmp_path, str(other)) == trained.as_bytes()
    # ...but a file that is no dictionary at all is refused.
    (tmp_path / "junk").write_bytes(b"junk" * 10)
    with pytest.raises(zdict.DictionaryError, match="magic"):
        zdict.legacy_dictionary(tmp_path, str(tmp_path / "junk"))


def test_v2_dictionary_id_from_its_header(tmp_path: Path) -> None:
    trained = zstandard.train_dictionary(4096, [b'{"did":"did:plc:%d","x":%d}' % (i, i * 7) for i in range(500)])
    data = trained.as_bytes()
    expected_id = int.from_bytes(data[4:8], "little")
    assert expected_id == trained.dict_id()

    async def main() -> None:
        server = DictServer(data)
        async with server as base:
            endpoint = base.replace("http://", "ws://") + "/xrpc/network.bsky.jetstream.subscribeEvents"
            assert zdict.v2_dictionary_url(endpoint) == base + "/xrpc/network.bsky.jetstream.getZstdDictionary"
            dict_id, got = await asyncio.get_running_loop().run_in_executor(
                None, zdict.v2_dictionary, tmp_path, endpoint)
        assert (dict_id, got) == (expected_id, data)
        assert (tmp_path / f"jetstream-v2-{expected_id}.zdict").read_bytes() == data
    asyncio.run(main())
    with pytest.raises(zdict.DictionaryError, match="magic"):
        zdict.dictionary_id(b"not a dictionary")


def test_decompressor_bounds_output() -> None:
    samples = [b'{"kind":"commit","n":%d,"text":"%s"}' % (i, b"ab" * (i % 50)) for i in range(1000)]
    trained = zstandard.train_dictionary(4096, samples)
    cctx = zstandard.ZstdCompressor(dict_data=trained)
    unsized = zstandard.ZstdCompressor(dict_data=trained, write_content_size=False)
    dec = zdict.Decompressor(trained.as_bytes(), max_output=1000)
    small = b'{"kind":"commit","n":1}'
    assert dec.decompress(cctx.compress(small)) == small
    assert dec.decompress(unsized.compress(small)) == small
    big = b"x" * 5000
    with pytest.raises(ValueError, match="more than 1000"):
        dec.decompress(cctx.compress(big))
    with pytest.raises(ValueError):
        dec.decompress(unsized.compress(big))
    with pytest.raises(ValueError):
        dec.decompress(b"\x00garbage frame")


# ---------------------------------------------------------------- systemd

def _datagram_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    return sock


def test_notifier_sends_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = _datagram_socket(path)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000",
                         "WATCHDOG_PID": str(os.getpid())})
    assert notifier.enabled and notifier.watchdog_s == 4.0
    assert notifier.ready("lag 1.0 s")
    assert sock.recv(4096) == b"READY=1\nSTATUS=lag 1.0 s"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.status("two\nlines")
    assert sock.recv(4096) == b"STATUS=two lines"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()
    sock.close()


def test_notifier_abstract_socket_and_absence() -> None:
    name = f"smalldp-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
    assert notifier.watchdog_s is None
    notifier.ready()
    assert sock.recv(100) == b"READY=1"
    sock.close()
    quiet = Notifier({})
    assert not quiet.enabled and not quiet.ready() and not quiet.watchdog()
    # A watchdog meant for another process is not ours.
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_s is None


# ---------------------------------------------------------------- metrics

def test_metrics_exposition_parses_as_prometheus_text() -> None:
    metrics = IngestMetrics(state="streaming", connected=True)
    metrics.reconnects = 3
    metrics.bytes_received = 123_456
    metrics.decode_errors = 2
    metrics.committed(500, 1_783_000_000_000_000, 40, 1)
    text = exposition(metrics.samples() + [("x_weird", "gauge", "back\\slash\nnewline", 0.25)])
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # prometheus_client strips _total from counter family names.
    assert families["smalldp_ingest_reconnects"].type == "counter"
    assert families["smalldp_ingest_reconnects"].samples[0].value == 3
    assert families["smalldp_ingest_bytes_received"].samples[0].value == 123_456
    assert families["smalldp_ingest_events"].samples[0].value == 500
    assert families["smalldp_ingest_decode_errors"].samples[0].value == 2
    assert families["smalldp_ingest_connected"].samples[0].value == 1
    assert families["smalldp_ingest_cursor_microseconds"].samples[0].value == 1_783_000_000_000_000
    assert families["x_weird"].documentation == "back\\slash\nnewline"
    lag = families["smalldp_ingest_lag_seconds"].samples[0].value
    assert lag > 0  # 2026-07 is in the past
    before = IngestMetrics()
    nan = {f.name: f for f in text_string_to_metric_families(exposition(before.samples()))}
    assert nan["smalldp_ingest_lag_seconds"].samples[0].value != nan["smalldp_ingest_lag_seconds"].samples[0].value


def test_progress_rules_for_the_watchdog() -> None:
    import time
    metrics = IngestMetrics(state="streaming")
    assert metrics.progressing(10)  # nothing to do is fine
    metrics.queue_depth = 100  # a batch waits to be committed
    metrics.last_commit_monotonic = time.monotonic() - 60
    assert not metrics.progressing(10)  # work waits and nothing committed for a minute
    assert metrics.progressing(10, merging_since=time.monotonic() - 30)  # a merge holds the writer
    metrics.committed(100, None, 0, 0)
    assert metrics.progressing(10)
    metrics.state = "failed"
    assert not metrics.progressing(10)


# ---------------------------------------------------------------- queries first

def test_query_gate_pauses_ingest_only_while_queries_run() -> None:
    import threading
    import time
    from smalldp import priority
    gate = priority.QueryGate()
    t0 = time.monotonic()
    gate.pause()
    assert time.monotonic() - t0 < 0.01 and gate.waits == 0  # no query: no pause
    gate.enter()
    released = threading.Timer(0.02, gate.leave)
    released.start()
    t0 = time.monotonic()
    gate.pause()  # waits for the query to end (20 ms), not for MAX_WAIT_S
    waited = time.monotonic() - t0
    assert 0.01 < waited < priority.MAX_WAIT_S + 0.5 and gate.waits == 1 and gate.active == 0
    gate.enter()
    t0 = time.monotonic()
    gate.pause()  # a query that never ends: the wait is bounded
    assert priority.MAX_WAIT_S * 0.9 <= time.monotonic() - t0 < priority.MAX_WAIT_S + 0.5
    gate.leave()
    gate.leave()  # one leave too many never goes negative
    assert gate.active == 0


def test_query_gate_waits_at_most_its_share_of_each_window() -> None:
    """A query always in flight (a load past capacity) may slow ingest, never stop it:
    within one window the pauses add up to at most MAX_SHARE of it, then return at once."""
    import time
    from smalldp import priority
    gate = priority.QueryGate()
    gate.enter()
    t0 = time.monotonic()
    while time.monotonic() - t0 < priority.WINDOW_S * 0.9:
        gate.pause()
    spent = time.monotonic() - t0
    waits = gate.waits
    # every pause waited MAX_WAIT_S until the share was used, then none waited at all
    assert waits == round(priority.MAX_SHARE * priority.WINDOW_S / priority.MAX_WAIT_S), waits
    assert spent >= priority.MAX_SHARE * priority.WINDOW_S * 0.9
    t1 = time.monotonic()
    for _ in range(1000):
        gate.pause()
    assert gate.waits == waits and time.monotonic() - t1 < 0.05  # share used: no waiting
    time.sleep(priority.WINDOW_S)
    gate.pause()  # a new window: waiting again
    assert gate.waits == waits + 1
    gate.leave()


def test_query_gate_stops_waiting_once_a_commit_is_overdue() -> None:
    """Past the time ingest's last commit allowed (committed(until)), a query in flight no
    longer holds ingest up; the next commit allows waiting again."""
    import time
    from smalldp import priority
    gate = priority.QueryGate()
    gate.enter()
    gate.committed(time.monotonic() + 0.02)
    t0 = time.monotonic()
    gate.pause()  # waits until the horizon (20 ms), not MAX_WAIT_S
    assert 0.01 <= time.monotonic() - t0 < priority.MAX_WAIT_S and gate.waits == 1
    t1 = time.monotonic()
    for _ in range(100):
        gate.pause()
    assert time.monotonic() - t1 < 0.02 and gate.waits == 1  # overdue: no waiting at all
    gate.committed(time.monotonic() + 10)
    t2 = time.monotonic()
    gate.pause()
    assert time.monotonic() - t2 >= priority.MAX_WAIT_S * 0.9 and gate.waits == 2
    gate.leave()


def test_requests_hold_the_gate_and_writer_offers_pause_points(tmp_path: Path) -> None:
    from helpers_server import Events, apply, did, tid
    from smalldp.api.server import make_app
    from smalldp.priority import QueryGate
    from smalldp.store.writer import PAUSE_EVERY, Writer

    class Recording(QueryGate):
        most = 0

        def enter(self) -> None:
            super().enter()
            Recording.most = max(Recording.most, self.active)

    writer = Writer(tmp_path / "smalldp.sqlite")
    pauses = []
    writer.pause = lambda: pauses.append(1)
    ev = Events()
    post = f"at://{did('author')}/app.bsky.feed.post/{tid(1)}"
    apply(writer, [ev.like(did(f"fan{i}"), tid(1000 + i), post) for i in range(1000)])
    assert len(pauses) >= 2 * (1000 // (PAUSE_EVERY + 1))  # passes 1 and 3 at least
    writer.close()
    gate = Recording()

    async def main() -> None:
        app = make_app(tmp_path / "smalldp.sqlite", query_gate=gate)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        import aiohttp
        async with aiohttp.ClientSession() as http:
            async def get() -> int:
                async with http.get(f"http://127.0.0.1:{port}/xrpc/blue.microcosm.links.getBacklinksCount",
                                    params={"subject": post, "source": "app.bsky.feed.like:subject.uri"}) as r:
                    return (await r.json())["total"]
            totals = await asyncio.gather(*(get() for _ in range(20)))
        await runner.cleanup()
        assert totals == [1000] * 20
    asyncio.run(main())
    assert Recording.most >= 1 and gate.active == 0


def test_a_batch_commits_once_batch_ms_have_gone_since_the_last_commit(tmp_path: Path) -> None:
    """While events keep coming, the batch closes by time in the sink itself (the loop's
    timer task may not run during a backlog), counted from the last commit: the gap
    between commits stays near batch_ms however long the work after a commit took."""
    from helpers_server import Events, did, tid
    from smalldp.events import decode_event
    from smalldp.ingest.live import LiveIngest
    from smalldp.store.writer import Writer

    now = [100.0]
    metrics = IngestMetrics()
    live = LiveIngest(lambda: Writer(tmp_path / "smalldp.sqlite"), ClientOptions(endpoints=("ws://127.0.0.1:1",)),
                      metrics, batch_events=10_000, batch_ms=1000, data_dir=tmp_path, clock=lambda: now[0])
    live.writer = live._open_writer()
    ev = Events()
    post = f"at://{did('author')}/app.bsky.feed.post/{tid(1)}"
    likes = iter(decode_event(json.dumps(e)) for e in [ev.like(did(f"fan{i}"), tid(1000 + i), post) for i in range(20)])

    def deliver_at(t: float) -> None:
        now[0] = t
        live._deliver(next(likes))

    for t in (100.1, 100.5, 100.9):
        deliver_at(t)
    assert (live.pending(), metrics.batches_committed) == (3, 0)
    deliver_at(101.0)  # batch_ms after the start: due
    assert (live.pending(), metrics.batches_committed, metrics.events_committed) == (0, 1, 4)
    deliver_at(101.8)  # the next one is due at 102.0, a second after that commit
    assert (live.pending(), metrics.batches_committed) == (1, 1)
    deliver_at(102.0)
    assert (live.pending(), metrics.batches_committed, metrics.events_committed) == (0, 2, 6)
    deliver_at(105.0)  # after a quiet spell, an event is due at once
    assert (live.pending(), metrics.batches_committed) == (0, 3)
    live.writer.close()


def test_each_commit_tells_the_query_gate_how_long_queries_may_hold_ingest_up(tmp_path: Path) -> None:
    """Live ingest gives the gate a horizon at each commit: batch_ms plus COMMIT_SLACK_S
    from then, past which a pause point returns at once."""
    import time
    from helpers_server import Events, did, tid
    from smalldp.events import decode_event
    from smalldp.ingest.live import COMMIT_SLACK_S, LiveIngest
    from smalldp.priority import QueryGate
    from smalldp.store.writer import Writer

    horizons: list[tuple[float, float]] = []  # (when told, until)

    class Recording(QueryGate):
        def committed(self, until: float) -> None:
            horizons.append((time.monotonic(), until))
            super().committed(until)

    now = [100.0]
    metrics = IngestMetrics()
    live = LiveIngest(lambda: Writer(tmp_path / "smalldp.sqlite"), ClientOptions(endpoints=("ws://127.0.0.1:1",)),
                      metrics, batch_events=2, batch_ms=700, data_dir=tmp_path, clock=lambda: now[0],
                      query_gate=Recording())
    live.writer = live._open_writer()
    ev = Events()
    post = f"at://{did('author')}/app.bsky.feed.post/{tid(1)}"
    for i in range(4):  # two full batches: two commits
        live._deliver(decode_event(json.dumps(ev.like(did(f"fan{i}"), tid(1000 + i), post))))
    assert metrics.batches_committed == 2 and len(horizons) == 2
    for told, until in horizons:
        assert until - told == pytest.approx(0.7 + COMMIT_SLACK_S, abs=0.05)
    live.writer.close()


def test_merges_get_a_smaller_budget_while_queries_come(tmp_path: Path) -> None:
    """Between batches merges run for merge_ms, but for BUSY_MERGE_S at most while a query
    is in flight or started within BUSY_WINDOW_S (the gate says); without a gate, merge_ms."""
    from smalldp.ingest.live import BUSY_MERGE_S, LiveIngest
    from smalldp.priority import QueryGate
    from smalldp.store.writer import Writer

    def live_with(gate: QueryGate | None) -> LiveIngest:
        return LiveIngest(lambda: Writer(tmp_path / "smalldp.sqlite", merge_slices=0),
                          ClientOptions(endpoints=("ws://127.0.0.1:1",)), IngestMetrics(), batch_events=100,
                          batch_ms=1000, merge_ms=400, data_dir=tmp_path, query_gate=gate)

    gate = QueryGate()
    live = live_with(gate)
    budgets = [live.merge_budget()]  # no query yet
    gate.enter()
    budgets.append(live.merge_budget())  # one in flight
    gate.leave()
    budgets.append(live.merge_budget())  # one just ended
    assert budgets == [0.4, BUSY_MERGE_S, BUSY_MERGE_S]
    assert not gate.busy(0.0) and gate.busy(60.0)
    assert live_with(None).merge_budget() == 0.4
    writer = live._open_writer()
    live._merge(writer)  # runs with that budget (nothing to merge in an empty store)
    writer.close()
