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

A channel whose score is a sum over history items also gives those terms (`terms`), so the blend
can credit each history item with its share of a candidate's blended score. `save_channels` /
`load_channels` write and read a list of channels (each distinct model once) for serving.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy import sparse

from models.evaluation.baselines import ItemKNNRecommender
from models.retrieval.sequential import GRU4Rec

Terms = tuple[list[str], np.ndarray]
"""History items and a (len(items), candidates) matrix: each item's additive term of the raw score."""


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

    def terms(self, history: Sequence[str], items: Sequence[str]) -> Terms | None:
        """The raw score of `items` as a sum of per-history-item terms; None when it is not one."""
        ...


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _most_similar(unit: np.ndarray, position: dict[str, int], window: Sequence[str], items: Sequence[str]) -> list[str | None]:
    seeds = [item for item in window if item in position]
    if not seeds:
        return [None] * len(items)
    known = np.array([position.get(item, -1) for item in items], dtype=int)
    best = np.argmax(unit[[position[s] for s in seeds]] @ unit[np.maximum(known, 0)].T, axis=0)
    return [seeds[int(b)] if row >= 0 else None for b, row in zip(best, known)]


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

    def terms(self, history: Sequence[str], items: Sequence[str]) -> Terms:
        """sim(h, j) for each window item h (the score is their sum); 0 for an unknown j."""
        window = self._window(history)
        columns = np.array([self.model.position.get(item, -1) for item in items], dtype=int)
        if not window:
            return window, np.zeros((0, len(items)))
        found = self.model.similarity[[self.model.position[item] for item in window]].toarray()[:, np.maximum(columns, 0)]
        return window, np.where(columns >= 0, found, 0.0)

    def responsible(self, history: Sequence[str], items: Sequence[str]) -> list[str | None]:
        window, terms = self.terms(history, items)
        if not window:
            return [None] * len(items)
        best = np.argmax(terms, axis=0)
        return [window[int(b)] if terms[b, i] > 0 else None for i, b in enumerate(best)]


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

    def terms(self, history: Sequence[str], items: Sequence[str]) -> Terms:
        """cos(e_h, e_j) / |window| for each window item h (the score is their sum)."""
        window = self._window(history)
        columns = np.array([self.position.get(item, -1) for item in items], dtype=int)
        if not window:
            return window, np.zeros((0, len(items)))
        cosines = self.unit[[self.position[item] for item in window]] @ self.unit[np.maximum(columns, 0)].T
        return window, np.where(columns >= 0, cosines / len(window), 0.0)

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

    def terms(self, history: Sequence[str], items: Sequence[str]) -> None:
        return None  # a GRU state is not a sum over history items


def save_channels(channels: Sequence[ScoredChannel], folder: Path) -> list[dict[str, Any]]:
    """Write `channels` under `folder` (each distinct model once) and return their specs, which
    `load_channels` reads back."""
    folder.mkdir(parents=True, exist_ok=True)
    saved: dict[int, str] = {}
    specs: list[dict[str, Any]] = []
    for channel in channels:
        if isinstance(channel, ItemKNNScores):
            model = _saved_once(saved, channel.model, f"itemknn{len(saved)}", lambda name: _save_knn(channel.model, folder / name))
            specs.append({"kind": "itemknn", "model": model, "recent": channel.recent, "name": channel.name})
        elif isinstance(channel, SequentialScores):
            model = _saved_once(saved, channel.model, f"gru4rec{len(saved)}", lambda name: channel.model.save(folder / name))
            specs.append({"kind": "gru4rec", "model": model, "name": channel.name})
        elif isinstance(channel, EmbeddingScores):
            model = _saved_once(saved, channel, f"embedding{len(saved)}", lambda name: _save_vectors(channel, folder / name))
            specs.append({"kind": "embedding", "model": model, "recent": channel.recent, "name": channel.name})
        else:
            raise ValueError(f"cannot save a {type(channel).__name__} channel")
    return specs


def load_channels(specs: Sequence[dict[str, Any]], folder: Path) -> list[ScoredChannel]:
    """The channels `save_channels` wrote (models shared between channels are loaded once)."""
    loaders = {"itemknn": _load_knn, "gru4rec": GRU4Rec.load, "embedding": _load_vectors}
    models: dict[str, Any] = {}
    out: list[ScoredChannel] = []
    for spec in specs:
        kind, name = spec["kind"], spec["model"]
        if kind not in loaders:
            raise ValueError(f"{folder}: unknown channel kind {kind!r}")
        if name not in models:
            models[name] = loaders[kind](folder / name)
        channel: ScoredChannel
        if kind == "itemknn":
            channel = ItemKNNScores(models[name], spec["recent"], whole_history=spec["recent"] is None)
        elif kind == "gru4rec":
            channel = SequentialScores(models[name])
        else:
            channel = EmbeddingScores(spec["name"], *models[name], spec["recent"])
        channel.name = spec["name"]
        out.append(channel)
    return out


def _saved_once(saved: dict[int, str], model: object, name: str, write: Any) -> str:
    if id(model) not in saved:
        write(name)
        saved[id(model)] = name
    return saved[id(model)]


def _save_knn(model: ItemKNNRecommender, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sparse.save_npz(folder / "similarity.npz", model.similarity.tocsr())
    (folder / "model.json").write_text(json.dumps({"ids": model.ids.tolist(), "recent": model.recent}), encoding="utf-8")


def _load_knn(folder: Path) -> ItemKNNRecommender:
    saved = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    return ItemKNNRecommender.from_similarity(saved["ids"], sparse.load_npz(folder / "similarity.npz"), saved["recent"])


def _save_vectors(channel: EmbeddingScores, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "vectors.npy", channel.unit, allow_pickle=False)
    (folder / "ids.json").write_text(json.dumps(channel.ids.tolist()), encoding="utf-8")


def _load_vectors(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array(json.loads((folder / "ids.json").read_text(encoding="utf-8")), dtype=str)
    return ids, np.load(folder / "vectors.npy", allow_pickle=False)
