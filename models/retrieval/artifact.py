"""The recall artifact: per embedding model its vectors and index, plus the item-CF
neighbours and the popularity list, in one folder that the registry publishes.

    <folder>/<model>/vectors.npy, ids.json      item embeddings
    <folder>/<model>/index/index.json, ...      its recall index
    <folder>/popular.json                      [[item, count], ...] from training
    <folder>/blend/blend.json, channels/...    optional: the learned blend (`models.retrieval.blend`)
    <folder>/blend/order.json                  its validation choice of order (`order_choice`)

An artifact without `blend/` (older versions) serves the rank-interleaved channels as before.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.embeddings.item_embeddings import ItemEmbeddings
from models.evaluation.baselines import ItemKNNRecommender, PopularityRecommender
from models.registry import ModelRegistry
from models.retrieval import RecallIndex, build_index, load_index
from models.retrieval.blend import BLEND_FILE, BlendedRecall
from models.retrieval.multichannel import (
    EmbeddingNeighbourChannel, ItemCFChannel, MultiChannelRecall, PopularChannel, RecallChannel,
)  # fmt: skip
from models.retrieval.order_choice import OrderChoice

ROLE = "recall"
POPULAR_FILE = "popular.json"
BLEND_DIR = "blend"
ORDER_FILE = "order.json"


@dataclass
class RecallArtifact:
    embeddings: dict[str, ItemEmbeddings]
    indexes: dict[str, RecallIndex]
    popular: list[tuple[str, float]]
    blend: BlendedRecall | None = None
    order: OrderChoice | None = None

    @classmethod
    def build(cls, embeddings: dict[str, ItemEmbeddings], popular: PopularityRecommender, index_kind: str = "auto") -> "RecallArtifact":
        indexes: dict[str, RecallIndex] = {}
        for name, model in embeddings.items():
            index = build_index(model.dim, len(model.ids), index_kind)
            index.add(model.ids.tolist(), model.vectors)
            indexes[name] = index
        return cls(embeddings, indexes, popular.top(1000))

    def save(self, folder: Path) -> None:
        for name, model in self.embeddings.items():
            model.save(folder / name)
            self.indexes[name].save(folder / name / "index")
        (folder / POPULAR_FILE).write_text(json.dumps(self.popular), encoding="utf-8")
        if self.blend is not None:
            self.blend.save(folder / BLEND_DIR)
            if self.order is not None:
                (folder / BLEND_DIR / ORDER_FILE).write_text(json.dumps(self.order.to_dict()), encoding="utf-8")

    def blend_summary(self) -> dict[str, Any] | None:
        """What the manifest says about the blend: normalisation, weights, the order choice."""
        if self.blend is None:
            return None
        return self.blend.summary() | {"order": None if self.order is None else self.order.to_dict()}

    @classmethod
    def load(cls, folder: Path, models: list[str]) -> "RecallArtifact":
        embeddings = {name: ItemEmbeddings.load(folder / name) for name in models}
        indexes = {name: load_index(folder / name / "index") for name in models}
        popular = [(item, float(score)) for item, score in json.loads((folder / POPULAR_FILE).read_text("utf-8"))]
        return cls(embeddings, indexes, popular)

    @staticmethod
    def load_blend(folder: Path) -> tuple[BlendedRecall, OrderChoice | None] | None:
        """The artifact's blend and its order choice; None for an artifact without a blend."""
        if not (folder / BLEND_DIR / BLEND_FILE).is_file():
            return None
        order_file = folder / BLEND_DIR / ORDER_FILE
        order = OrderChoice.from_dict(json.loads(order_file.read_text("utf-8"))) if order_file.is_file() else None
        return BlendedRecall.load(folder / BLEND_DIR), order

    def channels(self, item_cf: ItemKNNRecommender | None = None, recent: int = 5) -> list[RecallChannel]:
        """One neighbour channel per embedding model, item-CF when given, and popular."""
        found: list[RecallChannel] = [
            EmbeddingNeighbourChannel(name, self.embeddings[name], self.indexes[name], recent) for name in self.embeddings
        ]
        if item_cf is not None:
            found.append(ItemCFChannel(item_cf, recent))
        found.append(PopularChannel(lambda n: self.popular[:n]))
        return found

    def multichannel(self, item_cf: ItemKNNRecommender | None = None, quotas: dict[str, int] | None = None) -> MultiChannelRecall:
        return MultiChannelRecall(self.channels(item_cf), quotas)


def publish_recall(registry: ModelRegistry, artifact: RecallArtifact, manifest: dict[str, Any], scratch: Path | None = None,
                   set_current: bool = True) -> str:  # fmt: skip
    """Publish `artifact` as a new ``recall`` version (the manifest gains its ``models`` list, which
    the API reads to load it); optionally make it current. `scratch` holds the folder until the
    registry moves it in (best on the registry's filesystem)."""
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        artifact.save(Path(folder) / ROLE)
        blend = {"blend": artifact.blend_summary()} if artifact.blend is not None else {}
        version = registry.publish(ROLE, Path(folder) / ROLE, {**manifest, "models": list(artifact.embeddings), **blend}, move=True)
    if set_current:
        registry.set_current(ROLE, version)
    return version
