"""What a ranker knows about its inputs: dense feature names, sequence cap, vocabularies, scaling.

A `FeatureSpec` is built from the training split in one streamed pass, saved beside the model
(``feature_spec.json``) and used unchanged at serving, so a request is encoded exactly as the
training samples were: same vocabularies (unknown ids map to the OOV slot), same dense scaling.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from models.ranking import samples

PAD = ""  # padding token of history sequences; also the mask token of the lookups


@dataclass(frozen=True)
class FeatureSpec:
    """Input definition shared by training and serving.

    ``item_vocab`` / ``category_vocab`` list known ids (most frequent first); anything else is OOV.
    ``dense_mean`` / ``dense_std`` standardise each dense feature: ``(x - mean) / std``.
    """

    dense_features: tuple[str, ...]
    max_seq_len: int = samples.DEFAULT_MAX_SEQ_LEN
    item_vocab: tuple[str, ...] = ()
    category_vocab: tuple[str, ...] = ()
    dense_mean: tuple[float, ...] = ()
    dense_std: tuple[float, ...] = ()
    train_rows: int = 0
    data_start: str | None = None
    data_end: str | None = None

    def __post_init__(self) -> None:
        if self.max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {self.max_seq_len}")
        samples.sample_schema(self.dense_features)  # validates the names
        for name in ("dense_mean", "dense_std"):
            values = getattr(self, name)
            if values and len(values) != len(self.dense_features):
                raise ValueError(
                    f"{name} has {len(values)} values for {len(self.dense_features)} features"
                )

    @property
    def input_names(self) -> tuple[str, ...]:
        """Keys of the model's input dict (sample columns)."""
        return (*samples.SPARSE_INPUTS, *samples.SEQUENCE_INPUTS, *self.dense_features)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> FeatureSpec:
        raw = json.loads(path.read_text())
        for key in ("dense_features", "item_vocab", "category_vocab", "dense_mean", "dense_std"):
            raw[key] = tuple(raw[key])
        return cls(**raw)


class SpecBuilder:
    """Accumulates vocabularies and dense statistics over streamed training batches."""

    def __init__(
        self, dense_features: Sequence[str], max_seq_len: int, max_vocab: int | None = None
    ) -> None:
        self.dense_features = tuple(dense_features)
        self.max_seq_len = max_seq_len
        self.max_vocab = max_vocab
        self.items: Counter[str] = Counter()
        self.categories: Counter[str] = Counter()
        self.rows = 0
        self.sums = np.zeros(len(self.dense_features), np.float64)
        self.squares = np.zeros(len(self.dense_features), np.float64)
        self.start: datetime | None = None
        self.end: datetime | None = None

    def add(
        self, batch: dict[str, np.ndarray], ts_min: datetime | None, ts_max: datetime | None
    ) -> None:
        """Count one decoded batch (see `models.ranking.dataset.decode_batch`)."""
        self.items.update(batch[samples.ITEM_ID].tolist())
        self.items.update(v for v in batch[samples.HIST_ITEM_IDS].ravel().tolist() if v != PAD)
        self.categories.update(batch[samples.ITEM_CATEGORY].tolist())
        self.categories.update(
            v for v in batch[samples.HIST_CATEGORIES].ravel().tolist() if v != PAD
        )
        if self.dense_features:
            dense = np.stack([batch[name] for name in self.dense_features], axis=1).astype(
                np.float64
            )
            self.sums += dense.sum(axis=0)
            self.squares += np.square(dense).sum(axis=0)
        self.rows += len(batch[samples.ITEM_ID])
        if ts_min is not None and (self.start is None or ts_min < self.start):
            self.start = ts_min
        if ts_max is not None and (self.end is None or ts_max > self.end):
            self.end = ts_max

    def build(self) -> FeatureSpec:
        if self.rows == 0:
            raise ValueError("no training rows: the samples have no row with split == 'train'")
        mean = self.sums / self.rows
        std = np.sqrt(np.maximum(self.squares / self.rows - mean**2, 0.0))
        std = np.where(std < 1e-6, 1.0, std)
        return FeatureSpec(
            dense_features=self.dense_features,
            max_seq_len=self.max_seq_len,
            item_vocab=_vocab(self.items, self.max_vocab),
            category_vocab=_vocab(self.categories, self.max_vocab),
            dense_mean=tuple(float(v) for v in mean),
            dense_std=tuple(float(v) for v in std),
            train_rows=self.rows,
            data_start=self.start.isoformat() if self.start else None,
            data_end=self.end.isoformat() if self.end else None,
        )


def _vocab(counts: Counter[str], limit: int | None) -> tuple[str, ...]:
    counts.pop(PAD, None)
    # Sorted by count, ties by id, so the same samples always give the same vocabulary.
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return tuple(key for key, _ in ranked[:limit])
