"""The trade-off of the blend's reason selection (issue 20: ≥ 5 distinct reasons per 10-item list
without losing NDCG; `models.retrieval.reason_selection`): for every (depth, λ) of the grids, the
protocol's blend's validation NDCG@10 and reasons (what the choice saw) beside its test NDCG@10 and
HR@10 with 95% bootstrap intervals over users, NDCG@10 / the best tuned peer's and / the plain
blend's (λ = 0; paired intervals) and the distinct reasons per test top-10 list (users with >= 10 history items). Printed by
`benchmarks/quality.py --reason-curve` after its own table, on the same run's blend and peers.

Test lists here are the blend's top 150 unseen items re-ordered (the full ranking's top 10 up to
random tie-breaks), so the chosen pair's row repeats quality.py's blend row as a check.

Run alone, it measures what the selection adds to a served request: CPU per request (this
process, one thread as the API caps it) of the training DAG's blend recalling the API's 150 blended
candidates for the last 50 history items and explaining the shown 10 in the plain order, against
the same recall with the selection (`BlendedRecall.shown_keys`, its reasons for the top `depth`)
at the given depth and λ, in alternating blocks of 50 requests; the ratio is selected / plain.
With `--choice`, instead, the (depth, λ) choice on that blend's validation users (reasons only,
no test phase: cheap enough for Amazon Toys). With `--weights-search`, the blend's weights are
fitted again with the reasons in the objective: `coordinate_ascent` (the blend's own fit) from the
fitted weights, maximising the validation NDCG@10 of the selection's best (depth, λ) among those
reaching `training.blend_min_reasons` reasons per list; then the test phase as served (channels
refitted on the whole training sequences, each user's training items as history, the test item as
target, the top 150 re-ordered) for the plain blend, the current selection (NDCG-fitted weights
and their chosen pair) and the searched weights with theirs, with paired 95% intervals over users:

    TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
        .venv/bin/python benchmarks/reason_selection.py --state-dir /tmp/q-ml100k --depth 100 --penalty 3
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from blend_serving import cpu_per_call  # benchmarks/blend_serving.py: the script's folder is on sys.path
from feature_store.settings import Settings, TrainingSettings
from models.embeddings.skipgram import SkipGramConfig, SkipGramTrainer
from models.evaluation.end_to_end import bootstrap_ci
from models.evaluation.protocol import implicit_interactions, protocol_split
from models.retrieval.blend import BlendedRecall, coordinate_ascent
from models.retrieval.reason_selection import (DEPTH_GRID, PENALTY_GRID, REASONS_MIN_HISTORY, PenaltyChoice,
                                               fit_reason_penalty, list_figures)  # fmt: skip
from pipelines.training.blend import fit_serving_blend, refit_blend, validation_split
from quality import ratio_ci
from services.cli.evaluate import read_log


def _rows(blend: BlendedRecall, histories: Sequence[Sequence[str]], targets: Sequence[str], recent: int | None,
          depth: int) -> tuple[list[np.ndarray], list[list[str | None]], list[int]]:  # fmt: skip
    scores, reasons, where = [], [], []
    for start in range(0, len(histories), 256):
        chunk = histories[start : start + 256]
        for history, target, found in zip(chunk, targets[start : start + 256], blend.recall_many(chunk, depth)):
            ids = [c.item_id for c in found]
            scores.append(np.array([c.score for c in found]))
            reasons.append(blend.reasons(history, ids, recent))
            where.append(ids.index(target) if target in ids else -1)
    return scores, reasons, where


def selection_curve(result: Any, split: Any, peer: str, recent: int | None, rounds: int, seed: int) -> list[dict[str, float]]:
    """Print and return the curve's rows (module docstring)."""
    blend: BlendedRecall = result.models["blend"].model.model
    users = sorted(split.test.test)
    validation = fit_reason_penalty(blend, [split.validation.train[u] for u in users], [split.validation.test[u] for u in users],
                                    recent, seed=seed)  # fmt: skip
    seen = {(d, p): (ndcg, n) for d, p, ndcg, n in validation.trace}
    scores, reasons, where = _rows(blend, [split.test.train[u] for u in users], [split.test.test[u] for u in users],
                                   recent, max(DEPTH_GRID))  # fmt: skip
    long = np.array([len(split.test.train[u]) >= 10 for u in users])
    peer_ndcg = result.models[peer].test["NDCG@10"]
    plain_ndcg = list_figures(scores, reasons, where, 0.0)["NDCG@10"]
    rows = []
    print(f"\nreason selection (chosen on validation: depth {blend.reason_depth}, λ {blend.reason_penalty:g}); test over "
          f"{len(users)} users, reasons over the {int(long.sum())} with >= 10 history items")  # fmt: skip
    print(f"{'depth':>5} {'λ':>6} {'val NDCG@10':>11} {'val reasons':>11} {'test NDCG@10 [95% CI]':>26} "
          f"{'HR@10 [95% CI]':>26} {'NDCG / ' + peer:>24} {'NDCG / plain':>24} {'reasons':>8}")  # fmt: skip
    for depth in DEPTH_GRID:
        cut = [t if t < depth else -1 for t in where]
        for penalty in PENALTY_GRID:
            figures = list_figures([s[:depth] for s in scores], [r[:depth] for r in reasons], cut, penalty)
            ndcg, hr = figures["NDCG@10"], figures["HR@10"]
            ratio, kept = ratio_ci(ndcg, peer_ndcg, rounds, seed), ratio_ci(ndcg, plain_ndcg, rounds, seed)
            row = {"depth": depth, "penalty": penalty, "validation_ndcg10": seen[(depth, penalty)][0],
                   "validation_reasons": seen[(depth, penalty)][1], "ndcg10": float(ndcg.mean()), "hr10": float(hr.mean()),
                   "ratio": ratio[0], "ratio_low": ratio[1], "ratio_high": ratio[2], "vs_plain": kept[0],
                   "vs_plain_low": kept[1], "vs_plain_high": kept[2],
                   "reasons": float(figures["reasons"][long].mean())}  # fmt: skip
            rows.append(row)
            low, high = bootstrap_ci(ndcg, rounds, seed=seed)
            hr_low, hr_high = bootstrap_ci(hr, rounds, seed=seed)
            print(f"{depth:>5} {penalty:>6g} {row['validation_ndcg10']:>11.4f} {row['validation_reasons']:>11.2f} "
                  f"{ndcg.mean():>8.4f} [{low:.4f}, {high:.4f}] {hr.mean():>8.4f} [{hr_low:.4f}, {hr_high:.4f}] "
                  f"{ratio[0]:>8.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}] {kept[0]:>8.3f} [{kept[1]:.3f}, {kept[2]:.3f}] "
                  f"{row['reasons']:>8.2f}")  # fmt: skip
    return rows


