"""Recall indexes: approximate recall against exact search, save/load, corrupt files refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.retrieval import FaissIndex, IndexFileError, LshIndex, RecallIndex, build_index, load_index

DIM = 32


@pytest.fixture(scope="module")
def clustered() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """100k vectors around 5,000 centres (as embeddings cluster), 200 queries, exact top-10."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5_000, DIM))
    vectors = centres[rng.integers(0, 5_000, 100_000)] + 0.35 * rng.standard_normal((100_000, DIM))
    queries = centres[rng.integers(0, 5_000, 200)] + 0.35 * rng.standard_normal((200, DIM))
    ids = [f"item{i}" for i in range(len(vectors))]
    exact = FaissIndex(DIM, "exact")
    exact.add(ids, vectors)
    return ids, vectors, queries, exact.search(queries, 10).ids


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


@pytest.mark.parametrize("index", [FaissIndex(DIM, "hnsw", ef_construction=40), LshIndex(DIM)], ids=["hnsw", "lsh"])
def test_approximate_indexes_find_the_exact_top10(index: RecallIndex, clustered: tuple) -> None:
    ids, vectors, queries, truth = clustered
    index.add(ids, vectors)
    assert _recall(index.search(queries, 10).ids, truth) >= 0.9


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf", "lsh"])
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((2_000, 16)).astype(np.float32)
    ids = [f"i{i}" for i in range(len(vectors))]
    index = LshIndex(16, width=4.0) if kind == "lsh" else FaissIndex(16, kind, nlist=16)
    index.add(ids, vectors)
    before = index.search(vectors[:20], 5)
    index.save(tmp_path / "index")
    loaded = load_index(tmp_path / "index")
    after = loaded.search(vectors[:20], 5)
    assert loaded.kind == kind and len(loaded) == len(ids)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_allclose(before.scores, after.scores, rtol=1e-5)
    assert after.ids[0, 0] == "i0"


def test_corrupt_index_file_is_refused(tmp_path: Path) -> None:
    index = FaissIndex(8, "exact")
    index.add(["a", "b"], np.eye(2, 8))
    index.save(tmp_path / "index")
    data = (tmp_path / "index" / "faiss.index").read_bytes()
    (tmp_path / "index" / "faiss.index").write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match=r"faiss.index: corrupt index file"):
        load_index(tmp_path / "index")
    with pytest.raises(IndexFileError, match="file missing"):
        load_index(tmp_path / "nowhere")


def test_index_choice_and_bad_input() -> None:
    assert build_index(8, 1_000).kind == "exact"
    assert build_index(8, 500_000).kind == "hnsw"
    assert build_index(8, 5_000_000).kind == "ivf"
    index = build_index(8, 10)
    with pytest.raises(ValueError, match=r"shape \[n, 8\]"):
        index.add(["a"], np.ones((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        index.add(["a"], np.full((1, 8), np.nan))
    assert index.search(np.ones((1, 8)), 3).ids.tolist() == [["", "", ""]]
