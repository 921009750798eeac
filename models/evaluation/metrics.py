"""Full-ranking top-K metrics: every item is a candidate except the user's training history.

With held-out set T and ranked list R (history excluded): HR@K = 1[|R@K ∩ T| > 0],
Recall@K = |R@K ∩ T| / |T|, NDCG@K = Σ_{i ∈ R@K ∩ T} 1/log2(rank_i + 1) / IDCG@K.
With one held-out item (leave-last-one-out) Recall@K equals HR@K.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from models.evaluation.split import LeaveLastOut


class Recommender(Protocol):
    def recommend(self, history: Sequence[str], k: int) -> list[str]:
        """The top `k` items for a user with this history (oldest first), history excluded."""
        ...


DEFAULT_METRICS = ("HR@10", "NDCG@10", "HR@50", "Recall@50")


def evaluate(
    model: Recommender, split: LeaveLastOut, metrics: Sequence[str] = DEFAULT_METRICS,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Mean of each metric ("HR@K", "NDCG@K", "Recall@K") over users with a test item."""
    parsed = [_parse(name) for name in metrics]
    depth = max(k for _, k in parsed)
    totals = dict.fromkeys(metrics, 0.0)
    users = list(split.test)
    for number, user in enumerate(users):
        ranked = model.recommend(split.train[user], depth)
        held_out = {split.test[user]}
        for name, (kind, k) in zip(metrics, parsed):
            totals[name] += _score(kind, ranked[:k], held_out)
        if progress is not None and number % 100 == 0:
            progress(number, len(users))
    return {name: total / max(len(users), 1) for name, total in totals.items()}


def rank_metrics(ranks: np.ndarray, ks: Sequence[int] = (10, 50)) -> dict[str, np.ndarray]:
    """Per-user HR@K, NDCG@K (one relevant item: 1/log2(rank+1) when rank <= K) and MRR (1/rank,
    0 for a target never ranked) from each user's target rank (1 = best; inf = not ranked)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = ranks <= k
        out[f"HR@{k}"] = hit.astype(np.float64)
        out[f"NDCG@{k}"] = np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 1.0) + 1.0), 0.0)
    out["MRR"] = np.where(np.isfinite(ranks), 1.0 / ranks, 0.0)
    return out


def _parse(name: str) -> tuple[str, int]:
    kind, _, k = name.partition("@")
    if kind not in ("HR", "NDCG", "Recall") or not k.isdigit() or int(k) < 1:
        raise ValueError(f"unknown metric {name!r}: use HR@K, NDCG@K or Recall@K")
    return kind, int(k)


def _score(kind: str, ranked: list[str], held_out: set[str]) -> float:
    hits = [rank for rank, item in enumerate(ranked, start=1) if item in held_out]
    if kind == "HR":
        return float(bool(hits))
    if kind == "Recall":
        return len(hits) / len(held_out)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(held_out), len(ranked)) + 1))
    return sum(1.0 / math.log2(rank + 1) for rank in hits) / ideal if ideal else 0.0
