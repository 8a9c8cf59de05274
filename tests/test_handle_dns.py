"""Handle resolution of `smalldp backfill`: DNS TXT ``_atproto.<handle>`` first, then HTTPS.

Real packets only, all on 127.0.0.1: a UDP DNS server (tests/fake_dns.py) and the fake PLC
directory, PDS and handle host (tests/fake_pds.py).  What each handle should resolve to is
set up by the test (which server says which DID, which DID document claims the handle),
never read from the program.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp
import pytest

from fake_dns import FakeDns
from fake_pds import FakeNetwork
from repo_builder import build_repo, generated_records
from smalldp.config import load_settings
from smalldp.ingest import repo_fetch
from smalldp.ingest.backfill import BackfillSummary
from smalldp.ingest.backfill_run import BackfillRequest, run_backfill
from smalldp.ingest.repo_fetch import FetchError, FetchPolicy, RepoFetcher
from smalldp.store import backfill_state
from smalldp.store.schema import db_path
from smalldp.store.writer import Writer
from smalldp.verify import HttpDidResolver


def did_of(n: int) -> str:
    return f"did:plc:{n:024d}"


def network(*dids: int) -> FakeNetwork:
    """A fake network serving a small repo for each of ``dids``."""
    return FakeNetwork(cars={did_of(i): build_repo(generated_records(3, seed=i), did=did_of(i)).car()
                             for i in dids})


def claim(net: FakeNetwork, handle: str, did: str) -> None:
    """Make ``did``'s document claim ``handle`` without the well-known of ``handle`` naming it."""
    doc: Callable[[str], dict[str, Any]] = net.doc

    def claiming(of: str) -> dict[str, Any]:
        value = doc(of)
        return {**value, "alsoKnownAs": value["alsoKnownAs"] + [f"at://{handle}"]} if of == did else value

    net.doc = claiming  # type: ignore[method-assign, assignment]


def handle_url(net: FakeNetwork) -> str:
    return f"{net.base}/handles/{{handle}}/.well-known/atproto-did"


def backfill(data: Path, net: FakeNetwork, dns: FakeDns, names: list[str]) -> BackfillSummary:
    settings = load_settings({"data_dir": str(data), "plc_url": f"{net.base}/plc", "backfill_timeout_s": "2",
                              "backfill_retries": "0", "log_level": "warning"}, env={})
    request = BackfillRequest(names=names, allow_local=True, handle_url=handle_url(net),
                              dns_nameserver=dns.nameserver)
    return asyncio.run(run_backfill(settings, request, Writer(db_path(data))))


def status(data: Path) -> dict[str, tuple[str, str | None]]:
    conn = sqlite3.connect(db_path(data))
    try:
        return {r.did: (r.state, r.reason) for r in backfill_state.rows(conn)}
    finally:
        conn.close()


async def resolve(net: FakeNetwork, handles: list[str], timeout_s: float,
                  dns_nameserver: tuple[str, int] | None) -> list[str | FetchError]:
    """RepoFetcher.resolve_handle of each handle (one fetcher): its DID, or its FetchError."""
    policy = FetchPolicy(timeout_s=timeout_s, retries=0, allow_local=True)
    async with aiohttp.ClientSession() as session:
        resolver = HttpDidResolver(session, plc_url=f"{net.base}/plc", timeout_s=timeout_s, allow_local=True,
                                   web_scheme="http")
        fetcher = RepoFetcher(session, resolver, Path("."), policy, handle_url=handle_url(net),
                              dns_nameserver=dns_nameserver)
        got: list[str | FetchError] = []
        for handle in handles:
            try:
                got.append(await fetcher.resolve_handle(handle))
            except FetchError as exc:
                got.append(exc)
        return got


def test_txt_only(tmp_path: Path) -> None:
    """No well-known at all (404): the TXT records decide, one character-string or several,
    other TXT strings and invalid did= values ignored, the same DID twice still one DID."""
    with network(1, 2) as net, FakeDns() as dns:
        dns.txt["_atproto.alice.test"] = [[f"did={did_of(1)}"], [f"did={did_of(1)}"]]
        dns.txt["_atproto.bob.test"] = [["v=spf1 -all"], ["did=", did_of(2)[:12], did_of(2)[12:]],
                                        ["did=not-a-did"]]
        claim(net, "alice.test", did_of(1))
        claim(net, "bob.test", did_of(2))
        summary = backfill(tmp_path, net, dns, ["alice.test", "bob.test"])
    assert summary.done == 2 and summary.failed == 0
    assert status(tmp_path) == {did_of(1): ("done", None), did_of(2): ("done", None)}
    assert sorted(dns.queries) == [("_atproto.alice.test", "TXT"), ("_atproto.bob.test", "TXT")]


