"""The recall-index interface: add item vectors, search by query vectors, save and load."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

META_FILE = "index.json"


class IndexFileError(RuntimeError):
    """An index folder is missing, corrupt or of another kind; the message names the file."""


@dataclass(frozen=True)
class SearchResult:
    """`ids[i, j]` is the j-th best item for query i ("" when fewer than k were found);
    `scores` are inner products (cosine for normalized vectors), -inf where empty."""

    ids: np.ndarray  # str [Q, k]
    scores: np.ndarray  # float32 [Q, k]


class RecallIndex(ABC):
    """Maximum-inner-product search over item vectors; every implementation normalizes vectors,
    so scores are cosine similarities."""

    kind: str

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"index dimension must be >= 1, got {dim}")
        self.dim = dim
        self.ids = np.empty(0, dtype=str)

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add items; `vectors` is float [n, dim] aligned with `ids`."""
        vectors = self._check(vectors)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        self._add(normalize(vectors))
        self.ids = np.concatenate([self.ids, np.asarray(ids, dtype=str)])

    def search(self, vectors: np.ndarray, k: int) -> SearchResult:
        """The `k` items with the highest cosine similarity to each query vector."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores, labels = self._search(normalize(self._check(vectors)), k)
        found = labels >= 0
        ids = np.where(found, self.ids[np.where(found, labels, 0)] if len(self.ids) else "", "")
        return SearchResult(ids.astype(str), np.where(found, scores, -np.inf).astype(np.float32))

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, folder: Path) -> None:
        """Write the index to `folder` (index.json plus the implementation's files)."""
        folder.mkdir(parents=True, exist_ok=True)
        files = self._save(folder)
        meta = {
            "kind": self.kind,
            "dim": self.dim,
            "ids": self.ids.tolist(),
            "params": self._params(),
            "sha256": {name: file_sha256(folder / name) for name in files},
        }
        (folder / META_FILE).write_text(json.dumps(meta), encoding="utf-8")

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape [n, {self.dim}], got {vectors.shape}")
        if not np.all(np.isfinite(vectors)):
            raise ValueError("vectors contain NaN or infinity")
        return np.ascontiguousarray(vectors)

    @abstractmethod
    def _add(self, vectors: np.ndarray) -> None: ...

    @abstractmethod
    def _search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def _save(self, folder: Path) -> list[str]: ...

    @abstractmethod
    def _params(self) -> dict[str, Any]: ...


def normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_meta(folder: Path) -> dict[str, Any]:
    """Read index.json and check every file it lists against its checksum."""
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexFileError(f"{path}: no index here (file missing)") from None
    except json.JSONDecodeError as exc:
        raise IndexFileError(f"{path}: not valid JSON ({exc})") from None
    for name, digest in meta.get("sha256", {}).items():
        if not (folder / name).is_file():
            raise IndexFileError(f"{folder / name}: index file missing")
        if file_sha256(folder / name) != digest:
            raise IndexFileError(f"{folder / name}: corrupt index file (checksum mismatch)")
    return meta
