"""Specific reasons (issue 20 item 5): each recalled item names the history item most similar to
it, and the explanation uses that seed, so a list of items near different history items gives as
many different reasons even when the ranker's attention picks one history item for all."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.embeddings.item_embeddings import ItemEmbeddings
from models.evaluation import ItemKNNRecommender
from models.retrieval.faiss_index import FaissIndex
from models.retrieval.multichannel import EmbeddingNeighbourChannel, ItemCFChannel, MultiChannelRecall
from services.recommend.explain import explain
from services.recommend.types import Candidate


def _clusters(seed: int = 0) -> ItemEmbeddings:
    """10 clusters of 4 items (h<c> and its neighbours n<c>_<j>) around orthogonal directions."""
    rng = np.random.default_rng(seed)
    ids, vectors = [], []
    for c in range(10):
        for name in [f"h{c}", *(f"n{c}_{j}" for j in range(3))]:
            ids.append(name)
            vectors.append(np.eye(10)[c] + 0.05 * rng.normal(size=10))
    return ItemEmbeddings(np.array(ids), np.array(vectors, np.float32))


class _Titles:
    def titles(self, item_ids: Sequence[str]) -> dict[str, str]:
        return {item: f"Film {item}" for item in item_ids}


def test_each_candidate_names_its_most_similar_history_item() -> None:
    embeddings = _clusters()
    index = FaissIndex(10, "exact")
    index.add(embeddings.ids.tolist(), embeddings.vectors)
    history = [f"h{c}" for c in range(10)]
    channel = EmbeddingNeighbourChannel("item2vec", embeddings, index, recent=10)
    found = channel.recall(history, 20)
    unit = embeddings.normalized()
    row = embeddings.position()
    for item, _, seed in found:  # type: ignore[misc]
        similarity = {h: float(unit[row[h]] @ unit[row[item]]) for h in history}
        assert seed == max(similarity, key=similarity.get)  # type: ignore[arg-type]
    candidates = [Candidate(c.item_id, c.score, c.channels, c.because)
                  for c in MultiChannelRecall([channel]).recall(history, 10)]  # fmt: skip
    # The ranker's attention names h0 for every candidate; the reasons stay specific.
    reasons = explain(candidates, ["h0"] * len(candidates), _Titles())  # type: ignore[arg-type]
    clusters = {c.item_id[1] for c in candidates}
    assert len(set(reasons)) == len(clusters) >= 5
    assert all(r == f"because you watched Film h{c.item_id[1]}" for r, c in zip(reasons, candidates))


def test_item_cf_neighbours_name_the_history_item_they_co_occur_with() -> None:
    sequences = [["a", "x"], ["a", "x"], ["b", "y"], ["b", "y"], ["a", "b"]]
    channel = ItemCFChannel(ItemKNNRecommender(sequences))
    assert {item: seed for item, _, seed in channel.recall(["a", "b"], 2)} == {"x": "a", "y": "b"}  # type: ignore[misc]
