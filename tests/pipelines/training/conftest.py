"""Helpers of the training-DAG tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from feature_store.settings import Settings
from models.registry import ModelRegistry


def fresh_registry(settings: Settings, tmp_path: Path) -> tuple[Settings, ModelRegistry]:
    """A copy of `settings`' registry under `tmp_path`, so blessings made by one test (the gate's
    baseline is the newest blessed version) do not reach another."""
    shutil.copytree(settings.model_registry_dir, tmp_path / "registry")
    return settings.model_copy(update={"registry_dir": tmp_path / "registry"}), ModelRegistry(tmp_path / "registry")
