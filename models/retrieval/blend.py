"""A learned blend of scored recall channels (`models.retrieval.scored_channels`), replacing equal
rank-interleaving when the channels can score every item.

    score(u, j) = Σ_c w_c · norm(s_c(u, ·))_j

with `norm` per user and channel either a z-score over the items (`zscore`) or reciprocal rank
fusion 1 / (60 + rank) (`rrf`; Cormack, Clarke & Büttcher 2009). The weights and the
normalisation are fitted on the protocol's validation targets by coordinate ascent on NDCG@10
(`fit_blend`): each round tries every weight of a small grid for one channel with the others
fixed and keeps the best. Each candidate's reason is the history item the channel contributing
most to its blended score names (`ScoredChannel.responsible`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.retrieval.multichannel import RecallCandidate
from models.retrieval.scored_channels import ScoredChannel

NORMALISATIONS = ("zscore", "rrf")
WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
RRF_OFFSET = 60.0


def normalise(scores: np.ndarray, how: str) -> np.ndarray:
    """Row-wise normalisation of a (users, items) score matrix (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float32)
    if how == "zscore":
        spread = scores.std(axis=1, keepdims=True)
        return (scores - scores.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, 1.0)
    if how == "rrf":
        ranks = np.empty_like(scores)
        order = np.argsort(-scores, axis=1, kind="stable")
        np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1, dtype=np.float32)[None, :].repeat(len(scores), 0), axis=1)
        return 1.0 / (RRF_OFFSET + ranks)
    raise ValueError(f"unknown normalisation {how!r}; expected one of {list(NORMALISATIONS)}")


