"""Hostile input at the API's doors (issue 13): far-future and overflowing timestamps, control
characters in ids and categories, deeply nested metadata and whitespace around ids. Each is a clear
4xx (per event for event batches) and loses nothing else; nothing of a rejected write is stored."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi.testclient import TestClient

from feature_store.catalog import Catalog
from feature_store.event_log import EventLogReader
from feature_store.settings import Settings
from services.api.app import create_app
from tests.services.conftest import EventFactory


def _nested(depth: int) -> dict[str, Any]:
    """A dict `depth` levels deep: {"k": {"k": ... {}}}."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def _logged_ids(settings: Settings) -> list[str]:
    return sorted(event.event_id for event in EventLogReader(settings.event_log_dir).read())


def _rejected(body: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    return {reject["index"]: reject["errors"] for reject in body["rejected"]}


def test_events_too_far_ahead_of_the_clock_are_rejected_per_event(
    api_settings: Settings, make_event: EventFactory
) -> None:
    now = datetime.now(timezone.utc)
    batch = [
        make_event("u1", "i1"),
        make_event("u1", "i-far", ts="9999-12-31T23:59:59Z"),
        make_event("u1", "i-hour", ts=(now + timedelta(hours=1)).isoformat()),
        make_event("u1", "i-skewed", ts=(now + timedelta(minutes=5)).isoformat()),  # inside the default 900 s
    ]
    with TestClient(create_app(api_settings)) as client:
        body = client.post("/v1/events", json=batch).json()
        assert body["accepted"] == 2, body
        rejected = _rejected(body)
        assert set(rejected) == {1, 2}
        assert all(e["location"] == "ts" and "ahead of the server clock" in e["message"] for e in rejected[1])
        recent = client.get("/v1/users/u1/recommendations", params={"k": 50}).json()
        assert "i-far" not in [item["item_id"] for item in recent["items"]]
    assert _logged_ids(api_settings) == sorted([batch[0]["event_id"], batch[3]["event_id"]])

    wider = api_settings.model_copy(update={"events": type(api_settings.events)(max_future_skew_s=7200)})
    with TestClient(create_app(wider)) as client:
        later = make_event("u2", "i-hour", ts=(now + timedelta(hours=1)).isoformat())
        assert client.post("/v1/events", json=[later]).json()["accepted"] == 1


def test_time_zones_that_overflow_are_a_per_event_reject(api_settings: Settings, make_event: EventFactory) -> None:
    batch = [
        make_event("u1", "i1"),
        make_event("u1", "i2", ts="0001-01-01T00:00:00+01:00"),
        make_event("u1", "i3"),
        make_event("u1", "i4", ts="9999-12-31T23:59:59-01:00"),
    ]
    with TestClient(create_app(api_settings)) as client:
        response = client.post("/v1/events", json=batch)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["accepted"] == 2
        rejected = _rejected(body)
        assert set(rejected) == {1, 3}
        assert all(errors[0]["location"] == "ts" and "UTC" in errors[0]["message"] for errors in rejected.values())
        item = client.put("/v1/items/i9", json={"title": "Old", "created_at": "0001-01-01T00:00:00+01:00"})
        assert item.status_code == 422 and "created_at" in item.json()["error"]["message"], item.text
        assert client.get("/v1/items/i9").status_code == 404
        assert client.post("/v1/events", json=[make_event("u1", "i5")]).json()["accepted"] == 1
    assert Catalog(api_settings.catalog_dir).get_item("i9") is None
    assert _logged_ids(api_settings) == sorted([batch[0]["event_id"], batch[2]["event_id"], "e4-u1-i5"])


def test_control_characters_in_ids_and_categories_are_rejected(
    api_settings: Settings, make_event: EventFactory
) -> None:
    batch = [
        make_event("u1", "i1"),
        make_event("u1", "a\x1fb", event_id="bad-item"),
        make_event("u\x00", "i1", event_id="bad-user"),
        make_event("u1", "i2", event_id="e\x1e1"),
        make_event("u1", "i\x7f", event_id="bad-item-2"),
    ]
    with TestClient(create_app(api_settings)) as client:
        body = client.post("/v1/events", json=batch).json()
        assert body["accepted"] == 1
        rejected = _rejected(body)
        assert {index: errors[0]["location"] for index, errors in rejected.items()} == {
            1: "item_id", 2: "user_id", 3: "event_id", 4: "item_id",
        }
        assert all("control character" in errors[0]["message"] for errors in rejected.values())
        category = client.put("/v1/items/i7", json={"title": "T", "categories": ["Dra\x1fma"]})
        assert category.status_code == 422 and "control character" in category.text
        in_path = client.put("/v1/items/a%1Fb", json={"title": "T"})
        assert in_path.status_code == 422 and "control character" in in_path.text
        assert client.get("/v1/items/i7").status_code == 404
    assert Catalog(api_settings.catalog_dir).count_items() == 0
    assert _logged_ids(api_settings) == [batch[0]["event_id"]]


def test_deep_or_large_metadata_is_rejected_before_anything_is_written(api_settings: Settings) -> None:
    bounded = api_settings.model_copy(
        update={"catalog": type(api_settings.catalog)(max_metadata_depth=8, max_metadata_bytes=1000)}
    )
    with TestClient(create_app(bounded)) as client:
        for item_id, metadata in [("deep", _nested(260)), ("mid", _nested(220)), ("nine", _nested(9)),
                                  ("big", {"blob": "x" * 1000})]:
            response = client.put(f"/v1/items/{item_id}", json={"title": item_id, "metadata": metadata})
            assert response.status_code == 422, (item_id, response.text)
            assert "metadata" in response.json()["error"]["message"]
            assert client.get(f"/v1/items/{item_id}").status_code == 404
        user = client.put("/v1/users/u-deep", json={"attributes": _nested(260)})
        assert user.status_code == 422 and "attributes" in user.json()["error"]["message"], user.text
        assert client.get("/v1/users/u-deep").status_code == 404

        fine = _nested(8)
        assert client.put("/v1/items/ok", json={"title": "ok", "metadata": fine}).status_code == 200
        assert client.get("/v1/items/ok").json()["metadata"] == fine
    catalog = Catalog(api_settings.catalog_dir)
    assert [item.item_id for item in catalog.items()] == ["ok"] and catalog.count_users() == 0


def test_default_metadata_bounds_keep_items_readable(client: TestClient) -> None:
    """At 200-250 levels the item used to be stored and then answer 500 on every GET."""
    assert client.put("/v1/items/mid", json={"metadata": _nested(220)}).status_code == 422
    assert client.get("/v1/items/mid").status_code == 404


def test_ids_are_taken_exactly_not_stripped(client: TestClient, make_event: EventFactory) -> None:
    assert client.put("/v1/users/a", json={"attributes": {"name": "a"}}).status_code == 200
    assert client.put("/v1/items/i1", json={"title": "one"}).status_code == 200
    for path in ("/v1/users/%20a", "/v1/users/a%20", "/v1/users/%C2%A0a", "/v1/items/%20i1",
                 "/v1/users/%20a/recommendations"):
        response = client.get(path)
        assert response.status_code == 422, (path, response.text)
        assert "whitespace" in response.json()["error"]["message"], path
    assert client.put("/v1/users/%20a", json={"attributes": {"name": "spaced"}}).status_code == 422
    assert client.get("/v1/users/a").json()["attributes"] == {"name": "a"}
    body = client.post("/v1/events", json=[make_event(" a", "i1", event_id="x1"), make_event("a", "i1 ", event_id="x2")]).json()
    assert body["accepted"] == 0
    assert {index: errors[0]["location"] for index, errors in _rejected(body).items()} == {0: "user_id", 1: "item_id"}


def test_entries_stored_before_the_bounds_answer_a_clear_error_and_break_nothing(
    client: TestClient, redis_client: Any
) -> None:
    """An item or user PUT by an older version with 220-deep metadata (stored then, 500 on every
    GET since): its GET says what is wrong and how to mend it; a PUT mends it; the rest serve."""
    assert client.put("/v1/items/fine", json={"title": "fine"}).status_code == 200
    stored = client.app.state.service.store  # type: ignore[attr-defined]
    old_item = {"item_id": "old", "title": "old", "categories": ["c"], "available": True, "created_at": None,
                "metadata": _nested(220)}  # fmt: skip
    redis_client.set(stored._key("item", "old"), json.dumps(old_item))
    redis_client.set(stored._key("user", "old-user"), json.dumps({"user_id": "old-user", "attributes": _nested(220)}))

    for path, what in (("/v1/items/old", "item"), ("/v1/users/old-user", "user")):
        response = client.get(path)
        assert response.status_code == 409, response.text
        message = response.json()["error"]["message"]
        assert f"{what} 'old" in message and "PUT" in message, message
    assert client.get("/v1/items/fine").json()["title"] == "fine"
    assert client.put("/v1/items/old", json={"title": "mended"}).status_code == 200
    assert client.get("/v1/items/old").json()["title"] == "mended"
