"""Smoke runs of the benchmarks, so that they cannot rot unnoticed (issue 10: `scripts/bench`
crashed at its query phase once the DataPlane's derived links landed, and nobody ran it).

Each test runs a benchmark end to end as `scripts/bench` and `scripts/bench_live` do (the
virtualenv's python on scripts/bench.py or bench_live.py), at its smallest useful size, into tmp_path, and checks that it exits 0
and writes the sections a full run writes. No figure is asserted: this machine is shared
and noisy. Everything stays on 127.0.0.1 (`serve --no-ingest`; `replay` fed to `serve`);
the benchmark runs in its own session, so every process it starts is found and stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "scripts" / "bench.py"
BENCH_LIVE = ROOT / "scripts" / "bench_live.py"
# The DataPlane methods, from the lexicons (getRecord is the one method outside DATAPLANE.md).
DATAPLANE_METHODS = sorted(p.stem for p in (ROOT / "lexicons" / "dev" / "smalldp").glob("*.json"))
DATAPLANE_METHODS.remove("getRecord")
QUERY_KINDS = ["getBacklinksCount", "getBacklinks_first_page", "getBacklinks_deep_page", "getBacklinkDids",
               "links_all"]


def _session(sid: int) -> list[psutil.Process]:
    """Processes still alive in session ``sid`` (the benchmark's and its children's)."""
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except (OSError, psutil.Error):
            continue
    return out


def run_bench(args: list[str], cwd: Path, timeout_s: float, script: Path = BENCH) -> tuple[int, str, float]:
    """Run ``script`` (scripts/bench.py) ARGS in a session of its own: (exit code, output, seconds).

    On a timeout the whole session gets SIGTERM (the benchmark stops its children on
    it), then SIGKILL. Fails if any process of the session outlives the benchmark."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMALLDP_")}
    # Guards: nothing here may reach the internet, whatever a default says.
    env["SMALLDP_JETSTREAM"] = "ws://127.0.0.1:9/subscribe"
    env["SMALLDP_ZSTD_DICTIONARY_URL"] = "http://127.0.0.1:9/zstd_dictionary"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(script), *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        raise AssertionError(f"benchmark still running after {timeout_s} s:\n{out.decode(errors='replace')[-3000:]}")
    finally:
        deadline = time.monotonic() + 10
        left = _session(proc.pid)
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = _session(proc.pid)
        for child in left:
            child.kill()
    assert not left, f"the benchmark left processes running: {[p.pid for p in left]}"
    return proc.returncode, out.decode(errors="replace"), time.monotonic() - started


def test_bench_import_and_queries(tmp_path: Path) -> None:
    """`scripts/bench --events 20000`: generate, import, serve, every Constellation query
    kind on popular and unpopular targets (no derived '@' or '<' source among them)."""
    out_json = tmp_path / "bench.json"
    rc, out, seconds = run_bench(["--events", "20000", "--rounds", "50", "--out-dir", str(tmp_path / "out"),
                                  "--json", str(out_json)], tmp_path, 300)
    assert rc == 0, out[-3000:]
    result: dict[str, Any] = json.loads(out_json.read_text())
    print(f"scripts/bench --events 20000: {seconds:.1f} s")
    assert result["summary"]["events"] == 20000 and result["summary"]["skipped"] == 0
    assert len(result["segments_events_per_s"]) == 10
    for key in ("events_per_s", "peak_rss_bytes", "db_bytes", "body_bytes", "links", "records", "runs",
                "bytes_per_link", "bytes_by_table", "server_rss_bytes"):
        assert key in result, key
    assert result["links"] > 0 and result["records"] > 0
    # the JSON says which build was measured: the one this test run imports (scripts/test
    # puts the compiled overlay on PYTHONPATH, and the benchmark inherits it)
    assert result["smalldp"]["build"] == (os.environ.get("SMALLDP_TEST_BUILD") or "interpreted")
    assert Path(result["smalldp"]["package"], "cli.py").is_file()
    assert sorted(result["queries"]) == sorted(f"{k}/{p}" for k in QUERY_KINDS for p in ("popular", "unpopular"))
    for name, figures in result["queries"].items():
        assert figures["n"] == 50 and {"p50_ms", "p99_ms"} <= set(figures), name
    for popularity in ("popular", "unpopular"):
        assert result["targets"][popularity], popularity


