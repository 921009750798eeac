"""The explore stage in the serving path, through the real app on a real Redis and event log:
responses and logged impressions carry the policy and the propensity of each slot, and unreadable
statistics serve the greedy list, marked, never a 5xx."""

from __future__ import annotations

from typing import Any

import redis
from fastapi.testclient import TestClient

from feature_store.event_log import EventLogReader
from feature_store.redis_layout import KeyLayout
from feature_store.settings import ExploreSettings, Settings
from services.api.app import create_app
from tests.services.conftest import EventFactory, put_items

# Planted popularity: i0 is the most clicked, i7 the least, so a new user's ranked list is i0 … i7.
CATALOG = {f"i{n}": (f"Film {n}", ["Drama"]) for n in range(8)}
RANKED = [f"i{n}" for n in range(8)]
K, EPSILON, REQUESTS = 3, 0.5, 20


def _app(settings: Settings, **explore: Any) -> TestClient:
    return TestClient(create_app(settings.model_copy(update={"explore": ExploreSettings(**explore)})))


def _seed(client: TestClient, make_event: EventFactory) -> None:
    put_items(client, CATALOG)
    events = [make_event(f"crowd{n}", item) for index, item in enumerate(CATALOG) for n in range(10 - index)]
    assert client.post("/v1/events", json=events).json()["accepted"] == len(events)


def _recommend(client: TestClient, user: str) -> dict[str, Any]:
    response = client.get(f"/v1/users/{user}/recommendations", params={"k": K})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _impressions(client: TestClient, settings: Settings) -> dict[tuple[str, int], Any]:
    service = client.app.state.service  # type: ignore[attr-defined]
    assert service.impressions.flush(60.0)
    service.event_log.roll_all()
    return {(e.context.request_id, e.context.position): e
            for e in EventLogReader(settings.event_log_dir).read() if e.type.value == "impression"}


def test_epsilon_greedy_responses_and_impressions_carry_the_rules_propensities(
    api_settings: Settings, make_event: EventFactory
) -> None:
    pool = len(RANKED) - K
    with _app(api_settings, policy="epsilon_greedy", epsilon=EPSILON, seed=7) as client:
        _seed(client, make_event)
        served = [_recommend(client, f"new{n}") for n in range(REQUESTS)]
        logged = _impressions(client, api_settings)

    explored = 0
    for body in served:
        assert body["explore"] == f"epsilon_greedy(epsilon={EPSILON:g})" and not body["degraded"]
        assert [item["position"] for item in body["items"]] == list(range(K))
        for slot, item in enumerate(body["items"]):
            if item["item_id"] == RANKED[slot]:
                expected = 1 - EPSILON
            else:
                assert item["item_id"] in RANKED[K:]
                expected, explored = EPSILON / pool, explored + 1
            assert abs(item["propensity"] - expected) < 1e-12
            impression = logged[(body["request_id"], slot)]
            assert impression.item_id == item["item_id"]
            assert impression.context.propensity == item["propensity"]
            assert impression.context.policy == f"ranker=popularity;explore=epsilon_greedy(epsilon={EPSILON:g})"
    assert 0 < explored < REQUESTS * K


def test_ucb_serves_and_logs_deterministic_slates(api_settings: Settings, make_event: EventFactory) -> None:
    with _app(api_settings, policy="ucb1") as client:
        _seed(client, make_event)
        body = _recommend(client, "new")
        logged = _impressions(client, api_settings)
    assert body["explore"] == "ucb1(m=10,c=1)"
    assert [item["item_id"] for item in body["items"]] == RANKED[:K]  # no feedback yet: the prior's order
    assert [logged[(body["request_id"], slot)].context.propensity for slot in range(K)] == [1.0] * K


def test_unreadable_stats_serve_greedy_marked_in_the_response_and_the_impressions(
    api_settings: Settings, make_event: EventFactory, redis_client: redis.Redis
) -> None:
    # A key of the wrong type where the attribution store keeps its positions: every read of the
    # examined counts fails in Redis (WRONGTYPE), while the rest of the pipeline reads fine.
    redis_client.set(KeyLayout(api_settings.redis.key_prefix).attribution_positions(), "not a sorted set")
    with _app(api_settings, policy="thompson", seed=1) as client:
        _seed(client, make_event)
        body = _recommend(client, "new")
        logged = _impressions(client, api_settings)
    assert body["explore"] == "greedy (stats unavailable)" and not body["degraded"]
    assert [(i["item_id"], i["propensity"]) for i in body["items"]] == [(item, 1.0) for item in RANKED[:K]]
    for slot in range(K):
        assert logged[(body["request_id"], slot)].context.policy == "ranker=popularity;explore=greedy (stats unavailable)"
        assert logged[(body["request_id"], slot)].context.propensity == 1.0
