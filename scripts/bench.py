"""Benchmark: generate N events, import them, serve the file, measure queries over loopback.

`--dataplane` runs the DataPlane benchmark instead (scripts/bench_dataplane.py: every
dev.smalldp method under open-loop load while live ingest runs; see its --help).
`--appview` runs the AppView benchmark (scripts/bench_appview.py: the official AppView on
smalldp under live ingest, and on the reference DataPlane; see its --help).

Run through `scripts/bench` (which sets up the virtualenv).  Prints and writes JSON.
This is a measurement, never a test: figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import zstandard

from smalldp.cli import tune_gc
from smalldp.derived import is_derived
from smalldp.ingest.importer import ImportSummary, Progress, import_files
from smalldp.store.reader import Reader
from smalldp.store.schema import db_path
from smalldp.store.writer import Writer

ROOT = Path(__file__).resolve().parents[1]


def load_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_events", ROOT / "scripts" / "gen_events.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def ensure_events(out_dir: Path, events: int, seed: int, rate: float | None = None) -> Path:
    """Generate the event file once per (events, seed, rate); later runs reuse it.

    ``rate`` (events/s of the time_us clock) defaults to the generator's own (500/s);
    other rates get their own file name.
    """
    suffix = "" if rate is None else f"-r{rate:g}"
    path = out_dir / f"events-{events}-{seed}{suffix}.jsonl.zst"
    if path.exists():
        return path
    gen = load_generator()
    tmp = path.with_suffix(".tmp")
    started = time.monotonic()
    params = {} if rate is None else {"rate": float(rate)}
    with open(tmp, "wb") as raw:
        with zstandard.ZstdCompressor(level=3).stream_writer(raw) as out:
            for line in gen.generate(events, seed=seed, **params):
                out.write(line)
                out.write(b"\n")
    tmp.rename(path)
    print(f"generated {events:,} events in {time.monotonic() - started:.1f} s -> {path}", file=sys.stderr)
    return path


def run_import(events_file: Path, data_dir: Path, events: int, batch_events: int,
               cache_mb: int) -> dict[str, object]:
    """Import through the same code path as `smalldp import`; record per-tenth rates and RSS."""
    if data_dir.exists():
        shutil.rmtree(data_dir)
    writer = Writer(db_path(data_dir), cache_mb=cache_mb)
    process = psutil.Process()
    marks: list[tuple[int, float]] = []
    peak_rss = 0
    started = time.monotonic()

    def on_batch(summary: ImportSummary) -> None:
        nonlocal peak_rss
        marks.append((summary.events, time.monotonic() - started))
        peak_rss = max(peak_rss, process.memory_info().rss)

    summary = import_files(writer, [events_file], batch_events=batch_events, restart=True,
                           progress=Progress(), on_batch=on_batch)
    index = writer.backlinks
    merges = {"slices": index.slices_done, "seconds": round(index.slice_seconds, 1),
              "slice_max_s": round(index.slice_seconds_max, 3)}
    writer.close()
    peak_rss = max(peak_rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    total = summary.events
    segments = []
    for tenth in range(10):
        lo, hi = total * tenth // 10, total * (tenth + 1) // 10
        t_lo = _time_at(marks, lo)
        t_hi = _time_at(marks, hi)
        segments.append(round((hi - lo) / max(t_hi - t_lo, 1e-9), 1))
    gaps = [b[1] - a[1] for a, b in zip(marks, marks[1:])]  # a batch and the merge slices after it
    return {"summary": summary.as_dict(), "events_per_s": round(summary.events_per_s, 1),
            "segments_events_per_s": segments, "peak_rss_bytes": peak_rss, "merges": merges,
            "batch_gap_max_s": round(max(gaps, default=0.0), 2)}


def _time_at(marks: list[tuple[int, float]], events: int) -> float:
    """Time when ``events`` events had been committed (linear between batch marks)."""
    prev_e, prev_t = 0, 0.0
    for e, t in marks:
        if e >= events:
            if e == prev_e:
                return t
            return prev_t + (t - prev_t) * (events - prev_e) / (e - prev_e)
        prev_e, prev_t = e, t
    return marks[-1][1] if marks else 0.0


def storage(data_dir: Path) -> dict[str, object]:
    path = db_path(data_dir)
    conn = sqlite3.connect(path)
    by_table = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))
    links = conn.execute("SELECT v FROM meta WHERE k='links'").fetchone()[0]
    runs = conn.execute("SELECT count(*) FROM run").fetchone()[0]
    records = conn.execute("SELECT count(*) FROM fwd WHERE links IS NOT NULL").fetchone()[0]
    conn.close()
    db_bytes = sum(f.stat().st_size for f in data_dir.iterdir() if f.name.startswith("smalldp.sqlite"))
    body_bytes = by_table.get("body", 0)
    return {"db_bytes": db_bytes, "body_bytes": body_bytes, "links": links, "records": records,
            "runs": runs, "bytes_per_link": round((db_bytes - body_bytes) / max(links, 1), 2),
            "bytes_by_table": by_table}


def pick_targets(data_dir: Path) -> dict[str, list[tuple[str, str, str]]]:
    """Popular and unpopular (target, collection, path) triples, read from the index itself.

    Only the records' own links: the DataPlane's derived links (``@`` author views,
    ``<.subject`` reverse edges, smalldp.derived) have no Constellation source to ask for.
    """
    path = db_path(data_dir)
    conn = sqlite3.connect(path)
    reader = Reader(path)
    reader.conn.execute("BEGIN")
    reader._refresh()
    derived = {sid for sid, p in conn.execute("SELECT sid, path FROM source") if is_derived(p)}
    sizes: dict[tuple[bytes, int], int] = {}
    for tkey, sid, size in conn.execute("SELECT tkey, sid, sum(length(data)) FROM bl "
                                        "WHERE run IN (SELECT run FROM run) GROUP BY tkey, sid"):
        if sid not in derived:
            sizes[(tkey, sid)] = size
    ordered = sorted(sizes, key=sizes.get, reverse=True)  # type: ignore[arg-type]
    rng = random.Random(7)
    popular = ordered[:20]
    small = [k for k in ordered[len(ordered) // 2:] if sizes[k] < 16]
    unpopular = rng.sample(small, min(20, len(small)))

    def named(keys: list[tuple[bytes, int]]) -> list[tuple[str, str, str]]:
        out = []
        for tkey, sid in keys:
            collection, p = reader._source_name(sid)
            out.append((reader._target_name(tkey), collection, p))
        return out

    result = {"popular": named(popular), "unpopular": named(unpopular)}
    reader.conn.execute("COMMIT")
    reader.close()
    conn.close()
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``; raise if ``process``
    exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.1)


def source_param(collection: str, path: str) -> str:
    """Constellation's ``source`` parameter for a (collection, path) pair: `coll:subject.uri`."""
    return f"{collection}:{path[1:]}"


