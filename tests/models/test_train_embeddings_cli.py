"""`recsys train embeddings --eval`: event log in, evaluated recall artifact in the registry out."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from planted_clusters import planted_sequences
from typer.testing import CliRunner

from feature_store.event_log import LocalEventLog
from feature_store.schemas import Event, EventType
from feature_store.settings import Settings
from models.registry import ModelRegistry
from models.retrieval.artifact import RecallArtifact
from services.cli import app


def _write_planted_events(settings: Settings) -> None:
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    events = [
        Event(event_id=f"{user}-{position}", user_id=f"u{user}", item_id=item, type=EventType.RATING,
              value=5.0 if position % 5 else 2.0, ts=start + timedelta(minutes=user * 30 + position))
        for user, sequence in enumerate(planted_sequences(users=150, length=12))
        for position, item in enumerate(sequence)
    ]  # fmt: skip
    log = LocalEventLog(settings.event_log_dir, settings.event_log)
    log.append(events)
    log.close()


def test_train_embeddings_evaluates_and_publishes(settings: Settings) -> None:
    _write_planted_events(settings)
    args = ["train", "embeddings", "--state-dir", str(settings.state_dir), "--eval", "--dim", "16",
            "--epochs", "2", "--window", "3", "--walks-per-node", "2", "--walk-length", "10", "--batch-size", "256"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    registry = ModelRegistry(settings.model_registry_dir)
    current = registry.current("recall")
    assert current is not None
    registry.verify(current)
    offline = current.manifest["metrics"]["offline"]
    assert set(offline) == {"Pop", "ItemKNN", "item2vec", "deepwalk", "node2vec", "multi-channel"}
    assert all(0.0 <= row["HR@50"] <= 1.0 for row in offline.values())
    assert current.manifest["params"]["skipgram"]["dim"] == 16
    assert "held_out" in current.manifest["data_window"]

    artifact = RecallArtifact.load(current.path, current.manifest["models"])
    candidates = artifact.multichannel().recall(["i1", "i2"], 20)
    assert len(candidates) == 20 and all(c.channels for c in candidates)


def test_train_embeddings_without_events_fails_clearly(settings: Settings) -> None:
    result = CliRunner().invoke(app, ["train", "embeddings", "--state-dir", str(settings.state_dir)])
    assert result.exit_code == 2
    assert "no event log" in result.output
