"""The evaluation's batched paths (issue 20: Amazon Toys under 20 minutes) give what the one-at-a-
time paths give: the blend's reasons for many histories in one channel call per batch, the ItemKNN
channel as one sparse product, the partial top-k, and the protocol run's collector settings."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from models.evaluation.baselines import ItemKNNRecommender
from models.evaluation.protocol_run import rare_collections
from models.retrieval.blend import BlendedRecall
from models.retrieval.scored_channels import EmbeddingScores, ItemKNNScores, SequentialScores
from models.retrieval.sequential import GRU4Rec
from models.retrieval.topk import stable_top

SEQUENCES = [[f"i{(s * 7 + t * (1 + s % 3)) % 30}" for t in range(8)] for s in range(60)]


def _blend() -> BlendedRecall:
    knn = ItemKNNRecommender(SEQUENCES, neighbours=10, recent=3)
    gru = GRU4Rec(SEQUENCES, dim=8, dropout=0.0, batch_size=16).fit(1)
    vectors = np.random.default_rng(1).normal(size=(len(knn.ids), 4)).astype(np.float32)
    channels = [ItemKNNScores(knn), ItemKNNScores(knn, 1), SequentialScores(gru), EmbeddingScores("item2vec", knn.ids, vectors, 4)]
    items = sorted({i for s in SEQUENCES for i in s})
    return BlendedRecall(channels, np.array([1.0, 0.0, 2.0, 0.5]), items, "zscore")


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_reasons_many_gives_each_history_its_own_reasons(batch: int) -> None:
    blend = _blend()
    histories = [s[:5] for s in SEQUENCES[:20]] + [[], ["i1"], ["i2", "i2", "i3"]]
    asked = [[item for item in blend.ids.tolist()[(3 * n) % 20 :][:12] if item not in h] + ["not in the blend"]
             for n, h in enumerate(histories)]  # fmt: skip
    expected = [blend.reasons(h, items) for h, items in zip(histories, asked)]
    assert len({why for row in expected for why in row}) > 3  # the reasons differ across items and users
    assert blend.reasons_many(histories, asked, batch=batch) == expected
    assert all(row[-1] is None for row in expected)


def test_itemknn_channel_sums_the_similarity_rows_of_its_window() -> None:
    knn = ItemKNNRecommender(SEQUENCES, neighbours=10, recent=None)
    dense = knn.similarity.toarray()
    channel = ItemKNNScores(knn, 3)
    histories = [["i1", "i4", "i1"], [], ["nobody knows", "i2"], SEQUENCES[5]]
    expected = [sum((dense[knn.position[h]] for h in history[-3:] if h in knn.position), np.zeros(len(knn.ids)))
                for history in histories]  # fmt: skip
    assert np.allclose(channel.batch_scores(histories), np.array(expected))


def test_stable_top_is_the_stable_sort_s_head() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        values = rng.integers(0, 5, size=int(rng.integers(1, 40))).astype(np.float64)  # many ties
        values[rng.random(len(values)) < 0.2] = -np.inf
        k = int(rng.integers(0, len(values) + 3))
        assert stable_top(values, k).tolist() == np.argsort(-values, kind="stable")[:k].tolist()


def test_rare_collections_freezes_and_restores_the_collector() -> None:
    before = gc.get_threshold()
    with rare_collections(young=50_000):
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] == 50_000
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
