"""Dataset import and synthetic generation: throughput and peak memory, against a pandas floor.

    .venv/bin/python benchmarks/datasets.py [--ml100k PATH] [--synth-events 100000 1000000]

1. MovieLens 100k: `recsys data import-movielens` (parse, validate, reject bad lines, build events,
   durable partitioned event log, Parquet catalogs) against the peer `pandas.read_csv` + `to_json`
   of the same ratings as JSON lines (no validation, no partitioning, no fsync): the floor.
2. `recsys data synth` at several sizes, each in a fresh subprocess, reporting events/s and peak RSS
   (memory should stay flat as events grow), against the peer: i.i.d. Zipf events drawn with numpy
   and written with pandas `to_json` in one go (no structure, no sessions, whole table in memory).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RECSYS = Path(sys.executable).parent / "recsys"
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"


def run_measured(command: list[str]) -> tuple[float, float]:
    """Run `command`; returns (wall seconds, peak RSS MiB of that process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_") and k != "REDIS_URL"}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    errors = process.stderr.read() if process.stderr else ""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{errors}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def pandas_ml100k_floor(path: Path, out: Path) -> float:
    started = time.perf_counter()
    frame = pd.read_csv(path / "u.data", sep="\t", names=["user_id", "item_id", "value", "ts"])
    frame["ts"] = pd.to_datetime(frame["ts"], unit="s", utc=True)
    frame["type"] = "rating"
    frame.to_json(out, orient="records", lines=True, date_format="iso")
    return time.perf_counter() - started


def pandas_synth_floor(events: int, out: Path, items: int = 20_000, users: int = 5_000) -> float:
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, items + 1)
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(users, size=events),
            "item_id": rng.choice(items, size=events, p=popularity / popularity.sum()),
            "type": rng.choice(["impression", "click"], size=events, p=[0.9, 0.1]),
            "ts": pd.to_datetime(1_704_067_200 + np.sort(rng.integers(0, 30 * 86_400, size=events)), unit="s", utc=True),
        }
    )
    frame.to_json(out, orient="records", lines=True, date_format="iso")
    return time.perf_counter() - started


def bench_movielens(path: Path, scratch: Path) -> None:
    ours, rss = run_measured([str(RECSYS), "data", "import-movielens", str(path), "--state-dir", str(scratch / "ml")])
    floor = pandas_ml100k_floor(path, scratch / "ml100k.jsonl")
    print("\n## MovieLens 100k import (100,000 ratings)")
    print("| | seconds | events/s | peak RSS MiB |\n| --- | ---: | ---: | ---: |")
    print(f"| recsys data import-movielens (process, incl. startup) | {ours:.2f} | {100_000 / ours:,.0f} | {rss:.0f} |")
    print(f"| pandas read_csv + to_json (in-process floor) | {floor:.2f} | {100_000 / floor:,.0f} | - |")
    print(f"ours / floor time ratio: {ours / floor:.1f}x")


def bench_synth(sizes: list[int], scratch: Path) -> None:
    print("\n## Synthetic generation (5,000 users, 20,000 items)")
    print("| events | recsys synth s | events/s | peak RSS MiB | pandas i.i.d. floor s | floor RSS growth MiB | time ratio |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for events in sizes:
        command = [str(RECSYS), "data", "synth", "--events", str(events), "--users", "5000", "--items", "20000",
                   "--state-dir", str(scratch / f"synth-{events}")]  # fmt: skip
        ours, rss = run_measured(command)
        before = _rss_mib()
        floor = pandas_synth_floor(events, scratch / f"floor-{events}.jsonl")
        growth = _rss_mib() - before
        print(f"| {events:,} | {ours:.1f} | {events / ours:,.0f} | {rss:.0f} | {floor:.1f} | {growth:.0f} | {ours / floor:.1f}x |")


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ml100k", type=Path, default=ML100K)
    parser.add_argument("--synth-events", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-datasets-") as scratch:
        if (args.ml100k / "u.data").is_file():
            bench_movielens(args.ml100k, Path(scratch))
        else:
            print(f"MovieLens 100k not found at {args.ml100k}: skipping the import benchmark")
        bench_synth(args.synth_events, Path(scratch))


if __name__ == "__main__":
    main()
