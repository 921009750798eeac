"""Leave-last-one-out split, full-ranking metrics, baselines, user vectors, multi-channel merge."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.embeddings.item_embeddings import ItemEmbeddings
from models.embeddings.user_vectors import user_vector
from models.evaluation import ItemKNNRecommender, PopularityRecommender, evaluate, leave_last_one_out
from models.retrieval import FaissIndex
from models.retrieval.multichannel import EmbeddingNeighbourChannel, MultiChannelRecall, PopularChannel


class FixedRanking:
    def __init__(self, ranking: list[str]) -> None:
        self.ranking = ranking

    def recommend(self, history: list[str], k: int) -> list[str]:
        return [item for item in self.ranking if item not in history][:k]


def test_split_holds_out_each_users_last_positive_by_time() -> None:
    split = leave_last_one_out([("u1", "b", 2.0), ("u1", "a", 1.0), ("u1", "c", 3.0), ("u2", "x", 5.0)])
    assert split.train == {"u1": ["a", "b"], "u2": ["x"]}
    assert split.test == {"u1": "c"}
    assert (split.start, split.end) == (1.0, 5.0)


def test_metrics_on_a_known_ranking() -> None:
    split = leave_last_one_out([("u1", "a", 1), ("u1", "t", 2), ("u2", "a", 1), ("u2", "z", 2)])
    ranking = ["a", "x", "t"] + [f"f{i}" for i in range(60)] + ["z"]
    result = evaluate(FixedRanking(ranking), split, ["HR@1", "HR@2", "NDCG@10", "HR@50", "Recall@50"])
    # u1: "a" is history, so "t" ranks 2nd; u2: "z" ranks 62nd, outside every cut-off.
    assert result == {"HR@1": 0.0, "HR@2": 0.5, "NDCG@10": pytest.approx(0.5 / math.log2(3)), "HR@50": 0.5, "Recall@50": 0.5}
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(FixedRanking(ranking), split, ["MAP@10"])


def test_baselines_exclude_history_and_find_co_occurring_items() -> None:
    sequences = [["a", "b"], ["a", "b", "c"], ["a", "b"], ["c", "d"], ["c", "d"]]
    popular = PopularityRecommender(sequences)
    assert popular.recommend(["a"], 2) == ["b", "c"]
    knn = ItemKNNRecommender(sequences)
    assert knn.recommend(["a"], 1) == ["b"]
    assert knn.recommend(["d"], 1) == ["c"]
    assert knn.neighbours("a", 1)[0][0] == "b" and knn.neighbours("nope", 3) == []


def test_user_vector_mean_and_time_decay() -> None:
    embeddings = ItemEmbeddings(np.array(["a", "b"]), np.array([[1.0, 0.0], [0.0, 2.0]], np.float32))
    np.testing.assert_allclose(user_vector(embeddings, ["a", "b"], "mean"), [0.5, 0.5])
    decayed = user_vector(embeddings, ["a", "b"], "decay", half_life=1.0)
    np.testing.assert_allclose(decayed, [1 / 3, 2 / 3])  # the most recent ("b") weighs twice "a"
    assert user_vector(embeddings, ["unknown"]) is None
    with pytest.raises(ValueError, match="method"):
        user_vector(embeddings, ["a"], "median")


def _embedding_channel() -> EmbeddingNeighbourChannel:
    ids = np.array(["a", "a2", "a3", "b", "b2"])
    vectors = np.array([[1, 0], [0.99, 0.1], [0.95, 0.3], [0, 1], [0.1, 0.99]], np.float32)
    index = FaissIndex(2, "exact")
    index.add(ids.tolist(), vectors)
    return EmbeddingNeighbourChannel("item2vec", ItemEmbeddings(ids, vectors), index)


def test_multichannel_merge_deduplicates_tags_and_respects_quotas() -> None:
    popular = PopularChannel(lambda n: [("a2", 9.0), ("p1", 8.0), ("p2", 7.0), ("p3", 6.0)][:n])
    recall = MultiChannelRecall([_embedding_channel(), popular], quotas={"item2vec": 2, "popular": 1})
    candidates = recall.recall(["a"], 4)
    by_item = {c.item_id: c.channels for c in candidates}
    assert len(candidates) == 4 == len(by_item)
    assert by_item["a2"] == {"item2vec", "popular"}
    assert "a" not in by_item
    # Interleaved by rank within the quotas (2 from item2vec, 1 from popular), then leftovers.
    assert list(by_item)[:3] == ["a2", "p1", "a3"]
    assert all(c.channels for c in candidates)
    assert recall.recommend([], 2) == ["a2", "p1"]  # no history: only the popular channel answers
