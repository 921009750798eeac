"""The training DAG end to end, through `recsys train run`, on a small planted-cluster click log
(users browse one cluster; 3,600 clicks over 17 hours) with a real Redis, real Spark jobs and real
TensorFlow training: a step that fails (the ranker cannot publish: its registry folder is blocked
by a file) fails the run with every earlier step recorded; the recall step then fits the blend and
its order choice against the ranker just trained; resuming
the same run id skips the steps whose outputs are still there and reruns the failed one; the gate
blesses the recall candidate (no baseline yet: its floors) and rejects the ranker (a floor it cannot
reach), so only recall is promoted; the running API is told to reload and serves it."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from feature_store.settings import Settings
from models.registry import ModelRegistry
from pipelines.training.dag import runs_dir
from pipelines.training.records import RunStore
from services.api.app import create_app
from services.cli import app as cli
from tests.pipelines.training.conftest import planted_click_log
from tests.services.conftest import live_server, with_api

pytestmark = pytest.mark.slow

KEY = "dag-test-key"
SPARK_STEPS = {"compact": ["compact"], "attribution": ["attribution"],
               "batch_views": ["sequences", "item_graph", "batch_features", "ranking_samples"]}  # fmt: skip
TRAINING = {  # small Spark and models; no retry, so the blocked registry fails the run at once
    "RECSYS_SPARK__MASTER": "local[2]",
    "RECSYS_SPARK__SHUFFLE_PARTITIONS": "2",
    "RECSYS_TRAINING__STEP_RETRIES": "0",
    "RECSYS_TRAINING__EMBEDDING_MODELS": '["item2vec"]',
    "RECSYS_TRAINING__EMBEDDING_DIM": "16",
    "RECSYS_TRAINING__EMBEDDING_EPOCHS": "3",
    "RECSYS_TRAINING__RANKER_EPOCHS": "1",
    "RECSYS_TRAINING__RANKER_EMBEDDING_DIM": "4",
    "RECSYS_TRAINING__GATE__RANKER_AUC_FLOOR": "0.999",  # out of reach: the ranker is rejected
}


def _env(settings: Settings, api_url: str | None = None) -> dict[str, str]:
    env = {"RECSYS_REDIS__URL": settings.redis.url or "", "RECSYS_API__API_KEYS": json.dumps([KEY]), **TRAINING}
    return env | ({"RECSYS_TRAINING__NOTIFY_URLS": json.dumps([api_url])} if api_url else {})


def _train_run(settings: Settings, env: dict[str, str], *extra: str) -> Any:
    return CliRunner().invoke(cli, ["train", "run", "--state-dir", str(settings.state_dir), *extra], env=env)


def test_dag_fails_resumes_gates_promotes_and_the_api_swaps(settings: Settings, redis_client: Any) -> None:
    planted_click_log(settings, users=300, length=12, step=timedelta(hours=1))
    blocked = settings.model_registry_dir / "ranker"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")  # the ranker's publish fails on it, as on a broken volume

    failed = _train_run(settings, _env(settings))
    assert failed.exit_code == 1 and "training run failed" in failed.output, failed.output
    (first,) = RunStore(runs_dir(settings)).runs()
    statuses = {step.name: step.status for step in first.steps}
    assert first.status == "failed" and statuses == {
        "compact": "succeeded", "attribution": "succeeded", "batch_views": "succeeded", "ranker": "failed",
        "embeddings": "pending", "evaluate": "pending", "gate": "pending", "promote": "pending", "notify": "pending",
    }, statuses  # fmt: skip
    assert "FileExistsError" in first.step("ranker").error or "NotADirectoryError" in first.step("ranker").error
    for step, jobs in SPARK_STEPS.items():
        outputs = first.step(step).outputs
        assert sorted(outputs) == sorted(f"{job}_outputs" for job in jobs)
        assert all(Path(path).exists() for paths in outputs.values() for path in paths), outputs
        assert all(first.step(step).metrics[job]["rows_in"] > 0 for job in jobs), first.step(step).metrics
    assert first.step("batch_views").metrics["ranking_samples"]["rows_out"] > 3600  # the clicks and sampled negatives
    registry = ModelRegistry(settings.model_registry_dir)

    blocked.unlink()
    api = with_api(settings, api_keys=[KEY], model_poll_interval_s=3600.0)  # swaps only when told (notify)
    with live_server(create_app(api)) as url:
        assert httpx.get(f"{url}/v1/admin/models", headers={"X-API-Key": KEY}, timeout=30).json()["serving"] == {}
        resumed = _train_run(settings, _env(settings, url), "--resume", first.run_id)
        assert resumed.exit_code == 0, resumed.output
        serving = httpx.get(f"{url}/v1/admin/models", headers={"X-API-Key": KEY}, timeout=30).json()["serving"]
        served = httpx.get(f"{url}/v1/users/u1/recommendations", params={"k": 5}, timeout=60).json()["model_versions"]

    (run,) = RunStore(runs_dir(settings)).runs()  # the same run, continued
    assert run.run_id == first.run_id and run.status == "succeeded"
    for name in ("compact", "attribution", "batch_views"):  # skipped: their outputs still exist
        assert f"{name}: succeeded in an earlier attempt; skipped" in resumed.output
        assert run.step(name).started_at == first.step(name).started_at and run.step(name).outputs == first.step(name).outputs
    assert all(step.status == "succeeded" and step.duration_s is not None for step in run.steps)
    ranker_version = run.step("ranker").outputs["ranker_version"]
    assert run.step("ranker").attempts == 1 and registry.get("ranker", ranker_version)
    recall_version = run.step("embeddings").outputs["recall_version"]
    # The recall artifact holds the blend, fitted on validation, and its order choice against the
    # ranker this run trained, with the validation figures behind it.
    blend = registry.get("recall", recall_version).manifest["blend"]
    assert set(blend["weights"]) == {"itemknn", "itemknn_last1", "sr", "sr_last1", "itemknn_lastall", "gru4rec", "item2vec"}, blend
    order = blend["order"]
    assert order["ranker_version"] == ranker_version and order["users"] > 100 and order["order"] in ("blend", "ranker")
    assert order["blend_ndcg10"] > 0 and order["ranker_ndcg10"] is not None, order
    assert (order["order"] == "ranker") == (order["ranker_ndcg10"] > order["blend_ndcg10"])

    evaluation = run.step("evaluate").outputs["evaluation"]
    assert evaluation["held_out"]["from"] == run.step("embeddings").outputs["holdout_from"]
    assert evaluation["recall"]["baseline"] is None and evaluation["ranker"]["baseline"] is None
    decisions = run.step("gate").metrics
    assert run.step("gate").outputs == {"blessed": {"recall": True, "ranker": False}}, decisions
    for check in decisions["recall"]["checks"]:  # floors from chance, met
        chance = evaluation["recall"]["chance"][check["metric"]]
        assert 0 < chance < check["floor"] <= check["candidate"], check
    auc = next(check for check in decisions["ranker"]["checks"] if check["metric"] == "auc")
    assert auc["floor"] == 0.999 and auc["candidate"] < 0.999 and not auc["passed"], auc

    assert run.step("promote").outputs == {"promoted": {"recall": recall_version}}
    assert registry.current("recall").version == recall_version and registry.blessing("recall", recall_version)
    assert registry.current("ranker") is None and registry.blessing("ranker", ranker_version) is None
    (response,) = run.step("notify").metrics["responses"].values()
    assert response["swapped"] and response["model_versions"] == {"recall": recall_version}, response
    assert serving == {"recall": recall_version} and served.get("recall") == recall_version, (serving, served)
    assert served.get("ranker") in (None, "blend-order")  # no ranker promoted: the blend's own order, if it knows u1
