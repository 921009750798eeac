"""Recall channels that score every item for a history, each able to name the history item most
responsible for a candidate: the inputs of the learned blend (`models.retrieval.blend`).

- `ItemKNNScores`: the tuned item-based kNN (`models.evaluation.baselines.ItemKNNRecommender`,
  the same model and settings as the protocol's peer; other windows over the same similarities
  are further channels); responsible = the window item with the largest term sim(h, j) of the
  score Σ_h sim(h, j).
- `EmbeddingScores`: mean cosine between an item's embedding (Item2vec, DeepWalk, ...) and the
  last `recent` history items'; responsible = the most similar of them.
- `SequentialScores`: GRU4Rec's next-item logits (`models.retrieval.sequential`); responsible =
  the history item most similar to the candidate in GRU4Rec's input embedding (the GRU state
  itself is not a sum over items, so similarity stands in for attribution).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from models.evaluation.baselines import ItemKNNRecommender
from models.retrieval.sequential import GRU4Rec


class ScoredChannel(Protocol):
    """Scores of `ids` for each history, and per candidate the history item behind it."""

    name: str
    ids: np.ndarray

    def batch_scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """(len(histories), len(ids)) scores, higher is better; histories oldest first."""
        ...

    def responsible(self, history: Sequence[str], items: Sequence[str]) -> list[str | None]:
        """Per item, the history item most responsible for its score (None: none is)."""
        ...


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _most_similar(unit: np.ndarray, position: dict[str, int], window: Sequence[str], items: Sequence[str]) -> list[str | None]:
    seeds = [item for item in window if item in position]
    if not seeds:
        return [None] * len(items)
    known = [position.get(item) for item in items]
    rows = unit[[position[s] for s in seeds]]
    out: list[str | None] = []
    for row in known:
        out.append(None if row is None else seeds[int(np.argmax(rows @ unit[row]))])
    return out


class ItemKNNScores:
    """The tuned ItemKNN as a scored channel: its similarities over the last `recent` history
    items (default: the model's own tuned window; None with `whole_history`: every item)."""

    def __init__(self, model: ItemKNNRecommender, recent: int | None = None, whole_history: bool = False) -> None:
        self.model = model
        self.ids = model.ids
        self.recent = None if whole_history else (recent or model.recent)
        self.name = "itemknn" if self.recent == model.recent else f"itemknn_last{self.recent or 'all'}"

    def _window(self, history: Sequence[str]) -> list[str]:
        recent = list(history)[-self.recent :] if self.recent else list(history)
        return [item for item in recent if item in self.model.position]

    def batch_scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        out = np.zeros((len(histories), len(self.ids)))
        for row, history in enumerate(histories):
            rows = [self.model.position[item] for item in self._window(history)]
            if rows:
                out[row] = np.asarray(self.model.similarity[rows].sum(axis=0)).ravel()
        return out

    def responsible(self, history: Sequence[str], items: Sequence[str]) -> list[str | None]:
        window = self._window(history)
        if not window:
            return [None] * len(items)
        rows = [self.model.position[item] for item in window]
        columns = [self.model.position.get(item, -1) for item in items]
        terms = self.model.similarity[rows].toarray()[:, columns]  # (window, items): sim(h, j)
        best = np.argmax(terms, axis=0)
        return [window[int(b)] if c >= 0 and terms[b, i] > 0 else None for i, (b, c) in enumerate(zip(best, columns))]


class EmbeddingScores:
    """score(j) = mean_{h in last `recent`} cos(e_h, e_j) over item embeddings `vectors[i]` of `ids[i]`."""

    def __init__(self, name: str, ids: np.ndarray, vectors: np.ndarray, recent: int | None = 10) -> None:
        if recent is not None and recent < 1:
            raise ValueError(f"recent must be >= 1 (or None for the whole history), got {recent}")
        self.name, self.ids, self.recent = name, np.asarray(ids, dtype=str), recent
        self.unit = _unit(np.asarray(vectors, dtype=np.float32))
        self.position = {item: i for i, item in enumerate(self.ids.tolist())}

    def _window(self, history: Sequence[str]) -> list[str]:
        recent = list(history)[-self.recent :] if self.recent else list(history)
        return [item for item in recent if item in self.position]

    def batch_scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        queries = np.zeros((len(histories), self.unit.shape[1]), np.float32)
        for row, history in enumerate(histories):
            window = self._window(history)
            if window:
                queries[row] = self.unit[[self.position[item] for item in window]].mean(axis=0)
        return queries @ self.unit.T

    def responsible(self, history: Sequence[str], items: Sequence[str]) -> list[str | None]:
        return _most_similar(self.unit, self.position, self._window(history), items)


class SequentialScores:
    """GRU4Rec's scores; reasons from its input embedding over the history it reads."""

    name = "gru4rec"

    def __init__(self, model: GRU4Rec) -> None:
        self.model = model
        self.ids = model.ids
        self.unit = _unit(model.item_vectors())

    def batch_scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        return self.model.batch_scores(histories)

    def responsible(self, history: Sequence[str], items: Sequence[str]) -> list[str | None]:
        window = list(history)[-self.model.max_len :]
        return _most_similar(self.unit, self.model.position, window, items)
