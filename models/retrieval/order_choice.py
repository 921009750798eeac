"""Which order to serve, chosen on validation: the blend's own, or a ranker's re-ranking of the
blend's top `depth` (issue 20: a ranker never makes the recall order worse; the pipeline checks it
on validation, says so, and serves the better order).

    choice = ranker  if  NDCG@10(ranker over the blend's top depth) > NDCG@10(blend),  else blend

the blend's order being the one it serves (its top items re-ordered by their reasons,
`BlendedRecall.shown_keys`, with the served `recent`);

on the same validation (history, target) pairs, one target per user (NDCG = 1 / log2(rank + 1)
when the target is in the top 10).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models.evaluation.metrics import rank_metrics
from models.retrieval.blend import BlendedRecall

BLEND, RANKER = "blend", "ranker"

Rerank = Callable[[int, Sequence[str], list[str]], np.ndarray]
"""(validation row, history oldest first, candidates) -> one score per candidate, higher first."""


@dataclass(frozen=True)
class OrderChoice:
    """The order chosen on validation and the figures behind it."""

    order: str
    blend_ndcg10: float
    ranker_ndcg10: float | None
    users: int
    depth: int
    ranker_version: str | None = None

    def serves_ranker(self, version: str | None) -> bool:
        """True when the ranker of `version` is the one that won on validation."""
        return self.order == RANKER and version is not None and version == self.ranker_version

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OrderChoice:
        if values.get("order") not in (BLEND, RANKER):
            raise ValueError(f"order choice {values.get('order')!r}: expected {BLEND!r} or {RANKER!r}")
        return cls(**values)


def _rank(ranked: Sequence[str], target: str) -> float:
    """The target's 1-based rank in `ranked` (inf when absent)."""
    return float(list(ranked).index(target) + 1) if target in ranked else float("inf")


def _ndcg10(ranks: list[float]) -> float:
    return float(rank_metrics(np.asarray(ranks), ks=(10,))["NDCG@10"].mean()) if ranks else 0.0


def choose_order(blend: BlendedRecall, histories: Sequence[Sequence[str]], targets: Sequence[str],
                 rerank: Rerank | None, ranker_version: str | None = None, depth: int = 100,
                 batch: int = 256, recent: int | None = None) -> OrderChoice:  # fmt: skip
    """Score the blend's served order and `rerank` over its top `depth` on the validation pairs
    (`recent`: the history items tried as reasons, as served); no ranker: blend."""
    blend_ranks: list[float] = []
    ranker_ranks: list[float] = []
    for start in range(0, len(histories), batch):
        lists = blend.recall_many(histories[start : start + batch], depth)
        for offset, candidates in enumerate(lists):
            row = start + offset
            ids = [c.item_id for c in candidates]
            keys, _ = blend.shown_keys(histories[row], ids, np.array([c.score for c in candidates]), recent)
            blend_ranks.append(_rank([ids[i] for i in np.argsort(-keys, kind="stable")], targets[row]))
            if rerank is not None and ids:
                order = np.argsort(-np.asarray(rerank(row, histories[row], ids), dtype=np.float64), kind="stable")
                ranker_ranks.append(_rank([ids[i] for i in order], targets[row]))
            elif rerank is not None:
                ranker_ranks.append(float("inf"))
    blend_score = _ndcg10(blend_ranks)
    ranker_score = _ndcg10(ranker_ranks) if rerank is not None and ranker_ranks else None
    order = RANKER if ranker_score is not None and ranker_score > blend_score else BLEND
    return OrderChoice(order, blend_score, ranker_score, len(blend_ranks), depth, ranker_version)
