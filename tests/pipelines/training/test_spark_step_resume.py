"""A Spark step of the DAG counts as done on resume only while every local output it recorded
exists (a remote URI cannot be listed without Spark and is taken as present)."""

from __future__ import annotations

from pathlib import Path

from feature_store.settings import Settings
from pipelines.training.executor import StepContext
from pipelines.training.steps import training_steps


def test_spark_steps_are_still_done_only_while_their_outputs_exist(settings: Settings, tmp_path: Path) -> None:
    compact = next(step for step in training_steps() if step.name == "compact")
    events, rejects = tmp_path / "events", tmp_path / "rejects"
    events.mkdir(), rejects.mkdir()
    outputs = {"compact_outputs": [str(events), f"file://{rejects}", "s3a://bucket/batch/events"]}
    context = StepContext(settings, "run", {})
    assert compact.still_valid(context, outputs)
    rejects.rmdir()
    assert not compact.still_valid(context, outputs)
    rejects.mkdir()
    events.rmdir()
    assert not compact.still_valid(context, outputs)
