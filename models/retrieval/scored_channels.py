"""Recall channels that score every item for a history: the inputs of the learned blend
(`models.retrieval.blend`).

- `ItemKNNScores`: the tuned item-based kNN (`models.evaluation.baselines.ItemKNNRecommender`,
  the same model and settings as the protocol's peer; other windows over the same similarities
  are further channels): score Σ_{h in window} sim(h, j), over the item cosine or over sequential
  rules (`ItemTransitions`: which items follow which).
- `EmbeddingScores`: mean cosine between an item's embedding (Item2vec, DeepWalk, ...) and the
  last `recent` history items'.
- `SequentialScores`: GRU4Rec's next-item logits (`models.retrieval.sequential`).

Each channel says which history items its score reads (`reads`: removing any other item leaves
the score unchanged), so the blend's reasons (leave-one-out, `BlendedRecall.reasons`) re-score
only the histories a removal changes. `save_channels` / `load_channels` write and read a list of
channels (each distinct model once) for serving.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy import sparse

from models.evaluation.baselines import ItemCosine, ItemKNNRecommender
from models.retrieval.sequential import GRU4Rec


class ScoredChannel(Protocol):
    """Scores of `ids` for each history, and the history items a score depends on."""

    name: str
    ids: np.ndarray

    def batch_scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """(len(histories), len(ids)) scores, higher is better; histories oldest first."""
        ...

    def reads(self, history: Sequence[str]) -> list[str]:
        """The items of `history` (oldest first) its score reads, known to the channel or not:
        removing any other item of `history` leaves the score unchanged."""
        ...


def _last(history: Sequence[str], recent: int | None) -> list[str]:
    """The last `recent` items of `history` (None: all of it)."""
    return list(history)[-recent:] if recent else list(history)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class ItemKNNScores:
    """A tuned ItemKNN (cosine or sequential rules) as a scored channel: its similarities over the
    last `recent` history items (default: the model's own tuned window; None with `whole_history`:
    every item), named after the model's kind and the window ("itemknn", "sr_last1", ...)."""

    def __init__(self, model: ItemKNNRecommender, recent: int | None = None, whole_history: bool = False) -> None:
        self.model = model
        self.ids = model.ids
        self.recent = None if whole_history else (recent or model.recent)
        self.name = model.kind if self.recent == model.recent else f"{model.kind}_last{self.recent or 'all'}"

    def reads(self, history: Sequence[str]) -> list[str]:
        return _last(history, self.recent)

    def _window(self, history: Sequence[str]) -> list[str]:
        return [item for item in self.reads(history) if item in self.model.position]

    def batch_scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """One sparse product for the batch: (histories × items window counts) @ similarity."""
        windows = [[self.model.position[item] for item in self._window(history)] for history in histories]
        rows = np.repeat(np.arange(len(windows)), [len(window) for window in windows])
        columns = np.fromiter((column for window in windows for column in window), dtype=np.int64, count=len(rows))
        counts = sparse.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(len(windows), len(self.ids)))
        return (counts @ self.model.similarity).toarray()


class EmbeddingScores:
    """score(j) = mean_{h in last `recent`} cos(e_h, e_j) over item embeddings `vectors[i]` of `ids[i]`."""

    def __init__(self, name: str, ids: np.ndarray, vectors: np.ndarray, recent: int | None = 10) -> None:
        if recent is not None and recent < 1:
            raise ValueError(f"recent must be >= 1 (or None for the whole history), got {recent}")
        self.name, self.ids, self.recent = name, np.asarray(ids, dtype=str), recent
        self.unit = _unit(np.asarray(vectors, dtype=np.float32))
        self.position = {item: i for i, item in enumerate(self.ids.tolist())}

    def reads(self, history: Sequence[str]) -> list[str]:
        return _last(history, self.recent)

    def _window(self, history: Sequence[str]) -> list[str]:
        return [item for item in self.reads(history) if item in self.position]

    def batch_scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        queries = np.zeros((len(histories), self.unit.shape[1]), np.float32)
        for row, history in enumerate(histories):
            window = self._window(history)
            if window:
                queries[row] = self.unit[[self.position[item] for item in window]].mean(axis=0)
        return queries @ self.unit.T


class SequentialScores:
    """GRU4Rec's scores over the last `max_len` history items."""

    name = "gru4rec"

    def __init__(self, model: GRU4Rec) -> None:
        self.model = model
        self.ids = model.ids

    def batch_scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        return self.model.batch_scores(histories)

    def reads(self, history: Sequence[str]) -> list[str]:
        return list(history)[-self.model.max_len :]


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
    saved = {"ids": model.ids.tolist(), "recent": model.recent, "kind": model.kind}
    (folder / "model.json").write_text(json.dumps(saved), encoding="utf-8")


def _load_knn(folder: Path) -> ItemKNNRecommender:
    saved = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    return ItemKNNRecommender.from_similarity(saved["ids"], sparse.load_npz(folder / "similarity.npz"), saved["recent"],
                                              saved.get("kind", ItemCosine.kind))  # fmt: skip


def _save_vectors(channel: EmbeddingScores, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "vectors.npy", channel.unit, allow_pickle=False)
    (folder / "ids.json").write_text(json.dumps(channel.ids.tolist()), encoding="utf-8")


def _load_vectors(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array(json.loads((folder / "ids.json").read_text(encoding="utf-8")), dtype=str)
    return ids, np.load(folder / "vectors.npy", allow_pickle=False)
