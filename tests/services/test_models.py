"""Serving real DIN rankers trained in the test: live behaviour drives the ranking, and a registry
version change swaps models under concurrent requests without a single failed request."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from feature_store.settings import Settings
from models.registry import ModelRegistry
from services.api.app import create_app
from tests.models.ranking.conftest import CATEGORIES, ITEMS, category_of, write_samples
from tests.services.conftest import EventFactory, live_server, with_api

pytestmark = pytest.mark.slow


def _train_and_publish(registry: ModelRegistry, work: Path, seed: int, epochs: int) -> str:
    from models.ranking.din import DIN
    from models.ranking.dataset import build_spec
    from models.ranking.export import build_manifest, export_ranker, publish_ranker
    from models.ranking.trainer import TrainConfig, Trainer

    samples = write_samples(work / f"samples-{seed}.parquet", rows=20000, seed=seed)
    spec = build_spec(samples, ("item_pop_7d", "user_event_count"), max_seq_len=20)
    model = DIN(spec, embedding_dim=8, attention_units=(16,), hidden_units=(32, 16), learning_rate=1e-2)
    config = TrainConfig(epochs=epochs, batch_size=128, shuffle_buffer=4000, patience=2, seed=seed)
    result = Trainer(model, config, show_progress=False).fit(samples)
    assert result.validation["auc"] > 0.75, result.validation  # it learned the planted rule
    artifact = export_ranker(model, work / f"artifact-{seed}")
    manifest = build_manifest(model, config, result, {"validation": result.validation})
    return publish_ranker(registry, artifact, manifest, set_current=False)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A registry with two DIN versions trained on planted-rule samples (clicks follow the categories
    of the user's history)."""
    root = tmp_path_factory.mktemp("registry")
    registry = ModelRegistry(root)
    work = tmp_path_factory.mktemp("train")
    versions = [_train_and_publish(registry, work, seed, epochs) for seed, epochs in ((7, 3), (8, 2))]
    registry.set_current("ranker", versions[0])
    return root, versions


def _model_settings(api_settings: Settings, registry_root: Path) -> Settings:
    settings = api_settings.model_copy(update={"registry_dir": registry_root})
    return with_api(settings, model_poll_interval_s=0.2, api_keys=["k"])


def _seed_catalog(client: TestClient, make_event: EventFactory) -> None:
    for item in range(ITEMS):
        client.put(f"/v1/items/i{item}", json={"title": f"Film {item}", "categories": [category_of(item)]},
                   headers={"X-API-Key": "k"})
    crowd = [make_event(f"crowd{n}", f"i{item}") for item in range(0, ITEMS, 3) for n in range(1 + item % 4)]
    assert client.post("/v1/events", json=crowd, headers={"X-API-Key": "k"}).json()["accepted"] == len(crowd)


def test_live_clicks_drive_din_ranking_without_retraining(
    api_settings: Settings, published: tuple[Path, list[str]], make_event: EventFactory
) -> None:
    root, versions = published
    ModelRegistry(root).set_current("ranker", versions[0])
    with TestClient(create_app(_model_settings(api_settings, root))) as client:
        _seed_catalog(client, make_event)
        cold = client.get("/v1/users/newbie/recommendations", params={"k": 10}).json()
        assert cold["model_versions"] == {"ranker": versions[0]} and cold["fallback"] is None
        assert cold["items"], "an unknown user still gets a list"

        liked = [f"i{n * CATEGORIES + 3}" for n in range(4)]  # four items of category c3
        client.post("/v1/events", json=[make_event("newbie", item) for item in liked], headers={"X-API-Key": "k"})
        warm = client.get("/v1/users/newbie/recommendations", params={"k": 10}).json()
        ids = [item["item_id"] for item in warm["items"]]
        assert not set(liked) & set(ids)
        categories = Counter(category_of(int(i[1:])) for i in ids)
        assert categories["c3"] >= 7, categories  # DIN learned: candidates matching the history win
        assert any(item["reason"].startswith("because you watched Film ") for item in warm["items"])