def query_request(kind: str, triple: tuple[str, str, str],
                  cursor: str | None = None) -> tuple[str, dict[str, str]]:
    """(route, params) of one query of ``kind`` on a (target, collection, path) triple.

    Kinds: getBacklinksCount, getBacklinks_first_page, getBacklinks_deep_page (needs the
    ``cursor`` of a deep page), getBacklinkDids, links_all.
    """
    target, collection, path = triple
    source = source_param(collection, path)
    if kind == "getBacklinksCount":
        return "/xrpc/blue.microcosm.links.getBacklinksCount", {"subject": target, "source": source}
    if kind == "getBacklinks_first_page":
        return "/xrpc/blue.microcosm.links.getBacklinks", {"subject": target, "source": source, "limit": "100"}
    if kind == "getBacklinks_deep_page":
        params = {"subject": target, "source": source, "limit": "100"}
        if cursor:
            params["cursor"] = cursor
        return "/xrpc/blue.microcosm.links.getBacklinks", params
    if kind == "getBacklinkDids":
        return "/xrpc/blue.microcosm.links.getBacklinkDids", {"subject": target, "source": source, "limit": "100"}
    if kind == "links_all":
        return "/links/all", {"target": target}
    raise ValueError(f"unknown query kind {kind!r}")


QUERY_KINDS = ("getBacklinksCount", "getBacklinks_first_page", "getBacklinks_deep_page",
               "getBacklinkDids", "links_all")


