"""Multi-channel recall: several small channels behind one interface, merged with
de-duplication, per-channel quotas and channel tags on every candidate.

Channels here: neighbours of the user's recent items in an embedding index (Item2vec, DeepWalk,
Node2vec), the user's own vector in that index, co-occurrence (item-CF) neighbours, and a
popular/trending list read from any source callable (the feature store's list in production,
training counts offline). The API adds its serving-only channels (category neighbours from the
catalog) as further implementations of `RecallChannel` and merges them all here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from models.embeddings.item_embeddings import ItemEmbeddings
from models.embeddings.user_vectors import user_vector
from models.evaluation.baselines import ItemKNNRecommender
from models.retrieval.base import RecallIndex, SearchResult


# (item, score), or (item, score, because) where `because` names the seed behind the item
# (a history item or a category) for the explanation.
Recalled = tuple[str, float] | tuple[str, float, str]


@dataclass
class RecallCandidate:
    item_id: str
    score: float
    channels: set[str] = field(default_factory=set)
    because: str | None = None


class RecallChannel(Protocol):
    name: str

    def recall(self, history: Sequence[str], k: int) -> list[Recalled]:
        """Up to `k` (item, score[, because]) entries, best first, for a user whose history is
        oldest first."""
        ...


def _candidate(entry: Recalled, name: str) -> RecallCandidate:
    return RecallCandidate(entry[0], entry[1], {name}, entry[2] if len(entry) > 2 else None)  # type: ignore[misc]


def _best_unique(result: SearchResult, exclude: Collection[str], k: int) -> list[tuple[str, float]]:
    """The `k` best (item, score) of a search over one or more queries."""
    return _best_of(result.ids.ravel(), result.scores.ravel(), exclude, k)


def _merge_neighbours(lists: dict[str, list[tuple[str, float]]], exclude: Collection[str], k: int) -> list[Recalled]:
    """The `k` best (item, score, seed) over the neighbour lists of several seeds."""
    triples = [(item, score, seed) for seed, neighbours in lists.items() for item, score in neighbours]
    ids, scores, seeds = [t[0] for t in triples], np.array([t[1] for t in triples], np.float64), [t[2] for t in triples]
    return _best_of(ids, scores, exclude, k, seeds)


def _best_of(ids: Sequence[str] | np.ndarray, scores: np.ndarray, exclude: Collection[str], k: int,
             seeds: Sequence[str] | np.ndarray | None = None) -> list[Recalled]:  # fmt: skip
    """Each item once at its best score, best first, skipping `exclude`; one sort in numpy, then
    Python touches only the entries it keeps or skips. With `seeds` (the query behind each
    entry), each item also names the seed that found it at that best score: the history item
    most similar to it, which its explanation names."""
    picked: list[Recalled] = []
    taken = set(exclude)
    for index in np.argsort(-scores, kind="stable").tolist():
        item = str(ids[index])
        if item not in taken:
            taken.add(item)
            picked.append((item, float(scores[index])) if seeds is None else (item, float(scores[index]), str(seeds[index])))
            if len(picked) == k:
                break
    return picked


class EmbeddingNeighbourChannel:
    """Nearest neighbours, in one embedding index, of each of the user's `recent` last items;
    an item reached from several seeds keeps its best similarity."""

    def __init__(self, name: str, embeddings: ItemEmbeddings, index: RecallIndex, recent: int = 5) -> None:
        self.name, self.embeddings, self.index, self.recent = name, embeddings, index, recent
        self._position = embeddings.position()
        self._unit = embeddings.normalized()

    def recall(self, history: Sequence[str], k: int) -> list[Recalled]:
        """Neighbours tagged with the seed (history item) they are most similar to."""
        seeds = [item for item in list(history)[-self.recent :] if item in self._position]
        if not seeds:
            return []
        result = self.index.search(self._unit[[self._position[item] for item in seeds]], min(k + len(history), len(self.index)))
        because = np.repeat(np.array(seeds, dtype=object), result.ids.shape[1])
        return _best_of(result.ids.ravel(), result.scores.ravel(), {*history, ""}, k, because)


class UserVectorChannel:
    """Nearest neighbours of the user's vector (decayed mean of the recent items' embeddings,
    `models.embeddings.user_vectors`) in one embedding index: one search per request."""

    def __init__(self, name: str, embeddings: ItemEmbeddings, index: RecallIndex, max_items: int = 50) -> None:
        self.name, self.embeddings, self.index, self.max_items = name, embeddings, index, max_items
        self._position = embeddings.position()
        self._unit = embeddings.normalized()

    def recall(self, history: Sequence[str], k: int) -> list[tuple[str, float]]:
        vector = user_vector(self.embeddings, history, max_items=self.max_items, position=self._position,
                             normalized=self._unit)  # fmt: skip
        if vector is None:
            return []
        result = self.index.search(vector[None, :], min(k + len(history), len(self.index)))
        return _best_unique(result, {*history, ""}, k)


class EmbeddingSimilarItems:
    """Item-to-item neighbours in one embedding index (for `/v1/items/{id}/similar`)."""

    def __init__(self, embeddings: ItemEmbeddings, index: RecallIndex) -> None:
        self.embeddings, self.index = embeddings, index
        self._position = embeddings.position()
        self._unit = embeddings.normalized()

    def similar(self, item_id: str, k: int) -> list[tuple[str, float]] | None:
        """Up to `k` neighbours (the item itself excluded), or None if the item has no embedding."""
        row = self._position.get(item_id)
        if row is None:
            return None
        result = self.index.search(self._unit[row : row + 1], min(k + 1, len(self.index)))
        return _best_unique(result, {item_id, ""}, k)


class ItemCFChannel:
    """Co-occurrence (item-CF) neighbours of the user's recent items."""

    name = "itemcf"

    def __init__(self, model: ItemKNNRecommender, recent: int = 5) -> None:
        self.model, self.recent = model, recent

    def recall(self, history: Sequence[str], k: int) -> list[Recalled]:
        """Neighbours tagged with the seed (history item) they co-occur with most."""
        lists = {item: self.model.neighbours(item, k + len(history)) for item in list(history)[-self.recent :]}
        return _merge_neighbours(lists, history, k)


