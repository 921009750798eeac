"""The guardrail on a schedule: the API stops an A/B arm whose CTR fell, with nobody reading the
report, leaves a healthy experiment alone, counts the stop on /metrics, and with several workers
only the one holding the interval's Redis lock checks."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from feature_store.online_store import RedisOnlineStore
from feature_store.redis_client import ConnectionSpec
from feature_store.settings import ExperimentsSettings, Settings
from models.registry import ModelRegistry
from services.api.app import create_app
from services.experiments.guardrail import GuardrailMonitor
from services.experiments.manager import ExperimentManager
from services.experiments.report import batch_design_effects
from services.experiments.store import ExperimentStore
from tests.services.experiments.conftest import ADMIN
from tests.services.experiments.test_report import create, plant_ab

GUARDRAIL = {"max_ctr_drop": 0.1, "p_value": 0.01}
DEADLINE_S = 120.0  # a busy machine's worst case; the wait ends as soon as the condition holds


def _wait(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while not (value := condition()):
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)
    return value


def _counter(client: TestClient, name: str, labels: str = "") -> float:
    match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", client.get("/metrics").text, re.M)
    return float(match.group(1)) if match else 0.0


def test_the_api_stops_a_failing_arm_without_a_report_read(admin_settings: Settings, registry_versions: list[str]) -> None:
    settings = admin_settings.model_copy(update={"experiments": ExperimentsSettings(guardrail_interval_s=0.2)})
    with TestClient(create_app(settings)) as client:
        for name in ("bad", "fine"):  # one layer each: both take all of their traffic
            create(client, {"id": name, "kind": "ab", "layer": name, "guardrail": GUARDRAIL,
                            "arms": [{"name": "control"}, {"name": "treatment"}]})
        # bad: treatment's CTR 0.025 against control's 0.15, far past a 10% drop (a check during the
        # planting may already stop it); fine: equal CTRs, and no partial count of them falls.
        plant_ab(settings, "bad", {"control": (1000, 150), "treatment": (1000, 25)}, users=True)
        plant_ab(settings, "fine", {"control": (1000, 100), "treatment": (1000, 100)}, users=True)
        checks = _counter(client, "recsys_experiment_guardrail_checks_total")
        # The check in flight now may predate the planting; the one after it saw all of it.
        _wait(lambda: _counter(client, "recsys_experiment_guardrail_checks_total") >= checks + 2, "two more checks")
        bad = client.get("/v1/experiments/bad", headers=ADMIN).json()
        fine = client.get("/v1/experiments/fine", headers=ADMIN).json()
        stops = {(name, arm): _counter(client, "recsys_experiment_guardrail_stops_total",
                                       f'{{arm="{arm}",experiment="{name}"}}')
                 for name in ("bad", "fine") for arm in ("control", "treatment")}
    assert list(bad["stopped_arms"]) == ["treatment"] and bad["stopped_arms"]["treatment"].startswith("guardrail: CTR ")
    assert bad["status"] == "running" and fine["stopped_arms"] == {} and fine["status"] == "running"
    assert stops == {("bad", "control"): 0.0, ("bad", "treatment"): 1.0, ("fine", "control"): 0.0,
                     ("fine", "treatment"): 0.0}


def _monitor(settings: Settings, interval_s: float) -> GuardrailMonitor:
    """A worker's monitor over the settings' Redis and experiments (not started: ticks by hand)."""
    client = ConnectionSpec.from_settings(settings, settings.redis.url).client()
    store = ExperimentStore(settings.state_dir / "experiments", client, settings.redis.key_prefix)
    manager = ExperimentManager(store, ModelRegistry(settings.model_registry_dir))
    return GuardrailMonitor(manager, RedisOnlineStore.from_settings(settings).attribution,
                            batch_design_effects(Path(settings.batch_uri)), client,
                            settings.redis.key_prefix, interval_s)


@pytest.fixture
def quiet_client(admin_settings: Settings, registry_versions: list[str]) -> Iterator[TestClient]:
    """The API, its own monitor ticking once an hour: the tests' monitors are the workers that act."""
    settings = admin_settings.model_copy(update={"experiments": ExperimentsSettings(guardrail_interval_s=3600.0)})
    with TestClient(create_app(settings)) as client:
        yield client


def test_one_worker_checks_per_interval(quiet_client: TestClient, admin_settings: Settings) -> None:
    create(quiet_client, {"id": "bad", "kind": "ab", "guardrail": GUARDRAIL,
                          "arms": [{"name": "control"}, {"name": "treatment"}]})
    plant_ab(admin_settings, "bad", {"control": (1000, 150), "treatment": (1000, 25)}, users=True)
    first, second = _monitor(admin_settings, 600.0), _monitor(admin_settings, 600.0)
    assert first.tick() == [("bad", "treatment")]
    assert second.tick() is None  # the interval's lock is the first worker's: no second check
    assert first.tick() is None  # nor a second one by the same worker within the interval


def test_another_worker_takes_over_when_the_lock_expires(quiet_client: TestClient, admin_settings: Settings) -> None:
    create(quiet_client, {"id": "bad", "kind": "ab", "guardrail": GUARDRAIL,
                          "arms": [{"name": "control"}, {"name": "treatment"}]})
    first, second = _monitor(admin_settings, 0.5), _monitor(admin_settings, 0.5)
    _wait(lambda: first.tick() is not None, "the first worker's check")
    plant_ab(admin_settings, "bad", {"control": (1000, 150), "treatment": (1000, 25)}, users=True)
    # The first worker is gone: the lock it left expires and the second one's tick acts.
    assert _wait(second.tick, "the second worker's check") == [("bad", "treatment")]