def weights_search(blend: BlendedRecall, split: Any, users: list[str], histories: list[list[str]], targets: list[str],
                   recent: int | None, min_reasons: float) -> None:  # fmt: skip
    """Print the reason-constrained weight fit and its test-phase comparison (module docstring)."""
    choices: dict[tuple[float, ...], PenaltyChoice] = {}

    def objective(weights: np.ndarray) -> float:
        key = tuple(float(w) for w in weights)
        if key not in choices:
            blend.weights = np.asarray(weights, dtype=np.float32)
            choices[key] = fit_reason_penalty(blend, histories, targets, recent, min_reasons)
        reaching = [ndcg for _, _, ndcg, reasons in choices[key].trace if reasons >= min_reasons]
        print(f"  weights {key}: best validation NDCG@10 at >= {min_reasons:g} reasons "
              f"{max(reaching) if reaching else float('nan'):.4f}", flush=True)  # fmt: skip
        return max(reaching, default=0.0)

    fitted = blend.weights.astype(np.float64)
    searched, _ = coordinate_ascent(objective, fitted)
    names = [c.name for c in blend.channels]
    sequences = [split.test.train[u] for u in users]
    blend.weights = np.asarray(fitted, dtype=np.float32)
    served = refit_blend(blend, sequences, {"item2vec": SkipGramTrainer(SkipGramConfig(seed=0)).fit(sequences)}, TrainingSettings())
    tested = sorted(split.test.test)
    test_histories, test_targets = [split.test.train[u] for u in tested], [split.test.test[u] for u in tested]
    long = np.array([len(h) >= REASONS_MIN_HISTORY for h in test_histories])
    figures = {}
    for label, weights, depth, penalty in [
        ("plain blend", fitted, max(DEPTH_GRID), 0.0),
        ("current selection", fitted, choices[tuple(fitted)].depth, choices[tuple(fitted)].penalty),
        ("searched weights", searched, choices[tuple(searched)].depth, choices[tuple(searched)].penalty),
    ]:  # fmt: skip
        served.weights = np.asarray(weights, dtype=np.float32)
        scores, reasons, where = _rows(served, test_histories, test_targets, recent, depth)
        figures[label] = list_figures(scores, reasons, where, penalty)
        key = tuple(float(w) for w in weights)
        print(f"{label}: weights {dict(zip(names, key))}, depth {depth}, λ {penalty:g}: validation NDCG@10 "
              f"{[n for d, p, n, _ in choices[key].trace if (d, p) == (depth, penalty)][0]:.4f}, test NDCG@10 "
              f"{figures[label]['NDCG@10'].mean():.4f}, test reasons {figures[label]['reasons'][long].mean():.2f}")  # fmt: skip
    for a, b in [("searched weights", "current selection"), ("searched weights", "plain blend"), ("current selection", "plain blend")]:
        ratio, low, high = ratio_ci(figures[a]["NDCG@10"], figures[b]["NDCG@10"])
        print(f"test NDCG@10 {a} / {b}: {ratio:.3f} [{low:.3f}, {high:.3f}] ({len(tested)} users)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--penalty", type=float, default=3.0)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--weights-search", action="store_true",
                        help="instead of the CPU: the blend's weights fitted with the reasons in the objective, and its test phase")
    parser.add_argument("--choice", action="store_true",
                        help="instead of the CPU: the (depth, λ) choice on this blend's validation users, every pair's figures")
    args = parser.parse_args()
    recent = Settings().api.reason_recent or None
    events, _ = read_log(Settings(state_dir=args.state_dir))
    split = protocol_split(implicit_interactions(events))
    users = sorted(split.test.train)
    prefixes, histories, targets = validation_split([split.test.train[u] for u in users])
    item2vec = SkipGramTrainer(SkipGramConfig(seed=0)).fit(prefixes)
    blend = fit_serving_blend(prefixes, histories, targets, {"item2vec": item2vec}, TrainingSettings())
    if args.weights_search:
        weights_search(blend, split, users, histories, targets, recent, Settings().training.blend_min_reasons)
        return
    if args.choice:
        choice = fit_reason_penalty(blend, histories, targets, recent)
        print(f"{len(histories)} validation users (at most 2,000 drawn); chosen depth {choice.depth}, λ {choice.penalty:g}")
        for depth, penalty, ndcg, reasons in choice.trace:
            print(f"depth {depth:>4} λ {penalty:>6g} validation NDCG@10 {ndcg:.4f} distinct reasons per list {reasons:.2f}")
        return
    requests = [split.test.train[u][-50:] for u in users[: args.requests]]

    def plain(history: Sequence[str]) -> object:
        found = blend.recall(history, 150, history)
        return blend.reasons(history, [c.item_id for c in found[:10]], recent)

    def selected(history: Sequence[str]) -> object:
        found = blend.recall(history, 150, history)
        return blend.shown_keys(history, [c.item_id for c in found], np.array([c.score for c in found]), recent)

    blend.reason_penalty, blend.reason_depth = args.penalty, args.depth
    for history in requests[:20]:  # TensorFlow's first calls trace
        plain(history), selected(history)
    cpu = cpu_per_call({"plain": plain, "selected": selected}, requests)
    ratio, low, high = ratio_ci(cpu["selected"], cpu["plain"])
    print(f"CPU per request: plain order + reasons of the top 10 {cpu['plain'].mean() * 1e3:.2f} ms, selection at depth "
          f"{args.depth}, λ {args.penalty:g} {cpu['selected'].mean() * 1e3:.2f} ms, ratio {ratio:.3f} [{low:.3f}, {high:.3f}] "
          f"({len(requests)} requests, blocks of 50)")  # fmt: skip


if __name__ == "__main__":
    main()
