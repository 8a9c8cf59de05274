"""Safe on small disks: the disk-space guard, bounded WAL and commit interval, log volume.

The end-to-end tests run the real commands on a real small filesystem: a size-limited
tmpfs mounted for the test (root or password-less sudo; otherwise they skip, loudly).
`smalldp replay` plays a generated capture, `smalldp serve` follows it into the small
filesystem until the disk floor (or, with no floor, the end of the disk: real ENOSPC,
SQLITE_FULL) stops it: ingest pauses, /xrpc/_health says why, the API still answers,
the watchdog keeps being fed. Then a filler file is deleted, ingest resumes by itself
and completes, and every answer equals a clean `smalldp import` of the same capture.
The guard's decisions are checked against real statvfs readings of a small tmpfs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import import_json
from fake_jetstream import FakeJetstream
from smalldp.config import MAX_BATCH_EVENTS, MAX_BATCH_MS, ConfigError, load_settings
from smalldp.events import decode_event
from smalldp.ingest import lograte
from smalldp.ingest.diskguard import MB, DiskGuard, disk_space, floor_bytes, is_disk_full
from smalldp.ingest.jetstream import ClientOptions
from smalldp.ingest.live import LiveIngest, WriterFailed
from smalldp.ingest.metrics import IngestMetrics
from smalldp.store.reader import Reader
from smalldp.store.schema import WAL_AUTOCHECKPOINT_PAGES, WAL_SIZE_LIMIT, db_path, open_writer
from smalldp.store.writer import Writer
from test_import import answers, realistic_capture
from test_live import _committed_cursor, _env, _keys_of, free_port, last_op_time, live_settings

ROOT = Path(__file__).resolve().parents[1]
EVENTS = 30_000  # the generated capture: about 47 MB of WAL growth in batches of 500


# ---------------------------------------------------------------- a small real filesystem

def _skip_loudly(reason: str) -> None:
    warnings.warn(f"DISK GUARD TEST SKIPPED: {reason}", stacklevel=2)
    pytest.skip(reason)


def _root_prefix() -> list[str]:
    """[] as root, sudo -n otherwise; skips when neither can mount."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    _skip_loudly("mounting a small tmpfs needs root or password-less sudo")
    return []


