"""`smalldp backfill` against a fake PLC directory and PDS (real HTTP on 127.0.0.1).

Expected values come from the fixtures (the real export's records and CIDs) or from a small
model of the rules (tests/test_backfill.py's ``Model``), never from the program's output.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fake_pds import RATE_LIMITED_ONCE, STALL, TAKENDOWN, TRUNCATED, ERROR_500_ONCE, FakeNetwork
from cryptography.hazmat.primitives.asymmetric import ec

from repo_builder import build_repo, generated_records
from smalldp.dagcbor import CID, encode
from smalldp.config import Settings, load_settings
from smalldp.events import decode_event
from smalldp.ingest.backfill_run import BackfillRequest, run_backfill
from smalldp.ingest.backfill import BackfillSummary
from smalldp.store import backfill_state
from smalldp.store.reader import Reader
from smalldp.store.schema import db_path
from smalldp.store.writer import Writer
from smalldp.tid import int_to_tid, tid_to_int
from test_import import answers
from test_verify import Account

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "jetstream"
CORPUS_DID = "did:plc:53iucmf5ldftgqyf2ac7hmhd"
LIKE, POST, FOLLOW = "app.bsky.feed.like", "app.bsky.feed.post", "app.bsky.graph.follow"


def did_of(n: int) -> str:
    return f"did:plc:{n:024d}"


def settings_for(data: Path, net: FakeNetwork, **extra: Any) -> Settings:
    values = {"data_dir": str(data), "plc_url": f"{net.base}/plc", "backfill_timeout_s": "2",
              "backfill_retries": "1", "log_level": "warning"}
    values.update({k: str(v) for k, v in extra.items()})
    return load_settings(values, env={})


def backfill(data: Path, net: FakeNetwork, writer: Writer | None = None, **request: Any) -> BackfillSummary:
    settings = settings_for(data, net, **request.pop("settings", {}))
    req = BackfillRequest(allow_local=True, handle_url=f"{net.base}/handles/{{handle}}/.well-known/atproto-did",
                          **request)
    return asyncio.run(run_backfill(settings, req, writer or Writer(db_path(data))))


def status(data: Path) -> dict[str, tuple[str, str | None]]:
    conn = sqlite3.connect(db_path(data))
    try:
        return {r.did: (r.state, r.reason) for r in backfill_state.rows(conn)}
    finally:
        conn.close()


def record_cids(data: Path, did: str) -> dict[str, str | None]:
    """path -> CID of every live record of ``did`` (bodies kept: posts, profiles...; others None)."""
    conn = sqlite3.connect(db_path(data))
    try:
        rows = conn.execute(
            "SELECT f.sk, c.nsid, b.cid, f.links IS NULL FROM fwd f JOIN actor a ON a.aid = f.aid "
            "JOIN coll c ON c.cid = f.coll LEFT JOIN body b ON b.sk = f.sk AND b.aid = f.aid AND b.coll = f.coll "
            "WHERE a.did = ?", (did,)).fetchall()
        aliases = {(sk): rkey for rkey, sk in conn.execute(
            "SELECT rkey, sk FROM alias JOIN actor USING(aid) WHERE did=?", (did,))}
    finally:
        conn.close()
    return {f"{nsid}/{aliases.get(sk) or int_to_tid(sk)}": cid for sk, nsid, cid, tomb in rows if not tomb}


# --- the fixture CAR -----------------------------------------------------------------------------


@pytest.mark.skipif(not (FIXTURES / "corpus_repo.car").exists(), reason="../shared fixtures absent")
def test_the_fixture_repo_lands_whole_with_its_cids(tmp_path: Path) -> None:
    expected = dict(line.split("\t") for line in
                    (FIXTURES / "corpus_car_expected_records.tsv").read_text().splitlines() if line)
    with FakeNetwork(cars={CORPUS_DID: (FIXTURES / "corpus_repo.car").read_bytes()}) as net:
        summary = backfill(tmp_path, net, names=[CORPUS_DID])
    assert (summary.done, summary.failed, summary.records) == (1, 0, len(expected))
    got = record_cids(tmp_path, CORPUS_DID)
    assert set(got) == set(expected)
    reader = Reader(db_path(tmp_path))
    try:
        for path, cid in expected.items():
            record = reader.record(f"at://{CORPUS_DID}/{path}")
            if got[path] is not None:  # a collection whose bodies are kept
                assert record is not None and record["cid"] == cid, path
    finally:
        reader.close()
    commit = dict(line.split(": ", 1) for line in
                  (FIXTURES / "corpus_car_expected_commit.txt").read_text().splitlines() if ": " in line)
    assert status(tmp_path) == {CORPUS_DID: ("done", None)}
    conn = sqlite3.connect(db_path(tmp_path))
    assert conn.execute("SELECT rev FROM backfill").fetchone()[0] == commit["Revision"]
    conn.close()


def test_verify_commits_applies_only_repos_signed_with_the_did_documents_key(tmp_path: Path) -> None:
    """With verify_commits, a repo lands only when its commit is signed with its DID
    document's #atproto key (secp256k1 or P-256); without it, every readable repo lands."""
    good_k1, good_p256, forged, unsigned, keyless = (did_of(300 + i) for i in range(5))
    accounts = {good_k1: Account(ec.SECP256K1(), good_k1), good_p256: Account(ec.SECP256R1(), good_p256),
                forged: Account(ec.SECP256K1(), forged), unsigned: Account(ec.SECP256R1(), unsigned)}
    other = Account(ec.SECP256K1(), forged)  # signs the forged repo: not the key its document names
    rev = int_to_tid(tid_to_int("3migo7fijwi2k") or 0)
    cars = {}
    for n, did in enumerate((good_k1, good_p256, forged, unsigned, keyless)):
        records = generated_records(30, seed=70 + n)
        unsigned_commit = {"did": did, "version": 3, "data": CID(build_repo(records, did=did, rev=rev).data_cid),
                           "rev": rev, "prev": None}
        signer = other if did == forged else accounts.get(did)
        sig = signer.sign(encode(unsigned_commit)) if signer is not None and did != unsigned else bytes(64)
        cars[did] = build_repo(records, did=did, rev=rev, sig=sig).car()
    keys = {did: account.multibase for did, account in accounts.items()}
    with FakeNetwork(cars=cars, keys=keys) as net:
        summary = backfill(tmp_path / "on", net, names=sorted(cars), settings={"verify_commits": "true"})
        assert (summary.done, summary.failed) == (2, 3), summary
        summary = backfill(tmp_path / "off", net, names=sorted(cars))
        assert (summary.done, summary.failed) == (5, 0), summary
    on = status(tmp_path / "on")
    assert on[good_k1] == ("done", None) and on[good_p256] == ("done", None)
    for did in (forged, unsigned):
        assert on[did][0] == "failed" and "does not verify" in str(on[did][1]) and "bad_signature" in str(on[did][1]), on
    assert on[keyless][0] == "failed" and "no signing key" in str(on[keyless][1]), on
    for did in (good_k1, good_p256):
        assert record_cids(tmp_path / "on", did) == record_cids(tmp_path / "off", did) != {}
    for did in (forged, unsigned, keyless):
        assert record_cids(tmp_path / "on", did) == {}  # nothing of a repo that did not verify


