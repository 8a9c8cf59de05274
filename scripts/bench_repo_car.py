"""Repo CAR reading benchmark: ``smalldp.repo_car`` on the real export and on a generated repo.

    .venv/bin/python scripts/bench_repo_car.py [--records N] [--reps N] [--car PATH] [--dir DIR]

Reads ``corpus_repo.car`` (../shared/fixtures/jetstream by default; skipped when absent) and a
repo of ``--records`` generated records (tests/repo_builder.py, written once as a file in
``--dir`` or a temporary directory) from their files, ``--reps`` times each, every record
through ``open_repo(path).records()`` (index, MST walk, records as Jetstream JSON), and prints one
JSON object: per input the CAR's size, records, the median, min and max records/s, and for the
generated repo the peak memory of one read in a fresh process (its VmHWM after importing
smalldp.repo_car and after the read) and tracemalloc's peak of a read (Python allocations).
``dagcbor_build`` says whether smalldp.dagcbor was the plain ``.py`` or the mypyc build.  A
measurement, not a test: figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "jetstream"
sys.path.insert(0, str(ROOT / "tests"))  # the test repo builder makes the generated repo

from smalldp import dagcbor  # noqa: E402
from smalldp.repo_car import open_repo  # noqa: E402

_CHILD = """
import sys
from smalldp.repo_car import open_repo

def hwm():  # the process's peak RSS (KiB); unlike ru_maxrss, not inherited across exec
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

before = hwm()
with open_repo(sys.argv[1]) as repo:
    n = sum(1 for _ in repo.records())
print(before, hwm())
"""


def read_once(path: Path) -> tuple[int, float]:
    """(records, seconds) of one whole read of the CAR at ``path``."""
    started = time.perf_counter()
    with open_repo(path) as repo:
        n = 0
        for record in repo.records():
            n += 1
            assert record.json is not None, record.problem
    return n, time.perf_counter() - started


def measure(path: Path, reps: int) -> dict[str, Any]:
    rates = []
    n = 0
    for _ in range(reps):
        n, seconds = read_once(path)
        rates.append(n / seconds)
    return {"car_bytes": path.stat().st_size, "records": n,
            "records_per_s": {"median": round(statistics.median(rates)), "min": round(min(rates)),
                              "max": round(max(rates))}}


def peak_memory(path: Path) -> dict[str, Any]:
    """Peak memory of reading ``path``: the peak RSS of a fresh process (KiB), after importing
    smalldp.repo_car and after the read, and tracemalloc's peak (Python allocations) in this one."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=True)
    before, after = (int(x) for x in out.stdout.split()[-2:])
    tracemalloc.start()
    read_once(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"peak_rss_kib": after, "peak_rss_over_import_kib": after - before, "tracemalloc_peak_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--car", type=Path, default=FIXTURES / "corpus_repo.car")
    parser.add_argument("--dir", type=Path, default=None, help="where the generated CAR goes (default: a temp dir)")
    args = parser.parse_args()
    from repo_builder import build_repo, generated_records

    out: dict[str, Any] = {"dagcbor_build": "compiled" if not dagcbor.__file__.endswith(".py") else "interpreted",
                           "python": sys.version.split()[0]}
    if args.car.is_file():
        out["corpus"] = measure(args.car, max(args.reps, 1) * 10)  # 23 records: more reps
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "generated.car"
        started = time.perf_counter()
        path.write_bytes(build_repo(generated_records(args.records)).car())
        out["generated"] = {"build_s": round(time.perf_counter() - started, 2), **measure(path, args.reps),
                            **peak_memory(path)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
