"""The bandits' statistics read alone: `examined_counts` of 200 candidates from a real Redis, for
the code tree at `--root` (this checkout by default), so that two layouts can be compared in
alternating runs (before: the tree of a commit unpacked with `git archive`).

    .venv/bin/python benchmarks/examined_read.py [--root PATH] [--hours 1] [--reads 200]

Planted: 200 items, 40 attributed impressions each (10 positions, ~25% clicked) over the last
`--hours` hour buckets. Prints p50 / p90 / p99 ms of the read over a 7-day window, and the load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
parser.add_argument("--hours", type=int, default=1)
parser.add_argument("--reads", type=int, default=200)
args = parser.parse_args()
sys.path.insert(0, str(args.root.resolve()))

from feature_store.attribution import Impression, Outcome  # noqa: E402
from feature_store.attribution_store import CreditRecord, ImpressionRecord, RedisAttributionStore  # noqa: E402
from feature_store.redis_client import ConnectionSpec  # noqa: E402
from feature_store.redis_server import EmbeddedRedis  # noqa: E402

HOUR_MS = 3_600_000


def main() -> None:
    rng = np.random.default_rng(0)
    items = [f"item:{n}" for n in range(200)]
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        try:
            store = RedisAttributionStore(ConnectionSpec(server.url), dedup_ttl_s=8 * 86_400, max_future_skew_s=900)
            now = int(time.time() * 1000)
            records: list[ImpressionRecord | CreditRecord] = []
            for n, item in enumerate(items):
                for m in range(40):
                    at = now - 1000 - int(rng.integers(0, args.hours)) * HOUR_MS
                    shown = Impression(f"{item}-{m}", "u", item, at, f"r{n}-{m}", m % 10, "bench", None, None)
                    records.append(ImpressionRecord(shown))
                    if rng.random() < 0.25:
                        records.append(CreditRecord(shown, Outcome(f"c{item}-{m}", "u", item, "click", at + 500, None)))
            store.record_many(records, now)
            since, until = now - 7 * 24 * HOUR_MS, now + HOUR_MS
            for _ in range(20):
                store.examined_counts(items, since, until)
            times = []
            for _ in range(args.reads):
                start = time.perf_counter()
                store.examined_counts(items, since, until)
                times.append((time.perf_counter() - start) * 1000)
            store.close()
        finally:
            server.stop()
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    print(f"{args.root}: {args.hours} h of buckets: p50 {p50:.2f} ms, p90 {p90:.2f}, p99 {p99:.2f} "
          f"(load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