class PopularChannel:
    """Popular or trending items from `source(n) -> [(item, score)]`, history excluded."""

    def __init__(self, source: Callable[[int], list[tuple[str, float]]], name: str = "popular") -> None:
        self.source, self.name = source, name

    def recall(self, history: Sequence[str], k: int) -> list[tuple[str, float]]:
        seen = set(history)
        return [(item, score) for item, score in self.source(k + len(seen)) if item not in seen][:k]


class MultiChannelRecall:
    """Runs every channel and merges by rank: round r takes each channel's r-th best new item in
    channel order, so every channel's best items reach the top of the list (scores of different
    channels are not comparable; ranks are). Channel c contributes at most `quotas[c]` items
    while any channel is under its quota; the remaining slots then go round-robin to leftovers.
    An item found by several channels appears once, tagged with all of them."""

    def __init__(self, channels: Sequence[RecallChannel], quotas: dict[str, int] | None = None) -> None:
        if not channels:
            raise ValueError("multi-channel recall needs at least one channel")
        self.channels = list(channels)
        self.quotas = quotas or {}

    def recall(self, history: Sequence[str], k: int, exclude: Collection[str] = ()) -> list[RecallCandidate]:
        """Up to `k` candidates for a user whose history is oldest first; items in `exclude`
        (e.g. everything the user has seen, beyond the history window) never take a slot."""
        default_quota = -(-k // len(self.channels))
        results = {c.name: c.recall(history, max(self.quotas.get(c.name, default_quota), k)) for c in self.channels}
        if exclude:
            results = {name: [e for e in found if e[0] not in exclude] for name, found in results.items()}
        merged: dict[str, RecallCandidate] = {}
        quotas = {name: self.quotas.get(name, default_quota) for name in results}
        self._interleave(results, merged, k, quotas)
        self._interleave(results, merged, k, None)
        for name, found in results.items():  # tag items a later channel also found
            for entry in found:
                candidate = merged.get(entry[0])
                if candidate is not None:
                    candidate.channels.add(name)
                    if candidate.because is None and len(entry) > 2:
                        candidate.because = entry[2]  # type: ignore[misc]
        return list(merged.values())[:k]

    @staticmethod
    def _interleave(results: dict[str, list[Recalled]], merged: dict[str, RecallCandidate], k: int,
                    quotas: dict[str, int] | None) -> None:  # fmt: skip
        """Rounds over the channels, each taking its next item not merged yet, until `k` items,
        every channel at its quota (when `quotas` is given) or every list used up."""
        cursors = dict.fromkeys(results, 0)
        taken = dict.fromkeys(results, 0)
        while len(merged) < k:
            active = [name for name in results
                      if cursors[name] < len(results[name]) and (quotas is None or taken[name] < quotas[name])]  # fmt: skip
            if not active:
                return
            for name in active:
                found = results[name]
                while cursors[name] < len(found) and found[cursors[name]][0] in merged:
                    cursors[name] += 1
                if cursors[name] < len(found) and len(merged) < k:
                    merged[found[cursors[name]][0]] = _candidate(found[cursors[name]], name)
                    cursors[name] += 1
                    taken[name] += 1

    def recommend(self, history: Sequence[str], k: int) -> list[str]:
        return [candidate.item_id for candidate in self.recall(history, k)]


class ChannelRecommender:
    """One channel as a `Recommender`, so each channel is evaluated on its own."""

    def __init__(self, channel: RecallChannel) -> None:
        self.channel = channel

    def recommend(self, history: Sequence[str], k: int) -> list[str]:
        return [entry[0] for entry in self.channel.recall(history, k)]
