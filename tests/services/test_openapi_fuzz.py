"""Schemathesis against the live app's OpenAPI spec (bounded examples): zero 5xx responses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from feature_store.redis_server import EmbeddedRedis
from feature_store.settings import Settings
from services.api.app import create_app
from tests.services.conftest import live_server

KEY = "fuzz-key"


@pytest.fixture(scope="module")
def api_schema(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    app_settings = Settings(
        state_dir=tmp_path_factory.mktemp("fuzz"), redis={"url": redis_server.url},
        api={"api_keys": [KEY], "max_body_bytes": 64 * 1024}, event_log={"roll_max_age_s": 0.5},
    )
    with live_server(create_app(app_settings)) as base_url:
        yield schemathesis.openapi.from_url(f"{base_url}/openapi.json")


def test_no_server_errors(api_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12
    calls: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def exercise(case: schemathesis.Case) -> None:
            response = case.call(headers={"X-API-Key": KEY}, timeout=60)
            calls.append(response.status_code)
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
            if response.status_code >= 400:
                assert "Traceback" not in response.text and "error" in response.json(), where

        exercise()
    assert len(calls) >= 5 * len(operations)
    assert sum(200 <= code < 300 for code in calls) >= len(operations)  # not only rejections