@contextlib.contextmanager
def small_filesystem(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` MiB mounted at ``path``, owned by this user, for the block."""
    prefix = _root_prefix()
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_mb}m,mode=0700,uid={os.getuid()},gid={os.getgid()}"
    done = subprocess.run([*prefix, "mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        _skip_loudly(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        # Lazy: a process that failed the test may still hold a file open.
        subprocess.run([*prefix, "umount", "-l", str(path)], capture_output=True)


def fill_until_free(filler: Path, free_bytes: int) -> None:
    """Grow (or shrink) ``filler`` until its filesystem has ``free_bytes`` left (to a page)."""
    current = filler.stat().st_size if filler.exists() else 0
    size = max(0, current + disk_space(filler.parent).free - free_bytes)
    with filler.open("ab") as f:
        f.truncate(min(size, current))  # shrinking frees pages at once on tmpfs
        chunk = b"\xa5" * MB  # real pages, not a sparse hole
        while f.tell() < size:
            f.write(chunk[: size - f.tell()])
    assert abs(disk_space(filler.parent).free - free_bytes) <= 64 * 1024


class FakeClock:
    """time.monotonic for the guard, moved by hand: no test waits on wall time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- the guard's decisions, real statvfs

def test_floor_is_the_larger_of_the_two_settings() -> None:
    assert floor_bytes(100 * MB, 8, 0) == 8 * MB
    assert floor_bytes(1000 * MB, 8, 2) == 20 * MB
    assert floor_bytes(64 << 30, 256, 2) == (64 << 30) // 50  # a 64 GB card: 1.3 GB
    assert floor_bytes(8 << 30, 256, 2) == 256 * MB  # an 8 GB card: the minimum wins
    assert floor_bytes(100 * MB, 0, 0) == 0


def test_guard_pauses_below_the_floor_and_resumes_above_it_with_a_margin(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs", 16) as fs:
        clock = FakeClock()
        guard = DiskGuard(fs, min_free_mb=8, min_free_percent=0, poll_s=3.0, clock=clock)
        assert guard.check() and not guard.paused
        assert guard.last is not None and guard.last.total == 16 * MB and guard.floor == 8 * MB
        assert guard.resume_at() == 9 * MB

        filler = fs / "filler"
        fill_until_free(filler, 6 * MB)
        assert not guard.check()
        assert guard.reason == "disk space: 6 MB free, below the 8 MB floor" and guard.pauses == 1

        # Above the floor but inside the margin: still paused (no flapping on one batch).
        fill_until_free(filler, 8 * MB + MB // 2)
        clock.now += 3.0
        assert not guard.check()
        assert guard.reason.startswith("disk space: 8 MB free, waiting for 9 MB")

        # Space is back, but a paused guard reads the disk only every poll_s.
        filler.unlink()
        clock.now += 1.0
        assert not guard.check()
        clock.now += 2.0
        assert guard.check() and guard.reason == "" and guard.last.free == 16 * MB
        assert guard.pauses == 1

        # Not paused: every check reads the disk (one statvfs per commit).
        fill_until_free(filler, 7 * MB)
        assert not guard.check() and guard.pauses == 2


def test_floor_from_a_percentage_of_the_real_filesystem(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs", 16) as fs:
        guard = DiskGuard(fs, min_free_mb=1, min_free_percent=25, clock=FakeClock())
        fill_until_free(fs / "filler", 5 * MB)
        assert guard.check() and guard.floor == 4 * MB
        fill_until_free(fs / "filler", 3 * MB)
        assert not guard.check() and "below the 4 MB floor" in guard.reason


def _real_sqlite_full(fs: Path) -> sqlite3.Error:
    """Fill a tmpfs through SQLite until it refuses: the real error of a full disk."""
    conn = sqlite3.connect(fs / "full.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t(b BLOB)")
    try:
        for _ in range(10_000):
            conn.execute("INSERT INTO t VALUES(randomblob(65536))")
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("the filesystem never filled")


def test_disk_full_errors_are_told_apart_from_other_failures(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs", 4) as fs:
        full = _real_sqlite_full(fs)
        assert is_disk_full(full), full
        with pytest.raises(OSError) as raised:
            with (fs / "more").open("wb") as f:
                f.write(b"x" * (8 * MB))
                f.flush()
        assert raised.value.errno == errno.ENOSPC and is_disk_full(raised.value)
    # What live ingest wraps: the cause counts.
    try:
        raise WriterFailed("apply failed") from full
    except WriterFailed as wrapped:
        assert is_disk_full(wrapped)
    # SQLITE_FULL without a full disk: max_page_count (the technique of test_live).
    conn = sqlite3.connect(tmp_path / "capped.sqlite", isolation_level=None)
    conn.execute("CREATE TABLE t(b BLOB)")
    conn.execute("PRAGMA max_page_count=4")
    with pytest.raises(sqlite3.OperationalError) as capped:
        conn.execute("INSERT INTO t VALUES(randomblob(100000))")
    assert is_disk_full(capped.value)
    conn.close()
    for other in (sqlite3.OperationalError("no such table: x"), sqlite3.DatabaseError("database disk image is malformed"),
                  OSError(errno.EIO, "I/O error"), RuntimeError("full of bugs")):
        assert not is_disk_full(other), other


def test_a_failed_commit_retries_later_and_only_with_space(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs", 32) as fs:
        clock = FakeClock()
        guard = DiskGuard(fs, min_free_mb=2, min_free_percent=0, poll_s=3.0, retry_max_s=10.0, clock=clock)
        full = sqlite3.OperationalError("database or disk is full")
        assert guard.check()
        guard.commit_failed(full)  # e.g. a merge bigger than the floor: space looks fine
        assert guard.paused and guard.full_failures == 1
        assert guard.reason == ("disk full: a commit failed for lack of space (database or disk is full), "
                                "32 MB free; retrying in 3 s")
        clock.now += 2.9
        assert not guard.check()
        clock.now += 0.1
        assert guard.check()
        # Failing again doubles the delay (each attempt writes to the card), up to the cap.
        delays = []
        for _ in range(4):
            guard.commit_failed(full)
            start = clock.now
            while not guard.check():
                clock.now += 0.5
            delays.append(clock.now - start)
        assert delays == [6.0, 10.0, 10.0, 10.0]
        guard.committed()
        guard.commit_failed(full)
        clock.now += 3.0
        assert guard.check()
        # After a failure the delay is not enough: the free space must be back too.
        guard.commit_failed(full)
        fill_until_free(fs / "filler", MB)
        clock.now += 3.0
        assert not guard.check() and guard.reason == "disk space: 1 MB free, below the 2 MB floor"
        (fs / "filler").unlink()
        clock.now += 3.0
        assert guard.check()
        # Someone made room since the failure (16 MB more): retry at the next look, without
        # waiting out the delay.
        guard.committed()
        fill_until_free(fs / "filler", 2 * MB)
        for _ in range(3):
            guard.commit_failed(full)
        assert guard.reason.endswith("2 MB free; retrying in 10 s")
        clock.now += 3.0
        assert not guard.check()  # nothing changed yet
        (fs / "filler").unlink()
        clock.now += 3.0
        assert guard.check()  # 6 s of the 10


def test_an_unreadable_filesystem_does_not_pause(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    guard = DiskGuard(tmp_path / "missing", min_free_mb=1, min_free_percent=0)
    with caplog.at_level(logging.WARNING, "smalldp.ingest.diskguard"):
        assert guard.check() and guard.check()
    assert guard.last is None
    assert sum("cannot read the free space" in r.message for r in caplog.records) == 1  # once


# ---------------------------------------------------------------- metrics, health, watchdog

def test_paused_shows_in_health_metrics_and_status_and_keeps_the_watchdog_fed() -> None:
    metrics = IngestMetrics(state="streaming", queue_depth=500)
    metrics.paused_reason = "disk space: 100 MB free, below the 256 MB floor"
    metrics.disk_free_bytes, metrics.disk_floor_bytes, metrics.disk_pauses = 100 * MB, 256 * MB, 1
    metrics.last_commit_monotonic = time.monotonic() - 3600  # no commit for an hour
    metrics.paused_tick = time.monotonic()
    health = metrics.health()
    assert health["state"] == "paused" and health["paused_reason"] == metrics.paused_reason
    assert health["disk"] == {"free_bytes": 100 * MB, "total_bytes": None, "floor_bytes": 256 * MB,
                              "pauses": 1, "wal_bytes": 0}
    assert metrics.status_line().startswith("paused (disk space: 100 MB free, below the 256 MB floor): ")
    samples = {name: value for name, _, _, value in metrics.samples()}
    assert samples["smalldp_ingest_paused"] == 1 and samples["smalldp_ingest_disk_free_bytes"] == 100 * MB
    # Paused and its thread alive: healthy. A thread that stopped looking: not.
    assert metrics.progressing(60.0)
    metrics.paused_tick = time.monotonic() - 120
    assert not metrics.progressing(60.0)
    # Stopping while paused shows as stopping; not paused, the hour without a commit is a stall.
    metrics.state = "stopping"
    assert metrics.shown_state() == "stopping"
    metrics.state, metrics.paused_reason = "streaming", ""
    assert metrics.health()["state"] == "streaming" and not metrics.progressing(60.0)
    assert {name: value for name, _, _, value in metrics.samples()}["smalldp_ingest_paused"] == 0


# ---------------------------------------------------------------- settings and pragmas

def test_commit_interval_and_batch_have_upper_bounds_and_the_floor_has_defaults() -> None:
    s = load_settings(env={})
    assert (s.min_free_mb, s.min_free_percent) == (256, 2)
    assert (MAX_BATCH_EVENTS, MAX_BATCH_MS) == (100_000, 60_000)
    assert load_settings({"batch_events": str(MAX_BATCH_EVENTS), "batch_ms": str(MAX_BATCH_MS)}, env={})
    with pytest.raises(ConfigError, match="batch_events .*between 1 and 100000"):
        load_settings({"batch_events": "100001"}, env={})
    with pytest.raises(ConfigError, match="batch_ms .*between 1 and 60000"):
        load_settings(env={"SMALLDP_BATCH_MS": "600000"})
    with pytest.raises(ConfigError, match="min_free_percent .*between 0 and 50"):
        load_settings(env={"SMALLDP_MIN_FREE_PERCENT": "90"})
    assert load_settings(env={"SMALLDP_MIN_FREE_MB": "0"}).min_free_mb == 0


def test_the_writer_bounds_its_wal(tmp_path: Path) -> None:
    conn = open_writer(tmp_path / "x.sqlite", cache_mb=4, mmap_mb=0)
    assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == WAL_SIZE_LIMIT == 64 * MB
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_AUTOCHECKPOINT_PAGES
    conn.close()


def test_a_starved_wal_is_truncated_after_a_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that keeps an old snapshot stops checkpoints from restarting the WAL, which
    then grows with every commit; live ingest truncates it once the reader is done."""
    from smalldp.ingest import live as live_module
    monkeypatch.setattr(live_module, "WAL_MAX_BYTES", 256 * 1024)
    ops = [op for line in realistic_capture(3000, seed=3).lines if (op := decode_event(line)) is not None]
    writer = Writer(db_path(tmp_path), cache_mb=4)
    writer.conn.execute("PRAGMA busy_timeout=100")  # the truncation waits for readers this long
    wal = Path(f"{writer.path}-wal")
    reader = sqlite3.connect(writer.path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM fwd").fetchone()  # holds its snapshot from here
    for i in range(0, len(ops), 300):
        writer.apply(ops[i:i + 300], cursor=ops[min(i + 299, len(ops) - 1)].time_us)
    starved = wal.stat().st_size
    assert starved > 256 * 1024
    metrics = IngestMetrics()
    live = LiveIngest(lambda: writer, ClientOptions(endpoints=("ws://127.0.0.1:9/subscribe",)), metrics,
                      batch_events=100, batch_ms=50, data_dir=tmp_path)
    live._bound_wal(writer)  # the reader is still there: busy, nothing lost, tried again later
    assert wal.stat().st_size >= starved and metrics.wal_bytes >= starved
    reader.execute("COMMIT")
    reader.close()
    live._bound_wal(writer)  # within WAL_RETRY_S of the last attempt: not yet
    assert wal.stat().st_size >= starved
    live._next_wal_truncate = 0.0
    live._bound_wal(writer)
    assert wal.stat().st_size == 0 and metrics.wal_bytes == 0
    assert writer.cursor == ops[-1].time_us
    writer.close()


# ---------------------------------------------------------------- log volume

def test_repeated_messages_are_counted_and_summarised() -> None:
    clock = FakeClock()
    repeats = lograte.RepeatFilter(burst=3, window_s=60.0, clock=clock)
    logger = logging.getLogger("smalldp.test.lograte")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect()
    logger.addHandler(handler)
    lograte.install(("smalldp.test.lograte",), repeats)
    lograte.install(("smalldp.test.lograte",), repeats)  # once only
    try:
        assert logger.filters.count(repeats) == 1
        for n in range(20):  # a reconnect storm
            logger.warning("jetstream %s: %s; reconnecting in %.1f s", "ws://x", f"closed {n}", 0.5)
            clock.now += 1.0
        logger.info("connecting to %s", "ws://x")  # another kind: its own budget
        logger.error("live ingest failed %d", 1)  # errors always pass
        logger.error("live ingest failed %d", 2)
        logger.error("live ingest failed %d", 3)
        logger.error("live ingest failed %d", 4)
        assert seen == [f"jetstream ws://x: closed {n}; reconnecting in 0.5 s" for n in range(3)] + [
            "connecting to ws://x"] + [f"live ingest failed {n}" for n in range(1, 5)]
        assert repeats.flush() == 0  # the window has not ended
        clock.now += 40.0
        assert repeats.flush() == 1
        assert seen[-1] == ("17 more like 'jetstream %s: %s; reconnecting in %.1f s' in the last 60 s; "
                            "the last: jetstream ws://x: closed 19; reconnecting in 0.5 s")
        # A new window: the burst again; a window's summary also comes before its successor's
        # first message when nobody flushed in between.
        for n in range(5):
            logger.warning("skipped message %d", n)
        clock.now += 61.0
        logger.warning("skipped message %d", 99)
        assert seen[-2:] == ["2 more like 'skipped message %d' in the last 60 s; the last: skipped message 4",
                             "skipped message 99"]
        assert repeats.flush(force=True) == 0
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(repeats)


def test_serve_installs_the_filter_on_the_ingest_loggers() -> None:
    lograte.install()
    for name in lograte.INGEST_LOGGERS:
        assert lograte.REPEATS in logging.getLogger(name).filters


def test_a_reconnect_storm_logs_a_few_lines_and_a_count(tmp_path: Path) -> None:
    """`smalldp serve` against an endpoint that refuses every connection, at INFO: a line per
    attempt would be two lines a second on the card; the filter lets five of each kind
    through per minute and says how many more there were."""
    with socket.socket() as closed:  # a port nobody listens on (bound, not listening)
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]

        async def main() -> tuple[int, str]:
            port = free_port()
            serve = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "smalldp.cli", "serve", "--grpc-listen", "off", "--data-dir", str(tmp_path / "data"),
                "--listen", f"127.0.0.1:{port}", "--jetstream", f"ws://127.0.0.1:{dead}/subscribe",
                "--no-compress", "--backoff-max-s", "1", env=_env(SMALLDP_LOG_LEVEL="info"),
                stderr=asyncio.subprocess.PIPE)
            try:
                health = await _wait_for(port, serve, "12 reconnects",
                                         lambda h: h["jetstream"]["reconnects"] >= 12, timeout=60)
            finally:
                serve.send_signal(signal.SIGTERM)
                _, err = await asyncio.wait_for(serve.communicate(), 15)
            assert serve.returncode == 0, err.decode()
            return int(health["jetstream"]["reconnects"]), err.decode()

        reconnects, log_text = asyncio.run(main())
    lines = log_text.splitlines()
    each = [line for line in lines if " more like " not in line]
    assert sum("; reconnecting to ws://" in line for line in each) == 5, log_text
    assert sum(" INFO smalldp.ingest.jetstream: connecting to " in line for line in each) == 5, log_text
    summaries = [int(m.group(1)) for line in lines
                 if (m := re.search(r"WARNING smalldp.ingest.jetstream: (\d+) more like "
                                    r"'jetstream %s: %s; reconnecting to %s in %.1f s' in the last 60 s; "
                                    r"the last: jetstream ws://", line))]
    assert len(summaries) == 1 and summaries[0] + 5 >= reconnects, log_text
    assert len(lines) <= 20, log_text


# ---------------------------------------------------------------- other failures still stop ingest

def test_a_writer_failure_that_is_not_disk_space_still_fails_ingest(tmp_path: Path) -> None:
    ref = realistic_capture(600, seed=4)

    class Broken(Writer):
        def apply(self, ops: Any, cursor: int | None = None, meta: Any = None) -> Any:
            raise sqlite3.DatabaseError("database disk image is malformed")

    async def main() -> LiveIngest:
        async with FakeJetstream(ref.lines) as server:
            settings = live_settings(tmp_path / "live", [server.url])
            live = LiveIngest(lambda: Broken(db_path(settings.data_dir)),
                              ClientOptions(endpoints=(server.url,), compress=False), IngestMetrics(),
                              batch_events=100, batch_ms=50, data_dir=tmp_path / "live")
            live.start()
            assert await asyncio.get_running_loop().run_in_executor(None, live.wait_done, 30)
            return live

    live = asyncio.run(main())
    assert isinstance(live.error, WriterFailed) and "malformed" in str(live.error)
    assert live.metrics.state == "failed" and live.metrics.paused_reason == ""


# ---------------------------------------------------------------- end to end on a small tmpfs

@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """A generated capture, its clean import and the cursor that import ends at."""
    tmp = tmp_path_factory.mktemp("capture")
    path = tmp / "capture.jsonl"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_events.py"), "--events", str(EVENTS),
                    "--seed", "5", "--out", str(path)], check=True, env=_env(), timeout=120)
    import_json(tmp / "clean", [path])
    last = _committed_cursor(tmp / "clean")
    assert last is not None and last == last_op_time(path.read_text().splitlines())
    return path, tmp / "clean", last


class Notifications:
    """A NOTIFY_SOCKET: what `smalldp serve` tells systemd, read as it comes (like systemd:
    a datagram queue left full would block the sender)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[bytes] = []

    def start(self) -> None:
        """Read on the running loop from now on."""
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self.drain)

    def drain(self) -> list[bytes]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096))
            except BlockingIOError:
                return self.messages

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


async def _get(port: int, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, body


async def _health_now(port: int) -> dict[str, Any] | None:
    """/xrpc/_health, or None while serve is not answering yet; a hung API fails the test."""
    try:
        status, body = await _get(port, "/xrpc/_health")
    except aiohttp.ClientConnectionError:
        return None
    assert status == 200, body
    return dict(body)


async def _wait_for(port: int, proc: asyncio.subprocess.Process, what: str, ok: Any,
                    timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    health: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        assert proc.returncode is None, f"serve exited while waiting for {what}"
        health = await _health_now(port)
        if health is not None and ok(health):
            return health
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s; last health {health}")


# Floor variant: the guard pauses at 24 MB free; the disk never fills.
# Full variant: no floor; the WAL write that finds the tmpfs full fails (ENOSPC, SQLITE_FULL),
# rolls back, and is retried once the filler is gone.
@pytest.mark.parametrize("variant", ["floor", "full"])
def test_serve_pauses_on_a_small_disk_and_resumes_when_space_returns(
        tmp_path: Path, capture: tuple[Path, Path, int], variant: str) -> None:
    path, clean, last = capture
    keys, targets, uris = _keys_of(path.read_bytes().splitlines())
    assert len(keys) > 1000
    # A key the API is asked about while ingest is paused.
    target, coll, link_path = max(sorted(keys), key=lambda k: k[1] == "app.bsky.feed.like")
    floor_mb = 24 if variant == "floor" else 0
    headroom = 12 * MB  # about a quarter of what following the whole capture writes

    async def main(fs: Path, notify: Notifications) -> dict[str, Any]:
        notify.start()
        data, filler = fs / "data", fs / "filler"
        data.mkdir()
        fill_until_free(filler, floor_mb * MB + headroom)
        env = _env(SMALLDP_MIN_FREE_MB=str(floor_mb), SMALLDP_MIN_FREE_PERCENT="0",
                   NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="3000000")
        rport, port = free_port(), free_port()
        replay = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "smalldp.cli", "replay", str(path), "--listen", f"127.0.0.1:{rport}",
            env=_env(), stdout=asyncio.subprocess.DEVNULL)
        serve = None
        try:
            serve = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "smalldp.cli", "serve", "--grpc-listen", "off", "--data-dir", str(data),
                "--listen", f"127.0.0.1:{port}", "--jetstream", f"ws://127.0.0.1:{rport}/subscribe",
                "--no-compress", "--rewind-s", "0", "--batch-events", "500", "--backoff-max-s", "1",
                env=env)
            paused = await _wait_for(port, serve, "a pause", lambda h: h["ingest"] == "paused")
            found: dict[str, Any] = {"paused": paused}

            # Paused: the reason is shown, nothing more is committed, the disk stops filling.
            reason = paused["jetstream"]["paused_reason"]
            assert paused["paused_reason"] == reason  # also at the top of _health
            if variant == "floor":
                m = re.fullmatch(r"disk space: (\d+) MB free, below the 24 MB floor", reason)
                assert m and int(m.group(1)) < 24, reason
            else:
                assert reason.startswith("disk full: a commit failed for lack of space (database or disk is full)"), reason
            assert 0 < paused["jetstream"]["events"] and paused["cursor"] < last
            free_paused = disk_space(fs).free
            # Past the watchdog window (3 s) since the last commit, then a heartbeat or two
            # more; longer than the guard's poll too: it looked again and stayed paused.
            await asyncio.sleep(3.5)
            seen = len(notify.drain())
            await asyncio.sleep(1.5)
            still = await _health_now(port)
            assert still is not None and still["ingest"] == "paused"
            assert (still["cursor"], still["jetstream"]["events"]) == (paused["cursor"], paused["jetstream"]["events"])
            assert disk_space(fs).free >= free_paused - 256 * 1024

            # The API answers meanwhile, from what is committed: queries, /metrics.
            query = urlencode({"subject": target, "source": f"{coll}:{link_path.lstrip('.')}"})
            status, count = await _get(port, f"/xrpc/blue.microcosm.links.getBacklinksCount?{query}")
            reader = Reader(db_path(data))
            try:
                assert status == 200 and count == {"total": reader.count(target, coll, link_path)}
            finally:
                reader.close()
            status, text = await _get(port, "/metrics")
            assert status == 200
            samples = {f.name: f.samples[0].value for f in text_string_to_metric_families(text)}
            assert samples["smalldp_ingest_paused"] == 1 and samples["smalldp_ingest_disk_pauses"] >= 1
            assert samples["smalldp_ingest_disk_free_bytes"] < floor_mb * MB + headroom
            if variant == "full":
                assert samples["smalldp_ingest_disk_full_failures"] >= 1
            # systemd: STATUS= says why, and the watchdog is still fed (a pause is healthy),
            # long after the last commit.
            messages = notify.drain()[seen:]
            kind = reason.split(":")[0].encode()  # "disk space" or "disk full"; the numbers move
            assert any(m.startswith(b"STATUS=paused (" + kind + b": ") for m in messages), messages
            assert b"WATCHDOG=1" in messages, messages

            # Space returns: ingest resumes by itself and completes.
            filler.unlink()
            done = await _wait_for(port, serve, "catching up", lambda h: h["cursor"] == last
                                   and h["jetstream"]["queue_depth"] == 0)
            assert done["ingest"] == "streaming" and done["jetstream"]["paused_reason"] == ""
            found["done"] = done
            serve.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(serve.wait(), 15) == 0
            return found
        finally:
            if serve is not None and serve.returncode is None:
                serve.kill()
                await serve.wait()
            replay.send_signal(signal.SIGTERM)
            await asyncio.wait_for(replay.wait(), 10)
            notify.close()

    notify = Notifications(tmp_path / "notify.sock")
    with small_filesystem(tmp_path / "fs", 96) as fs:
        found = asyncio.run(main(fs, notify))
        live = tmp_path / "live"
        shutil.copytree(fs / "data", live)
    assert found["done"]["jetstream"]["disk"]["pauses"] >= 1
    # Nothing lost, nothing applied twice: every answer and table size equals the clean import's.
    assert answers(live, keys, targets, uris) == answers(clean, keys, targets, uris)
    assert table_sizes(live) == table_sizes(clean)


def table_sizes(data: Path) -> dict[str, int]:
    """Rows of the tables that hold one row per record, account or alias."""
    conn = sqlite3.connect(f"file:{db_path(data)}?mode=ro", uri=True)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("fwd", "body", "actor", "alias", "actor_rev")}
    finally:
        conn.close()
