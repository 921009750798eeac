"""`recsys train embeddings --eval`: event log in, evaluated recall artifact in the registry out;
too little data to train on fails it (and the training DAG's embeddings step) and publishes nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from planted_clusters import planted_sequences
from typer.testing import CliRunner

from feature_store.event_log import LocalEventLog
from feature_store.schemas import Event, EventType
from feature_store.settings import Settings
from models.embeddings.inputs import read_sequences_parquet
from models.embeddings.skipgram import SkipGramConfig, SkipGramTrainer
from models.registry import ModelRegistry
from models.retrieval.artifact import RecallArtifact
from services.cli import app

# Three items: word2vec's subsampling keeps about one occurrence in sixteen, so no pair is left.
TINY = "u1 a b c a b c\nu2 b c a\n"


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


def _import_tiny(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY)
    imported = CliRunner().invoke(app, ["data", "import", str(path), "--format", "sequences", "--state-dir", str(settings.state_dir)])
    assert imported.exit_code == 0, imported.output


def test_a_tiny_corpus_trains_without_subsampling_instead_of_publishing_its_random_start(
    settings: Settings, tmp_path: Path
) -> None:
    """word2vec's subsampling (sample = 0.001) keeps about 1 in 10 occurrences of an item whose
    frequency is 1/8: on a tiny catalog it leaves no pair, and the vectors were the random start,
    published as the current recall model. Such a corpus trains without subsampling."""
    sequences = [["a", "b", "c", "a", "b", "c"], ["b", "c", "a"]]
    trainer = SkipGramTrainer(SkipGramConfig(dim=8, epochs=1, seed=1))
    trainer.fit(sequences)
    assert trainer.stats.pairs > 0 and len(trainer.stats.loss_per_epoch) == 1  # trained on pairs
    assert trainer.config.subsample == 1e-3  # the setting restored for the next fit
    _import_tiny(settings, tmp_path)
    args = ["train", "embeddings", "--state-dir", str(settings.state_dir), "--dim", "8", "--epochs", "1",
            "--walks-per-node", "2", "--walk-length", "5"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(ModelRegistry(settings.model_registry_dir).versions("recall")) == 1


def _write_sequences_folder(folder: Path) -> None:
    """The layout Spark gives `recsys batch sequences`: part files and a _SUCCESS marker."""
    folder.mkdir(parents=True)
    ring = [[f"i{k}", f"i{(k + 1) % 8}", f"i{(k + 2) % 8}"] for k in range(8)]
    for part in range(2):
        rows = ring[part * 4 : (part + 1) * 4] + [["i0"]]
        users = [f"u{k}" for k in range(5)]
        table = pa.table({"user_id": users, "session_id": ["s"] * 5, "item_ids": rows})
        pq.write_table(table, folder / f"part-0000{part}.snappy.parquet")
    (folder / "_SUCCESS").touch()


def test_sequences_are_read_from_a_folder_of_part_files(tmp_path: Path) -> None:
    _write_sequences_folder(tmp_path / "sequences")
    sequences = read_sequences_parquet(tmp_path / "sequences", batch_rows=2)
    ring = [[f"i{k}", f"i{(k + 1) % 8}", f"i{(k + 2) % 8}"] for k in range(8)]
    assert sorted(sequences) == sorted(ring)
    pq.write_table(pa.table({"items": [["a", "b"]]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="other.parquet: not a sequences Parquet file or folder"):
        read_sequences_parquet(tmp_path / "other.parquet")


def test_train_embeddings_reads_the_sequences_folder_of_the_batch_layer(
    settings: Settings, tmp_path: Path
) -> None:
    _write_sequences_folder(tmp_path / "sequences")
    args = ["train", "embeddings", "--state-dir", str(settings.state_dir),
            "--sequences", str(tmp_path / "sequences"), "--dim", "8", "--epochs", "1",
            "--walks-per-node", "2", "--walk-length", "5", "--no-publish"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "8 sequences, 24 items" in result.output
