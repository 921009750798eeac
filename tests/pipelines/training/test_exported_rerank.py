"""The DAG's blend fitting scores candidates with the published ranker as the API serves them: an
item without a category is the ranker's `unknown` category (as in its training rows and at
serving), not the lookups' padding token."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from feature_store.definitions import UNKNOWN_CATEGORY
from models.ranking.export import load_exported
from models.ranking.inference import as_request
from models.registry import ModelRegistry
from pipelines.training.blend import exported_rerank
from tests.services.test_models import published  # noqa: F401  (the module's two trained DIN versions)


def test_an_uncategorised_item_is_scored_as_the_unknown_category(published: tuple[Path, list[str]]) -> None:  # noqa: F811
    root, versions = published
    folder = ModelRegistry(root).get("ranker", versions[0]).path
    history, items = ["i3", "i11", "x1"], ["i1", "x2", "x3"]
    scores = exported_rerank(folder, {"i3": "c3", "i11": "c3", "i1": "c1"})(0, history, items)

    saved_model, spec = load_exported(folder)
    def scored(missing: str) -> np.ndarray:
        request: dict[str, object] = {
            "user_id": "validation-0", "hist_item_ids": history, "hist_categories": ["c3", "c3", missing],
            "item_id": items, "item_category": ["c1", missing, missing]}
        for index, name in enumerate(spec.dense_features):
            request[name] = np.full(len(items), spec.dense_mean[index] if spec.dense_mean else 0.0, np.float32)
        return saved_model.signatures["serving_default"](**as_request(request))["score"].numpy()  # type: ignore[no-any-return]

    np.testing.assert_allclose(scores, scored(UNKNOWN_CATEGORY), rtol=1e-6)
    assert not np.allclose(scores, scored(""), rtol=1e-6)  # the padding token would score otherwise
