"""The explore stage in the serving path, through the real app on a real Redis and event log:
responses and logged impressions carry the policy and the propensity of each slot, and unreadable
statistics serve the greedy list, marked, never a 5xx."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
from fastapi.testclient import TestClient

from feature_store.definitions import Entity
from feature_store.event_log import EventLogReader
from feature_store.linucb_store import RedisLinUcbStore
from feature_store.online_store import RedisOnlineStore
from feature_store.redis_layout import KeyLayout
from feature_store.redis_server import EmbeddedRedis
from feature_store.settings import ExploreSettings, Settings
from services.api.app import create_app
from services.explore.policy import ItemCounts, Ranked
from services.explore.thompson import Thompson
from tests.feature_store.helpers import WM, item_row
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


def test_thompson_logs_the_propensities_of_choose_computed_off_the_request_path(
    api_settings: Settings, make_event: EventFactory
) -> None:
    """A seeded stage gives request n the generator [seed, n]; no feedback yet, so every count is 0.
    Each impression carries exactly `Thompson.choose`'s propensities for that generator, computed by
    the impression writer: the response leaves them null, except for a list the client logs itself
    (`log_impressions=false`), whose response carries them."""
    seed, draws, requests = 4, 32, 4
    with _app(api_settings, policy="thompson", seed=seed, thompson_draws=draws) as client:
        _seed(client, make_event)
        served = [_recommend(client, f"new{n}") for n in range(requests)]
        own = client.get("/v1/users/own/recommendations", params={"k": K, "log_impressions": "false"}).json()
        logged = _impressions(client, api_settings)
    policy = Thompson(ExploreSettings().prior_strength, draws)
    ranked, zero = Ranked(tuple(RANKED), np.linspace(1, 0, len(RANKED))), np.zeros(len(RANKED))
    for n, body in enumerate(served + [own]):
        expected = policy.choose(ranked, K, np.random.default_rng([seed, n]), ItemCounts(zero, zero))
        assert [item["item_id"] for item in body["items"]] == list(expected.item_ids)
        if n < requests:
            assert [item["propensity"] for item in body["items"]] == [None] * K
            assert tuple(logged[(body["request_id"], slot)].context.propensity for slot in range(K)) == expected.propensities
        else:
            assert tuple(item["propensity"] for item in body["items"]) == expected.propensities
            assert not any(request_id == body["request_id"] for request_id, _ in logged)


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


def test_linucb_reads_its_statistics_and_the_users_context_from_redis(
    api_settings: Settings, make_event: EventFactory
) -> None:
    """Planted: the fan's only history item is i0, so x_t = e(i0)/|e(i0)|; i5 has three clicks in
    that context (A = I + 3xxᵀ, b = 3x: score 3/4 + sqrt(1/4) = 1.25), i6 one impression without a
    click (0 + sqrt(1/2)), every other item no statistics (0 + 1): i5 leads, i6 drops out."""
    features = RedisOnlineStore.from_settings(api_settings)
    rng = np.random.default_rng(0)
    with features.publish_batch_view(Entity.ITEM, WM) as write:
        write([item_row(item, embedding=rng.normal(size=32)) for item in CATALOG])
    x = features.get_features(Entity.ITEM, ["i0"], ["embedding"])["embedding"][0].astype(float)
    x /= np.linalg.norm(x)
    linucb = RedisLinUcbStore(features.spec, dim=32, ridge=1.0)
    for n in range(3):
        linucb.update(f"click{n}", "i5", x, 1.0)
    linucb.update("shown", "i6", x, 0.0)
    with _app(api_settings, policy="linucb", linucb_alpha=1.0) as client:
        _seed(client, make_event)
        assert client.post("/v1/events", json=[make_event("fan", "i0")]).json()["accepted"] == 1
        body = _recommend(client, "fan")
        served_at = int(time.time() * 1000)
    saved = linucb.context_at("fan", served_at)  # what the stream job will update the statistics with
    linucb.close()
    features.close()
    assert body["explore"] == "linucb(alpha=1)"
    assert [(i["item_id"], i["propensity"]) for i in body["items"]] == [("i5", 1.0), ("i1", 1.0), ("i2", 1.0)]
    assert saved is not None
    np.testing.assert_allclose(saved, x, rtol=1e-6)


def test_redis_down_serves_the_fallback_list_marked_with_propensity_one(
    tmp_path: Path, make_event: EventFactory
) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    settings = Settings(state_dir=tmp_path / "state", event_log={"roll_max_age_s": 0.2},
                        redis={"url": server.url, "socket_timeout_s": 0.2, "connect_timeout_s": 0.2},
                        explore={"policy": "epsilon_greedy", "epsilon": 1.0, "seed": 3})
    try:
        with TestClient(create_app(settings)) as client:
            client.post("/v1/events", json=[make_event("crowd", item) for item in ("hit", "hit", "other")])
            client.get("/v1/users/u/recommendations")  # the fallback remembers the popular list
            server.kill()
            response = client.get("/v1/users/u/recommendations", params={"k": 2})
            assert response.status_code == 200
            body = response.json()
            logged = _impressions(client, settings)
    finally:
        server.stop()
    assert body["degraded"] and body["explore"] == "greedy (stats unavailable)"
    assert [(i["item_id"], i["propensity"]) for i in body["items"]] == [("hit", 1.0), ("other", 1.0)]
    assert [logged[(body["request_id"], slot)].context.propensity for slot in range(2)] == [1.0, 1.0]
    assert logged[(body["request_id"], 0)].context.policy == "fallback=last_known_popular"


def test_a_retried_request_draws_the_same_slate_on_any_worker(api_settings: Settings, make_event: EventFactory) -> None:
    """Impression ids are the request id and the position: a retry that drew another slate would log
    a list the client never showed under the ids of the one it shows."""
    def slates(client: TestClient, request_ids: list[str]) -> list[tuple[str, ...]]:
        answers = [client.get("/v1/users/u/recommendations", params={"k": K}, headers={"X-Request-ID": rid}).json()
                   for rid in request_ids]  # fmt: skip
        assert [answer["request_id"] for answer in answers] == request_ids
        return [tuple(item["item_id"] for item in answer["items"]) for answer in answers]

    request_ids = [f"req-{n}" for n in range(REQUESTS)]
    with _app(api_settings, policy="epsilon_greedy", epsilon=EPSILON) as first:
        _seed(first, make_event)
        drawn = slates(first, request_ids)
        with _app(api_settings, policy="epsilon_greedy", epsilon=EPSILON) as second:  # another worker
            assert slates(second, request_ids) == drawn
        assert slates(first, request_ids) == drawn
    assert len(set(drawn)) > 1 and any(slate != tuple(RANKED[:K]) for slate in drawn)  # the requests explored
