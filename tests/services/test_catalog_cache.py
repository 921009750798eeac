"""The API's in-process catalog cache (`api.item_cache_ttl_s`) is the one the request path reads.

A regression had `ServingStore` replace the configured cache with an uncached one (an empty cache
is falsy), so every request re-read its candidates' catalog entries from Redis: 3 MGETs and
about a quarter of the server's CPU per request in `benchmarks/serving_profile.py`."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from feature_store.settings import Settings
from services.api.app import create_app
from tests.services.conftest import WRITE_KEY, put_items, with_api


def mget_calls(redis_client: Any) -> int:
    return int(redis_client.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))


def lookups(client: TestClient) -> dict[str, float]:
    """`recsys_item_cache_lookups_total` of the catalog cache, by result."""
    found = re.findall(r'^recsys_item_cache_lookups_total\{cache="catalog",result="(\w+)"\} (\S+)$',
                       client.get("/metrics").text, re.M)
    return {result: float(value) for result, value in found}


def test_catalog_entries_are_served_from_the_cache_within_its_ttl(api_settings: Settings, redis_client: Any) -> None:
    settings = with_api(api_settings, item_cache_ttl_s=3600.0, api_keys=[WRITE_KEY])
    with TestClient(create_app(settings)) as client:
        put_items(client, {"a": ("Alpha", ["toys"]), "b": ("Beta", ["books"])}, {"X-API-Key": WRITE_KEY})
        store = client.app.state.service.store  # type: ignore[attr-defined]
        before = lookups(client)
        assert store.titles(["a", "b"]) == {"a": "Alpha", "b": "Beta"}
        reads = mget_calls(redis_client)
        # Behind the API's back (a PUT would invalidate the entry): the cached entry stays served.
        key = f"{settings.redis.key_prefix}:srv:item:a"
        redis_client.set(key, redis_client.get(key).replace(b"Alpha", b"Other"))
        assert store.titles(["a", "b"]) == {"a": "Alpha", "b": "Beta"}
        assert store.categories_of(["b", "a"]) == {"b": ["books"], "a": ["toys"]}
        assert mget_calls(redis_client) == reads
        # A PUT through the API invalidates the entry at once.
        put_items(client, {"a": ("Alpha 2", ["toys"])}, {"X-API-Key": WRITE_KEY})
        assert store.titles(["a"]) == {"a": "Alpha 2"}
        # /metrics counts what happened: a, b read; four fresh; a read again after its PUT.
        after = lookups(client)
        assert {r: after.get(r, 0.0) - before.get(r, 0.0) for r in ("fresh", "stale", "read")} == {
            "fresh": 4.0, "stale": 0.0, "read": 3.0}
