"""Fixtures for the batch-layer tests: one local SparkSession for all of them, and MovieLens 100k
loaded once into a real event log and catalog (then compacted, sessionized and graphed once)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from feature_store.catalog import Catalog
from feature_store.event_log import LocalEventLog
from feature_store.schemas import Event, EventType, Item
from feature_store.settings import EventLogSettings, Settings
from pipelines.spark.session import build_session

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]  # fmt: skip


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("spark-state"),
        spark={"master": "local[2]", "shuffle_partitions": 4, "driver_memory": "1g"},
    )
    session = build_session(
        settings,
        "recsys-tests",
        {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", "spark.sql.adaptive.enabled": "true"},
    )
    yield session
    session.stop()


def batch_settings(state_dir: Path, **batch: object) -> Settings:
    """Settings for a batch test: everything under `state_dir`, few shuffle partitions."""
    return Settings(state_dir=state_dir, spark={"master": "local[2]", "shuffle_partitions": 4}, batch=batch)


def write_events(settings: Settings, events: list[Event]) -> None:
    with LocalEventLog(settings.event_log_dir, EventLogSettings(fsync=False)) as log:
        log.append(events)


def ml100k_events(ml100k: Path) -> Iterator[Event]:
    with (ml100k / "u.data").open() as handle:
        for line in handle:
            user, item, rating, ts = line.split("\t")
            yield Event(
                event_id=f"ml100k:{user}:{item}:{ts.strip()}", user_id=user, item_id=item, type=EventType.RATING,
                value=float(rating), ts=datetime.fromtimestamp(int(ts), tz=timezone.utc),
            )  # fmt: skip


def ml100k_items(ml100k: Path) -> Iterator[Item]:
    with (ml100k / "u.item").open(encoding="latin-1") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("|")
            flags = fields[5:24]
            categories = [genre for genre, flag in zip(GENRES, flags) if flag == "1"]
            yield Item(item_id=fields[0], title=fields[1], categories=categories)


@pytest.fixture(scope="session")
def ml100k_settings(ml100k_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A state directory holding ml-100k in the event log (ratings) and the item catalog."""
    settings = batch_settings(tmp_path_factory.mktemp("ml100k-state"))
    with LocalEventLog(settings.event_log_dir, EventLogSettings(fsync=False)) as log:
        chunk: list[Event] = []
        for event in ml100k_events(ml100k_path):
            chunk.append(event)
            if len(chunk) == 20_000:
                log.append(chunk)
                chunk = []
        log.append(chunk)
    Catalog(settings.catalog_dir).upsert_items(ml100k_items(ml100k_path))
    return settings


@pytest.fixture(scope="session")
def ml100k_batch(spark: object, ml100k_settings: Settings) -> dict[str, object]:
    """ml-100k run through compact, sequences and item_graph once; their summaries by job."""
    from pipelines.spark.runner import run_jobs

    return {s.job: s for s in run_jobs(spark, ml100k_settings, ["compact", "sequences", "item_graph"])}  # type: ignore[arg-type]
