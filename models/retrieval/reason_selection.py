"""Which of the blend's best items to show, so a list does not name one reason for every item
(issue 20: ≥ 5 distinct reasons per 10-item list). The reasons stay the blend's exact
leave-one-out reasons (`BlendedRecall.reasons`); only the order of the blend's top `depth`
candidates changes, greedily, as in maximal marginal relevance (Carbonell & Goldstein, SIGIR 1998)
with the redundancy of an item taken as how many chosen items already share its reason:

    pick_t = argmax_{j not chosen}  s_j − λ · n_t(r_j)

s_j the blended score, r_j the item's reason (an item without one is in a group of its own kind,
as the list then shows one channel sentence for all of them), n_t(r) the items of reason r among
the t chosen so far. λ = 0 is the blend's own order; a large λ takes every reason's best item
before any reason's second. The picked values s_j − λ·n_t(r_j) never rise from one pick to the
next, so they serve as the shown items' scores (`selection_keys`).

λ and the depth are chosen on the protocol's validation targets (`choose_penalty`): the pair of
the grids with the highest validation NDCG@10 among those whose top-10 lists carry at least
`min_reasons` distinct reasons on average over users with >= 10 history items (the issue's target,
5); where none does, the pair with the most. `min_reasons` 0 keeps the blend's own order unless a pair scores higher on validation.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from models.retrieval.topk import stable_top

if TYPE_CHECKING:
    from models.retrieval.blend import BlendedRecall

PENALTY_GRID = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 100.0)
DEPTH_GRID = (30, 50, 80, 100, 150)
SELECTION_DEPTH = 50  # a blend saved before the selection existed serves penalty 0: depth unused
REASONS_TARGET = 5.0
REASONS_MIN_HISTORY = 10  # the target counts lists of users with at least this many history items


def reason_order(scores: np.ndarray, reasons: Sequence[Hashable | None], penalty: float,
                 picks: int | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(order, picked values): the greedy order of the items (module docstring; a tie goes to the
    item listed first), its first `picks` only when given, and each pick's s_j − λ·n_t(r_j),
    non-increasing."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(reasons):
        raise ValueError(f"{len(scores)} scores for {len(reasons)} reasons")
    if penalty < 0:
        raise ValueError(f"the reason penalty must be >= 0, got {penalty}")
    if penalty == 0:
        order = np.argsort(-scores, kind="stable")[:picks]
        return order, scores[order]
    groups = {reason: g for g, reason in enumerate(dict.fromkeys(reasons))}
    group = np.array([groups[reason] for reason in reasons], dtype=np.int64)
    counts = np.zeros(len(groups))
    adjusted = scores.copy()
    order, picked = [], []
    for _ in range(len(scores) if picks is None else min(picks, len(scores))):
        j = int(np.argmax(adjusted))
        order.append(j)
        picked.append(adjusted[j])
        adjusted[j] = -np.inf
        counts[group[j]] += 1
        same = (group == group[j]) & np.isfinite(adjusted)
        adjusted[same] = scores[same] - penalty * counts[group[j]]
    return np.array(order, dtype=np.int64), np.array(picked)


def selection_keys(scores: np.ndarray, reasons: Sequence[Hashable | None], penalty: float) -> np.ndarray:
    """One key per item of `scores` (the blend's scores, best first), whose stable descending sort
    is the shown order: the first len(reasons) items in `reason_order`, each keyed by its picked
    value; the items after them in their own order, keyed min(s_j, the last picked value)."""
    scores = np.asarray(scores, dtype=np.float64)
    head = len(reasons)
    keys = scores.copy()
    if head == 0 or penalty == 0:
        return keys
    order, picked = reason_order(scores[:head], reasons, penalty)
    keys[order] = picked
    keys[head:] = np.minimum(scores[head:], picked[-1])
    return keys


@dataclass(frozen=True)
class PenaltyChoice:
    """The chosen λ and depth and, per pair tried, (depth, λ, validation NDCG@10, distinct reasons
    per top-10 list)."""

    penalty: float
    depth: int
    trace: tuple[tuple[int, float, float, float], ...]


def list_figures(scores: Sequence[np.ndarray], reasons: Sequence[Sequence[Hashable | None]], targets: Sequence[int],
                 penalty: float, k: int = 10) -> dict[str, np.ndarray]:  # fmt: skip
    """Per user under `reason_order` with `penalty`: NDCG@k and HR@k of the target and the distinct
    reasons of the top k; `targets[u]` is the target's index in user u's candidates (best first;
    -1 when not among them: it then ranks below them, outside the top k)."""
    gains, hits, distinct = [], [], []
    for row_scores, row_reasons, target in zip(scores, reasons, targets):
        order = reason_order(row_scores, row_reasons, penalty, k)[0]
        place = int(np.flatnonzero(order == target)[0]) if target in order else k
        gains.append(1.0 / np.log2(place + 2.0) if place < k else 0.0)
        hits.append(float(place < k))
        distinct.append(len({row_reasons[j] for j in order[:k]}))
    return {f"NDCG@{k}": np.array(gains), f"HR@{k}": np.array(hits), "reasons": np.array(distinct, dtype=np.float64)}


def choose_penalty(scores: Sequence[np.ndarray], reasons: Sequence[Sequence[Hashable | None]], targets: Sequence[int],
                   grid: Sequence[float] = PENALTY_GRID, depths: Sequence[int] = DEPTH_GRID,
                   min_reasons: float = REASONS_TARGET, counted: Sequence[bool] | None = None) -> PenaltyChoice:  # fmt: skip
    """The (depth, λ) of the grids (module docstring) from each user's candidates (best first, at
    least max(depths) where the user has them) cut to each depth; λ = 0 is always tried. Reasons
    are averaged over the users `counted` marks (None or none marked: every user)."""
    mask = np.asarray(counted if counted is not None and any(counted) else [True] * len(scores), dtype=bool)
    trace = []
    for depth in sorted(depths):
        cut = [t if t < depth else -1 for t in targets]
        for penalty in sorted({0.0, *grid}):
            figures = list_figures([s[:depth] for s in scores], [r[:depth] for r in reasons], cut, penalty)
            trace.append((int(depth), float(penalty), float(figures["NDCG@10"].mean()), float(figures["reasons"][mask].mean())))
    reaching = [row for row in trace if row[3] >= min_reasons]
    depth, penalty, _, _ = (max(reaching, key=lambda row: row[2]) if reaching
                            else max(trace, key=lambda row: (row[3], row[2])))  # fmt: skip
    return PenaltyChoice(penalty, depth, tuple(trace))


def fit_reason_penalty(blend: BlendedRecall, histories: Sequence[Sequence[str]], targets: Sequence[str],
                       recent: int | None, min_reasons: float = REASONS_TARGET, grid: Sequence[float] = PENALTY_GRID,
                       depths: Sequence[int] = DEPTH_GRID, max_users: int = 2000, seed: int = 0,
                       batch: int = 256) -> PenaltyChoice:  # fmt: skip
    """`choose_penalty` over the blend's top max(depths) unseen items of each validation history
    (at most `max_users`, drawn with `seed`, as `fit_blend` draws them), each with its served
    reason (`BlendedRecall.reasons`, `recent` as served), reasons counted over the users with
    >= `REASONS_MIN_HISTORY` history items. The caller sets the blend's
    `reason_penalty` and `reason_depth` from the choice."""
    chosen = np.random.default_rng(seed).permutation(len(histories))[:max_users]
    histories, targets = [histories[i] for i in chosen], [targets[i] for i in chosen]
    scores: list[np.ndarray] = []
    reasons: list[list[str | None]] = []
    where: list[int] = []
    for start in range(0, len(histories), batch):
        chunk = histories[start : start + batch]
        found = blend.recall_many(chunk, max(depths))
        ids = [[c.item_id for c in row] for row in found]
        reasons += blend.reasons_many(chunk, ids, recent)
        for listed, row, target in zip(ids, found, targets[start : start + batch]):
            scores.append(np.array([c.score for c in row]))
            where.append(listed.index(target) if target in listed else -1)
    counted = [len(history) >= REASONS_MIN_HISTORY for history in histories]
    return choose_penalty(scores, reasons, where, grid, depths, min_reasons, counted)


class SelectedBlendScores:
    """The blend in its shown order as a full-ranking scorer (`models.evaluation.protocol`): each
    history's top `reason_depth` unseen items in `BlendedRecall.shown_keys`' order, above every
    other item; the other items by blended score. `model` is the blend (its reasons explain the
    list)."""

    def __init__(self, blend: BlendedRecall, recent: int | None) -> None:
        self.model, self.recent = blend, recent
        self.ids = blend.ids
        self._position = {item: i for i, item in enumerate(blend.ids.tolist())}

    def batch_scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        scores = self.model.batch_scores(histories).astype(np.float64)
        if self.model.reason_penalty == 0:
            return scores
        tops = []
        for row, history in enumerate(histories):
            own = scores[row].copy()
            own[[self._position[h] for h in set(history) if h in self._position]] = -np.inf
            top = stable_top(own, self.model.reason_depth)
            top = top[np.isfinite(own[top])]
            tops.append((top, own[top]))
        shown = self.model.shown_keys_many(histories, [self.ids[top].tolist() for top, _ in tops],
                                           [best for _, best in tops], self.recent)  # fmt: skip
        for row, ((top, _), (keys, _)) in enumerate(zip(tops, shown)):
            order = top[np.argsort(-keys, kind="stable")]
            scores[row, order] = scores[row].max() + np.arange(len(order), 0, -1)
        return scores

    def scores(self, history: Sequence[str]) -> np.ndarray:
        return self.batch_scores([history])[0]