# --- failures, each recorded and the rest going on -----------------------------------------------


def test_429_stall_truncated_takendown_unresolvable_each_recorded_others_done(tmp_path: Path) -> None:
    repos = {did_of(i): build_repo(generated_records(50, seed=i), did=did_of(i)).car() for i in range(7)}
    behaviour = {did_of(1): RATE_LIMITED_ONCE, did_of(2): STALL, did_of(3): TRUNCATED,
                 did_of(4): TAKENDOWN, did_of(5): ERROR_500_ONCE}
    with FakeNetwork(cars=repos, behaviour=behaviour, unlisted_docs={did_of(6)}) as net:
        started = time.monotonic()
        summary = backfill(tmp_path, net, names=sorted(repos) + ["nobody.test"])
        seconds = time.monotonic() - started
        assert net.requests[did_of(1)] == 2 and net.requests[did_of(5)] == 2
    got = status(tmp_path)
    assert {d for d, (s, _) in got.items() if s == "done"} == {did_of(0), did_of(1), did_of(5)}
    assert "ReadTimeout" in got[did_of(2)][1] or "Timeout" in got[did_of(2)][1]
    assert got[did_of(3)][1].startswith("TruncatedCar")
    assert "RepoTakendown" in got[did_of(4)][1]
    assert got[did_of(6)][1].startswith("DID does not resolve")
    assert got["nobody.test"][0] == "failed" and "HTTP 404" in got["nobody.test"][1]
    assert (summary.done, summary.failed) == (3, 5)
    assert seconds >= 1.0  # the 429's Retry-After: 1 was honoured
    for i in (0, 1, 5):
        assert len(record_cids(tmp_path, did_of(i))) == 50
    assert record_cids(tmp_path, did_of(3)) == {}  # nothing of a truncated CAR applied


