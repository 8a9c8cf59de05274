"""Live-ingest benchmark: `smalldp serve` following `smalldp replay` over loopback.

Run through `scripts/bench_live` (which sets up the virtualenv).  Writes one JSON file and
prints a short summary.  This is a measurement, never a test: figures depend on the
machine and its load (prefer the ratios, measured within one run).

catchup (`--only catchup`)
    Generate N events (scripts/gen_events.py, cached in --out-dir), `smalldp import --json`
    them into a fresh data dir (the baseline events/s), then for each wire (uncompressed,
    and zstd with the v1 dictionary): a fresh data dir, `smalldp replay --speed max` and
    `smalldp serve --jetstream` pointed at it; poll /xrpc/_health until the committed
    cursor is the capture's last time_us and the queue is empty.  Live events/s = events /
    (serve start -> caught up).  Then the same again on another fresh dir while an
    open-loop client sends --query-rate requests/s (fixed intervals, whatever the answers)
    of getBacklinksCount and getBacklinks first pages on popular and unpopular targets;
    latency counts from each request's scheduled time, and the catch-up rate under that
    load is reported too (--together: one run per wire, timed under the load).  After each
    catch-up the imported dir is served with --no-ingest and a handful of answers are
    compared with the live dir's: any difference is reported and makes the exit status 1.
    `--firehose also|only`: the relay wire too (or alone): the capture made into relay
    frames once (smalldp.replay_firehose, cached next to it), `smalldp replay --wire
    firehose` and `smalldp serve --firehose`; caught up when the committed frames reach the
    last seq. Reported besides events/s: frames/s and MB/s received (what decoding costs).
memory (`--only memory`)
    A capture of M minutes at --memory-rate events/s, replayed at live pace; the serve
    process's RSS is sampled every --sample-s seconds (a light open-loop query load runs
    too, so the readers' caches fill as in real use).  Reports RSS after warm-up (first
    sample after 20% of the run), at the end, the growth and the max.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, ensure_events, free_port, pick_targets, query_request, wait_for_port  # noqa: E402

DEFAULT_DICTIONARY = Path("/work/shared/fixtures/jetstream/zstd_dictionary_legacy_subscribe.zdict")
LIVE_QUERY_KINDS = ("getBacklinksCount", "getBacklinks_first_page")
HEALTH_POLL_S = 0.2
WINDOW_S = 5  # latency-over-time windows
REQUEST_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 60.0
Triple = tuple[str, str, str]  # (target, collection, path)


def log(msg: str) -> None:
    print(f"[bench_live {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- processes

class Child:
    """A smalldp subprocess with its output in a log file; always stopped with SIGTERM,
    killed if it does not exit in time."""

    running: list[Child] = []

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.ps = psutil.Process(self.proc.pid)
        self.exit_code: int | None = None
        self.stop_s: float | None = None
        Child.running.append(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_s(self) -> float:
        try:
            t = self.ps.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return float("nan")

    def rss(self) -> int:
        try:
            return self.ps.memory_info().rss
        except psutil.Error:
            return 0

    def threads_cpu(self) -> list[dict[str, Any]]:
        """CPU seconds per thread, busiest first (the main thread's id is the pid)."""
        try:
            threads = self.ps.threads()
        except psutil.Error:
            return []
        rows = []
        for t in threads:
            name = ""
            try:
                name = Path(f"/proc/{self.proc.pid}/task/{t.id}/comm").read_text().strip()
            except OSError:
                pass
            rows.append({"tid": t.id, "main": t.id == self.proc.pid, "comm": name,
                         "cpu_s": round(t.user_time + t.system_time, 2)})
        rows.sort(key=lambda r: r["cpu_s"], reverse=True)
        return rows[:6]

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait, SIGKILL after ``timeout``; returns the exit code."""
        if self in Child.running:
            Child.running.remove(self)
        if self._log.closed:  # stopped already
            return self.exit_code
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.proc.pid}) ignored SIGTERM for {timeout:.0f} s: killing it")
                self.proc.kill()
                self.proc.wait()
        self.stop_s = round(time.monotonic() - started, 3)
        self.exit_code = self.proc.returncode
        self._log.close()
        return self.exit_code

    def log_tail(self, lines: int = 15) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []

    @classmethod
    def stop_all(cls) -> None:
        for child in reversed(list(cls.running)):
            child.stop()


class ChildrenCpu:
    """CPU seconds of a process's children (serve's RPC worker processes), summed over
    every child seen: one that ends keeps the seconds it was last seen with."""

    def __init__(self, pid: int) -> None:
        self.ps = psutil.Process(pid)
        self.seen: dict[int, float] = {}

    def cpu_s(self) -> float:
        try:
            children = self.ps.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            try:
                t = child.cpu_times()
                self.seen[child.pid] = float(t.user + t.system)
            except psutil.Error:
                pass
        return sum(self.seen.values())

    def rss(self) -> int:
        total = 0
        try:
            for child in self.ps.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        return total


def smalldp(*args: str) -> list[str]:
    return [sys.executable, "-m", "smalldp.cli", *args]


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def start_replay(events_file: Path, port: int, log_path: Path, *, speed: str,
                 dictionary: Path | None, firehose: bool = False) -> Child:
    argv = smalldp("replay", str(events_file), "--listen", f"127.0.0.1:{port}", "--speed", speed)
    if firehose:
        argv += ["--wire", "firehose"]
    if dictionary is not None:
        argv += ["--zstd-dictionary", str(dictionary)]
    child = Child("replay", argv, log_path)
    wait_for_port(port, child.proc)
    return child


def start_live_serve(data_dir: Path, port: int, replay_port: int, log_path: Path,
                     dictionary: Path | None, firehose: bool = False) -> Child:
    argv = smalldp("serve", "--grpc-listen", "off", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}")
    if firehose:
        argv += ["--firehose", f"ws://127.0.0.1:{replay_port}"]
    else:
        argv += ["--jetstream", f"ws://127.0.0.1:{replay_port}"]
        argv += ["--compress", "--zstd-dictionary", str(dictionary)] if dictionary else ["--no-compress"]
    return Child("serve", argv, log_path)


def ensure_frames(events_file: Path) -> tuple[Path, int]:
    """The capture as relay frames, seq = line number (made once, cached next to it):
    (file, last seq)."""
    from smalldp.replay_firehose import frames_from_lines, write_frame_file
    path = events_file.with_name(events_file.name.replace(".jsonl.zst", "") + ".frames.zst")
    last_path = path.with_name(path.name + ".last")
    if path.exists() and last_path.exists():
        return path, int(last_path.read_text())
    started = time.monotonic()
    with open_lines(events_file) as stream:
        tmp = path.with_name("tmp-" + path.name)
        n = write_frame_file(tmp, frames_from_lines(stream))
    last = capture_bounds(events_file)["lines"]  # no blank lines in generated captures
    if n != last:
        raise RuntimeError(f"{n:,} frames made of {last:,} events: see the log for the lines left out")
    tmp.rename(path)
    last_path.write_text(str(last))
    log(f"made {n:,} relay frames in {time.monotonic() - started:.1f} s -> {path}")
    return path, last


def wire_used(log_path: Path) -> str | None:
    """What the serve log says it connected with: 'zstd', 'uncompressed', 'firehose' or None."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    found = re.findall(r"connecting to .*?\((?:cursor [^,]*, (zstd|uncompressed)|(live tip|cursor seq \d+))\)", text)
    return (found[-1][0] or "firehose") if found else None


