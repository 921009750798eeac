"""Recommendations through the real app on a real Redis: seen filtering, live updates, cold start,
lists read past the items a request cannot use."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
from fastapi.testclient import TestClient

from feature_store.catalog import Catalog
from feature_store.definitions import Entity
from feature_store.online_store import RedisOnlineStore
from feature_store.schemas import Item
from feature_store.settings import Settings
from models.embeddings.item_embeddings import ItemEmbeddings
from models.retrieval import build_index
from models.retrieval.multichannel import EmbeddingSimilarItems
from services.api.app import create_app
from services.recommend.pipeline import ModelBundle
from services.recommend.similar import similar_items
from tests.feature_store.helpers import WM, item_row
from tests.services.conftest import EventFactory, put_items

CATALOG = {
    "c1": ("Clerks", ["Comedy"]), "c2": ("Airplane!", ["Comedy"]), "c3": ("Big", ["Comedy"]),
    "a1": ("Heat", ["Action"]), "a2": ("Speed", ["Action"]), "a3": ("Ronin", ["Action"]),
    "d1": ("Fargo", ["Drama"]), "d2": ("Amadeus", ["Drama"]),
}


def _seed(client: TestClient, make_event: EventFactory) -> None:
    put_items(client, CATALOG)
    popularity = {"d1": 6, "d2": 5, "a1": 4, "c1": 3, "a2": 2, "c2": 1}
    events = [make_event(f"crowd{n}", item) for item, count in popularity.items() for n in range(count)]
    assert client.post("/v1/events", json=events).json()["accepted"] == len(events)


def _ids(response_json: dict) -> list[str]:
    return [item["item_id"] for item in response_json["items"]]


def test_unknown_user_gets_popular_items_flagged_as_fallback(client: TestClient, make_event: EventFactory) -> None:
    _seed(client, make_event)
    body = client.get("/v1/users/nobody/recommendations", params={"k": 3}).json()
    assert _ids(body) == ["d1", "d2", "a1"]
    assert body["fallback"] == "popularity" and body["degraded"] is False
    assert body["model_versions"] == {} and body["request_id"]
    assert all(item["reason"] == "trending now" and "trending" in item["sources"] for item in body["items"])


def test_a_click_changes_the_next_recommendations_and_seen_items_never_return(
    client: TestClient, make_event: EventFactory
) -> None:
    _seed(client, make_event)
    before = _ids(client.get("/v1/users/fan/recommendations", params={"k": 5}).json())
    assert client.post("/v1/events", json=[make_event("fan", "c1")]).json()["accepted"] == 1
    after = client.get("/v1/users/fan/recommendations", params={"k": 5}).json()
    assert "c1" not in _ids(after)
    assert set(_ids(after)) != set(before)
    comedies = [item for item in after["items"] if item["item_id"] in ("c2", "c3")]
    assert {item["item_id"] for item in comedies} == {"c2", "c3"}  # category neighbours of the click
    assert all("category" in item["sources"] and "Comedy" in item["reason"] for item in comedies)
    client.post("/v1/events", json=[make_event("fan", item) for item in ("c2", "d1", "a1")])
    seen = {"c1", "c2", "d1", "a1"}
    for _ in range(3):
        assert not seen & set(_ids(client.get("/v1/users/fan/recommendations", params={"k": 8}).json()))


def test_an_item_rated_low_or_skipped_never_returns_but_one_only_shown_does(client: TestClient, make_event: EventFactory) -> None:
    _seed(client, make_event)
    events = [make_event("critic", "d1", "rating", value=1.0), make_event("critic", "d2", "skip"),
              make_event("critic", "a1", "impression"), make_event("critic", "c1", "rating", value=5.0)]  # fmt: skip
    assert client.post("/v1/events", json=events).json()["accepted"] == 4
    ids = _ids(client.get("/v1/users/critic/recommendations", params={"k": 8}).json())
    assert not {"d1", "d2", "c1"} & set(ids)  # the two most popular items, acted on though not liked
    assert "a1" in ids  # shown, never acted on


def test_exclude_category_and_unavailable_filters(client: TestClient, make_event: EventFactory) -> None:
    _seed(client, make_event)
    client.put("/v1/items/d2", json={"title": "Amadeus", "categories": ["Drama"], "available": False})
    ids = _ids(client.get("/v1/users/x/recommendations", params={"k": 8, "exclude": ["d1", "a1"]}).json())
    assert ids and not {"d1", "a1", "d2"} & set(ids)
    action = client.get("/v1/users/x/recommendations", params={"k": 8, "category": "Action"}).json()
    assert set(_ids(action)) == {"a1", "a2", "a3"}
    posted = client.post("/v1/users/x/recommendations", json={"k": 2, "category": "Comedy", "context": {"page": "home"}})
    assert posted.status_code == 200 and set(_ids(posted.json())) <= {"c1", "c2", "c3"}


def test_similar_items_for_a_new_item_use_its_category(client: TestClient, make_event: EventFactory) -> None:
    _seed(client, make_event)
    client.put("/v1/items/new", json={"title": "Brand new", "categories": ["Action"], "metadata": {"year": 2024}})
    body = client.get("/v1/items/new/similar", params={"k": 2}).json()
    assert body["source"] == "category"
    assert [item["item_id"] for item in body["items"]] == ["a1", "a2"]  # by popularity
    assert client.get("/v1/items/unknown/similar").status_code == 404


def test_a_category_request_reads_past_retired_excluded_and_skipped_items(
    api_settings: Settings, make_event: EventFactory
) -> None:
    """The 200 newest dramas (a request's whole category read before) are the 50 newest retired,
    100 excluded and 50 skipped: the ranker still gets the older dramas, not nothing."""
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    Catalog.from_settings(api_settings).upsert_items(
        Item(item_id=f"d{n}", categories=["Drama"], created_at=t0 + timedelta(hours=n), available=n < 250) for n in range(300))
    with TestClient(create_app(api_settings)) as client:
        assert client.app.state.service.catalog_sync.wait(60) == "synced"  # type: ignore[attr-defined]
        client.post("/v1/events", json=[make_event("u1", f"d{n}", "skip") for n in range(100, 150)]).raise_for_status()
        exclude = [f"d{n}" for n in range(150, 250)]
        body = client.post("/v1/users/u1/recommendations", json={"k": 10, "category": "Drama", "exclude": exclude}).json()
    assert _ids(body) == [f"d{n}" for n in range(99, 89, -1)]


def test_popular_items_are_read_past_the_excluded_and_retired_ones(api_settings: Settings) -> None:
    """The popular list's top 256 (what the channel read) are retired or excluded: the next ones answer."""
    ids = [f"p{n}" for n in range(300)]
    features = RedisOnlineStore.from_settings(api_settings)
    with features.publish_batch_view(Entity.ITEM, WM) as write:
        write(item_row(item, popularity_all=1000 - n) for n, item in enumerate(ids))
    with features.publish_batch_view(Entity.GLOBAL, WM) as write:
        write([{"popular": ids}])
    features.close()
    Catalog.from_settings(api_settings).upsert_items(Item(item_id=item, available=False) for item in ids[:100])
    with TestClient(create_app(api_settings)) as client:
        assert client.app.state.service.catalog_sync.wait(60) == "synced"  # type: ignore[attr-defined]
        body = client.post("/v1/users/new/recommendations", json={"k": 10, "exclude": ids[100:260]}).json()
    assert _ids(body) == ids[260:270]


def test_category_neighbours_are_read_past_retired_items(client: TestClient) -> None:
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    for n in range(40):  # the 30 newest retired: all the neighbours read before
        item = {"categories": ["Pop"], "created_at": (t0 + timedelta(hours=n)).isoformat(), "available": n < 10}
        client.put(f"/v1/items/p{n}", json=item).raise_for_status()
    body = client.get("/v1/items/p1/similar", params={"k": 5}).json()
    assert body["source"] == "category" and len(body["items"]) == 5
    assert {item["item_id"] for item in body["items"]} <= {f"p{n}" for n in range(2, 10)}


def test_embedding_neighbours_are_read_past_retired_items(client: TestClient) -> None:
    ids = [f"i{n}" for n in range(50)]
    vectors = np.array([[1.0, n / 100.0] for n in range(len(ids))], dtype=np.float32)  # i1, i2, … nearest to i0 in order
    index = build_index(2, len(ids), "exact")
    index.add(ids, vectors)
    bundle = ModelBundle(similar=EmbeddingSimilarItems(ItemEmbeddings(np.array(ids), vectors), index))
    for n in (1, 2, 3):
        client.put(f"/v1/items/i{n}", json={"available": False}).raise_for_status()
    found = similar_items(client.app.state.service.store, bundle, "i0", 5)  # type: ignore[attr-defined]
    assert found is not None and found[1] == "embedding"
    assert [item for item, _ in found[0]] == ["i4", "i5", "i6", "i7", "i8"]


def test_validation_errors_name_the_problem(client: TestClient) -> None:
    response = client.get("/v1/users/u/recommendations", params={"k": 1000})
    assert response.status_code == 422
    assert "query.k" in response.json()["error"]["message"]
    bad = client.put("/v1/items/x", json={"categories": "Comedy", "colour": "red"})
    assert bad.status_code == 422
    locations = {d["location"] for d in bad.json()["error"]["details"]}
    assert {"body.categories", "body.colour"} <= locations


def test_health_readiness_and_metrics(client: TestClient, make_event: EventFactory) -> None:
    _seed(client, make_event)
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["redis"] == "ok" and ready.json()["fallback"] == "popularity"
    client.get("/v1/users/u/recommendations")
    metrics = client.get("/metrics").text
    assert 'recsys_request_seconds_count{endpoint="/v1/users/{user_id}/recommendations",method="GET",status="200"} 1.0' in metrics
    for stage in ("features", "recall", "filter", "rank", "explain"):
        assert f'recsys_stage_seconds_count{{stage="{stage}"}} 1.0' in metrics
    assert "recsys_popularity_fallback_responses_total 1.0" in metrics
