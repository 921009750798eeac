"""faiss recall indexes: exact inner product, HNSW and IVF-Flat; on a GPU when faiss sees one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.retrieval.base import IndexFileError, RecallIndex

INDEX_FILE = "faiss.index"
EXACT_MAX_ITEMS = 20_000  # below this, brute force is fast enough and exact
HNSW_MAX_ITEMS = 2_000_000  # above this, HNSW's graph memory outgrows IVF's lists


def choose_kind(items: int) -> str:
    """The index kind for a catalog size: exact when small, HNSW up to millions, then IVF-Flat."""
    if items <= EXACT_MAX_ITEMS:
        return "exact"
    return "hnsw" if items <= HNSW_MAX_ITEMS else "ivf"


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class FaissIndex(RecallIndex):
    """faiss over normalized vectors with METRIC_INNER_PRODUCT (= cosine).

    kind "exact" (IndexFlatIP), "hnsw" (IndexHNSWFlat, `hnsw_m` links, `ef_search` beam), or
    "ivf" (IndexIVFFlat, `nlist` lists (default 4·√n), `nprobe` probed (default nlist/20); trained
    on the first `add`).
    Exact and IVF run on the GPU when faiss-gpu sees one (HNSW has no GPU version).

    `search_threads` > 0 caps faiss's OpenMP threads for searches (set per calling thread, as
    OpenMP requires): a server searching one user's few vectors per request wants 1, since an
    OpenMP team spinning on busy cores costs more than the search; 0 keeps faiss's default.
    """

    def __init__(
        self, dim: int, kind: str = "exact", *, hnsw_m: int = 32, ef_construction: int = 80,
        ef_search: int = 128, nlist: int | None = None, nprobe: int | None = None, use_gpu: bool | None = None,
    ) -> None:  # fmt: skip
        super().__init__(dim)
        if kind not in ("exact", "hnsw", "ivf"):
            raise ValueError(f"unknown faiss index kind {kind!r}: use exact, hnsw or ivf")
        self.kind = kind
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        self.nlist, self.nprobe = nlist, nprobe
        self.use_gpu = gpu_available() if use_gpu is None else use_gpu
        self.search_threads = 0
        self._index: Any = None

    def _build(self, vectors: np.ndarray) -> Any:
        import faiss

        if self.kind == "exact":
            index = faiss.IndexFlatIP(self.dim)
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
        else:
            self.nlist = self.nlist or max(1, min(int(4 * np.sqrt(len(vectors))), len(vectors) // 39 or 1))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        if self.use_gpu and self.kind != "hnsw":
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        if self.kind == "ivf":
            index.train(vectors)
        return index

    def _add(self, vectors: np.ndarray) -> None:
        if self._index is None:
            self._index = self._build(vectors)
        self._index.add(vectors)

    def _search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None:
            return np.full((len(vectors), k), -np.inf, np.float32), np.full((len(vectors), k), -1, np.int64)
        self._tune()
        if self.search_threads > 0:
            import faiss

            faiss.omp_set_num_threads(self.search_threads)
        return self._index.search(vectors, k)

    def _tune(self) -> None:
        if self.kind == "hnsw":
            self._index.hnsw.efSearch = self.ef_search
        elif self.kind == "ivf":
            # Default: probe ~5% of the lists, which keeps recall@100 high on clustered embeddings.
            self._index.nprobe = self.nprobe or max(8, (self.nlist or 1) // 20)

    def _save(self, folder: Path) -> list[str]:
        import faiss

        if self._index is None:
            return []
        index = faiss.index_gpu_to_cpu(self._index) if self.use_gpu and self.kind != "hnsw" else self._index
        faiss.write_index(index, str(folder / INDEX_FILE))
        return [INDEX_FILE]

    def _params(self) -> dict[str, Any]:
        return {"hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                "nlist": self.nlist, "nprobe": self.nprobe}  # fmt: skip

    @classmethod
    def _load(cls, folder: Path, meta: dict[str, Any]) -> "FaissIndex":
        import faiss

        index = cls(meta["dim"], meta["kind"], use_gpu=False, **meta["params"])
        if (folder / INDEX_FILE).exists():
            try:
                index._index = faiss.read_index(str(folder / INDEX_FILE))
            except RuntimeError as exc:
                raise IndexFileError(f"{folder / INDEX_FILE}: faiss cannot read it ({str(exc).splitlines()[0]})") from None
            if index._index.ntotal != len(meta["ids"]) or index._index.d != meta["dim"]:
                raise IndexFileError(f"{folder / INDEX_FILE}: holds {index._index.ntotal} vectors of dim "
                                     f"{index._index.d}, index.json says {len(meta['ids'])} of dim {meta['dim']}")
        return index