def test_bench_dataplane(tmp_path: Path) -> None:
    """`scripts/bench --dataplane` at its smallest size and phase lengths: the store, the
    live replay followed by serve, and every phase (timeline, follows_following, the 25
    methods mixed, capacity per method), without a request error."""
    out_json = tmp_path / "dataplane.json"
    rc, out, seconds = run_bench(
        ["--dataplane", "--events", "2000", "--ingest-rate", "500", "--warmup-s", "1", "--settle-s", "1",
         "--timeline-rate", "50", "--timeline-s", "1", "--ff-rate", "50", "--ff-s", "1",
         "--mixed-rate", "50", "--mixed-s", "2", "--capacity-s", "0.2",
         "--out-dir", str(tmp_path / "out"), "--json", str(out_json)], tmp_path, 600)
    print(f"scripts/bench --dataplane --events 2000: {seconds:.1f} s")
    assert out_json.exists(), out[-3000:]
    result: dict[str, Any] = json.loads(out_json.read_text())
    # The only problem a smoke run may have: a loaded machine made the load client late
    # (a statement about the figures, not a failure of the benchmark).
    failures = [p for p in result["problems"] if "could not keep to its schedule" not in p]
    assert failures == [], out[-3000:]
    assert rc == (1 if result["problems"] else 0), out[-3000:]
    assert result["import"]["events"] == 2000
    assert result["smalldp"]["build"] == (os.environ.get("SMALLDP_TEST_BUILD") or "interpreted")
    assert result["serve_exit"] == 0
    assert result["ingest"]["events_total"] > 0 and not result["ingest"]["tail_exhausted"]
    # the stall figures come from the service's own health (merge slices between batches)
    assert result["ingest"]["commit_gap_max_s"] is not None and result["ingest"]["commit_gap_max_s"] > 0
    assert set(result["ingest"]["merge"]) == {"slices", "seconds", "slice_max_s", "under_way"}
    assert sorted(result["phases"]) == ["capacity", "follows_following", "mixed", "timeline"]
    for name in ("timeline", "follows_following", "mixed"):
        phase = result["phases"][name]
        assert phase["errors"] == 0 and phase["requests"] > 0, (name, phase.get("error_samples"))
    assert list(result["phases"]["timeline"]["methods"]) == ["getTimeline"]
    assert list(result["phases"]["follows_following"]["methods"]) == ["getFollowsFollowing"]
    mixed = result["phases"]["mixed"]["methods"]
    assert sorted(mixed) == DATAPLANE_METHODS
    assert all(m["n"] > 0 and m["errors"] == 0 for m in mixed.values()), mixed
    capacity = result["phases"]["capacity"]["methods"]
    assert sorted(capacity) == DATAPLANE_METHODS
    assert all(c["requests_per_s"] > 0 and c.get("errors", 0) == 0 for c in capacity.values()), capacity
    assert {t["what"].split(" ")[0] for t in result["targets"]} >= {"getTimeline", "getFollowsFollowing"}


APPVIEW_ENDPOINTS = ["app.bsky.feed.getTimeline", "app.bsky.actor.getProfile", "app.bsky.feed.getAuthorFeed",
                     "app.bsky.feed.getPostThread", "app.bsky.graph.getFollowers", "app.bsky.feed.getLikes",
                     "app.bsky.notification.listNotifications"]


def test_bench_appview(tmp_path: Path) -> None:
    """`scripts/bench --appview` at its smallest: the store, serve following the replay with
    gRPC and the fake PLC, the official AppView on it, every endpoint logged in, the RPC
    quantiles from serve's health; then the reference stack on the first 1,000 events.
    Every section written, no request error on either side (needs node, the pinned
    @atproto/bsky and PostgreSQL, as the conformance tests do)."""
    out_json = tmp_path / "appview.json"
    rc, out, seconds = run_bench(
        ["--appview", "--events", "2000", "--ingest-rate", "500", "--duration-s", "3", "--warmup-s", "1",
         "--settle-s", "1", "--candidates", "4", "--rpc-poll-s", "1", "--reference-events", "1000",
         "--out-dir", str(tmp_path / "out"), "--json", str(out_json)], tmp_path, 300)
    print(f"scripts/bench --appview --events 2000: {seconds:.1f} s")
    assert out_json.exists(), out[-3000:]
    result: dict[str, Any] = json.loads(out_json.read_text())
    failures = [p for p in result["problems"] if "could not keep to its schedule" not in p]
    assert failures == [], out[-3000:]
    assert rc == (1 if result["problems"] else 0), out[-3000:]
    for section in ("settings", "machine", "generator", "import", "params", "smalldp", "reference",
                    "side_by_side", "targets"):
        assert section in result, section
    assert result["import"]["events"] == 2000
    assert result["smalldp_build"]["build"] == (os.environ.get("SMALLDP_TEST_BUILD") or "interpreted")
    ours, ref = result["smalldp"], result["reference"]
    for side in (ours, ref):
        assert side["errors"] == 0, side["streams"]
        assert list(side["endpoints"]) == APPVIEW_ENDPOINTS
        for nsid, fig in side["endpoints"].items():
            assert fig["errors"] == 0 and fig["n"] + fig["gone"] > 0, (nsid, fig)
        assert side["subjects"]["app.bsky.feed.getTimeline"]["kept"] == 1
    assert ours["serve_exit"] == 0 and ours["appview"]["bsky"] and ours["appview"]["blocked_off_loopback"] == []
    assert ours["plc_requests"]["doc"] > 0 and not ours["tail_exhausted"]
    rpcs = ours["rpcs"]
    assert {"GetTimeline", "GetActors", "GetIdentityByDid"} <= set(rpcs), rpcs
    assert all(f["calls"] > 0 and f["p50_ms"] <= f["p99_ms"] and f["per_s"] > 0 and "p99_ms_worst_ring" in f
               for f in rpcs.values()), rpcs
    ingest = ours["ingest"]
    for key in ("events_per_s", "max_behind_s", "commit_gap_max_s", "kept_up"):
        assert key in ingest, key
    assert ingest["events_total"] > 0
    assert ref["events"] == 1000 and ref["build"]["indexed"]["events"] == 1000 and ref["blocked_off_loopback"] == []
    assert "reference" in ref["note"] and ref["viewer"] == ours["viewer"]
    assert list(result["side_by_side"]) == APPVIEW_ENDPOINTS
    assert result["targets"][0]["what"].startswith("getTimeline p95")


