"""`smalldp backfill` put together: settings -> HTTP session, resolver, fetcher, Backfill;
its summary and ``--status`` printed (cli.py stays a thin parser)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp

from smalldp.config import Settings
from smalldp.ingest.backfill import Backfill, BackfillProgress, BackfillSummary, DirectWriter, WriterRunner
from smalldp.ingest.repo_fetch import FetchPolicy, RepoFetcher
from smalldp.store import backfill_state as state
from smalldp.store.schema import open_reader
from smalldp.store.writer import Writer
from smalldp.verify import HttpDidResolver

TMP_DIR = "backfill-tmp"  # under data_dir: CARs being downloaded (removed once applied)
# What `smalldp backfill`'s own flags may set in a backfill it hands to a running serve
# (the serve's settings fill in the rest).
RUN_SETTINGS = ("plc_url", "verify_commits", "backfill_concurrency", "backfill_timeout_s", "backfill_retries",
                "backfill_max_car_mb", "backfill_batch_records")


@dataclass
class BackfillRequest:
    """What to backfill: names, or the follows of one account, or a relay's every repo."""

    names: list[str] = field(default_factory=list)
    follows_of: str | None = None
    relay: str | None = None
    refetch: bool = False
    allow_local: bool = False  # PDSes and did:web on loopback or IP literals, plain http (tests)
    handle_url: str | None = None  # where handles resolve (tests); None: https://<handle>/.well-known
    dns_nameserver: tuple[str, int] | None = None  # DNS server for _atproto TXT (tests); None: the system's
    settings: dict[str, str] = field(default_factory=dict)  # RUN_SETTINGS given with the command

    def as_dict(self) -> dict[str, Any]:
        """What is sent to a running serve (handle_url stays local: tests only)."""
        return {"names": self.names, "follows_of": self.follows_of, "relay": self.relay,
                "refetch": self.refetch, "allow_local": self.allow_local, "settings": self.settings}

    @classmethod
    def from_dict(cls, values: object) -> BackfillRequest:
        """A request as sent by `smalldp backfill`; ValueError says what is wrong with it."""
        if not isinstance(values, dict):
            raise ValueError("the request is not a JSON object")
        names = values.get("names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("names must be a list of strings")
        optional = {key: values.get(key) for key in ("follows_of", "relay")}
        if not all(v is None or isinstance(v, str) for v in optional.values()):
            raise ValueError("follows_of and relay must be strings")
        if sum(1 for given in (names, optional["follows_of"], optional["relay"]) if given) != 1:
            raise ValueError("give names, or follows_of, or relay")
        flags = {key: values.get(key, False) for key in ("refetch", "allow_local")}
        if not all(isinstance(v, bool) for v in flags.values()):
            raise ValueError("refetch and allow_local must be true or false")
        settings = values.get("settings") or {}
        if not isinstance(settings, dict) or not all(
                k in RUN_SETTINGS and isinstance(v, str) for k, v in settings.items()):
            raise ValueError(f"settings must map some of {', '.join(RUN_SETTINGS)} to strings")
        return cls(names=list(names), follows_of=optional["follows_of"], relay=optional["relay"],
                   refetch=flags["refetch"], allow_local=flags["allow_local"], settings=dict(settings))


async def run_backfill(settings: Settings, request: BackfillRequest, writer: Writer,
                       progress: BackfillProgress | None = None) -> BackfillSummary:
    """Run one backfill into ``writer`` (closed at the end) as ``settings`` say (serve stopped)."""
    try:
        return await run_backfill_with(settings, request, DirectWriter(writer), progress)
    finally:
        writer.close()


async def run_backfill_with(settings: Settings, request: BackfillRequest, runner: WriterRunner,
                            progress: BackfillProgress | None = None,
                            started: Callable[[Backfill], None] | None = None) -> BackfillSummary:
    """Run one backfill whose writes go through ``runner``; ``started`` is given the run
    (its summary grows as repos are done)."""
    tmp_dir = Path(settings.data_dir) / TMP_DIR
    tmp_dir.mkdir(parents=True, exist_ok=True)
    for leftover in tmp_dir.glob("getRepo-*.car"):  # of a run that was killed
        leftover.unlink(missing_ok=True)
    policy = FetchPolicy(timeout_s=float(settings.backfill_timeout_s), retries=settings.backfill_retries,
                         max_bytes=settings.backfill_max_car_mb << 20, allow_local=request.allow_local)
    connector = aiohttp.TCPConnector(limit=2 * settings.backfill_concurrency + 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        resolver = HttpDidResolver(session, plc_url=settings.plc_url, timeout_s=policy.timeout_s,
                                   allow_local=request.allow_local,
                                   web_scheme="http" if request.allow_local else "https")
        fetcher = RepoFetcher(session, resolver, tmp_dir, policy, dns_nameserver=request.dns_nameserver,
                              **({"handle_url": request.handle_url} if request.handle_url else {}))
        backfill = Backfill(runner, fetcher, concurrency=settings.backfill_concurrency,
                            batch_records=settings.backfill_batch_records, refetch=request.refetch,
                            verify=settings.verify_commits,
                            progress=progress or BackfillProgress())
        if started is not None:
            started(backfill)
        if request.follows_of:
            return await backfill.run_follows_of(request.follows_of)
        if request.relay:
            return await backfill.run_relay(request.relay)
        return await backfill.run_names(request.names)


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


def print_status(path: Path, as_json: bool, serving: dict[str, Any] | None = None) -> int:
    """``--status``: repos per state, then every repo (failed first, with why); with JSON,
    ``serving`` (a running serve's backfill) as "serve"."""
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
        print(json.dumps({"counts": counts, "repos": [r.as_dict() for r in repos], "serve": serving}))
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
