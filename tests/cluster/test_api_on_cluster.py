"""The real API on one Redis server and on the 3-master Redis Cluster (`REDIS_URL=redis+cluster://…`):
the catalog sync (its lock and records), item and user PUTs (catalog records, category and
availability indexes, PUT times), event intake (claim markers, live writes), recommendations
read back through all of them, and an experiment created, mirrored to Redis, served, and stopped
by `recsys experiments stop` (the CLI's client) with the API serving the change.

Every expected value is planted here: popularity counts, category moves, availability, the
experiment's arms. On the cluster the app's client routes every command by its key's slot, so a
multi-key command or transaction across slots is refused (CROSSSLOT) and fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from feature_store.catalog import Catalog
from feature_store.redis_client import ConnectionSpec
from feature_store.schemas import Item, User
from feature_store.settings import Settings
from services.api.app import create_app
from tests.services.experiments.test_cli import recsys
from tests.services.conftest import EventFactory, make_event, put_items, with_api  # noqa: F401  (fixture)

KEY = {"X-API-Key": "admin-key"}
CATALOG = {
    "c1": ("Clerks", ["Comedy"]), "c2": ("Airplane!", ["Comedy"]), "c3": ("Big", ["Comedy"]),
    "a1": ("Heat", ["Action"]), "a2": ("Speed", ["Action"]), "a3": ("Ronin", ["Action"]),
    "d1": ("Fargo", ["Drama"]), "d2": ("Amadeus", ["Drama"]),
}
POPULARITY = {"d1": 6, "d2": 5, "a1": 4, "c1": 3, "a2": 2, "c2": 1}


@pytest.fixture
def app_settings(settings: Settings, redis_url: str) -> Settings:
    """The test settings on `redis_url` (one server or the cluster) with a bulk catalog on disk."""
    catalog = Catalog.from_settings(settings)
    catalog.upsert_items([Item(item_id="f1", title="From file", categories=["Drama"])])
    catalog.upsert_users([User(user_id="file-user", attributes={"age": 30})])
    moved = settings.model_copy(update={
        "redis": settings.redis.model_copy(update={"url": redis_url}),
        "event_log": settings.event_log.model_copy(update={"roll_max_age_s": 0.2}),
    })
    return with_api(moved, recommend_deadline_s=60.0, api_keys=["admin-key"])


@pytest.fixture
def api(app_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings), headers=KEY) as client:
        yield client


def ids(client: TestClient, user: str, **params: Any) -> list[str]:
    response = client.get(f"/v1/users/{user}/recommendations", params={"k": 8, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["degraded"] is False, body
    return [item["item_id"] for item in body["items"]]


def test_catalog_events_recommendations_and_experiments(
    api: TestClient, app_settings: Settings, make_event: EventFactory  # noqa: F811
) -> None:
    assert api.app.state.service.catalog_sync.wait(60) == "synced"  # type: ignore[attr-defined]
    assert api.get("/v1/items/f1").json()["title"] == "From file"
    assert api.get("/v1/users/file-user").json()["attributes"] == {"age": 30}

    put_items(api, CATALOG, KEY)
    moved = api.put("/v1/items/c3", json={"title": "Big", "categories": ["Drama"]})
    gone = api.put("/v1/items/a3", json={"title": "Ronin", "categories": ["Action"], "available": False})
    assert moved.status_code == gone.status_code == 200, (moved.text, gone.text)
    assert api.put("/v1/users/u1", json={"attributes": {"age": 41}}).json()["created"] is True
    assert api.put("/v1/users/u1", json={"attributes": {"age": 42}}).json()["created"] is False
    assert api.get("/v1/users/u1").json()["attributes"] == {"age": 42}

    events = [make_event(f"crowd{n}", item) for item, count in POPULARITY.items() for n in range(count)]
    assert api.post("/v1/events", json=events).json()["accepted"] == len(events)
    assert api.post("/v1/events", json=events[:5]).json()["accepted"] == 0  # claimed before

    assert ids(api, "nobody", k=3) == ["d1", "d2", "a1"]
    assert set(ids(api, "nobody", category="Comedy")) == {"c1", "c2"}  # c3 left the category
    assert set(ids(api, "nobody", category="Drama")) == {"d1", "d2", "c3", "f1"}
    assert set(ids(api, "nobody", category="Action")) == {"a1", "a2"}  # a3 unavailable
    assert api.post("/v1/events", json=[make_event("fan", "c1")]).json()["accepted"] == 1
    assert "c1" not in ids(api, "fan")

    spec = {"id": "e1", "kind": "ab", "traffic": 1.0,
            "arms": [{"name": "control"}, {"name": "explorer", "explore": {"policy": "epsilon_greedy", "epsilon": 0.5}}]}
    created = api.post("/v1/experiments", json=spec)
    assert created.status_code == 201, created.text
    assert [e["id"] for e in api.get("/v1/experiments").json()] == ["e1"]
    served = api.get("/v1/users/u1/recommendations", params={"k": 3}).json()
    assert served["experiment"] == "e1" and served["arm"] in ("e1:control", "e1:explorer"), served
    stopped = recsys(app_settings, "stop", "e1")  # the CLI's own client, in another process
    assert stopped.returncode == 0 and stopped.stdout.strip() == "e1: stopped", stopped.stderr
    assert api.get("/v1/users/u1/recommendations", params={"k": 3}).json()["experiment"] is None

    # The values are where a fresh client of this URL finds them (on the cluster: the owning master).
    reader = ConnectionSpec(app_settings.redis.url or "", key_prefix=app_settings.redis.key_prefix).client()
    try:
        assert Item.model_validate_json(reader.get(f"{app_settings.redis.key_prefix}:srv:item:c3")).categories == ["Drama"]
        assert reader.zscore(f"{app_settings.redis.key_prefix}:srv:cat:Comedy", "c3") is None
        assert reader.sismember(f"{app_settings.redis.key_prefix}:srv:unavailable", "a3")
    finally:
        reader.close()
