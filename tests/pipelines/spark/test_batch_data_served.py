"""Bulk-imported data reaches serving: a synthetic dataset in the event log and Parquet catalog,
`compact` + `batch_features` on local Spark publishing the batch views (with `global.popular`),
then the real app on a real Redis: the catalog is synced from Parquet in the background (titles,
categories, availability), known users get non-empty, unseen, explained recommendations with a
category channel from their history, unknown users the batch popular list, and a live event after
the watermark counts once in the merged popularity."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi.testclient import TestClient

from feature_store.catalog import Catalog
from feature_store.definitions import POSITIVE
from feature_store.event_log import LocalEventLog
from feature_store.online_store import RedisOnlineStore
from feature_store.settings import Settings
from pipelines.datasets.synthetic import generate
from pipelines.spark.runner import run_jobs
from services.api.app import create_app
from tests.services.conftest import with_api

KEY = {"X-API-Key": "k"}


def _positive_counts(settings: Settings, before: datetime) -> Counter[str]:
    with LocalEventLog(settings.event_log_dir, settings.event_log) as log:
        return Counter(e.item_id for e in log.read(None, before) if POSITIVE.matches(e.type, e.value))


def test_bulk_imported_data_is_served(spark: object, settings: Settings, redis_client: Any) -> None:
    settings = with_api(settings, api_keys=["k"])
    settings = settings.model_copy(update={"spark": settings.spark.model_copy(update={"shuffle_partitions": 4})})
    generate(settings, users=60, items=100, events=3000, categories=6, seed=3)
    summary = {s.job: s for s in run_jobs(spark, settings, ["compact", "batch_features"])}["batch_features"]  # type: ignore[arg-type]
    watermark = datetime.fromisoformat(summary.details["watermark"])

    features = RedisOnlineStore.from_settings(settings)
    try:
        users = [u.user_id for u in Catalog(settings.catalog_dir).users()]
        histories = list(features.get_features("user", users, ["history"])["history"])
    finally:
        features.close()
    active = [(user, list(h)) for user, h in zip(users, histories) if len(h)]
    assert len(active) >= 15, f"batch history of imported users is empty for most: {len(active)} of {len(users)}"
    titles = {item.item_id: item.title for item in Catalog(settings.catalog_dir).items()}
    categories = {item.item_id: set(item.categories) for item in Catalog(settings.catalog_dir).items()}

    with TestClient(create_app(settings)) as client:
        state = client.app.state.service  # type: ignore[attr-defined]
        assert state.catalog_sync.wait(30) == "synced"

        user, history = active[0][0], set(active[0][1])
        body = client.get(f"/v1/users/{user}/recommendations", params={"k": 20}).json()
        recommended = [item["item_id"] for item in body["items"]]
        assert recommended and not set(recommended) & history, body
        assert all(item["reason"] for item in body["items"])
        # Titles for "because you watched <title>" (DIN attention) come from the synced catalog.
        seed = active[0][1][0]
        assert client.get(f"/v1/items/{seed}", headers=KEY).json()["title"] == titles[seed]
        assert state.store.titles([seed]) == {seed: titles[seed]}
        user_categories = set().union(*(categories[i] for i in history))
        from_category = [item["item_id"] for item in body["items"] if "category" in item["sources"]]
        assert from_category and all(categories[i] & user_categories for i in from_category), body["items"]

        counts = _positive_counts(settings, watermark)
        unknown = client.get("/v1/users/nobody/recommendations", params={"k": 10}).json()
        assert [counts[item["item_id"]] for item in unknown["items"]] == [n for _, n in counts.most_common(10)]
        assert all("popular" in item["sources"] for item in unknown["items"])

        # A live event after the watermark counts once in the merged popularity, replayed or not.
        top = unknown["items"][0]["item_id"]
        event = {"event_id": "live-1", "user_id": "nobody", "item_id": top, "type": "click",
                 "ts": (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()}
        for _ in range(2):
            assert client.post("/v1/events", json=[event], headers=KEY).status_code == 202
        assert state.store.popularity_of([top]) == [counts[top] + 1]

        # PUT writes through to Parquet (the durable source of truth) and wins over older rows.
        client.put(f"/v1/items/{top}", json={"title": "Renamed", "categories": ["fresh"], "available": False}, headers=KEY)
        assert Catalog(settings.catalog_dir).get_item(top).title == "Renamed"  # type: ignore[union-attr]
        assert top not in [i["item_id"] for i in client.get("/v1/users/nobody/recommendations").json()["items"]]
