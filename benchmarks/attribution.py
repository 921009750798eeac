"""Wall time of the Spark attribution job on synthetic logs of growing size.

    .venv/bin/python benchmarks/attribution.py --events 1000000 5000000

Logs come from `pipelines.datasets.synthetic` (slates of 10 impressions with request ids and
positions, clicks with their request id, purchases without one, ratings), users = events / 100,
items = events / 250. Each log is compacted, then attributed; generation is not timed. Peers in the
same run: the `compact` job on the same log (a linear pass over it), and linear scaling (the time
ratio against the size ratio between consecutive sizes). A small unreported run warms the JVM first;
the CPU other processes used while each size ran is printed beside it (`benchmarks/quiet.py`).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from feature_store.settings import Settings
from pipelines.datasets.synthetic import generate
from pipelines.spark.jobs import attribution, compact
from pipelines.spark.session import build_session
from quiet import ForeignCpu  # benchmarks/quiet.py: the script's folder is on sys.path


def _progress(stage: str, done: int, total: int) -> None:
    if done == total or done % 500_000 < 20_000:
        print(f"  {stage}: {done:,}/{total:,}", flush=True)


def measure(spark: object, settings: Settings, events: int) -> dict[str, float]:
    """Generate `events` events under `settings.state_dir`, then time compact and attribution."""
    started = time.perf_counter()
    report = generate(settings, on_progress=_progress, events=events, users=events // 100, items=events // 250)
    print(f"  {report} ({time.perf_counter() - started:.0f} s)", flush=True)
    with ForeignCpu() as other:
        compacted = compact.run(spark, settings)  # type: ignore[arg-type]
        attributed = attribution.run(spark, settings)  # type: ignore[arg-type]
    busy = other.core_seconds / (compacted.seconds + attributed.seconds)
    print(f"  compact {compacted.seconds:.1f} s, attribution {attributed.seconds:.1f} s, other processes "
          f"{busy:.1f} cores: {attributed.details}", flush=True)  # fmt: skip
    return {"compact": compacted.seconds, "attribution": attributed.seconds, "impressions": attributed.rows_out,
            "outcomes": attributed.rows_in - attributed.rows_out, "other_cores": busy}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--warmup", type=int, default=20_000, help="Events of an unreported first run (JVM warm-up)")
    parser.add_argument("--work", type=Path, default=None, help="Where logs go (default: a new temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-attribution-"))
    spark = build_session(Settings(state_dir=work), "bench-attribution",
                          {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})  # fmt: skip
    measure(spark, Settings(state_dir=work / "warmup", event_log={"fsync": False}), args.warmup)
    rows = []
    for events in args.events:
        print(f"{events:,} events", flush=True)
        settings = Settings(state_dir=work / f"n{events}", event_log={"fsync": False})
        rows.append((events, measure(spark, settings, events)))
    spark.stop()  # type: ignore[attr-defined]
    print("\n| events | impressions | outcomes | compact s | attribution s | attribution / compact"
          " | events/s (attribution) | time ratio / size ratio (attribution) | other processes, cores |")
    print("|" + " --- |" * 9)
    previous: tuple[int, float] | None = None
    for events, r in rows:
        growth = f"{r['attribution'] / previous[1]:.2f} / {events / previous[0]:.1f}" if previous else "-"
        print(f"| {events:,} | {r['impressions']:,.0f} | {r['outcomes']:,.0f} | {r['compact']:.1f} | {r['attribution']:.1f}"
              f" | {r['attribution'] / r['compact']:.2f} | {events / r['attribution']:,.0f} | {growth} | {r['other_cores']:.1f} |")  # fmt: skip
        previous = (events, r["attribution"])


if __name__ == "__main__":
    main()
