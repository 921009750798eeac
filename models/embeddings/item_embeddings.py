"""Item vectors with their ids: the output of every embedding trainer and the input of recall."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VECTORS_FILE = "vectors.npy"
IDS_FILE = "ids.json"


@dataclass(frozen=True)
class ItemEmbeddings:
    """`vectors[i]` is the embedding of item `ids[i]`; `counts[i]` its training frequency."""

    ids: np.ndarray  # str [V]
    vectors: np.ndarray  # float32 [V, D]
    counts: np.ndarray | None = None  # int64 [V]

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or len(self.ids) != len(self.vectors):
            raise ValueError(f"{len(self.ids)} ids for vectors of shape {self.vectors.shape}")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def position(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.ids.tolist())}

    def normalized(self) -> np.ndarray:
        """Unit-length vectors (inner product = cosine); zero vectors stay zero."""
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        return (self.vectors / np.maximum(norms, 1e-12)).astype(np.float32)

    def lookup(self, items: list[str]) -> np.ndarray:
        """Vectors of the known `items`, in order, unknown ones skipped."""
        position = self.position()
        rows = [position[item] for item in items if item in position]
        return self.vectors[rows]

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / VECTORS_FILE, self.vectors.astype(np.float32), allow_pickle=False)
        payload = {"ids": self.ids.tolist(), "counts": None if self.counts is None else self.counts.tolist()}
        (folder / IDS_FILE).write_text(json.dumps(payload), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "ItemEmbeddings":
        try:
            vectors = np.load(folder / VECTORS_FILE, allow_pickle=False)
            payload = json.loads((folder / IDS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load item embeddings from {folder}: {exc}") from exc
        counts = payload.get("counts")
        return cls(
            np.array(payload["ids"], dtype=str),
            vectors.astype(np.float32),
            None if counts is None else np.array(counts, dtype=np.int64),
        )
