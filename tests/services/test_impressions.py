"""Served lists logged as impressions, through the real app on a real Redis and a real event log."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from feature_store.definitions import Entity
from feature_store.event_log import EventLogReader
from feature_store.redis_server import EmbeddedRedis
from feature_store.schemas import Event
from feature_store.settings import Settings
from services.api.app import create_app
from services.api.state import ServiceState
from tests.services.conftest import EventFactory, put_items, with_api

CATALOG = {f"i{n}": (f"Film {n}", ["Drama" if n % 2 else "Comedy"]) for n in range(8)}
K = 4
FLUSH_TIMEOUT_S = 60.0
COUNTS = ["impressions_1h", "impressions_24h", "impressions_all"]


def _seed(client: TestClient, make_event: EventFactory) -> None:
    """A catalog and a crowd's clicks, so that every user gets a full popular list."""
    put_items(client, CATALOG)
    events = [make_event(f"crowd{n}", item) for index, item in enumerate(CATALOG) for n in range(8 - index)]
    assert client.post("/v1/events", json=events).json()["accepted"] == len(events)


def _service(client: TestClient) -> ServiceState:
    return client.app.state.service  # type: ignore[attr-defined, no-any-return]


def _flush(client: TestClient) -> None:
    service = _service(client)
    assert service.impressions.flush(FLUSH_TIMEOUT_S)
    service.event_log.roll_all()


def _impressions(settings: Settings) -> list[Event]:
    return [e for e in EventLogReader(settings.event_log_dir).read() if e.type.value == "impression"]


def _counter(client: TestClient, outcome: str) -> float:
    match = re.search(rf'^recsys_impressions_total{{outcome="{outcome}"}} (\S+)$', client.get("/metrics").text, re.M)
    return float(match.group(1)) if match else 0.0


def _recommend(client: TestClient, user: str, **body: Any) -> dict[str, Any]:
    if body:
        response = client.post(f"/v1/users/{user}/recommendations", json={"k": K, **body})
    else:
        response = client.get(f"/v1/users/{user}/recommendations", params={"k": K})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_every_shown_item_is_logged_once_with_its_slot_and_policy(
    api_settings: Settings, make_event: EventFactory
) -> None:
    with TestClient(create_app(api_settings)) as client:
        _seed(client, make_event)
        started = datetime.now(timezone.utc)
        served = [_recommend(client, f"u{n}") for n in range(5)]
        served += [_recommend(client, f"p{n}", context={"page": "home", "experiment": "exp1", "arm": "b",
                                                       "request_id": "ignored", "propensity": 0.5})
                   for n in range(3)]  # fmt: skip
        retried = [client.get("/v1/users/r/recommendations", params={"k": K}, headers={"X-Request-ID": "retry-1"})
                   for _ in range(2)]  # fmt: skip
        _flush(client)
        finished = datetime.now(timezone.utc)
        assert _counter(client, "logged") == (len(served) + 1) * K
        assert _counter(client, "duplicate") == K and _counter(client, "dropped") == 0

    assert all([item["position"] for item in body["items"]] == list(range(K)) for body in served)
    logged = _impressions(api_settings)
    assert len(logged) == (len(served) + 1) * K
    by_slot = {(e.context.request_id, e.context.position): e for e in logged}
    expected = {(body["request_id"], item["position"]): (body["user_id"], item["item_id"])
                for body in [*served, retried[0].json()] for item in body["items"]}  # fmt: skip
    assert {slot: (e.user_id, e.item_id) for slot, e in by_slot.items()} == expected
    for (request_id, position), event in by_slot.items():
        user = hashlib.sha256(event.user_id.encode()).hexdigest()[:8]  # independent of the writer's helper
        assert event.event_id == f"imp-{request_id}-{user}-{position}"
        assert event.context.policy == "ranker=popularity;explore=greedy" and event.context.propensity == 1.0
        assert event.context.model_versions is None  # no model published in this test
        assert started <= event.ts <= finished
    from_posts = {body["request_id"] for body in served[5:]}
    assert {(e.context.page, e.context.experiment, e.context.arm) for e in logged
            if e.context.request_id in from_posts} == {("home", "exp1", "b")}  # fmt: skip
    assert {(e.context.page, e.context.arm) for e in logged if e.context.request_id not in from_posts} == {(None, None)}


