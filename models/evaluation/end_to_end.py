"""End-to-end offline evaluation: multi-channel recall -> ranker, on leave-last-one-out.

Everything here sees only `LeaveLastOut.train` (each user's positives before the held-out one):
the recall channels, the item facts (popularity, categories) and the ranker's training samples.

Ranker training samples follow the ranking-samples contract (`models.ranking.samples`). For each
user and each of the last ``positions_per_user`` positions ``t`` of their training sequence, the
positive is ``seq[t]`` with history ``seq[:t]``; negatives are ``recall_negatives`` items drawn
from what the recall stage returns for that history (the candidates the ranker sees at serving)
and ``random_negatives`` uniform items. The user's last training position is the validation row
(it mimics the held-out task); the others are training rows.

At evaluation the ranker rescoring the recall candidates of the full training history gives the
final top-K. Sample features are assembled by `CandidateFeatures`, used for both training rows
and evaluation candidates, so the two can never drift apart.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.evaluation.split import LeaveLastOut
from models.ranking import samples
from models.ranking.features import FeatureSpec
from models.retrieval.multichannel import MultiChannelRecall

DENSE_FEATURES = ("item_popularity", "user_positive_count", "user_category_affinity")
_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class SampleConfig:
    """How many rows per user and which negatives; ``recall_depth`` candidates are recalled."""

    positions_per_user: int = 20
    recall_negatives: int = 2
    random_negatives: int = 2
    recall_depth: int = 100
    max_seq_len: int = samples.DEFAULT_MAX_SEQ_LEN
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("positions_per_user", "recall_depth", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.recall_negatives < 0 or self.random_negatives < 0:
            raise ValueError("negative counts must be >= 0")
        if self.recall_negatives + self.random_negatives == 0:
            raise ValueError("at least one negative per positive is needed (recall or random)")


class CandidateFeatures:
    """Builds ranking-sample rows (contract columns) for (user history, candidate) pairs.

    ``item_popularity`` is the item's number of training positives, ``user_positive_count`` the
    history length and ``user_category_affinity`` the share of the history in the candidate's
    primary category (as the Spark ranking-samples job defines them).
    """

    def __init__(self, train: Mapping[str, Sequence[str]], categories: Mapping[str, str], max_seq_len: int) -> None:
        self.popularity = Counter(item for items in train.values() for item in items)
        self.categories = categories
        self.max_seq_len = max_seq_len

    def category(self, item: str) -> str:
        return self.categories.get(item, "")

    def rows(self, user: str, history: Sequence[str], items: Sequence[str], labels: Sequence[int],
             sources: Sequence[str], split: str, position: int) -> dict[str, list[Any]]:  # fmt: skip
        """Column lists for one user's candidates with ``history`` (oldest first)."""
        recent = list(history)[-self.max_seq_len :]
        history_categories = [self.category(i) for i in recent]
        counts = Counter(self.category(i) for i in history)
        size = len(items)
        return {
            samples.USER_ID: [user] * size,
            samples.ITEM_ID: list(items),
            # Only the order of rows within a user matters; one synthetic ts per position.
            samples.TS: [_EPOCH + timedelta(minutes=position)] * size,
            samples.LABEL: list(labels),
            samples.LABEL_SOURCE: list(sources),
            samples.SPLIT: [split] * size,
            samples.HIST_ITEM_IDS: [recent] * size,
            samples.HIST_CATEGORIES: [history_categories] * size,
            samples.ITEM_CATEGORY: [self.category(i) for i in items],
            "item_popularity": [float(self.popularity[i]) for i in items],
            "user_positive_count": [float(len(history))] * size,
            "user_category_affinity": [
                counts[self.category(i)] / len(history) if history else 0.0 for i in items
            ],
        }


