"""Recall indexes behind one interface (`RecallIndex`: add, search, save, load) and the
multi-channel recall that merges them."""

from __future__ import annotations

from pathlib import Path

from models.retrieval.base import IndexFileError, RecallIndex, SearchResult, read_meta
from models.retrieval.faiss_index import FaissIndex, choose_kind
from models.retrieval.lsh import LshIndex

__all__ = ["FaissIndex", "IndexFileError", "LshIndex", "RecallIndex", "SearchResult", "build_index", "load_index"]


def build_index(dim: int, items: int, kind: str = "auto") -> RecallIndex:
    """A new empty index: `kind` "auto" picks exact/HNSW/IVF by catalog size; or "lsh"."""
    if kind == "lsh":
        return LshIndex(dim)
    return FaissIndex(dim, choose_kind(items) if kind == "auto" else kind)


def load_index(folder: Path) -> RecallIndex:
    """Load an index saved with `save`, refusing a corrupt or missing file with IndexFileError."""
    meta = read_meta(Path(folder))
    loader = {"lsh": LshIndex}.get(meta.get("kind", ""), FaissIndex)
    if meta.get("kind") not in ("lsh", "exact", "hnsw", "ivf"):
        raise IndexFileError(f"{Path(folder) / 'index.json'}: unknown index kind {meta.get('kind')!r}")
    index = loader._load(Path(folder), meta)
    import numpy as np

    index.ids = np.array(meta["ids"], dtype=str)
    return index