def test_clients_that_log_their_own_impressions_turn_it_off(api_settings: Settings, make_event: EventFactory) -> None:
    with TestClient(create_app(api_settings)) as client:
        _seed(client, make_event)
        assert client.get("/v1/users/u/recommendations", params={"log_impressions": "false"}).json()["items"]
        assert _recommend(client, "u", log_impressions=False)["items"]
        _flush(client)
        assert _counter(client, "logged") == 0
    assert _impressions(api_settings) == []

    off = with_api(api_settings, log_impressions=False)
    with TestClient(create_app(off)) as client:
        assert _recommend(client, "u")["items"] and _recommend(client, "u", context={"page": "home"})["items"]
        _flush(client)
    assert _impressions(off) == []


def test_impressions_update_the_items_live_impression_counts(api_settings: Settings, make_event: EventFactory) -> None:
    with TestClient(create_app(api_settings)) as client:
        _seed(client, make_event)
        store = _service(client).store
        before = store.read_features(Entity.ITEM, list(CATALOG), COUNTS)
        assert all(list(before[name]) == [0] * len(CATALOG) for name in COUNTS)
        shown = Counter(item["item_id"] for n in range(6) for item in _recommend(client, f"u{n % 3}")["items"])
        _flush(client)
        after = store.read_features(Entity.ITEM, list(CATALOG), COUNTS)
    expected = [shown[item] for item in CATALOG]
    assert sum(expected) == 6 * K
    assert all(list(after[name]) == expected for name in COUNTS)


def test_a_full_queue_drops_and_counts_without_failing_a_request(
    api_settings: Settings, make_event: EventFactory
) -> None:
    settings = with_api(api_settings, impression_queue_size=2)
    with TestClient(create_app(settings)) as client:
        _seed(client, make_event)
        service = _service(client)
        service.event_log.roll_all()  # the next append opens a new file, in a new directory
        log_dir = settings.event_log_dir
        log_dir.rename(log_dir.with_name("events.moved"))
        log_dir.write_text("not a directory: every append fails until it is back\n")
        try:
            bodies = [_recommend(client, f"u{n}") for n in range(10)]
            dropped = _counter(client, "dropped")
            # The writer retries one batch (its first list, the 2 queued then and 2 more after its
            # 50 ms wait for more), the queue holds 2: at least 3 lists are dropped.
            assert 3 * K <= dropped < 10 * K and _counter(client, "logged") == 0
        finally:
            # The writer's retries recreate the log directory as soon as the file is gone, so the
            # old one stays aside: it holds no impression (none was logged until now).
            log_dir.unlink()
        _flush(client)
        logged = _counter(client, "logged")
        assert logged + dropped == 10 * K and logged >= K
    assert all(len(body["items"]) == K for body in bodies)
    assert len({(e.context.request_id, e.context.position) for e in _impressions(settings)}) == logged


def test_shutdown_drains_the_queue_into_the_log(api_settings: Settings, make_event: EventFactory) -> None:
    with TestClient(create_app(api_settings)) as client:
        _seed(client, make_event)
        served = [_recommend(client, f"u{n}") for n in range(20)]
    assert len(_impressions(api_settings)) == 20 * K == sum(len(body["items"]) for body in served)


