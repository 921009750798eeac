"""The trade-off of the blend's reason selection (issue 20: ≥ 5 distinct reasons per 10-item list
without losing NDCG; `models.retrieval.reason_selection`): for every (depth, λ) of the grids, the
protocol's blend's validation NDCG@10 and reasons (what the choice saw) beside its test NDCG@10 and
HR@10 with 95% bootstrap intervals over users, NDCG@10 / the best tuned peer's (paired interval)
and the distinct reasons per test top-10 list (users with >= 10 history items). Printed by
`benchmarks/quality.py --reason-curve` after its own table, on the same run's blend and peers.

Test lists here are the blend's top 150 unseen items re-ordered (the full ranking's top 10 up to
random tie-breaks), so the chosen pair's row repeats quality.py's blend row as a check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from models.evaluation.end_to_end import bootstrap_ci
from models.retrieval.blend import BlendedRecall
from models.retrieval.reason_selection import DEPTH_GRID, PENALTY_GRID, fit_reason_penalty, list_figures


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


def selection_curve(result: Any, split: Any, peer: str, recent: int | None, rounds: int, seed: int,
                    ratio_ci: Any) -> list[dict[str, float]]:  # fmt: skip
    """Print and return the curve's rows (module docstring); `ratio_ci` is quality.py's paired ratio."""
    blend: BlendedRecall = result.models["blend"].model.model
    users = sorted(split.test.test)
    validation = fit_reason_penalty(blend, [split.validation.train[u] for u in users], [split.validation.test[u] for u in users],
                                    recent, seed=seed)  # fmt: skip
    seen = {(d, p): (ndcg, n) for d, p, ndcg, n in validation.trace}
    scores, reasons, where = _rows(blend, [split.test.train[u] for u in users], [split.test.test[u] for u in users],
                                   recent, max(DEPTH_GRID))  # fmt: skip
    long = np.array([len(split.test.train[u]) >= 10 for u in users])
    peer_ndcg = result.models[peer].test["NDCG@10"]
    rows = []
    print(f"\nreason selection (chosen on validation: depth {blend.reason_depth}, λ {blend.reason_penalty:g}); test over "
          f"{len(users)} users, reasons over the {int(long.sum())} with >= 10 history items")  # fmt: skip
    print(f"{'depth':>5} {'λ':>6} {'val NDCG@10':>11} {'val reasons':>11} {'test NDCG@10 [95% CI]':>26} "
          f"{'HR@10 [95% CI]':>26} {'NDCG / ' + peer:>24} {'reasons':>8}")  # fmt: skip
    for depth in DEPTH_GRID:
        cut = [t if t < depth else -1 for t in where]
        for penalty in PENALTY_GRID:
            figures = list_figures([s[:depth] for s in scores], [r[:depth] for r in reasons], cut, penalty)
            ndcg, hr = figures["NDCG@10"], figures["HR@10"]
            ratio = ratio_ci(ndcg, peer_ndcg, rounds, seed)
            row = {"depth": depth, "penalty": penalty, "validation_ndcg10": seen[(depth, penalty)][0],
                   "validation_reasons": seen[(depth, penalty)][1], "ndcg10": float(ndcg.mean()), "hr10": float(hr.mean()),
                   "ratio": ratio[0], "ratio_low": ratio[1], "ratio_high": ratio[2],
                   "reasons": float(figures["reasons"][long].mean())}  # fmt: skip
            rows.append(row)
            low, high = bootstrap_ci(ndcg, rounds, seed=seed)
            hr_low, hr_high = bootstrap_ci(hr, rounds, seed=seed)
            print(f"{depth:>5} {penalty:>6g} {row['validation_ndcg10']:>11.4f} {row['validation_reasons']:>11.2f} "
                  f"{ndcg.mean():>8.4f} [{low:.4f}, {high:.4f}] {hr.mean():>8.4f} [{hr_low:.4f}, {hr_high:.4f}] "
                  f"{ratio[0]:>8.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}] {row['reasons']:>8.2f}")  # fmt: skip
    return rows
