"""`recsys models list` shows every version id whole (`recsys models promote` needs it) at 80
columns and when piped."""

from __future__ import annotations

from pathlib import Path

from feature_store.settings import Settings
from models.registry import ModelRegistry
from tests.services.experiments.conftest import publish_dummy
from tests.services.test_cli_errors import recsys


def test_models_list_shows_whole_version_ids_at_80_columns(settings: Settings, tmp_path: Path) -> None:
    registry = ModelRegistry(settings.model_registry_dir)
    versions = [publish_dummy(registry, tmp_path / "artifacts", name) for name in ("v1", "v2")]
    listing = recsys("models", "list", "--state-dir", str(settings.state_dir), columns=80)
    assert listing.returncode == 0, listing.stderr
    assert all(version in listing.stdout + listing.stderr for version in versions), listing.stderr
    promoted = recsys("models", "promote", versions[0], "--state-dir", str(settings.state_dir), columns=80)
    assert promoted.returncode == 2 and "bless" in promoted.stderr  # the whole id names the version: only unblessed
