"""PUT /v1/items and /v1/users: durable in the Parquet catalog as well as live in Redis."""

from __future__ import annotations

from urllib.parse import quote

import redis
from fastapi.testclient import TestClient

from feature_store.catalog import Catalog
from feature_store.settings import Settings
from services.api.app import create_app
from tests.services.conftest import WRITE_KEY, with_api


def test_upserts_are_written_through_to_the_parquet_catalog(api_settings: Settings) -> None:
    with TestClient(create_app(with_api(api_settings, api_keys=[WRITE_KEY]))) as client:
        headers = {"X-API-Key": WRITE_KEY}
        client.put("/v1/items/i7", json={"title": "Film 7", "categories": ["Drama"]}, headers=headers).raise_for_status()
        client.put("/v1/users/u7", json={"attributes": {"age": 31}}, headers=headers).raise_for_status()
    catalog = Catalog(api_settings.catalog_dir)  # what batch jobs and the startup sync read
    assert catalog.get_item("i7").categories == ["Drama"]  # type: ignore[union-attr]
    assert catalog.get_user("u7").attributes == {"age": 31}  # type: ignore[union-attr]


def test_ids_with_slashes_are_reachable_percent_encoded(api_settings: Settings) -> None:
    # An item id may be a URL; the events API accepts such ids, so every route must reach them.
    item, user = "https://shop.example/p/42", "team/alice"
    with TestClient(create_app(with_api(api_settings, api_keys=[WRITE_KEY]))) as client:
        headers = {"X-API-Key": WRITE_KEY}
        path = {"item": quote(item, safe=""), "user": quote(user, safe="")}
        assert path["item"] == "https%3A%2F%2Fshop.example%2Fp%2F42"
        client.put(f"/v1/items/{path['item']}", json={"title": "Shoe", "categories": ["Shoes"]}, headers=headers).raise_for_status()
        client.put(f"/v1/users/{path['user']}", json={"attributes": {"team": "a"}}, headers=headers).raise_for_status()
        assert client.get(f"/v1/items/{path['item']}", headers=headers).json()["item_id"] == item
        assert client.get(f"/v1/users/{path['user']}", headers=headers).json()["attributes"] == {"team": "a"}
        similar = client.get(f"/v1/items/{path['item']}/similar", headers=headers)
        assert similar.status_code == 200 and similar.json()["item_id"] == item
        recommended = client.get(f"/v1/users/{path['user']}/recommendations", headers=headers)
        assert recommended.status_code == 200, recommended.text
    assert Catalog(api_settings.catalog_dir).get_item(item).title == "Shoe"  # type: ignore[union-attr]


def test_a_category_index_entry_the_record_no_longer_names_is_not_served(api_settings: Settings) -> None:
    """Two PUTs of one item that read the same previous record leave the loser's categories in the
    category index (no transaction spans the record and the category sets on a Redis Cluster): the
    state planted here. The category neighbours come from the record's categories, not the index."""
    with TestClient(create_app(with_api(api_settings, api_keys=[WRITE_KEY]))) as client:
        headers = {"X-API-Key": WRITE_KEY}
        for item, category in (("x", "Comedy"), ("y", "Drama"), ("z", "Drama")):
            client.put(f"/v1/items/{item}", json={"title": item, "categories": [category]}, headers=headers).raise_for_status()
        redis.Redis.from_url(api_settings.redis.url or "").zadd(f"{api_settings.redis.key_prefix}:srv:cat:Drama", {"x": 1e12})
        similar = client.get("/v1/items/y/similar", params={"k": 5}, headers=headers).json()
        newest_two = client.app.state.service.store.items_in_category("Drama", 2)  # type: ignore[attr-defined]
    assert [n["item_id"] for n in similar["items"]] == ["z"] and similar["source"] == "category"
    assert sorted(newest_two) == ["y", "z"]  # the leftover, newest in the index, does not shorten the list
