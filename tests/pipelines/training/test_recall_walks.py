"""`read_walks`: which walks each walk model trains on, for the layouts `recsys batch random_walks`
writes (walks/<model>/part-*.parquet) and for a single walks Parquet."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.embeddings.skipgram import SkipGramConfig
from models.embeddings.training import EmbeddingTrainingConfig, WalkConfig
from pipelines.training.recall import read_walks, train_recall

MODELS = ("item2vec", "deepwalk", "node2vec")
RING = [[f"i{k}", f"i{(k + 1) % 8}", f"i{(k + 2) % 8}"] for k in range(8)]


def _write_walks(path: Path, walks: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    walk_ids = [str(k) for k in range(len(walks))]
    pq.write_table(pa.table({"walk_id": walk_ids, "item_ids": walks}), path)


def test_each_model_reads_its_own_folder(tmp_path: Path) -> None:
    _write_walks(tmp_path / "walks" / "deepwalk" / "part-0.parquet", [["a", "b"]])
    _write_walks(tmp_path / "walks" / "node2vec" / "part-0.parquet", [["c", "d"]])
    expected = {"deepwalk": [["a", "b"]], "node2vec": [["c", "d"]]}
    assert read_walks(tmp_path / "walks", MODELS) == expected


def test_a_model_without_its_folder_gets_no_other_models_walks(tmp_path: Path) -> None:
    """pyarrow reads a folder recursively: falling back to walks/ gave Node2vec DeepWalk's walks."""
    _write_walks(tmp_path / "walks" / "deepwalk" / "part-0.parquet", [["a", "b", "c"]])
    assert read_walks(tmp_path / "walks", MODELS) == {"deepwalk": [["a", "b", "c"]]}


@pytest.mark.parametrize("layout", ["walks.parquet", "walks/part-0.parquet"])
def test_walks_without_model_folders_serve_every_walk_model(tmp_path: Path, layout: str) -> None:
    _write_walks(tmp_path / layout, [["a", "b"]])
    source = tmp_path / layout.split("/")[0]
    assert read_walks(source, MODELS) == {"deepwalk": [["a", "b"]], "node2vec": [["a", "b"]]}
    assert read_walks(source, ["item2vec"]) == {}


def test_a_model_without_its_folder_walks_the_graph_here(tmp_path: Path) -> None:
    """Only walks/deepwalk exists: DeepWalk trains on those walks (three items), Node2vec on walks
    over the sequences' graph (all eight ring items)."""
    walks = [["i0", "i1", "i2"], ["i1", "i2", "i0"]]
    _write_walks(tmp_path / "walks" / "deepwalk" / "part-0.parquet", walks)
    skipgram = SkipGramConfig(dim=8, epochs=1, subsample=0.0)
    config = EmbeddingTrainingConfig(skipgram, WalkConfig(2, 5), MODELS)
    run = train_recall(RING, config, "exact", walks=read_walks(tmp_path / "walks", MODELS))
    embeddings = run.artifact.embeddings
    assert sorted(embeddings["deepwalk"].ids.tolist()) == ["i0", "i1", "i2"]
    assert sorted(embeddings["node2vec"].ids.tolist()) == [f"i{k}" for k in range(8)]
