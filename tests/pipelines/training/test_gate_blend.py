"""The gate scores what the API serves: a recall version with a learned blend is scored on the
held-out window through its blend (loaded from the registry), one without through its embedding
channels as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.embeddings.item_embeddings import ItemEmbeddings
from models.evaluation import LeaveLastOut, evaluate
from models.evaluation.baselines import PopularityRecommender
from models.registry import ModelRegistry
from models.retrieval.artifact import RecallArtifact, publish_recall
from pipelines.training import gate
from tests.models.evaluation.test_blend_artifact import _blend, _sequences


def test_a_recall_version_with_a_blend_is_gated_on_the_blend(tmp_path: Path) -> None:
    sequences = _sequences(seed=4)
    blend, _, _ = _blend(sequences)
    rng = np.random.default_rng(0)
    noise = ItemEmbeddings(blend.ids, rng.normal(size=(len(blend.ids), 8)).astype(np.float32))  # a useless embedding
    held_out = _sequences(users=60, seed=5)
    split = LeaveLastOut({f"u{n}": s[:-1] for n, s in enumerate(held_out)}, {f"u{n}": s[-1] for n, s in enumerate(held_out)})
    registry = ModelRegistry(tmp_path / "registry")
    versions = {}
    for name, with_blend in (("plain", False), ("blended", True)):
        artifact = RecallArtifact.build({"item2vec": noise}, PopularityRecommender(sequences), "exact")
        artifact.blend = blend if with_blend else None
        versions[name] = publish_recall(registry, artifact, {"params": {}, "data_window": {}, "metrics": {}}, set_current=False)
    plain = gate.recall_quality(gate.load_recall(registry.get("recall", versions["plain"])), split)
    blended = gate.recall_quality(gate.load_recall(registry.get("recall", versions["blended"])), split)
    assert blended == evaluate(blend, split, gate.RECALL_METRICS)
    assert blended["NDCG@10"] > plain["NDCG@10"] + 0.1, (blended, plain)  # the sequential signal, not the noise
