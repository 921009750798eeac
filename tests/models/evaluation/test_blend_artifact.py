"""The served blend's parts (issue 20): a blend saved into a recall artifact loads back scoring and
explaining exactly as fitted, the order choice picks the ranker only when it beats the blend on
validation (the reasons' rule: `test_blend_reasons.py`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.evaluation.baselines import ItemKNNRecommender, ItemTransitions, PopularityRecommender
from models.retrieval.artifact import RecallArtifact
from models.retrieval.blend import BlendedRecall, fit_blend
from models.retrieval.order_choice import BLEND, RANKER, choose_order
from models.retrieval.scored_channels import EmbeddingScores, ItemKNNScores, SequentialScores
from models.retrieval.sequential import GRU4Rec


def _sequences(users: int = 120, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[f"i{(start + 3 * t + rng.integers(0, 2)) % 40}" for t in range(8)] for start in rng.integers(0, 40, users)]


def _blend(sequences: list[list[str]]) -> tuple[BlendedRecall, list[list[str]], list[str]]:
    prefixes, targets = [s[:-1] for s in sequences], [s[-1] for s in sequences]
    knn = ItemKNNRecommender(prefixes, neighbours=20, recent=3)
    rules = ItemKNNRecommender(prefixes, neighbours=20, recent=2, similarity=ItemTransitions(prefixes, window=3))
    gru = GRU4Rec(prefixes, dim=8, dropout=0.0, batch_size=16).fit(1)
    rng = np.random.default_rng(1)
    ids = knn.ids
    channels = [ItemKNNScores(knn), ItemKNNScores(knn, 1), ItemKNNScores(knn, whole_history=True), ItemKNNScores(rules),
                ItemKNNScores(rules, 1), SequentialScores(gru),
                EmbeddingScores("item2vec", ids, rng.normal(size=(len(ids), 6)).astype(np.float32))]  # fmt: skip
    return fit_blend(channels, ids.tolist(), prefixes, targets), prefixes, targets


def test_a_saved_blend_loads_back_scoring_and_explaining_as_fitted(tmp_path: Path) -> None:
    sequences = _sequences()
    blend, prefixes, targets = _blend(sequences)
    artifact = RecallArtifact({}, {}, PopularityRecommender(sequences).top(10), blend)
    choice = choose_order(blend, prefixes, targets, None)
    artifact.order = choice
    artifact.save(tmp_path)
    loaded, order = RecallArtifact.load_blend(tmp_path)  # type: ignore[misc]
    assert order == choice and order.order == BLEND and order.ranker_ndcg10 is None
    assert loaded.normalisation == blend.normalisation and np.allclose(loaded.weights, blend.weights)
    assert [c.name for c in loaded.channels] == [c.name for c in blend.channels]
    assert [c.name for c in blend.channels[3:5]] == ["sr", "sr_last1"]
    assert all(c.model.kind == "sr" for c in loaded.channels[3:5])  # type: ignore[attr-defined]
    histories = prefixes[:20]
    assert np.allclose(loaded.batch_scores(histories), blend.batch_scores(histories), atol=1e-5)
    for history, before, after in zip(histories, blend.recall_many(histories, 10), loaded.recall_many(histories, 10)):
        shown = [c.item_id for c in before]
        assert shown == [c.item_id for c in after]
        assert blend.reasons(history, shown) == loaded.reasons(history, shown)
    assert RecallArtifact.load_blend(tmp_path / "elsewhere") is None  # an artifact without a blend


def test_the_order_choice_takes_the_ranker_only_where_it_beats_the_blend_on_validation() -> None:
    sequences = _sequences()
    blend, prefixes, targets = _blend(sequences)

    def oracle(row: int, history: list[str], items: list[str]) -> np.ndarray:
        return np.array([1.0 if item == targets[row] else 0.0 for item in items])

    def inverted(row: int, history: list[str], items: list[str]) -> np.ndarray:
        return -oracle(row, history, items) - np.arange(len(items))[::-1]  # the target last, the rest reversed

    lists = blend.recall_many(prefixes, 100)
    ranks = [next((r for r, c in enumerate(found) if c.item_id == t), None) for found, t in zip(lists, targets)]
    expected_blend = np.mean([1 / np.log2(r + 2) if r is not None and r < 10 else 0.0 for r in ranks])
    better = choose_order(blend, prefixes, targets, oracle, "v1")
    assert better.order == RANKER and better.serves_ranker("v1") and not better.serves_ranker("v2")
    assert np.isclose(better.blend_ndcg10, expected_blend)
    assert np.isclose(better.ranker_ndcg10, np.mean([r is not None for r in ranks]))  # every recalled target first
    worse = choose_order(blend, prefixes, targets, inverted, "v1")
    assert worse.order == BLEND and not worse.serves_ranker("v1") and worse.ranker_ndcg10 < worse.blend_ndcg10
