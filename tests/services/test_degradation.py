"""Redis killed or slow mid-test: degraded answers from the in-process fallback, never a 500; then recovery."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from feature_store.redis_server import EmbeddedRedis
from feature_store.settings import Settings
from services.api.app import create_app
from services.experiments.store import ExperimentStore
from tests.services.conftest import EventFactory, live_server


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
            # Which items are in a category is in Redis: nothing rather than items of another category.
            in_category = client.get("/v1/users/u/recommendations", params={"category": "c1"}).json()
            assert in_category["degraded"] is True and in_category["items"] == []
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


def test_paused_redis_answers_every_concurrent_request_degraded_within_the_deadline(
    tmp_path: Path, make_event: EventFactory
) -> None:
    """A Redis call that hangs must cost its request at most the deadline, and the other requests
    nothing. The socket timeout outlasts the pause, so an answer is degraded only if the deadline
    cut it short while Redis was paused: without a deadline, or with requests waiting behind one
    another's hanging call on the event loop, they would be answered after the pause, not degraded."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    settings = Settings(state_dir=tmp_path / "state", redis={"url": server.url, "socket_timeout_s": 30.0},
                        api={"recommend_deadline_s": 0.5}, event_log={"roll_max_age_s": 0.2})
    pauser = redis.Redis.from_url(server.url)
    try:
        with live_server(create_app(settings)) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
            client.post("/v1/events", json=[make_event("crowd", "hit"), make_event("crowd", "other"),
                                            make_event("crowd2", "hit")])
            assert client.get("/v1/users/u/recommendations").json()["degraded"] is False

            pauser.execute_command("CLIENT", "PAUSE", "15000", "ALL")
            bodies = _concurrent_recommendations(base_url, users=[f"user{n}" for n in range(8)])
            pauser.ping()  # answered when the pause ends (CLIENT UNPAUSE would wait for it too)

            assert [(b["degraded"], b["fallback"], [i["item_id"] for i in b["items"]]) for b in bodies] == [
                (True, "last_known_popular", ["hit", "other"])] * 8
            recovered = _first_answer_not_degraded(client)
            assert [i["item_id"] for i in recovered["items"]] == ["hit", "other"]
    finally:
        pauser.close()
        server.stop()


def _first_answer_not_degraded(client: httpx.Client, tries: int = 50) -> dict:
    """Threads still finishing requests abandoned at the deadline may hold up the first answers
    after Redis is back, on a busy machine."""
    for _ in range(tries):
        body = client.get("/v1/users/u/recommendations").json()
        if not body["degraded"]:
            return body
    raise AssertionError(f"still degraded after {tries} requests: {body}")


def _concurrent_recommendations(base_url: str, users: list[str]) -> list[dict]:
    """GET each user's recommendations, all at once (one thread and connection each)."""
    start = threading.Barrier(len(users))
    bodies: dict[str, dict] = {}

    def ask(user: str) -> None:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            start.wait()
            response = client.get(f"/v1/users/{user}/recommendations")
            assert response.status_code == 200, response.text
            bodies[user] = response.json()

    threads = [threading.Thread(target=ask, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(bodies) == len(users), "a request failed (see the thread's traceback)"
    return [bodies[user] for user in users]


def test_experiments_with_redis_down_answer_503_and_change_nothing(tmp_path: Path) -> None:
    """Redis is where every worker reads experiments: a create or stop it cannot mirror is not made
    (the file is put back), reads with no degraded answer say 503, and after Redis returns the
    same commands work. A process with no copy yet (the CLI) reads the files."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    settings = _settings(tmp_path, server.url)
    settings = settings.model_copy(update={"api": settings.api.model_copy(update={"api_keys": [SecretStr("adm")]})})
    files = settings.state_dir / "experiments"
    admin = {"X-API-Key": "adm"}
    try:
        with TestClient(create_app(settings)) as client:
            define = lambda name: {"id": name, "kind": "ab", "traffic": 0.2,  # noqa: E731
                                   "arms": [{"name": "a"}, {"name": "b"}], "layer": name}
            assert client.post("/v1/experiments", json=define("kept"), headers=admin).status_code == 201
            kept = (files / "kept.json").read_bytes()

            server.kill()
            created = client.post("/v1/experiments", json=define("late"), headers=admin)
            assert created.status_code == 503 and "'late' was not changed" in created.json()["error"]["message"]
            assert not (files / "late.json").exists()
            stopped = client.post("/v1/experiments/kept/stop", headers=admin)
            assert stopped.status_code == 503 and (files / "kept.json").read_bytes() == kept
            for path in ("/v1/experiments/kept/report", "/experiments/kept"):
                response = client.get(path, headers=admin)
                assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable", path
            cold = ExperimentStore(files, redis.Redis.from_url(server.url, socket_connect_timeout=0.2), "recsys")
            assert list(cold.all()) == ["kept"]  # no copy yet: the files

            server = EmbeddedRedis(tmp_path / "redis", port=server.port).start()
            assert client.post("/v1/experiments/kept/stop", headers=admin).json()["status"] == "stopped"
            assert client.post("/v1/experiments", json=define("late"), headers=admin).status_code == 201
            assert {e["id"]: e["status"] for e in client.get("/v1/experiments", headers=admin).json()} == {
                "kept": "stopped", "late": "running"}
    finally:
        server.stop()
