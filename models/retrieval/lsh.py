"""Locality-sensitive hashing with random projections (p-stable LSH, Datar et al. 2004).

Each of `tables` hash tables maps a vector v to the key (⌊(a_j·v + b_j) / w⌋ for j = 1..bits),
with a_j Gaussian and b_j uniform in [0, w): close vectors share a bucket. Candidates are the
union (OR) of the query's buckets over all tables, re-scored exactly by inner product.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.retrieval.base import IndexFileError, RecallIndex

TABLES_FILE = "lsh.npz"


class LshIndex(RecallIndex):
    """Random-projection LSH over normalized vectors; `width` is the bucket width w.

    The defaults (16 tables x 10 projections, w=2.5) suit top-10. For k=100 use wider, coarser
    buckets, e.g. 16 tables x 8 projections with w=4: recall@100 0.93 on 100k clustered vectors
    of dim 64 (benchmarks/embeddings.py), at the price of ~30% of the items as candidates.
    """

    kind = "lsh"

    def __init__(self, dim: int, *, tables: int = 16, bits: int = 10, width: float = 2.5, seed: int = 0) -> None:
        super().__init__(dim)
        if tables < 1 or bits < 1 or width <= 0:
            raise ValueError(f"LSH needs tables >= 1, bits >= 1, width > 0 (got {tables}, {bits}, {width})")
        self.tables, self.bits, self.width, self.seed = tables, bits, width, seed
        rng = np.random.default_rng(seed)
        self.projections = rng.standard_normal((tables, dim, bits)).astype(np.float32)
        self.offsets = rng.uniform(0, width, (tables, bits)).astype(np.float32)
        self.vectors = np.empty((0, dim), np.float32)
        self._sorted_keys = np.empty((tables, 0), np.int64)
        self._order = np.empty((tables, 0), np.int64)

    def _keys(self, vectors: np.ndarray) -> np.ndarray:
        """int64 [tables, n] bucket keys: the `bits` bucket numbers hashed into one integer."""
        buckets = np.floor((np.einsum("nd,tdb->tnb", vectors, self.projections) + self.offsets[:, None, :]) / self.width)
        mix = np.random.default_rng(self.seed + 1).integers(1, 2**31, self.bits, dtype=np.int64)
        return (buckets.astype(np.int64) * mix).sum(axis=2)

    def _add(self, vectors: np.ndarray) -> None:
        self.vectors = np.concatenate([self.vectors, vectors])
        keys = self._keys(self.vectors)
        self._order = np.argsort(keys, axis=1, kind="stable")
        self._sorted_keys = np.take_along_axis(keys, self._order, axis=1)

    def candidates(self, query_keys: np.ndarray) -> np.ndarray:
        """Item positions sharing a bucket with the query in any table (OR over tables)."""
        found = []
        for table in range(self.tables):
            keys = self._sorted_keys[table]
            lo = np.searchsorted(keys, query_keys[table], side="left")
            hi = np.searchsorted(keys, query_keys[table], side="right")
            found.append(self._order[table, lo:hi])
        return np.unique(np.concatenate(found))

    def _search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(vectors), k), -np.inf, np.float32)
        labels = np.full((len(vectors), k), -1, np.int64)
        if len(self.vectors) == 0:
            return scores, labels
        keys = self._keys(vectors)
        for row, query in enumerate(vectors):
            found = self.candidates(keys[:, row])
            if len(found) == 0:
                continue
            exact = self.vectors[found] @ query
            # Per query on purpose: a version batching all queries' (query, item) pairs through
            # numpy was measured 2-5x slower (the pair arrays are tables x bucket size per query).
            top = np.argpartition(-exact, k - 1)[:k] if len(exact) > k else np.arange(len(exact))
            top = top[np.argsort(-exact[top])]
            scores[row, : len(top)], labels[row, : len(top)] = exact[top], found[top]
        return scores, labels

    def _save(self, folder: Path) -> list[str]:
        np.savez(folder / TABLES_FILE, vectors=self.vectors, projections=self.projections, offsets=self.offsets)
        return [TABLES_FILE]

    def _params(self) -> dict[str, Any]:
        return {"tables": self.tables, "bits": self.bits, "width": self.width, "seed": self.seed}

    @classmethod
    def _load(cls, folder: Path, meta: dict[str, Any]) -> "LshIndex":
        index = cls(meta["dim"], **meta["params"])
        try:
            with np.load(folder / TABLES_FILE, allow_pickle=False) as data:
                vectors, index.projections, index.offsets = data["vectors"], data["projections"], data["offsets"]
        except (OSError, ValueError, KeyError) as exc:
            raise IndexFileError(f"{folder / TABLES_FILE}: cannot read LSH tables ({exc})") from None
        index._add(vectors)
        return index
