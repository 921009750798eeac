"""Helpers of the training-DAG tests."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

from feature_store.event_log import LocalEventLog
from feature_store.schemas import Event, EventType
from feature_store.settings import Settings
from models.registry import ModelRegistry
from tests.models.planted_clusters import planted_sequences


def fresh_registry(settings: Settings, tmp_path: Path) -> tuple[Settings, ModelRegistry]:
    """A copy of `settings`' registry under `tmp_path`, so blessings made by one test (the gate's
    baseline is the newest blessed version) do not reach another."""
    shutil.copytree(settings.model_registry_dir, tmp_path / "registry")
    return settings.model_copy(update={"registry_dir": tmp_path / "registry"}), ModelRegistry(tmp_path / "registry")


def planted_click_log(settings: Settings, users: int, length: int, step: timedelta) -> None:
    """Clicks of `planted_sequences` (users browse one cluster) in the event log: user u clicks
    item p of their sequence at p steps (plus u minutes), so the newest slice is every user's last
    items."""
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    events = [Event(event_id=f"{user}-{p}", user_id=f"u{user}", item_id=item, type=EventType.CLICK,
                    ts=start + p * step + timedelta(minutes=user))
              for user, sequence in enumerate(planted_sequences(users=users, length=length, seed=1))
              for p, item in enumerate(sequence)]  # fmt: skip
    log = LocalEventLog(settings.event_log_dir, settings.event_log)
    log.append(events)
    log.close()
