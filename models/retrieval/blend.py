"""A learned blend of scored recall channels (`models.retrieval.scored_channels`), replacing equal
rank-interleaving when the channels can score every item.

    score(u, j) = Σ_c w_c · norm(s_c(u, ·))_j

with `norm` per user and channel either a z-score over the items (`zscore`) or reciprocal rank
fusion 1 / (60 + rank) (`rrf`; Cormack, Clarke & Büttcher 2009). The weights and the
normalisation are fitted on the protocol's validation targets by coordinate ascent on NDCG@10
(`fit_blend`): each round tries every weight of a small grid for one channel with the others
fixed and keeps the best.

A candidate's reason (`reasons`, asked only for the items shown) is the history item whose
removal takes the most from its blended score (leave-one-out attribution: the counterfactual "had
the user not had h" of Ghazimatin et al., "PRINCE", WSDM 2020, for one action and on the score):

    reason(u, j) = argmax_h  Σ_c w_c · [norm_H(s_c(H, ·))_j − norm_H(s_c(H ∖ {h}, j))]

over the distinct items h of the history H, where H ∖ {h} drops every occurrence of h (so each
channel's window takes in the next older item: the channel's raw score as it would be for a user
who never had h) and norm_H places a raw score on the scale of the user's own normalisation (the
z-score's mean and spread of H's scores; under RRF its rank among H's scores of the other items).
Holding the scale fixed leaves out the shift a removal gives the whole catalog, which is the same
for every item and names nobody: an item without evidence from any channel gets no reason, as it
gets none when no removal lowers its score. The rule is exact for every channel, GRU4Rec's too (its
state is not a sum over history items, so no additive share exists for it). Only the histories a
removal changes are re-scored, per channel (`ScoredChannel.reads`).

The items shown in the blend's own order are its top `reason_depth` re-ordered so that fewer of
them share a reason (`models.retrieval.reason_selection`, penalty `reason_penalty` chosen on
validation; 0: the blend's order); `shown_keys` is that order for both serving and evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.retrieval.multichannel import RecallCandidate
from models.retrieval.reason_selection import SELECTION_DEPTH, selection_keys
from models.retrieval.scored_channels import ScoredChannel, load_channels, save_channels
from models.retrieval.topk import stable_top

BLEND_FILE = "blend.json"

NORMALISATIONS = ("zscore", "rrf")
WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
RRF_OFFSET = 60.0
LEAST_DROP = 1e-6  # in blended-score units (weights × z-scores or RRF terms)
REASONS_BATCH = 256  # histories whose removals one channel call re-scores (bounds its memory)


def _columns_of(items: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per item of `items`, its index in `ids` (-1 when absent)."""
    where = {item: i for i, item in enumerate(ids.tolist())}
    return np.array([where.get(item, -1) for item in items.tolist()], dtype=np.int64)


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


