"""Wall time of the whole Spark batch chain (compact → sequences → item_graph → batch_features →
ranking_samples) on synthetic event logs of growing size, and on MovieLens 100k.

    .venv/bin/python benchmarks/batch_jobs.py --events 100000 1000000 5000000 [--ml100k PATH]

Synthetic logs are written straight in the event-log layout (JSON lines per dt/hr partition):
users and items Zipf-distributed, sessions of clicks/ratings/impressions. Prints per-job seconds,
events/s of the chain and of each job, and the growth ratio time(n)/time(n_prev) against the
size ratio (the peer: linear scaling).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from feature_store.catalog import Catalog
from feature_store.schemas import Item
from feature_store.settings import Settings
from pipelines.spark.runner import CHAIN, run_jobs
from pipelines.spark.session import build_session

START = datetime(2024, 1, 1, tzinfo=timezone.utc)


def write_synthetic_log(root: Path, events: int, seed: int = 7) -> None:
    """`events` synthetic events over 30 days, ~1 event per 20 users per item popularity rank."""
    rng = random.Random(seed)
    users, items = max(events // 50, 10), max(events // 200, 10)
    span = 30 * 86400.0
    clock = {u: rng.uniform(0, span) for u in range(users)}
    buffers: dict[str, list[str]] = {}
    for n in range(events):
        user = min(int(rng.paretovariate(1.2)) - 1, users - 1) if n % 2 else rng.randrange(users)
        clock[user] = (clock[user] + rng.expovariate(1 / 600)) % span
        ts = START + timedelta(seconds=clock[user])
        item = min(int(rng.paretovariate(1.1)) - 1, items - 1)
        kind = rng.choices(["impression", "click", "rating", "purchase"], [0.6, 0.25, 0.12, 0.03])[0]
        line = {"event_id": f"e{n}", "user_id": f"u{user}", "item_id": f"i{item}", "type": kind,
                "value": float(rng.randint(1, 5)) if kind == "rating" else None,
                "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "context": {}}  # fmt: skip
        partition = f"dt={ts:%Y-%m-%d}/hr={ts:%H}"
        buffer = buffers.setdefault(partition, [])
        buffer.append(json.dumps(line) + "\n")
        if len(buffer) >= 2_000:  # bounds the generator: at most ~720 partitions × 2,000 lines held
            _flush(root, partition, buffer)
    for partition, buffer in buffers.items():
        _flush(root, partition, buffer)
    Catalog(root.parent / "catalog").upsert_items(Item(item_id=f"i{i}", categories=[f"c{i % 20}"]) for i in range(items))


def _flush(root: Path, partition: str, lines: list[str]) -> None:
    (root / partition).mkdir(parents=True, exist_ok=True)
    with (root / partition / "part-bench.jsonl").open("a") as handle:
        handle.writelines(lines)
    lines.clear()


def run_chain(spark: object, settings: Settings) -> dict[str, float]:
    return {s.job: s.seconds for s in run_jobs(spark, settings, list(CHAIN))}  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument("--ml100k", type=Path, default=None, help="MovieLens 100k directory (imported first)")
    parser.add_argument("--redis-url", default=None, help="Redis for the batch_features publish (default: embedded)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    spark = build_session(Settings(state_dir=work), "bench-batch", {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    rows = []
    for events in args.events:
        settings = Settings(state_dir=work / f"n{events}", redis={"url": args.redis_url})
        write_synthetic_log(settings.event_log_dir, events)
        started = time.perf_counter()
        per_job = run_chain(spark, settings)
        rows.append((f"synthetic {events:,}", events, time.perf_counter() - started, per_job))
    if args.ml100k:
        from pipelines.datasets.movielens import import_movielens

        settings = Settings(state_dir=work / "ml100k", redis={"url": args.redis_url})
        import_movielens(args.ml100k, settings)
        started = time.perf_counter()
        per_job = run_chain(spark, settings)
        rows.append(("ml-100k", 100_000, time.perf_counter() - started, per_job))
    spark.stop()  # type: ignore[attr-defined]
    print(f"| data | events | chain s | events/s | time ratio vs previous / size ratio | {' | '.join(CHAIN)} |")
    print("|" + " --- |" * (5 + len(CHAIN)))
    previous: tuple[int, float] | None = None
    for label, events, seconds, per_job in rows:
        growth = f"{seconds / previous[1]:.2f} / {events / previous[0]:.1f}" if previous and label.startswith("synthetic") else "-"
        jobs = " | ".join(f"{per_job[j]:.1f}" for j in CHAIN)
        print(f"| {label} | {events:,} | {seconds:.1f} | {events / seconds:,.0f} | {growth} | {jobs} |")
        if label.startswith("synthetic"):
            previous = (events, seconds)
    print("\nevents/s per job (input events / job seconds):")
    print(f"| data | {' | '.join(CHAIN)} |")
    print("|" + " --- |" * (1 + len(CHAIN)))
    for label, events, _, per_job in rows:
        print(f"| {label} | " + " | ".join(f"{events / max(per_job[j], 1e-9):,.0f}" for j in CHAIN) + " |")


if __name__ == "__main__":
    main()