# ---------------------------------------------------------------------------- captures and targets

def open_lines(path: Path) -> io.BufferedReader:
    raw = open(path, "rb")
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
    return io.BufferedReader(reader, buffer_size=1 << 20)  # type: ignore[arg-type]


def capture_bounds(path: Path) -> dict[str, int]:
    """First and last time_us and the line count, read from the file itself (the live
    cursor after catching up is the time_us of the last event, in file order)."""
    first = last = None
    lines = 0
    with open_lines(path) as stream:
        for line in stream:
            if not line.strip():
                continue
            lines += 1
            if first is None:
                first = line
            last = line
    if first is None or last is None:
        raise RuntimeError(f"{path} holds no events")
    return {"first_time_us": int(orjson.loads(first)["time_us"]),
            "last_time_us": int(orjson.loads(last)["time_us"]), "lines": lines}


def targets_from_events(path: Path, max_lines: int, per_kind: int = 5) -> dict[str, list[Triple]]:
    """Popular (most-liked post URIs, most-followed DIDs) and unpopular (random liked posts
    and followed DIDs with one link) targets from the first ``max_lines`` events."""
    likes: Counter[str] = Counter()
    follows: Counter[str] = Counter()
    with open_lines(path) as stream:
        for n, line in enumerate(stream):
            if n >= max_lines:
                break
            if b'"operation":"create"' not in line:
                continue
            event = orjson.loads(line)
            commit = event.get("commit") or {}
            record = commit.get("record") or {}
            if commit.get("collection") == "app.bsky.feed.like":
                uri = (record.get("subject") or {}).get("uri")
                if uri:
                    likes[uri] += 1
            elif commit.get("collection") == "app.bsky.graph.follow":
                subject = record.get("subject")
                if isinstance(subject, str):
                    follows[subject] += 1
    rng = random.Random(7)

    def rare(counter: Counter[str]) -> list[str]:
        ones = sorted(k for k, v in counter.items() if v == 1)
        return rng.sample(ones, min(per_kind, len(ones)))

    like_src, follow_src = ("app.bsky.feed.like", ".subject.uri"), ("app.bsky.graph.follow", ".subject")
    return {
        "popular": [(u, *like_src) for u, _ in likes.most_common(per_kind)]
                   + [(d, *follow_src) for d, _ in follows.most_common(per_kind)],
        "unpopular": [(u, *like_src) for u in rare(likes)] + [(d, *follow_src) for d in rare(follows)],
    }


# ---------------------------------------------------------------------------- statistics