def test_a_car_over_the_size_cap_is_skipped_and_reported(tmp_path: Path) -> None:
    big = build_repo(generated_records(9000, seed=1), did=did_of(1)).car()
    assert len(big) > 1 << 20
    small = build_repo(generated_records(10, seed=2), did=did_of(2)).car()
    with FakeNetwork(cars={did_of(1): big, did_of(2): small}) as net:
        backfill(tmp_path, net, names=[did_of(1), did_of(2)], settings={"backfill_max_car_mb": 1})
    got = status(tmp_path)
    assert got[did_of(1)][0] == "failed" and "cap" in got[did_of(1)][1]
    assert got[did_of(2)] == ("done", None)


def test_handles_resolve_and_must_be_claimed_back(tmp_path: Path) -> None:
    cars = {did_of(i): build_repo(generated_records(5, seed=i), did=did_of(i)).car() for i in (1, 2)}
    with FakeNetwork(cars=cars, handles={"alice.test": did_of(1)}) as net:
        net_handles = dict(net.handles)
        summary = backfill(tmp_path, net, names=["alice.test"])
        assert summary.done == 1 and net_handles
        # a handle host that names a DID whose document does not claim the handle
        net.handles["mallory.test"] = did_of(2)
        doc = net.doc
        net.doc = lambda did: {**doc(did), "alsoKnownAs": []}  # type: ignore[method-assign]
        backfill(tmp_path, net, names=["mallory.test"])
    got = status(tmp_path)
    assert got[did_of(1)] == ("done", None)
    assert got["mallory.test"][0] == "failed" and "does not claim" in got["mallory.test"][1]


# --- exactly-once with live ingest, against a model ------------------------------------------------

SUBJECT = "at://did:plc:r2zybk6op3ymzpz6jhqpkoy5/app.bsky.feed.post/"


def like(n: int) -> dict[str, Any]:
    return {"$type": LIKE, "createdAt": "2026-07-04T12:34:56.789Z",
            "subject": {"cid": "bafyreigr42szav77jmphd52ku6fqxq3vxqzcqmix53hqiklw33b4otwmdy",
                        "uri": SUBJECT + int_to_tid((1_751_000_000_000_000 << 10) + n)}}


def post(text: str) -> dict[str, Any]:
    return {"$type": POST, "createdAt": "2026-07-04T12:34:56.789Z", "text": text}


def rkey(n: int) -> str:
    return int_to_tid((1_751_600_000_000_000 << 10) + (n << 20))