def test_degraded_lists_are_logged_with_the_fallback_policy(tmp_path: Path, make_event: EventFactory) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    settings = Settings(state_dir=tmp_path / "state", event_log={"roll_max_age_s": 0.2},
                        redis={"url": server.url, "socket_timeout_s": 0.2, "connect_timeout_s": 0.2})
    try:
        with TestClient(create_app(settings)) as client:
            client.post("/v1/events", json=[make_event(user, "hit") for user in ("crowd", "crowd2")] + [make_event("crowd", "other")])
            client.get("/v1/users/u/recommendations", params={"log_impressions": "false"})  # primes the fallback
            server.kill()
            body = client.get("/v1/users/u/recommendations").json()
            assert body["degraded"] is True and [i["item_id"] for i in body["items"]] == ["hit", "other"]
            _flush(client)
            assert _counter(client, "logged") == 2 and _counter(client, "not_applied") == 2
    finally:
        server.stop()
    logged = _impressions(settings)
    assert [(e.item_id, e.context.position, e.context.policy) for e in sorted(logged, key=lambda e: e.context.position)] \
        == [("hit", 0, "fallback=last_known_popular"), ("other", 1, "fallback=last_known_popular")]


def test_a_client_impression_with_a_propensity_outside_0_1_is_rejected(
    client: TestClient, make_event: EventFactory
) -> None:
    events = [make_event("u", "i1", "impression", context={"request_id": "r", "position": p, "propensity": value})
              for p, value in enumerate((0.0, 1.5, -0.2, 0.25, 1.0))]  # fmt: skip
    body = client.post("/v1/events", json=events).json()
    assert body["accepted"] == 2
    assert [reject["index"] for reject in body["rejected"]] == [0, 1, 2]
    for reject in body["rejected"]:
        (error,) = reject["errors"]
        assert error["location"] == "context.propensity"
        assert "greater than 0" in error["message"] or "less than or equal to 1" in error["message"]


def test_a_served_impression_posted_again_is_a_duplicate(api_settings: Settings, make_event: EventFactory) -> None:
    with TestClient(create_app(api_settings)) as client:
        _seed(client, make_event)
        served = _recommend(client, "u1")
        _flush(client)
        logged = [e for e in _impressions(api_settings) if e.context.request_id == served["request_id"]]
        assert len(logged) == K
        store = _service(client).store
        def counts() -> dict[str, list[int]]:
            return {name: list(values) for name, values in store.read_features(Entity.ITEM, list(CATALOG), COUNTS).items()}

        before = counts()
        again = client.post("/v1/events", json=[e.model_dump(mode="json") for e in logged]).json()
        assert (again["accepted"], again["duplicates"]) == (0, K)
        assert counts() == before and sum(before["impressions_all"]) == K


def test_two_users_served_under_one_request_id_both_have_their_impressions(api_settings: Settings, make_event: EventFactory) -> None:
    """A page view's id sent by each of its widgets, or a counter two clients share: not a retry."""
    with TestClient(create_app(api_settings)) as client:
        _seed(client, make_event)
        for user in ("u1", "u2"):
            response = client.get(f"/v1/users/{user}/recommendations", params={"k": K}, headers={"X-Request-ID": "page-7"})
            assert response.json()["request_id"] == "page-7"
        _flush(client)
        assert _counter(client, "duplicate") == 0
    logged = _impressions(api_settings)
    assert sorted((e.user_id, e.context.position) for e in logged) == [(u, p) for u in ("u1", "u2") for p in range(K)]


def test_context_labels_with_control_characters_are_refused(api_settings: Settings, make_event: EventFactory) -> None:
    with TestClient(create_app(api_settings)) as client:
        _seed(client, make_event)
        for name in ("page", "experiment", "arm"):
            response = client.post("/v1/users/u/recommendations", json={"context": {name: "a\x1fb"}})
            assert response.status_code == 422 and f"context.{name} must not contain control characters" in response.text
        assert _recommend(client, "u", context={"page": "home ünïcode"})["items"]
        _flush(client)
    assert [e.context.page for e in _impressions(api_settings)] == ["home ünïcode"] * K