@pytest.mark.parametrize("dns_says", ["nxdomain", "no answer", "servfail", "no did= value"])
def test_well_known_when_dns_has_no_did(tmp_path: Path, dns_says: str) -> None:
    with network(1) as net, FakeDns() as dns:
        net.handles["alice.test"] = did_of(1)
        if dns_says == "no answer":
            dns.empty.add("_atproto.alice.test")
        elif dns_says == "servfail":
            dns.servfail.add("_atproto.alice.test")
        elif dns_says == "no did= value":
            dns.txt["_atproto.alice.test"] = [["did=did:plc:"], ["hello"]]
        summary = backfill(tmp_path, net, dns, ["alice.test"])
    assert summary.done == 1
    assert status(tmp_path) == {did_of(1): ("done", None)}
    assert ("_atproto.alice.test", "TXT") in dns.queries  # DNS was asked first


def test_txt_wins_over_the_well_known(tmp_path: Path) -> None:
    with network(1, 2) as net, FakeDns() as dns:
        net.handles["alice.test"] = did_of(2)  # the well-known names 2, whose document claims the handle
        dns.txt["_atproto.alice.test"] = [[f"did={did_of(1)}"]]
        claim(net, "alice.test", did_of(1))
        summary = backfill(tmp_path, net, dns, ["alice.test"])
    assert summary.done == 1
    assert status(tmp_path) == {did_of(1): ("done", None)}
    assert did_of(2) not in net.requests


def test_two_dids_in_txt_fail(tmp_path: Path) -> None:
    with network(1, 2, 3) as net, FakeDns() as dns:
        net.handles["alice.test"] = did_of(3)  # a working well-known must not be fallen back on
        dns.txt["_atproto.alice.test"] = [[f"did={did_of(1)}"], [f"did={did_of(2)}"]]
        claim(net, "alice.test", did_of(1))
        claim(net, "alice.test", did_of(2))
        summary = backfill(tmp_path, net, dns, ["alice.test"])
    assert summary.done == 0 and summary.failed == 1
    got = status(tmp_path)
    assert list(got) == ["alice.test"] and got["alice.test"][0] == "failed"
    reason = got["alice.test"][1] or ""
    assert "2 different DIDs" in reason and did_of(1) in reason and did_of(2) in reason, reason
    assert net.requests == {}


def test_txt_did_must_claim_the_handle(tmp_path: Path) -> None:
    with network(1, 2) as net, FakeDns() as dns:
        net.handles["alice.test"] = did_of(2)  # the well-known's DID claims it: not to be tried
        dns.txt["_atproto.alice.test"] = [[f"did={did_of(1)}"]]  # 1's document has no alsoKnownAs
        summary = backfill(tmp_path, net, dns, ["alice.test"])
    assert summary.done == 0 and summary.failed == 1
    got = status(tmp_path)
    assert list(got) == ["alice.test"] and got["alice.test"][0] == "failed"
    reason = got["alice.test"][1] or ""
    assert "does not claim" in reason and did_of(1) in reason and "DNS TXT" in reason, reason
    assert net.requests == {}


def test_silent_dns_falls_back_within_the_timeout() -> None:
    timeout_s = 1.0
    with network(1) as net, FakeDns(silent=True) as dns:
        net.handles["alice.test"] = did_of(1)
        started = time.monotonic()
        got = asyncio.run(resolve(net, ["alice.test"], timeout_s, dns.nameserver))
        took = time.monotonic() - started
    assert got == [did_of(1)]
    assert dns.queries and set(dns.queries) == {("_atproto.alice.test", "TXT")}
    # the DNS wait is the policy's timeout (dnspython's own default lifetime is 5 s)
    assert timeout_s * 0.9 <= took < timeout_s + 1.5, took


def test_no_resolv_conf_means_https_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """The system's resolver (dns_nameserver None) without a resolv.conf: HTTPS, logged once.
    Nothing can be sent: no nameserver is configured, and a .test name never asks it."""
    monkeypatch.setattr(repo_fetch, "RESOLV_CONF", str(tmp_path / "absent-resolv.conf"))
    caplog.set_level(logging.DEBUG, logger=repo_fetch.__name__)
    with network(1, 2, 3) as net:
        net.handles.update({"carol.test": did_of(3), "alice.example.com": did_of(1),
                            "bob.example.com": did_of(2)})
        got = asyncio.run(resolve(net, ["carol.test"], 2.0, None))
        assert got == [did_of(3)]
        assert not [r for r in caplog.records if "no DNS resolver" in r.getMessage()]  # .test: not asked
        got = asyncio.run(resolve(net, ["alice.example.com", "bob.example.com"], 2.0, None))
    assert got == [did_of(1), did_of(2)]
    logged = [r.getMessage() for r in caplog.records if "no DNS resolver" in r.getMessage()]
    assert len(logged) == 1 and "absent-resolv.conf" in logged[0], logged
