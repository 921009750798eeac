"""The explore stage's cost per request at 200 candidates, each policy against greedy in the same run.

    .venv/bin/python benchmarks/explore.py [--candidates 200] [--k 10] [--requests 2000] [--hours 1] [--cache-s 1.0]

Three measures, per policy (greedy, ε-greedy 0.1, UCB1, Thompson with 32 and 16 draws, LinUCB d = 32):

- `choose`: the policy's own work on in-memory statistics (counts planted from a seeded
  simulation: 0–2,000 impressions and a 0–10% CTR per candidate; LinUCB's (A, b) from 0–60
  seeded observations each);
- `stage, no cache`: `ExploreStage.run` with every read from a real Redis (an embedded
  redis-server, or REDIS_URL): the examined counts (one Lua call over the 200 item hashes of the
  attribution store, which hold the per-position counts, filled through
  `record_impression`/`record_credit` over the last `--hours` hour buckets), or LinUCB's
  (A⁻¹, b) (25 items per round trip, packed for the score: `LinearStats.pack`);
- `stage, cached`: the same with the per-worker statistics cache (`explore.stats_cache_s`,
  `--cache-s`): a request reads Redis only for entries older than that.

Thompson's `choose` includes its propensity estimate (the CPU a request costs); its `stage` leaves
the estimate pending, as serving does (the impression writer computes it off the request path).
The LinUCB user vector is read only for users with a history; requests here have none, so that
extra read (and the context write of a served user) is not in these figures.

Rounds interleave the policies (each round runs every policy once, in a rotated order), so load
from other processes falls on all of them alike. p50 / p99 in ms and the p99 over greedy's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_store.attribution import Impression, Outcome  # noqa: E402
from feature_store.attribution_store import RedisAttributionStore  # noqa: E402
from feature_store.linucb_store import RedisLinUcbStore  # noqa: E402
from feature_store.online_store import RedisOnlineStore  # noqa: E402
from feature_store.redis_client import ConnectionSpec  # noqa: E402
from feature_store.redis_server import EmbeddedRedis  # noqa: E402
from feature_store.settings import FeatureStoreSettings  # noqa: E402
from services.explore.epsilon_greedy import EpsilonGreedy  # noqa: E402
from services.explore.greedy import Greedy  # noqa: E402
from services.explore.linucb import LinUcb  # noqa: E402
from services.explore.policy import ItemCounts, LinearStats, Policy, Ranked  # noqa: E402
from services.explore.stage import ExploreStage  # noqa: E402
from services.explore.stats import BanditStats  # noqa: E402
from services.explore.thompson import Thompson  # noqa: E402
from services.explore.ucb import Ucb1  # noqa: E402
from benchmarks.quiet import ForeignCpu  # noqa: E402

DIM = 32
POLICIES: list[Policy] = [Greedy(), EpsilonGreedy(0.1), Ucb1(10.0), Thompson(10.0, 32), Thompson(10.0, 16), LinUcb(1.0)]


def plant(spec: ConnectionSpec, ranked: Ranked, k: int, hours: int,
          rng: np.random.Generator) -> tuple[ItemCounts, LinearStats]:
    """Attributed impressions and clicks per (candidate, position) over the last `hours` hour
    buckets, and LinUCB statistics, in Redis."""
    attribution = RedisAttributionStore(spec, dedup_ttl_s=8 * 86_400, max_future_skew_s=900)
    linucb = RedisLinUcbStore(spec, DIM)
    now = int(time.time() * 1000)
    for n, item in enumerate(track(ranked.item_ids, description="planting counts")):
        ctr = rng.uniform(0, 0.1)
        for m in range(int(rng.integers(0, 40))):  # each record stands for a batch of 50 (cheap to plant)
            at = now - 1000 - int(rng.integers(0, hours)) * 3_600_000
            impression = Impression(f"{item}-{m}", "u", item, at, f"r{n}-{m}", m % k, "bench", None, None)
            attribution.record_impression(impression, now)
            if rng.random() < ctr * 5:
                attribution.record_credit(impression, Outcome(f"c{item}-{m}", "u", item, "click", at + 500, None), now)
        for m in range(int(rng.integers(0, 60)) // 20):
            linucb.update(f"{item}-{m}", item, rng.normal(size=DIM) / np.sqrt(DIM), float(rng.random() < ctr))
    examined = rng.uniform(0, 2000, len(ranked))
    counts = ItemCounts(examined, np.floor(examined * rng.uniform(0, 0.1, len(ranked))))
    x = rng.normal(size=(len(ranked), 60, DIM)) / np.sqrt(DIM)
    A = np.eye(DIM) + np.einsum("nti,ntj->nij", x, x)
    b = np.einsum("nti,nt->ni", x, (rng.random((len(ranked), 60)) < 0.05).astype(float))
    linear = LinearStats.from_inverse(np.linalg.inv(A), b, rng.normal(size=DIM) / np.sqrt(DIM))
    attribution.close()
    linucb.close()
    return counts, linear


def timed(calls: dict[str, Callable[[], object]], requests: int) -> dict[str, list[float]]:
    """ms per call of each entry, over `requests` interleaved rounds."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(20):  # warm-up: caches, script loads, lazy imports
        for call in calls.values():
            call()
    for round_ in track(range(requests), description="timing"):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            start = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def report(console: Console, title: str, times: dict[str, list[float]]) -> None:
    table = Table(title=title)
    for column in ("policy", "p50 ms", "p99 ms", "max ms", "p99 / greedy p99"):
        table.add_column(column)
    base = float(np.percentile(times["greedy"], 99))
    for name, values in times.items():
        p99 = float(np.percentile(values, 99))
        table.add_row(name, f"{statistics.median(values):.3f}", f"{p99:.3f}", f"{max(values):.3f}", f"{p99 / base:.1f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--hours", type=int, default=1, help="hour buckets the planted counts spread over (≤ 168)")
    parser.add_argument("--cache-s", type=float, default=1.0, help="the cached stage's explore.stats_cache_s")
    args = parser.parse_args()
    console = Console()
    rng = np.random.default_rng(0)
    ranked = Ranked(tuple(f"item:{n}" for n in range(args.candidates)), np.linspace(1.0, 0.0, args.candidates))
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        try:
            spec = ConnectionSpec(server.url)
            counts, linear = plant(spec, ranked, args.k, args.hours, rng)
            features = RedisOnlineStore(spec, FeatureStoreSettings())
            uncached, cached = (BanditStats(features, features.attribution(), RedisLinUcbStore(spec, DIM), cache_s=ttl)
                                for ttl in (0.0, args.cache_s))
            named = {_short(p): p for p in POLICIES}
            choose = {name: (lambda p=p, s=_in_memory(p, counts, linear): p.choose(ranked, args.k, np.random.default_rng(), s))
                      for name, p in named.items()}

            def stages(stats: BanditStats) -> dict[str, Callable[[], object]]:
                return {name: (lambda s=ExploreStage(p, stats if p.needs else None): s.run(ranked, args.k))
                        for name, p in named.items()}

            with ForeignCpu() as other:
                report(console, f"choose: {args.candidates} candidates, k = {args.k}", timed(choose, args.requests))
                report(console, f"stage, no cache: reads from Redis + choose ({args.hours} h of buckets)",
                       timed(stages(uncached), args.requests))
                report(console, f"stage, cached {args.cache_s:g} s: reads from Redis when expired + choose",
                       timed(stages(cached), args.requests))
            uncached.close()
            cached.close()
            features.close()
        finally:
            server.stop()
    console.print(f"other processes used {other.core_seconds:.0f} core-seconds meanwhile "
                  f"(peak {other.peak:.1f} cores: {other.busiest})")


def _short(policy: Policy) -> str:
    return f"thompson {policy.draws}" if isinstance(policy, Thompson) else policy.name


def _in_memory(policy: Policy, counts: ItemCounts, linear: LinearStats) -> ItemCounts | LinearStats | None:
    return counts if policy.needs is ItemCounts else linear if policy.needs else None


if __name__ == "__main__":
    main()