def write_training_samples(
    split: LeaveLastOut, recall: MultiChannelRecall, features: CandidateFeatures, config: SampleConfig,
    path: Path, progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:  # fmt: skip
    """Write ranker training samples to ``path`` (Parquet), one row group per user batch;
    returns row counts per label source."""
    rng = np.random.default_rng(config.seed)
    universe = np.array(sorted(features.popularity), dtype=object)
    schema = samples.sample_schema(DENSE_FEATURES)
    counts: Counter[str] = Counter()
    users = sorted(u for u, items in split.train.items() if len(items) >= 2)
    with pq.ParquetWriter(path, schema) as writer:
        buffer: dict[str, list[Any]] = {name: [] for name in schema.names}
        for number, user in enumerate(users):
            sequence = split.train[user]
            seen = set(sequence)
            for t in range(max(1, len(sequence) - config.positions_per_user), len(sequence)):
                history = sequence[:t]
                items, sources = [sequence[t]], ["rating"]
                recalled = [c.item_id for c in recall.recall(history, config.recall_depth) if c.item_id not in seen]
                items += _draw(recalled, config.recall_negatives, rng)
                sources += ["recall"] * (len(items) - 1)
                randoms = [i for i in _draw(list(universe), config.random_negatives * 3, rng) if i not in seen]
                items += randoms[: config.random_negatives]
                sources += ["sampled"] * (len(items) - len(sources))
                labels = [1] + [0] * (len(items) - 1)
                which = "validation" if t == len(sequence) - 1 else "train"
                for name, values in features.rows(user, history, items, labels, sources, which, t).items():
                    buffer[name].extend(values)
                counts.update(sources)
            if len(buffer[samples.ITEM_ID]) >= 50_000 or number == len(users) - 1:
                writer.write_table(pa.Table.from_pydict(buffer, schema=schema))
                buffer = {name: [] for name in schema.names}
            if progress is not None:
                progress(number + 1, len(users))
    if not counts:
        raise ValueError("no training samples: every user has fewer than 2 training positives")
    return dict(counts)


def _draw(pool: Sequence[str], count: int, rng: np.random.Generator) -> list[str]:
    if not pool or count == 0:
        return []
    picks = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
    return [pool[i] for i in picks]


class RerankRecommender:
    """Recall ``depth`` candidates, score them with a ranker, return the top ``k`` by score.

    ``score`` maps a decoded sample batch (`models.ranking.dataset.decode_batch`) to scores.
    """

    def __init__(self, recall: MultiChannelRecall, features: CandidateFeatures, spec: FeatureSpec,
                 score: Callable[[dict[str, np.ndarray]], np.ndarray], depth: int = 100) -> None:  # fmt: skip
        self.recall, self.features, self.spec, self.score, self.depth = recall, features, spec, score, depth
        self.schema = samples.sample_schema(spec.dense_features)

    def recommend(self, history: Sequence[str], k: int) -> list[str]:
        from models.ranking.dataset import decode_batch

        candidates = [c.item_id for c in self.recall.recall(history, max(self.depth, k))]
        if not candidates:
            return []
        rows = self.features.rows("user", history, candidates, [0] * len(candidates),
                                  ["recall"] * len(candidates), "test", len(history))  # fmt: skip
        batch = decode_batch(pa.RecordBatch.from_pydict(rows, schema=self.schema), self.spec, "candidates")
        batch.pop(samples.LABEL, None)
        scores = np.asarray(self.score(batch), dtype=np.float64)
        order = np.argsort(-scores, kind="stable")[:k]
        return [candidates[i] for i in order]


def per_user_metrics(model: Any, split: LeaveLastOut, ks: Sequence[int] = (10, 50),
                     progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """HR@K and NDCG@K per test user (same order as ``sorted(split.test)``), for bootstraps."""
    users = sorted(split.test)
    depth = max(ks)
    out = {f"{kind}@{k}": np.zeros(len(users)) for k in ks for kind in ("HR", "NDCG")}
    for number, user in enumerate(users):
        ranked = model.recommend(split.train[user], depth)
        held_out = split.test[user]
        rank = ranked.index(held_out) + 1 if held_out in ranked else None
        for k in ks:
            if rank is not None and rank <= k:
                out[f"HR@{k}"][number] = 1.0
                out[f"NDCG@{k}"][number] = 1.0 / math.log2(rank + 1)
        if progress is not None:
            progress(number + 1, len(users))
    return out


def bootstrap_ci(values: np.ndarray, rounds: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over users (resampled with replacement)."""
    if len(values) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(rounds, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
