"""recall -> ranker offline evaluation on tiny planted data: no leakage, real training, intervals."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from models.evaluation import ItemKNNRecommender, PopularityRecommender, leave_last_one_out
from models.evaluation.end_to_end import CandidateFeatures, SampleConfig, bootstrap_ci, write_training_samples
from models.evaluation.offline_pipeline import EvaluationConfig, run_offline_evaluation
from models.retrieval.multichannel import ItemCFChannel, MultiChannelRecall, PopularChannel
from tests.models.planted_clusters import cluster_of, planted_sequences

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _split(users: int = 60, length: int = 12):  # type: ignore[no-untyped-def]
    interactions = [
        (f"u{u}", item, T0 + timedelta(minutes=position))
        for u, sequence in enumerate(planted_sequences(users, length, seed=1))
        for position, item in enumerate(sequence)
    ]
    return leave_last_one_out(interactions)


def _categories(split) -> dict[str, str]:  # type: ignore[no-untyped-def]
    items = {i for seq in split.train.values() for i in seq} | set(split.test.values())
    return {item: f"c{cluster_of(item)}" for item in items}


def test_ranker_samples_never_contain_the_held_out_item(tmp_path: Path) -> None:
    split = _split()
    sequences = split.train_sequences()
    recall = MultiChannelRecall([ItemCFChannel(ItemKNNRecommender(sequences)), PopularChannel(PopularityRecommender(sequences).top)])
    features = CandidateFeatures(split, _categories(split), max_seq_len=8)
    path = tmp_path / "samples.parquet"
    counts = write_training_samples(split, recall, features, SampleConfig(positions_per_user=5, recall_depth=30), path)
    rows = pq.read_table(path).to_pylist()
    assert counts["recall"] > 0 and counts["sampled"] > 0 and counts["rating"] == len([r for r in rows if r["label"] == 1])
    for row in rows:
        held_out, earlier = split.test[row["user_id"]], split.train[row["user_id"]]
        # Positives and histories come from training positives only; a negative may be the
        # held-out item (excluding it would peek at the test set).
        if held_out not in earlier:
            assert held_out not in row["hist_item_ids"]
            assert row["label"] == 0 or row["item_id"] != held_out
        assert len(row["hist_item_ids"]) <= 8 and set(row["hist_item_ids"]) <= set(earlier)
        if row["label"] == 0:  # negatives are never one of the user's own training positives
            assert row["item_id"] not in split.train[row["user_id"]]
    assert {r["split"] for r in rows} == {"train", "validation"}


def test_offline_pipeline_trains_ranker_and_reports_intervals() -> None:
    split = _split()
    config = EvaluationConfig(
        recall_models=(), rankers=("din",), samples=SampleConfig(positions_per_user=4, recall_depth=30, max_seq_len=8),
        ranker_epochs=2, ranker_embedding_dim=4, bootstrap_rounds=50,
    )  # fmt: skip
    result = run_offline_evaluation(split, _categories(split), config)
    assert set(result.summary) == {"Pop", "ItemKNN", "recall only", "recall → din"}
    assert result.users == len(split.test)
    for row in result.summary.values():
        for mean, low, high in row.values():
            assert 0.0 <= low <= mean <= high <= 1.0
    assert "ItemKNN" not in result.diff and set(result.diff["recall → din"]) == {"HR@10", "NDCG@10", "HR@50"}
    assert 0.0 <= result.ranker_validation["din"]["auc"] <= 1.0
    # Planted clusters: item-CF recall finds the held-out item's cluster far better than popularity.
    assert result.summary["recall only"]["HR@50"][0] > result.summary["Pop"]["HR@50"][0]


def test_bootstrap_interval_covers_the_mean_and_narrows_with_users() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.random(50), rng.random(5000)
    low_s, high_s = bootstrap_ci(small, 500)
    low_l, high_l = bootstrap_ci(large, 500)
    assert low_s <= small.mean() <= high_s and low_l <= large.mean() <= high_l
    assert high_l - low_l < high_s - low_s


def test_dense_features_count_only_training_positives_up_to_the_history_end() -> None:
    day = 86_400.0
    split = leave_last_one_out([
        ("u1", "a", 0.0), ("u1", "b", 10 * day), ("u1", "c", 20 * day), ("u1", "held", 30 * day),
        ("u2", "a", 5 * day), ("u2", "c", 12 * day), ("u2", "held", 13 * day), ("u2", "a2", 40 * day),
    ])  # fmt: skip
    features = CandidateFeatures(split, {"a": "x", "c": "x", "b": "y"}, max_seq_len=8)
    # u1's history [a, b] ends at day 10: u2's "a" (day 5) counts, the later "c" and "held" do not.
    rows = features.rows("u1", ["a", "b"], features.as_of("u1", 2), ["a", "c", "held"], [1, 0, 0], ["rating"] * 3, "train")
    assert rows["item_popularity"] == [2.0, 0.0, 0.0]
    assert rows["item_pop_7d"] == [1.0, 0.0, 0.0]  # only u2's "a" at day 5 lies in (day 3, day 10]
    assert rows["user_positive_count"] == [2.0] * 3 and rows["user_category_affinity"] == [0.5, 0.5, 0.0]
    # At evaluation, u1's features are as of their last training positive (day 20), never the
    # held-out event's time (day 30).
    assert features.as_of("u1", len(split.train["u1"])) == 20 * day
    assert features.clock.count("held", 100 * day, None) == 1  # u2's training positive; u1's is held out


def test_warm_start_puts_recall_vectors_into_the_ranker_item_table() -> None:
    import tensorflow as tf

    from models.embeddings.item_embeddings import ItemEmbeddings
    from models.evaluation.offline_pipeline import warm_start_items
    from models.ranking.din import DIN
    from models.ranking.features import FeatureSpec

    spec = FeatureSpec(dense_features=(), max_seq_len=2, item_vocab=("a", "b", "c"), category_vocab=("x",))
    model = DIN(spec, embedding_dim=2)
    model({"user_id": tf.constant(["u"]), "item_id": tf.constant(["a"]), "item_category": tf.constant(["x"]),
           "hist_item_ids": tf.constant([["b", ""]]), "hist_categories": tf.constant([["x", ""]])})  # fmt: skip
    before = model.item_embedding.embeddings.numpy().copy()
    vectors = ItemEmbeddings(np.array(["a", "b", "z"]), np.array([[3, 0, 0], [0, 3, 0], [1, 1, 1]], np.float32))
    warm_start_items(model, vectors)
    after = model.item_embedding.embeddings.numpy()
    row = {token: i for i, token in enumerate(model.item_lookup.get_vocabulary())}
    # Items without a vector, padding and OOV keep their random start; a and b move to their
    # (PCA-reduced, rescaled) recall vectors, which differ as the originals do.
    assert np.allclose(after[[0, 1, row["c"]]], before[[0, 1, row["c"]]])
    assert not np.allclose(after[row["a"]], before[row["a"]]) and not np.allclose(after[row["a"]], after[row["b"]])
    assert np.abs(after).max() < 1.0  # rescaled to the table's initial spread, not the raw norms
