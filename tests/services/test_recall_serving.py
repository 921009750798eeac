"""Serving a recall artifact trained in the test: the registry's current recall version is loaded
into the model bundle, its embedding channel recalls neighbours of the user's live sequence, and
`/v1/items/{id}/similar` answers from its index (category neighbours for items it does not know)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from feature_store.settings import Settings
from models.embeddings.skipgram import SkipGramConfig, SkipGramTrainer
from models.evaluation.baselines import PopularityRecommender
from models.registry import ModelRegistry
from models.retrieval.artifact import RecallArtifact
from services.api.app import create_app
from tests.models.planted_clusters import CLUSTERS, PER_CLUSTER, cluster_of, planted_sequences
from tests.services.conftest import EventFactory, with_api

KEY = {"X-API-Key": "k"}
GENRES = 5  # catalog categories cut across the planted clusters, so only embeddings know them


@pytest.fixture(scope="module")
def recall_registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    sequences = planted_sequences(users=300)
    config = SkipGramConfig(dim=16, window=3, negatives=5, epochs=3, batch_size=512, learning_rate=0.1)
    item2vec = SkipGramTrainer(config).fit(sequences)
    folder = tmp_path_factory.mktemp("artifact") / "recall"
    RecallArtifact.build({"item2vec": item2vec}, PopularityRecommender(sequences), "exact").save(folder)
    registry = ModelRegistry(tmp_path_factory.mktemp("registry"))
    manifest = {"params": {}, "data_window": {}, "metrics": {}, "models": ["item2vec"]}
    version = registry.publish("recall", folder, manifest, move=True)
    registry.set_current("recall", version)
    return registry.root, version


def _seed(client: TestClient, make_event: EventFactory) -> None:
    for item in range(CLUSTERS * PER_CLUSTER):
        response = client.put(f"/v1/items/i{item}", json={"title": f"Film {item}", "categories": [f"g{item % GENRES}"]},
                              headers=KEY)
        assert response.status_code == 200, response.text
    crowd = [make_event(f"crowd{n}", f"i{item}") for item in range(0, CLUSTERS * PER_CLUSTER, 7) for n in range(2)]
    assert client.post("/v1/events", json=crowd, headers=KEY).status_code == 202


def test_embedding_recall_and_similar_items_come_from_the_published_artifact(
    api_settings: Settings, recall_registry: tuple[Path, str], make_event: EventFactory
) -> None:
    root, version = recall_registry
    # 20 candidates: each channel's list stays within the 25 unseen items of a cluster, so an item
    # tagged item2vec is one the embeddings put near the user's items, not the tail of a long list.
    settings = with_api(api_settings.model_copy(update={"registry_dir": root}), api_keys=["k"], recall_candidates=20)
    with TestClient(create_app(settings)) as client:
        _seed(client, make_event)
        cluster = 3
        liked = [f"i{cluster * PER_CLUSTER + n}" for n in range(5)]
        client.post("/v1/events", json=[make_event("fan", item) for item in liked], headers=KEY)

        body = client.get("/v1/users/fan/recommendations", params={"k": 20}).json()
        assert body["model_versions"] == {"recall": version}, body
        from_embeddings = [item["item_id"] for item in body["items"] if "item2vec" in item["sources"]]
        assert len(from_embeddings) >= 5, body["items"]
        clusters = Counter(cluster_of(item) for item in from_embeddings)
        assert clusters.most_common(1)[0][0] == cluster and clusters[cluster] >= 8, clusters
        assert not set(liked) & {item["item_id"] for item in body["items"]}

        similar = client.get(f"/v1/items/{liked[0]}/similar", params={"k": 10}).json()
        assert similar["source"] == "embedding"
        neighbours = [item["item_id"] for item in similar["items"]]
        assert len(neighbours) == 10 and liked[0] not in neighbours
        assert sum(cluster_of(item) == cluster for item in neighbours) >= 7, neighbours

        client.put("/v1/items/brand-new", json={"title": "New", "categories": ["g2"]}, headers=KEY)
        fresh = client.get("/v1/items/brand-new/similar", params={"k": 5}).json()
        assert fresh["source"] == "category"
        assert all(int(item["item_id"][1:]) % GENRES == 2 for item in fresh["items"]) and fresh["items"]
