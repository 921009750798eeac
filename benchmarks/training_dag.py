"""The training DAG's wall time per step on MovieLens 100k (or synthetic events), and the quality
gate's own cost.

Runs, in one process on one embedded Redis:

1. DAG run 1: no blessed model yet, so the gate scores the candidates only (floors);
2. DAG run 2: the gate scores candidates and the blessed baselines on the same held-out window;
3. the peer: the same work called directly, without the DAG (Spark chain in one call, then the
   embeddings and ranker steps' functions): no run records, threads, evaluation or gate.

Prints each step's seconds, run 2's total over the peer's (the DAG's overhead plus the gate), and
the gate's cost (evaluate + gate steps) as a share of run 2.

    .venv/bin/python benchmarks/training_dag.py --movielens ../shared/data/ml-100k
    .venv/bin/python benchmarks/training_dag.py --synthetic 1000000

`--runs 1` stops after run 1 and `--no-peer` skips the peer (for sizes that would not finish on a
shared machine otherwise); every step's seconds are printed as it ends, so a run cut short still
leaves its finished steps in the output.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from feature_store.redis_server import redis_url
from feature_store.settings import Settings
from pipelines.training.dag import fast, run_training
from pipelines.training.executor import StepContext
from pipelines.training.records import RunRecord


def _import(settings: Settings, movielens: Path | None, synthetic: int) -> None:
    if movielens is not None:
        from pipelines.datasets import movielens as ml

        ml.import_movielens(movielens, settings)
    else:
        from services.cli import data

        data.synth(events=synthetic, state_dir=settings.state_dir)


def _progress(name: str, event: str, step: object) -> None:
    if event == "end":
        print(f"  {name:<12} {step.status:<10} {step.duration_s:8.1f} s", flush=True)  # type: ignore[attr-defined]


def _dag(settings: Settings, label: str) -> RunRecord:
    print(f"{label}:", flush=True)
    return run_training(settings, trigger="benchmark", progress=_progress)


def _peer(settings: Settings) -> dict[str, float]:
    """The same work without the DAG: batch chain, embeddings, ranker, timed."""
    from pipelines.spark.runner import CHAIN, run_jobs
    from pipelines.spark.session import build_session
    from pipelines.training import steps

    print("peer (direct calls, no DAG):", flush=True)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    spark = build_session(settings, "recsys-benchmark-peer")
    try:
        list(run_jobs(spark, settings, list(CHAIN)))
    finally:
        spark.stop()
    seconds["batch chain"] = time.perf_counter() - started
    outputs: dict[str, object] = {}
    for name, function in (("embeddings", steps.embeddings), ("ranker", steps.ranker)):
        started = time.perf_counter()
        outputs |= function(StepContext(settings, "peer", dict(outputs))).outputs
        seconds[name] = time.perf_counter() - started
    for name, value in seconds.items():
        print(f"  {name:<12} {value:8.1f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movielens", type=Path, help="MovieLens directory (read in place)")
    parser.add_argument("--synthetic", type=int, default=0, help="events to generate instead")
    parser.add_argument("--runs", type=int, choices=(1, 2), default=2, help="DAG runs (2: the second gates against the first)")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True, help="time the direct calls too")
    args = parser.parse_args()
    if (args.movielens is None) == (args.synthetic == 0):
        parser.error("give --movielens PATH or --synthetic N")
    with tempfile.TemporaryDirectory(prefix="recsys-dag-bench-") as state:
        base = Settings(state_dir=Path(state))
        with redis_url(base) as url:
            settings = fast(base.model_copy(update={"redis": base.redis.model_copy(update={"url": url})}))
            started = time.perf_counter()
            _import(settings, args.movielens, args.synthetic)
            print(f"import: {time.perf_counter() - started:.1f} s", flush=True)
            runs = [_dag(settings, "DAG run 1 (no baseline)")]
            if args.runs == 2:
                runs.append(_dag(settings, "DAG run 2 (gate vs blessed)"))
            peer = _peer(settings) if args.peer else {}
    _summary(runs, peer)


def _summary(runs: list[RunRecord], peer: dict[str, float]) -> None:
    seconds = [{s.name: s.duration_s or 0.0 for s in run.steps} for run in runs]
    print(f"\n{'step':<12} " + " ".join(f"{f'run {n} s':>9}" for n in range(1, len(runs) + 1)))
    for name in seconds[0]:
        print(f"{name:<12} " + " ".join(f"{run[name]:9.1f}" for run in seconds))
    totals = [sum(s.values()) for s in seconds]
    gate = [s["evaluate"] + s["gate"] for s in seconds]
    print(f"{'total':<12} " + " ".join(f"{total:9.1f}" for total in totals))
    print("gate cost (evaluate + gate): " + ", ".join(
        f"run {n} {cost:.1f} s ({cost / total:.1%})" for n, (cost, total) in enumerate(zip(gate, totals), start=1)))  # fmt: skip
    if peer:
        peer_total = sum(peer.values())
        print(f"peer total {peer_total:.1f} s; DAG run {len(runs)} / peer = {totals[-1] / peer_total:.2f}x")
    for run in runs:
        print(f"run {run.run_id} held-out window: {run.step('evaluate').metrics['held_out']}")
        blessed = run.step("gate").metrics
        print(f"run {run.run_id}: " + "; ".join(
            f"{role} blessed={d['blessed']} " + ", ".join(f"{c['metric']} {c['candidate']} vs {c['baseline']} (floor {c['floor']:.4f})" for c in d["checks"])
            for role, d in blessed.items()))  # fmt: skip


if __name__ == "__main__":
    main()
