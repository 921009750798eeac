"""POST /v1/events: per-event validation, durability, idempotent duplicates."""

from __future__ import annotations

from fastapi.testclient import TestClient

from feature_store.event_log import EventLogReader
from feature_store.settings import Settings
from services.api.app import create_app
from tests.services.conftest import EventFactory, with_api


def test_bad_events_are_itemized_and_good_ones_kept(api_settings: Settings, make_event: EventFactory) -> None:
    good = [make_event("u1", "i1"), make_event("u1", "i2", type="rating", value=5)]
    batch = [good[0], {"event_id": "x", "user_id": "u1"}, good[1], "not an event",
             make_event("u1", "i3", type="teleport")]
    with TestClient(create_app(api_settings)) as client:
        response = client.post("/v1/events", json=batch)
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2 and body["duplicates"] == 0
    rejected = {r["index"]: r["errors"] for r in body["rejected"]}
    assert set(rejected) == {1, 3, 4}
    assert {e["location"] for e in rejected[1]} == {"item_id", "type", "ts"}
    assert rejected[4][0]["location"] == "type" and "click" in rejected[4][0]["message"]
    # Durable: after shutdown (writer closed) the log holds exactly the accepted events.
    logged = list(EventLogReader(api_settings.event_log_dir).read())
    assert sorted(e.event_id for e in logged) == sorted(e["event_id"] for e in good)


def test_context_integers_stop_where_the_batch_layer_can_read_them(client: TestClient, make_event: EventFactory) -> None:
    # Spark reads positions as LongType: a larger one would be counted by the stream and lost by the batch
    fits = make_event("u3", "i1", type="impression", context={"request_id": "r1", "position": 2**63 - 1})
    over = make_event("u3", "i2", type="impression", context={"request_id": "r1", "position": 2**63})
    body = client.post("/v1/events", json=[fits, over]).json()
    assert body["accepted"] == 1
    assert [(r["index"], r["errors"][0]["location"]) for r in body["rejected"]] == [(1, "context.position")]


def test_duplicates_are_accepted_idempotently(client: TestClient, api_settings: Settings, make_event: EventFactory) -> None:
    event = make_event("u2", "i9")
    first = client.post("/v1/events", json=[event, event]).json()
    again = client.post("/v1/events", json=[event]).json()
    assert (first["accepted"], first["duplicates"]) == (1, 1)
    assert (again["accepted"], again["duplicates"]) == (0, 1)
    recs = client.get("/v1/users/someone/recommendations").json()
    assert recs["items"][0]["item_id"] == "i9"
    assert client.get("/metrics").text.count('recsys_events_total{outcome="duplicate"} 2.0') == 1


def test_event_batch_validation_errors_are_clear(client: TestClient) -> None:
    response = client.post("/v1/events", json={"event_id": "not-a-list"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert "body" in response.json()["error"]["message"]
    broken = client.post("/v1/events", content=b"[{", headers={"content-type": "application/json"})
    assert broken.status_code == 422 and "traceback" not in broken.text.lower()


def test_body_size_limit(api_settings: Settings, make_event: EventFactory) -> None:
    settings = with_api(api_settings, max_body_bytes=2000)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/events", json=[make_event("u", f"i{n}") for n in range(40)])
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        assert client.post("/v1/events", json=[make_event("u", "i1")]).status_code == 202


def test_ids_in_urls_whose_escapes_are_not_utf8_are_refused_not_merged(client: TestClient) -> None:
    """Decoded with replacement characters, `caf%E9` and `caf%E8` would both be `caf\\ufffd`."""
    assert client.put("/v1/items/caf%C3%A9", json={"title": "Café"}).status_code in (200, 201)
    assert client.get("/v1/items/caf%C3%A9").json()["item_id"] == "café"
    for url in ("/v1/items/caf%E9", "/v1/items/caf%E8", "/v1/users/caf%FF/recommendations",
                "/v1/users/u/recommendations?exclude=caf%E9"):
        response = client.get(url)
        assert response.status_code == 400, url
        assert response.json()["error"]["code"] == "invalid_url" and response.headers["x-request-id"]
    assert client.put("/v1/items/caf%E9", json={"title": "Other"}).status_code == 400
    assert client.get("/v1/items/caf%C3%A9").json()["title"] == "Café"  # not overwritten
