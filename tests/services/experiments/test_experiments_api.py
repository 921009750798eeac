"""`/v1/experiments` on the real app and Redis: create, validate, list, get, stop; the store's
files and its Redis mirror; the registry's pins."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from feature_store.settings import Settings
from models.registry import ModelRegistry, RegistryError
from tests.services.experiments.conftest import ADMIN


def ab(experiment_id: str, **extra: Any) -> dict[str, Any]:
    body = {"id": experiment_id, "kind": "ab",
            "arms": [{"name": "control", "ranker": None}, {"name": "treatment", "ranker": "candidate"}]}
    return {**body, **extra}


def test_create_resolves_versions_and_is_stored_in_files_and_redis(
    admin_client: TestClient, admin_settings: Settings, registry_versions: list[str], redis_client: redis.Redis
) -> None:
    response = admin_client.post("/v1/experiments", json=ab("e1", traffic=0.4), headers=ADMIN)
    assert response.status_code == 201, response.text
    created = response.json()
    assert [arm["version"] for arm in created["arms"]] == [None, registry_versions[1]]  # the pin, resolved
    assert (created["offset"], created["salt"], created["status"]) == (0.0, "e1", "running")
    stored = json.loads((admin_settings.state_dir / "experiments" / "e1.json").read_text())
    assert stored["arms"][1]["version"] == registry_versions[1]
    mirrored = json.loads(redis_client.hget(f"{admin_settings.redis.key_prefix}:x:{{x}}:defs", "e1"))
    assert mirrored["offset"] == 0.0
    second = admin_client.post("/v1/experiments", json=ab("e2", traffic=0.5), headers=ADMIN).json()
    assert second["offset"] == pytest.approx(0.4)  # the first free slice of the layer
    assert [e["id"] for e in admin_client.get("/v1/experiments", headers=ADMIN).json()] == ["e1", "e2"]
    assert admin_client.get("/v1/experiments/e2", headers=ADMIN).json()["traffic"] == 0.5


@pytest.mark.parametrize(("body", "status", "message"), [
    (ab("bad", arms=[{"name": "a", "ranker": "nope"}, {"name": "b"}]), 422, "unknown ranker version 'nope'"),
    (ab("bad", arms=[{"name": "a", "share": 0.7}, {"name": "b", "share": 0.5}]), 422, "shares must sum to 1"),
    (ab("bad", offset=0.5, traffic=0.6), 422, "is over 1"),
    (ab("bad", arms=[{"name": "a", "ranker": "current"}, {"name": "b"}]), 422, "has no current version"),
    (ab("bad", arms=[{"name": "a", "explore": {"policy": "nope"}}, {"name": "b"}]), 422, "policy"),
    ({"id": "bad", "kind": "interleaving", "arms": [{"name": "a", "explore": {"policy": "ucb1"}}, {"name": "b"}]},
     422, "no explore policy"),
    # JSON has no infinity: stored, it would read back as null and break every later read of the store
    ({"id": "bad", "kind": "interleaving", "method": "probabilistic", "tau": float("inf"),
      "arms": [{"name": "a"}, {"name": "b", "ranker": "candidate"}]}, 422, "tau: Input should be a finite number"),
    ({"id": "bad", "kind": "interleaving", "method": "probabilistic", "tau": 1e308,
      "arms": [{"name": "a"}, {"name": "b", "ranker": "candidate"}]}, 422, "tau: Input should be less than or equal to 100"),
    (ab("bad", traffic=float("nan")), 422, "traffic: Input should be a finite number"),
])  # fmt: skip
def test_invalid_definitions_get_a_4xx_with_a_message(
    admin_client: TestClient, body: dict[str, Any], status: int, message: str
) -> None:
    # json.dumps writes inf and NaN as the tokens Infinity and NaN, which the API's JSON parser reads
    response = admin_client.post("/v1/experiments", content=json.dumps(body),
                                 headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert admin_client.get("/v1/experiments", headers=ADMIN).json() == []  # nothing stored


def test_overlapping_traffic_in_one_layer_is_refused_and_another_layer_is_not(admin_client: TestClient) -> None:
    assert admin_client.post("/v1/experiments", json=ab("first", traffic=0.6), headers=ADMIN).status_code == 201
    full = admin_client.post("/v1/experiments", json=ab("second", traffic=0.6), headers=ADMIN)
    assert full.status_code == 409 and "no free slice" in full.json()["error"]["message"]
    clash = admin_client.post("/v1/experiments", json=ab("third", traffic=0.2, offset=0.5), headers=ADMIN)
    assert clash.status_code == 409 and "overlaps running experiment 'first'" in clash.json()["error"]["message"]
    other_layer = admin_client.post("/v1/experiments", json=ab("fourth", traffic=0.6, layer="explore"), headers=ADMIN)
    assert other_layer.status_code == 201
    again = admin_client.post("/v1/experiments", json=ab("first"), headers=ADMIN)
    assert again.status_code == 409 and "exists" in again.json()["error"]["message"]


def test_stop_frees_the_slice_and_unknown_ids_are_404(admin_client: TestClient) -> None:
    admin_client.post("/v1/experiments", json=ab("old", traffic=1.0), headers=ADMIN)
    stopped = admin_client.post("/v1/experiments/old/stop", headers=ADMIN).json()
    assert stopped["status"] == "stopped" and stopped["stopped_at"]
    assert admin_client.post("/v1/experiments", json=ab("new", traffic=1.0), headers=ADMIN).status_code == 201
    missing = admin_client.post("/v1/experiments/none/stop", headers=ADMIN)
    assert missing.status_code == 404 and "no experiment 'none'" in missing.json()["error"]["message"]


def test_writes_need_the_admin_key(admin_client: TestClient) -> None:
    assert admin_client.post("/v1/experiments", json=ab("x")).status_code == 401
    assert admin_client.post("/v1/experiments", json=ab("x"), headers={"X-API-Key": "wrong"}).status_code == 401


def test_a_flushed_redis_mirror_is_refilled_from_the_files(
    admin_client: TestClient, redis_client: redis.Redis
) -> None:
    admin_client.post("/v1/experiments", json=ab("kept"), headers=ADMIN)
    redis_client.flushdb()
    assert [e["id"] for e in admin_client.get("/v1/experiments", headers=ADMIN).json()] == ["kept"]


def test_an_unreadable_experiment_file_is_left_out_and_breaks_nothing(
    admin_client: TestClient, admin_settings: Settings, redis_client: redis.Redis
) -> None:
    admin_client.post("/v1/experiments", json=ab("kept", traffic=0.5), headers=ADMIN)
    broken = admin_settings.state_dir / "experiments" / "broken.json"
    broken.write_text('{"id": "broken", "kind": "interleaving", "tau": null}')  # what an older version could store
    redis_client.flushdb()  # the mirror is refilled from the files
    assert [e["id"] for e in admin_client.get("/v1/experiments", headers=ADMIN).json()] == ["kept"]
    assert admin_client.post("/v1/experiments", json=ab("next", traffic=0.5), headers=ADMIN).status_code == 201
    assert admin_client.get("/v1/users/u1/recommendations").status_code == 200
    again = admin_client.post("/v1/experiments", json=ab("broken", traffic=0.1, layer="other"), headers=ADMIN)
    assert again.status_code == 409  # its id stays taken: ids are never reused
    # The Redis copy of an older version's definition that no longer validates: left out, not a 500
    prefix = admin_settings.redis.key_prefix
    redis_client.hset(f"{prefix}:x:{{x}}:defs", "old", '{"id": "old", "kind": "ab", "tau": 150}')
    redis_client.set(f"{prefix}:x:{{x}}:version", "token-from-an-older-writer")
    assert [e["id"] for e in admin_client.get("/v1/experiments", headers=ADMIN).json()] == ["kept", "next"]
    assert admin_client.get("/v1/users/u1/recommendations").status_code == 200


def test_registry_resolves_current_pins_and_version_ids(admin_settings: Settings, registry_versions: list[str]) -> None:
    registry = ModelRegistry(admin_settings.model_registry_dir)
    assert registry.resolve("ranker", "candidate").version == registry_versions[1]
    assert registry.resolve("ranker", registry_versions[0]).version == registry_versions[0]
    registry.set_current("ranker", registry_versions[0])
    assert registry.resolve("ranker", "current").version == registry_versions[0]
    registry.pin("ranker", "candidate", registry_versions[0])
    assert registry.resolve("ranker", "candidate").version == registry_versions[0]
    assert registry.versions("ranker") == registry_versions  # pins are not versions
    with pytest.raises(RegistryError, match="no version 'ghost'"):
        registry.resolve("ranker", "ghost")
    with pytest.raises(RegistryError, match="set_current"):
        registry.pin("ranker", "current", registry_versions[0])