class Model:
    """The rules, obviously: a put or delete applies over an older stored rev, not at or
    below the account's ignored rev; a backfill at R puts the CAR's records over older revs,
    then every record still below R goes, and commits up to R are ignored after."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[int, dict[str, Any] | None]] = {}
        self.ignored = 0

    def live(self, rev: int, path: str, value: dict[str, Any] | None) -> None:
        stored = self.records.get(path)
        if rev > self.ignored and (stored is None or stored[0] < rev):
            self.records[path] = (rev, value)

    def backfill(self, rev: int, car: dict[str, dict[str, Any]]) -> None:
        for path, value in car.items():
            stored = self.records.get(path)
            if stored is None or stored[0] < rev:
                self.records[path] = (rev, value)
        self.records = {p: v for p, v in self.records.items() if v[0] >= rev}
        self.ignored = max(self.ignored, rev)

    def live_records(self) -> dict[str, dict[str, Any]]:
        return {p: v for p, (_, v) in self.records.items() if v is not None}


def live_event(did: str, rev: int, path: str, value: dict[str, Any] | None, time_us: int) -> str:
    collection, key = path.split("/")
    commit: dict[str, Any] = {"rev": int_to_tid(rev), "operation": "delete" if value is None else "create",
                              "collection": collection, "rkey": key}
    if value is not None:
        commit["record"] = value
    return json.dumps({"did": did, "time_us": time_us, "kind": "commit", "commit": commit})


def check_against(data: Path, did: str, model: Model) -> None:
    expected = model.live_records()
    assert set(record_cids(data, did)) == set(expected)
    reader = Reader(db_path(data))
    try:
        for path, value in expected.items():
            if path.startswith(POST):
                assert reader.record(f"at://{did}/{path}")["value"]["text"] == value["text"], path
        subjects: dict[str, int] = {}
        for value in model.records.values():
            if value[1] is not None and value[1]["$type"] == LIKE:
                subjects.setdefault(value[1]["subject"]["uri"], 0)
        for value in expected.values():
            if value["$type"] == LIKE:
                subjects[value["subject"]["uri"]] += 1
        for uri, count in subjects.items():
            assert reader.count(uri, LIKE, ".subject.uri") == count, uri
    finally:
        reader.close()


def test_backfill_and_live_agree_older_replaced_newer_kept_late_older_ignored(tmp_path: Path) -> None:
    did = did_of(100)
    R = tid_to_int("3migo7fijwi2k")
    assert R is not None
    car = {f"{LIKE}/{rkey(i)}": like(i) for i in range(20)}
    car |= {f"{POST}/{rkey(100 + i)}": post(f"car post {i}") for i in range(5)}
    model = Model()
    live_before = [
        (R - 50, f"{LIKE}/{rkey(500)}", like(500)),          # older, absent from the CAR: goes
        (R - 40, f"{LIKE}/{rkey(3)}", like(3)),              # older, same record as the CAR's: stays
        (R - 30, f"{POST}/{rkey(101)}", post("old text")),   # older content: the CAR's wins
        (R - 20, f"{LIKE}/{rkey(4)}", None),                 # older delete: the CAR has it again
        (R - 10, f"{POST}/{rkey(501)}", post("gone")),       # older, absent: goes
        (R + 10, f"{LIKE}/{rkey(600)}", like(600)),          # newer, absent from the CAR: stays
        (R + 20, f"{POST}/{rkey(102)}", post("edited later")),  # newer update: stays
        (R + 30, f"{LIKE}/{rkey(5)}", None),                 # newer delete: stays deleted
    ]
    writer = Writer(db_path(tmp_path), purge_rows=3)  # a sweep of a few rows a batch: under way for a while
    for n, (rev, path, value) in enumerate(live_before):
        writer.apply([decode_event(live_event(did, rev, path, value, 1_000 + n))], cursor=1_000 + n)
        model.live(rev, path, value)
    writer.close()
    with FakeNetwork(cars={did: build_repo(car, did=did, rev=int_to_tid(R)).car()}) as net:
        summary = backfill(tmp_path, net, names=[did])
        assert summary.done == 1
        model.backfill(R, car)
        writer = Writer(db_path(tmp_path), purge_rows=3)
        assert writer.purges.reconciles == set(writer.purges.queue) and len(writer.purges) == 1
        # the reconcile does not hide the account: its CAR records show at once
        reader = Reader(db_path(tmp_path))
        assert reader.record(f"at://{did}/{POST}/{rkey(100)}") is not None
        reader.close()
        writer.finish_purges()
        assert len(writer.purges) == 0
        writer.close()
        check_against(tmp_path, did, model)
        # late live commits: below R ignored, above R applied
        late = [(R - 5, f"{LIKE}/{rkey(700)}", like(700)), (R - 4, f"{LIKE}/{rkey(6)}", None),
                (R, f"{LIKE}/{rkey(7)}", None), (R + 40, f"{LIKE}/{rkey(701)}", like(701))]
        writer = Writer(db_path(tmp_path))
        for n, (rev, path, value) in enumerate(late):
            writer.apply([decode_event(live_event(did, rev, path, value, 2_000 + n))], cursor=2_000 + n)
            model.live(rev, path, value)
        writer.close()
        check_against(tmp_path, did, model)
        # a backfill again (--refetch) changes no answer
        before = record_cids(tmp_path, did)
        backfill(tmp_path, net, names=[did], refetch=True)
        finish(tmp_path)
        assert record_cids(tmp_path, did) == before
        check_against(tmp_path, did, model)


def test_the_sweep_removes_stale_rows_batch_by_batch_too(tmp_path: Path) -> None:
    """No finish_purges: enough batches of other ingest take the sweep round."""
    did, other = did_of(1), did_of(2)
    R = tid_to_int("3migo7fijwi2k")
    assert R is not None
    writer = Writer(db_path(tmp_path), purge_rows=2)
    stale = [f"{LIKE}/{rkey(900 + i)}" for i in range(6)]
    for n, path in enumerate(stale):
        writer.apply([decode_event(live_event(did, R - 100 + n, path, like(900 + n), 10 + n))], cursor=10 + n)
    writer.close()
    car = {f"{LIKE}/{rkey(i)}": like(i) for i in range(4)}
    with FakeNetwork(cars={did: build_repo(car, did=did, rev=int_to_tid(R)).car()}) as net:
        backfill(tmp_path, net, names=[did])
    assert set(record_cids(tmp_path, did)) == set(car) | set(stale)  # approximate until the sweep passes
    writer = Writer(db_path(tmp_path), purge_rows=2)
    for n in range(20):
        if not writer.purges:
            break
        writer.apply([decode_event(live_event(other, R + n, f"{LIKE}/{rkey(n)}", like(n), 100 + n))],
                     cursor=100 + n)
    assert not writer.purges
    writer.close()
    assert set(record_cids(tmp_path, did)) == set(car)


def finish(data: Path) -> None:
    writer = Writer(db_path(data))
    writer.finish_purges()
    writer.close()


def test_an_account_never_seen_queues_no_reconcile(tmp_path: Path) -> None:
    cars = {did_of(i): build_repo(generated_records(30, seed=i), did=did_of(i)).car() for i in range(3)}
    with FakeNetwork(cars=cars) as net:
        backfill(tmp_path, net, names=sorted(cars))
        conn = sqlite3.connect(db_path(tmp_path))
        assert conn.execute("SELECT count(*) FROM purge").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM backfill WHERE stale=0 AND state='done'").fetchone()[0] == 3
        conn.close()
        # a run again skips what is done: nothing fetched
        requests = dict(net.requests)
        summary = backfill(tmp_path, net, names=sorted(cars))
        assert summary.skipped == 3 and summary.done == 0 and net.requests == requests


# --- follows, the command, a kill mid-run ------------------------------------------------------------


def follows_network(n: int, records: int, seed: int = 0) -> tuple[str, dict[str, bytes]]:
    """A root account following ``n`` accounts (and one that does not exist), each with a
    generated repo of ``records`` records."""
    root = did_of(0)
    follows = {f"{FOLLOW}/{rkey(i)}": {"$type": FOLLOW, "createdAt": "2026-07-04T12:34:56.789Z",
                                        "subject": did_of(i)} for i in range(1, n + 2)}
    cars = {root: build_repo(follows | {f"{POST}/{rkey(0)}": post("root")}, did=root).car()}
    for i in range(1, n + 1):
        cars[did_of(i)] = build_repo(generated_records(records, seed=seed + i), did=did_of(i)).car()
    return root, cars


def test_follows_of_backfills_the_account_and_every_account_it_follows(tmp_path: Path) -> None:
    root, cars = follows_network(12, 40)
    with FakeNetwork(cars=cars) as net:
        summary = backfill(tmp_path, net, follows_of=root)
    got = status(tmp_path)
    assert {d for d, (s, _) in got.items() if s == "done"} == set(cars)
    assert got[did_of(13)][0] == "failed"  # followed, but the PLC directory does not know it
    assert summary.done == 13 and summary.failed == 1
    assert summary.records == 12 * 40 + 14
    for i in range(1, 13):
        assert len(record_cids(tmp_path, did_of(i))) == 40


def test_all_from_relay_pages_through_list_repos(tmp_path: Path) -> None:
    cars = {did_of(i): build_repo(generated_records(5, seed=i), did=did_of(i)).car() for i in range(8)}
    with FakeNetwork(cars=cars, page_size=3) as net:
        summary = backfill(tmp_path, net, relay=f"{net.base}/relay")
    assert summary.done == 8 and {s for s, _ in status(tmp_path).values()} == {"done"}


def _cmd(data: Path, net: FakeNetwork, *args: str) -> list[str]:
    return [sys.executable, "-m", "smalldp.cli", "backfill", "--data-dir", str(data), "--plc-url",
            f"{net.base}/plc", "--allow-local", "--backfill-timeout-s", "5", *args]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMALLDP_") and k != "STATE_DIRECTORY"}
    env["SMALLDP_LOG_LEVEL"] = "warning"
    return env


def _done_count(data: Path) -> int:
    """How many repos the store at ``data`` has marked done (0 before its tables exist)."""
    if not db_path(data).exists():
        return 0
    conn = sqlite3.connect(db_path(data), timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM backfill WHERE state='done'").fetchone()[0])
    except sqlite3.OperationalError:  # the tables not made yet
        return 0
    finally:
        conn.close()  # else it holds the store, and the next run refuses it as in use


def test_sigkill_mid_run_then_again_equals_a_clean_run(tmp_path: Path) -> None:
    root, cars = follows_network(16, 300, seed=50)
    with FakeNetwork(cars=cars) as net:
        clean = tmp_path / "clean"
        done = subprocess.run(_cmd(clean, net, "--json", "--follows-of", root), env=_env(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done.stderr  # did_of(17) is followed and does not resolve
        assert json.loads(done.stdout)["done"] == 17
        killed = tmp_path / "killed"
        for attempt in range(3):  # killed after a few more repos are done, at a different point each time
            before = _done_count(killed)
            net.hold_after = sum(net.requests.values()) + 3  # the run cannot end while a getRepo is held
            proc = subprocess.Popen(_cmd(killed, net, "--follows-of", root, "--backfill-concurrency", "2"),
                                    env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                if net.held and _done_count(killed) > before:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "it ended before it was killed"
            assert _done_count(killed) > before, "no repo was done before the kill"
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        states = {s for s, _ in status(killed).values()}
        assert "queued" in states or "running" in states  # it was killed mid-run
        net.hold_after = None
        again = subprocess.run(_cmd(killed, net, "--json", "--follows-of", root), env=_env(),
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 1, again.stderr
        assert status(killed) == status(clean), again.stdout + again.stderr
    keys: set[tuple[str, str, str]] = set()
    for i in range(1, 17):
        for path, value in generated_records(300, seed=50 + i).items():
            if isinstance(value.get("subject"), dict):
                keys.add((value["subject"]["uri"], path.split("/")[0], ".subject.uri"))
            elif FOLLOW in path:
                keys.add((value["subject"], FOLLOW, ".subject"))
    targets = {did_of(i) for i in range(18)}
    uris = [f"at://{d}/{p}" for d in (root, did_of(1), did_of(2)) for p in record_cids(clean, d) if POST in p]
    assert answers(killed, keys, targets, uris) == answers(clean, keys, targets, uris)
    for i in range(17):
        assert record_cids(killed, did_of(i)) == record_cids(clean, did_of(i))


def test_status_lists_done_and_failed_with_reasons(tmp_path: Path) -> None:
    cars = {did_of(1): build_repo(generated_records(5, seed=1), did=did_of(1)).car()}
    with FakeNetwork(cars=cars, behaviour={did_of(2): TAKENDOWN}) as net:
        run = subprocess.run(_cmd(tmp_path, net, did_of(1), did_of(2)), env=_env(), capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 1 and "backfilled 1 repos (1 failed" in run.stdout, run.stdout + run.stderr
        shown = subprocess.run(_cmd(tmp_path, net, "--status"), env=_env(), capture_output=True, text=True,
                               timeout=60)
        as_json = subprocess.run(_cmd(tmp_path, net, "--status", "--json"), env=_env(), capture_output=True,
                                 text=True, timeout=60)
    assert "1 done" in shown.stdout and "1 failed" in shown.stdout
    assert f"failed  {did_of(2)}: HTTP 400 RepoTakendown" in shown.stdout
    assert f"done    {did_of(1)} at rev 3migo7fijwi2k: 5 records" in shown.stdout
    report = json.loads(as_json.stdout)
    assert report["counts"]["done"] == 1 and report["repos"][0]["state"] == "failed"


def test_refuses_while_the_store_is_in_use(tmp_path: Path) -> None:
    writer = Writer(db_path(tmp_path))  # stands for smalldp serve holding the store
    try:
        with FakeNetwork() as net:
            run = subprocess.run(_cmd(tmp_path, net, did_of(1)), env=_env(), capture_output=True, text=True,
                                 timeout=60)
    finally:
        writer.close()
    # the store's holder is not a serve taking backfills: refused, saying why and what to do
    assert run.returncode == 1 and "the store is in use" in run.stderr, run.stderr
    assert "no smalldp serve answers on" in run.stderr and "admin socket" in run.stderr