def test_model_swap_under_concurrent_requests_has_zero_errors(
    api_settings: Settings, published: tuple[Path, list[str]], make_event: EventFactory
) -> None:
    root, versions = published
    registry = ModelRegistry(root)
    registry.set_current("ranker", versions[0])
    app = create_app(_model_settings(api_settings, root))
    with live_server(app) as base_url, httpx.Client(base_url=base_url, timeout=10) as setup:
        setup.post("/v1/events", json=[make_event("crowd", f"i{i}") for i in range(20)], headers={"X-API-Key": "k"})
        seen_versions: Counter[str] = Counter()
        failures: list[str] = []
        stop = threading.Event()

        def hammer(user: str) -> None:
            with httpx.Client(base_url=base_url, timeout=10) as client:
                while not stop.is_set():
                    response = client.get(f"/v1/users/{user}/recommendations", params={"k": 5})
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                        continue
                    seen_versions[response.json()["model_versions"].get("ranker", "none")] += 1

        threads = [threading.Thread(target=hammer, args=(f"user{n}",)) for n in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120  # waited for, not slept on: a busy machine answers slowly
        while seen_versions[versions[0]] < 20 and not failures and time.monotonic() < deadline:
            time.sleep(0.1)
        registry.set_current("ranker", versions[1])  # the poller picks it up and swaps in the background
        deadline = time.monotonic() + 120
        while seen_versions[versions[1]] < 20 and not failures and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert seen_versions[versions[0]] > 0 and seen_versions[versions[1]] >= 20
    assert set(seen_versions) == set(versions)


def test_a_ranker_of_another_family_is_refused_and_popularity_serves(
    api_settings: Settings, published: tuple[Path, list[str]], make_event: EventFactory
) -> None:
    root, versions = published
    ModelRegistry(root).set_current("ranker", versions[0])
    settings = with_api(_model_settings(api_settings, root), ranker="wide_deep")
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["fallback"] == "popularity"
        assert "wide_deep" in ready["model_errors"][f"ranker/{versions[0]}"]
        client.post("/v1/events", json=[make_event("crowd", "i1")], headers={"X-API-Key": "k"})
        body = client.get("/v1/users/u/recommendations").json()
        assert body["fallback"] == "popularity" and body["model_versions"] == {} and body["items"]


def _publish_truncated(registry: ModelRegistry, good: str, work: Path) -> str:
    """A copy of ranker `good` with its SavedModel graph cut in half, published (checksums of the
    cut file, so only loading it can tell) and made current."""
    artifact = work / "truncated"
    shutil.copytree(registry.get("ranker", good).path, artifact, ignore=shutil.ignore_patterns("manifest.json"))
    graph = artifact / "saved_model" / "saved_model.pb"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    written_by_registry = ("role", "version", "created_at", "files")
    manifest = {k: v for k, v in registry.load_manifest("ranker", good).items() if k not in written_by_registry}
    version = registry.publish("ranker", artifact, manifest)
    registry.set_current("ranker", version)
    return version


def test_a_corrupt_ranker_at_current_keeps_the_last_good_one_serving(
    api_settings: Settings, published: tuple[Path, list[str]], make_event: EventFactory, tmp_path: Path
) -> None:
    root, versions = published
    registry = ModelRegistry(root)
    registry.set_current("ranker", versions[0])
    settings = with_api(_model_settings(api_settings, root), model_poll_interval_s=3600.0)  # only the reload swaps
    with TestClient(create_app(settings)) as client:
        client.post("/v1/events", json=[make_event("crowd", f"i{i}") for i in range(20)], headers={"X-API-Key": "k"})
        corrupt = _publish_truncated(registry, versions[1], tmp_path)

        reload = client.post("/v1/admin/models/reload", headers={"X-API-Key": "k"}).json()
        assert reload["swapped"] is False and reload["model_versions"] == {"ranker": versions[0]}
        assert f"ranker/{corrupt}: " in reload["error"] and "saved_model.pb" in reload["error"], reload
        body = client.get("/v1/users/u/recommendations").json()
        assert body["model_versions"] == {"ranker": versions[0]} and body["fallback"] is None and body["items"]
        ready = client.get("/readyz").json()
        assert ready["fallback"] is None and f"ranker/{corrupt}" in ready["model_errors"]

        registry.set_current("ranker", versions[1])  # a good version after the bad one swaps in
        reload = client.post("/v1/admin/models/reload", headers={"X-API-Key": "k"}).json()
        assert reload == {**reload, "swapped": True, "model_versions": {"ranker": versions[1]}, "error": None}


def test_a_current_that_does_not_read_keeps_the_last_good_one_and_is_retried_once_repaired(
    api_settings: Settings, published: tuple[Path, list[str]], tmp_path: Path
) -> None:
    root, versions = published
    shutil.copytree(root, tmp_path / "registry")  # this test damages a manifest: its own copy
    registry = ModelRegistry(tmp_path / "registry")
    registry.set_current("ranker", versions[0])
    settings = with_api(_model_settings(api_settings, tmp_path / "registry"), model_poll_interval_s=3600.0, model_retry_s=0.5)
    with TestClient(create_app(settings)) as client:
        manifest = registry.get("ranker", versions[1]).path / "manifest.json"
        text = manifest.read_text()
        registry.set_current("ranker", versions[1])
        manifest.write_text("{")  # damaged (or briefly missing on a network filesystem) after the pointer moved

        reload = client.post("/v1/admin/models/reload", headers={"X-API-Key": "k"}).json()
        assert reload["swapped"] is False and reload["model_versions"] == {"ranker": versions[0]}  # still served
        assert f"ranker/{versions[1]}: " in reload["error"] and "manifest is not valid JSON" in reload["error"]
        assert f"ranker/{versions[1]}" in client.get("/readyz").json()["model_errors"]

        manifest.write_text(text)
        time.sleep(0.6)  # past api.model_retry_s: the failure is not final
        reload = client.post("/v1/admin/models/reload", headers={"X-API-Key": "k"}).json()
        assert reload == {**reload, "swapped": True, "model_versions": {"ranker": versions[1]}, "error": None}
