"""`smalldp backfill` put together: settings -> HTTP session, resolver, fetcher, Backfill;
its summary and ``--status`` printed (cli.py stays a thin parser)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from smalldp.config import Settings
from smalldp.ingest.backfill import Backfill, BackfillProgress, BackfillSummary
from smalldp.ingest.repo_fetch import FetchPolicy, RepoFetcher
from smalldp.store import backfill_state as state
from smalldp.store.schema import open_reader
from smalldp.store.writer import Writer
from smalldp.verify import HttpDidResolver

TMP_DIR = "backfill-tmp"  # under data_dir: CARs being downloaded (removed once applied)


@dataclass
class BackfillRequest:
    """What to backfill: names, or the follows of one account, or a relay's every repo."""

    names: list[str] = field(default_factory=list)
    follows_of: str | None = None
    relay: str | None = None
    refetch: bool = False
    allow_local: bool = False  # PDSes and did:web on loopback or IP literals, plain http (tests)
    handle_url: str | None = None  # where handles resolve (tests); None: https://<handle>/.well-known


async def run_backfill(settings: Settings, request: BackfillRequest, writer: Writer,
                       progress: BackfillProgress | None = None) -> BackfillSummary:
    """Run one backfill into ``writer`` (closed at the end) as ``settings`` say."""
    tmp_dir = Path(settings.data_dir) / TMP_DIR
    tmp_dir.mkdir(parents=True, exist_ok=True)
    for leftover in tmp_dir.glob("getRepo-*.car"):  # of a run that was killed
        leftover.unlink(missing_ok=True)
    policy = FetchPolicy(timeout_s=float(settings.backfill_timeout_s), retries=settings.backfill_retries,
                         max_bytes=settings.backfill_max_car_mb << 20, allow_local=request.allow_local)
    connector = aiohttp.TCPConnector(limit=2 * settings.backfill_concurrency + 2)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            resolver = HttpDidResolver(session, plc_url=settings.plc_url, timeout_s=policy.timeout_s,
                                       allow_local=request.allow_local,
                                       web_scheme="http" if request.allow_local else "https")
            fetcher = RepoFetcher(session, resolver, tmp_dir, policy,
                                  **({"handle_url": request.handle_url} if request.handle_url else {}))
            backfill = Backfill(writer, fetcher, concurrency=settings.backfill_concurrency,
                                batch_records=settings.backfill_batch_records, refetch=request.refetch,
                                progress=progress or BackfillProgress())
            if request.follows_of:
                return await backfill.run_follows_of(request.follows_of)
            if request.relay:
                return await backfill.run_relay(request.relay)
            return await backfill.run_names(request.names)
    finally:
        writer.close()


def print_summary(summary: BackfillSummary, as_json: bool) -> None:
    """The end-of-run summary: JSON, or a few lines (the first failures with their reasons)."""
    if as_json:
        print(json.dumps(summary.as_dict()))
        return
    print(f"backfilled {summary.done:,} repos ({summary.failed:,} failed, {summary.skipped:,} already done), "
          f"{summary.records:,} records ({summary.bad_records:,} unreadable), {summary.bytes / 1e6:,.1f} MB, "
          f"in {summary.seconds:,.1f} s ({summary.records_per_s:,.0f} records/s, {summary.retries:,} retries)")
    for name, reason in summary.failures[:20]:
        print(f"  failed {name}: {reason}")
    if len(summary.failures) > 20 or summary.failed > len(summary.failures):
        print("  ... `smalldp backfill --status` lists them all")


def print_status(path: Path, as_json: bool) -> int:
    """``--status``: repos per state, then every repo (failed first, with why)."""
    if not path.is_file():
        print(f"smalldp backfill: no database at {path}", file=sys.stderr)
        return 2
    conn = open_reader(path, cache_mb=8, mmap_mb=0)
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        counts = state.counts(conn) if "backfill" in tables else dict.fromkeys(state.STATES, 0)
        repos = state.rows(conn) if "backfill" in tables else []
    finally:
        conn.close()
    if as_json:
        print(json.dumps({"counts": counts, "repos": [r.as_dict() for r in repos]}))
        return 0
    print("backfill: " + ", ".join(f"{n:,} {s}" for s, n in counts.items()))
    for repo in repos:
        if repo.state == "failed":
            print(f"  failed  {repo.did}: {repo.reason}")
        elif repo.state == "done":
            print(f"  done    {repo.did} at rev {repo.rev}: {repo.records or 0:,} records, "
                  f"{(repo.bytes or 0) / 1e6:,.2f} MB{' (reconciled)' if repo.stale else ''}")
        else:
            print(f"  {repo.state:7} {repo.did}")
    return 0
