"""PUT /v1/items and /v1/users: durable in the Parquet catalog as well as live in Redis."""

from __future__ import annotations

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