@dataclass
class BlendedRecall:
    """Scores every item of `items` as the weighted sum of the channels' normalised scores; an
    `ItemScorer` for full ranking and a recall stage (`recall`, `recommend`) for the ranker."""

    channels: list[ScoredChannel]
    weights: np.ndarray
    items: Sequence[str]
    normalisation: str = "zscore"
    validation_ndcg: float = float("nan")
    fit_trace: list[tuple[str, tuple[float, ...], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.channels):
            raise ValueError(f"{len(self.weights)} weights for {len(self.channels)} channels")
        self.weights = np.asarray(self.weights, dtype=np.float32)
        self.ids = np.array(self.items, dtype=str)
        self._position = {item: i for i, item in enumerate(self.ids.tolist())}
        self._columns = [np.array([self._position.get(i, -1) for i in c.ids.tolist()]) for c in self.channels]

    def channel_matrices(self, histories: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Each channel's normalised scores over `items` (an item a channel does not know takes
        that user's lowest raw score of the channel)."""
        out = []
        for channel, columns in zip(self.channels, self._columns):
            raw = np.asarray(channel.batch_scores(histories), dtype=np.float32)
            full = np.repeat(raw.min(axis=1, keepdims=True) if raw.size else np.zeros((len(histories), 1), np.float32),
                             len(self.ids), axis=1)  # fmt: skip
            known = columns >= 0
            full[:, columns[known]] = raw[:, known]
            out.append(normalise(full, self.normalisation))
        return out

    def batch_scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        matrices = self.channel_matrices(histories)
        return sum((w * m for w, m in zip(self.weights, matrices)), np.zeros((len(histories), len(self.ids)), np.float32))

    def scores(self, history: Sequence[str]) -> np.ndarray:
        return self.batch_scores([history])[0]

    def recall(self, history: Sequence[str], k: int, exclude: Collection[str] = ()) -> list[RecallCandidate]:
        """The `k` best unseen items, each tagged with the channel contributing most to its
        score and the history item that channel names as responsible."""
        return self.recall_many([history], k, exclude)[0]

    def recall_many(self, histories: Sequence[Sequence[str]], k: int, exclude: Collection[str] = ()) -> list[list[RecallCandidate]]:
        """`recall` for several histories, each channel scoring them in one batch."""
        matrices = self.channel_matrices(histories)
        return [self._top([m[row : row + 1] for m in matrices], history, k, exclude) for row, history in enumerate(histories)]

    def _top(self, matrices: list[np.ndarray], history: Sequence[str], k: int, exclude: Collection[str]) -> list[RecallCandidate]:
        blended = sum((w * m[0] for w, m in zip(self.weights, matrices)), np.zeros(len(self.ids), np.float32))
        blocked = [self._position[i] for i in {*history, *exclude} if i in self._position]
        blended[blocked] = -np.inf
        top = np.argsort(-blended, kind="stable")[:k]
        top = top[np.isfinite(blended[top])]
        contributions = np.stack([w * m[0, top] for w, m in zip(self.weights, matrices)])
        leading = np.argmax(contributions, axis=0)
        because: dict[int, str | None] = {}
        for c, channel in enumerate(self.channels):
            rows = top[leading == c]
            if len(rows):
                because.update(zip(rows.tolist(), channel.responsible(history, self.ids[rows].tolist())))
        return [RecallCandidate(str(self.ids[j]), float(blended[j]), {self.channels[c].name}, because.get(int(j)))
                for j, c in zip(top.tolist(), leading.tolist())]  # fmt: skip

    def recommend(self, history: Sequence[str], k: int) -> list[str]:
        return [candidate.item_id for candidate in self.recall(history, k)]


def blend_ndcg(matrices: Sequence[np.ndarray], weights: Sequence[float], targets: np.ndarray, masked: np.ndarray,
               k: int = 10) -> float:  # fmt: skip
    """Mean NDCG@k of `targets` (column per row) under the weighted sum of `matrices`, `masked`
    (boolean, same shape) items excluded; a tie counts half a place (the expected random rank)."""
    blended = sum(w * m for w, m in zip(weights, matrices) if w) if any(weights) else np.zeros_like(matrices[0])
    blended = np.where(masked, -np.inf, blended)
    value = blended[np.arange(len(targets)), targets][:, None]
    rank = 1.0 + (blended > value).sum(axis=1) + ((blended == value).sum(axis=1) - 1) / 2.0
    gains = np.where(rank <= k, 1.0 / np.log2(rank + 1.0), 0.0)
    return float(gains.mean())


def fit_weights(matrices: Sequence[np.ndarray], targets: np.ndarray, masked: np.ndarray,
                grid: Sequence[float] = WEIGHT_GRID, rounds: int = 3) -> tuple[np.ndarray, float]:  # fmt: skip
    """Coordinate ascent on NDCG@10 from equal weights; a change is kept only if it improves."""
    weights = np.ones(len(matrices))
    best = blend_ndcg(matrices, weights, targets, masked)
    for _ in range(rounds):
        moved = False
        for c in range(len(matrices)):
            for value in grid:
                trial = weights.copy()
                trial[c] = value
                score = blend_ndcg(matrices, trial, targets, masked)
                if score > best + 1e-12:
                    best, weights, moved = score, trial, True
        if not moved:
            break
    return weights, best


def fit_blend(channels: list[ScoredChannel], items: Sequence[str], histories: Sequence[Sequence[str]],
              targets: Sequence[str], normalisations: Sequence[str] = NORMALISATIONS, max_users: int = 2000,
              seed: int = 0) -> BlendedRecall:  # fmt: skip
    """Fit the weights and choose the normalisation on (history, target) validation pairs (at most
    `max_users`, drawn with `seed`); returns the best blend with its validation NDCG@10."""
    if not channels:
        raise ValueError("a blend needs at least one channel")
    chosen = np.random.default_rng(seed).permutation(len(histories))[:max_users]
    histories = [histories[i] for i in chosen]
    best: BlendedRecall | None = None
    trace: list[tuple[str, tuple[float, ...], float]] = []
    for how in normalisations:
        blend = BlendedRecall(channels, np.ones(len(channels)), items, how)
        position = blend._position
        keep = [r for r, i in enumerate(chosen) if targets[i] in position]
        matrices = [m[keep] for m in blend.channel_matrices(histories)]
        target_columns = np.array([position[targets[chosen[r]]] for r in keep])
        masked = np.zeros((len(keep), len(position)), dtype=bool)
        for row, r in enumerate(keep):
            masked[row, [position[i] for i in histories[r] if i in position]] = True
        weights, score = fit_weights(matrices, target_columns, masked)
        trace.append((how, tuple(float(w) for w in weights), score))
        if best is None or score > best.validation_ndcg:
            best = BlendedRecall(channels, weights, items, how, score)
    assert best is not None
    best.fit_trace = trace
    return best
