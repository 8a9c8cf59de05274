"""Backfill figures (README "Backfill"): the fixture CAR, one generated 100k-record repo, and
`--follows-of` an account following N generated repos of M records, all served from 127.0.0.1
by tests/fake_pds.py (tests/repo_builder.py builds the repos).

    cd tests && PYTHONPATH=$(bash ../scripts/build_compiled):. ../.venv/bin/python ../scripts/bench_backfill.py 1000 2000
    (arguments: repos followed, records per repo, records of the big repo; defaults 200 2000 100000)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_pds import FakeNetwork  # noqa: E402
from repo_builder import build_repo, generated_records  # noqa: E402
from test_backfill import CORPUS_DID, FIXTURES, backfill, did_of, follows_network  # noqa: E402


def main(n_repos: int = 200, per_repo: int = 2000, big_records: int = 100_000) -> None:
    """Print one line per figure."""
    out = Path(tempfile.mkdtemp(prefix="bench_backfill-"))
    try:
        if (FIXTURES / "corpus_repo.car").exists():
            with FakeNetwork(cars={CORPUS_DID: (FIXTURES / "corpus_repo.car").read_bytes()}) as net:
                s = backfill(out / "fixture", net, names=[CORPUS_DID])
            print(f"fixture: {s.records} records in {s.seconds:.3f} s ({s.records_per_s:,.0f} records/s)")
        big = build_repo(generated_records(big_records, seed=7), did=did_of(7)).car()
        with FakeNetwork(cars={did_of(7): big}) as net:
            s = backfill(out / "big", net, names=[did_of(7)])
        print(f"{big_records:,}-record repo: {len(big) / 1e6:.1f} MB CAR, {s.records:,} records in {s.seconds:.2f} s "
              f"({s.records_per_s:,.0f} records/s)")
        root, cars = follows_network(n_repos, per_repo, seed=100)
        with FakeNetwork(cars=cars) as net:
            started = time.monotonic()
            s = backfill(out / "follows", net, follows_of=root)
            seconds = time.monotonic() - started
        print(f"--follows-of over {n_repos} x {per_repo}: {s.done} done, {s.records:,} records, "
              f"{s.bytes / 1e6:.1f} MB, end to end {seconds:.1f} s ({s.records / seconds:,.0f} records/s)")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    # bench_backfill.py [REPOS [RECORDS_PER_REPO [RECORDS_OF_THE_BIG_REPO]]]
    main(*(int(a) for a in sys.argv[1:4]))
