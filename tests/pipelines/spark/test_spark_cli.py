"""`recsys batch all` through the CLI, in the tests' Spark session (the CLI leaves a session it
did not create running), on a tiny event log with one malformed line."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feature_store.catalog import Catalog
from feature_store.schemas import Event, EventType, Item
from feature_store.settings import Settings
from services.cli import app
from tests.pipelines.spark.conftest import write_events

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)


def _events() -> list[Event]:
    """Two users browsing four items: clicks, ratings (3.5 is a positive), one low rating."""
    kinds = [(EventType.CLICK, None), (EventType.RATING, 3.5), (EventType.RATING, 2.0), (EventType.CLICK, None)]
    return [
        Event(event_id=f"{user}-{n}", user_id=user, item_id=f"i{(n + offset) % 4}", type=kind, value=value,
              ts=T0 + timedelta(minutes=20 * n + offset))
        for offset, user in enumerate(["u1", "u2"])
        for n, (kind, value) in enumerate(kinds * 2)
    ]  # fmt: skip


def test_batch_all_runs_the_chain_and_keeps_the_callers_session(
    spark: object, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_events(settings, _events())
    (settings.event_log_dir / "dt=2024-03-01" / "hr=09" / "part-bad.jsonl").write_text("{not json\n")
    Catalog(settings.catalog_dir).upsert_items(Item(item_id=f"i{k}", categories=[f"c{k % 2}"]) for k in range(4))
    monkeypatch.setenv("RECSYS_REDIS__URL", settings.redis.url or "")
    monkeypatch.setenv("RECSYS_SPARK__SHUFFLE_PARTITIONS", "2")

    result = CliRunner().invoke(app, ["batch", "all", "--state-dir", str(settings.state_dir)])

    assert result.exit_code == 0, result.output
    for job in ("compact", "sequences", "item_graph", "batch_features", "ranking_samples"):
        assert job in result.output
    batch = Path(settings.batch_uri)
    # Past the newest event (11:21): the log is older than the speed layer's replay window.
    assert json.loads((batch / "features" / "_manifest.json").read_text())["watermark"] == "2024-03-01T12:00:00+00:00"
    manifest = json.loads((batch / "samples" / "_manifest.json").read_text())
    # per user: 4 clicks, 2 ratings of 3.5 (positives), 2 of 2.0 (negatives); sampled negatives come on top.
    assert manifest["rows_by_label_source"]["click"] == 8
    assert manifest["rows_by_label_source"]["rating"] == 8
    assert spark.range(3).count() == 3  # type: ignore[attr-defined]
