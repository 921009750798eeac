"""Ranking samples from Parquet, streamed batch by batch into numpy dicts and `tf.data`.

Nothing here loads a whole file: pyarrow's dataset scanner yields record batches filtered by
``split``, each is decoded into a dict of fixed-shape numpy arrays (the model's input dict plus
``label``), and `tf.data` shuffles within a bounded buffer. A path may be one Parquet file or a
directory of part files (Spark output; names starting with ``.`` or ``_`` are skipped).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from models.ranking import samples
from models.ranking.features import PAD, FeatureSpec, SpecBuilder

if TYPE_CHECKING:
    import tensorflow as tf

Batch = dict[str, np.ndarray]


def open_samples(path: Path, dense_features: tuple[str, ...]) -> ds.Dataset:
    """Open a samples file or folder and check it against the contract in `samples`."""
    if not path.exists():
        raise FileNotFoundError(f"ranking samples not found: {path}")
    try:
        dataset = ds.dataset(str(path), format="parquet", partitioning="hive")
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: cannot read as Parquet: {exc}") from exc
    samples.check_schema(dataset.schema, dense_features, str(path))
    return dataset


def iter_batches(
    path: Path, spec: FeatureSpec, split: str, batch_size: int
) -> Iterator[tuple[Batch, pa.RecordBatch]]:
    """Yield ``(decoded batch, raw record batch)`` for rows of one split, in file order."""
    if split not in samples.SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {samples.SPLITS}")
    dataset = open_samples(path, spec.dense_features)
    columns = [samples.LABEL, samples.TS, *spec.input_names]
    scanner = dataset.scanner(
        columns=columns, filter=pc.field(samples.SPLIT) == split, batch_size=batch_size
    )
    seen = 0
    for record_batch in scanner.to_batches():
        if record_batch.num_rows:
            where = f"{path} (split {split!r}, rows from {seen})"
            yield decode_batch(record_batch, spec, where), record_batch
            seen += record_batch.num_rows


def decode_batch(batch: pa.RecordBatch, spec: FeatureSpec, source: str = "samples") -> Batch:
    """Turn one record batch into the model input dict (plus ``label``) of numpy arrays.

    Sequences keep their last ``max_seq_len`` entries and are right-padded with `PAD`.
    """
    out: Batch = {}
    for name in samples.SPARSE_INPUTS:
        out[name] = _strings(batch.column(name), source, name)
    for name in samples.SEQUENCE_INPUTS:
        out[name] = pad_sequences(batch.column(name), spec.max_seq_len)
    for name in spec.dense_features:
        column = batch.column(name)
        if column.null_count:
            raise ValueError(
                f"{source}: dense feature {name!r} is null at batch row {_first_null(column)}"
            )
        out[name] = column.to_numpy(zero_copy_only=False).astype(np.float32)
    if samples.LABEL in batch.schema.names:
        labels = batch.column(samples.LABEL).to_numpy(zero_copy_only=False).astype(np.float32)
        bad = ~np.isin(labels, (0.0, 1.0))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{source}: label must be 0 or 1, got {labels[row]:g} at batch row {row}"
            )
        out[samples.LABEL] = labels
    return out


def _strings(column: pa.Array, source: str, name: str) -> np.ndarray:
    if column.null_count and name != samples.ITEM_CATEGORY:
        raise ValueError(f"{source}: column {name!r} is null at batch row {_first_null(column)}")
    return np.asarray(
        pc.fill_null(column.cast(pa.string()), PAD).to_numpy(zero_copy_only=False), dtype=object
    )


def _first_null(column: pa.Array) -> int:
    return int(pc.index(pc.is_null(column), True).as_py())


def pad_sequences(column: pa.Array, max_len: int) -> np.ndarray:
    """Keep the last ``max_len`` items of each list (most recent last); right-pad with `PAD`."""
    column = pc.fill_null(column, pa.scalar([], column.type))
    offsets = column.offsets.to_numpy()
    values = np.asarray(
        pc.fill_null(column.values, PAD).to_numpy(zero_copy_only=False), dtype=object
    )
    ends = offsets[1:]
    lengths = np.minimum(ends - offsets[:-1], max_len)
    positions = np.arange(max_len)[None, :]
    valid = positions < lengths[:, None]
    index = np.where(valid, (ends - lengths)[:, None] + positions, 0)
    padded = values[index] if len(values) else np.full(index.shape, PAD, dtype=object)
    padded[~valid] = PAD
    return padded


def build_spec(
    path: Path, dense_features: tuple[str, ...], max_seq_len: int, batch_size: int = 8192
) -> FeatureSpec:
    """One streamed pass over the train split: vocabularies, dense statistics, data window."""
    builder = SpecBuilder(dense_features, max_seq_len)
    probe = FeatureSpec(dense_features=dense_features, max_seq_len=max_seq_len)
    for batch, raw in iter_batches(path, probe, "train", batch_size):
        ts_min, ts_max = _ts_range(raw)
        builder.add(batch, ts_min, ts_max)
    return builder.build()


def _ts_range(raw: pa.RecordBatch) -> tuple[datetime | None, datetime | None]:
    bounds = pc.min_max(raw.column(samples.TS))
    return bounds["min"].as_py(), bounds["max"].as_py()


def tf_dataset(
    path: Path,
    spec: FeatureSpec,
    split: str,
    batch_size: int,
    shuffle_buffer: int = 0,
    seed: int = 0,
) -> tf.data.Dataset:
    """``(features, label)`` batches for Keras, streamed from Parquet; rebuilt on every epoch.

    With ``shuffle_buffer`` rows > 0, rows are shuffled in numpy within a bounded window (cheaper
    than `tf.data`'s per-element shuffle of string tensors); otherwise file order is kept.
    """
    import tensorflow as tf

    signature = (input_signature(spec, batch=True), tf.TensorSpec([None], tf.float32))

    def generate() -> Iterator[tuple[Batch, np.ndarray]]:
        batches = (batch for batch, _ in iter_batches(path, spec, split, batch_size))
        if shuffle_buffer:
            batches = shuffled(batches, shuffle_buffer, batch_size, np.random.default_rng(seed))
        for batch in batches:
            label = batch.pop(samples.LABEL)
            yield batch, label

    return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(2)


def shuffled(
    batches: Iterator[Batch], buffer_rows: int, batch_size: int, rng: np.random.Generator
) -> Iterator[Batch]:
    """Re-batch a stream in random order within windows of about ``buffer_rows`` rows."""
    window: list[Batch] = []
    rows = 0
    for batch in batches:
        window.append(batch)
        rows += len(batch[samples.ITEM_ID])
        if rows >= buffer_rows:
            yield from _emit(window, batch_size, rng)
            window, rows = [], 0
    if window:
        yield from _emit(window, batch_size, rng)


def _emit(window: list[Batch], batch_size: int, rng: np.random.Generator) -> Iterator[Batch]:
    merged = {name: np.concatenate([b[name] for b in window]) for name in window[0]}
    order = rng.permutation(len(merged[samples.ITEM_ID]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield {name: values[rows] for name, values in merged.items()}


def input_signature(spec: FeatureSpec, batch: bool) -> dict[str, tf.TensorSpec]:
    """`tf.TensorSpec`s of the model input dict; ``batch=False`` gives one user's request shape."""
    import tensorflow as tf

    lead = [None] if batch else []
    signature = {
        name: tf.TensorSpec([None], tf.string, name=name) for name in samples.SPARSE_INPUTS
    }
    for name in samples.SEQUENCE_INPUTS:
        signature[name] = tf.TensorSpec([*lead, None], tf.string, name=name)
    for name in spec.dense_features:
        signature[name] = tf.TensorSpec([None], tf.float32, name=name)
    if not batch:
        signature[samples.USER_ID] = tf.TensorSpec([], tf.string, name=samples.USER_ID)
    return signature