def test_bench_live(tmp_path: Path) -> None:
    """`scripts/bench_live` (it picks its query targets as scripts/bench does): a catch-up of
    `serve` following `replay` under queries, answers compared with the imported store's,
    then a short memory run; every wire available (zstd when the shared dictionary is there,
    and the relay firehose)."""
    out_json = tmp_path / "live.json"
    rc, out, seconds = run_bench(
        ["--events", "20000", "--together", "--query-rate", "20", "--firehose", "also", "--memory-minutes", "0.1",
         "--memory-rate", "500", "--memory-grace-s", "60", "--sample-s", "1",
         "--out-dir", str(tmp_path / "out"), "--json", str(out_json)], tmp_path, 600, BENCH_LIVE)
    print(f"scripts/bench_live --events 20000 --memory-minutes 0.1: {seconds:.1f} s")
    assert rc == 0, out[-3000:]
    result: dict[str, Any] = json.loads(out_json.read_text())
    assert result["problems"] == []
    catchup = result["catchup"]
    assert "firehose" in catchup["wires"] and len(catchup["runs"]) == 1
    assert catchup["targets"]["popular"] and catchup["targets"]["unpopular"]
    for wire in catchup["wires"]:
        live = catchup["runs"][0]["live"][wire]
        assert live["problem"] is None and live["queries"]["errors"] == 0, (wire, live.get("problem"))
        checks = live["correctness"]
        assert checks and all(c["checked"] > 0 and not c["mismatches"] for c in checks.values()), (wire, checks)
        assert catchup["median"][wire]["queries"], wire
    relay = catchup["runs"][0]["live"]["firehose"]  # the relay wire: frames as well as events
    assert relay["wire"] == "firehose" and relay["frames_per_s"] > 0 and relay["mb_per_s"] > 0
    memory = result["memory"]
    assert memory["problem"] is None and memory["serve_exit"] == 0
    assert memory["samples"] and memory["rss_end_bytes"] > 0


def test_bench_backfill(tmp_path: Path) -> None:
    """scripts/bench_backfill.py at a tiny size: the fixture CAR, a small 'big' repo and
    --follows-of over 3 repos, all backfilled from servers on 127.0.0.1."""
    tests = ROOT / "tests"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(tests)) if p)}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_backfill.py"), "3", "40", "300"],
                         cwd=tests, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("300-record repo:") and "300 records" in line for line in lines), out.stdout
    assert any(line.startswith("--follows-of over 3 x 40: 4 done") for line in lines), out.stdout


def test_bench_firehose_decode() -> None:
    """scripts/bench_firehose_decode.py, smalldp's decoder only, one pass: it agrees with
    the Jetstream lines of the corpus and reports a rate."""
    if not (ROOT.parent / "shared" / "fixtures" / "jetstream" / "corpus_frames.bin.zst").is_file():
        pytest.skip("shared fixtures absent")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_firehose_decode.py"), "--reps", "1",
                          "--passes", "1", "--only", "smalldp"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["frames"] == 150
    smalldp = result["candidates"]["smalldp"]
    # 152 operations: the corpus's v1 events (SOURCE.md), every one equal to its line
    assert smalldp["installed"] and smalldp["all_equal"] and smalldp["equal_to_oracle"] == 152, smalldp
    assert smalldp["frames_per_s_median"] > 0
