"""Issue 20's findings, each planted: tied timestamps never let a ranker training row count its
own event; rankers train on a catalog without categories and with one position per user; the
multi-channel merge lets every channel reach the top of the list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from models.evaluation import ItemKNNRecommender, PopularityRecommender, leave_last_one_out
from models.evaluation.end_to_end import POPULARITY_WINDOWS, CandidateFeatures, SampleConfig, write_training_samples
from models.evaluation.offline_pipeline import EvaluationConfig, run_offline_evaluation
from models.retrieval.multichannel import ItemCFChannel, MultiChannelRecall, PopularChannel

DAY = 86_400.0


def _tied_interactions(users: int = 40, length: int = 6, seed: int = 3) -> list[tuple[str, str, float]]:
    """Each user's events come in pairs sharing one timestamp (as MovieLens rates several films
    in one second), over a small catalog so items are shared between users."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(users):
        start = float(rng.integers(0, 60)) * DAY
        items = rng.choice(30, size=length, replace=False)
        for position, item in enumerate(items):
            out.append((f"u{u}", f"i{item}", start + (position // 2) * DAY))
    return out


def test_tied_positive_never_counts_its_own_event(tmp_path: Path) -> None:
    interactions = _tied_interactions()
    split = leave_last_one_out(interactions)
    sequences = split.train_sequences()
    recall = MultiChannelRecall([ItemCFChannel(ItemKNNRecommender(sequences)), PopularChannel(PopularityRecommender(sequences).top)])
    features = CandidateFeatures(split, {}, max_seq_len=8, dense_features=(*POPULARITY_WINDOWS,))
    path = tmp_path / "samples.parquet"
    write_training_samples(split, recall, features, SampleConfig(recall_depth=20, dense_features=(*POPULARITY_WINDOWS,)), path)
    training_events = [(item, ts) for user, items in split.train.items() for item, ts in zip(items, split.train_ts[user])]
    tied_positives = 0
    for row in pq.read_table(path).to_pylist():
        at = row["ts"].timestamp()
        if row["label"] == 1:
            own_ts = split.train_ts[row["user_id"]][len(row["hist_item_ids"])]
            tied_positives += own_ts == at
        # Independent count: training positives of the item strictly before the history's end,
        # which never includes the row's own event (at or after that time).
        for name, window in POPULARITY_WINDOWS.items():
            expected = sum(1 for item, ts in training_events
                           if item == row["item_id"] and ts < at and (window is None or ts > at - window))  # fmt: skip
            assert row[name] == expected, (name, row["user_id"], row["item_id"], row["label"])
    assert tied_positives > 20  # the plant really ties positives to their last history item


def _tiny_split(min_length: int = 5):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    interactions = [
        (f"u{u}", f"i{(u % 4) * 10 + int(j)}", float(t))
        for u in range(40)
        for t, j in enumerate(rng.choice(10, size=min_length + u % 3, replace=False))
    ]
    return leave_last_one_out(interactions)


def test_rankers_train_without_categories_and_with_one_position_per_user() -> None:
    split = _tiny_split()
    config = EvaluationConfig(
        recall_models=(), rankers=("din", "wide_deep"), ranker_epochs=1, ranker_embedding_dim=4, bootstrap_rounds=20,
        samples=SampleConfig(positions_per_user=1, recall_depth=20, max_seq_len=4),
    )  # fmt: skip
    result = run_offline_evaluation(split, {}, config)  # no catalog: no categories at all
    assert {"recall → din", "recall → wide_deep"} <= set(result.summary)
    # One training row and one validation row per user with >= 3 training positives (all here).
    assert result.sample_counts["rating"] == 2 * len(split.train)
    assert 0.0 <= result.ranker_validation["din"]["auc"] <= 1.0


def test_too_short_histories_for_ranker_rows_are_a_clear_error(tmp_path: Path) -> None:
    split = leave_last_one_out([(f"u{u}", f"i{u + j}", float(j)) for u in range(5) for j in range(3)])
    sequences = split.train_sequences()
    recall = MultiChannelRecall([PopularChannel(PopularityRecommender(sequences).top)])
    features = CandidateFeatures(split, {}, max_seq_len=4)
    with pytest.raises(ValueError, match="at least 3 training positives"):
        write_training_samples(split, recall, features, SampleConfig(positions_per_user=1), tmp_path / "s.parquet")


class _Listed:
    def __init__(self, name: str, items: list[str]) -> None:
        self.name, self.items = name, items

    def recall(self, history: object, k: int) -> list[tuple[str, float]]:
        return [(item, 100.0 - rank) for rank, item in enumerate(self.items[:k])]


def test_merge_lets_every_channel_reach_the_top() -> None:
    channels = [_Listed(name, [f"{name}{r}" for r in range(10)]) for name in ("emb", "cf", "pop")]
    channels[1].items[1] = "emb0"  # found by two channels: listed once, tagged with both
    merged = MultiChannelRecall(channels).recall([], 9)
    assert [c.item_id for c in merged[:3]] == ["emb0", "cf0", "pop0"]
    assert [c.item_id for c in merged[3:6]] == ["emb1", "cf2", "pop1"]
    assert merged[0].channels == {"emb", "cf"} and len({c.item_id for c in merged}) == 9
