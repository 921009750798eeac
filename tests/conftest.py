"""Shared fixtures: a real redis-server per session, a fresh database per test, isolated settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
import redis

from feature_store.redis_server import EmbeddedRedis
from feature_store.settings import Settings

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"


def pytest_configure(config: pytest.Config) -> None:
    """Rich sizes CLI tables to the terminal running the tests, or to $COLUMNS when the console is
    made: one width for every run, set before any test imports the CLI, so what a test reads in a
    table does not depend on who runs it where."""
    os.environ["COLUMNS"] = "120"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def settings(tmp_path: Path, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings pointing every path at a temporary state directory and at the test Redis."""
    for name in list(os.environ):
        if name.startswith("RECSYS_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    return Settings(state_dir=tmp_path / "state", redis={"url": redis_server.url})


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens 100k not found at {ML100K}")
    return ML100K
