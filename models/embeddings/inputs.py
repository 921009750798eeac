"""Training inputs: positives from the event log, or the batch layer's Parquet outputs.

Until the Spark outputs are wired in, `recsys train embeddings` builds user sequences and the
item transition graph here, in Python, from `LocalEventLog.read()` (streamed, time-ordered).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from feature_store.definitions import POSITIVE, EventFilter
from feature_store.schemas import Event


def positive_interactions(events: Iterable[Event], positive: EventFilter = POSITIVE) -> Iterator[tuple[str, str, datetime]]:
    """(user, item, ts) for positive events, by the project's one positive rule
    (`feature_store.definitions.POSITIVE`, shared with the batch and speed layers)."""
    for event in events:
        if positive.matches(event.type, event.value):
            yield event.user_id, event.item_id, event.ts


def transition_graph(sequences: Iterable[Sequence[str]]) -> tuple[list[str], list[str], list[float]]:
    """The weighted directed item graph: weight(a -> b) = times b directly followed a."""
    counts: Counter[tuple[str, str]] = Counter()
    for sequence in sequences:
        counts.update((a, b) for a, b in zip(sequence, sequence[1:]) if a != b)
    if not counts:
        return [], [], []
    (src, dst), weight = zip(*counts.keys()), list(map(float, counts.values()))
    return list(src), list(dst), weight


def read_sequences_parquet(path: Path, batch_rows: int = 65_536) -> list[list[str]]:
    """Sequences from the batch layer's Parquet (user_id, session_id, item_ids list<string>): a
    file or the folder of part files `recsys batch sequences` writes, read one record batch at a
    time."""
    try:
        return _item_lists(path, batch_rows)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(
            f"{path}: not a sequences Parquet file or folder with an item_ids column ({exc})"
        ) from None


def read_graph_parquet(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edge arrays from the batch layer's item-graph Parquet (src, dst, weight)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["src", "dst", "weight"])
    except (OSError, KeyError) as exc:
        raise ValueError(f"{path}: not an item-graph Parquet file with src, dst, weight ({exc})") from None
    return (np.asarray(table["src"].to_pylist(), str), np.asarray(table["dst"].to_pylist(), str),
            table["weight"].to_numpy().astype(np.float64))  # fmt: skip


def read_walks_parquet(path: Path, batch_rows: int = 65_536) -> list[list[str]]:
    """Walks from `recsys batch random_walks` (walk_id, item_ids list<string>): a Parquet file or
    a folder of part files, read one record batch at a time."""
    try:
        walks = _item_lists(path, batch_rows)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a walks Parquet dataset with an item_ids column ({exc})") from None
    if not walks:
        raise ValueError(f"{path}: holds no walk of two or more items")
    return walks


def _item_lists(path: Path, batch_rows: int) -> list[list[str]]:
    """The item_ids lists of two or more items in a Parquet file or folder of part files (Spark's
    _SUCCESS and other _/. files skipped), streamed by record batch."""
    import pyarrow.dataset as ds

    lists: list[list[str]] = []
    dataset = ds.dataset(path, format="parquet")
    for batch in dataset.to_batches(columns=["item_ids"], batch_size=batch_rows):
        items = batch.column("item_ids").to_pylist()
        lists.extend(sequence for sequence in items if sequence and len(sequence) >= 2)
    return lists
