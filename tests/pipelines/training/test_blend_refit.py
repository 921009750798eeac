"""The training DAG's recall step (issue 20): the served blend is refitted on every training item
after its weights are fitted on validation, and the order choice's ranker trains on sample rows
that never hold a validation target (the user's newest positive before the held-out window)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.event_log import LocalEventLog
from feature_store.schemas import Event, EventType
from feature_store.settings import Settings
from models.ranking import samples
from models.registry import ModelRegistry
from models.retrieval.reason_selection import DEPTH_GRID, PENALTY_GRID
from pipelines.training import gate, steps
from pipelines.training.blend import validation_target_times
from pipelines.training.executor import StepContext
from pipelines.training.holdout import holdout_cutoff, read_positives
from pipelines.training.rankers import held_out_samples
from tests.pipelines.training.conftest import planted_click_log

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
PLANTED = ["i0", "i1", "i2", "i3", "solo"]  # "solo": nowhere else in the log


def _settings(tmp_path: Path) -> Settings:
    training = {"embedding_models": ["item2vec"], "embedding_dim": 8, "embedding_epochs": 1, "blend_gru_epochs": 1}
    return Settings(state_dir=tmp_path / "state", training=training)


def test_the_served_blend_knows_an_item_seen_only_as_a_validation_target(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    planted_click_log(settings, users=60, length=8, step=timedelta(hours=1))
    log = LocalEventLog(settings.event_log_dir, settings.event_log)
    log.append([Event(event_id=f"p{n}", user_id="planted", item_id=item, type=EventType.CLICK, ts=START + timedelta(minutes=n))
                for n, item in enumerate(PLANTED)])  # fmt: skip
    log.close()
    assert holdout_cutoff(settings, read_positives(settings)) > START + timedelta(hours=1)  # the planted user trains whole

    result = steps.embeddings(StepContext(settings, "run", {}))

    artifact = gate.load_recall(ModelRegistry(settings.model_registry_dir).get("recall", result.outputs["recall_version"]))
    blend = artifact.blend
    assert blend is not None and blend.knows("solo")
    assert "solo" in artifact.embeddings["item2vec"].ids.tolist()
    for channel in blend.channels:
        assert "solo" in channel.ids.tolist(), channel.name
    knn = next(c for c in blend.channels if c.name == "itemknn_last1")
    scores = knn.batch_scores([["i3"]])[0]
    assert scores[knn.ids.tolist().index("solo")] > 0  # "solo" is among i3's served neighbours
    served = result.metrics["blend"]
    assert served["weights"] == {c.name: float(w) for c, w in zip(blend.channels, blend.weights)}
    # The reason selection chosen on validation is served with the refitted channels (manifest = artifact).
    assert (served["reason_penalty"], served["reason_depth"]) == (blend.reason_penalty, blend.reason_depth)
    assert blend.reason_penalty in PENALTY_GRID and blend.reason_depth in DEPTH_GRID


def _sample_rows(rng: np.random.Generator) -> tuple[list[tuple[str, str, datetime]], pa.Table]:
    """Positives of 30 users (2 to 7 each, some sharing a ts) and their sample rows: each positive
    and two sampled negatives at its ts, history = the user's earlier positives."""
    positives, rows = [], []
    for u in range(30):
        ts = START + timedelta(hours=int(rng.integers(0, 200)))
        history: list[str] = []
        for p in range(int(rng.integers(2, 8))):
            ts += timedelta(hours=int(rng.integers(0, 3)))  # 0: a tie with the previous positive
            item = f"i{rng.integers(50)}"
            positives.append((f"u{u}", item, ts))
            for label, row_item in ((1, item), (0, f"i{rng.integers(50)}"), (0, f"i{rng.integers(50)}")):
                rows.append({samples.USER_ID: f"u{u}", samples.ITEM_ID: row_item, samples.TS: ts, samples.LABEL: label,
                             samples.LABEL_SOURCE: "click" if label else "sampled", samples.SPLIT: "train" if p < 3 else "validation",
                             samples.HIST_ITEM_IDS: list(history), samples.HIST_CATEGORIES: ["c"] * len(history),
                             samples.ITEM_CATEGORY: "c", "item_pop_7d": 1.0, "item_ctr": 0.0, "user_event_count": float(p),
                             "user_cat_affinity": 1.0})  # fmt: skip
            history.append(item)
    return positives, pa.Table.from_pylist(rows, samples.sample_schema())


def test_the_choice_rankers_rows_hold_no_validation_target(tmp_path: Path) -> None:
    positives, table = _sample_rows(np.random.default_rng(3))
    pq.write_table(table, tmp_path / "samples.parquet")
    cutoff = START + timedelta(hours=205)
    # Ground truth: per user, the positives before the cutoff in time order; with >= 3 of them the
    # last is the validation target, and no kept row may be at or after its ts.
    target_ts = {}
    for user in {u for u, _, _ in positives}:
        before = sorted((ts for u, _, ts in positives if u == user and ts < cutoff))
        if len(before) >= 3:
            target_ts[user] = before[-1]
    assert 5 < len(target_ts) < 30

    assert validation_target_times(positives, cutoff) == target_ts
    counts = held_out_samples(tmp_path / "samples.parquet", validation_target_times(positives, cutoff), tmp_path / "out")

    kept = pq.read_table(tmp_path / "out").to_pylist()
    for row in kept:
        assert row[samples.USER_ID] not in target_ts or row[samples.TS] < target_ts[row[samples.USER_ID]], row
    expected = [r for r in table.to_pylist() if r[samples.USER_ID] not in target_ts or r[samples.TS] < target_ts[r[samples.USER_ID]]]
    assert len(kept) == len(expected) < table.num_rows
    assert counts == {split: sum(r[samples.SPLIT] == split for r in expected) for split in {r[samples.SPLIT] for r in expected}}
