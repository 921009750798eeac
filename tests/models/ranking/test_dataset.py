from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DENSE, make_rows

from models.ranking import samples
from models.ranking.dataset import build_spec, iter_batches, pad_sequences
from models.ranking.features import PAD, FeatureSpec


def test_pad_sequences_keeps_most_recent_and_right_pads() -> None:
    column = pa.array([["a", "b", "c", "d"], ["x"], [], None], pa.list_(pa.string()))
    padded = pad_sequences(column, 3)
    assert padded.tolist() == [["b", "c", "d"], ["x", PAD, PAD], [PAD] * 3, [PAD] * 3]


def test_build_spec_reads_train_split_only(tmp_path: Path) -> None:
    rows = make_rows(200, seed=1)
    rows[samples.ITEM_ID] = [
        item if split == "train" else "only-in-test"
        for item, split in zip(rows[samples.ITEM_ID], rows[samples.SPLIT])
    ]
    path = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pydict(rows, schema=samples.sample_schema(DENSE)), path)
    spec = build_spec(path, DENSE, max_seq_len=5)
    assert "only-in-test" not in spec.item_vocab
    assert spec.train_rows == rows[samples.SPLIT].count("train")
    assert len(spec.dense_mean) == len(DENSE) and all(s > 0 for s in spec.dense_std)
    assert spec.data_start is not None and spec.data_start < spec.data_end


def test_spec_round_trips_through_json(tmp_path: Path) -> None:
    spec = FeatureSpec(
        dense_features=DENSE,
        max_seq_len=7,
        item_vocab=("a",),
        category_vocab=("c",),
        dense_mean=(0.0, 1.0),
        dense_std=(1.0, 2.0),
    )
    spec.save(tmp_path / "spec.json")
    assert FeatureSpec.load(tmp_path / "spec.json") == spec


def test_batches_stream_one_split_with_fixed_shapes(planted_samples: Path) -> None:
    spec = build_spec(planted_samples, DENSE, max_seq_len=6)
    sizes = []
    for batch, _ in iter_batches(planted_samples, spec, "validation", 300):
        assert batch[samples.HIST_ITEM_IDS].shape == (len(batch[samples.LABEL]), 6)
        assert batch[DENSE[0]].dtype == np.float32
        sizes.append(len(batch[samples.LABEL]))
    assert sum(sizes) == 1000 and max(sizes) <= 300


def test_missing_column_is_named_with_the_file(tmp_path: Path) -> None:
    rows = make_rows(20, seed=2)
    del rows[DENSE[1]]
    schema = pa.schema([f for f in samples.sample_schema(DENSE) if f.name != DENSE[1]])
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pydict(rows, schema=schema), path)
    with pytest.raises(ValueError, match=rf"bad.parquet.*missing column '{DENSE[1]}'"):
        build_spec(path, DENSE, max_seq_len=5)


def test_bad_label_is_reported(tmp_path: Path) -> None:
    rows = make_rows(20, seed=3)
    rows[samples.LABEL][5] = 2
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.Table.from_pydict(rows, schema=samples.sample_schema(DENSE)), path)
    with pytest.raises(
        ValueError,
        match=r"labels.parquet \(split 'train', rows from 0\): label must be 0 or 1, got 2 at batch row 5",
    ):
        build_spec(path, DENSE, max_seq_len=5)


def test_null_dense_value_is_located(tmp_path: Path) -> None:
    rows = make_rows(20, seed=4)
    rows[DENSE[0]][3] = None
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.Table.from_pydict(rows, schema=samples.sample_schema(DENSE)), path)
    with pytest.raises(ValueError, match=rf"dense feature '{DENSE[0]}' is null at batch row 3"):
        build_spec(path, DENSE, max_seq_len=5)


def test_dense_name_clashing_with_a_sample_column_is_rejected() -> None:
    with pytest.raises(ValueError, match="clash"):
        samples.sample_schema(["label"])
