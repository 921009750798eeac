"""Redis killed or slow mid-test: degraded answers from the in-process fallback, never a 500; then recovery."""

from __future__ import annotations

from pathlib import Path

import redis
from fastapi.testclient import TestClient

from feature_store.redis_server import EmbeddedRedis
from feature_store.settings import Settings
from services.api.app import create_app
from tests.services.conftest import EventFactory


def _settings(tmp_path: Path, url: str) -> Settings:
    return Settings(state_dir=tmp_path / "state", redis={"url": url, "socket_timeout_s": 0.2, "connect_timeout_s": 0.2},
                    event_log={"roll_max_age_s": 0.2})


def test_redis_killed_then_restarted(tmp_path: Path, make_event: EventFactory) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        with TestClient(create_app(_settings(tmp_path, server.url))) as client:
            client.post("/v1/events", json=[make_event("crowd", "hit"), make_event("crowd", "other"),
                                            make_event("crowd2", "hit")])
            healthy = client.get("/v1/users/u/recommendations").json()
            assert [i["item_id"] for i in healthy["items"]] == ["hit", "other"] and not healthy["degraded"]

            server.kill()
            for _ in range(3):
                response = client.get("/v1/users/u/recommendations", params={"exclude": ["other"]})
                assert response.status_code == 200
                body = response.json()
                assert body["degraded"] is True and body["fallback"] == "last_known_popular"
                assert [i["item_id"] for i in body["items"]] == ["hit"]
            assert client.get("/readyz").status_code == 503
            posted = client.post("/v1/events", json=[make_event("u", "hit")])
            assert posted.status_code == 202 and posted.json() == {**posted.json(), "accepted": 1, "degraded": True}
            assert client.put("/v1/items/x", json={}).status_code == 503
            assert 'recsys_degraded 1.0' in client.get("/metrics").text

            server = EmbeddedRedis(tmp_path / "redis", port=server.port).start()
            recovered = client.get("/v1/users/u/recommendations").json()
            assert recovered["degraded"] is False
            assert client.get("/readyz").status_code == 200
    finally:
        server.stop()


def test_slow_redis_times_out_into_degraded_mode(tmp_path: Path, make_event: EventFactory) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        with TestClient(create_app(_settings(tmp_path, server.url))) as client:
            client.post("/v1/events", json=[make_event("crowd", "hit")])
            client.get("/v1/users/u/recommendations")
            redis.Redis.from_url(server.url).execute_command("CLIENT", "PAUSE", "1500", "ALL")
            body = client.get("/v1/users/u/recommendations").json()
            assert body["degraded"] is True and [i["item_id"] for i in body["items"]] == ["hit"]
    finally:
        server.stop()
