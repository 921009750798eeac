"""Fixtures for experiments: a registry with two published ranker versions and a `candidate` pin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from feature_store.settings import Settings
from models.registry import ModelRegistry
from services.api.app import create_app
from tests.services.conftest import with_api

ADMIN = {"X-API-Key": "admin-key"}


def publish_dummy(registry: ModelRegistry, work: Path, name: str) -> str:
    """A published ranker version (experiments only resolve it; nothing loads it)."""
    folder = work / name
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(name.encode())
    return registry.publish("ranker", folder, {"params": {}, "data_window": {}, "metrics": {}})


@pytest.fixture
def registry_versions(api_settings: Settings, tmp_path: Path) -> list[str]:
    registry = ModelRegistry(api_settings.model_registry_dir)
    versions = [publish_dummy(registry, tmp_path / "artifacts", name) for name in ("v1", "v2")]
    registry.pin("ranker", "candidate", versions[1])
    return versions


@pytest.fixture
def admin_settings(api_settings: Settings) -> Settings:
    return with_api(api_settings, api_keys=["admin-key"])


@pytest.fixture
def admin_client(admin_settings: Settings, registry_versions: list[str]) -> Iterator[TestClient]:
    with TestClient(create_app(admin_settings)) as client:
        yield client
