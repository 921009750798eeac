"""Popularity baseline: score = smoothed positive rate of the candidate item in training."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from models.ranking import samples
from models.ranking.dataset import iter_batches
from models.ranking.features import FeatureSpec
from models.ranking.metrics import evaluate


class PopularityRanker:
    """``p(item) = (positives + prior * m) / (shown + m)``, the global rate for unseen items."""

    def __init__(self, smoothing: float = 10.0) -> None:
        if smoothing <= 0:
            raise ValueError(f"smoothing must be > 0, got {smoothing}")
        self.smoothing = smoothing
        self.positives: dict[str, float] = defaultdict(float)
        self.shown: dict[str, float] = defaultdict(float)
        self.prior = 0.5

    def fit(self, path: Path, spec: FeatureSpec, batch_size: int = 8192) -> PopularityRanker:
        total, hits = 0, 0.0
        for batch, _ in iter_batches(path, spec, "train", batch_size):
            for item, label in zip(batch[samples.ITEM_ID].tolist(), batch[samples.LABEL].tolist()):
                self.positives[item] += label
                self.shown[item] += 1
            total += len(batch[samples.LABEL])
            hits += float(batch[samples.LABEL].sum())
        self.prior = hits / total if total else 0.5
        return self

    def predict(self, items: np.ndarray) -> np.ndarray:
        m = self.smoothing
        return np.array(
            [
                (self.positives.get(i, 0.0) + self.prior * m) / (self.shown.get(i, 0.0) + m)
                for i in items.tolist()
            ],
            dtype=np.float64,
        )

    def evaluate(
        self, path: Path, spec: FeatureSpec, split: str, batch_size: int = 8192
    ) -> dict[str, float]:
        users, labels, scores = [], [], []
        for batch, _ in iter_batches(path, spec, split, batch_size):
            users.append(batch[samples.USER_ID])
            labels.append(batch[samples.LABEL])
            scores.append(self.predict(batch[samples.ITEM_ID]))
        if not labels:
            raise ValueError(f"{path}: no rows with split == {split!r}")
        return evaluate(np.concatenate(users), np.concatenate(labels), np.concatenate(scores))