async def measure_queries(base: str, targets: dict[str, list[tuple[str, str, str]]],
                          rounds: int) -> dict[str, dict[str, float]]:
    """Sequential requests over one keep-alive connection: latency percentiles per query kind."""
    results: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession() as session:
        for popularity, triples in targets.items():
            if not triples:
                continue
            deep_cursors: dict[tuple[str, str, str], str | None] = {}
            for triple in triples:  # find a cursor ~10 pages deep for the deep-page query
                target, collection, path = triple
                cursor = None
                for _ in range(10):
                    params = {"subject": target, "source": source_param(collection, path), "limit": "100"}
                    if cursor:
                        params["cursor"] = cursor
                    async with session.get(f"{base}/xrpc/blue.microcosm.links.getBacklinks", params=params) as r:
                        body = await r.json()
                    if not body.get("cursor"):
                        break
                    cursor = body["cursor"]
                deep_cursors[triple] = cursor
            for kind in QUERY_KINDS:
                latencies = []
                for i in range(rounds):
                    triple = triples[i % len(triples)]
                    route, params = query_request(kind, triple, deep_cursors.get(triple))
                    t0 = time.perf_counter()
                    async with session.get(base + route, params=params) as r:
                        await r.read()
                        if r.status != 200:
                            raise RuntimeError(f"{route} {params} -> {r.status}")
                    latencies.append((time.perf_counter() - t0) * 1000)
                latencies.sort()
                results[f"{kind}/{popularity}"] = {
                    "p50_ms": round(statistics.median(latencies), 3),
                    "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 3),
                    "n": len(latencies)}
    return results


def serve_and_measure(data_dir: Path, rounds: int) -> dict[str, object]:
    targets = pick_targets(data_dir)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "smalldp.cli", "serve", "--grpc-listen", "off", "--no-ingest", "--data-dir",
                               str(data_dir), "--listen", f"127.0.0.1:{port}", "--log-level", "warning"])
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, server)
        queries = asyncio.run(measure_queries(base, targets, rounds))
        server_rss = psutil.Process(server.pid).memory_info().rss
    finally:
        server.terminate()
        server.wait(timeout=20)
    return {"queries": queries, "server_rss_bytes": server_rss,
            "targets": {k: [t[0] for t in v[:3]] for k, v in targets.items()}}


def main() -> int:
    if "--dataplane" in sys.argv[1:]:  # the DataPlane benchmark (scripts/bench_dataplane.py)
        sys.path.insert(0, str(ROOT / "scripts"))
        import bench_dataplane

        return bench_dataplane.main([a for a in sys.argv[1:] if a != "--dataplane"])
    if "--appview" in sys.argv[1:]:  # the official AppView on smalldp (scripts/bench_appview.py)
        sys.path.insert(0, str(ROOT / "scripts"))
        import bench_appview

        return bench_appview.main([a for a in sys.argv[1:] if a != "--appview"])
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--batch-events", type=int, default=20_000)
    parser.add_argument("--cache-mb", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=400, help="requests per query kind and popularity")
    parser.add_argument("--skip-import", action="store_true", help="reuse the data dir of an earlier run")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally that stops `serve`
    tune_gc()  # as `smalldp import` does
    args.out_dir.mkdir(parents=True, exist_ok=True)
    events_file = ensure_events(args.out_dir, args.events, args.seed)
    data_dir = args.out_dir / f"data-{args.events}"
    result: dict[str, object] = {"events_requested": args.events, "seed": args.seed,
                                 "batch_events": args.batch_events, "cache_mb": args.cache_mb,
                                 "cpu": os.cpu_count(), "python": sys.version.split()[0]}
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_live import _git_state

    result["smalldp"] = _git_state()  # which commit and build (compiled or interpreted) ran
    if not args.skip_import:
        result.update(run_import(events_file, data_dir, args.events, args.batch_events, args.cache_mb))
    result.update(storage(data_dir))
    result.update(serve_and_measure(data_dir, args.rounds))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
