"""Tiny synthetic ranking samples with a planted rule, written to Parquet per the samples contract.

Rule: a user clicks a candidate with probability 0.85 when its category appears in the user's
history, else 0.08. Candidates are drawn uniformly, so no item or category is more clickable on
its own: only the history × candidate interaction carries signal.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.ranking import samples

DENSE = ("item_pop_7d", "user_event_count")
CATEGORIES = 8
ITEMS = 160


def category_of(item: int) -> str:
    return f"c{item % CATEGORIES}"


def make_rows(
    rows: int, seed: int, users: int = 300, shuffle_labels: bool = False
) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    interests = {u: rng.choice(CATEGORIES, size=2, replace=False) for u in range(users)}
    table: dict[str, list] = {f.name: [] for f in samples.sample_schema(DENSE)}
    for row in range(rows):
        user = int(rng.integers(users))
        history = [_history_item(rng, interests[user]) for _ in range(int(rng.integers(3, 11)))]
        candidate = int(rng.integers(ITEMS))
        matches = category_of(candidate) in {category_of(i) for i in history}
        label = int(rng.random() < (0.85 if matches else 0.08))
        fraction = row / rows
        table[samples.USER_ID].append(f"u{user}")
        table[samples.ITEM_ID].append(f"i{candidate}")
        table[samples.TS].append(start + timedelta(minutes=row))
        table[samples.LABEL].append(label)
        table[samples.LABEL_SOURCE].append("click")
        table[samples.SPLIT].append(
            "train" if fraction < 0.6 else "validation" if fraction < 0.8 else "test"
        )
        table[samples.HIST_ITEM_IDS].append([f"i{i}" for i in history])
        table[samples.HIST_CATEGORIES].append([category_of(i) for i in history])
        table[samples.ITEM_CATEGORY].append(category_of(candidate))
        table[DENSE[0]].append(float(rng.normal(5.0, 2.0)))
        table[DENSE[1]].append(float(rng.integers(0, 100)))
    if shuffle_labels:
        table[samples.LABEL] = rng.permutation(table[samples.LABEL]).tolist()
    return table


def _history_item(rng: np.random.Generator, interests: np.ndarray) -> int:
    if rng.random() < 0.8:
        category = int(rng.choice(interests))
        return int(rng.integers(ITEMS // CATEGORIES)) * CATEGORIES + category
    return int(rng.integers(ITEMS))


def write_samples(
    path: Path, rows: int = 5000, seed: int = 7, shuffle_labels: bool = False
) -> Path:
    """Write one Parquet file of synthetic samples (row groups of 1,000 to exercise streaming)."""
    table = pa.Table.from_pydict(
        make_rows(rows, seed, shuffle_labels=shuffle_labels), schema=samples.sample_schema(DENSE)
    )
    pq.write_table(table, path, row_group_size=1000)
    return path


@pytest.fixture(scope="module")
def planted_samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5,000 samples with the planted rule (60/20/20 train/validation/test by time)."""
    return write_samples(tmp_path_factory.mktemp("samples") / "samples.parquet")


@pytest.fixture(scope="module")
def shuffled_samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same generator with labels permuted across rows: no feature predicts the label."""
    return write_samples(
        tmp_path_factory.mktemp("shuffled") / "samples.parquet", shuffle_labels=True
    )