def on_scale(base: np.ndarray, values: np.ndarray, columns: np.ndarray, how: str) -> np.ndarray:
    """`values[:, i]`, raw scores of item `columns[i]`, normalised on the scale `normalise` gives
    the row `base` (z-score: its mean and spread; rrf: the rank among base's other items, ties
    placed as `normalise` places them); `values` equal to `base[columns]` give `normalise(base)`."""
    if how == "zscore":
        spread = base.std()
        return (values - base.mean()) / (spread if spread > 0 else 1.0)
    if how == "rrf":
        position, row = np.arange(len(base))[None, None, :], base[None, None, :]
        above = row > values[:, :, None]
        tied_before = (row == values[:, :, None]) & (position < columns[None, :, None])
        others = position != columns[None, :, None]
        return 1.0 / (RRF_OFFSET + 1.0 + ((above | tied_before) & others).sum(axis=2))
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
    reason_penalty: float = 0.0
    reason_depth: int = SELECTION_DEPTH

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.channels):
            raise ValueError(f"{len(self.weights)} weights for {len(self.channels)} channels")
        self.weights = np.asarray(self.weights, dtype=np.float32)
        self.ids = np.array(self.items, dtype=str)
        self._names: list[str] = self.ids.tolist()
        self._position = {item: i for i, item in enumerate(self._names)}
        # per channel, the channel's column of each of `items` (-1: the channel does not know it)
        self._gather = [_columns_of(self.ids, channel.ids) for channel in self.channels]

    def knows(self, item: str) -> bool:
        """True when `item` is one of the blend's `items`."""
        return item in self._position

    def channel_matrices(self, histories: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Each channel's normalised scores over `items` (an item a channel does not know takes
        that user's lowest raw score of the channel)."""
        return [normalise(raw, self.normalisation) for raw in self._raw(histories)]

    def _raw(self, histories: Sequence[Sequence[str]], weighted_only: bool = False) -> list[np.ndarray]:
        """Each channel's raw scores over `items`; with `weighted_only`, a channel of weight 0 is
        not run (zeros: it adds nothing to the blend)."""
        return [np.zeros((len(histories), len(self.ids)), np.float32) if weighted_only and weight == 0.0
                else self._channel_raw(c, histories)
                for c, weight in enumerate(self.weights)]  # fmt: skip

    def _channel_raw(self, c: int, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """Channel `c`'s raw scores over `items` (an item it does not know: the history's lowest)."""
        return self._in_blend_order(c, np.asarray(self.channels[c].batch_scores(histories), dtype=np.float32))

    def _in_blend_order(self, c: int, raw: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
        """Rows of channel `c`'s scores `raw` (the channel's own item order) at the blend's
        `columns` (every item when None); an item the channel does not know takes its row's lowest
        score."""
        gather = self._gather[c] if columns is None else self._gather[c][columns]
        if columns is None and len(gather) == raw.shape[1] and np.array_equal(gather, np.arange(len(gather))):
            return raw  # the channel lists `items` in the same order
        picked = raw[:, np.maximum(gather, 0)] if raw.shape[1] else np.zeros((len(raw), len(gather)), np.float32)
        unknown = gather < 0
        if unknown.any():
            picked[:, unknown] = raw.min(axis=1, keepdims=True) if raw.shape[1] else 0.0
        return picked

    def batch_scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        matrices = [normalise(raw, self.normalisation) for raw in self._raw(histories, weighted_only=True)]
        return sum((w * m for w, m in zip(self.weights, matrices)), np.zeros((len(histories), len(self.ids)), np.float32))

    def scores(self, history: Sequence[str]) -> np.ndarray:
        return self.batch_scores([history])[0]

    def recall(self, history: Sequence[str], k: int, exclude: Collection[str] = ()) -> list[RecallCandidate]:
        """The `k` best unseen items, each tagged with the channel contributing most to its score
        (no reason: `reasons` explains the items shown)."""
        return self.recall_many([history], k, exclude)[0]

    def recall_many(self, histories: Sequence[Sequence[str]], k: int, exclude: Collection[str] = ()) -> list[list[RecallCandidate]]:
        """`recall` for several histories, each channel scoring them in one batch; each candidate is
        tagged with the channel contributing most to its score."""
        matrices = [normalise(r, self.normalisation) for r in self._raw(histories, weighted_only=True)]
        return [self._top([m[row] for m in matrices], history, k, exclude) for row, history in enumerate(histories)]

    def _top(self, normed: list[np.ndarray], history: Sequence[str], k: int, exclude: Collection[str]) -> list[RecallCandidate]:
        blended = sum((w * m for w, m in zip(self.weights, normed)), np.zeros(len(self.ids), np.float32))
        blocked = [self._position[i] for i in {*history, *exclude} if i in self._position]
        blended[blocked] = -np.inf
        top = stable_top(blended, k)
        top = top[np.isfinite(blended[top])]
        leading = np.argmax(np.stack([w * m[top] for w, m in zip(self.weights, normed)]), axis=0)
        names = [channel.name for channel in self.channels]
        return [RecallCandidate(self._names[j], score, {names[c]})
                for j, score, c in zip(top.tolist(), blended[top].tolist(), leading.tolist())]  # fmt: skip

    def reasons(self, history: Sequence[str], items: Sequence[str], recent: int | None = None) -> list[str | None]:
        """Per item of `items`, the history item whose removal takes the most from its blended
        score (module docstring); None for an item the blend does not know or no removal lowers.

        `recent` bounds the cost: only the last `recent` history items are tried as removals (None:
        every item a channel reads). Each removal re-scores every channel that reads the item, so
        a sequential channel reading 50 items costs 50 forward passes without the bound."""
        return self.reasons_many([history], [items], recent)[0]

    def reasons_many(self, histories: Sequence[Sequence[str]], items: Sequence[Sequence[str]], recent: int | None = None,
                     batch: int = REASONS_BATCH) -> list[list[str | None]]:  # fmt: skip
        """`reasons` for each history and its items, every channel re-scoring the removals of up
        to `batch` histories in one call (a call's own cost, a forward pass's setup or a sparse
        product's, then falls on many histories)."""
        out: list[list[str | None]] = []
        for start in range(0, len(histories), batch):
            out += self._reasons_batch(histories[start : start + batch], items[start : start + batch], recent)
        return out

    def _reasons_batch(self, histories: Sequence[Sequence[str]], items: Sequence[Sequence[str]],
                       recent: int | None) -> list[list[str | None]]:  # fmt: skip
        users = [_Removals.of(self, list(history), wanted, recent) for history, wanted in zip(histories, items)]
        for c, weight in enumerate(self.weights):
            if weight == 0.0:
                continue
            variants: list[list[str]] = []
            spans: list[tuple[_Removals, int, list[int]]] = []
            for user in users:
                changed = user.changed(self.channels[c]) if user.removable else []
                if changed:
                    spans.append((user, len(variants), changed))
                    variants += [user.history] + [user.without(r) for r in changed]
            if not variants:
                continue
            # In the channel's own order: only each base row is needed whole (the normalisation's
            # scale), the variants only at the items asked about.
            raw = np.asarray(self.channels[c].batch_scores(variants), dtype=np.float32)
            for user, first, changed in spans:
                block = raw[first : first + 1 + len(changed)]
                base = self._in_blend_order(c, block[:1])[0]
                values = self._in_blend_order(c, block, user.known)
                scaled = on_scale(base.astype(np.float64), values.astype(np.float64), user.known, self.normalisation)
                user.drop[changed] += float(weight) * (scaled[0] - scaled[1:])
        return [user.named() for user in users]

    def shown_keys(self, history: Sequence[str], items: Sequence[str], scores: np.ndarray,
                   recent: int | None = None) -> tuple[np.ndarray, list[str | None]]:  # fmt: skip
        """Keys whose stable descending sort is the shown order of `items` (unseen, best first by
        their blended `scores`): the first `reason_depth` re-ordered by `reason_penalty`
        (`reason_selection.selection_keys`; 0: the keys are the scores); and the reasons (`recent`
        as in `reasons`) of those first items, None for the items after them (not computed)."""
        return self.shown_keys_many([history], [items], [scores], recent)[0]

    def shown_keys_many(self, histories: Sequence[Sequence[str]], items: Sequence[Sequence[str]],
                        scores: Sequence[np.ndarray], recent: int | None = None) -> list[tuple[np.ndarray, list[str | None]]]:  # fmt: skip
        """`shown_keys` for each history, its items and their scores, the reasons from one
        `reasons_many` call."""
        heads = [list(listed[: self.reason_depth]) if self.reason_penalty > 0 else [] for listed in items]
        reasons = self.reasons_many(histories, heads, recent)
        return [(selection_keys(row, why, self.reason_penalty), why + [None] * (len(listed) - len(why)))
                for listed, row, why in zip(items, scores, reasons)]  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """Normalisation, weight per channel, validation NDCG@10 (None when not fitted) and the
        reason selection's penalty and depth, for a manifest."""
        return {"normalisation": self.normalisation,
                "weights": {c.name: float(w) for c, w in zip(self.channels, self.weights)},
                "validation_ndcg10": None if np.isnan(self.validation_ndcg) else float(self.validation_ndcg),
                "reason_penalty": self.reason_penalty, "reason_depth": self.reason_depth}  # fmt: skip

    def save(self, folder: Path) -> None:
        """Write the channels and the fitted blend under `folder`."""
        specs = save_channels(self.channels, folder / "channels")
        payload = self.summary() | {"channels": specs, "weight_list": self.weights.tolist(), "items": self.ids.tolist()}
        (folder / BLEND_FILE).write_text(json.dumps(payload), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> BlendedRecall:
        """The blend `save` wrote."""
        saved = json.loads((folder / BLEND_FILE).read_text(encoding="utf-8"))
        channels = load_channels(saved["channels"], folder / "channels")
        score = saved["validation_ndcg10"]
        return cls(channels, np.array(saved["weight_list"]), saved["items"], saved["normalisation"],
                   float("nan") if score is None else score, reason_penalty=saved.get("reason_penalty", 0.0),
                   reason_depth=saved.get("reason_depth", SELECTION_DEPTH))  # fmt: skip

    def recommend(self, history: Sequence[str], k: int) -> list[str]:
        return [candidate.item_id for candidate in self.recall(history, k)]


def blend_ndcg(matrices: Sequence[np.ndarray], weights: Sequence[float], targets: np.ndarray, masked: np.ndarray,
               k: int = 10) -> float:  # fmt: skip
    """Mean NDCG@k of `targets` (column per row) under the weighted sum of `matrices`, `masked`
    (boolean, same shape) items excluded; a tie counts half a place (the expected random rank)."""
    blended = sum(w * m for w, m in zip(weights, matrices) if w) if any(weights) else np.zeros_like(matrices[0])
    return _target_ndcg(blended, targets, masked, k)


def _target_ndcg(blended: np.ndarray, targets: np.ndarray, masked: np.ndarray, k: int = 10) -> float:
    blended = np.where(masked, -np.inf, blended)
    value = blended[np.arange(len(targets)), targets][:, None]
    rank = 1.0 + (blended > value).sum(axis=1) + ((blended == value).sum(axis=1) - 1) / 2.0
    gains = np.where(rank <= k, 1.0 / np.log2(rank + 1.0), 0.0)
    return float(gains.mean())


def coordinate_ascent(objective: Callable[[np.ndarray], float], start: np.ndarray, grid: Sequence[float] = WEIGHT_GRID,
                      rounds: int = 3, along: Callable[[np.ndarray, int], Callable[[float], float]] | None = None,
                      ) -> tuple[np.ndarray, float]:  # fmt: skip
    """(weights, objective there): from `start`, each round tries every value of `grid` for one
    weight at a time, the others fixed, and keeps a change only if it raises `objective`; stops
    after `rounds` rounds or a round without a change. `along(weights, c)`, when given, is
    `objective` as a function of weight `c` alone with the others at `weights` (the same values
    by a cheaper path: what the trials of one weight share is set up once)."""
    weights = np.asarray(start, dtype=np.float64).copy()
    best = objective(weights)
    for _ in range(rounds):
        moved = False
        for c in range(len(weights)):
            fixed = weights.copy()
            of_c = along(fixed, c) if along is not None else (lambda value: objective(_with(fixed, c, value)))
            for value in grid:
                score = of_c(value)
                if score > best + 1e-12:  # a move changes weight c only: `of_c` stays valid
                    best, weights, moved = score, _with(weights, c, value), True
        if not moved:
            break
    return weights, best


def _with(weights: np.ndarray, c: int, value: float) -> np.ndarray:
    trial = weights.copy()
    trial[c] = value
    return trial


def fit_weights(matrices: Sequence[np.ndarray], targets: np.ndarray, masked: np.ndarray,
                grid: Sequence[float] = WEIGHT_GRID, rounds: int = 3) -> tuple[np.ndarray, float]:  # fmt: skip
    """`coordinate_ascent` on NDCG@10 from equal weights. The trials of one weight share the
    weighted sum of the other channels: one product per trial instead of one per channel."""

    def along(weights: np.ndarray, c: int) -> Callable[[float], float]:
        others = sum((w * m for i, (w, m) in enumerate(zip(weights, matrices)) if w and i != c), np.zeros_like(matrices[0]))
        return lambda value: _target_ndcg(others + value * matrices[c] if value else others, targets, masked)

    return coordinate_ascent(lambda weights: blend_ndcg(matrices, weights, targets, masked), np.ones(len(matrices)), grid, rounds,
                             along)  # fmt: skip


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


@dataclass
class _Removals:
    """One history's leave-one-out bookkeeping for `BlendedRecall.reasons_many`: the items tried
    as removals, the asked items' columns, and each removal's drop of each asked item's score."""

    history: list[str]
    columns: np.ndarray
    removable: list[str]
    drop: np.ndarray

    @classmethod
    def of(cls, blend: BlendedRecall, history: list[str], items: Sequence[str], recent: int | None) -> _Removals:
        columns = np.array([blend._position.get(item, -1) for item in items], dtype=int)
        tried = set(history[-recent:]) if recent else set(history)
        read = [h for c, weight in enumerate(blend.weights) if weight != 0.0 for h in blend.channels[c].reads(history)]
        removable = list(dict.fromkeys(h for h in read if h in tried)) if (columns >= 0).any() else []
        return cls(history, columns, removable, np.zeros((len(removable), len(items)), np.float64))

    @property
    def known(self) -> np.ndarray:
        return np.maximum(self.columns, 0)

    def changed(self, channel: ScoredChannel) -> list[int]:
        """The removals that change `channel`'s scores (the items it reads)."""
        members = set(channel.reads(self.history))
        return [r for r, h in enumerate(self.removable) if h in members]

    def without(self, r: int) -> list[str]:
        return [item for item in self.history if item != self.removable[r]]

    def named(self) -> list[str | None]:
        if not self.removable:
            return [None] * len(self.columns)
        best = np.argmax(self.drop, axis=0)
        # float32 channel sums differ by round-off when a removal leaves an item's evidence as it was
        return [self.removable[b] if col >= 0 and self.drop[b, i] > LEAST_DROP else None
                for i, (b, col) in enumerate(zip(best, self.columns))]  # fmt: skip
