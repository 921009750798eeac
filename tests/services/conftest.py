"""Fixtures for the API: the real app (TestClient runs its lifespan) or a live uvicorn, on real Redis."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from feature_store.redis_server import free_port
from feature_store.settings import Settings
from services.api.app import create_app

WRITE_KEY = "test-key-123"


@pytest.fixture
def api_settings(settings: Settings, redis_client: Any) -> Settings:
    """Test settings with a fast event-log roll (redis_client flushes the test database) and a
    recommendation deadline no busy test machine misses (tests of the deadline set their own)."""
    fast_roll = settings.model_copy(update={"event_log": settings.event_log.model_copy(update={"roll_max_age_s": 0.2})})
    return with_api(fast_roll, recommend_deadline_s=60.0)


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as test_client:
        yield test_client


def with_api(settings: Settings, **api: Any) -> Settings:
    """`settings` with some `api` fields changed, validated like any other settings."""
    validated = type(settings.api).model_validate({**settings.api.model_dump(), **api})
    return settings.model_copy(update={"api": validated})


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # the app's startup loads models: slow on a busy machine
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def put_items(client: TestClient, items: dict[str, tuple[str, list[str]]], headers: dict[str, str] | None = None) -> None:
    for item_id, (title, categories) in items.items():
        response = client.put(f"/v1/items/{item_id}", json={"title": title, "categories": categories}, headers=headers)
        assert response.status_code == 200, response.text


EventFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def make_event() -> EventFactory:
    counter = iter(range(10**9))

    def make(user: str, item: str, type: str = "click", **extra: Any) -> dict[str, Any]:
        return {"event_id": f"e{next(counter)}-{user}-{item}", "user_id": user, "item_id": item, "type": type,
                "ts": datetime.now(timezone.utc).isoformat(), **extra}

    return make
