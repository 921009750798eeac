"""Baselines every model is compared with: most-popular and item-based kNN, over the item cosine
or over sequential rules (which items follow which)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy import sparse

from models.retrieval.sequential import item_index


class PopularityRecommender:
    """Items by number of training interactions, the user's history excluded."""

    def __init__(self, sequences: Sequence[Sequence[str]]) -> None:
        counts = Counter(item for sequence in sequences for item in sequence)
        self.ranking = [item for item, _ in counts.most_common()]
        self.counts = counts
        self.ids = np.array(self.ranking, dtype=str)
        self._scores = np.array([counts[item] for item in self.ranking], dtype=np.float64)

    def scores(self, history: Sequence[str]) -> np.ndarray:
        """Training counts of `ids` (the same for every history)."""
        return self._scores.copy()

    def top(self, k: int) -> list[tuple[str, float]]:
        return [(item, float(self.counts[item])) for item in self.ranking[:k]]

    def recommend(self, history: Sequence[str], k: int) -> list[str]:
        seen = set(history)
        return [item for item in self.ranking[: k + len(seen)] if item not in seen][:k]


class ItemCosine:
    """Cosine similarity between the item columns of the binary user-item matrix of `sequences`,
    self-similarity removed (`similarity[i, j]`, rows and columns in the order of `ids`)."""

    kind = "itemknn"

    def __init__(self, sequences: Sequence[Sequence[str]]) -> None:
        self.ids, self.position = item_index(sequences)
        rows = np.concatenate([np.full(len(set(s)), u) for u, s in enumerate(sequences)]) if sequences else []
        cols = [self.position[item] for sequence in sequences for item in dict.fromkeys(sequence)]
        matrix = sparse.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(sequences), len(self.ids)))
        norms = np.sqrt(np.asarray(matrix.sum(axis=0)).ravel())
        normalized = matrix @ sparse.diags(1.0 / np.maximum(norms, 1e-12))
        self.similarity = (normalized.T @ normalized).tocsr()
        self.similarity.setdiag(0.0)
        self.similarity.eliminate_zeros()


class ItemTransitions:
    """Sequential rules (Ludewig & Jannach, "Evaluation of session-based recommendation
    algorithms", UMUAI 2018, "SR"): the weight of the rule h → j is Σ 1/d over every time j follows
    h at distance d ≤ `window` in a training sequence (`similarity[h, j]`, rows and columns in the
    order of `ids`). Directed, unlike the cosine: it says what comes *after* an item, which
    leave-last-out asks for. Unnormalised, as in the paper; self-rules removed."""

    kind = "sr"

    def __init__(self, sequences: Sequence[Sequence[str]], window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.ids, self.position = item_index(sequences)
        rows, cols, weights = [], [], []
        for sequence in sequences:
            positions = np.array([self.position[item] for item in sequence], dtype=np.int64)
            for distance in range(1, min(window, len(positions) - 1) + 1):
                rows.append(positions[:-distance])
                cols.append(positions[distance:])
                weights.append(np.full(len(positions) - distance, 1.0 / distance))
        shape = (len(self.ids), len(self.ids))
        if rows:  # duplicate (h, j) pairs are summed by the constructor
            self.similarity = sparse.csr_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=shape)
        else:
            self.similarity = sparse.csr_matrix(shape)
        self.similarity.setdiag(0.0)
        self.similarity.eliminate_zeros()


class ItemKNNRecommender:
    """Item-based collaborative filtering (Sarwar et al. 2001): each item keeps its `neighbours`
    most similar items; a user's score for item j is Σ_{i ∈ H} sim(i, j) over H, the user's last
    `recent` history items (all of them when None). The similarity is the cosine between item
    columns of the binary user-item matrix (`ItemCosine`), or sequential rules (`ItemTransitions`:
    the same scoring over rule weights, SR in Ludewig & Jannach 2018); `kind` says which. Both
    are tuned on validation under the protocol (`models.evaluation.protocol`): a short recent
    window suits sequential data."""

    def __init__(self, sequences: Sequence[Sequence[str]], neighbours: int = 100, recent: int | None = None,
                 similarity: ItemCosine | ItemTransitions | None = None) -> None:  # fmt: skip
        """`similarity`: the item similarities of these `sequences` when already computed (a
        tuning grid computes them once for all its points); the cosine when None."""
        if neighbours < 1 or (recent is not None and recent < 1):
            raise ValueError(f"neighbours and recent must be >= 1, got {neighbours} and {recent}")
        self.recent = recent
        similarity = similarity or ItemCosine(sequences)
        self.kind = similarity.kind
        self.ids, self.position = similarity.ids, similarity.position
        self.similarity = self._keep_top(similarity.similarity, neighbours)
        self._ranked: dict[int, list[tuple[str, float]]] = {}

    @classmethod
    def from_similarity(cls, ids: Sequence[str], similarity: sparse.csr_matrix, recent: int | None,
                        kind: str = ItemCosine.kind) -> ItemKNNRecommender:  # fmt: skip
        """A fitted model from its saved parts (`ids`, the top-`neighbours` `similarity` rows)."""
        model = cls.__new__(cls)
        model.recent, model.kind, model.ids = recent, kind, np.array(list(ids), dtype=str)
        model.position = {item: i for i, item in enumerate(model.ids.tolist())}
        model.similarity = sparse.csr_matrix(similarity)
        model._ranked = {}
        return model

    @staticmethod
    def _keep_top(similarity: sparse.csr_matrix, neighbours: int) -> sparse.csr_matrix:
        rows, cols, values = [], [], []
        for row in range(similarity.shape[0]):
            start, end = similarity.indptr[row], similarity.indptr[row + 1]
            top = np.argsort(-similarity.data[start:end])[:neighbours]
            rows.append(np.full(len(top), row))
            cols.append(similarity.indices[start:end][top])
            values.append(similarity.data[start:end][top])
        return sparse.csr_matrix(
            (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=similarity.shape
        )

    def neighbours(self, item: str, k: int) -> list[tuple[str, float]]:
        """The `k` most similar items to `item` ([] when unknown)."""
        row = self.position.get(item)
        if row is None:
            return []
        ranked = self._ranked.get(row)
        if ranked is None:  # a row is sorted once: recall asks for the same seeds again and again
            start, end = self.similarity.indptr[row], self.similarity.indptr[row + 1]
            top = start + np.argsort(-self.similarity.data[start:end])
            ranked = self._ranked[row] = list(zip(self.ids[self.similarity.indices[top]].tolist(), self.similarity.data[top].tolist()))
        return ranked[:k]

    def scores(self, history: Sequence[str]) -> np.ndarray:
        """Σ sim(i, ·) over the last `recent` history items, aligned with `ids`."""
        window = list(history)[-self.recent :] if self.recent else history
        rows = [self.position[item] for item in window if item in self.position]
        return np.asarray(self.similarity[rows].sum(axis=0)).ravel() if rows else np.zeros(len(self.ids))

    def recommend(self, history: Sequence[str], k: int) -> list[str]:
        scores = self.scores(history)
        scores[[self.position[item] for item in history if item in self.position]] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        return [str(self.ids[i]) for i in top if np.isfinite(scores[i])]