def pct(sorted_values: list[float], q: float) -> float:
    """The q-quantile as scripts/bench.py takes it (the value at index int(n*q))."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def latency_stats(values_ms: list[float]) -> dict[str, float | int]:
    v = sorted(values_ms)
    if not v:
        return {"n": 0}
    return {"n": len(v), "p50_ms": round(statistics.median(v), 2), "p99_ms": round(pct(v, 0.99), 2),
            "max_ms": round(v[-1], 2)}


def median_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 3) if vals else None


# ---------------------------------------------------------------------------- open-loop queries

class OpenLoop:
    """Requests at fixed intervals, whatever the answers (several in flight allowed).

    Latency is measured from each request's scheduled time, so a server (or client) that
    falls behind shows up in the figures instead of slowing the load down.
    """

    def __init__(self, base: str, targets: dict[str, list[Triple]], rate: float,
                 kinds: tuple[str, ...] = LIVE_QUERY_KINDS, max_in_flight: int = 32) -> None:
        self.base = base
        self.rate = rate
        self.plan: list[tuple[str, Triple]] = []
        self.max_in_flight = max_in_flight
        pops = [p for p in ("popular", "unpopular") if targets.get(p)]
        for i in range(max((len(targets[p]) for p in pops), default=0)):
            for kind in kinds:
                for pop in pops:
                    triples = targets[pop]
                    self.plan.append((f"{kind}/{pop}", triples[i % len(triples)]))
        self.latencies: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.error_samples: list[str] = []
        self.start_delays: list[float] = []
        self.trace: list[tuple[float, float, str, bool]] = []  # (scheduled, ms, kind, ok)
        self.sent = 0
        self.started_at = 0.0
        self.stopped_at = 0.0

    async def _one(self, session: aiohttp.ClientSession, key: str, route: str,
                   params: dict[str, str], scheduled: float) -> None:
        loop = asyncio.get_running_loop()
        self.start_delays.append((loop.time() - scheduled) * 1000)
        try:
            async with session.get(self.base + route, params=params) as r:
                await r.read()
                ok = r.status == 200
                why = f"HTTP {r.status}"
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            ok, why = False, f"{type(exc).__name__}: {exc}"
        elapsed = (loop.time() - scheduled) * 1000
        self.trace.append((scheduled, elapsed, key, ok))
        if ok:
            self.latencies.setdefault(key, []).append(elapsed)
        else:
            self.errors[key] = self.errors.get(key, 0) + 1
            if len(self.error_samples) < 10:
                self.error_samples.append(f"{key}: {why}")

    async def run(self, stop: asyncio.Event) -> None:
        if not self.plan or self.rate <= 0:
            await stop.wait()
            return
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.rate
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        connector = aiohttp.TCPConnector(limit=self.max_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            self.started_at = next_t = loop.time()
            i = 0
            while not stop.is_set():
                delay = next_t - loop.time()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        break
                    except asyncio.TimeoutError:
                        pass
                key, triple = self.plan[i % len(self.plan)]
                route, params = query_request(key.split("/")[0], triple)
                task = asyncio.create_task(self._one(session, key, route, params, next_t))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += 1
                i += 1
                next_t += interval
            self.stopped_at = loop.time()
            if tasks:
                await asyncio.wait(set(tasks), timeout=REQUEST_TIMEOUT_S + 1)

    def report(self) -> dict[str, Any]:
        kinds = {}
        for key, _ in self.plan:
            if key not in kinds:
                kinds[key] = dict(latency_stats(self.latencies.get(key, [])), errors=self.errors.get(key, 0))
        duration = max(self.stopped_at - self.started_at, 1e-9)
        delays = sorted(self.start_delays)
        # Latency over time (all kinds), to tell a steady cost from stalls.
        windows: dict[int, list[float]] = {}
        for scheduled, ms, _, _ in self.trace:
            windows.setdefault(int((scheduled - self.started_at) // WINDOW_S), []).append(ms)
        over_time = [[w * WINDOW_S, len(v), round(statistics.median(v), 1), round(max(v), 1)]
                     for w, v in sorted(windows.items())]
        slowest = sorted(self.trace, key=lambda r: r[1], reverse=True)[:10]
        return {"rate_requested": self.rate, "requests": self.sent,
                "rate_achieved": round(self.sent / duration, 1),
                "errors": sum(self.errors.values()), "error_samples": self.error_samples,
                "client_start_delay_ms": {"p50": round(pct(delays, 0.5), 2), "p99": round(pct(delays, 0.99), 2),
                                          "max": round(delays[-1], 2)} if delays else {},
                "kinds": kinds,
                "over_time": {"window_s": WINDOW_S, "columns": ["t_s", "n", "p50_ms", "max_ms"],
                              "rows": over_time},
                "slowest": [{"t_s": round(sch - self.started_at, 3), "ms": round(ms, 1), "kind": k, "ok": ok}
                            for sch, ms, k, ok in slowest]}


# ---------------------------------------------------------------------------- HTTP helpers

async def get_json(session: aiohttp.ClientSession, url: str, params: dict[str, str] | None = None) -> Any:
    async with session.get(url, params=params) as r:
        body = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url} {params} -> HTTP {r.status}: {body[:200]!r}")
        return orjson.loads(body)


async def wait_http(session: aiohttp.ClientSession, base: str, child: Child, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await get_json(session, base + "/xrpc/_health")
        except (aiohttp.ClientError, OSError, RuntimeError):
            if not child.alive():
                raise RuntimeError(f"{child.name} exited with {child.proc.returncode}: "
                                   + " | ".join(child.log_tail(5)))
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} did not answer HTTP within {timeout:.0f} s")
            await asyncio.sleep(0.05)


async def prometheus(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with session.get(base + "/metrics") as r:
        text = await r.text()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                pass
    return values


# ---------------------------------------------------------------------------- catch-up

def run_import(events_file: Path, data_dir: Path, log_path: Path) -> dict[str, Any]:
    """`smalldp import --json` into a fresh dir, as its own process (same settings as serve)."""
    fresh_dir(data_dir)
    started = time.monotonic()
    with open(log_path, "wb") as errlog:
        proc = subprocess.run(smalldp("import", "--json", "--data-dir", str(data_dir), str(events_file)),
                              stdout=subprocess.PIPE, stderr=errlog, check=False)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"smalldp import exited with {proc.returncode}; see {log_path}")
    summary = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return {"summary": summary, "import_events_per_s": summary["events_per_s"],
            "wall_s": round(wall, 2), "wall_events_per_s": round(summary["events"] / wall, 1)}


async def drive_catchup(serve: Child, replay: Child, base: str, bounds: dict[str, int],
                        targets: dict[str, list[Triple]], query_rate: float, started: float,
                        timeout_s: float, stall_s: float, expected_events: int,
                        last_seq: int | None = None) -> dict[str, Any]:
    """Poll health until caught up while the open-loop queries run; return the figures.

    Caught up: the committed cursor (from the store) is the capture's last time_us and
    nothing is queued; live events/s = ``expected_events`` / (serve start -> then).
    ``last_seq`` (the relay wire, whose cursor is each event's own time): the last frame
    read has that seq and nothing is queued."""
    last = bounds["last_time_us"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as session:
        await wait_http(session, base, serve)
        http_up = time.monotonic() - started
        stop = asyncio.Event()
        load = OpenLoop(base, targets, query_rate)
        load_task = asyncio.create_task(load.run(stop))
        timeline: list[list[float]] = []
        last_events, last_change = -1, time.monotonic()
        health: dict[str, Any] = {}
        problem = None
        try:
            while True:
                await asyncio.sleep(HEALTH_POLL_S)
                now = time.monotonic()
                if not serve.alive():
                    problem = f"serve exited with {serve.proc.returncode}"
                    break
                try:
                    health = await get_json(session, base + "/xrpc/_health")
                except (aiohttp.ClientError, OSError, RuntimeError, asyncio.TimeoutError) as exc:
                    log(f"health poll failed: {exc}")
                    continue
                t = time.monotonic() - started  # when the answer arrived
                js = health.get("jetstream") or {}
                events = int(js.get("events") or 0)
                if not timeline or t - timeline[-1][0] >= 1.0:
                    timeline.append([round(t, 2), events, int(js.get("queue_depth") or 0)])
                at_end = health.get("cursor") == last if last_seq is None else js.get("seq") == last_seq
                if at_end and js.get("queue_depth") == 0:
                    break
                if events != last_events:
                    last_events, last_change = events, now
                elif now - last_change > stall_s:
                    problem = (f"stalled: no event committed for {stall_s:.0f} s at {events:,} events, "
                               f"cursor {health.get('cursor')} (want {last})")
                    break
                if now - started > timeout_s:
                    problem = f"not caught up after {timeout_s:.0f} s ({events:,} events)"
                    break
        finally:
            stop.set()
            await load_task
        seconds = time.monotonic() - started if problem else t
        events = int((health.get("jetstream") or {}).get("events") or 0)
        timeline.append([round(seconds, 2), events, 0])
        # The committed cursor shows in the store before the ingest counters move: the
        # writer thread counts a batch only after its post-commit work (merging runs).
        counters_lag = None
        if problem is None:
            while events < expected_events and time.monotonic() - started - seconds < stall_s:
                await asyncio.sleep(HEALTH_POLL_S)
                health = await get_json(session, base + "/xrpc/_health")
                events = int((health.get("jetstream") or {}).get("events") or 0)
            counters_lag = round(time.monotonic() - started - seconds, 2)
        metrics = await prometheus(session, base)
    done = expected_events if problem is None else events
    return {"problem": problem, "seconds": round(seconds, 3), "http_up_s": round(http_up, 3),
            "events": events, "live_events_per_s": round(done / seconds, 1) if seconds else None,
            "counters_lag_s": counters_lag,
            "health": health, "timeline": timeline, "queries": load.report(),
            "bytes_received": metrics.get("smalldp_ingest_bytes_received_total"),
            "messages_received": metrics.get("smalldp_ingest_messages_total"),
            "decode_errors": metrics.get("smalldp_ingest_decode_errors_total"),
            "reconnects": metrics.get("smalldp_ingest_reconnects_total")}


def finish_purges(data_dir: Path) -> None:
    """Remove the rows of deleted accounts still queued for the purge sweep (the store
    not in use): what `smalldp compact` does first."""
    from smalldp.store.schema import db_path
    from smalldp.store.writer import Writer

    writer = Writer(db_path(data_dir))
    try:
        writer.finish_purges()
    finally:
        writer.close()


async def compare_answers(live: str, ref: str, targets: dict[str, list[Triple]],
                          compare_links: bool) -> dict[str, Any]:
    """The same queries on the live dir and the imported dir: answers must be equal
    (cursors, which are opaque, aside).  ``compare_links``: the stores' link totals too,
    which only agree once the purge sweeps of both are done (a deleted account's links
    are hidden at once, counted until the sweep removes them: see finish_purges)."""
    checks: list[tuple[str, str, dict[str, str], Any]] = []
    for pop, triples in targets.items():
        for triple in triples:
            for kind in ("getBacklinksCount", "getBacklinks_first_page", "getBacklinkDids", "links_all"):
                route, params = query_request(kind, triple)
                checks.append((f"{kind}/{pop}", route, params, None))
    mismatches: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        hl, hr = await get_json(session, live + "/xrpc/_health"), await get_json(session, ref + "/xrpc/_health")
        if compare_links and hl.get("links") != hr.get("links"):
            mismatches.append({"query": "_health links", "live": hl.get("links"), "imported": hr.get("links")})
        for key, route, params, _ in checks:
            a, b = await get_json(session, live + route, params), await get_json(session, ref + route, params)
            for body in (a, b):
                if isinstance(body, dict):
                    body.pop("cursor", None)
            if a != b:
                mismatches.append({"query": key, "route": route, "params": params,
                                   "live": _short(a), "imported": _short(b)})
    return {"checked": len(checks) + int(compare_links), "links_live": hl.get("links"),
            "links_imported": hr.get("links"), "mismatches": mismatches}


def _short(body: Any) -> Any:
    text = json.dumps(body)
    return body if len(text) <= 600 else text[:600] + "..."


def catchup_one(wire: str, events_file: Path, bounds: dict[str, int], import_dir: Path,
                import_result: dict[str, Any], targets: dict[str, list[Triple]],
                args: argparse.Namespace, tag: str, query_rate: float) -> dict[str, Any]:
    """One live catch-up on a fresh data dir; ``query_rate`` requests/s meanwhile (0: none)."""
    out = args.out_dir
    dictionary = args.dictionary if wire == "compressed" else None
    firehose = wire == "firehose"
    served_file, last_seq = ensure_frames(events_file) if firehose else (events_file, None)
    data_dir = fresh_dir(out / f"live-data-{args.events}-{wire}")
    rport, sport = free_port(), free_port()
    log(f"[{tag}] live catch-up, {wire}: replay on :{rport}, serve on :{sport}")
    replay = start_replay(served_file, rport, out / f"live-{tag}-{wire}-replay.log", speed="max",
                          dictionary=dictionary, firehose=firehose)
    ref = None
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        replay_cpu0 = replay.cpu_s()
        started = time.monotonic()
        serve = start_live_serve(data_dir, sport, rport, out / f"live-{tag}-{wire}-serve.log", dictionary,
                                 firehose=firehose)
        expected = import_result["summary"]["events"]
        result = asyncio.run(drive_catchup(serve, replay, f"http://127.0.0.1:{sport}", bounds, targets,
                                           query_rate, started, args.timeout_s, args.stall_s,
                                           expected, last_seq))
        if result["seconds"]:  # what a relay's ~10x bytes cost: frames and bytes per second
            result["frames_per_s"] = round((result["messages_received"] or 0) / result["seconds"], 1)
            result["mb_per_s"] = round((result["bytes_received"] or 0) / 1e6 / result["seconds"], 2)
        result["load_avg_before"] = load_before  # 1, 5, 15 min: others share this machine
        result["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        result["serve_cpu_s"] = round(serve.cpu_s(), 2)
        result["serve_threads_cpu"] = serve.threads_cpu()
        result["replay_cpu_s"] = round(replay.cpu_s() - replay_cpu0, 2)
        result["serve_rss_bytes"] = serve.rss()
        result["wire"] = wire_used(serve.log_path)
        result["import_events_per_s"] = import_result["import_events_per_s"]
        if result["live_events_per_s"]:
            result["ratio"] = round(result["live_events_per_s"] / import_result["import_events_per_s"], 3)
        if result["problem"] is None and result["events"] != expected:
            result["problem"] = f"live committed {result['events']:,} events, import {expected:,}"
        if result["problem"] is None:
            # 1. the running live serve against the imported dir, 2. the live dir reopened
            #    after a clean stop (its writer closed, as the import's has) against it again.
            rp = free_port()
            ref = Child("serve-imported", smalldp("serve", "--grpc-listen", "off", "--no-ingest", "--data-dir", str(import_dir),
                                                  "--listen", f"127.0.0.1:{rp}"),
                        out / f"live-{tag}-{wire}-serve-imported.log")
            wait_for_port(rp, ref.proc)
            result["correctness"] = {"while_running": asyncio.run(compare_answers(
                f"http://127.0.0.1:{sport}", f"http://127.0.0.1:{rp}", targets, compare_links=False))}
        result["serve_exit"] = serve.stop()
        result["serve_stop_s"] = serve.stop_s
        if result["serve_exit"] != 0:
            result["serve_log_tail"] = serve.log_tail()
        if ref is not None:
            # The link totals agree only once the purge sweeps of both stores are done (a
            # deleted account's links are hidden at once but counted until the sweep, which
            # outlives a stop, reaches them): finish them in both, then compare everything.
            ref.stop()
            finish_purges(import_dir)
            finish_purges(data_dir)
            ref = Child("serve-imported", smalldp("serve", "--grpc-listen", "off", "--no-ingest", "--data-dir", str(import_dir),
                                                  "--listen", f"127.0.0.1:{rp}"),
                        out / f"live-{tag}-{wire}-serve-imported.log")
            wait_for_port(rp, ref.proc)
            again = Child("serve-live-reopened", smalldp("serve", "--grpc-listen", "off", "--no-ingest", "--data-dir", str(data_dir),
                                                         "--listen", f"127.0.0.1:{sport}"),
                          out / f"live-{tag}-{wire}-serve-reopened.log")
            wait_for_port(sport, again.proc)
            result["correctness"]["after_stop"] = asyncio.run(compare_answers(
                f"http://127.0.0.1:{sport}", f"http://127.0.0.1:{rp}", targets, compare_links=True))
            again.stop()
    finally:
        Child.stop_all()
    if not args.keep_data:
        shutil.rmtree(data_dir, ignore_errors=True)
    q = result["queries"]["kinds"]
    log(f"[{tag}] {wire}: {result['events']:,} events in {result['seconds']:.1f} s = "
        f"{result['live_events_per_s'] or 0:,.0f} events/s, ratio {result.get('ratio')}"
        + ("; p99 " + ", ".join(f"{k} {v.get('p99_ms')}" for k, v in q.items()) if query_rate else "")
        + (f"; PROBLEM: {result['problem']}" if result["problem"] else ""))
    return result


def live_runs(run: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(part, wire, result) of every live catch-up of one repetition."""
    return [(part, wire, live) for part in ("live", "with_queries") for wire, live in run.get(part, {}).items()]


def run_catchup(args: argparse.Namespace) -> dict[str, Any]:
    out = args.out_dir
    events_file = ensure_events(out, args.events, args.seed)
    log(f"events: {events_file}")
    bounds = capture_bounds(events_file)
    import_dir = out / f"live-import-{args.events}"
    wires = {"both": ["uncompressed", "compressed"], "on": ["compressed"], "off": ["uncompressed"]}[args.compress]
    if "compressed" in wires and not args.dictionary.is_file():
        log(f"no dictionary at {args.dictionary}: compressed runs skipped")
        wires = [w for w in wires if w != "compressed"]
    wires = {"off": wires, "also": [*wires, "firehose"], "only": ["firehose"]}[args.firehose]
    runs = []
    targets: dict[str, list[Triple]] | None = None
    for rep in range(args.repeat):
        tag = f"r{rep + 1}"
        log(f"[{tag}] import baseline: smalldp import --json ({args.events:,} events)")
        imported = run_import(events_file, import_dir, out / f"live-{tag}-import.log")
        log(f"[{tag}] import: {imported['import_events_per_s']:,.0f} events/s "
            f"({imported['summary']['seconds']} s; wall {imported['wall_s']} s)")
        if targets is None:
            targets = pick_targets(import_dir)
        # "live": the catch-up alone (target 1); "with_queries": again, under the query
        # load (target 2), which may slow it down: both ratios are reported.
        run: dict[str, Any] = {"import": imported, "live": {}}
        separate = args.query_rate > 0 and not args.together
        if separate:
            run["with_queries"] = {}
        for wire in wires:
            run["live"][wire] = catchup_one(wire, events_file, bounds, import_dir, imported, targets, args,
                                            f"{tag}-live" if separate else tag,
                                            0.0 if separate else args.query_rate)
            if separate:
                run["with_queries"][wire] = catchup_one(wire, events_file, bounds, import_dir, imported,
                                                        targets, args, f"{tag}-queries", args.query_rate)
        runs.append(run)
    medians: dict[str, Any] = {}
    for wire in wires:
        lives = [r["live"][wire] for r in runs]
        loaded = [r["with_queries"][wire] for r in runs] if "with_queries" in runs[0] else lives
        kinds: dict[str, Any] = {}
        for key in loaded[0]["queries"]["kinds"]:
            kinds[key] = {stat: median_or_none([lv["queries"]["kinds"].get(key, {}).get(stat) for lv in loaded])
                          for stat in ("p50_ms", "p99_ms", "max_ms")}
        medians[wire] = {
            "ratio": median_or_none([lv.get("ratio") for lv in lives]),
            "live_events_per_s": median_or_none([lv.get("live_events_per_s") for lv in lives]),
            "frames_per_s": median_or_none([lv.get("frames_per_s") for lv in lives]),
            "mb_per_s": median_or_none([lv.get("mb_per_s") for lv in lives]),
            "import_events_per_s": median_or_none([r["import"]["import_events_per_s"] for r in runs]),
            "ratio_with_queries": median_or_none([lv.get("ratio") for lv in loaded]),
            "live_events_per_s_with_queries": median_or_none([lv.get("live_events_per_s") for lv in loaded]),
            "query_errors": sum(lv["queries"]["errors"] for lv in loaded),
            "queries": kinds}
    assert targets is not None
    return {"events_file": str(events_file), "capture": bounds, "wires": wires, "query_rate": args.query_rate,
            "targets": {k: [list(t) for t in v] for k, v in targets.items()},
            "runs": runs, "median": medians}


# ---------------------------------------------------------------------------- memory

async def drive_memory(serve: Child, replay: Child, base: str, bounds: dict[str, int],
                       targets: dict[str, list[Triple]], args: argparse.Namespace,
                       started: float, duration: float) -> dict[str, Any]:
    speed = args.memory_speed
    samples: list[dict[str, Any]] = []
    problem = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as session:
        await wait_http(session, base, serve)
        stop = asyncio.Event()
        load = OpenLoop(base, targets, args.memory_query_rate)
        load_task = asyncio.create_task(load.run(stop))
        caught_up = False
        try:
            while True:
                t = time.monotonic() - started
                wake = started + (len(samples) + 1) * args.sample_s
                if not serve.alive():
                    problem = f"serve exited with {serve.proc.returncode}"
                    break
                try:
                    health = await get_json(session, base + "/xrpc/_health")
                except (aiohttp.ClientError, OSError, RuntimeError, asyncio.TimeoutError) as exc:
                    health = {"error": str(exc)}
                js = health.get("jetstream") or {}
                cursor = health.get("cursor")
                # Where a live-paced stream would be now (the capture ends, though), minus
                # where the store is: about batch_ms when serve keeps up.
                behind = None
                if cursor is not None:
                    due = min(bounds["first_time_us"] + t * speed * 1e6, bounds["last_time_us"])
                    behind = round((due - cursor) / 1e6 / speed, 1)
                samples.append({"t_s": round(t, 1), "rss_bytes": serve.rss(), "replay_rss_bytes": replay.rss(),
                                "events": js.get("events"), "events_per_s": js.get("events_per_s"),
                                "queue_depth": js.get("queue_depth"), "behind_s": behind,
                                "serve_cpu_s": round(serve.cpu_s(), 1)})
                caught_up = cursor == bounds["last_time_us"] and js.get("queue_depth") == 0
                if t >= duration and caught_up:
                    break
                if t >= duration + args.memory_grace_s:
                    problem = f"not caught up {args.memory_grace_s:.0f} s after the replay's end"
                    break
                if len(samples) % 6 == 0:
                    s = samples[-1]
                    log(f"memory: t={t:,.0f}/{duration:,.0f} s rss={s['rss_bytes'] / 1e6:,.0f} MB "
                        f"events={s['events']} behind={behind} s")
                await asyncio.sleep(max(0.0, wake - time.monotonic()))
        finally:
            stop.set()
            await load_task
    return {"problem": problem, "samples": samples, "queries": load.report()}


def run_memory(args: argparse.Namespace) -> dict[str, Any]:
    out = args.out_dir
    minutes, rate, speed = args.memory_minutes, args.memory_rate, args.memory_speed
    duration = minutes * 60
    n = int(round(duration * rate))
    # The capture's clock runs at rate/speed events/s, so replaying it at `speed` delivers `rate`.
    events_file = ensure_events(out, n, args.seed, rate=rate / speed)
    log(f"memory: {n:,} events at {rate:g} events/s (replay speed {speed:g}) = {minutes:g} min; {events_file}")
    bounds = capture_bounds(events_file)
    targets = targets_from_events(events_file, max_lines=min(n, 300_000))
    wire = "compressed" if args.compress != "off" and args.dictionary.is_file() else "uncompressed"
    dictionary = args.dictionary if wire == "compressed" else None
    data_dir = fresh_dir(out / f"live-data-memory-{n}")
    rport, sport = free_port(), free_port()
    replay = start_replay(events_file, rport, out / "live-memory-replay.log", speed=f"{speed:g}",
                          dictionary=dictionary)
    try:
        started = time.monotonic()
        serve = start_live_serve(data_dir, sport, rport, out / "live-memory-serve.log", dictionary)
        result = asyncio.run(drive_memory(serve, replay, f"http://127.0.0.1:{sport}", bounds, targets, args,
                                          started, duration))
        result["serve_threads_cpu"] = serve.threads_cpu()
        result["serve_exit"] = serve.stop()
        if result["serve_exit"] != 0:
            result["serve_log_tail"] = serve.log_tail()
    finally:
        Child.stop_all()  # serve (if still running) and replay
    samples = result["samples"]
    warm = next((s for s in samples if s["t_s"] >= 0.2 * duration), samples[-1] if samples else None)
    end = samples[-1] if samples else None
    summary: dict[str, Any] = {"events": n, "rate": rate, "speed": speed, "minutes": minutes, "wire": wire,
                               "query_rate": args.memory_query_rate, "sample_s": args.sample_s,
                               "events_file": str(events_file), "capture": bounds}
    if warm and end:
        summary.update({
            "rss_warm_bytes": warm["rss_bytes"], "rss_warm_t_s": warm["t_s"],
            "rss_end_bytes": end["rss_bytes"], "rss_end_t_s": end["t_s"],
            "rss_growth_pct": round(100.0 * (end["rss_bytes"] - warm["rss_bytes"]) / max(warm["rss_bytes"], 1), 2),
            "rss_max_bytes": max(s["rss_bytes"] for s in samples),
            "max_behind_s": max((s["behind_s"] for s in samples if s["behind_s"] is not None), default=None),
            "max_queue_depth": max((s["queue_depth"] or 0 for s in samples), default=None)})
    summary.update(result)
    if not args.keep_data:
        shutil.rmtree(data_dir, ignore_errors=True)
    return summary


# ---------------------------------------------------------------------------- main

def human_summary(result: dict[str, Any]) -> str:
    lines = []
    catchup = result.get("catchup")
    if catchup:
        lines.append(f"catch-up, {catchup['capture']['lines']:,} events, {len(catchup['runs'])} run(s) (medians):")
        for wire, m in catchup["median"].items():
            lines.append(f"  {wire:12s} import {m['import_events_per_s'] or 0:,.0f}/s  live "
                         f"{m['live_events_per_s'] or 0:,.0f}/s  ratio {m['ratio']} (target >= 0.8); "
                         f"under {catchup['query_rate']:g} queries/s: {m['live_events_per_s_with_queries'] or 0:,.0f}/s, "
                         f"ratio {m['ratio_with_queries']}, query errors {m['query_errors']}"
                         + (f"; {m['frames_per_s'] or 0:,.0f} frames/s, {m['mb_per_s']} MB/s received"
                            if wire == "firehose" else ""))
            for key, q in m["queries"].items():
                lines.append(f"    {key:40s} p50 {q['p50_ms']} ms  p99 {q['p99_ms']} ms  max {q['max_ms']} ms")
        for i, run in enumerate(catchup["runs"], 1):
            for part, wire, live in live_runs(run):
                corr = (live.get("correctness") or {}).values()
                lines.append(f"  run {i} {part} {wire}: ratio {live.get('ratio')}, "
                             f"{sum(len(c['mismatches']) for c in corr)} mismatches of "
                             f"{sum(c['checked'] for c in corr)} checks"
                             + (f", PROBLEM {live['problem']}" if live.get("problem") else ""))
    mem = result.get("memory")
    if mem and "rss_warm_bytes" in mem:
        lines.append(f"memory, {mem['minutes']:g} min at {mem['rate']:g} events/s ({mem['wire']}): RSS "
                     f"{mem['rss_warm_bytes'] / 1e6:,.0f} MB after warm-up -> {mem['rss_end_bytes'] / 1e6:,.0f} MB "
                     f"at the end ({mem['rss_growth_pct']:+.1f}%, target < 10%), max {mem['rss_max_bytes'] / 1e6:,.0f} MB"
                     + (f", PROBLEM {mem['problem']}" if mem.get("problem") else ""))
    for p in result.get("problems", []):
        lines.append(f"PROBLEM: {p}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="catch-up events (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=["catchup", "memory"], default=None,
                        help="run one part (default: catch-up, then memory)")
    parser.add_argument("--compress", choices=["both", "on", "off"], default="both",
                        help="catch-up wires: both (default), zstd only, uncompressed only; memory uses zstd "
                             "unless off")
    parser.add_argument("--dictionary", type=Path, default=DEFAULT_DICTIONARY, help="v1 zstd dictionary")
    parser.add_argument("--firehose", choices=["off", "also", "only"], default="off",
                        help="catch-up over the relay wire too (also) or alone (only): the capture as "
                             "subscribeRepos frames, `replay --wire firehose`, `serve --firehose`")
    parser.add_argument("--repeat", type=int, default=1, help="catch-up runs (import + live); medians reported")
    parser.add_argument("--query-rate", type=float, default=100.0, help="requests/s while catching up")
    parser.add_argument("--together", action="store_true",
                        help="time the catch-up under the query load (one live run per wire) instead of "
                             "a catch-up alone plus a second one under the load")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="give up a catch-up after this")
    parser.add_argument("--stall-s", type=float, default=120.0, help="give up when nothing commits this long")
    parser.add_argument("--memory-minutes", type=float, default=30.0)
    parser.add_argument("--memory-rate", type=float, default=3000.0, help="events/s delivered by the replay")
    parser.add_argument("--memory-speed", type=float, default=1.0, help="replay --speed (the capture is "
                        "generated at memory-rate/speed so that the delivered rate is memory-rate)")
    parser.add_argument("--memory-query-rate", type=float, default=10.0, help="requests/s during the memory run")
    parser.add_argument("--memory-grace-s", type=float, default=300.0,
                        help="how long after the replay's end serve may take to catch up")
    parser.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling interval")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--json", type=Path, default=None, help="default: OUT_DIR/live.json")
    parser.add_argument("--keep-data", action="store_true", help="keep the live data dirs")
    parser.add_argument("--label", default="", help="free text kept in the JSON (what was measured)")
    args = parser.parse_args()
    args.out_dir = args.out_dir.resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.json or args.out_dir / "live.json"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally blocks stop the children
    result: dict[str, Any] = {
        "command": [sys.executable, *sys.argv], "cwd": os.getcwd(),
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                    "platform": platform.platform(), "cpu_model": _cpu_model(),
                    "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
                    "mem_total_bytes": psutil.virtual_memory().total},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "smalldp": _git_state(),
        "problems": []}
    try:
        if args.only in (None, "catchup"):
            result["catchup"] = run_catchup(args)
        if args.only in (None, "memory"):
            result["memory"] = run_memory(args)
    finally:
        Child.stop_all()
        result["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        problems = result["problems"]
        for i, run in enumerate((result.get("catchup") or {}).get("runs", []), 1):
            for part, wire, live in live_runs(run):
                wire_part = wire if part == "live" else f"{wire} {part}"
                if live.get("problem"):
                    problems.append(f"run {i} {wire_part}: {live['problem']}")
                for when, check in (live.get("correctness") or {}).items():
                    for m in check["mismatches"]:
                        problems.append(f"run {i} {wire_part} ({when}): mismatch {m.get('query')} "
                                        f"{m.get('params', '')}")
                if live["queries"]["errors"]:
                    problems.append(f"run {i} {wire_part}: {live['queries']['errors']} query errors "
                                    f"{live['queries']['error_samples'][:3]}")
                if live.get("wire") and live["wire"] != {"compressed": "zstd", "firehose": "firehose"}.get(
                        wire, "uncompressed"):
                    problems.append(f"run {i} {wire_part}: serve connected {live['wire']}")
                if live.get("serve_exit") not in (0, None):
                    problems.append(f"run {i} {wire_part}: serve exited with {live['serve_exit']}")
        mem = result.get("memory") or {}
        if mem.get("problem"):
            problems.append(f"memory: {mem['problem']}")
        if mem.get("serve_exit") not in (0, None):
            problems.append(f"memory: serve exited with {mem['serve_exit']}")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        print(human_summary(result))
        print(f"(JSON: {json_path})")
    return 1 if result["problems"] else 0


def _git_state() -> dict[str, Any]:
    """The commit measured, and files of the package changed since (others edit the tree)."""
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True,
                                  timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    import smalldp
    from mypyc_build import modules, status

    # Children inherit PYTHONPATH: the same package.  The compiled build's overlay lists
    # its own directory, then the source it was built from (whose commit is the one measured).
    paths = [str(Path(p).resolve()) for p in smalldp.__path__]
    source = next((p for p in paths if Path(p, "cli.py").is_file()), paths[0])
    build, _ = status(modules())
    state: dict[str, Any] = {"package": source, "build": build}
    if source == str(ROOT / "src" / "smalldp"):
        state.update(commit=git("rev-parse", "HEAD").strip(),
                     changed_files=[line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()])
    return state


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
