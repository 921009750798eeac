"""Recommendation quality under the field's protocol (issue 20): the project's pipeline (recall,
recall -> DIN) against tuned peers (Pop, ItemKNN over neighbours x last-n items, sequential rules
over windows x last-n items, implicit ALS, GRU4Rec) on the same split, with 95% bootstrap intervals
over users, plus the catalog coverage and mean pairwise overlap of every model's top-10 lists
(test-phase histories).

Import a data set once, then run (one data set per run):

    .venv/bin/recsys data import-movielens ../shared/data/ml-100k --state-dir /tmp/q-ml100k
    .venv/bin/python benchmarks/quality.py --state-dir /tmp/q-ml100k --name ml-100k

    .venv/bin/recsys data import ../shared/data/amazon-toys/Toys_and_Games.txt --format sequences \\
        --event-type purchase --categories ../shared/data/amazon-toys/Toys_and_Games_item2attributes.json \\
        --state-dir /tmp/q-toys
    .venv/bin/python benchmarks/quality.py --state-dir /tmp/q-toys --name amazon-toys --positions-per-user 3

Targets: pipeline NDCG@10 >= 1.10 x the best tuned peer's (peer chosen on validation); top-10
coverage >= 3x today's with overlap <= 0.15.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from quiet import ForeignCpu  # benchmarks/quiet.py: the script's folder is on sys.path
from feature_store.settings import Settings
from models.evaluation.end_to_end import RerankRecommender, SampleConfig
from models.evaluation.offline_pipeline import EvaluationConfig
from models.evaluation.protocol import implicit_interactions, protocol_split, top_lists
from models.evaluation.protocol_run import PEERS, ProtocolConfig, ProtocolResult, grid, best_peer, rare_collections, run_protocol
from models.evaluation.recall_cache import CachedRecall
from models.evaluation.shared_reasons import SharedReasons
from services.cli.evaluate import print_protocol, read_log
from services.recommend.explain import explain
from services.recommend.types import Candidate

SMALL_ALS_GRID = grid(factors=[128, 256], regularization=[0.01], alpha=[10.0, 40.0])  # --small-grids


def diversity(lists: list[list[str]], catalog: int) -> dict[str, float]:
    """Distinct items over all lists, their share of the catalog, and the mean over user pairs
    of |A ∩ B| / k, via Σ_i C(n_i, 2) / C(N, 2) / k (n_i: lists holding item i)."""
    counts: dict[str, int] = {}
    for items in lists:
        for item in items:
            counts[item] = counts.get(item, 0) + 1
    n, k = len(lists), max(map(len, lists), default=1)
    shared = sum(c * (c - 1) / 2 for c in counts.values())
    overlap = shared / (n * (n - 1) / 2) / k if n > 1 else 0.0
    return {"distinct": float(len(counts)), "coverage": len(counts) / catalog, "overlap": overlap}


class _Ids:
    """Reasons name items by id here (the catalog's titles are a serving concern)."""

    def titles(self, item_ids: Sequence[str]) -> dict[str, str]:
        return {item: item for item in item_ids}


def _recall_stage(model: Any) -> Any:
    """The recall stage whose candidates a protocol model lists."""
    inner = getattr(model, "model", model)  # a list model inside its ListScorer; a blend scores directly
    return inner.recall if isinstance(inner, RerankRecommender) else inner


def _explainer(recall: Any) -> Any:
    """The object whose `reasons` explain `recall`'s items (the blend under its cache)."""
    return recall.inner if isinstance(recall, CachedRecall) else recall


def share_reasons(models: Sequence[tuple[Any, list[list[str]]]], split: Any, shared: SharedReasons, min_history: int = 10) -> None:
    """Register with `shared` every list `reasons_per_list` will explain with a blend's reasons, so
    each user's lists over one blend take one leave-one-out pass."""
    for model, lists in models:
        explainer = _explainer(_recall_stage(model))
        if hasattr(explainer, "reasons"):
            for user, items in zip(sorted(split.test), lists):
                if len(split.train[user]) >= min_history:
                    shared.want(explainer, split.train[user], items)


def reasons_per_list(model: Any, split: Any, lists: list[list[str]], shared: SharedReasons, min_history: int = 10) -> float:
    """Mean number of distinct reasons (`services.recommend.explain`) per top-10 list, over users
    with at least `min_history` history items; each item's reason from the recall candidate that
    brought it (its seed; the blend's `reasons` for the listed items, through `shared`, whose
    `recent` applies), as served without the ranker's attention."""
    recall = _recall_stage(model)
    explainer = _explainer(recall)
    depth = getattr(model, "depth", 100)
    kept = [(user, items) for user, items in zip(sorted(split.test), lists) if len(split.train[user]) >= min_history]
    counts = []
    for start in range(0, len(kept), 256):
        chunk = kept[start : start + 256]
        histories = [split.train[user] for user, _ in chunk]
        if hasattr(recall, "recall_many"):  # the blend scores a batch of histories at once
            recalled = recall.recall_many(histories, depth)
        else:
            recalled = [recall.recall(history, depth) for history in histories]
        if hasattr(explainer, "reasons_many"):
            shared.fill(explainer, histories)
        for (user, items), found in zip(chunk, recalled):
            by_id = {c.item_id: Candidate(c.item_id, c.score, c.channels, c.because) for c in found}
            shown = [by_id.get(item, Candidate(item, 0.0, set())) for item in items]
            if hasattr(explainer, "reasons"):  # the blend explains the shown items only, as served
                for candidate, why in zip(shown, shared.reasons(explainer, split.train[user], items)):
                    candidate.because = why
            counts.append(len(set(explain(shown, [], _Ids()))))  # type: ignore[arg-type]
    return float(np.mean(counts)) if counts else float("nan")


class PhaseClock:
    """CPU and wall seconds per progress phase: the time since the previous report is charged to
    the phase that reports (phases run one after another and report when a step ends). CPU is the
    process's own (`time.process_time`: every thread), the measure that holds on a shared machine."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self._last = (time.process_time(), time.perf_counter())

    def charge(self, phase: str) -> None:
        now = (time.process_time(), time.perf_counter())
        self.cpu[phase] = self.cpu.get(phase, 0.0) + now[0] - self._last[0]
        self.wall[phase] = self.wall.get(phase, 0.0) + now[1] - self._last[1]
        self._last = now

    def table(self) -> str:
        total = sum(self.cpu.values())
        lines = [f"{'phase':<40} {'CPU min':>8} {'wall min':>9} {'CPU share':>10}"]
        lines += [f"{phase:<40} {cpu / 60:>8.2f} {self.wall[phase] / 60:>9.2f} {cpu / max(total, 1e-9):>10.1%}"
                  for phase, cpu in self.cpu.items()]  # fmt: skip
        lines.append(f"{'total':<40} {total / 60:>8.2f} {sum(self.wall.values()) / 60:>9.2f}")
        return "\n".join(lines)


def ratio_ci(a: np.ndarray, b: np.ndarray, rounds: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) / mean(b) with a paired percentile bootstrap interval over users."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(a), size=(rounds, len(a)))
    ratios = a[draws].mean(axis=1) / np.maximum(b[draws].mean(axis=1), 1e-12)
    return float(a.mean() / max(b.mean(), 1e-12)), float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--rankers", default="din")
    parser.add_argument("--ranker-epochs", type=int, default=3)
    parser.add_argument("--positions-per-user", type=int, default=None)
    parser.add_argument("--gru-epochs", type=int, default=20)
    parser.add_argument("--gru-batch", type=int, default=32)
    parser.add_argument("--gru-max-len", type=int, default=50,
                        help="GRU4Rec's window (trains on each user's last max-len + 1 items; pads every row to it)")
    parser.add_argument("--small-grids", action="store_true",
                        help="ItemKNN neighbours 50/200 x last-n 1/3/all, SR window 3/10/20 x last-n 1/3, "
                        "ALS 64 factors x λ 0.01/0.1 x α 1/10 (large sets)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--reason-curve", action="store_true",
                        help="also print the blend's reason selection curve (benchmarks/reason_selection.py)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    recent = Settings().api.reason_recent or None
    started = time.perf_counter()
    events, categories = read_log(Settings(state_dir=args.state_dir))
    split = protocol_split(implicit_interactions(events))
    pipeline = EvaluationConfig(
        rankers=tuple(r for r in args.rankers.split(",") if r), ranker_epochs=args.ranker_epochs,
        samples=SampleConfig(positions_per_user=args.positions_per_user, seed=args.seed), bootstrap_rounds=args.bootstrap,
        seed=args.seed,
    )  # fmt: skip
    grids: dict[str, Any] = {"gru_grid": grid(dim=[64], dropout=[0.2], batch_size=[args.gru_batch], max_len=[args.gru_max_len])}
    if args.small_grids:
        grids["knn_grid"] = grid(neighbours=[50, 200], recent=[1, 3, None])
        grids["sr_grid"] = grid(window=[3, 10, 20], neighbours=[100], recent=[1, 3])
        grids["als_grid"] = SMALL_ALS_GRID
    config = ProtocolConfig(peers=tuple(p for p in args.peers.split(",") if p), gru_epochs=args.gru_epochs, pipeline=pipeline,
                            bootstrap_rounds=args.bootstrap, seed=args.seed,
                            reason_recent=recent, **grids)  # fmt: skip
    clock = PhaseClock()
    clock.charge("read log, split")
    with ForeignCpu() as other, Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        tasks: dict[str, int] = {}

        def report(phase: str, done: int, total: int) -> None:
            clock.charge(phase)
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done)  # type: ignore[arg-type]

        result = run_protocol(split, categories, config, report)
    seconds = time.perf_counter() - started
    print_protocol(result)
    with rare_collections():
        summary(args, result, split, seconds, other, clock, recent)


def summary(args: argparse.Namespace, result: ProtocolResult, split: object, seconds: float, other: ForeignCpu,
            clock: PhaseClock, recent: int | None) -> None:  # fmt: skip
    """Print and save the figures; `recent`: the history items the blend tries as reasons (as served)."""
    peer = best_peer(result)
    figures: dict[str, object] = {"dataset": args.name, "users": result.users, "items": result.items, "seconds": seconds,
                                  "other_core_seconds": other.core_seconds, "best_peer": peer, "models": {}}  # fmt: skip
    print(f"\n{args.name}: best tuned peer on validation: {peer}; whole run {seconds / 60:.1f} min "
          f"(other processes used {other.core_seconds / max(seconds, 1e-9):.2f} cores on average)")  # fmt: skip
    print(f"{'model':<32} {'NDCG@10 / best peer [95% CI]':>30} {'top-10 items':>13} {'coverage':>9} {'overlap':>8} {'reasons/list':>13}")
    measured: dict[int, dict[str, float]] = {}  # the pipeline row is one of the other models
    lists = {id(tuned.model): tuned.test_lists or top_lists(tuned.model, split.test, split.items, 10, args.seed)  # type: ignore[attr-defined]
             for tuned in result.models.values()}  # fmt: skip
    clock.charge("top-10 lists")
    shared = SharedReasons(recent)
    explained = {id(t.model): (t.model, lists[id(t.model)]) for name, t in result.models.items() if name.startswith(("recall", "blend"))}
    share_reasons(list(explained.values()), split.test, shared)  # type: ignore[attr-defined]
    for name, tuned in result.models.items():
        if id(tuned.model) not in measured:
            measured[id(tuned.model)] = diversity(lists[id(tuned.model)], result.items)
            if name.startswith(("recall", "blend")):
                measured[id(tuned.model)]["reasons_per_list"] = reasons_per_list(tuned.model, split.test, lists[id(tuned.model)],  # type: ignore[attr-defined]
                                                                                 shared)  # fmt: skip
                clock.charge("reasons")
        spread = measured[id(tuned.model)]
        ratio = ratio_ci(tuned.test["NDCG@10"], result.models[peer].test["NDCG@10"], args.bootstrap, args.seed)
        print(f"{name:<32} {ratio[0]:>10.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}]     {int(spread['distinct']):>13,} "
              f"{spread['coverage']:>9.3f} {spread['overlap']:>8.3f} {spread.get('reasons_per_list', float('nan')):>13.2f}")  # fmt: skip
        figures["models"][name] = {  # type: ignore[index]
            "params": tuned.params, "validation_ndcg10": float(tuned.validation["NDCG@10"].mean()),
            "test": {m: list(v) for m, v in result.summary[name].items()}, "ndcg10_vs_best_peer": list(ratio), **spread,
        }  # fmt: skip
    if args.reason_curve and "blend" in result.models:
        from reason_selection import selection_curve  # benchmarks/reason_selection.py

        figures["reason_curve"] = selection_curve(result, split, peer, recent, args.bootstrap,
                                                  args.seed)  # fmt: skip
        clock.charge("reason selection curve")
    print(f"\nCPU and wall time per phase (this process, every thread):\n{clock.table()}")
    figures["phases"] = {phase: {"cpu_s": clock.cpu[phase], "wall_s": clock.wall[phase]} for phase in clock.cpu}
    if args.output:
        args.output.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
