"""Promotion and rollback reach a running API: through the admin API (the answering worker swaps
at once) and through `recsys models` (the worker's registry poll picks it up), with zero failed
requests from concurrent clients during the swaps; a rolled-back version cannot be promoted."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from feature_store.settings import Settings
from models.registry import ModelRegistry
from services.api.app import create_app
from services.cli import app as cli
from tests.models.ranking.conftest import write_samples
from tests.services.conftest import EventFactory, live_server, with_api

pytestmark = pytest.mark.slow
KEY = {"X-API-Key": "k"}


def _train(registry: ModelRegistry, work: Path, seed: int) -> str:
    from models.ranking.dataset import build_spec
    from models.ranking.din import DIN
    from models.ranking.export import build_manifest, export_ranker, publish_ranker
    from models.ranking.trainer import TrainConfig, Trainer

    samples = write_samples(work / f"samples-{seed}.parquet", rows=2000, seed=seed)
    spec = build_spec(samples, ("item_pop_7d", "user_event_count"), max_seq_len=10)
    model = DIN(spec, embedding_dim=4, attention_units=(8,), hidden_units=(8,))
    config = TrainConfig(epochs=1, batch_size=256, seed=seed)
    result = Trainer(model, config, show_progress=False).fit(samples)
    manifest = build_manifest(model, config, result, {"validation": result.validation})
    return publish_ranker(registry, export_ranker(model, work / f"artifact-{seed}"), manifest, set_current=False)


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root, work = tmp_path_factory.mktemp("registry"), tmp_path_factory.mktemp("train")
    registry = ModelRegistry(root)
    versions = [_train(registry, work, seed) for seed in (1, 2)]
    for version in versions:
        registry.bless("ranker", version, {"planted": "blessed by the test"})
    registry.promote("ranker", versions[0])
    return root, versions


class Load:
    """Four clients asking for recommendations until stopped; counts served versions and failures."""

    def __init__(self, base_url: str) -> None:
        self.base_url, self.served, self.failures = base_url, Counter[str](), list[str]()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(f"user{n}",)) for n in range(4)]

    def _client(self, user: str) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while not self.stop.is_set():
                response = client.get(f"/v1/users/{user}/recommendations", params={"k": 5})
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")
                else:
                    self.served[response.json()["model_versions"].get("ranker", "none")] += 1

    def wait_for(self, version: str, answers: int = 10) -> None:
        """Until `answers` more responses came from `version` (waited for, never slept on)."""
        target, deadline = self.served[version] + answers, time.monotonic() + 120
        while self.served[version] < target and not self.failures and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.served[version] >= target and not self.failures, (self.served, self.failures[:3])

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


@pytest.fixture
def base_url(api_settings: Settings, two_versions: tuple[Path, list[str]], make_event: EventFactory) -> Iterator[str]:
    settings = with_api(api_settings.model_copy(update={"registry_dir": two_versions[0]}), model_poll_interval_s=0.2, api_keys=["k"])
    with live_server(create_app(settings)) as url:
        httpx.post(f"{url}/v1/events", json=[make_event("crowd", f"i{i}") for i in range(20)], headers=KEY, timeout=30)
        yield url


def test_promote_and_rollback_reach_the_running_api_without_failed_requests(
    base_url: str, two_versions: tuple[Path, list[str]], api_settings: Settings
) -> None:
    root, (v1, v2) = two_versions
    admin = httpx.Client(base_url=base_url, headers=KEY, timeout=60)
    assert httpx.post(f"{base_url}/v1/admin/models/promote", json={"version": v2}).status_code == 401
    with Load(base_url) as load:
        load.wait_for(v1)
        promoted = admin.post("/v1/admin/models/promote", json={"version": v2})
        assert promoted.status_code == 200 and promoted.json()["serving"] == {"ranker": v2}, promoted.text
        load.wait_for(v2)

        state_dir = ["--state-dir", str(api_settings.state_dir)]
        env = {"RECSYS_REGISTRY_DIR": str(root)}
        rolled = CliRunner().invoke(cli, ["models", "rollback", "--role", "ranker", *state_dir], env=env)
        assert rolled.exit_code == 0 and v1 in rolled.output, rolled.output
        load.wait_for(v1)  # the API's registry poll found the new CURRENT

        refused = admin.post("/v1/admin/models/promote", json={"version": v2})
        assert refused.status_code == 409 and "rolled back" in refused.text
        again = CliRunner().invoke(cli, ["models", "promote", v2, *state_dir], env=env)
        assert again.exit_code == 2 and "rolled back" in again.output
        load.wait_for(v1)
    assert load.failures == [] and load.served[v1] and load.served[v2]
    rows = {row["version"]: row for row in admin.get("/v1/admin/models").json()["versions"]}
    assert rows[v1]["current"] and rows[v1]["blessed"] and rows[v2]["revoked"] and not rows[v2]["current"]
    history = [(entry["action"], entry["version"]) for entry in ModelRegistry(root).history("ranker")]
    assert history == [("promote", v1), ("promote", v2), ("rollback", v1)]


def test_a_rollback_swaps_back_to_the_models_still_in_memory(
    api_settings: Settings, two_versions: tuple[Path, list[str]], tmp_path: Path
) -> None:
    shutil.copytree(two_versions[0], tmp_path / "registry")
    registry, (v1, v2) = ModelRegistry(tmp_path / "registry"), two_versions[1]
    registry.bless("ranker", v2, {"planted": "blessed again for this test"})  # the other test rolled it back
    registry.promote("ranker", v1)
    settings = with_api(api_settings.model_copy(update={"registry_dir": tmp_path / "registry"}), model_poll_interval_s=3600.0,
                        api_keys=["k"])  # fmt: skip
    with TestClient(create_app(settings)) as client:
        models = client.app.state.service.models  # type: ignore[attr-defined]
        first = models.bundle.ranker
        assert client.post("/v1/admin/models/promote", json={"version": v2}, headers=KEY).json()["serving"] == {"ranker": v2}
        assert models.bundle.ranker is not first
        assert client.post("/v1/admin/models/rollback", json={"role": "ranker"}, headers=KEY).json()["serving"] == {"ranker": v1}
        assert models.bundle.ranker is first  # not loaded again: the swap is one reference assignment
